//! `strata consume TOPIC`: print records as NDJSON, optionally following.

use std::io::Write;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::Value;

use crate::client::Client;

#[derive(serde::Deserialize)]
struct Page<'a> {
    #[serde(borrow)]
    records: Vec<&'a serde_json::value::RawValue>,
    next_offset: u64,
    end_offset: u64,
}

#[derive(Args)]
pub struct ConsumeArgs {
    topic: String,
    /// Only this partition (default: all).
    #[arg(long)]
    partition: Option<u32>,
    /// Start at this offset.
    #[arg(long, conflicts_with = "from_beginning")]
    offset: Option<u64>,
    /// Start at the first available offset (default: the end).
    #[arg(long)]
    from_beginning: bool,
    /// Keep waiting for new records (long polls).
    #[arg(long)]
    follow: bool,
}

pub async fn run(server: &str, args: ConsumeArgs) -> Result<()> {
    let client = Client::new(server)?;
    let topic = client
        .get_json(&format!("/v1/topics/{}", args.topic))
        .await?;
    let partitions: Vec<&Value> = topic["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let mut tasks = Vec::new();
    for p in partitions {
        let id = p["partition"].as_u64().unwrap_or(0) as u32;
        if args.partition.is_some_and(|only| only != id) {
            continue;
        }
        let start = match (args.offset, args.from_beginning) {
            (Some(offset), _) => offset,
            (None, true) => p["start_offset"].as_u64().unwrap_or(0),
            (None, false) => p["end_offset"].as_u64().unwrap_or(0),
        };
        tasks.push(tokio::spawn(follow_partition(
            client.clone(),
            args.topic.clone(),
            id,
            start,
            args.follow,
        )));
    }
    if tasks.is_empty() {
        bail!(
            "topic {} has no partition {}",
            args.topic,
            args.partition
                .map_or("at all".to_string(), |p| p.to_string())
        );
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn follow_partition(
    client: Client,
    topic: String,
    partition: u32,
    mut offset: u64,
    follow: bool,
) -> Result<()> {
    let wait_ms = if follow { 30_000 } else { 0 };
    loop {
        let path = format!(
            "/v1/topics/{topic}/partitions/{partition}/records?offset={offset}&max_records=10000&wait_ms={wait_ms}"
        );
        let body = client
            .send(client.request(reqwest::Method::GET, &path))
            .await?
            .bytes()
            .await?;
        // Records are printed as the server wrote them: values keep their exact text.
        let page: Page<'_> = serde_json::from_slice(&body)?;
        {
            let mut out = std::io::stdout().lock();
            for record in &page.records {
                writeln!(out, "{}", record.get())?;
            }
            out.flush()?;
        }
        offset = page.next_offset;
        let end = page.end_offset;
        if !follow && offset >= end {
            return Ok(());
        }
    }
}
