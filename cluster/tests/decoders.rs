//! Every decoder of the cluster's files, fed arbitrary and damaged bytes:
//! control objects from the store, the identity file, token lists, request
//! bodies of heartbeats. Each returns a value or an error, never panics.

use proptest::prelude::*;
use strata_cluster::tokens::{Permission, TokenList, TopicGlob};
use strata_cluster::{
    ClusterView, ControllerRecord, Heartbeat, LocalIdentity, NodeId, PartitionState, Registration,
};

fn decode_all(bytes: &[u8]) {
    let _ = serde_json::from_slice::<TokenList>(bytes);
    let _ = serde_json::from_slice::<PartitionState>(bytes);
    let _ = serde_json::from_slice::<Registration>(bytes);
    let _ = serde_json::from_slice::<ControllerRecord>(bytes);
    let _ = serde_json::from_slice::<LocalIdentity>(bytes);
    let _ = serde_json::from_slice::<Heartbeat>(bytes);
    let _ = serde_json::from_slice::<ClusterView>(bytes);
    if let Ok(state) = serde_json::from_slice::<PartitionState>(bytes) {
        let _ = state.check();
    }
}

/// A valid token list with one token, for mutation.
fn valid_tokens() -> Vec<u8> {
    br#"{"tokens":[{"name":"ci","hash":"00ff","permissions":["produce:clicks*","query"],
         "quota":{"produce_bytes_per_sec":10},"created_at":"2026-01-01T00:00:00.000Z"}]}"#
        .to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_as_cluster_files(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        decode_all(&bytes);
    }

    #[test]
    fn a_damaged_token_list(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = valid_tokens();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        decode_all(&bytes);
    }

    #[test]
    fn arbitrary_text_as_names_permissions_and_globs(text in "\\PC{0,80}", topic in "[a-z*.-]{0,40}") {
        let _ = NodeId::parse(&text);
        let _ = Permission::parse(&text);
        if let Ok(glob) = TopicGlob::parse(&text) {
            let _ = glob.matches(&topic);
        }
        if let Ok(glob) = TopicGlob::parse(&topic) {
            let _ = glob.matches(&text);
        }
    }
}

#[test]
fn the_valid_token_list_decodes() {
    let list: TokenList = serde_json::from_slice(&valid_tokens()).expect("valid");
    assert_eq!(list.tokens[0].permissions.len(), 2);
    assert_eq!(list.tokens[0].quota.produce_bytes_per_sec, Some(10));
}
