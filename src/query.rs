//! `strata range` and `strata query`: stream a time range or a SQL result
//! to stdout; `query` prints a table by default.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use futures_util::StreamExt;
use reqwest::Method;

use crate::client::Client;

#[derive(Args)]
pub struct RangeArgs {
    topic: String,
    /// First timestamp (RFC 3339 or epoch ms), inclusive.
    #[arg(long)]
    from: Option<String>,
    /// Last timestamp (RFC 3339 or epoch ms), exclusive.
    #[arg(long)]
    to: Option<String>,
    /// Only this partition.
    #[arg(long)]
    partition: Option<u32>,
    /// Only records with this key.
    #[arg(long)]
    key: Option<String>,
    /// At most this many records.
    #[arg(long)]
    limit: Option<u64>,
    /// ndjson, json, csv, arrow or parquet.
    #[arg(long, default_value = "ndjson")]
    format: String,
}

#[derive(Args)]
pub struct QueryArgs {
    /// One SQL query; each topic is a table.
    sql: String,
    /// table, json, ndjson, csv, arrow or parquet.
    #[arg(long, default_value = "table")]
    format: String,
}

pub async fn range(server: &str, args: RangeArgs) -> Result<()> {
    let client = Client::new(server)?;
    let mut query: Vec<(&str, String)> = vec![("format", args.format)];
    query.extend(args.from.map(|v| ("from", v)));
    query.extend(args.to.map(|v| ("to", v)));
    query.extend(args.partition.map(|v| ("partition", v.to_string())));
    query.extend(args.key.map(|v| ("key", v)));
    query.extend(args.limit.map(|v| ("limit", v.to_string())));
    let request = client
        .request(Method::GET, &format!("/v1/topics/{}/range", args.topic))
        .query(&query);
    copy_to_stdout(client.send(request).await?).await
}

pub async fn query(server: &str, args: QueryArgs) -> Result<()> {
    let client = Client::new(server)?;
    let table = args.format == "table";
    let format = if table { "arrow" } else { args.format.as_str() };
    let request = client
        .request(Method::POST, "/v1/query")
        .json(&serde_json::json!({"sql": args.sql, "format": format}));
    let response = client.send(request).await?;
    if !table {
        return copy_to_stdout(response).await;
    }
    let bytes = response.bytes().await.context("reading the result")?;
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .context("reading the Arrow result")?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .context("reading the Arrow result")?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
    eprintln!("{rows} row{}", if rows == 1 { "" } else { "s" });
    Ok(())
}

async fn copy_to_stdout(response: reqwest::Response) -> Result<()> {
    let mut body = response.bytes_stream();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("reading the response")?;
        if let Err(e) = out.write_all(&chunk) {
            // A closed pipe (`| head`) ends the output quietly.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e.into());
        }
    }
    out.flush().ok();
    Ok(())
}
