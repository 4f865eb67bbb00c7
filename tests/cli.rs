//! The command-line client against a real server.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use strata_test_support::ChildServer;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strata"))
}

fn strata(server: &ChildServer, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(binary())
        .args(args)
        .env("STRATA_SERVER", &server.api.base)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_produce_consume_commands() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(binary(), dir.path(), &[]);
    let created: Value = serde_json::from_str(&ok(strata(
        &server,
        &[
            "topic",
            "create",
            "cli",
            "--partitions",
            "2",
            "--config",
            "segment_bytes=8192",
            "--config",
            "timestamp_type=create_time",
        ],
        None,
    )))
    .unwrap();
    assert_eq!(created["config"]["segment_bytes"], 8192);

    let file = dir.path().join("in.ndjson");
    let lines: String = (0..250)
        .map(|i| {
            format!(
                "{{\"key\":\"k{i}\",\"value\":{{\"i\":{i}}},\"partition\":{}}}\n",
                i % 2
            )
        })
        .collect();
    std::fs::write(&file, &lines).unwrap();
    let summary = ok(strata(
        &server,
        &[
            "produce",
            "cli",
            "--file",
            file.to_str().unwrap(),
            "--batch-size",
            "40",
        ],
        None,
    ));
    assert!(summary.contains("produced 250 records"), "{summary}");
    ok(strata(
        &server,
        &["produce", "cli"],
        Some("{\"value\":\"from stdin\",\"partition\":0}\n"),
    ));

    let out = ok(strata(
        &server,
        &["consume", "cli", "--partition", "0", "--from-beginning"],
        None,
    ));
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 126);
    assert_eq!(records[0]["value"]["i"], 0);
    assert_eq!(records[125]["value"], "from stdin");
    let out = ok(strata(
        &server,
        &["consume", "cli", "--partition", "1", "--offset", "120"],
        None,
    ));
    assert_eq!(out.lines().count(), 5);

    let list = ok(strata(&server, &["topic", "list"], None));
    assert!(list.contains("cli\tpartitions=2\trecords=251"), "{list}");
    let described: Value =
        serde_json::from_str(&ok(strata(&server, &["topic", "describe", "cli"], None))).unwrap();
    assert_eq!(described["partitions"][0]["end_offset"], 126);

    // Range reads and SQL from the command line.
    let out = ok(strata(
        &server,
        &["range", "cli", "--partition", "1", "--limit", "3"],
        None,
    ));
    let offsets: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["offset"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(offsets, [0, 1, 2]);
    let csv = ok(strata(&server, &["range", "cli", "--format", "csv"], None));
    assert_eq!(csv.lines().count(), 252, "a header and 251 records");
    let table = ok(strata(
        &server,
        &[
            "query",
            "SELECT \"partition\", count(*) AS n FROM cli GROUP BY \"partition\" ORDER BY 1",
        ],
        None,
    ));
    assert!(table.contains("| partition | n   |"), "{table}");
    assert!(table.contains("| 0         | 126 |"), "{table}");
    let json_out = ok(strata(
        &server,
        &["query", "SELECT count(*) AS n FROM cli", "--format", "json"],
        None,
    ));
    assert_eq!(json_out.trim(), r#"{"columns":["n"],"rows":[[251]]}"#);
    let bad = strata(&server, &["query", "SELECT * FROM nowhere"], None);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid_request"));

    let failed = strata(&server, &["topic", "create", "cli"], None);
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("topic_exists"));
    ok(strata(&server, &["topic", "delete", "cli"], None));
    assert!(
        !strata(&server, &["topic", "describe", "cli"], None)
            .status
            .success()
    );
}
