//! A server: the hot tier, the cold tier and the query service opened over
//! one data directory and object store, served until shutdown.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use strata_broker::{Broker, BrokerConfig};
use strata_query::{QueryConfig, QueryService};
use strata_tiering::{ColdStore, Tiering, TieringConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{Auth, AuthConfig};
use crate::catalog::Catalog;
use crate::error::{Result, ServerError};
use crate::membership::{ClusterConfig, Membership};
use crate::replication::{Replication, ReplicationConfig};
use crate::routes::{AppState, router};
use crate::tls::{TlsConfig, TlsState};
use strata_cluster::ControlStore;

/// Everything a server is configured with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The hot tier (its `data_dir` is the server's data directory).
    pub broker: BrokerConfig,
    /// The cold tier's URL (`file://`, `s3://`, `memory://`); `None` for
    /// `file://<data_dir>/cold`.
    pub object_store: Option<String>,
    pub tiering: TieringConfig,
    pub query: QueryConfig,
    /// The node's name and how it takes part in the cluster.
    pub cluster: ClusterConfig,
    /// Bearer tokens (off by default).
    pub auth: AuthConfig,
    /// HTTPS instead of HTTP (`None`: plain HTTP).
    pub tls: Option<TlsConfig>,
}

/// An opened server, ready to serve.
pub struct Server {
    state: AppState,
    stopping: watch::Sender<bool>,
    tls: Option<Arc<TlsState>>,
}

impl Server {
    /// Opens the data directory (recovering every partition), the cold
    /// tier's manifests and the views.
    pub async fn open(config: ServerConfig) -> Result<Self> {
        let data_dir = config.broker.data_dir.clone();
        let broker_config = config.broker.clone();
        let broker = tokio::task::spawn_blocking(move || Broker::open(broker_config))
            .await
            .map_err(|e| ServerError::io("opening the data directory", std::io::Error::other(e)))?
            .map_err(|error| ServerError::OpenDataDir {
                path: data_dir.display().to_string(),
                error,
            })?;
        let broker = Arc::new(broker);
        let url = match &config.object_store {
            Some(url) => url.clone(),
            None => default_cold_url(&data_dir)?,
        };
        let cold = ColdStore::open(&url).map_err(|error| ServerError::OpenColdTier {
            url: url.clone(),
            error,
        })?;
        let tls = config.tls.clone().map(TlsState::open).transpose()?;
        // A data directory without an identity is a new node: maybe a
        // single server back from a lost disk under a new name.
        let fresh = !data_dir
            .join(strata_cluster::identity::IDENTITY_FILE)
            .exists()
            && !data_dir.join("server-id").exists();
        let membership = Membership::open(
            data_dir.clone(),
            &cold,
            config.cluster.clone(),
            broker.clone(),
            config.tls.as_ref(),
        )?;
        let owner = membership.id().to_string();
        let membership = Arc::new(membership);
        let auth = Arc::new(Auth::new(
            &config.auth,
            ControlStore::new(&cold),
            membership.clone(),
        ));
        if auth.enabled() {
            // Tokens made while this node was down are known from its
            // first request on when the store answers; otherwise the
            // refresh loop keeps trying.
            if let Err(error) = auth.refresh().await {
                tracing::warn!(%error, "cannot read the tokens yet; retrying in the background");
            }
        }
        let control = ControlStore::new(&cold);
        let tiering = Tiering::open(broker.clone(), cold, config.tiering.clone(), &owner)
            .await
            .map_err(ServerError::LoadColdTier)?;
        if fresh {
            let gone = unreachable_nodes(&control, &owner, &membership.client()).await;
            tiering
                .adopt_topics_of(&gone)
                .await
                .map_err(ServerError::LoadColdTier)?;
        }
        let query = QueryService::open(broker.clone(), tiering.clone(), config.query.clone())
            .map_err(ServerError::StartQuery)?;
        let (stopping, stopping_rx) = watch::channel(false);
        let replication = Replication::new(
            membership.id().clone(),
            broker.clone(),
            tiering.clone(),
            ReplicationConfig {
                max_lag: config.cluster.failure_timeout,
                ..ReplicationConfig::default()
            },
            membership.client(),
            stopping_rx.clone(),
        );
        let scope: Arc<dyn strata_tiering::OffloadScope> = replication.clone();
        tiering.set_scope(&scope);
        membership.set_replication(replication.clone());
        let query = Arc::new(query);
        let catalog = Arc::new(Catalog::new(
            control.clone(),
            query.clone(),
            broker.clone(),
            &data_dir,
        ));
        // Retried by the catalog's own task when the store does not answer.
        if let Err(error) = catalog.refresh().await {
            tracing::warn!(%error, "cannot read the cluster's views and groups yet; retrying in the background");
        }
        let state = AppState {
            catalog,
            broker,
            tiering,
            query,
            metrics: strata_broker::metrics::prometheus_handle(),
            stopping: stopping_rx,
            membership,
            replication,
            auth,
            quotas: Arc::default(),
        };
        Ok(Self {
            state,
            stopping,
            tls,
        })
    }

