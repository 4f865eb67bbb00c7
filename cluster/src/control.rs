//! The control objects under `<root>/_cluster/`, each a directory of
//! create-only versions ([`VersionedObjects`]):
//!
//! ```text
//! <root>/_cluster/id/00000000000000000001.json                   {"cluster_id"}
//! <root>/_cluster/node_secret/00000000000000000001.json          {"node_secret"}
//! <root>/_cluster/nodes/<node>/<incarnation:020>.json            a node's registrations
//! <root>/_cluster/controller/<epoch:020>.json                    controller epochs
//! <root>/_cluster/tokens/<version:020>.json                       every bearer token (hashes only)
//! <root>/_cluster/topics/<topic>/<version:020>.json             a replicated topic
//! <root>/_cluster/draining/<version:020>.json                    nodes being drained
//! <root>/_cluster/partitions/<topic>/<partition>/<version:020>.json  a partition's state
//! <root>/_cluster/groups/<group>/<version:020>.json             a consumer group's offsets
//! <root>/_cluster/views/<version:020>.json                       every view's definition
//! ```
//!
//! Why each step is safe, whatever crashes where: every write creates one
//! new object and changes nothing else, so a crash leaves either the old
//! state or the new one; a writer that loses a race gets a conflict and
//! rereads. Nothing here depends on clocks: the time in a registration is
//! for people only.

use object_store::path::Path;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use strata_tiering::{ColdStore, VersionedObjects};

use crate::error::{ClusterError, Result};
use crate::identity::{LocalIdentity, random_u64};
use crate::node_id::NodeId;
use crate::partition_state::PartitionState;
use crate::tokens::{
    MAX_TOKENS, Permission, Quota, Token, TokenList, TokenRecord, check_token_name,
};

/// Controller epochs kept behind the newest (older ones are deleted).
const KEEP_EPOCHS: u64 = 16;

/// Registrations of a node kept behind its newest.
const KEEP_INCARNATIONS: u64 = 4;

/// A replicated topic as the controller records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRecord {
    pub meta: strata_broker::topic::TopicMeta,
    /// The topic was deleted: nodes delete their replicas.
    #[serde(default)]
    pub deleted: bool,
}

/// A node's registration: one per incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub node: NodeId,
    pub incarnation: u64,
    /// Where it said it could be reached when it registered.
    pub url: String,
    /// Wall-clock time of the registration, for people reading the store.
    pub registered_ms: i64,
}

