//! The one place where the storage crates' errors become HTTP statuses and
//! the API's error codes (the table in docs/api.md).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use strata_broker::BrokerError;
use strata_cluster::ClusterError;
use strata_query::QueryError;
use strata_tiering::TieringError;

/// An error response: `{"error": {"code", "message", ...extra}}`, with
/// `Retry-After` when the client should come back.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub extra: Vec<(&'static str, Value)>,
    pub retry_after_secs: Option<u64>,
    /// Send `WWW-Authenticate: Bearer` (a `401`).
    pub challenge: bool,
}

impl ApiError {
    /// An error without extra fields.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: Vec::new(),
            retry_after_secs: None,
            challenge: false,
        }
    }

    /// `401 unauthorized` with `WWW-Authenticate: Bearer`. The message
    /// never quotes the token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        e.challenge = true;
        e
    }

    /// `403 forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// `400 invalid_request`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// `503 unavailable` with `Retry-After`.
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        e.retry_after_secs = Some(retry_after_secs.max(1));
        e
    }

    /// `503 not_enough_replicas` with `Retry-After`: a replicated
    /// partition has fewer in-sync replicas than its topic's
    /// `min_insync_replicas`, or they did not confirm in time.
    pub fn not_enough_replicas(message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_enough_replicas",
            message,
        );
        e.retry_after_secs = Some(1);
        e
    }

    /// `409 not_leader` (between nodes): this node does not lead the
    /// partition at the epoch the caller follows.
    pub fn not_leader(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "not_leader", message)
    }

    /// `409 diverged` (between nodes): the follower's log is not a prefix
    /// of the leader's; it must truncate first.
    pub fn diverged(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "diverged", message)
    }

    /// `500 internal`, logged: it is a bug or a failure of the machine.
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!(error = %message, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    fn with(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.extra.push((key, value.into()));
        self
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let message = e.to_string();
        match e {
            BrokerError::InvalidRequest(_) => Self::invalid_request(message),
            BrokerError::InvalidRecord { index, .. } => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_record", message).with("index", index)
            }
            BrokerError::IdempotencyKeyReused { .. } => {
                Self::new(StatusCode::CONFLICT, "idempotency_key_reused", message)
            }
            BrokerError::InvalidTopicName { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_topic_name", message)
            }
            BrokerError::TopicNotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "topic_not_found", message)
            }
            BrokerError::PartitionNotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, "partition_not_found", message)
            }
            BrokerError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "not_found", message),
            BrokerError::TopicExists(_) => Self::new(StatusCode::CONFLICT, "topic_exists", message),
            BrokerError::PayloadTooLarge { index, .. } => {
                let err = Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message);
                match index {
                    Some(index) => err.with("index", index),
                    None => err,
                }
            }
            BrokerError::OffsetOutOfRange {
                start_offset,
                end_offset,
                ..
            } => Self::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "offset_out_of_range",
                message,
            )
            .with("start_offset", start_offset)
            .with("end_offset", end_offset),
            BrokerError::Unavailable {
                retry_after_secs, ..
            } => Self::unavailable(message, retry_after_secs),
            // Corrupt, Io, Internal, and whatever is added later until it
            // gets its own status here.
            _ => Self::internal(message),
        }
    }
}

impl From<TieringError> for ApiError {
    fn from(e: TieringError) -> Self {
        if e.is_store_unavailable() {
            return Self::unavailable(format!("the cold tier is unavailable: {e}"), 5);
        }
        match e {
            TieringError::Broker(e) => e.into(),
            e => Self::internal(e.to_string()),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let message = e.to_string();
        match e {
            QueryError::Broker(e) => e.into(),
            QueryError::Tiering(e) => e.into(),
            QueryError::InvalidRequest(_)
            | QueryError::Sql(_)
            | QueryError::Timeout(_)
            | QueryError::MemoryLimit(_) => Self::invalid_request(message),
            QueryError::ViewNotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "view_not_found", message)
            }
            QueryError::ViewExists(_) => Self::new(StatusCode::CONFLICT, "view_exists", message),
            QueryError::NameTaken(_) => Self::new(StatusCode::CONFLICT, "topic_exists", message),
            QueryError::Busy(_) => Self::unavailable(message, 1),
            _ => Self::internal(message),
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        let message = e.to_string();
        match e {
            ClusterError::Store(e) => e.into(),
            ClusterError::InvalidToken(_) | ClusterError::InvalidNodeId { .. } => {
                Self::invalid_request(message)
            }
            ClusterError::TokenExists(_) => {
                Self::new(StatusCode::CONFLICT, "token_exists", message)
            }
            ClusterError::TokenNotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "token_not_found", message)
            }
            _ => Self::internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = Map::new();
        error.insert("code".into(), json!(self.code));
        error.insert("message".into(), json!(self.message));
        error.extend(self.extra.into_iter().map(|(k, v)| (k.to_string(), v)));
        let body = json!({ "error": error }).to_string();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
