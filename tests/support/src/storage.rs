//! The storage crates without HTTP: a hot tier and a cold tier over a
//! temporary data directory and one object store, for the tiering and
//! query crates' own tests (the server's tests use [`crate::TestServer`]).

use std::sync::Arc;

use serde_json::{Value, json};
use strata_server::broker::produce::{BodyFormat, parse_body};
use strata_server::broker::{Broker, BrokerConfig};
use strata_server::tiering::{ColdStore, Tiering, TieringConfig};
use tempfile::TempDir;

/// Name of the fixture's cold-tier writer.
pub const OWNER: &str = "storage-fixture";

/// A broker on a fresh data directory and the cold tier over it.
pub struct Storage {
    /// The data directory is `<dir>/data`; tests may put other files here.
    pub dir: TempDir,
    pub broker: Arc<Broker>,
    pub url: String,
    pub cold: ColdStore,
    pub tiering: Arc<Tiering>,
}

impl Storage {
    /// Opens a broker with the settings of `broker` (its `data_dir`
    /// replaced by a fresh one), the store at `url`, and the cold tier over
    /// both (which takes the store's writer lease).
    pub async fn open(url: &str, broker: BrokerConfig, tiering: TieringConfig) -> Self {
        let dir = TempDir::new().expect("tempdir");
        let broker = Arc::new(
            Broker::open(BrokerConfig {
                data_dir: dir.path().join("data"),
                ..broker
            })
            .expect("open broker"),
        );
        let cold = ColdStore::open(url).expect("open store");
        let tiering = Tiering::open(broker.clone(), cold.clone(), tiering, OWNER)
            .await
            .expect("open cold tier");
        Self {
            dir,
            broker,
            url: url.to_string(),
            cold,
            tiering,
        }
    }

    /// Opens the cold tier again, as a restarted server would: a new
    /// handle on the store at the same URL (on `memory://` a new, empty
    /// store), its manifests loaded afresh. The old cold tier is dropped
    /// first, giving up the lease it holds.
    pub async fn reopen_tiering(self, config: TieringConfig) -> Self {
        let Self {
            dir,
            broker,
            url,
            tiering,
            ..
        } = self;
        drop(tiering);
        let cold = ColdStore::open(&url).expect("open store");
        let tiering = Tiering::open(broker.clone(), cold.clone(), config, OWNER)
            .await
            .expect("reopen cold tier");
        Self {
            dir,
            broker,
            url,
            cold,
            tiering,
        }
    }

    /// Produces `records` to `topic`; see [`produce`].
    pub fn produce(&self, topic: &str, records: &[Value]) {
        produce(&self.broker, topic, records);
    }
}

/// Produces `records` (each in the API's JSON shape: `key`, `value`,
/// `headers`, `timestamp`, `partition`) to `topic` of `broker` as one
/// request, at broker time 0, and waits until they are durable.
pub fn produce(broker: &Broker, topic: &str, records: &[Value]) {
    let body = json!({ "records": records }).to_string();
    let parsed = parse_body(body.as_bytes(), BodyFormat::Json, 1 << 20).expect("a valid body");
    broker
        .topic(topic)
        .expect("topic")
        .produce(&parsed, 0)
        .expect("produce");
}
