//! `strata bench serve`: serving reads over a long history that is mostly
//! in the cold tier — key lookups from the key index (one key, and
//! multi-gets of 100), one key's history (`range?key=`), and SQL
//! `WHERE key = …` (beside DuckDB on the same Parquet files). Prints
//! medians and p99s measured over HTTP from this process.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};

use crate::bench::ensure_topic;
use crate::bench_query::{Dataset, duckdb_median, load, median};
use crate::client::Client;

#[derive(Args)]
pub struct ServeBench {
    #[arg(long, default_value = "bench-serve")]
    topic: String,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Records to load (skipped when the topic already holds them).
    #[arg(long, default_value_t = 10_000_000)]
    records: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Days the records' timestamps span.
    #[arg(long, default_value_t = 30)]
    days: u64,
    /// Single-key lookups timed (multi-gets: a tenth as many).
    #[arg(long, default_value_t = 2000)]
    lookups: u32,
    /// Runs of the slower reads (range, SQL); the median is reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    runs: u16,
    /// A Python with `duckdb` installed: time DuckDB on the same files.
    #[arg(long)]
    duckdb_python: Option<String>,
    /// The cold tier's directory (`<data_dir>/cold`) for DuckDB.
    #[arg(long)]
    cold_dir: Option<String>,
    /// Records produced to a topic with three materialized views and to
    /// one without, to compare ingest (0: skip the views).
    #[arg(long, default_value_t = 2_000_000)]
    view_records: u64,
}

pub async fn run(client: &Client, args: ServeBench) -> Result<()> {
    let data = Dataset {
        topic: args.topic.clone(),
        partitions: args.partitions,
        records: args.records,
        days: args.days,
        keys: args.keys,
    };
    load(client, &data).await?;
    let topic = &args.topic;
    // Everything but what arrives later cold: offload until nothing is left.
    for _ in 0..10 {
        if crate::bench_query::offload(client, topic).await? == 0 {
            break;
        }
    }
    let started = Instant::now();
    // A topic is indexed from its first lookup by key on.
    client
        .get_json(&format!("/v1/topics/{topic}/snapshot?key=user-0000"))
        .await?;
    loop {
        let described = client.get_json(&format!("/v1/topics/{topic}")).await?;
        if described["indexes"][0]["records_behind"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "key index caught up {:.1} s after loading",
        started.elapsed().as_secs_f64()
    );
    let key = |n: u64| format!("user-{:04}", n.wrapping_mul(0x9e37_79b9) % args.keys);

    let mut times = Vec::new();
    for n in 0..u64::from(args.lookups) {
        let path = format!("/v1/topics/{topic}/snapshot?key={}", key(n));
        times.push(timed_lookup(client, &path, 1).await?);
    }
    report("lookup, one key", &mut times);

    let mut times = Vec::new();
    for n in 0..u64::from(args.lookups / 10).max(1) {
        let keys: String = (0..100)
            .map(|i| format!("key={}&", key(n * 100 + i)))
            .collect();
        let path = format!("/v1/topics/{topic}/snapshot?{keys}");
        times.push(timed_lookup(client, &path, 100).await?);
    }
    report("multi-get, 100 keys", &mut times);

    let mut times = Vec::new();
    for n in 0..u64::from(args.runs) {
        let path = format!("/v1/topics/{topic}/range?key={}&format=ndjson", key(n));
        let started = Instant::now();
        let body = client
            .send(client.request(Method::GET, &path))
            .await?
            .bytes()
            .await?;
        times.push(started.elapsed().as_secs_f64());
        if body.is_empty() {
            bail!("range?key= returned nothing");
        }
    }
    report("range?key=, one key's history", &mut times);

    let sql = |table: &str, k: &str| {
        format!("SELECT * FROM {table} WHERE key = '{k}' ORDER BY \"timestamp\" DESC LIMIT 1")
    };
    let mut times = Vec::new();
    for n in 0..u64::from(args.runs) {
        let text = sql(&format!("\"{topic}\""), &key(n));
        let started = Instant::now();
        let response = client
            .send(
                client
                    .request(Method::POST, "/v1/query")
                    .json(&json!({"sql": text})),
            )
            .await?;
        let body: Value = response.json().await?;
        times.push(started.elapsed().as_secs_f64());
        if body["rows"].as_array().is_none_or(Vec::is_empty) {
            bail!("SQL by key: no rows: {body}");
        }
    }
    let ours = report("sql WHERE key = …, latest", &mut times);
    if let (Some(python), Some(cold)) = (&args.duckdb_python, &args.cold_dir) {
        // The partitions' files, not the Delta log's checkpoints beside them.
        let glob = format!("read_parquet('{cold}/{topic}/[0-9]*/*.parquet')");
        let t = duckdb_median(python, &sql(&glob, &key(0)), usize::from(args.runs))?;
        println!(
            "duckdb sql WHERE key = …, latest (cold files only): median {:.1} ms; duckdb / strata = {:.1}",
            t * 1e3,
            t / ours
        );
    }

    if args.view_records > 0 {
        views(client, &args).await?;
    }

    let described = client.get_json(&format!("/v1/topics/{topic}")).await?;
    let cold: u64 = described["partitions"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["cold"]["bytes"].as_u64()).sum())
        .unwrap_or(0);
    let index = client
        .metric("strata_key_index_bytes", "")
        .await?
        .unwrap_or(0.0);
    println!(
        "key index {:.1} MiB, cold tier {:.1} MiB: {:.1} %",
        index / f64::from(1 << 20),
        cold as f64 / f64::from(1 << 20),
        100.0 * index / cold.max(1) as f64
    );
    Ok(())
}

