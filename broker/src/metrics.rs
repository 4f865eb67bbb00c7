//! The Prometheus recorder behind `GET /metrics`.
//!
//! The `metrics` facade has one process-wide recorder by design; this is the
//! only global in the crate, installed once, on first use.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets (seconds) for every `*_seconds` histogram.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The handle that renders every metric, installing the recorder on first call.
pub fn prometheus_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "strata_produce_records_total",
        "Records acknowledged by produce, per topic."
    );
    describe_counter!(
        "strata_produce_bytes_total",
        Unit::Bytes,
        "Key and value bytes acknowledged, per topic."
    );
    describe_counter!(
        "strata_consume_records_total",
        "Records returned by consume, per topic."
    );
    describe_counter!(
        "strata_consume_bytes_total",
        Unit::Bytes,
        "Key and value bytes returned by consume, per topic."
    );
    describe_histogram!(
        "strata_fsync_seconds",
        Unit::Seconds,
        "Duration of each group commit: the direct write of the buffered batches and its fdatasync."
    );
    describe_histogram!(
        "strata_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by route."
    );
    describe_gauge!(
        "strata_consume_long_polls",
        "Consumes waiting at the end of a partition for a record, per topic."
    );
    describe_gauge!(
        "strata_local_bytes",
        Unit::Bytes,
        "Bytes of segments on local disk, per topic."
    );
}
