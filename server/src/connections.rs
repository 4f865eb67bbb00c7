//! The accept loop of HTTP and HTTPS alike: every connection is served by
//! hyper with the same limits, and shutdown drains them within a bound.
//!
//! - A TLS handshake must finish within [`HANDSHAKE_TIMEOUT`].
//! - A request's headers must arrive within [`HEADER_READ_TIMEOUT`] (a
//!   slow-loris client trickling bytes must not hold a connection, or
//!   shutdown, for ever).
//! - At shutdown, requests in flight finish and connections close; after
//!   [`DRAIN_TIMEOUT`] the rest are cut (a streamed answer to a client that
//!   stopped reading never finishes).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::tls::TlsState;

/// Longest a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest shutdown waits for open connections to finish their requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` (over TLS when `tls` is given, reloading
/// its files as they change) until `shutdown` resolves, then lets every
/// open connection finish its request and close.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<TlsState>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop) = watch::channel(false);
    let reloading = tls
        .clone()
        .map(|tls| tokio::spawn(crate::tls::reload_until(tls, stop.clone())));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        // A response is written in several pieces (headers, first chunk,
        // the rest): with Nagle's algorithm the last small piece waits for
        // the client's delayed ACK, ~40 ms on Linux, which was the p99 of
        // key lookups (issue #12).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let router = router.clone();
        let mut stop = stop.clone();
        match &tls {
            None => {
                connections.spawn(serve_connection(stream, router, stop));
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                connections.spawn(async move {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    let stream = tokio::select! {
                        done = handshake => match done {
                            Ok(Ok(stream)) => stream,
                            // A failed or slow handshake is the client's
                            // problem (wrong CA, plain HTTP on the TLS
                            // port): nothing to log per attempt.
                            _ => return,
                        },
                        _ = stop.wait_for(|s| *s) => return,
                    };
                    serve_connection(stream, router, stop).await;
                });
            }
        }
    }
    // No new clients wait in the backlog while the others drain.
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}: closing them");
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    if let Some(reloading) = reloading {
        let _ = reloading.await;
    }
    Ok(())
}

/// Serves one connection's requests (HTTP/1.1) until it closes, or until
/// `stop` turns true and its request in flight is answered.
async fn serve_connection<S>(stream: S, router: Router, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
        .with_upgrades();
    tokio::pin!(connection);
    let stopping = tokio::select! {
        _ = connection.as_mut() => false,
        stopped = stop.wait_for(|s| *s) => stopped.is_ok(),
    };
    if stopping {
        connection.as_mut().graceful_shutdown();
        let _ = connection.await;
    }
}
