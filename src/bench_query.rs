//! `strata bench query`: loads N days of data (mostly offloaded to the cold
//! tier), then times full-history and one-day range reads (ndjson and
//! Arrow) and SQL aggregates, and optionally DuckDB reading the same Parquet
//! files with the same filter. Prints medians of `--runs` runs.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::json;

use crate::bench::{ensure_topic, pseudo_random_text};
use crate::client::Client;

#[derive(Args)]
pub struct QueryBench {
    #[arg(long, default_value = "bench-query")]
    topic: String,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Records to load (skipped when the topic already holds them).
    #[arg(long, default_value_t = 10_000_000)]
    records: u64,
    /// Days the records' timestamps span (ending 2026-01-01T00:00:00Z).
    #[arg(long, default_value_t = 30)]
    days: u64,
    /// Runs of each measurement (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    runs: u16,
    /// A Python with `duckdb` installed: time DuckDB on the same files.
    #[arg(long)]
    duckdb_python: Option<String>,
    /// The cold tier's directory (`<data_dir>/cold` by default) for DuckDB.
    #[arg(long)]
    cold_dir: Option<String>,
}

const END_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const DAY_MS: i64 = 86_400_000;

pub async fn run(client: &Client, args: QueryBench) -> Result<()> {
    let start_ms = END_MS - args.days as i64 * DAY_MS;
    let data = Dataset {
        topic: args.topic.clone(),
        partitions: args.partitions,
        records: args.records,
        days: args.days,
        keys: 1000,
    };
    load(client, &data).await?;
    // One day in the middle of the history: in the cold tier.
    let day_from = start_ms + (args.days as i64 / 2) * DAY_MS;
    let day_to = day_from + DAY_MS;
    let topic = &args.topic;
    let day = format!("from={day_from}&to={day_to}");

    let mut report = Vec::new();
    for (name, query) in [
        ("range ndjson, full history", "format=ndjson".to_string()),
        ("range arrow, full history", "format=arrow".to_string()),
        ("range ndjson, one day", format!("format=ndjson&{day}")),
        ("range arrow, one day", format!("format=arrow&{day}")),
    ] {
        let arrow = query.contains("arrow");
        let path = format!("/v1/topics/{topic}/range?{query}");
        let mut times = Vec::new();
        let (mut rows, mut bytes) = (0, 0);
        for _ in 0..args.runs {
            let started = Instant::now();
            (rows, bytes) = read_range(client, &path, arrow).await?;
            times.push(started.elapsed().as_secs_f64());
        }
        let t = median(&mut times);
        println!(
            "{name}: {rows} records ({:.2} GiB), median {:.3} s, {:.0} records/s",
            bytes as f64 / f64::from(1 << 30),
            t,
            rows as f64 / t
        );
        report.push((name, t));
    }

    let sql = |from: Option<i64>, to: Option<i64>| {
        let filter = match (from, to) {
            (Some(a), Some(b)) => format!(
                "WHERE \"timestamp\" >= '{}' AND \"timestamp\" < '{}'",
                rfc3339(a),
                rfc3339(b)
            ),
            _ => String::new(),
        };
        format!(
            "SELECT key, count(*) AS n, max(\"offset\") AS last_offset FROM {table} {filter} GROUP BY key ORDER BY n DESC, key LIMIT 10",
            table = "\"{TABLE}\""
        )
    };
    let full_sql = sql(None, None);
    let day_sql = sql(Some(day_from), Some(day_to));
    for (name, text) in [
        ("sql aggregate, full history", &full_sql),
        ("sql aggregate, one day", &day_sql),
    ] {
        let text = text.replace("{TABLE}", topic);
        let mut times = Vec::new();
        for _ in 0..args.runs {
            let started = Instant::now();
            let response = client
                .send(
                    client
                        .request(Method::POST, "/v1/query")
                        .json(&json!({"sql": text, "format": "json"})),
                )
                .await?;
            let body: serde_json::Value = response.json().await?;
            if body["rows"].as_array().is_none_or(|r| r.is_empty()) {
                bail!("{name}: no rows: {body}");
            }
            times.push(started.elapsed().as_secs_f64());
        }
        let t = median(&mut times);
        println!("{name}: median {t:.3} s");
        report.push((name, t));
    }
    let time_of = |name: &str| report.iter().find(|(n, _)| *n == name).map_or(0.0, |r| r.1);
    println!(
        "one day / full history: range ndjson {:.3}, range arrow {:.3}, sql {:.3}",
        time_of("range ndjson, one day") / time_of("range ndjson, full history"),
        time_of("range arrow, one day") / time_of("range arrow, full history"),
        time_of("sql aggregate, one day") / time_of("sql aggregate, full history"),
    );

    if let (Some(python), Some(cold)) = (&args.duckdb_python, &args.cold_dir) {
        // Partition directories only: `_delta_log` holds Parquet checkpoints.
        let glob = format!("{cold}/{topic}/[0-9]*/*.parquet");
        for (name, text) in [("full history", &full_sql), ("one day", &day_sql)] {
            let duck_sql = text.replace("\"{TABLE}\"", &format!("read_parquet('{glob}')"));
            let t = duckdb_median(python, &duck_sql, usize::from(args.runs))?;
            let ours = time_of(&format!("sql aggregate, {name}"));
            println!(
                "duckdb sql aggregate, {name}: median {t:.3} s; strata / duckdb = {:.2}",
                ours / t
            );
        }
    }
    Ok(())
}

fn rfc3339(ms: i64) -> String {
    strata_server::broker::timestamp::format_timestamp(ms)
}

