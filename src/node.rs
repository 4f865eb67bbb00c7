//! `strata node drain ID`: moves every replica and leadership off a node
//! (through any node of the cluster), so it can be stopped.

use anyhow::Result;
use clap::Subcommand;
use reqwest::Method;

use crate::client::Client;

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Move every replica and leadership off node ID; `strata node drain`
    /// returns at once, `GET /v1/cluster` shows `"draining": true` until
    /// the node holds nothing.
    Drain { id: String },
}

pub async fn run(server: &str, command: NodeCommand) -> Result<()> {
    let client = Client::new(server)?;
    match command {
        NodeCommand::Drain { id } => {
            let response = client
                .send(client.request(Method::POST, &format!("/v1/cluster/nodes/{id}/drain")))
                .await?;
            println!("{}", response.text().await?);
        }
    }
    Ok(())
}
