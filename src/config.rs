//! `strata serve` configuration: defaults < TOML file < `STRATA_*` env < flags.

use std::path::Path;

use anyhow::{Context, Result, bail};
use std::time::Duration;

use strata_server::broker::BrokerConfig;
use strata_server::cluster::NodeId;
use strata_server::cluster::tokens::Token;
use strata_server::tiering::TieringConfig;
use strata_server::{AuthConfig, ClusterConfig, TlsConfig};

use crate::ServeArgs;

/// Everything `strata serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: String,
    pub object_store: Option<String>,
    pub broker: BrokerConfig,
    pub tiering: TieringConfig,
    pub query: QueryFile,
    pub cluster: ClusterConfig,
    pub auth: AuthConfig,
    pub tls: Option<TlsConfig>,
}

/// The `[tls]` table of the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    /// PEM certificate chain.
    cert: Option<std::path::PathBuf>,
    /// PEM private key.
    key: Option<std::path::PathBuf>,
    /// PEM CA bundle that client certificates must be signed by.
    client_ca: Option<std::path::PathBuf>,
}

/// The `[auth]` table of the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    /// Require bearer tokens (default false).
    enabled: Option<bool>,
}

/// The `[cluster]` table of the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    /// How often a node sends its heartbeat to the controller (default 500).
    heartbeat_interval_ms: Option<u64>,
    /// Silence after which a node counts as dead (default 2500).
    failure_timeout_ms: Option<u64>,
}

/// The `[query]` table of the config file.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryFile {
    /// Longest a SQL query, view read or snapshot may run (default 60000).
    pub timeout_ms: Option<u64>,
    /// Memory all running SQL queries may hold together (default 256 MiB).
    pub memory_limit_bytes: Option<u64>,
    /// Disk all running SQL queries' spill files may take (default 4 GiB).
    pub spill_limit_bytes: Option<u64>,
    /// SQL queries running at once before `503` (default 8).
    pub max_concurrent: Option<usize>,
    /// How long a response waits for a client that stopped reading (default 60000).
    pub stalled_read_ms: Option<u64>,
    /// Keep the key index for `snapshot?key=` lookups (default true).
    pub key_index: Option<bool>,
}

impl QueryFile {
    /// The query service's settings for a server with data in `data_dir`.
    pub fn config(&self, data_dir: &Path) -> strata_server::query::QueryConfig {
        let mut config = strata_server::query::QueryConfig::new(data_dir.to_path_buf());
        if let Some(ms) = self.timeout_ms {
            config.timeout = Duration::from_millis(ms.max(1));
        }
        if let Some(bytes) = self.memory_limit_bytes {
            config.memory_limit = bytes.max(1024 * 1024) as usize;
        }
        if let Some(bytes) = self.spill_limit_bytes {
            config.spill_limit = bytes;
        }
        if let Some(n) = self.max_concurrent {
            config.max_concurrent = n.max(1);
        }
        if let Some(ms) = self.stalled_read_ms {
            config.stalled_read = Duration::from_millis(ms.max(1));
        }
        if let Some(on) = self.key_index {
            config.key_index = on;
        }
        config
    }
}

/// The `[tiering]` table of the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TieringFile {
    /// Offload a sealed segment only once it is this old (default 0).
    offload_after_ms: Option<u64>,
    /// Pause between background offload passes (default 5000).
    offload_interval_ms: Option<u64>,
    /// Publish each topic's cold tier as a Delta Lake table (default true).
    delta_table: Option<bool>,
    /// Merge adjacent small cold files (default true).
    compaction: Option<bool>,
    /// The size compaction merges small files up to (default 128 MiB).
    compact_target_bytes: Option<u64>,
}

