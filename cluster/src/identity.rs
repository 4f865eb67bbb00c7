//! A node's identity, kept in its data directory: its name and the
//! incarnation it registered as.
//!
//! `<data_dir>/node.json` holds `{"id": "n1", "incarnation": 3}`. The id
//! stays for the data directory's life; the incarnation is the number the
//! node registered under in the store ([`crate::control`]). A node that
//! comes back without its data directory finds no file, registers a new
//! incarnation, and so is told apart from the node that had the data (it
//! must catch up before it counts as an in-sync replica again).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ClusterError, Result};
use crate::node_id::NodeId;

/// Name of the identity file in the data directory.
pub const IDENTITY_FILE: &str = "node.json";

/// Written by servers before node ids existed; its name is adopted as the
/// node id so that such a server keeps its cold-tier lease.
const LEGACY_ID_FILE: &str = "server-id";

/// A node's name and registered incarnation (0 until it first registers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalIdentity {
    pub id: NodeId,
    pub incarnation: u64,
}

impl LocalIdentity {
    /// The identity kept in `data_dir`, or a new one (named `wanted`, or a
    /// generated name) written there durably.
    ///
    /// # Errors
    ///
    /// [`ClusterError::WrongNode`] when the directory belongs to a node
    /// other than `wanted`: one disk never serves as two nodes.
    pub fn load_or_create(data_dir: &Path, wanted: Option<&NodeId>) -> Result<Self> {
        let path = data_dir.join(IDENTITY_FILE);
        let found =
            match std::fs::read(&path) {
                Ok(bytes) => Some(serde_json::from_slice::<Self>(&bytes).map_err(|e| {
                    ClusterError::Corrupt {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    }
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(error) => {
                    return Err(ClusterError::Io {
                        path: path.display().to_string(),
                        error,
                    });
                }
            };
        if let Some(found) = found {
            return match wanted {
                Some(wanted) if *wanted != found.id => Err(ClusterError::WrongNode {
                    dir: data_dir.display().to_string(),
                    found: found.id.to_string(),
                    wanted: wanted.to_string(),
                }),
                _ => Ok(found),
            };
        }
        let id = match wanted {
            Some(id) => id.clone(),
            None => legacy_id(data_dir).unwrap_or_else(generated_id),
        };
        let identity = Self { id, incarnation: 0 };
        identity.save(data_dir)?;
        Ok(identity)
    }

    /// Durably records this identity in `data_dir`.
    pub fn save(&self, data_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(data_dir).map_err(|error| ClusterError::Io {
            path: data_dir.display().to_string(),
            error,
        })?;
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| ClusterError::Corrupt {
            path: IDENTITY_FILE.into(),
            message: e.to_string(),
        })?;
        strata_broker::durable::write_atomic(&identity_path(data_dir), &bytes)?;
        Ok(())
    }
}

fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join(IDENTITY_FILE)
}

fn legacy_id(data_dir: &Path) -> Option<NodeId> {
    let text = std::fs::read_to_string(data_dir.join(LEGACY_ID_FILE)).ok()?;
    NodeId::parse(text.trim()).ok()
}

/// `n-` and 16 random hex digits.
fn generated_id() -> NodeId {
    NodeId::parse(&format!("n-{:016x}", random_u64()))
        .expect("n- and hex digits make a valid node id")
}

/// 64 bits from the process's randomly seeded hasher, the process id and
/// the time: names that differ across nodes, without a random crate.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_i64(strata_broker::timestamp::now_ms());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let made = LocalIdentity::load_or_create(dir.path(), None).expect("create");
        assert!(made.id.as_str().starts_with("n-"), "{}", made.id);
        assert_eq!(made.incarnation, 0);
        let registered = LocalIdentity {
            incarnation: 4,
            ..made.clone()
        };
        registered.save(dir.path()).expect("save");
        let again = LocalIdentity::load_or_create(dir.path(), Some(&made.id)).expect("load");
        assert_eq!(again, registered);
    }

    #[test]
    fn a_data_directory_never_serves_as_another_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n1 = NodeId::parse("n1").expect("id");
        LocalIdentity::load_or_create(dir.path(), Some(&n1)).expect("create");
        let n2 = NodeId::parse("n2").expect("id");
        let refused = LocalIdentity::load_or_create(dir.path(), Some(&n2));
        assert!(
            matches!(&refused, Err(ClusterError::WrongNode { found, wanted, .. }) if found == "n1" && wanted == "n2"),
            "{refused:?}"
        );
    }

    #[test]
    fn a_server_from_before_node_ids_keeps_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(LEGACY_ID_FILE), "strata-41-1700000000000\n")
            .expect("write");
        let identity = LocalIdentity::load_or_create(dir.path(), None).expect("create");
        assert_eq!(identity.id.as_str(), "strata-41-1700000000000");
    }

    #[test]
    fn a_damaged_identity_file_is_an_error_not_a_new_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(IDENTITY_FILE), "{\"id\": ").expect("write");
        assert!(matches!(
            LocalIdentity::load_or_create(dir.path(), None),
            Err(ClusterError::Corrupt { .. })
        ));
    }
}
