//! The broker's HTTP routes (axum): health, metrics, topics, produce,
//! consume and consumer groups, exactly as `API.md` specifies.

mod error;
mod groups;
mod records;
pub mod render;
mod topics;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::ApiError;
pub use topics::describe_topic;

use crate::broker::Broker;
use crate::cold::ColdTier;
use crate::error::BrokerError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub broker: Arc<Broker>,
    pub metrics: PrometheusHandle,
    /// Turns true when the server starts shutting down (ends long polls).
    pub stopping: watch::Receiver<bool>,
    /// Where offsets below a partition's local start are read from, if anywhere.
    pub cold: Option<Arc<dyn ColdTier>>,
}

/// The broker's routes, with JSON 404/405 fallbacks and request metrics.
pub fn router(state: AppState) -> Router {
    finish(routes(state))
}

/// The broker's routes alone; other crates' routes may be merged in before
/// [`finish`].
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/topics", get(topics::list).post(topics::create))
        .route(
            "/v1/topics/{topic}",
            get(topics::describe).delete(topics::delete),
        )
        .route(
            "/v1/topics/{topic}/records",
            axum::routing::post(records::produce),
        )
        .route(
            "/v1/topics/{topic}/partitions/{partition}/records",
            get(records::consume),
        )
        .route(
            "/v1/topics/{topic}/partitions/{partition}/offset",
            get(records::offset_for_timestamp),
        )
        .route(
            "/v1/groups/{group}/offsets",
            get(groups::fetch).post(groups::commit),
        )
        .with_state(state)
}

/// Completes a router of every route: JSON `404`/`405` fallbacks and the
/// request-latency metric for all of them.
pub fn finish(router: Router) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(track_request))
}

/// Serves `router` on `listener` until `shutdown` resolves, then finishes
/// in-flight requests, ends long polls, and fsyncs every partition. Also
/// runs the background task that rolls segments older than `segment_ms`.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    router: Router,
    stopping: watch::Sender<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let roller = tokio::spawn(roll_due_segments(broker.clone(), stopping.subscribe()));
    let stop = stopping.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight requests");
            let _ = stop.send(true);
        })
        .await?;
    let _ = stopping.send(true);
    let _ = roller.await;
    let closing = broker.clone();
    tokio::task::spawn_blocking(move || closing.close())
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)?;
    tracing::info!("stopped: every partition fsynced");
    Ok(())
}

/// Runs the broker alone (no cold tier, no SQL) on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stopping, stopping_rx) = watch::channel(false);
    let state = AppState {
        broker: broker.clone(),
        metrics: crate::metrics::prometheus_handle(),
        stopping: stopping_rx,
        cold: None,
    };
    serve(listener, broker, router(state), stopping, shutdown).await
}

async fn roll_due_segments(broker: Arc<Broker>, mut stopping: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        let broker = broker.clone();
        let _ = tokio::task::spawn_blocking(move || {
            broker.roll_due_segments(crate::timestamp::now_ms())
        })
        .await;
    }
}

async fn health() -> Response {
    json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

async fn metrics_text(State(app): State<AppState>) -> Response {
    for topic in app.broker.topics() {
        let bytes: u64 = topic.partitions().iter().map(|p| p.local_bytes()).sum();
        metrics::gauge!("strata_local_bytes", "topic" => topic.name().to_string())
            .set(bytes as f64);
    }
    let mut response = app.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        "method not allowed on this route",
    )
}

async fn track_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::histogram!(
        "strata_http_request_duration_seconds",
        "method" => method,
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// A `200`-style JSON response from pre-rendered bytes.
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Reads a request body of at most `limit` bytes. A larger body is refused
/// from its `Content-Length` before reading, or as soon as the limit is
/// crossed, so it is never buffered whole.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::from(BrokerError::PayloadTooLarge {
            message: format!("request body is over max_request_bytes ({limit})"),
            index: None,
        })
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::invalid_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Path parameters, with a malformed path (e.g. not UTF-8) answered as
/// `400 invalid_request` in the API's JSON error shape.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for ApiPath<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|e| ApiError::invalid_request(e.body_text()))
    }
}

/// Query-string parameters, checked against the names a route accepts.
pub struct Params(HashMap<String, String>);

impl Params {
    /// Parses `query`, refusing parameters outside `allowed` and repeated ones.
    pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut map = HashMap::new();
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let (name, value) = (name.into_owned(), value.into_owned());
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::invalid_request(format!(
                    "unknown parameter {name:?}; this route accepts {}",
                    allowed.join(", ")
                )));
            }
            if map.insert(name.clone(), value).is_some() {
                return Err(ApiError::invalid_request(format!(
                    "parameter {name:?} is given twice"
                )));
            }
        }
        Ok(Self(map))
    }

    /// A parameter's raw text.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A non-negative integer parameter, if present.
    pub fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::invalid_request(format!(
                        "{name} must be a non-negative integer, got {v:?}"
                    ))
                })
            })
            .transpose()
    }

    /// An integer parameter within `[min, max]`, or `default` when absent.
    pub fn u64_in(&self, name: &str, default: u64, min: u64, max: u64) -> Result<u64, ApiError> {
        let value = self.u64(name)?.unwrap_or(default);
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(ApiError::invalid_request(format!(
                "{name} must be between {min} and {max}, got {value}"
            )))
        }
    }
}

/// Runs blocking broker work (disk I/O, fsync waits, parsing) off the async workers.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BrokerError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::from(BrokerError::Internal(format!("worker failed: {e}"))))?
        .map_err(ApiError::from)
}
