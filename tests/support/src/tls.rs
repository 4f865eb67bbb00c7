//! Certificates for HTTPS tests, made with the `openssl` command
//! (`scripts/test.sh` installs it), and clients that trust them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A self-signed certificate for 127.0.0.1 named `name`: (cert, key).
pub fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN=strata-test-{name}"))
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        // A server certificate, not a CA (webpki refuses a CA as the end entity).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (the test needs it to make certificates)");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    (cert, key)
}

/// A client that trusts only `cert` and opens a new connection per request.
pub fn client_trusting(cert: &Path) -> reqwest::Client {
    let pem = std::fs::read(cert).expect("read cert");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .tls_built_in_root_certs(false)
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}
