//! HTTPS with rustls (`--tls-cert`, `--tls-key`), certificates reloaded
//! when their files change, so they rotate without a restart.
//!
//! The certificate chain and key are PEM files. Every [`RELOAD_EVERY`] the
//! server looks at their modification times and sizes; when either
//! changed, it loads both again and new connections use the new pair
//! (connections already open keep theirs). A pair that does not load (a
//! half-written file, a key that does not match) is logged and the old
//! pair stays in use, so a rotation done file by file never takes the
//! server down. Only TLS 1.2 and 1.3 with ring's cipher suites are
//! offered; plain HTTP is not served on the same port.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use crate::error::{Result, ServerError};

/// How often the certificate files are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Where the certificate chain and its private key are.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With a CA bundle, every client must present a certificate signed by
    /// one of its CAs (`--tls-client-ca`); reloaded with the others.
    pub client_ca: Option<PathBuf>,
}

/// The rustls configuration in force, and what the files looked like when
/// it was loaded.
pub struct TlsState {
    config: TlsConfig,
    current: RwLock<(Arc<rustls::ServerConfig>, Stamp)>,
}

/// Modification time, size, inode and change time of each file: a
/// rotation by rename always changes the inode, also within one second of
/// a coarse clock and with a same-sized file.
pub(crate) type Stamp = [(Option<SystemTime>, u64, u64, i64, i64); 3];

/// What the files look like now: a change means they must be read again.
pub(crate) fn stamp(config: &TlsConfig) -> Stamp {
    let of = |path: Option<&Path>| {
        use std::os::unix::fs::MetadataExt;
        path.and_then(|path| std::fs::metadata(path).ok())
            .map_or((None, 0, 0, 0, 0), |m| {
                (
                    m.modified().ok(),
                    m.len(),
                    m.ino(),
                    m.ctime(),
                    m.ctime_nsec(),
                )
            })
    };
    [
        of(Some(&config.cert)),
        of(Some(&config.key)),
        of(config.client_ca.as_deref()),
    ]
}

fn load(config: &TlsConfig) -> Result<Arc<rustls::ServerConfig>> {
    let bad = |what: &str, path: &Path, error: String| ServerError::Tls {
        message: format!("{what} {}: {error}", path.display()),
    };
    let cert_pem = std::fs::read(&config.cert)
        .map_err(|e| bad("reading the certificate", &config.cert, e.to_string()))?;
    let key_pem = std::fs::read(&config.key)
        .map_err(|e| bad("reading the key", &config.key, e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad("parsing the certificate", &config.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(
            "parsing the certificate",
            &config.cert,
            "no CERTIFICATE block".into(),
        ));
    }
    // Never quote the key file's contents in an error.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        bad(
            "parsing the key",
            &config.key,
            "no usable PEM private key".into(),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("configuring TLS for", &config.cert, e.to_string()))?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| bad("reading the client CA", path, e.to_string()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad("parsing the client CA", path, e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| bad("using the client CA", path, e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| bad("using the client CA", path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder
        .with_single_cert(chain, key)
        .map_err(|e| bad("using the certificate and key", &config.cert, e.to_string()))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

impl TlsState {
    /// Loads the certificate and key.
    ///
    /// # Errors
    ///
    /// [`ServerError::Tls`] naming the file that could not be read or
    /// parsed, or a key that does not match the certificate.
    pub fn open(config: TlsConfig) -> Result<Arc<Self>> {
        let stamp = stamp(&config);
        let loaded = load(&config)?;
        Ok(Arc::new(Self {
            config,
            current: RwLock::new((loaded, stamp)),
        }))
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().0.clone())
    }

    /// Loads the files again if they changed since the last load; returns
    /// whether new connections now use a new pair.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.config);
        if now == self.current.read().1 {
            return false;
        }
        match load(&self.config) {
            Ok(loaded) => {
                *self.current.write() = (loaded, now);
                tracing::info!(cert = %self.config.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(error) => {
                // Retried at the next change (or when the other half of a
                // rotation lands).
                self.current.write().1 = now;
                tracing::warn!(%error, "the TLS files changed but do not load; the previous certificate stays in use");
                false
            }
        }
    }
}

/// Reloads the files every [`RELOAD_EVERY`] when they changed, until
/// `stop` turns true.
pub async fn reload_until(tls: Arc<TlsState>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(RELOAD_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let tls = tls.clone();
        let _ = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
    }
}
