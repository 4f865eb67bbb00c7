//! `strata token create|list|revoke`: over HTTP with an admin token
//! (`STRATA_TOKEN`), or with `--data-dir` straight on the object store, on
//! the server's machine, to make the first admin token.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::json;
use strata_server::cluster::ControlStore;
use strata_server::cluster::tokens::Permission;
use strata_server::tiering::ColdStore;

use crate::client::Client;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it (it is shown this once; the server keeps
    /// only its hash).
    Create {
        name: String,
        /// admin, produce:<topic glob>, consume:<topic glob> or query; repeat
        /// for several.
        #[arg(long = "allow", value_name = "PERMISSION", required = true)]
        allow: Vec<String>,
        /// Most bytes per second this token may produce (per node).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        produce_bytes_per_sec: Option<u64>,
        /// Most bytes per second this token may consume (per node).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        consume_bytes_per_sec: Option<u64>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List tokens: names and permissions, never the tokens.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a token.
    Revoke {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Where tokens are changed without a server.
#[derive(Args)]
pub struct StoreArgs {
    /// Work on the server's data directory and object store directly
    /// instead of over HTTP (no token needed: whoever can read the
    /// directory owns the server anyway).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// With --data-dir: the object store when it is not the default
    /// file://<data dir>/cold.
    #[arg(long, requires = "data_dir")]
    object_store: Option<String>,
}

impl StoreArgs {
    fn control(&self) -> Result<Option<ControlStore>> {
        let Some(data_dir) = &self.data_dir else {
            return Ok(None);
        };
        // A mistyped directory must not quietly get a cold tier of its own.
        if !data_dir.is_dir() {
            anyhow::bail!(
                "{} is not a directory: --data-dir names the server's data directory",
                data_dir.display()
            );
        }
        let url = match &self.object_store {
            Some(url) => url.clone(),
            None => strata_server::server::default_cold_url(data_dir)?,
        };
        let cold = ColdStore::open(&url).with_context(|| format!("opening {url}"))?;
        Ok(Some(ControlStore::new(&cold)))
    }
}

pub async fn run(server: &str, command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create {
            name,
            allow,
            produce_bytes_per_sec,
            consume_bytes_per_sec,
            store,
        } => {
            let token = match store.control()? {
                Some(control) => {
                    let permissions = allow
                        .iter()
                        .map(|p| Permission::parse(p))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(anyhow::Error::msg)?;
                    let now = strata_server::broker::timestamp::now_ms();
                    let created_at = strata_server::broker::timestamp::format_timestamp(now);
                    let quota = strata_server::cluster::tokens::Quota {
                        produce_bytes_per_sec,
                        consume_bytes_per_sec,
                    };
                    let (token, _, _) = control
                        .add_token(&name, permissions, quota, created_at)
                        .await?;
                    token.expose().to_string()
                }
                None => {
                    let client = Client::new(server)?;
                    let mut body = json!({ "name": name, "permissions": allow });
                    if let Some(rate) = produce_bytes_per_sec {
                        body["produce_bytes_per_sec"] = json!(rate);
                    }
                    if let Some(rate) = consume_bytes_per_sec {
                        body["consume_bytes_per_sec"] = json!(rate);
                    }
                    let response = client
                        .send(client.request(Method::POST, "/v1/tokens").json(&body))
                        .await?;
                    let created: serde_json::Value = response.json().await?;
                    created["token"]
                        .as_str()
                        .context("the server's answer has no token")?
                        .to_string()
                }
            };
            println!("{token}");
            eprintln!("token {name:?} created; it is shown only this once");
            Ok(())
        }
        TokenCommand::List { store } => {
            let tokens: Vec<(String, Vec<String>)> = match store.control()? {
                Some(control) => control
                    .tokens()
                    .await?
                    .1
                    .tokens
                    .into_iter()
                    .map(|t| {
                        (
                            t.name,
                            t.permissions.iter().map(ToString::to_string).collect(),
                        )
                    })
                    .collect(),
                None => {
                    let list = Client::new(server)?.get_json("/v1/tokens").await?;
                    list["tokens"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|t| {
                            let permissions = t["permissions"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|p| p.as_str().map(str::to_string))
                                .collect();
                            (t["name"].as_str().unwrap_or("").to_string(), permissions)
                        })
                        .collect()
                }
            };
            for (name, permissions) in tokens {
                println!("{name}\t{}", permissions.join(" "));
            }
            Ok(())
        }
        TokenCommand::Revoke { name, store } => {
            match store.control()? {
                Some(control) => {
                    control.revoke_token(&name).await?;
                }
                None => {
                    let client = Client::new(server)?;
                    client
                        .send(client.request(Method::DELETE, &format!("/v1/tokens/{name}")))
                        .await?;
                }
            }
            eprintln!("token {name:?} revoked");
            Ok(())
        }
    }
}
