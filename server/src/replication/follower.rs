//! A follower's task for one partition: agree with the leader (truncate
//! to where both logs still match, KIP-101), then fetch from the log end
//! for as long as this leader epoch lasts. A new map replaces the task.

use std::sync::Arc;
use std::time::Duration;

use strata_broker::timestamp::now_ms;
use strata_broker::{Partition, Topic};
use strata_cluster::NodeId;
use strata_cluster::replication::truncation_point;

use super::Replication;
use super::leader::parse_epochs;

/// Pause after a failed exchange with the leader.
const RETRY: Duration = Duration::from_millis(200);

enum Failed {
    /// Our log is not a prefix of the leader's: agree again.
    Diverged,
    Retry(String),
}

pub(super) async fn follow(
    replication: Arc<Replication>,
    topic: Arc<Topic>,
    partition: Arc<Partition>,
    leader: NodeId,
    leader_epoch: u64,
) {
    let name = topic.name().to_string();
    let p = partition.id();
    let mut quiet = false;
    'agree: loop {
        loop {
            if *replication.stopping.borrow() {
                return;
            }
            match replication
                .agree(&name, &partition, &leader, leader_epoch)
                .await
            {
                Ok(()) => break,
                Err(error) => {
                    tracing::debug!(topic = %name, partition = p, %leader, %error, "cannot agree with the leader yet");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        loop {
            if *replication.stopping.borrow() {
                return;
            }
            match replication
                .fetch_once(&name, &partition, &leader, leader_epoch)
                .await
            {
                Ok(()) => quiet = false,
                Err(Failed::Diverged) => continue 'agree,
                Err(Failed::Retry(error)) => {
                    if !quiet {
                        tracing::info!(topic = %name, partition = p, %leader, %error, "fetching from the leader failed; retrying");
                        quiet = true;
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}

impl Replication {
    fn request(&self, url: String) -> reqwest::RequestBuilder {
        let request = self.http.get(url);
        match self.secret() {
            Some(secret) => request.bearer_auth(secret.expose()),
            None => request,
        }
    }

    /// Truncates the local log to where it agrees with the leader's.
    async fn agree(
        &self,
        topic: &str,
        partition: &Arc<Partition>,
        leader: &NodeId,
        leader_epoch: u64,
    ) -> Result<(), String> {
        let url = self
            .url_of(leader)
            .ok_or("the leader's URL is not known yet")?;
        let latest = partition.leader_epochs().latest();
        let asked = latest.map_or(0, |e| e.epoch);
        let answer = self
            .request(format!(
                "{}/v1/cluster/partitions/{topic}/{}/epoch-end?epoch={asked}&leader_epoch={leader_epoch}",
                url.trim_end_matches('/'),
                partition.id()
            ))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !answer.status().is_success() {
            return Err(format!("the leader answered {}", answer.status()));
        }
        let answer: serde_json::Value = answer.json().await.map_err(|e| e.to_string())?;
        let end = answer["end_offset"].as_u64().ok_or("no end_offset")?;
        let said = answer["epoch"]
            .as_u64()
            .map(|epoch| strata_broker::epochs::EpochStart { epoch, start: end });
        let local_end = partition.log_end_offset();
        let point = truncation_point(latest, said, end, local_end, |e| partition.epoch_end(e));
        if point < local_end {
            let cutting = partition.clone();
            let start = partition.start_offset();
            tokio::task::spawn_blocking(move || {
                if point < start {
                    // Below what is local: nothing here is worth keeping.
                    tracing::warn!(
                        partition = cutting.id(),
                        point,
                        start,
                        "diverged below the local start; starting over"
                    );
                    Ok(())
                } else {
                    cutting.truncate_from(point)
                }
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// One fetch: appends what the leader returned, durably, and takes its
    /// high watermark.
    async fn fetch_once(
        &self,
        topic: &str,
        partition: &Arc<Partition>,
        leader: &NodeId,
        leader_epoch: u64,
    ) -> Result<(), Failed> {
        let retry = |e: &dyn std::fmt::Display| Failed::Retry(e.to_string());
        let url = self
            .url_of(leader)
            .ok_or_else(|| retry(&"the leader's URL is not known yet"))?;
        let me = self.me().ok_or_else(|| retry(&"not registered yet"))?;
        let offset = partition.log_end_offset();
        let known = partition.high_watermark().unwrap_or(0);
        let response = self
            .request(format!(
                "{}/v1/cluster/partitions/{topic}/{}/fetch?offset={offset}&leader_epoch={leader_epoch}&replica={me}&high_watermark={known}&max_bytes={}",
                url.trim_end_matches('/'),
                partition.id(),
                self.config.fetch_bytes
            ))
            .send()
            .await
            .map_err(|e| retry(&e))?;
        let status = response.status();
        if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
            // The leader's local log starts past ours (it offloaded and
            // dropped the rest): start over at its start.
            let body: serde_json::Value = response.json().await.map_err(|e| retry(&e))?;
            let start = body["error"]["start_offset"]
                .as_u64()
                .ok_or_else(|| retry(&"no start_offset"))?;
            if start > offset {
                let restarting = partition.clone();
                tokio::task::spawn_blocking(move || restarting.restart_at(start))
                    .await
                    .map_err(|e| retry(&e))?
                    .map_err(|e| retry(&e))?;
                return Ok(());
            }
            return Err(Failed::Diverged);
        }
        if status == reqwest::StatusCode::CONFLICT {
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            if body["error"]["code"] == "diverged" {
                return Err(Failed::Diverged);
            }
            return Err(retry(&body["error"]["message"]));
        }
        if !status.is_success() {
            return Err(retry(&format!("the leader answered {status}")));
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let hw: u64 = header("strata-high-watermark")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| retry(&"no high watermark"))?;
        let epochs = header("strata-leader-epochs")
            .and_then(|v| parse_epochs(&v))
            .unwrap_or_default();
        let bytes = response.bytes().await.map_err(|e| retry(&e))?;
        let appending = partition.clone();
        tokio::task::spawn_blocking(move || {
            for entry in epochs {
                appending.record_epoch(entry)?;
            }
            if let Some(appended) = appending.append_replica(&bytes, now_ms())? {
                appending.wait_durable(appended)?;
            }
            Ok::<_, strata_broker::BrokerError>(())
        })
        .await
        .map_err(|e| retry(&e))?
        .map_err(|e| match e {
            strata_broker::BrokerError::InvalidRequest(_) => Failed::Diverged,
            other => retry(&other),
        })?;
        partition.set_high_watermark(Some(hw.min(partition.log_end_offset())));
        Ok(())
    }
}
