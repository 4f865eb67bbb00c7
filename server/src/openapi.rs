//! `GET /openapi.json`: the API described in OpenAPI 3.1.
//!
//! The description is collected from the handlers' own `#[utoipa::path]`
//! annotations while the router is built (`routes::router` registers every
//! route through `utoipa_axum::routes!`), so no route can exist without its
//! entry. This module holds what the handlers share: the schemas of the
//! bodies the API reads and writes, and the error responses every operation
//! may give (one [`ErrorBody`] shape, docs/api.md "Errors").

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::ToSchema;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, ResponseBuilder};

/// A topic or consumer-group name: `[A-Za-z0-9._-]{1,249}`, not `.` or `..`
/// (`strata_broker::config::name_problem`; `_cluster` is reserved for new
/// topics).
pub const TOPIC_NAME_PATTERN: &str = r"^(?!\.\.?$)[A-Za-z0-9._-]{1,249}$";

/// A view name: a letter or `_`, then letters, digits or `_`, at most 128.
pub const VIEW_NAME_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$";

/// A token name: `[A-Za-z0-9._-]{1,64}`, not `.` or `..`.
pub const TOKEN_NAME_PATTERN: &str = r"^(?!\.\.?$)[A-Za-z0-9._-]{1,64}$";

/// Every error: `{"error": {"code", "message", "index"?}}`.
#[derive(ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (docs/api.md "Errors").
    pub code: String,
    /// For people; never a secret.
    pub message: String,
    /// The offending record of a produce, when there is one.
    pub index: Option<u64>,
}

/// A topic's settings; omitted fields take the server's defaults.
#[derive(ToSchema)]
pub struct TopicConfig {
    #[schema(minimum = 1024, maximum = 2147483647)]
    pub segment_bytes: Option<u64>,
    #[schema(minimum = 1)]
    pub segment_ms: Option<i64>,
    /// -1: no limit.
    #[schema(minimum = -1)]
    pub local_retention_bytes: Option<i64>,
    /// -1: no limit.
    #[schema(minimum = -1)]
    pub local_retention_ms: Option<i64>,
    /// -1: keep forever.
    #[schema(minimum = -1)]
    pub retention_ms: Option<i64>,
    pub timestamp_type: Option<TimestampType>,
    #[schema(minimum = 0)]
    pub idempotency_window_ms: Option<i64>,
    /// Nodes holding each partition; default min(3, live nodes).
    #[schema(minimum = 1, maximum = 16)]
    pub replication_factor: Option<u32>,
    /// In-sync replicas a produce needs; default min(2, replication_factor).
    #[schema(minimum = 1, maximum = 16)]
    pub min_insync_replicas: Option<u32>,
}

/// Which timestamp a record keeps.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// The format of rows and records read (`format=`): docs/api.md "Result
/// formats".
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum OutputFormat {
    Ndjson,
    Json,
    Csv,
    Arrow,
    Parquet,
}

/// A topic and each partition's offsets in both tiers.
#[derive(ToSchema)]
pub struct TopicDescription {
    pub name: String,
    pub config: TopicConfig,
    pub partitions: Vec<PartitionDescription>,
    /// `[{"kind": "latest_by_key", "records_behind": N}]`.
    pub indexes: Vec<Value>,
    /// The cold tier as a Delta Lake table: `{"format": "delta",
    /// "version": N, "location": "<url>"}` (`version` `null` until the
    /// first publish); `null` when tables are off.
    pub table: Option<Value>,
}

/// One partition of [`TopicDescription`].
#[derive(ToSchema)]
pub struct PartitionDescription {
    pub partition: u32,
    pub start_offset: u64,
    pub local_start_offset: u64,
    pub end_offset: u64,
    pub hot: Value,
    pub cold: Value,
    /// RFC 3339, `null` when both tiers are empty.
    pub min_timestamp: Option<String>,
    pub max_timestamp: Option<String>,
    /// The node that leads the partition, `null` while none does.
    pub leader: Option<String>,
    /// The nodes that hold a replica, preferred leader first.
    pub replicas: Vec<String>,
    /// The replicas that have every acknowledged record.
    pub isr: Vec<String>,
    /// Incremented at every change of leader (0: a topic with one replica).
    pub leader_epoch: u64,
}

