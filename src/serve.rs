//! `strata serve`: open the data directory, listen, serve until SIGINT/SIGTERM.

use std::io::IsTerminal;

use anyhow::{Context, Result};
use strata_server::tiering::TieringConfig;
use strata_server::{Server, ServerConfig};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::ServeArgs;
use crate::config::ServeConfig;

pub async fn run(args: ServeArgs) -> Result<()> {
    init_logging();
    raise_open_file_limit();
    let config = ServeConfig::load(&args)?;
    let data_dir = config.broker.data_dir.clone();
    let server = Server::open(ServerConfig {
        broker: config.broker.clone(),
        object_store: config.object_store.clone(),
        tiering: TieringConfig {
            crash_at: std::env::var("STRATA_CRASH_AT")
                .ok()
                .map(|name| name.parse())
                .transpose()?,
            ..config.tiering.clone()
        },
        query: config.query.config(&data_dir),
        cluster: config.cluster.clone(),
        auth: config.auth.clone(),
        tls: config.tls.clone(),
    })
    .await?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(data_dir = %data_dir.display(), "strata ready: listening on {scheme}://{addr}");
    server.run(listener, shutdown_signal()).await?;
    Ok(())
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
