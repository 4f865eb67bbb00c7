//! Requests this node passes on to another: the part of a produce whose
//! partitions another node leads, and topic changes only the controller
//! makes. The caller's credentials go along (tokens are cluster-wide), so
//! the other node authorizes the request as it would the client's own.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use strata_broker::produce::ProducedRecord;

use crate::api_error::ApiError;

/// The header that carries the hash of the whole produce body to the
/// leader of some of its partitions (so that its idempotency check sees
/// the same request whichever node split it).
pub const BODY_HASH: &str = "strata-body-hash";

/// Marks a request one node passed to another: it is not passed on again.
pub const FORWARDED: &str = "strata-forwarded";

/// `records` as an NDJSON produce body, each with its `partition`.
pub fn render_records(records: &[(&ProducedRecord<'_>, u32)]) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    for (record, partition) in records {
        let headers: serde_json::Map<String, serde_json::Value> = record
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        let head = serde_json::json!({
            "key": record.key.as_deref(),
            "headers": headers,
            "timestamp": record.timestamp,
            "partition": partition,
        });
        let mut line =
            serde_json::to_string(&head).map_err(|e| ApiError::internal(e.to_string()))?;
        // The value is JSON text already: spliced in, not re-encoded.
        line.pop();
        line.push_str(",\"value\":");
        line.push_str(&record.value);
        line.push('}');
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    Ok(out)
}

/// Sends `body` to `url` with the caller's `Authorization` and `extra`
/// headers; returns the other node's status, headers and body.
pub async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    caller: &HeaderMap,
    extra: &[(&'static str, String)],
    content_type: &'static str,
    body: Vec<u8>,
) -> Result<(StatusCode, HeaderMap, bytes::Bytes), ApiError> {
    let mut request = client
        .request(method, url)
        .header(header::CONTENT_TYPE, content_type)
        .header(FORWARDED, "1")
        .body(body);
    if let Some(auth) = caller.get(header::AUTHORIZATION) {
        request = request.header(header::AUTHORIZATION, auth.clone());
    }
    for (name, value) in extra {
        request = request.header(*name, value.as_str());
    }
    metrics::counter!("strata_cluster_forwarded_requests_total").increment(1);
    let response = request
        .send()
        .await
        .map_err(|e| ApiError::unavailable(format!("the node at {url} did not answer: {e}"), 1))?;
    let status = StatusCode::from_u16(response.status().as_u16())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut headers = HeaderMap::new();
    for (name, value) in response.headers() {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.insert(name, value);
        }
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| ApiError::unavailable(format!("the node at {url} broke off: {e}"), 1))?;
    Ok((status, headers, body))
}

/// The other node's answer, passed on as it came.
pub fn pass_on(status: StatusCode, headers: &HeaderMap, body: bytes::Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    for name in [
        header::CONTENT_TYPE,
        header::RETRY_AFTER,
        header::WWW_AUTHENTICATE,
    ] {
        if let Some(value) = headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

/// Passes a request without a body on to `url` and its answer back as it
/// came (a consume, a drain, a topic deletion for another node to do).
pub async fn relay(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    caller: &HeaderMap,
) -> Result<Response, ApiError> {
    let (status, headers, body) = send(
        client,
        method,
        url,
        caller,
        &[],
        "application/json",
        Vec::new(),
    )
    .await?;
    Ok(pass_on(status, &headers, body))
}
