//! Smoke tests of the test infrastructure itself (tests/common): a real tansu broker and the
//! independent confluent-kafka client, with no streamtract code involved.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::{Broker, Rec};

#[test]
fn broker_round_trip_with_independent_client() {
    let broker = Broker::start("harness_round_trip");
    let topic = "harness-in";
    broker.create_topic(topic, 3);
    // Creating it again is fine.
    broker.create_topic(topic, 3);

    let info = broker.topic_info(topic).expect("topic exists");
    assert_eq!(info.partitions, 3);
    assert_eq!(info.high_watermarks, vec![0, 0, 0]);
    assert!(broker.topic_info("no-such-topic").is_none());

    let recs: Vec<Rec> = (0..100)
        .map(|i| {
            let mut r = Rec::kv(&format!("key-{i}"), format!("{{\"n\":{i}}}"))
                .header("seq", i.to_string())
                .header("bin", vec![0u8, 255, i as u8]);
            if i % 10 == 0 {
                r = r.null_header("empty");
            }
            r
        })
        .collect();
    let delivered = broker.produce(topic, &recs);
    assert_eq!(delivered.len(), 100);
    assert!(delivered
        .iter()
        .all(|&(p, o)| (0..3).contains(&p) && o >= 0));
    let used: std::collections::BTreeSet<i32> = delivered.iter().map(|d| d.0).collect();
    assert!(
        used.len() > 1,
        "100 distinct keys should spread over partitions: {used:?}"
    );

    let got = broker.consume_with_extra_wait(
        topic,
        100,
        Duration::from_secs(30),
        Duration::from_millis(500),
    );
    assert_eq!(got.len(), 100, "records read back");

    // Offsets strictly increase within each partition, and match the delivery reports.
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for c in &got {
        assert_eq!(c.topic, topic);
        if let Some(prev) = last.insert(c.partition, c.offset) {
            assert!(
                c.offset > prev,
                "partition {} offsets not increasing: {prev} then {}",
                c.partition,
                c.offset
            );
        }
        assert!(c.timestamp_ms > 0);
    }
    let by_key: HashMap<String, &common::Consumed> = got
        .iter()
        .map(|c| (c.key_str().expect("keyed"), c))
        .collect();
    assert_eq!(by_key.len(), 100, "distinct keys");
    for (i, (rec, &(partition, offset))) in recs.iter().zip(&delivered).enumerate() {
        let c = by_key[&format!("key-{i}")];
        assert_eq!(
            (c.partition, c.offset),
            (partition, offset),
            "key-{i} position"
        );
        assert_eq!(c.value, rec.value);
        assert_eq!(c.value_json()["n"], i);
        assert_eq!(c.header("seq").as_deref(), Some(i.to_string().as_str()));
        assert_eq!(c.headers, rec.headers, "headers of key-{i}");
    }

    let info = broker.topic_info(topic).unwrap();
    let mut per_partition = [0i64; 3];
    for &(p, _) in &delivered {
        per_partition[p as usize] += 1;
    }
    assert_eq!(info.high_watermarks, per_partition.to_vec());
}

#[test]
fn murmur2_partitions_are_in_range_and_deterministic() {
    let broker = Broker::start("harness_murmur2");
    let keys = [
        "a",
        "b",
        "user-1",
        "user-2",
        "hello world",
        "",
        "ключ",
        "0123456789",
    ];
    let first = broker.murmur2_partitions(&keys, 6);
    assert_eq!(first.len(), keys.len());
    assert!(first.iter().all(|p| (0..6).contains(p)), "{first:?}");
    let second = broker.murmur2_partitions(&keys, 6);
    assert_eq!(first, second);

    // Producing with those keys through the normal path lands on the same partitions.
    broker.create_topic("harness-murmur", 6);
    let recs: Vec<Rec> = keys.iter().map(|k| Rec::kv(k, "v")).collect();
    let delivered: Vec<i32> = broker
        .produce("harness-murmur", &recs)
        .into_iter()
        .map(|d| d.0)
        .collect();
    assert_eq!(delivered, first);
}

#[test]
fn broker_restart_keeps_data_and_port() {
    let mut broker = Broker::start("harness_restart");
    broker.create_topic("harness-restart", 2);
    let before = broker.produce(
        "harness-restart",
        &[
            Rec::kv("k", "v1").partition(0),
            Rec::unkeyed("v2").partition(1),
        ],
    );
    let addr = broker.addr.clone();
    broker.stop();
    assert!(!broker.is_running());
    broker.restart();
    assert_eq!(broker.addr, addr);
    let after = broker.produce("harness-restart", &[Rec::kv("k", "v3").partition(0)]);
    assert_eq!(after, vec![(0, before[0].1 + 1)]);
    let got = broker.consume("harness-restart", 3, Duration::from_secs(30));
    let values: Vec<String> = got.iter().map(|c| c.value_str().unwrap()).collect();
    assert_eq!(values, ["v1", "v3", "v2"]);
    assert_eq!(got[2].key, None);
}