/// `GET /v1/topics`.
#[derive(ToSchema)]
pub struct TopicList {
    pub topics: Vec<Value>,
}

/// A produce body (`application/json`; NDJSON sends one record per line).
#[derive(ToSchema)]
pub struct ProduceBody {
    pub records: Vec<ProducedRecord>,
}

/// One record to produce.
#[derive(ToSchema)]
pub struct ProducedRecord {
    pub key: Option<String>,
    /// Any JSON value.
    pub value: Value,
    pub headers: Option<BTreeMap<String, String>>,
    /// Epoch milliseconds or RFC 3339.
    #[schema(value_type = Option<Value>)]
    pub timestamp: Option<Value>,
    pub partition: Option<u32>,
}

/// Where each produced record landed, in request order.
#[derive(ToSchema)]
pub struct ProduceAnswer {
    pub offsets: Vec<Value>,
}

/// A page of records of one partition.
#[derive(ToSchema)]
pub struct RecordPage {
    pub records: Vec<Value>,
    pub next_offset: u64,
    pub end_offset: u64,
}

/// The earliest offset at or after a timestamp.
#[derive(ToSchema)]
pub struct OffsetAnswer {
    pub offset: u64,
    pub timestamp: Option<String>,
}

/// Committed group offsets.
#[derive(ToSchema)]
pub struct GroupOffsets {
    pub offsets: Vec<CommittedOffset>,
}

/// One committed position.
#[derive(ToSchema)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
}

/// The statuses every operation may answer with an [`ErrorBody`], beyond
/// its own: authentication (401/403 when it is on), quotas (429),
/// back-pressure and store outages (503), and server faults (500).
const COMMON_ERRORS: [(&str, &str); 5] = [
    (
        "401",
        "a token is required and missing or unknown (authentication on)",
    ),
    ("403", "the token lacks the permission"),
    (
        "429",
        "a quota is exhausted; Retry-After says when to retry",
    ),
    ("500", "a fault of the server (a failed disk, a bug)"),
    (
        "503",
        "back-pressure or an unavailable dependency; Retry-After says when to retry",
    ),
];

/// Finishes the collected description: the title and version, and the
/// error responses of every operation (their own, declared as a status
/// only, and the common ones) filled in with [`ErrorBody`].
pub fn finish(mut api: OpenApi) -> OpenApi {
    api.info.title = "Strata".into();
    api.info.version = env!("CARGO_PKG_VERSION").into();
    api.info.description = Some(
        "HTTP API of Strata, a streaming data lake: partitioned logs, \
         offloaded to Parquet, read by offset, time range, SQL and views. \
         Prose and examples: docs/api.md."
            .into(),
    );
    constrain_names(&mut api);
    let components = api.components.get_or_insert_with(Default::default);
    let mut schemas = Vec::new();
    <ErrorBody as ToSchema>::schemas(&mut schemas);
    schemas.push((
        "ErrorBody".into(),
        <ErrorBody as utoipa::PartialSchema>::schema(),
    ));
    components.schemas.extend(schemas);
    for item in api.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.delete,
            &mut item.put,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            add_errors(operation);
        }
    }
    api
}

fn add_errors(operation: &mut Operation) {
    let error = || {
        ContentBuilder::new()
            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                "ErrorBody",
            ))))
            .build()
    };
    let responses = &mut operation.responses.responses;
    for (status, response) in responses.iter_mut() {
        if (status.starts_with('4') || status.starts_with('5'))
            && let RefOr::T(response) = response
        {
            response
                .content
                .entry("application/json".into())
                .or_insert_with(error);
        }
    }
    for (status, description) in COMMON_ERRORS {
        responses.entry(status.into()).or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content("application/json", error())
                    .build(),
            )
        });
    }
}

