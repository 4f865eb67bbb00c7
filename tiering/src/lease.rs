//! The writer lease: one process per node writes to a cold-tier prefix.
//!
//! Nodes of one cluster share the prefix; each offloads only the
//! partitions it owns (its own topics, and replicated partitions it leads:
//! see strata-cluster). What the lease adds is that two processes of the
//! *same node* (a restarted server whose predecessor is paused, not dead;
//! a copied data directory) never both commit.
//!
//! `<root>/_cluster/leases/<node>.json` names the owner, an epoch and an
//! expiry. A server
//! takes the lease on start (when it is free, expired, or already its own)
//! and renews it on every offload pass; before each manifest commit it
//! checks that the lease is still its own, so a server that lost the lease
//! stops committing. On stores with compare-and-swap (S3, MinIO) the lease
//! is written with `PutMode::Create`/`Update`, so two servers cannot both
//! take it; elsewhere (the local file system: `Create` only; Garage: none)
//! the last writer wins, and the check before every commit narrows the
//! window in which two servers could both commit to the time between that
//! check and the commit. On the local file system a server also holds an
//! exclusive OS lock on `<root>/_cluster/leases/<node>.lock` for as long
//! as it lives, so two processes of one node cannot both use a `file://`
//! prefix there either; the lock
//! goes with the process, also when it is killed.

use std::fs::{File, TryLockError};
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TieringError};
use crate::store::ColdStore;

/// How long a lease lasts without renewal.
pub const LEASE_MS: i64 = 30_000;

/// How often a running server renews its lease, whatever it is doing.
pub const RENEW_EVERY_MS: i64 = LEASE_MS / 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseFile {
    owner: String,
    epoch: u64,
    expires_ms: i64,
}

/// This server's hold on its cold-tier prefix.
#[derive(Debug)]
pub struct Lease {
    store: Arc<dyn ObjectStore>,
    /// For making each write durable on `file://`.
    cold: ColdStore,
    path: Path,
    owner: String,
    epoch: u64,
    conditional: bool,
    compare_and_swap: bool,
    /// `file://` only: held open for the lease's life; closing it unlocks.
    _local_lock: Option<File>,
}

impl Lease {
    /// Takes the lease for `owner` (a name stable across restarts of the
    /// same server), or fails with the current owner and expiry.
    pub async fn acquire(cold: &ColdStore, owner: &str) -> Result<Self> {
        let local_lock = match cold.local_root() {
            Some(root) => Some(lock_local_root(root, owner, &cold.url)?),
            None => None,
        };
        let path = lease_path(cold, owner);
        let current = read(cold, &path).await?;
        let now = strata_broker::timestamp::now_ms();
        if let Some((held, _)) = current
            .as_ref()
            .filter(|(held, _)| held.owner != owner && held.expires_ms > now)
        {
            return Err(TieringError::Config(format!(
                "the cold tier {} is owned by another server ({}) for {} more seconds",
                cold.url,
                held.owner,
                (held.expires_ms - now) / 1000 + 1
            )));
        }
        let epoch = current.as_ref().map_or(0, |(held, _)| held.epoch) + 1;
        let lease = Self {
            store: cold.store.clone(),
            cold: cold.clone(),
            path,
            owner: owner.to_string(),
            epoch,
            conditional: cold.conditional_put,
            compare_and_swap: cold.conditional_update,
            _local_lock: local_lock,
        };
        let mode = match &current {
            None if lease.conditional => PutMode::Create,
            Some((_, version)) if lease.compare_and_swap => PutMode::Update(version.clone()),
            _ => PutMode::Overwrite,
        };
        lease
            .write(now + LEASE_MS, mode)
            .await
            .map_err(|e| match e {
                TieringError::Conflict { .. } => TieringError::Config(
                    "another server took the cold tier's lease at the same moment".into(),
                ),
                other => other,
            })?;
        tracing::info!(owner, epoch, "holding the cold tier's writer lease");
        Ok(lease)
    }

    /// Fails unless the lease is still this server's (same owner and epoch).
    /// A lease past half its life is extended first, so that when this
    /// returns `Ok` it has at least `LEASE_MS / 2` left and nobody else can
    /// take it in that time (on stores with compare-and-swap the extension
    /// is conditional on the version just read, so it cannot overwrite a
    /// successor that took an expired lease a moment before).
    pub async fn check(&self) -> Result<()> {
        self.hold(LEASE_MS / 2).await
    }

