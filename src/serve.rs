//! `strata serve`: open the data directory, listen, serve until SIGINT/SIGTERM.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{Context, Result};
use strata_broker::Broker;
use strata_broker::http::AppState;
use strata_tiering::{ColdStore, Tiering, TieringConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use crate::ServeArgs;
use crate::config::ServeConfig;

pub async fn run(args: ServeArgs) -> Result<()> {
    init_logging();
    raise_open_file_limit();
    let config = ServeConfig::load(&args)?;
    let broker_config = config.broker.clone();
    let broker = tokio::task::spawn_blocking(move || Broker::open(broker_config))
        .await?
        .with_context(|| {
            format!(
                "opening data directory {}",
                config.broker.data_dir.display()
            )
        })?;
    let broker = Arc::new(broker);
    let url = match &config.object_store {
        Some(url) => url.clone(),
        None => default_cold_url(&config.broker.data_dir)?,
    };
    let cold = ColdStore::open(&url).with_context(|| format!("opening the cold tier {url}"))?;
    let tiering_config = TieringConfig {
        crash_at: std::env::var("STRATA_CRASH_AT").ok(),
        ..config.tiering.clone()
    };
    let owner = server_id(&config.broker.data_dir)?;
    let tiering = Tiering::open(broker.clone(), cold, tiering_config, &owner)
        .await
        .context("loading the cold tier's manifests")?;

    let (stopping, stopping_rx) = watch::channel(false);
    let state = AppState {
        broker: broker.clone(),
        metrics: strata_broker::metrics::prometheus_handle(),
        stopping: stopping_rx.clone(),
        cold: Some(tiering.clone()),
    };
    let query_config = config.query.config(&config.broker.data_dir);
    let query = strata_query::QueryService::open(broker.clone(), tiering.clone(), query_config)
        .context("starting the query service")?;
    let routes = strata_broker::http::routes(state)
        .merge(strata_tiering::http::router(tiering.clone()))
        .merge(strata_query::http::router(Arc::new(query)));
    let router = strata_broker::http::finish(routes);
    let offloader = tokio::spawn(tiering.run_background(stopping_rx));

    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(data_dir = %config.broker.data_dir.display(), "strata ready: listening on http://{addr}");
    strata_broker::http::serve(listener, broker, router, stopping, shutdown_signal()).await?;
    // The offloader gives up its lease before the process exits.
    offloader.await?;
    Ok(())
}

/// This server's name in the cold tier's writer lease: made once and kept
/// in the data directory, so a restarted server takes its own lease back.
fn server_id(data_dir: &std::path::Path) -> Result<String> {
    let path = data_dir.join("server-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        return Ok(id.trim().to_string());
    }
    let id = format!(
        "strata-{}-{}",
        std::process::id(),
        strata_broker::timestamp::now_ms()
    );
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    std::fs::File::open(&path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsyncing {}", path.display()))?;
    Ok(id)
}

/// `file://<data_dir>/cold`, the zero-configuration cold tier.
fn default_cold_url(data_dir: &std::path::Path) -> Result<String> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let absolute = data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", data_dir.display()))?;
    Ok(format!("file://{}/cold", absolute.display()))
}

fn init_logging() {
    // The ready line is logged whatever STRATA_LOG says: scripts wait for it.
    let directives = std::env::var("STRATA_LOG").unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(format!("{directives},strata::serve=info"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
        _ = term.recv() => tracing::info!("received SIGTERM"),
    }
}

/// Every segment keeps its file open, so a server with many partitions and
/// segments needs more descriptors than the usual soft limit of 1024: raise
/// it to the hard limit (at most 2^20), as databases do.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let wanted = limit.rlim_max.min(1 << 20);
    if limit.rlim_cur >= wanted {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0;
    tracing::debug!(
        ok,
        from = limit.rlim_cur,
        to = wanted,
        "raising the open file limit"
    );
}
