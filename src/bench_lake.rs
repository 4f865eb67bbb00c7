//! `strata bench lake`: the cold tier as an open table. Phase `load` makes
//! many small files (one offload, one Delta commit each) of records over
//! some days, then times a one-day SQL query over them and measures what a
//! reader of the table's log reads; phase `compacted` (against the same
//! data once the server's compaction has merged the files) times the same
//! query again, and DuckDB's `delta_scan` of the same day.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use reqwest::Method;
use serde_json::json;

use crate::bench_query::{body, duckdb_median, median};
use crate::client::Client;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    /// Make the small files and time the query over them.
    Load,
    /// Wait for compaction, then time the query again (and DuckDB).
    Compacted,
}

#[derive(Args)]
pub struct LakeBench {
    #[arg(long, default_value = "bench-lake")]
    topic: String,
    /// Small files to make (one offload and one table commit each).
    #[arg(long, default_value_t = 1000)]
    files: u64,
    /// Records per small file.
    #[arg(long, default_value_t = 2000)]
    records_per_file: u64,
    /// Days the records' timestamps span (ending 2026-01-01T00:00:00Z).
    #[arg(long, default_value_t = 10)]
    days: u64,
    /// Runs of each measurement (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    runs: u16,
    #[arg(long, value_enum)]
    phase: Phase,
    /// A Python with `duckdb` and `duckdb_extension_delta` installed.
    #[arg(long)]
    duckdb_python: Option<String>,
    /// The cold tier's directory (`<data_dir>/cold`), for DuckDB and the
    /// table's log.
    #[arg(long)]
    cold_dir: Option<String>,
}

const END_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const DAY_MS: i64 = 86_400_000;