/// Ingest into a topic with three materialized views against one without
/// (same records, same run), the views' lag once ingest stops, and reads
/// of a 10,000-row view: whole and one key.
async fn views(client: &Client, args: &ServeBench) -> Result<()> {
    const KEYS: u64 = 10_000;
    let (plain, viewed) = (
        format!("{}-plain", args.topic),
        format!("{}-viewed", args.topic),
    );
    ensure_topic(client, &plain, args.partitions).await?;
    ensure_topic(client, &viewed, args.partitions).await?;
    let definitions = [
        (
            "bench_per_key",
            format!(
                "SELECT key, count(*) AS n, sum(json_get_int(value, 'n')) AS total FROM \"{viewed}\" GROUP BY key"
            ),
        ),
        (
            "bench_per_hour",
            format!(
                "SELECT date_trunc('hour', \"timestamp\") AS hour, count(*) AS n FROM \"{viewed}\" GROUP BY 1 ORDER BY hour"
            ),
        ),
        (
            "bench_per_page",
            format!(
                "SELECT json_get_str(value, 'page') AS page, count(*) AS n, max(\"offset\") AS last FROM \"{viewed}\" GROUP BY page"
            ),
        ),
    ];
    for (name, sql) in &definitions {
        let response = client
            .request(Method::POST, "/v1/views")
            .json(&json!({"name": name, "sql": sql, "materialized": true}))
            .send()
            .await?;
        if !response.status().is_success() && response.status() != reqwest::StatusCode::CONFLICT {
            bail!("creating view {name}: {}", response.text().await?);
        }
    }
    // Alternating rounds (the machine's noise is larger than the effect);
    // medians of each.
    const ROUNDS: usize = 3;
    let (mut plain_rates, mut viewed_rates, mut lags, mut reflected) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        plain_rates.push(produce_all(client, &plain, args.view_records, KEYS).await?);
        let started = Instant::now();
        viewed_rates.push(produce_all(client, &viewed, args.view_records, KEYS).await?);
        let stopped = Instant::now();
        loop {
            let behind = client
                .metric("strata_view_lag_records", "bench_per_")
                .await?
                .unwrap_or(0.0);
            if behind == 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lags.push(stopped.elapsed().as_secs_f64());
        reflected.push(args.view_records as f64 / started.elapsed().as_secs_f64());
    }
    let rounds = |values: &[f64], scale: f64| {
        values
            .iter()
            .map(|v| format!("{:.0}", v * scale))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let listed = (
        rounds(&viewed_rates, 1e-3),
        rounds(&plain_rates, 1e-3),
        rounds(&lags, 1e3),
    );
    let (viewed_rate, plain_rate) = (median(&mut viewed_rates), median(&mut plain_rates));
    println!(
        "ingest with 3 materialized views: {viewed_rate:.0} records/s, without: {plain_rate:.0} records/s ({:.2}x; medians of {ROUNDS} alternating rounds: {} / {} K records/s)",
        viewed_rate / plain_rate,
        listed.0,
        listed.1,
    );
    println!(
        "views caught up {:.2} s after ingest stopped (median; rounds {} ms); ingest until the views reflect it: {:.0} records/s ({:.2}x the rate without views)",
        median(&mut lags),
        listed.2,
        median(&mut reflected),
        median(&mut reflected) / plain_rate
    );
    let mut times = Vec::new();
    for n in 0..u64::from(args.lookups / 2).max(1) {
        let key = format!("user-{:04}", n.wrapping_mul(0x9e37_79b9) % KEYS);
        let path = format!("/v1/views/bench_per_key?key={key}");
        let started = Instant::now();
        let body: Value = client
            .send(client.request(Method::GET, &path))
            .await?
            .json()
            .await?;
        times.push(started.elapsed().as_secs_f64());
        if body["rows"].as_array().map_or(0, Vec::len) != 1 {
            bail!("{path}: {body}");
        }
    }
    report("materialized view, one key", &mut times);
    let mut times = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        let body: Value = client
            .send(client.request(Method::GET, "/v1/views/bench_per_key"))
            .await?
            .json()
            .await?;
        times.push(started.elapsed().as_secs_f64());
        if body["rows"].as_array().map_or(0, Vec::len) as u64 != KEYS {
            bail!(
                "bench_per_key holds {} rows",
                body["rows"].as_array().map_or(0, Vec::len)
            );
        }
    }
    report("materialized view, all 10,000 rows (json)", &mut times);
    Ok(())
}

