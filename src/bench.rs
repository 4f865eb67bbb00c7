//! `strata bench produce|consume|offload` (`query` is in `bench_query.rs`): a load generator and timer against a
//! running server. It shares the machine with the server, so its figures
//! include its own cost; `docs/benchmarks.md` says how to read them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::client::{Client, idempotency_prefix};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Concurrent producers posting fixed-size batches for a duration.
    Produce(ProduceBench),
    /// Readers consuming whole partitions from the hot tier (or the cold one with --cold).
    Consume(ConsumeBench),
    /// Offload alone, in this process: sealed segments -> Parquet -> committed manifest.
    Offload(OffloadBench),
    /// Range reads and SQL over days of data, mostly in the cold tier (and DuckDB on the same files).
    Query(crate::bench_query::QueryBench),
    /// Key lookups, one key's history and SQL by key over a long, mostly cold history.
    Serve(crate::bench_serve::ServeBench),
    /// The cold tier as a Delta table: a one-day query over many small files, then over them compacted, and DuckDB's delta_scan.
    Lake(crate::bench_lake::LakeBench),
}

#[derive(Args)]
pub struct OffloadBench {
    /// Records to load and offload.
    #[arg(long, default_value_t = 5_000_000)]
    records: u64,
    /// Approximate bytes of each record's JSON.
    #[arg(long, default_value_t = 120)]
    record_size: usize,
    /// Segment size; each becomes one Parquet file.
    #[arg(long, default_value_t = 128 * 1024 * 1024)]
    segment_bytes: u64,
    /// Partitions (offloaded in parallel, one per core).
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Cold tier to offload to (default: a temporary file:// directory).
    #[arg(long)]
    object_store: Option<String>,
    /// Words the records' padding is drawn from (1 to 32): fewer words,
    /// more compressible records and less work for zstd.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=32))]
    vocabulary: u64,
    /// Publish the Delta table as the offload goes, with the compactor
    /// running beside it (`false`: the cold tier alone).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    lake: bool,
}

#[derive(Args)]
pub struct ProduceBench {
    #[arg(long, default_value = "bench-produce")]
    topic: String,
    /// Partitions of the topic if the bench creates it.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Concurrent producers (each waits for its ack before sending again).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Records per request.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Approximate bytes of each record's JSON.
    #[arg(long, default_value_t = 120)]
    record_size: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Target records/s over all producers (0 = as fast as acks allow).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Each producer writes one partition (producer i: partition i mod
    /// partitions) and sends to its leader, as a partition-aware client
    /// does; the default sends every batch, spread over all partitions,
    /// to `--server`, which passes other leaders' parts on.
    #[arg(long)]
    direct: bool,
}

#[derive(Args)]
pub struct ConsumeBench {
    #[arg(long, default_value = "bench-consume")]
    topic: String,
    /// Partitions of the topic if the bench creates it.
    #[arg(long, default_value_t = 2)]
    partitions: u32,
    /// Records to load first when the topic holds fewer.
    #[arg(long, default_value_t = 5_000_000)]
    records: u64,
    /// Approximate bytes of each record's JSON.
    #[arg(long, default_value_t = 120)]
    record_size: usize,
    /// Records per consume request.
    #[arg(long, default_value_t = 10_000)]
    max_records: u64,
    /// Times each partition is read end to end.
    #[arg(long, default_value_t = 1)]
    passes: u32,
    /// Offload everything first (and delete it locally), so reads come from Parquet.
    #[arg(long)]
    cold: bool,
}

pub async fn run(server: &str, command: BenchCommand) -> Result<()> {
    let client = Client::new(server)?;
    match command {
        BenchCommand::Produce(args) => produce(&client, args).await,
        BenchCommand::Consume(args) => consume(&client, args).await,
        BenchCommand::Offload(args) => offload(args).await,
        BenchCommand::Query(args) => crate::bench_query::run(&client, args).await,
        BenchCommand::Serve(args) => crate::bench_serve::run(&client, args).await,
        BenchCommand::Lake(args) => crate::bench_lake::run(&client, args).await,
    }
}

pub(crate) async fn ensure_topic(client: &Client, topic: &str, partitions: u32) -> Result<()> {
    let response = client
        .request(Method::POST, "/v1/topics")
        .json(&json!({"name": topic, "partitions": partitions}))
        .send()
        .await
        .context("creating the bench topic")?;
    match response.status() {
        s if s.is_success() || s == StatusCode::CONFLICT => Ok(()),
        s => bail!(
            "creating topic {topic}: {s}: {}",
            response.text().await.unwrap_or_default()
        ),
    }
}

/// A `{"records": [...]}` body of `count` records of about `size` bytes
/// each, all to `partition` when given.
fn batch_body(
    count: usize,
    size: usize,
    salt: usize,
    vocabulary: usize,
    partition: Option<u32>,
) -> (Bytes, usize) {
    let mut body = String::from("{\"records\":[");
    let mut record_bytes = 0;
    for i in 0..count {
        if i > 0 {
            body.push(',');
        }
        let n = salt * count + i;
        let to = partition.map_or(String::new(), |p| format!(r#""partition":{p},"#));
        let head = format!(
            r#"{{{to}"value":{{"user":"user-{:06}","page":"/products/{:05}","n":{n},"pad":""#,
            n % 1_000_000,
            n % 100_000
        );
        let pad = size.saturating_sub(head.len() + 4);
        let record = format!("{head}{}\"}}}}", pseudo_random_text(n, pad, vocabulary));
        record_bytes += record.len();
        body.push_str(&record);
    }
    body.push_str("]}");
    (Bytes::from(body), record_bytes)
}

async fn produce(client: &Client, args: ProduceBench) -> Result<()> {
    ensure_topic(client, &args.topic, args.partitions).await?;
    let (body, record_bytes) =
        batch_body(args.batch_size, args.record_size, 0, VOCABULARY.len(), None);
    let path = format!("/v1/topics/{}/records", args.topic);
    let leaders = if args.direct {
        partition_leaders(client, &args.topic).await?
    } else {
        Vec::new()
    };
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let mut tasks = Vec::new();
    let keys = idempotency_prefix("bench");
    for task in 0..args.concurrency {
        let (mut client, mut body, path) = (client.clone(), body.clone(), path.clone());
        if !leaders.is_empty() {
            let p = task % leaders.len();
            client = Client::new(&leaders[p])?;
            body = batch_body(
                args.batch_size,
                args.record_size,
                0,
                VOCABULARY.len(),
                Some(p as u32),
            )
            .0;
        }
        let keys = format!("{keys}-{task}");
        let pace = (args.rate > 0).then(|| {
            Duration::from_secs_f64(
                args.batch_size as f64 * args.concurrency as f64 / args.rate as f64,
            )
        });
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut ticks = pace.map(|p| {
                let mut t = tokio::time::interval(p);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            while Instant::now() < deadline {
                if let Some(t) = ticks.as_mut() {
                    t.tick().await;
                }
                let sent = Instant::now();
                // As a real producer would: retries (inside) never duplicate.
                let key = format!("{keys}-{}", latencies.len() as u64 + errors);
                match client
                    .produce(&path, "application/json", body.clone(), &key)
                    .await
                {
                    Ok(response) => {
                        let _ = response.bytes().await;
                        latencies.push(sent.elapsed().as_micros() as u64);
                    }
                    Err(error) => {
                        if errors == 0 {
                            eprintln!("a produce failed: {error:#}");
                        }
                        errors += 1
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    let requests = latencies.len() as f64;
    let records = requests * args.batch_size as f64;
    let (p50, p99, p999) = percentiles(&mut latencies);
    println!(
        "bench produce: {} producers x {} records of ~{} B, {secs:.1} s: {:.0} records/s, {:.1} MB/s, \
         latency p50 {p50:.1} ms p99 {p99:.1} ms p99.9 {p999:.1} ms, {errors} errors",
        args.concurrency,
        args.batch_size,
        record_bytes / args.batch_size.max(1),
        records / secs,
        requests * record_bytes as f64 / secs / 1e6,
    );
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}

/// The URL of each partition's leader, by partition number (from the
/// topic's description and the cluster view).
async fn partition_leaders(client: &Client, topic: &str) -> Result<Vec<String>> {
    let described = client.get_json(&format!("/v1/topics/{topic}")).await?;
    let cluster = client.get_json("/v1/cluster").await?;
    let url_of = |node: &str| {
        cluster["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["id"] == node)
            .and_then(|n| n["url"].as_str())
            .map(str::to_string)
    };
    described["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let leader = p["leader"].as_str().unwrap_or_default();
            url_of(leader).with_context(|| format!("no URL for leader {leader:?}"))
        })
        .collect()
}

async fn consume(client: &Client, args: ConsumeBench) -> Result<()> {
    if args.cold {
        let config = json!({"name": args.topic, "partitions": args.partitions, "config": {"local_retention_bytes": 0}});
        let response = client
            .request(Method::POST, "/v1/topics")
            .json(&config)
            .send()
            .await?;
        if !(response.status().is_success() || response.status() == StatusCode::CONFLICT) {
            bail!(
                "creating {}: {}",
                args.topic,
                response.text().await.unwrap_or_default()
            );
        }
    } else {
        ensure_topic(client, &args.topic, args.partitions).await?;
    }
    let held = held_records(client, &args.topic).await?;
    if held < args.records {
        load(client, &args.topic, args.records - held, args.record_size).await?;
    }
    if args.cold {
        let path = format!("/v1/topics/{}/tiering/run?roll=true", args.topic);
        let summary = client
            .send(client.request(Method::POST, &path))
            .await?
            .text()
            .await?;
        eprintln!("offloaded: {summary}");
    }
    let topic = client
        .get_json(&format!("/v1/topics/{}", args.topic))
        .await?;
    let ranges: Vec<(u64, u64, u64)> = topic["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let get = |k: &str| p[k].as_u64().unwrap_or(0);
            (get("partition"), get("start_offset"), get("end_offset"))
        })
        .collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (partition, start, end) in ranges {
        let client = client.clone();
        let path = format!("/v1/topics/{}/partitions/{partition}/records", args.topic);
        let (max_records, passes) = (args.max_records, args.passes);
        tasks.push(tokio::spawn(async move {
            let (mut records, mut bytes) = (0u64, 0u64);
            let mut latencies = Vec::new();
            for _ in 0..passes {
                let mut offset = start;
                while offset < end {
                    let url = format!(
                        "{path}?offset={offset}&max_records={max_records}&max_bytes=67108864"
                    );
                    let sent = Instant::now();
                    let body = client
                        .send(client.request(Method::GET, &url))
                        .await?
                        .bytes()
                        .await?;
                    latencies.push(sent.elapsed().as_micros() as u64);
                    let next = next_offset(&body).context("response without next_offset")?;
                    records += next - offset;
                    bytes += body.len() as u64;
                    offset = next;
                }
            }
            anyhow::Ok((records, bytes, latencies))
        }));
    }
    let (mut records, mut bytes, mut latencies) = (0u64, 0u64, Vec::new());
    for task in tasks {
        let (r, b, l) = task.await??;
        records += r;
        bytes += b;
        latencies.extend(l);
    }
    let secs = started.elapsed().as_secs_f64();
    let (p50, p99, p999) = percentiles(&mut latencies);
    println!(
        "bench consume: {records} records in {secs:.2} s: {:.0} records/s, {:.1} MB/s of response JSON, \
         request latency p50 {p50:.1} ms p99 {p99:.1} ms p99.9 {p999:.1} ms ({max} records per request)",
        records as f64 / secs,
        bytes as f64 / secs / 1e6,
        max = args.max_records,
    );
    Ok(())
}

pub(crate) async fn held_records(client: &Client, topic: &str) -> Result<u64> {
    let t = client.get_json(&format!("/v1/topics/{topic}")).await?;
    Ok(t["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["end_offset"].as_u64().unwrap_or(0) - p["start_offset"].as_u64().unwrap_or(0))
        .sum())
}

async fn load(client: &Client, topic: &str, records: u64, record_size: usize) -> Result<()> {
    let batch = 1000usize;
    let requests = records.div_ceil(batch as u64);
    let path = Arc::new(format!("/v1/topics/{topic}/records"));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, path, next) = (client.clone(), path.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    return anyhow::Ok(());
                }
                let (body, _) = batch_body(batch, record_size, i as usize, VOCABULARY.len(), None);
                let request = client
                    .request(Method::POST, &path)
                    .header("content-type", "application/json")
                    .body(body);
                client.send(request).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    eprintln!(
        "loaded {} records in {:.1} s",
        requests * batch as u64,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Loads `records` into a temporary broker, seals them, and times the offload.
async fn offload(args: OffloadBench) -> Result<()> {
    use strata_server::broker::produce::{BodyFormat, parse_body};
    use strata_server::broker::{Broker, BrokerConfig, TopicConfigOverrides};
    use strata_server::tiering::{ColdStore, Tiering, TieringConfig};

    let dir = tempfile::tempdir()?;
    let config = BrokerConfig {
        data_dir: dir.path().join("data"),
        ..BrokerConfig::default()
    };
    let broker = Arc::new(Broker::open(config)?);
    let overrides = TopicConfigOverrides {
        segment_bytes: Some(args.segment_bytes),
        local_retention_bytes: Some(-1),
        local_retention_ms: Some(-1),
        ..Default::default()
    };
    let topic = broker.create_topic("bench-offload", Some(args.partitions), &overrides)?;
    let batch = 1000usize;
    let loading = Instant::now();
    for i in 0..args.records.div_ceil(batch as u64) {
        let (body, _) = batch_body(
            batch,
            args.record_size,
            i as usize,
            args.vocabulary as usize,
            None,
        );
        let records = parse_body(&body, BodyFormat::Json, 1 << 20)?;
        topic.produce(&records, strata_server::broker::timestamp::now_ms())?;
    }
    let (mut segment_bytes, mut loaded) = (0u64, 0u64);
    for p in topic.partitions() {
        p.roll()?;
        segment_bytes += p.segments().iter().map(|s| s.size_bytes).sum::<u64>();
        loaded += p.end_offset();
    }
    eprintln!(
        "loaded {loaded} records ({:.0} MB of segments) in {:.1} s",
        segment_bytes as f64 / 1e6,
        loading.elapsed().as_secs_f64()
    );

    let url = match &args.object_store {
        Some(url) => url.clone(),
        None => format!("file://{}/cold", dir.path().display()),
    };
    let config = TieringConfig {
        delta_table: args.lake,
        compaction: args.lake,
        ..TieringConfig::default()
    };
    let tiering = Tiering::open(broker.clone(), ColdStore::open(&url)?, config, "bench").await?;
    let rss_before = peak_rss_mib();
    let (started, cpu_before) = (Instant::now(), cpu_seconds());
    // The compactor's passes run beside the offload, as in a server.
    let compactor = args.lake.then(|| {
        let tiering = tiering.clone();
        tokio::spawn(async move {
            loop {
                tiering.compact_all().await;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
    });
    let summary = tiering.offload_topic("bench-offload", false).await?;
    let secs = started.elapsed().as_secs_f64();
    if let Some(compactor) = compactor {
        compactor.abort();
    }
    let cpu = cpu_seconds() - cpu_before;
    println!(
        "bench offload (lake {}): {} records in {} files in {secs:.2} s: {:.0} records/s, {:.0} MB/s of segments, \
         compression {:.1}x (segments {:.0} MB -> Parquet {:.0} MB), CPU {cpu:.2} s ({:.0} % of the time), \
         peak RSS {} MiB (before offload {} MiB)",
        args.lake,
        summary.records,
        summary.files,
        summary.records as f64 / secs,
        segment_bytes as f64 / secs / 1e6,
        segment_bytes as f64 / summary.bytes.max(1) as f64,
        segment_bytes as f64 / 1e6,
        summary.bytes as f64 / 1e6,
        100.0 * cpu / secs,
        peak_rss_mib(),
        rss_before,
    );
    Ok(())
}

/// CPU time (user + system) this process has used, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// This process's peak resident set (VmHWM), in MiB.
fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// The words of [`pseudo_random_text`].
const VOCABULARY: [&str; 32] = [
    "alpha", "bravo", "cart", "delta", "echo", "fox", "golf", "hotel", "india", "juliet", "kilo",
    "lima", "mike", "nov", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "user", "view",
    "click", "page", "home", "search", "buy", "login", "error", "ok", "mobile", "web",
];

/// About `len` bytes of words drawn from the first `vocabulary` words of
/// [`VOCABULARY`]: with all 32, text that compresses like log and event
/// payloads do, not like a run of one byte (a xorshift sequence seeded by
/// `seed` picks the words).
pub(crate) fn pseudo_random_text(seed: usize, len: usize, vocabulary: usize) -> String {
    let words = &VOCABULARY[..vocabulary.clamp(1, VOCABULARY.len())];
    let mut x = (seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut text = String::with_capacity(len + 8);
    while text.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        text.push_str(words[(x % words.len() as u64) as usize]);
        text.push(' ');
    }
    text.truncate(len);
    text
}

/// p50, p99 and p99.9 of latencies in microseconds, as milliseconds.
fn percentiles(latencies: &mut [u64]) -> (f64, f64, f64) {
    latencies.sort_unstable();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(i).map_or(0.0, |&us| us as f64 / 1000.0)
    };
    (at(0.50), at(0.99), at(0.999))
}

/// Finds `"next_offset":N` near the end of a consume response without parsing the records.
fn next_offset(body: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(&body[body.len().saturating_sub(128)..]);
    let at = text.rfind("\"next_offset\":")? + "\"next_offset\":".len();
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