pub(crate) fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Reads a range response to the end; returns its records and bytes.
async fn read_range(client: &Client, path: &str, arrow: bool) -> Result<(u64, u64)> {
    let response = client.send(client.request(Method::GET, path)).await?;
    if !arrow {
        let (mut lines, mut bytes) = (0u64, 0u64);
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("reading the range")?;
            lines += memchr_count(&chunk);
            bytes += chunk.len() as u64;
        }
        return Ok((lines, bytes));
    }
    let body: Bytes = response.bytes().await.context("reading the range")?;
    let bytes = body.len() as u64;
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)?;
    let mut rows = 0u64;
    for batch in reader {
        rows += batch?.num_rows() as u64;
    }
    Ok((rows, bytes))
}

fn memchr_count(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// What a query or serving bench loads.
pub(crate) struct Dataset {
    pub topic: String,
    pub partitions: u32,
    pub records: u64,
    /// Days the timestamps span, ending at 2026-01-01T00:00:00Z.
    pub days: u64,
    /// Distinct keys (`user-N`).
    pub keys: u64,
}

/// Loads the records unless the topic holds them, offloads all but the
/// last ~1 %, which stays hot.
pub(crate) async fn load(client: &Client, args: &Dataset) -> Result<()> {
    let start_ms = END_MS - args.days as i64 * DAY_MS;
    ensure_topic(client, &args.topic, args.partitions).await?;
    let held = crate::bench::held_records(client, &args.topic).await?;
    if held >= args.records {
        eprintln!("{} already holds {held} records", args.topic);
        return Ok(());
    }
    let span = args.days as i64 * DAY_MS;
    let batch = 1000u64;
    let hot_from = args.records - args.records / 100;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut offloaded = false;
    let concurrency = 8;
    while sent < args.records {
        if sent >= hot_from && !offloaded {
            offload(client, &args.topic).await?;
            offloaded = true;
        }
        let end = if offloaded { args.records } else { hot_from };
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            if sent >= end {
                break;
            }
            let count = batch.min(end - sent);
            let body = body(sent, count, args.records, args.keys, start_ms, span);
            let path = format!("/v1/topics/{}/records", args.topic);
            tasks.push(spawn_post(client, path, body));
            sent += count;
        }
        for task in tasks {
            task.await??;
        }
    }
    eprintln!(
        "loaded {} records in {:.1} s",
        args.records,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Posts `body` (a produce request) to `path` in a task of its own.
pub(crate) fn spawn_post(
    client: &Client,
    path: String,
    body: Bytes,
) -> tokio::task::JoinHandle<Result<()>> {
    let client = client.clone();
    tokio::spawn(async move {
        client
            .send(
                client
                    .request(Method::POST, &path)
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await
            .map(|_| ())
    })
}

pub(crate) async fn offload(client: &Client, topic: &str) -> Result<u64> {
    let started = Instant::now();
    let summary = client
        .send(client.request(
            Method::POST,
            &format!("/v1/topics/{topic}/tiering/run?roll=true"),
        ))
        .await?
        .text()
        .await?;
    eprintln!(
        "offloaded in {:.1} s: {summary}",
        started.elapsed().as_secs_f64()
    );
    let summary: serde_json::Value = serde_json::from_str(&summary)?;
    Ok(summary["records"].as_u64().unwrap_or(0))
}

/// Records `first..first+count` of `total`, their timestamps spread evenly
/// over `span` ms from `start_ms`, keyed by one of `keys` users.
pub(crate) fn body(
    first: u64,
    count: u64,
    total: u64,
    keys: u64,
    start_ms: i64,
    span: i64,
) -> Bytes {
    let mut out = String::from("{\"records\":[");
    for n in first..first + count {
        if n > first {
            out.push(',');
        }
        let ts = start_ms + (n as i128 * span as i128 / total as i128) as i64;
        let user = n.wrapping_mul(2_654_435_761) % keys;
        let head = format!(
            r#"{{"key":"user-{user:04}","timestamp":{ts},"value":{{"page":"/products/{:05}","n":{n},"pad":""#,
            n % 100_000
        );
        out.push_str(&head);
        out.push_str(&pseudo_random_text(
            n as usize,
            120usize.saturating_sub(head.len()),
            32,
        ));
        out.push_str("\"}}");
    }
    out.push_str("]}");
    Bytes::from(out)
}

/// Median seconds of DuckDB running `sql` (two threads, like this machine).
pub(crate) fn duckdb_median(python: &str, sql: &str, runs: usize) -> Result<f64> {
    let script = r#"
import glob, os, sys, time, duckdb
con = duckdb.connect()
con.execute("SET threads TO 2")
if "delta_scan" in sys.argv[1]:
    # The extension from its PyPI wheel, never downloaded.
    import duckdb_extension_delta
    ext = glob.glob(os.path.join(os.path.dirname(duckdb_extension_delta.__file__), "extensions", "*", "delta.duckdb_extension"))[0]
    con.execute(f"LOAD '{ext}'")
sql, runs = sys.argv[1], int(sys.argv[2])
times = []
for _ in range(runs):
    t = time.perf_counter()
    rows = con.execute(sql).fetchall()
    times.append(time.perf_counter() - t)
    assert rows
times.sort()
print(times[len(times) // 2])
"#;
    let output = std::process::Command::new(python)
        .args(["-c", script, sql, &runs.to_string()])
        .output()
        .context("running DuckDB")?;
    if !output.status.success() {
        bail!("duckdb failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
}
