//! Named SQL views, durable on local disk: one JSON file per view under
//! `<data_dir>/views/`, written atomically (temporary file, fsync, rename,
//! fsync of the directory), so a view that was acknowledged survives a
//! crash and a half-written one never appears.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use strata_broker::durable::{TMP_SUFFIX, sync_dir, write_atomic};

use crate::error::{QueryError, Result};

/// Longest view name.
pub const MAX_NAME_LEN: usize = 128;

/// A stored view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub name: String,
    pub sql: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Kept up to date as records arrive ([`crate::materialized`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub materialized: bool,
}

/// The views of one server.
#[derive(Debug)]
pub struct ViewStore {
    dir: PathBuf,
    views: RwLock<BTreeMap<String, View>>,
}

impl ViewStore {
    /// Loads every view in `dir` (created when missing).
    pub fn open(dir: &Path) -> Result<Self> {
        let io = |what: &str, e: std::io::Error| {
            QueryError::Internal(format!("{what} {}: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| io("creating", e))?;
        let mut views = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io("listing", e))? {
            let path = entry.map_err(|e| io("listing", e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(TMP_SUFFIX) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let text = std::fs::read(&path).map_err(|e| io("reading", e))?;
            let view: View = serde_json::from_slice(&text).map_err(|e| {
                QueryError::Internal(format!("view file {} is corrupt: {e}", path.display()))
            })?;
            views.insert(view.name.clone(), view);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            views: RwLock::new(views),
        })
    }

    /// Every view, by name.
    pub fn list(&self) -> Vec<View> {
        self.views.read().values().cloned().collect()
    }

    /// The view named `name`, if any.
    pub fn get(&self, name: &str) -> Option<View> {
        self.views.read().get(name).cloned()
    }

    /// Stores a new view. When this returns `Ok`, the view is durable.
    pub fn create(&self, view: View) -> Result<()> {
        check_name(&view.name)?;
        let mut views = self.views.write();
        if views.contains_key(&view.name) {
            return Err(QueryError::ViewExists(view.name));
        }
        let bytes =
            serde_json::to_vec_pretty(&view).map_err(|e| QueryError::Internal(e.to_string()))?;
        write_atomic(&self.path(&view.name), &bytes)?;
        views.insert(view.name.clone(), view);
        Ok(())
    }

    /// Deletes a view; when this returns `Ok`, the deletion is durable.
    pub fn delete(&self, name: &str) -> Result<()> {
        let mut views = self.views.write();
        if !views.contains_key(name) {
            return Err(QueryError::ViewNotFound(
                name.chars().take(MAX_NAME_LEN).collect(),
            ));
        }
        let path = self.path(name);
        std::fs::remove_file(&path)
            .map_err(|e| QueryError::Internal(format!("deleting {}: {e}", path.display())))?;
        sync_dir(&self.dir)?;
        views.remove(name);
        Ok(())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }
}

/// View names are SQL identifiers: a letter or `_`, then letters, digits
/// and `_`, at most [`MAX_NAME_LEN`] characters.
pub fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= MAX_NAME_LEN;
    if valid {
        Ok(())
    } else {
        Err(QueryError::InvalidRequest(format!(
            "invalid view name {:?}: use a letter or _ followed by letters, digits or _ (at most {MAX_NAME_LEN})",
            name.chars().take(MAX_NAME_LEN + 1).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str) -> View {
        View {
            materialized: false,
            name: name.into(),
            sql: "SELECT 1".into(),
            created_at: "2024-01-01T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn views_survive_reopening_and_deletion_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = ViewStore::open(dir.path()).unwrap();
        store.create(view("a")).unwrap();
        store.create(view("b_2")).unwrap();
        assert!(matches!(
            store.create(view("a")),
            Err(QueryError::ViewExists(_))
        ));
        store.delete("b_2").unwrap();
        assert!(matches!(
            store.delete("b_2"),
            Err(QueryError::ViewNotFound(_))
        ));
        let reopened = ViewStore::open(dir.path()).unwrap();
        assert_eq!(reopened.list(), vec![view("a")]);
    }

    #[test]
    fn names_must_be_identifiers() {
        for bad in [
            "",
            "1a",
            "a-b",
            "a.b",
            "../x",
            &"x".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("_freshmen_2021").unwrap();
    }
}