    /// Extends the lease to a full `LEASE_MS` (after checking it is still held).
    pub async fn renew(&self) -> Result<()> {
        self.hold(LEASE_MS).await
    }

    /// Checks the lease is this server's and extends it unless more than
    /// `keep_ms` of it is left.
    async fn hold(&self, keep_ms: i64) -> Result<()> {
        let current = read(&self.cold, &self.path).await?;
        let version = match current {
            Some((held, version)) if held.owner == self.owner && held.epoch == self.epoch => {
                let now = strata_broker::timestamp::now_ms();
                if held.expires_ms - now >= keep_ms {
                    return Ok(());
                }
                version
            }
            other => {
                return Err(TieringError::Conflict {
                    path: format!(
                        "{} (lease now held by {})",
                        self.path,
                        other.map_or("nobody".to_string(), |(held, _)| format!(
                            "{} epoch {}",
                            held.owner, held.epoch
                        ))
                    ),
                });
            }
        };
        self.write(
            strata_broker::timestamp::now_ms() + LEASE_MS,
            self.replacing(version),
        )
        .await
    }

    /// Gives the lease up (graceful shutdown), so a successor need not wait.
    pub async fn release(&self) {
        let version = match read(&self.cold, &self.path).await {
            Ok(Some((held, version))) if held.owner == self.owner && held.epoch == self.epoch => {
                version
            }
            _ => return,
        };
        if let Err(e) = self.write(0, self.replacing(version)).await {
            tracing::warn!(error = %e, "could not release the cold tier's lease");
        }
    }

    /// How to replace the lease file read at `version`: only if it is
    /// still that version, where the store can tell.
    fn replacing(&self, version: UpdateVersion) -> PutMode {
        if self.compare_and_swap {
            PutMode::Update(version)
        } else {
            PutMode::Overwrite
        }
    }

