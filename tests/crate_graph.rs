//! Guards the shape of the workspace (docs/architecture.md): dependencies
//! between the project's crates point one way, and only the server knows
//! HTTP. Reads the manifests through `cargo metadata`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Each package's normal (non-dev) dependencies.
fn normal_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata JSON");
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|package| {
            let deps = package["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().expect("name").to_string())
                .collect();
            (package["name"].as_str().expect("name").to_string(), deps)
        })
        .collect()
}

#[test]
fn dependencies_point_one_way_and_only_the_server_knows_http() {
    let deps = normal_dependencies();
    let ours = |package: &str| -> BTreeSet<&str> {
        deps[package]
            .iter()
            .map(String::as_str)
            .filter(|d| d.starts_with("strata"))
            .collect()
    };
    let want: [(&str, &[&str]); 6] = [
        ("strata", &["strata-server"]),
        (
            "strata-server",
            &[
                "strata-broker",
                "strata-cluster",
                "strata-query",
                "strata-tiering",
            ],
        ),
        ("strata-cluster", &["strata-broker", "strata-tiering"]),
        ("strata-query", &["strata-broker", "strata-tiering"]),
        ("strata-tiering", &["strata-broker"]),
        ("strata-broker", &[]),
    ];
    for (package, expected) in want {
        assert_eq!(
            ours(package),
            expected.iter().copied().collect::<BTreeSet<_>>(),
            "{package}'s dependencies on project crates"
        );
    }
    for package in [
        "strata-broker",
        "strata-tiering",
        "strata-query",
        "strata-cluster",
    ] {
        for http in ["axum", "http-body-util", "hyper", "reqwest"] {
            assert!(
                !deps[package].contains(http),
                "{package} must not depend on {http}: only strata-server knows HTTP"
            );
        }
    }
}