impl ServeConfig {
    /// Merges the config file (if any) with the flags and environment.
    pub fn load(args: &ServeArgs) -> Result<Self> {
        let mut listen = "127.0.0.1:8080".to_string();
        let mut object_store = None;
        let mut broker = BrokerConfig::default();
        let mut tiering = TieringConfig::default();
        let mut query = QueryFile::default();
        let mut cluster = ClusterConfig::default();
        let mut auth = AuthConfig::default();
        let (mut tls_cert, mut tls_key, mut client_ca) = (None, None, None);
        let mut node_id = None;
        if let Some(path) = &args.config {
            let file = read_file(path)?;
            listen = file.listen.unwrap_or(listen);
            object_store = file.object_store;
            node_id = file.node_id;
            auth.enabled = file.auth.enabled.unwrap_or(false);
            tls_cert = file.tls.cert;
            tls_key = file.tls.key;
            client_ca = file.tls.client_ca;
            cluster.advertise = file.advertise;
            if let Some(ms) = file.cluster.heartbeat_interval_ms {
                cluster.heartbeat_interval = Duration::from_millis(ms.max(10));
            }
            if let Some(ms) = file.cluster.failure_timeout_ms {
                cluster.failure_timeout = Duration::from_millis(ms.max(100));
            }
            broker = file.broker;
            query = file.query;
            if let Some(ms) = file.tiering.offload_after_ms {
                tiering.offload_after = Duration::from_millis(ms);
            }
            if let Some(ms) = file.tiering.offload_interval_ms {
                tiering.interval = Duration::from_millis(ms.max(10));
            }
            if let Some(on) = file.tiering.delta_table {
                tiering.delta_table = on;
            }
            if let Some(on) = file.tiering.compaction {
                tiering.compaction = on;
            }
            if let Some(bytes) = file.tiering.compact_target_bytes {
                tiering.compact_target_bytes = bytes.max(1 << 20);
            }
        }
        if let Some(l) = &args.listen {
            listen.clone_from(l);
        }
        if let Some(d) = &args.data_dir {
            broker.data_dir.clone_from(d);
        }
        if let Some(s) = &args.object_store {
            object_store = Some(s.clone());
        }
        if let Some(url) = &object_store {
            check_object_store_url(url)?;
        }
        if let Some(id) = &args.node_id {
            node_id = Some(id.clone());
        }
        if let Some(id) = node_id {
            cluster.node_id = Some(NodeId::parse(&id).context("invalid --node-id")?);
        }
        if let Some(url) = &args.advertise {
            cluster.advertise = Some(url.clone());
        }
        if let Some(url) = &cluster.advertise
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!("--advertise must be an http:// or https:// URL, got {url:?}");
        }
        if let Some(enabled) = args.auth {
            auth.enabled = enabled;
        }
        if args.tls_cert.is_some() {
            tls_cert.clone_from(&args.tls_cert);
            tls_key.clone_from(&args.tls_key);
        }
        if args.tls_client_ca.is_some() {
            client_ca.clone_from(&args.tls_client_ca);
        }
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(TlsConfig {
                cert,
                key,
                client_ca,
            }),
            (None, None) if client_ca.is_some() => {
                bail!("a client CA needs TLS (--tls-cert and --tls-key)")
            }
            (None, None) => None,
            _ => bail!("TLS needs both a certificate and a key (--tls-cert and --tls-key)"),
        };
        // The bootstrap token comes only from the environment: a flag would
        // show in `ps`, a config file is often checked in.
        auth.bootstrap = std::env::var("STRATA_BOOTSTRAP_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .map(|t| Token::from_secret(&t));
        if auth
            .bootstrap
            .as_ref()
            .is_some_and(|t| t.expose().len() < 32)
        {
            bail!("STRATA_BOOTSTRAP_TOKEN must be at least 32 characters");
        }
        if cluster.failure_timeout <= cluster.heartbeat_interval {
            bail!("[cluster] failure_timeout_ms must be longer than heartbeat_interval_ms");
        }
        broker.validate().context("invalid configuration")?;
        Ok(Self {
            listen,
            object_store,
            broker,
            tiering,
            query,
            cluster,
            auth,
            tls,
        })
    }
}

/// What the config file says.
struct FileConfig {
    listen: Option<String>,
    object_store: Option<String>,
    node_id: Option<String>,
    advertise: Option<String>,
    cluster: ClusterFile,
    auth: AuthFile,
    tls: TlsFile,
    broker: BrokerConfig,
    tiering: TieringFile,
    query: QueryFile,
}

