//! 8 producers and 4 consumers on the same partitions at once: no record
//! lost, none doubled, none reordered within a partition.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use strata_test_support::{TestServer, eventually};

const PRODUCERS: usize = 8;
const BATCHES: usize = 40;
const BATCH: usize = 50;
const PARTITIONS: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producers_and_consumers_share_partitions() {
    let server = TestServer::start().await;
    let api = server.api.clone();
    // Small segments: rolls happen while consumers read.
    api.create_topic("c", PARTITIONS, json!({"segment_bytes": 16384}))
        .await;

    let mut consumers = Vec::new();
    for c in 0..4u32 {
        let api = api.clone();
        let partition = c % PARTITIONS;
        consumers.push(tokio::spawn(async move {
            let expected = PRODUCERS * BATCHES * BATCH / PARTITIONS as usize;
            let mut seen = Vec::with_capacity(expected);
            let mut offset = 0u64;
            while seen.len() < expected {
                let (status, page) = api
                    .get(&format!("/v1/topics/c/partitions/{partition}/records?offset={offset}&max_records=500&wait_ms=5000"))
                    .await;
                assert_eq!(status, 200, "{page}");
                for record in page["records"].as_array().unwrap() {
                    assert_eq!(record["offset"], offset, "offsets are dense and in order");
                    seen.push(record["value"].clone());
                    offset += 1;
                }
            }
            (partition, seen)
        }));
    }

    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let api = api.clone();
        producers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for b in 0..BATCHES {
                let records: Vec<Value> = (0..BATCH)
                    .map(|i| json!({"value": {"producer": p, "seq": b * BATCH + i}, "partition": (i as u32) % PARTITIONS}))
                    .collect();
                let offsets = api.produce("c", &records).await;
                for (record, ack) in records.iter().zip(offsets) {
                    acked.push((ack["partition"].as_u64().unwrap(), ack["offset"].as_u64().unwrap(), record["value"].clone()));
                }
            }
            acked
        }));
    }
    let mut acked: HashMap<(u64, u64), Value> = HashMap::new();
    for producer in producers {
        for (partition, offset, value) in producer.await.unwrap() {
            assert!(
                acked.insert((partition, offset), value).is_none(),
                "offset {partition}/{offset} given twice"
            );
        }
    }
    assert_eq!(acked.len(), PRODUCERS * BATCHES * BATCH);

    for consumer in consumers {
        let (partition, seen) = consumer.await.unwrap();
        for (offset, value) in seen.iter().enumerate() {
            assert_eq!(
                acked.get(&(u64::from(partition), offset as u64)),
                Some(value),
                "partition {partition} offset {offset}"
            );
        }
        // Each producer's records appear in the order it sent them.
        let mut last_seq: HashMap<u64, i64> = HashMap::new();
        for value in &seen {
            let (producer, seq) = (
                value["producer"].as_u64().unwrap(),
                value["seq"].as_i64().unwrap(),
            );
            let last = last_seq.entry(producer).or_insert(-1);
            assert!(
                seq > *last,
                "producer {producer} reordered in partition {partition}"
            );
            *last = seq;
        }
    }
    let ends = eventually(Duration::from_secs(5), "end offsets", || {
        let api = api.clone();
        async move { Some(api.end_offsets("c").await) }
    })
    .await;
    assert_eq!(
        ends.iter().sum::<u64>() as usize,
        PRODUCERS * BATCHES * BATCH
    );
}