    async fn write(&self, expires_ms: i64, mode: PutMode) -> Result<()> {
        let file = LeaseFile {
            owner: self.owner.clone(),
            epoch: self.epoch,
            expires_ms,
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| TieringError::Internal(e.to_string()))?;
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&self.path, PutPayload::from(bytes), opts)
            .await
        {
            // The next check relies on it: on `file://`, fsynced first.
            Ok(_) => self.cold.make_durable(&self.path).await,
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Err(TieringError::Conflict {
                path: self.path.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// Takes the exclusive OS lock of a `file://` cold tier rooted at `root`,
/// or fails at once if another process (or another lease in this one)
/// holds it.
fn lock_local_root(root: &std::path::Path, owner: &str, url: &str) -> Result<File> {
    let dir = root.join(LEASES_DIR);
    std::fs::create_dir_all(&dir)
        .map_err(|e| TieringError::Config(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join(format!("{owner}.lock"));
    let file = File::create(&path)
        .map_err(|e| TieringError::Config(format!("cannot create {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(TieringError::Config(format!(
            "the cold tier {url} is in use by another process of node {owner:?} on this machine ({} is locked)",
            path.display()
        ))),
        Err(TryLockError::Error(e)) => Err(TieringError::Config(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// Where the leases live, under the root (beside the cluster's objects).
const LEASES_DIR: &str = "_cluster/leases";

/// The lease file of `owner`.
fn lease_path(cold: &ColdStore, owner: &str) -> Path {
    cold.root
        .path()
        .clone()
        .join("_cluster")
        .join("leases")
        .join(format!("{owner}.json"))
}

/// The lease file and its version, `None` when there is none. A lease file
/// a power cut tore (`file://` only, where the OS lock already keeps other
/// processes out) reads as an expired lease of nobody's, so the server can
/// start and write a whole one.
async fn read(cold: &ColdStore, path: &Path) -> Result<Option<(LeaseFile, UpdateVersion)>> {
    let found = match cold.store.get(path).await {
        Ok(found) => found,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let version = UpdateVersion {
        e_tag: found.meta.e_tag.clone(),
        version: found.meta.version.clone(),
    };
    let bytes = found.bytes().await?;
    if cold.is_torn_json(&bytes) {
        tracing::warn!(%path, "the lease file was torn by a power cut; taking it as expired");
        let nobody = LeaseFile {
            owner: String::new(),
            epoch: 0,
            expires_ms: 0,
        };
        return Ok(Some((nobody, version)));
    }
    let file = serde_json::from_slice(&bytes).map_err(|e| TieringError::CorruptManifest {
        path: path.to_string(),
        message: e.to_string(),
    })?;
    Ok(Some((file, version)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_process_per_node_and_nodes_share_the_root() {
        let cold = ColdStore::open("memory://").unwrap();
        let first = Lease::acquire(&cold, "server-a").await.unwrap();
        first.check().await.unwrap();
        // Another node of the cluster holds its own lease meanwhile.
        let b = Lease::acquire(&cold, "server-b").await.unwrap();
        // The same node after a restart takes its own lease back at once;
        // the old process (paused, not dead) can no longer commit.
        let again = Lease::acquire(&cold, "server-a").await.unwrap();
        assert!(first.check().await.is_err(), "the old epoch lost it");
        again.renew().await.unwrap();
        b.check().await.unwrap();
        again.release().await;
        let after = Lease::acquire(&cold, "server-a").await.unwrap();
        assert!(again.check().await.is_err());
        after.check().await.unwrap();
    }

    /// Guards the power-loss rule: a `_lease.json` that a power cut left
    /// empty (its write not yet fsynced) once stopped the server from
    /// starting ("corrupt manifest _lease.json: EOF while parsing").
    #[tokio::test]
    async fn a_lease_file_torn_by_a_power_cut_does_not_stop_a_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", dir.path().display());
        for torn in [&b""[..], &b"{\"owner\":\"server-a\",\"ep"[..]] {
            let cold = ColdStore::open(&url).expect("file store");
            let file = dir.path().join("_cluster/leases/server-b.json");
            std::fs::create_dir_all(file.parent().unwrap()).expect("leases dir");
            std::fs::write(&file, torn).expect("tear the lease");
            let lease = Lease::acquire(&cold, "server-b").await.expect("acquire");
            lease.check().await.expect("held");
            let text = std::fs::read(&file).expect("lease");
            let whole: LeaseFile = serde_json::from_slice(&text).expect("a whole lease");
            assert_eq!(whole.owner, "server-b");
            drop(lease);
        }
    }

    /// Rewrites the lease file with another expiry, as time passing would.
    async fn expire_at(cold: &ColdStore, expires_ms: i64) {
        let path = lease_path(cold, "server-a");
        let (mut held, _) = read(cold, &path).await.unwrap().unwrap();
        held.expires_ms = expires_ms;
        let bytes = serde_json::to_vec(&held).unwrap();
        cold.store
            .put(&path, PutPayload::from(bytes))
            .await
            .unwrap();
    }

    async fn expiry(cold: &ColdStore) -> i64 {
        let path = lease_path(cold, "server-a");
        read(cold, &path).await.unwrap().unwrap().0.expires_ms
    }

    #[tokio::test]
    async fn checks_extend_a_lease_past_half_its_life() {
        let cold = ColdStore::open("memory://").unwrap();
        let lease = Lease::acquire(&cold, "server-a").await.unwrap();
        let now = strata_broker::timestamp::now_ms();
        // Plenty left: the check writes nothing.
        expire_at(&cold, now + LEASE_MS - 1_000).await;
        lease.check().await.unwrap();
        assert_eq!(expiry(&cold).await, now + LEASE_MS - 1_000);
        // Expired, but nobody took it: the check takes it back for a full term.
        expire_at(&cold, now - 1).await;
        lease.check().await.unwrap();
        assert!(expiry(&cold).await >= now + LEASE_MS);
        // Expired and taken by another process of the node: the check
        // fails, and it cannot be renewed back.
        expire_at(&cold, now - 1).await;
        let b = Lease::acquire(&cold, "server-a").await.unwrap();
        assert!(lease.check().await.is_err());
        assert!(lease.renew().await.is_err());
        b.check().await.unwrap();
    }

    #[tokio::test]
    async fn a_local_root_is_locked_while_its_lease_lives() {
        let dir = tempfile::tempdir().unwrap();
        let cold = ColdStore::open(&format!("file://{}", dir.path().display())).unwrap();
        let first = Lease::acquire(&cold, "server-a").await.unwrap();
        first.release().await;
        // Released in the file, but the holder still lives: its name
        // cannot take the prefix twice; another node's can.
        let refused = Lease::acquire(&cold, "server-a").await.unwrap_err();
        assert!(refused.to_string().contains("in use"), "{refused}");
        let b = Lease::acquire(&cold, "server-b").await.unwrap();
        b.check().await.unwrap();
        drop(first);
        let a = Lease::acquire(&cold, "server-a").await.unwrap();
        a.check().await.unwrap();
    }
}