/// Reads `listen`, `object_store`, the `[tiering]` table and every broker
/// setting; unknown keys are errors.
fn read_file(path: &Path) -> Result<FileConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut take_string = |key: &str| -> Result<Option<String>> {
        match table.remove(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(other) => bail!("{}: {key} must be a string, got {other}", path.display()),
        }
    };
    let listen = take_string("listen")?;
    let object_store = take_string("object_store")?;
    let node_id = take_string("node_id")?;
    let advertise = take_string("advertise")?;
    let tls = match table.remove("tls") {
        Some(value) => value
            .try_into()
            .with_context(|| format!("invalid [tls] in {}", path.display()))?,
        None => TlsFile::default(),
    };
    let auth = match table.remove("auth") {
        Some(value) => value
            .try_into()
            .with_context(|| format!("invalid [auth] in {}", path.display()))?,
        None => AuthFile::default(),
    };
    let cluster = match table.remove("cluster") {
        Some(value) => value
            .try_into()
            .with_context(|| format!("invalid [cluster] in {}", path.display()))?,
        None => ClusterFile::default(),
    };
    let tiering = match table.remove("tiering") {
        Some(value) => value
            .try_into()
            .with_context(|| format!("invalid [tiering] in {}", path.display()))?,
        None => TieringFile::default(),
    };
    let query = match table.remove("query") {
        Some(value) => value
            .try_into()
            .with_context(|| format!("invalid [query] in {}", path.display()))?,
        None => QueryFile::default(),
    };
    let broker: BrokerConfig = table
        .try_into()
        .with_context(|| format!("invalid settings in {}", path.display()))?;
    Ok(FileConfig {
        listen,
        object_store,
        node_id,
        advertise,
        cluster,
        auth,
        tls,
        broker,
        tiering,
        query,
    })
}

fn check_object_store_url(url: &str) -> Result<()> {
    let known = ["file://", "s3://", "memory://"];
    if known.iter().any(|scheme| url.starts_with(scheme)) {
        Ok(())
    } else {
        bail!("--object-store must start with file://, s3:// or memory://, got {url:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strata.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\ndata_dir = \"/tmp/x\"\nmax_record_bytes = 10\n[topic_defaults]\nsegment_bytes = 4096\nsegment_ms = 1000\nlocal_retention_bytes = -1\nlocal_retention_ms = -1\nretention_ms = -1\ntimestamp_type = \"log_append_time\"\n[tiering]\noffload_after_ms = 1500\n[query]\ntimeout_ms = 2500\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        let config = ServeConfig::load(&args).unwrap();
        assert_eq!(config.listen, "127.0.0.1:0");
        assert_eq!(config.broker.data_dir, Path::new("/tmp/x"));
        assert_eq!(config.broker.max_record_bytes, 10);
        assert_eq!(config.broker.topic_defaults.segment_bytes, 4096);
        assert_eq!(config.tiering.offload_after, Duration::from_millis(1500));
        let query = config.query.config(Path::new("/tmp/x"));
        assert_eq!(query.timeout, Duration::from_millis(2500));

        std::fs::write(
            &path,
            "node_id = \"n1\"\nadvertise = \"http://10.0.0.1:8080\"\n[cluster]\nfailure_timeout_ms = 4000\n",
        )
        .unwrap();
        let config = ServeConfig::load(&args).unwrap();
        assert_eq!(
            config.cluster.node_id.as_ref().map(|n| n.as_str()),
            Some("n1")
        );
        assert_eq!(
            config.cluster.advertise.as_deref(),
            Some("http://10.0.0.1:8080")
        );
        assert_eq!(config.cluster.failure_timeout, Duration::from_millis(4000));
        std::fs::write(&path, "node_id = \"n/1\"\n").unwrap();
        assert!(
            ServeConfig::load(&args).is_err(),
            "a bad node id is refused"
        );

        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        assert!(
            ServeConfig::load(&args).is_err(),
            "unknown keys are refused"
        );
    }
}
