//! `strata topic create|list|describe|delete`.

use anyhow::{Context, Result, bail};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::TopicCommand;
use crate::client::Client;

pub async fn run(server: &str, command: TopicCommand) -> Result<()> {
    let client = Client::new(server)?;
    match command {
        TopicCommand::Create {
            name,
            partitions,
            config,
        } => {
            let mut body = json!({ "name": name, "config": parse_config(&config)? });
            if let Some(p) = partitions {
                body["partitions"] = json!(p);
            }
            let response = client
                .send(client.request(Method::POST, "/v1/topics").json(&body))
                .await?;
            print_json(&response.json().await?)
        }
        TopicCommand::List => {
            let list = client.get_json("/v1/topics").await?;
            for topic in list["topics"].as_array().into_iter().flatten() {
                let partitions = topic["partitions"].as_array().map_or(0, Vec::len);
                let records: u64 = topic["partitions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        p["end_offset"].as_u64().unwrap_or(0)
                            - p["start_offset"].as_u64().unwrap_or(0)
                    })
                    .sum();
                println!(
                    "{}\tpartitions={partitions}\trecords={records}",
                    topic["name"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        TopicCommand::Describe { name } => {
            print_json(&client.get_json(&format!("/v1/topics/{name}")).await?)
        }
        TopicCommand::Delete { name } => {
            client
                .send(client.request(Method::DELETE, &format!("/v1/topics/{name}")))
                .await?;
            println!("deleted topic {name}");
            Ok(())
        }
    }
}

/// `key=value` pairs into a config object; numbers become JSON numbers.
fn parse_config(pairs: &[String]) -> Result<Map<String, Value>> {
    let mut config = Map::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--config expects key=value, got {pair:?}");
        };
        let value = value
            .parse::<i64>()
            .map_or_else(|_| Value::String(value.to_string()), Value::from);
        config.insert(key.to_string(), value);
    }
    Ok(config)
}

fn print_json(value: &Value) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).context("printing")?
    );
    Ok(())
}
