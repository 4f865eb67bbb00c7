//! `strata serve` configuration: defaults < TOML file < `STRATA_*` env < flags.

use std::path::Path;

use anyhow::{Context, Result, bail};
use strata_broker::BrokerConfig;

use crate::ServeArgs;

/// Everything `strata serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: String,
    pub object_store: Option<String>,
    pub broker: BrokerConfig,
}

impl ServeConfig {
    /// Merges the config file (if any) with the flags and environment.
    pub fn load(args: &ServeArgs) -> Result<Self> {
        let mut listen = "127.0.0.1:8080".to_string();
        let mut object_store = None;
        let mut broker = BrokerConfig::default();
        if let Some(path) = &args.config {
            let (file_listen, file_store, file_broker) = read_file(path)?;
            listen = file_listen.unwrap_or(listen);
            object_store = file_store;
            broker = file_broker;
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
        broker
            .topic_defaults
            .validate()
            .context("invalid topic_defaults")?;
        Ok(Self {
            listen,
            object_store,
            broker,
        })
    }
}

/// Reads `listen` and `object_store` plus every broker setting; unknown keys are errors.
fn read_file(path: &Path) -> Result<(Option<String>, Option<String>, BrokerConfig)> {
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
    let broker: BrokerConfig = table
        .try_into()
        .with_context(|| format!("invalid settings in {}", path.display()))?;
    Ok((listen, object_store, broker))
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
            "listen = \"0.0.0.0:9000\"\ndata_dir = \"/tmp/x\"\nmax_record_bytes = 10\n[topic_defaults]\nsegment_bytes = 4096\nsegment_ms = 1000\nlocal_retention_bytes = -1\nlocal_retention_ms = -1\nretention_ms = -1\ntimestamp_type = \"log_append_time\"\n",
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

        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        assert!(
            ServeConfig::load(&args).is_err(),
            "unknown keys are refused"
        );
    }
}