    /// The hot tier.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.state.broker
    }

    /// Serves the API on `listener` until `shutdown` resolves, with the
    /// background offloader and the roll of segments older than
    /// `segment_ms`; then finishes in-flight requests, ends long polls,
    /// fsyncs every partition and stops the offloader (which gives up its
    /// lease).
    ///
    /// # Contract
    ///
    /// When this returns `Ok`, every acknowledged record is durable on
    /// local disk and no request is still running.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let Self {
            state,
            stopping,
            tls,
        } = self;
        let broker = state.broker.clone();
        let roller = tokio::spawn(maintain_local_disk(broker.clone(), stopping.subscribe()));
        let offloader = tokio::spawn(state.tiering.clone().run_background(stopping.subscribe()));
        let indexer = state
            .query
            .start_background(stopping.subscribe())
            .map_err(ServerError::StartQuery)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = listener
            .local_addr()
            .map(|addr| format!("{scheme}://{addr}"))
            .map_err(|e| ServerError::io("reading the listen address", e))?;
        let membership = tokio::spawn(state.membership.clone().run(url, stopping.subscribe()));
        let tokens = tokio::spawn(state.auth.clone().run(stopping.subscribe()));
        let catalog = tokio::spawn(state.catalog.clone().run(stopping.subscribe()));
        let stop = stopping.clone();
        let draining = async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight requests");
            let _ = stop.send(true);
        };
        let served = crate::connections::serve(listener, router(state), tls, draining).await;
        let _ = stopping.send(true);
        let _ = roller.await;
        let _ = membership.await;
        let _ = tokens.await;
        let _ = catalog.await;
        let _ = indexer.await;
        // Partitions are fsynced before the offloader's last steps (giving
        // up its lease may wait on an object store that is down).
        let closing = broker.clone();
        let closed = tokio::task::spawn_blocking(move || closing.close()).await;
        let offloaded = offloader.await;
        served.map_err(|e| ServerError::io("serving", e))?;
        closed
            .map_err(|e| ServerError::io("closing the data directory", std::io::Error::other(e)))?
            .map_err(ServerError::Close)?;
        offloaded.map_err(|e| ServerError::io("the offloader", std::io::Error::other(e)))?;
        tracing::info!("stopped: every partition fsynced");
        Ok(())
    }
}

/// The registered nodes other than `me` that do not answer at their URL
/// (within a second each, all at once): their topics with one replica have
/// no other home. A node that lost its disk comes back under a new name
/// (unless started with the same `--node-id`) and takes its old self's
/// topics back from the cold tier this way.
async fn unreachable_nodes(
    control: &ControlStore,
    me: &str,
    client: &reqwest::Client,
) -> Vec<String> {
    let registrations =
        match tokio::time::timeout(Duration::from_secs(5), control.registrations()).await {
            Ok(Ok(found)) => found,
            _ => return Vec::new(),
        };
    let probes = registrations
        .into_iter()
        .filter(|r| r.node.as_str() != me)
        .map(|r| async move {
            let url = format!("{}/health", r.url.trim_end_matches('/'));
            let answered = tokio::time::timeout(Duration::from_secs(1), client.get(&url).send())
                .await
                .is_ok_and(|sent| sent.is_ok());
            (!answered).then(|| r.node.to_string())
        });
    futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Once a second: measures the data disk's free space, lets partitions a
/// full disk stopped take writes again, and rolls segments due by age.
async fn maintain_local_disk(broker: Arc<Broker>, mut stopping: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        let broker = broker.clone();
        let _ = tokio::task::spawn_blocking(move || {
            broker.watch_disk();
            broker.roll_due_segments(strata_broker::timestamp::now_ms())
        })
        .await;
    }
}

/// `file://<data_dir>/cold`, the zero-configuration cold tier.
pub fn default_cold_url(data_dir: &Path) -> Result<String> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| ServerError::io(format!("creating {}", data_dir.display()), e))?;
    let absolute = data_dir
        .canonicalize()
        .map_err(|e| ServerError::io(format!("resolving {}", data_dir.display()), e))?;
    Ok(format!("file://{}/cold", absolute.display()))
}