/// Produces `records` (of `keys` keys) to `topic`, 8 requests of 1,000 in
/// flight; returns records per second.
async fn produce_all(client: &Client, topic: &str, records: u64, keys: u64) -> Result<f64> {
    let started = Instant::now();
    let path = format!("/v1/topics/{topic}/records");
    let mut sent = 0;
    let span = 30 * 86_400_000;
    let start_ms = 1_767_225_600_000 - span;
    while sent < records {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            if sent >= records {
                break;
            }
            let count = 1000.min(records - sent);
            let body = crate::bench_query::body(sent, count, records, keys, start_ms, span);
            tasks.push(crate::bench_query::spawn_post(client, path.clone(), body));
            sent += count;
        }
        for task in tasks {
            task.await??;
        }
    }
    Ok(records as f64 / started.elapsed().as_secs_f64())
}

/// One lookup's seconds; fails unless the index answered with `rows` rows.
async fn timed_lookup(client: &Client, path: &str, rows: usize) -> Result<f64> {
    let started = Instant::now();
    let response = client.send(client.request(Method::GET, path)).await?;
    let how = response
        .headers()
        .get("strata-lookup")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body: Value = response.json().await?;
    let elapsed = started.elapsed().as_secs_f64();
    let found = body["records"].as_array().map_or(0, Vec::len);
    if how != "index" || found != rows {
        bail!("{path}: answered by {how:?} with {found} records, expected {rows} from the index");
    }
    Ok(elapsed)
}

/// Prints the median and p99 of `times`; returns the median.
fn report(name: &str, times: &mut [f64]) -> f64 {
    let m = median(times);
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    println!(
        "{name}: median {:.2} ms, p99 {:.2} ms ({} reads)",
        m * 1e3,
        p99 * 1e3,
        times.len()
    );
    m
}
