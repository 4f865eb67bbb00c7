//! Between nodes only: a follower's fetch from its leader and its question
//! about where an epoch ends (docs/cluster.md, "Replication").

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use strata_cluster::Replica;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api_error::ApiError;
use crate::replication::Replication;
use crate::replication::leader::{FetchRequest, render_epochs};
use crate::request::{ApiPath, Params, json_response};

/// Largest `max_bytes` of one fetch.
const MAX_FETCH_BYTES: u64 = 64 * 1024 * 1024;

/// The replication routes, served by every node.
pub fn routes(replication: Arc<Replication>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(fetch))
        .routes(routes!(epoch_end))
        .with_state(replication)
}

fn partition_number(text: &str) -> Result<u32, ApiError> {
    text.parse().map_err(|_| {
        ApiError::invalid_request(format!("partition {text:?} is not a partition number"))
    })
}

fn required(params: &Params, name: &str) -> Result<u64, ApiError> {
    params
        .u64(name)?
        .ok_or_else(|| ApiError::invalid_request(format!("the {name} parameter is required")))
}

#[utoipa::path(get, path = "/v1/cluster/partitions/{topic}/{partition}/fetch", operation_id = "replica_fetch", tag = "cluster",
    description = "Between nodes only (node secret when authentication is on): whole batches from `offset`, which is also the follower's acknowledgement of everything before it.",
    params(
        ("topic" = String, Path, description = "topic name"),
        ("partition" = String, Path, description = "partition number"),
        ("offset" = u64, Query, description = "the follower's log end"),
        ("leader_epoch" = u64, Query, description = "the epoch the follower follows"),
        ("replica" = String, Query, description = "the follower, `node@incarnation`"),
        ("high_watermark" = Option<u64>, Query, description = "the high watermark the follower knows"),
        ("max_bytes" = Option<u64>, Query, description = "most bytes to return")),
    responses(
        (status = 200, description = "batches, with `Strata-High-Watermark` and `Strata-Leader-Epochs`", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "`invalid_request`, `invalid_topic_name`"),
        (status = 404, description = "`topic_not_found`"),
        (status = 409, description = "`not_leader`, `diverged`"),
        (status = 416, description = "`offset_out_of_range`")))]
async fn fetch(
    State(replication): State<Arc<Replication>>,
    ApiPath((topic, partition)): ApiPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(
        query.as_deref(),
        &[
            "offset",
            "leader_epoch",
            "replica",
            "high_watermark",
            "max_bytes",
        ],
    )?;
    let partition = partition_number(&partition)?;
    let replica = params
        .get("replica")
        .ok_or_else(|| ApiError::invalid_request("the replica parameter is required"))?;
    let replica = Replica::try_from(replica.to_string()).map_err(ApiError::invalid_request)?;
    let request = FetchRequest {
        offset: required(&params, "offset")?,
        leader_epoch: required(&params, "leader_epoch")?,
        replica,
        high_watermark: params.u64("high_watermark")?.unwrap_or(0),
        max_bytes: params.u64_in("max_bytes", 1024 * 1024, 1, MAX_FETCH_BYTES)? as usize,
    };
    let answer = replication.serve_fetch(&topic, partition, request).await?;
    let mut response = (StatusCode::OK, answer.bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        "strata-high-watermark",
        HeaderValue::from(answer.high_watermark),
    );
    if let Ok(epochs) = HeaderValue::from_str(&render_epochs(&answer.epochs)) {
        headers.insert("strata-leader-epochs", epochs);
    }
    Ok(response)
}

#[utoipa::path(get, path = "/v1/cluster/partitions/{topic}/{partition}/epoch-end", operation_id = "replica_epoch_end", tag = "cluster",
    description = "Between nodes only: where a leader epoch ends in the leader's log (KIP-101).",
    params(
        ("topic" = String, Path, description = "topic name"),
        ("partition" = String, Path, description = "partition number"),
        ("epoch" = u64, Query, description = "the follower's newest epoch"),
        ("leader_epoch" = u64, Query, description = "the epoch the follower follows")),
    responses(
        (status = 200, description = "`{\"epoch\", \"end_offset\"}`", body = serde_json::Value),
        (status = 400, description = "`invalid_request`, `invalid_topic_name`"),
        (status = 404, description = "`topic_not_found`"),
        (status = 409, description = "`not_leader`")))]
async fn epoch_end(
    State(replication): State<Arc<Replication>>,
    ApiPath((topic, partition)): ApiPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref(), &["epoch", "leader_epoch"])?;
    let partition = partition_number(&partition)?;
    let answer = replication.serve_epoch_end(
        &topic,
        partition,
        required(&params, "epoch")?,
        required(&params, "leader_epoch")?,
    )?;
    let body = serde_json::to_vec(&answer).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(json_response(StatusCode::OK, body))
}
