//! The query service's own files fed arbitrary and damaged bytes: a view
//! file that holds anything makes the store open or refuse with an error,
//! never panic (issue #14, "every decoder").

use proptest::prelude::*;
use strata_query::views::ViewStore;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_as_a_view_file(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("v.json"), &bytes).unwrap();
        let _ = ViewStore::open(dir.path());
    }

    #[test]
    fn a_damaged_view_file(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = br#"{"name":"v","sql":"SELECT 1","created_at":"2026-12-03T00:00:00.000Z"}"#.to_vec();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("v.json"), &bytes).unwrap();
        let _ = ViewStore::open(dir.path());
    }
}

#[test]
fn the_valid_view_file_loads() {
    // Guards the damaged-file property above from mutating text that never loaded.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("v.json"),
        br#"{"name":"v","sql":"SELECT 1","created_at":"2026-12-03T00:00:00.000Z"}"#,
    )
    .unwrap();
    let store = ViewStore::open(dir.path()).expect("loads");
    assert_eq!(store.get("v").map(|v| v.sql), Some("SELECT 1".to_string()));
}
