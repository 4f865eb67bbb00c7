//! `strata serve` is killed with SIGKILL under concurrent produce load,
//! several times; after each restart every acknowledged record is present,
//! unchanged, at its acknowledged offset, and offsets are dense.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use strata_test_support::{Api, ChildServer, eventually};

const PARTITIONS: u32 = 3;
const PRODUCERS: usize = 6;

type Acked = Arc<Mutex<HashMap<(u64, u64), Value>>>;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strata"))
}

async fn produce_until_error(api: Api, round: usize, producer: usize, acked: Acked) {
    for n in 0.. {
        let records: Vec<Value> = (0..20)
            .map(|i| json!({"key": format!("k{}", (n * 20 + i) % 13), "value": {"id": format!("{round}-{producer}-{n}-{i}"), "pad": "x".repeat(i * 7)}}))
            .collect();
        let response = api
            .http
            .post(format!("{}/v1/topics/crash/records", api.base))
            .json(&json!({ "records": records }))
            .send()
            .await;
        let Ok(response) = response else { return };
        if !response.status().is_success() {
            return;
        }
        let Ok(body) = response.json::<Value>().await else {
            return;
        };
        let mut acked = acked.lock().unwrap();
        for (record, ack) in records.iter().zip(body["offsets"].as_array().unwrap()) {
            let key = (
                ack["partition"].as_u64().unwrap(),
                ack["offset"].as_u64().unwrap(),
            );
            assert!(
                acked.insert(key, record["value"].clone()).is_none(),
                "offset {key:?} acknowledged twice"
            );
        }
    }
}

async fn verify(api: &Api, acked: &Acked) -> usize {
    let acked = acked.lock().unwrap().clone();
    let mut ids = HashSet::new();
    let mut total = 0;
    for p in 0..PARTITIONS {
        let records = api.consume_all("crash", p, 0).await;
        for (i, record) in records.iter().enumerate() {
            assert_eq!(
                record["offset"], i as u64,
                "partition {p}: offsets are dense"
            );
            let id = record["value"]["id"].as_str().unwrap().to_string();
            assert!(ids.insert(id.clone()), "record {id} appears twice");
        }
        for ((partition, offset), value) in acked
            .iter()
            .filter(|((partition, _), _)| *partition == u64::from(p))
        {
            let found = records.get(*offset as usize).map(|r| &r["value"]);
            assert_eq!(
                found,
                Some(value),
                "acknowledged record {partition}/{offset} lost or changed"
            );
        }
        total += records.len();
    }
    total
}

const VIEW_SQL: &str = "SELECT key, count(*) AS n, max(\"offset\") AS last, sum(length(value)) AS bytes FROM crash GROUP BY key ORDER BY key";

/// Guards materialized views across SIGKILL (issue #12): the view equals
/// its SQL after the restart, nothing counted twice or lost.
async fn verify_view(api: &Api) {
    let (status, view) = api.get("/v1/views/per_key").await;
    assert_eq!(status, reqwest::StatusCode::OK, "{view}");
    let (_, direct) = api.post("/v1/query", &json!({ "sql": VIEW_SQL })).await;
    assert_eq!(
        view, direct,
        "the materialized view equals its SQL after SIGKILL"
    );
}

