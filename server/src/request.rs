//! What every route reads from a request, and the limits on it: path and
//! query parameters, bodies of bounded size; and how JSON answers are sent.

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use strata_broker::BrokerError;

use crate::api_error::ApiError;

/// Largest accepted body of an admin request (topics, groups).
pub const MAX_ADMIN_BODY: usize = 1024 * 1024;

/// Largest accepted body of a query or view request.
pub const MAX_QUERY_BODY: usize = 1024 * 1024;

/// A JSON response from pre-rendered bytes.
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
pub struct Params {
    single: HashMap<String, String>,
    repeated: HashMap<String, Vec<String>>,
}

impl Params {
    /// Parses `query`, refusing parameters outside `allowed` and repeated ones.
    pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Self, ApiError> {
        Self::parse_repeatable(query, allowed, &[])
    }

    /// Parses `query` as [`Params::parse`] does, except that the names in
    /// `repeatable` may be given any number of times ([`Params::all`]).
    pub fn parse_repeatable(
        query: Option<&str>,
        allowed: &[&str],
        repeatable: &[&str],
    ) -> Result<Self, ApiError> {
        let mut single = HashMap::new();
        let mut repeated: HashMap<String, Vec<String>> = HashMap::new();
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let (name, value) = (name.into_owned(), value.into_owned());
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::invalid_request(format!(
                    "unknown parameter {name:?}; this route accepts {}",
                    allowed.join(", ")
                )));
            }
            if repeatable.contains(&name.as_str()) {
                repeated.entry(name).or_default().push(value);
            } else if single.insert(name.clone(), value).is_some() {
                return Err(ApiError::invalid_request(format!(
                    "parameter {name:?} is given twice"
                )));
            }
        }
        Ok(Self { single, repeated })
    }

    /// A parameter's raw text.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.single.get(name).map(String::as_str)
    }

    /// Every value of a repeatable parameter, in the order given.
    pub fn all(&self, name: &str) -> &[String] {
        self.repeated.get(name).map_or(&[], Vec::as_slice)
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

    /// A boolean parameter, `true` or `false` (nothing else: the OpenAPI
    /// document says boolean, so an empty value is refused too), `false`
    /// when absent.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(ApiError::invalid_request(format!(
                "{name} must be true or false, got {other:?}"
            ))),
        }
    }
}

/// Runs blocking broker work (disk I/O, fsync waits, parsing) off the async workers.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BrokerError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
        .map_err(ApiError::from)
}

/// [`blocking`] for work that fails with the API's errors.
pub async fn blocking_api<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}
