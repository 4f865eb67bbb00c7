//! `strata produce TOPIC [--file F]`: NDJSON records in batches, with a
//! progress bar when reading a file. Each request carries an idempotency
//! key, so the retries of a failed request never duplicate records.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::Instant;

use crate::client::{Client, idempotency_prefix};
use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args)]
pub struct ProduceArgs {
    topic: String,
    /// NDJSON file of record objects ({"key", "value", "headers", "timestamp", "partition"}); stdin when absent.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Records per request.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
}

/// Requests are also cut at this many bytes.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

pub async fn run(server: &str, args: ProduceArgs) -> Result<()> {
    let client = Client::new(server)?;
    let (input, progress): (Box<dyn Read + Send>, Option<ProgressBar>) = match &args.file {
        Some(path) => {
            let file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let bar = ProgressBar::new(file.metadata()?.len());
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            (Box::new(file), Some(bar))
        }
        None => (Box::new(std::io::stdin()), None),
    };
    let path = format!("/v1/topics/{}/records", args.topic);
    let started = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut batch = String::new();
    let mut in_batch = 0usize;
    let (keys, mut requests) = (idempotency_prefix("produce"), 0u64);
    let mut lines = BufReader::new(input).lines();
    loop {
        let line = lines.next().transpose().context("reading input")?;
        if let Some(line) = &line {
            if !line.trim().is_empty() {
                batch.push_str(line);
                batch.push('\n');
                in_batch += 1;
            }
            bytes += line.len() as u64 + 1;
        }
        let full = in_batch >= args.batch_size.max(1) || batch.len() >= MAX_BATCH_BYTES;
        if in_batch > 0 && (full || line.is_none()) {
            // One key per request: a retry of it never writes twice.
            let key = format!("{keys}-{requests}");
            requests += 1;
            let body = bytes::Bytes::from(std::mem::take(&mut batch));
            client
                .produce(&path, "application/x-ndjson", body, &key)
                .await
                .with_context(|| format!("after {records} records"))?;
            records += in_batch as u64;
            in_batch = 0;
            if let Some(bar) = &progress {
                bar.set_position(bytes);
            }
        }
        if line.is_none() {
            break;
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "produced {records} records ({:.1} MB) to {} in {secs:.2} s: {:.0} records/s",
            bytes as f64 / 1e6,
            args.topic,
            records as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}