/// Guards the key index across SIGKILL (issue #12): each key's lookup
/// equals its latest record in the log, first as the restarted server
/// answers at once (index or scan), then once the index answers.
async fn verify_lookups(api: &Api) {
    let mut latest: HashMap<String, (String, u64, u64)> = HashMap::new();
    for p in 0..PARTITIONS {
        for record in api.consume_all("crash", p, 0).await {
            let key = record["key"].as_str().unwrap().to_string();
            // RFC 3339 with fixed-width milliseconds sorts as time does.
            let at = (
                record["timestamp"].as_str().unwrap().to_string(),
                u64::from(p),
                record["offset"].as_u64().unwrap(),
            );
            if latest.get(&key).is_none_or(|best| at > *best) {
                latest.insert(key, at);
            }
        }
    }
    let keys: Vec<String> = (0..13).map(|k| format!("k{k}")).collect();
    let query: String = keys.iter().map(|k| format!("key={k}&")).collect();
    let url = format!("{}/v1/topics/crash/snapshot?{query}", api.base);
    let expected: Vec<(u64, u64)> = keys
        .iter()
        .filter_map(|k| latest.get(k).map(|(_, p, o)| (*p, *o)))
        .collect();
    let answer = |response: reqwest::Response| async move {
        let how = response.headers()["strata-lookup"]
            .to_str()
            .unwrap()
            .to_string();
        let body: Value = response.json().await.unwrap();
        let rows: Vec<(u64, u64)> = body["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["partition"].as_u64().unwrap(),
                    r["offset"].as_u64().unwrap(),
                )
            })
            .collect();
        (how, rows)
    };
    let (how, rows) = answer(api.http.get(&url).send().await.unwrap()).await;
    assert_eq!(rows, expected, "lookups right after the restart ({how})");
    let rows = eventually(
        Duration::from_secs(60),
        "lookups from the index",
        || async {
            let (how, rows) = answer(api.http.get(&url).send().await.unwrap()).await;
            (how == "index").then_some(rows)
        },
    )
    .await;
    assert_eq!(rows, expected, "lookups from the index after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let acked: Acked = Arc::default();
    let mut server = ChildServer::spawn(binary(), dir.path(), &[]);
    server
        .api
        .create_topic("crash", PARTITIONS, json!({"segment_bytes": 65536}))
        .await;
    let (status, body) = server
        .api
        .post(
            "/v1/views",
            &json!({"name": "per_key", "sql": VIEW_SQL, "materialized": true}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    for (round, kill_after) in [3000usize, 12000, 500, 30000, 6000].into_iter().enumerate() {
        let before = acked.lock().unwrap().len();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                tokio::spawn(produce_until_error(
                    server.api.clone(),
                    round,
                    p,
                    acked.clone(),
                ))
            })
            .collect();
        eventually(
            Duration::from_secs(60),
            "acknowledged records under load",
            || {
                let count = acked.lock().unwrap().len();
                async move { (count >= before + kill_after).then_some(()) }
            },
        )
        .await;
        server.kill9();
        for producer in producers {
            producer.await.unwrap();
        }
        server = ChildServer::spawn(binary(), dir.path(), &[]);
        let total = verify(&server.api, &acked).await;
        assert!(total >= acked.lock().unwrap().len());
        verify_lookups(&server.api).await;
        verify_view(&server.api).await;
    }
    let status = server.terminate();
    assert!(status.success(), "clean shutdown exits 0: {status:?}");
}

/// One idempotent produce request of the test below: its key and body.
type Request = (String, Value);

/// Sends `request` with its key; `None` when there was no answer (the
/// server died) or it was not 200.
async fn send_keyed(api: &Api, (key, body): &Request) -> Option<Value> {
    let response = api
        .http
        .post(format!("{}/v1/topics/idem/records", api.base))
        .header("content-type", "application/json")
        .header("idempotency-key", key.as_str())
        .body(body.to_string())
        .send()
        .await
        .ok()?;
    if response.status() != reqwest::StatusCode::OK {
        return None;
    }
    response.json().await.ok()
}

/// Guards "Idempotent produce" across a crash: requests in doubt when the
/// server was killed (sent, never answered) are retried with their keys
/// after the restart, and every record is then in the topic exactly once;
/// retries of answered requests get the offsets of the first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_after_sigkill_never_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(binary(), dir.path(), &[]);
    server.api.create_topic("idem", PARTITIONS, json!({})).await;
    let answered: Arc<Mutex<Vec<(Request, Value)>>> = Arc::default();
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let (api, answered) = (server.api.clone(), answered.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let records: Vec<Value> = (0..20)
                        .map(|j| json!({"value": {"p": p, "i": i, "j": j}}))
                        .collect();
                    let request = (format!("p{p}-{i}"), json!({ "records": records }));
                    match send_keyed(&api, &request).await {
                        Some(answer) => answered.lock().unwrap().push((request, answer)),
                        None => return request,
                    }
                }
                unreachable!("a producer runs until the server dies")
            })
        })
        .collect();
    eventually(Duration::from_secs(60), "answered requests", || {
        let count = answered.lock().unwrap().len();
        async move { (count >= 150).then_some(()) }
    })
    .await;
    server.kill9();
    let mut in_doubt = Vec::new();
    for producer in producers {
        in_doubt.push(producer.await.unwrap());
    }

    let server = ChildServer::spawn(binary(), dir.path(), &[]);
    for request in &in_doubt {
        let answer = send_keyed(&server.api, request).await;
        assert!(answer.is_some(), "retry of {} after the restart", request.0);
    }
    let answered = answered.lock().unwrap().clone();
    for (request, first) in answered.iter().rev().take(20) {
        let again = send_keyed(&server.api, request).await;
        assert_eq!(again.as_ref(), Some(first), "retry of {}", request.0);
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for p in 0..PARTITIONS {
        for record in server.api.consume_all("idem", p, 0).await {
            *seen.entry(record["value"].to_string()).or_default() += 1;
        }
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "records written twice: {doubled:?}");
    let expected = (answered.len() + in_doubt.len()) * 20;
    assert_eq!(seen.len(), expected, "every request's records, once");
    assert!(server.terminate().success());
}