/// One controller epoch: who controls the cluster from this epoch until a
/// newer one exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerRecord {
    pub epoch: u64,
    pub node: NodeId,
    pub incarnation: u64,
    pub url: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterIdRecord {
    cluster_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSecretRecord {
    node_secret: String,
}

/// What every node of one root shares from its first start on.
#[derive(Debug, Clone)]
pub struct ClusterIdentity {
    pub cluster_id: String,
    /// The bearer token nodes present to each other when authentication is
    /// on. Anyone who can read the store can read it; they could also
    /// rewrite every control object, so the store is trusted anyway.
    pub node_secret: Token,
}

/// The control objects of the cluster that shares one object-store root.
#[derive(Debug, Clone)]
pub struct ControlStore {
    cold: ColdStore,
    dir: Path,
}

impl ControlStore {
    /// The control objects under `<root>/_cluster/` of `cold`.
    pub fn new(cold: &ColdStore) -> Self {
        Self {
            cold: cold.clone(),
            dir: cold
                .root
                .path()
                .clone()
                .join(strata_broker::config::RESERVED_NAME),
        }
    }

    fn versions(&self, parts: &[&str]) -> VersionedObjects {
        let dir = parts
            .iter()
            .fold(self.dir.clone(), |dir, part| dir.join(*part));
        VersionedObjects::new(&self.cold, dir)
    }

    /// The cluster's id and node secret, made by the first node that asks.
    ///
    /// # Contract
    ///
    /// Every node of one root gets the same, also when several ask at once
    /// for the first time (one create wins; the others read it).
    pub async fn identity(&self) -> Result<ClusterIdentity> {
        let id: ClusterIdRecord = create_once(&self.versions(&["id"]), || {
            Ok(ClusterIdRecord {
                cluster_id: format!("{:016x}{:016x}", random_u64(), random_u64()),
            })
        })
        .await?;
        let secret: NodeSecretRecord = create_once(&self.versions(&["node_secret"]), || {
            Ok(NodeSecretRecord {
                node_secret: Token::generate()?.expose().to_string(),
            })
        })
        .await?;
        Ok(ClusterIdentity {
            cluster_id: id.cluster_id,
            node_secret: Token::from_secret(&secret.node_secret),
        })
    }

    /// Registers `identity` reachable at `url`: keeps its incarnation when
    /// it is the newest registered for its id (a restart with its data
    /// directory), otherwise registers the next one (a new node, or one
    /// whose disk was lost). The caller saves the returned incarnation in
    /// the data directory before acting as it.
    ///
    /// # Contract
    ///
    /// Two processes registering the same id at once get different
    /// incarnations; a process that finds a newer incarnation of its own id
    /// than its data directory names registers a newer one still, so the
    /// newest process of an id is always the newest incarnation.
    pub async fn register(
        &self,
        identity: &LocalIdentity,
        url: &str,
        now_ms: i64,
    ) -> Result<Registration> {
        let versions = self.versions(&["nodes", identity.id.as_str()]);
        loop {
            let newest = versions.newest().await?;
            if identity.incarnation != 0
                && identity.incarnation == newest
                && let Some(registration) = read::<Registration>(&versions, newest).await?
            {
                return Ok(Registration {
                    url: url.to_string(),
                    ..registration
                });
            }
            let registration = Registration {
                node: identity.id.clone(),
                incarnation: newest + 1,
                url: url.to_string(),
                registered_ms: now_ms,
            };
            match create(&versions, newest + 1, &registration).await {
                Ok(()) => {
                    if newest + 1 > KEEP_INCARNATIONS {
                        versions.forget(newest + 1 - KEEP_INCARNATIONS).await;
                    }
                    return Ok(registration);
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The newest registration of `node`, `None` when it never registered.
    pub async fn registration(&self, node: &NodeId) -> Result<Option<Registration>> {
        Ok(
            newest::<Registration>(&self.versions(&["nodes", node.as_str()]))
                .await?
                .map(|(_, registration)| registration),
        )
    }

    /// The newest registration of every node, in id order.
    pub async fn registrations(&self) -> Result<Vec<Registration>> {
        let nodes = self.dir.clone().join("nodes");
        let listing = self
            .cold
            .store
            .list_with_delimiter(Some(&nodes))
            .await
            .map_err(strata_tiering::TieringError::from)?;
        let mut found = Vec::new();
        for dir in listing.common_prefixes {
            let Some(name) = dir.filename() else { continue };
            let versions = VersionedObjects::new(&self.cold, dir.clone());
            if let Some((_, registration)) = newest::<Registration>(&versions).await?
                && registration.node.as_str() == name
            {
                found.push(registration);
            }
        }
        found.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(found)
    }

    /// The current controller: the newest epoch, `None` before the first.
    pub async fn controller(&self) -> Result<Option<ControllerRecord>> {
        Ok(newest::<ControllerRecord>(&self.versions(&["controller"]))
            .await?
            .map(|(_, record)| record))
    }

    /// Makes `me` the controller of epoch `after + 1`, where `after` is the
    /// newest epoch the caller has seen (0 for none).
    ///
    /// # Contract
    ///
    /// At most one node holds any epoch: `Ok(None)` when another node
    /// created it first (read [`ControlStore::controller`] again). A node
    /// holds its epoch until a newer one exists, and only the holder of the
    /// newest epoch may act as controller.
    pub async fn claim_controller(
        &self,
        after: u64,
        me: &Registration,
    ) -> Result<Option<ControllerRecord>> {
        let versions = self.versions(&["controller"]);
        let record = ControllerRecord {
            epoch: after + 1,
            node: me.node.clone(),
            incarnation: me.incarnation,
            url: me.url.clone(),
        };
        match create(&versions, record.epoch, &record).await {
            Ok(()) => {
                if record.epoch > KEEP_EPOCHS {
                    versions.forget(record.epoch - KEEP_EPOCHS).await;
                }
                Ok(Some(record))
            }
            Err(e) if e.is_conflict() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl ControlStore {
    /// The cluster's tokens and their version (0 and none before the
    /// first token).
    pub async fn tokens(&self) -> Result<(u64, TokenList)> {
        Ok(newest(&self.versions(&["tokens"]))
            .await?
            .unwrap_or_default())
    }

    /// Writes `tokens` as `version`, where `version - 1` is the version the
    /// caller read and changed.
    ///
    /// # Contract
    ///
    /// At most one writer creates any version: on a conflict
    /// ([`ClusterError::is_conflict`]) reread and apply the change again.
    /// Durable when it returns `Ok`.
    pub async fn write_tokens(&self, version: u64, tokens: &TokenList) -> Result<()> {
        let versions = self.versions(&["tokens"]);
        create_keeping(&versions, version, tokens, KEEP_EPOCHS).await?;
        Ok(())
    }

    /// Adds a token `name` with `permissions` and returns it in clear
    /// (the only time it exists outside its owner's hands) with the new
    /// list and its version.
    ///
    /// # Contract
    ///
    /// Atomic and durable when it returns `Ok`, on every node at once (a
    /// concurrent change by another node is reread and kept).
    pub async fn add_token(
        &self,
        name: &str,
        permissions: Vec<Permission>,
        quota: Quota,
        created_at: String,
    ) -> Result<(Token, u64, TokenList)> {
        check_token_name(name).map_err(ClusterError::InvalidToken)?;
        if permissions.is_empty() {
            return Err(ClusterError::InvalidToken(
                "a token needs at least one permission".into(),
            ));
        }
        loop {
            let (version, mut list) = self.tokens().await?;
            if list.tokens.iter().any(|t| t.name == name) {
                return Err(ClusterError::TokenExists(name.to_string()));
            }
            if list.tokens.len() >= MAX_TOKENS {
                return Err(ClusterError::InvalidToken(format!(
                    "a cluster keeps at most {MAX_TOKENS} tokens"
                )));
            }
            let token = Token::generate()?;
            list.tokens.push(TokenRecord {
                name: name.to_string(),
                hash: token.hash(),
                permissions: permissions.clone(),
                quota,
                created_at: created_at.clone(),
            });
            match self.write_tokens(version + 1, &list).await {
                Ok(()) => return Ok((token, version + 1, list)),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Revokes token `name`; returns the new list and its version. From
    /// then on no node accepts it (each within its refresh interval).
    pub async fn revoke_token(&self, name: &str) -> Result<(u64, TokenList)> {
        loop {
            let (version, mut list) = self.tokens().await?;
            let before = list.tokens.len();
            list.tokens.retain(|t| t.name != name);
            if list.tokens.len() == before {
                return Err(ClusterError::TokenNotFound(name.chars().take(64).collect()));
            }
            match self.write_tokens(version + 1, &list).await {
                Ok(()) => return Ok((version + 1, list)),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The nodes being drained, and the version of that list (0: none yet).
    pub async fn draining(&self) -> Result<(u64, Vec<NodeId>)> {
        Ok(newest::<Vec<NodeId>>(&self.versions(&["draining"]))
            .await?
            .unwrap_or_default())
    }

    /// Writes the list of nodes being drained as `version`.
    ///
    /// # Contract
    ///
    /// At most one writer creates any version (a conflict: reread and
    /// decide again); durable when it returns `Ok`.
    pub async fn write_draining(&self, version: u64, nodes: &[NodeId]) -> Result<()> {
        let versions = self.versions(&["draining"]);
        create_keeping(&versions, version, &nodes.to_vec(), KEEP_EPOCHS).await?;
        Ok(())
    }

    /// The versions of consumer group `group` ([`crate::groups`]).
    pub(crate) fn group_versions(&self, group: &str) -> VersionedObjects {
        self.versions(&["groups", group])
    }

    /// The newest version of the cluster's view definitions, 0 before the
    /// first (one LIST: cheap enough to poll).
    pub async fn views_version(&self) -> Result<u64> {
        Ok(self.versions(&["views"]).newest().await?)
    }

    /// The cluster's view definitions and their version (0 and the default
    /// before the first). The server owns their type: to this crate a
    /// view is a document.
    pub async fn views<T: DeserializeOwned + Default>(&self) -> Result<(u64, T)> {
        Ok(newest(&self.versions(&["views"]))
            .await?
            .unwrap_or_default())
    }

    /// Writes the view definitions `views` as `version`, where `version - 1`
    /// is the version the caller read and changed.
    ///
    /// # Contract
    ///
    /// At most one writer creates any version: on a conflict
    /// ([`ClusterError::is_conflict`]) reread and apply the change again.
    /// Durable when it returns `Ok`.
    pub async fn write_views<T: Serialize>(&self, version: u64, views: &T) -> Result<()> {
        create_keeping(&self.versions(&["views"]), version, views, KEEP_EPOCHS).await
    }

    fn topic_versions(&self, topic: &str) -> VersionedObjects {
        self.versions(&["topics", topic])
    }

    /// The newest record of a replicated topic and its version.
    pub async fn topic_record(&self, topic: &str) -> Result<Option<(u64, TopicRecord)>> {
        newest(&self.topic_versions(topic)).await
    }

    /// Writes `record` as `version` of a replicated topic's record.
    ///
    /// # Contract
    ///
    /// At most one writer creates any version (a conflict means another
    /// controller did: reread); durable when it returns `Ok`. A topic is
    /// created by version 1 and deleted by a version with `deleted`.
    pub async fn write_topic_record(
        &self,
        topic: &str,
        version: u64,
        record: &TopicRecord,
    ) -> Result<()> {
        let versions = self.topic_versions(topic);
        create_keeping(&versions, version, record, KEEP_EPOCHS).await?;
        Ok(())
    }

    /// The names of every replicated topic ever recorded (deleted ones
    /// too: their newest record says so).
    pub async fn topic_names(&self) -> Result<Vec<String>> {
        let topics = self.dir.clone().join("topics");
        let listing = self
            .cold
            .store
            .list_with_delimiter(Some(&topics))
            .await
            .map_err(strata_tiering::TieringError::from)?;
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|dir| dir.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    fn partition_versions(&self, topic: &str, partition: u32) -> VersionedObjects {
        self.versions(&["partitions", topic, &partition.to_string()])
    }

    /// The newest state of a partition and its version, `None` before the
    /// first.
    pub async fn partition_state(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Option<(u64, PartitionState)>> {
        newest(&self.partition_versions(topic, partition)).await
    }

    /// Writes `state` as `version` of a partition's state, where
    /// `version - 1` is the version the caller read.
    ///
    /// # Contract
    ///
    /// Refuses a state that breaks [`PartitionState::check`] before
    /// writing. At most one writer creates any version: a conflict
    /// ([`ClusterError::is_conflict`]) means another controller wrote it
    /// first, and this one must reread (and, if that version names a newer
    /// controller epoch than its own, stop deciding). Durable when it
    /// returns `Ok`.
    pub async fn write_partition_state(
        &self,
        topic: &str,
        partition: u32,
        version: u64,
        state: &PartitionState,
    ) -> Result<()> {
        let versions = self.partition_versions(topic, partition);
        state
            .check()
            .map_err(|message| corrupt(&versions, version, &message))?;
        create_keeping(&versions, version, state, KEEP_EPOCHS).await?;
        Ok(())
    }
}

/// Version 1 of `versions`, made by `make` if nobody made it yet: one
/// create wins, everyone reads the winner's.
async fn create_once<T: Serialize + DeserializeOwned>(
    versions: &VersionedObjects,
    make: impl FnOnce() -> Result<T>,
) -> Result<T> {
    if let Some(found) = read::<T>(versions, 1).await? {
        return Ok(found);
    }
    let mine = make()?;
    match create(versions, 1, &mine).await {
        Ok(()) => Ok(mine),
        Err(e) if e.is_conflict() => read::<T>(versions, 1)
            .await?
            .ok_or_else(|| corrupt(versions, 1, "vanished after a conflict")),
        Err(e) => Err(e),
    }
}

async fn read<T: DeserializeOwned>(versions: &VersionedObjects, version: u64) -> Result<Option<T>> {
    match versions.read(version).await? {
        Some(bytes) => decode(versions, version, &bytes).map(Some),
        None => Ok(None),
    }
}

pub(crate) async fn newest<T: DeserializeOwned>(
    versions: &VersionedObjects,
) -> Result<Option<(u64, T)>> {
    match versions.read_newest().await? {
        Some((version, bytes)) => Ok(Some((version, decode(versions, version, &bytes)?))),
        None => Ok(None),
    }
}

/// [`create`], then forgets the version `keep` behind it (readers list
/// again when a version they found is gone).
async fn create_keeping<T: Serialize>(
    versions: &VersionedObjects,
    version: u64,
    value: &T,
    keep: u64,
) -> Result<()> {
    create(versions, version, value).await?;
    if version > keep {
        versions.forget(version - keep).await;
    }
    Ok(())
}

pub(crate) async fn create<T: Serialize>(
    versions: &VersionedObjects,
    version: u64,
    value: &T,
) -> Result<()> {
    let bytes =
        serde_json::to_vec_pretty(value).map_err(|e| corrupt(versions, version, &e.to_string()))?;
    Ok(versions.create(version, bytes).await?)
}

fn decode<T: DeserializeOwned>(
    versions: &VersionedObjects,
    version: u64,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(versions, version, &e.to_string()))
}

fn corrupt(versions: &VersionedObjects, version: u64, message: &str) -> ClusterError {
    ClusterError::Corrupt {
        path: versions.path(version).to_string(),
        message: message.to_string(),
    }
}