pub async fn run(client: &Client, args: LakeBench) -> Result<()> {
    let topic = &args.topic;
    let total = args.files * args.records_per_file;
    let start_ms = END_MS - args.days as i64 * DAY_MS;
    if args.phase == Phase::Load {
        load(client, &args, total, start_ms).await?;
    } else {
        wait_for_compaction(client, topic, args.files).await?;
    }
    let files = cold_files(client, topic).await?;
    let day_from = start_ms + (args.days as i64 / 2) * DAY_MS;
    let day_to = day_from + DAY_MS;
    let sql = format!(
        "SELECT count(*) AS n, count(DISTINCT key) AS users, max(\"offset\") AS last \
         FROM \"{topic}\" WHERE \"timestamp\" >= '{}' AND \"timestamp\" < '{}'",
        strata_server::broker::timestamp::format_timestamp(day_from),
        strata_server::broker::timestamp::format_timestamp(day_to),
    );
    measure(client, &args, &sql, files).await?;
    if args.phase == Phase::Compacted {
        // Once the grace period has passed, the table's next checkpoint
        // leaves the compaction's removes out (they are what a reader of
        // the log read most of, right after compaction).
        let label = format!("topic=\"{topic}\"");
        let checkpoints = "strata_table_checkpoints_total";
        let before = client.metric(checkpoints, &label).await?.unwrap_or(0.0);
        let started = Instant::now();
        while client.metric(checkpoints, &label).await?.unwrap_or(0.0) <= before {
            if started.elapsed() > Duration::from_secs(180) {
                bail!("no checkpoint without the removes within 3 minutes");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!(
            "after the grace period ({:.0} s later), a checkpoint without the removes:",
            started.elapsed().as_secs_f64()
        );
        measure(client, &args, &sql, files).await?;
    }
    Ok(())
}

/// Times `sql` (the one-day query) over HTTP, and, given the table's
/// directory, its log and DuckDB's `delta_scan` of the same day.
async fn measure(client: &Client, args: &LakeBench, sql: &str, files: u64) -> Result<()> {
    let topic = &args.topic;
    let mut times = Vec::new();
    for _ in 0..args.runs {
        let started = Instant::now();
        let response = client
            .send(
                client
                    .request(Method::POST, "/v1/query")
                    .json(&json!({"sql": sql, "format": "json"})),
            )
            .await?;
        let body: serde_json::Value = response.json().await?;
        if body["rows"][0][0].as_u64().unwrap_or(0) == 0 {
            bail!("the one-day query found nothing: {body}");
        }
        times.push(started.elapsed().as_secs_f64());
    }
    let ours = median(&mut times);
    println!("sql one day over {files} files: median {ours:.4} s");
    if let Some(cold) = &args.cold_dir {
        let log = std::path::Path::new(cold).join(topic).join("_delta_log");
        let (to_read, all) = log_bytes(&log)?;
        println!(
            "delta log: {:.2} MB to read the newest version (checkpoint and later commits), {:.2} MB in all",
            to_read as f64 / 1e6,
            all as f64 / 1e6
        );
        if let (Phase::Compacted, Some(python)) = (args.phase, &args.duckdb_python) {
            let table = std::path::Path::new(cold).join(topic);
            let duck_sql = sql.replace(
                &format!("\"{topic}\""),
                &format!("delta_scan('{}')", table.display()),
            );
            let duck = duckdb_median(python, &duck_sql, usize::from(args.runs))?;
            println!(
                "duckdb delta_scan one day: median {duck:.4} s; duckdb / strata = {:.2}",
                duck / ours
            );
        }
    }
    Ok(())
}

/// One produce and one offload (so one file and one table commit) per file.
async fn load(client: &Client, args: &LakeBench, total: u64, start_ms: i64) -> Result<()> {
    let topic = &args.topic;
    // Fails when the topic exists: the load phase wants a fresh server.
    client
        .send(client.request(Method::POST, "/v1/topics").json(&json!({
            "name": topic, "partitions": 1,
            "config": {"local_retention_bytes": 0, "segment_bytes": 1u64 << 30}
        })))
        .await
        .context("creating the bench topic (on a fresh server)")?;
    let span = args.days as i64 * DAY_MS;
    let started = Instant::now();
    for f in 0..args.files {
        let first = f * args.records_per_file;
        let records = body(first, args.records_per_file, total, 1000, start_ms, span);
        client
            .send(
                client
                    .request(Method::POST, &format!("/v1/topics/{topic}/records"))
                    .header("content-type", "application/json")
                    .body(records),
            )
            .await?;
        client
            .send(client.request(
                Method::POST,
                &format!("/v1/topics/{topic}/tiering/run?roll=true"),
            ))
            .await?;
    }
    eprintln!(
        "loaded {total} records as {} files (one offload and table commit each) in {:.1} s",
        args.files,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn cold_files(client: &Client, topic: &str) -> Result<u64> {
    let described: serde_json::Value = client
        .send(client.request(Method::GET, &format!("/v1/topics/{topic}")))
        .await?
        .json()
        .await?;
    Ok(described["partitions"]
        .as_array()
        .context("partitions")?
        .iter()
        .filter_map(|p| p["cold"]["files"].as_u64())
        .sum())
}

async fn wait_for_compaction(client: &Client, topic: &str, before: u64) -> Result<()> {
    let started = Instant::now();
    loop {
        let files = cold_files(client, topic).await?;
        if files * 10 < before {
            eprintln!(
                "compaction: {before} files -> {files} in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return wait_for_table(client, topic).await;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("compaction left {files} files after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the table has published every manifest version (the
/// compaction's commit, and its checkpoint) and its version holds still.
async fn wait_for_table(client: &Client, topic: &str) -> Result<()> {
    let started = Instant::now();
    let mut last = None;
    loop {
        let described: serde_json::Value = client
            .send(client.request(Method::GET, &format!("/v1/topics/{topic}")))
            .await?
            .json()
            .await?;
        let version = described["table"]["version"].as_u64();
        let lag = client
            .metric(
                "strata_table_publish_lag_versions",
                &format!("topic=\"{topic}\""),
            )
            .await?;
        if lag == Some(0.0) && version.is_some() && version == last {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the table did not catch up with the compaction in 2 minutes");
        }
        last = version;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Bytes a reader of the newest version reads (the newest checkpoint and
/// the commits after it), and bytes of the whole log.
fn log_bytes(log: &std::path::Path) -> Result<(u64, u64)> {
    let checkpoint: Option<u64> = std::fs::read_to_string(log.join("_last_checkpoint"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["version"].as_u64());
    let (mut to_read, mut all) = (0, 0);
    for entry in std::fs::read_dir(log).context("reading the table's log")? {
        let entry = entry?;
        let size = entry.metadata()?.len();
        all += size;
        let name = entry.file_name().to_string_lossy().into_owned();
        let version: Option<u64> = name.split('.').next().and_then(|v| v.parse().ok());
        let wanted = match (version, checkpoint) {
            (Some(v), Some(c)) if name.contains(".checkpoint.") => v == c,
            (Some(v), Some(c)) => name.ends_with(".json") && v > c,
            (Some(_), None) => name.ends_with(".json"),
            (None, _) => name == "_last_checkpoint",
        };
        if wanted {
            to_read += size;
        }
    }
    Ok((to_read, all))
}