/// The name rule of each named thing, in parameters and bodies alike.
fn name_pattern(path: &str, field: &str) -> Option<&'static str> {
    match field {
        "topic" | "group" => Some(TOPIC_NAME_PATTERN),
        "name" if path.starts_with("/v1/views") || path == "CreateView" => Some(VIEW_NAME_PATTERN),
        "name" if path.starts_with("/v1/tokens") || path == "CreateToken" => {
            Some(TOKEN_NAME_PATTERN)
        }
        "name" if path == "CreateTopic" => Some(TOPIC_NAME_PATTERN),
        _ => None,
    }
}

/// Sets [`name_pattern`] on every path parameter and body property that
/// holds a name (utoipa's attributes take only literals: the patterns are
/// kept once, above).
fn constrain_names(api: &mut OpenApi) {
    fn set(schema: Option<&mut RefOr<Schema>>, pattern: &str) {
        if let Some(RefOr::T(Schema::Object(object))) = schema {
            object.pattern = Some(pattern.to_string());
        }
    }
    for (path, item) in api.paths.paths.iter_mut() {
        for operation in [&mut item.get, &mut item.post, &mut item.delete]
            .into_iter()
            .flatten()
        {
            for parameter in operation.parameters.iter_mut().flatten() {
                if let Some(pattern) = name_pattern(path, &parameter.name) {
                    set(parameter.schema.as_mut(), pattern);
                }
            }
        }
    }
    let Some(components) = api.components.as_mut() else {
        return;
    };
    for (name, schema) in components.schemas.iter_mut() {
        if let RefOr::T(Schema::Object(object)) = schema {
            for (field, property) in object.properties.iter_mut() {
                if let Some(pattern) = name_pattern(name, field) {
                    set(Some(property), pattern);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The patterns' bounds are the server's own limits (the patterns
    /// themselves are exercised by the schemathesis run, tests/fuzz_api.rs:
    /// a generated name the server refused would fail it).
    #[test]
    fn the_name_patterns_carry_the_server_limits() {
        let max = strata_broker::config::MAX_NAME_LEN;
        assert!(TOPIC_NAME_PATTERN.ends_with(&format!("{{1,{max}}}$")));
        let max = strata_query::views::MAX_NAME_LEN - 1;
        assert!(VIEW_NAME_PATTERN.ends_with(&format!("{{0,{max}}}$")));
        assert!(TOKEN_NAME_PATTERN.ends_with("{1,64}$"));
        assert!(strata_cluster::tokens::check_token_name(&"t".repeat(64)).is_ok());
        assert!(strata_cluster::tokens::check_token_name(&"t".repeat(65)).is_err());
    }

    #[test]
    fn the_formats_described_are_the_formats_parsed() {
        let schema = serde_json::to_value(<OutputFormat as utoipa::PartialSchema>::schema())
            .expect("schema JSON");
        let described: Vec<&str> = schema["enum"]
            .as_array()
            .expect("an enum")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let parsed: Vec<&str> = strata_query::Format::NAMES.split(", ").collect();
        assert_eq!(described, parsed);
    }

    #[test]
    fn names_in_parameters_and_bodies_get_their_pattern() {
        assert_eq!(
            name_pattern("/v1/topics/{topic}", "topic"),
            Some(TOPIC_NAME_PATTERN)
        );
        assert_eq!(
            name_pattern("/v1/views/{name}", "name"),
            Some(VIEW_NAME_PATTERN)
        );
        assert_eq!(
            name_pattern("/v1/tokens/{name}", "name"),
            Some(TOKEN_NAME_PATTERN)
        );
        assert_eq!(
            name_pattern("CreateTopic", "name"),
            Some(TOPIC_NAME_PATTERN)
        );
        assert_eq!(name_pattern("CreateTopic", "partitions"), None);
    }
}
