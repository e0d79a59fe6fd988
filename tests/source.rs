//! The Kafka source (`streamtract::kafka::Source`) against a real broker (tansu), with records
//! produced by an independent client (confluent-kafka): how soon after it was produced a
//! record reaches the source.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::{Broker, Rec};
use streamtract::kafka::{self, KafkaConfig, Source, SourceConfig, TopicSelection};

/// tansu holds every fetch for the whole `fetch_max_wait` and answers with what it read, so
/// with long polls a record produced during a fetch waits for the rest of it: anywhere from
/// nothing to all of the wait. The source notices after three fetches held with records and
/// polls instead; from then on every record arrives within a small fraction of the wait, in
/// order, none lost. (With long polls the records here, 450 ms apart against a fetch cycle of
/// about 205 ms, land all over the wait: 39 to 206 ms with a 200 ms wait.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_well_within_the_fetch_wait_on_a_broker_that_holds_fetches() {
    const RECORDS: usize = 12;
    /// Each of the first records comes in a held fetch; the source switches after three.
    const NOTICING: usize = 3;
    let wait = Duration::from_millis(200);
    let broker = Broker::start("source_polls_holding_broker");
    broker.create_topic("held", 1);
    let kafka = KafkaConfig::new([broker.addr.clone()]);
    let client = kafka::connect(&kafka).await.expect("connect");
    let mut config = SourceConfig::new(vec![TopicSelection {
        topic: "held".into(),
        partitions: None,
    }]);
    config.fetch_max_wait = wait;
    let mut source = Source::start(Arc::clone(&client), &kafka, &config)
        .await
        .expect("source");

    // Records as they come in, with when (wall clock, like their timestamps, which the
    // producer sets when it sends them).
    let reader = tokio::spawn(async move {
        let mut arrived = Vec::new();
        while arrived.len() < RECORDS {
            let chunk = tokio::time::timeout(Duration::from_secs(30), source.next_chunk())
                .await
                .expect("records within 30 s")
                .expect("source open")
                .expect("fetch");
            let at = Utc::now();
            arrived.extend(chunk.into_iter().map(|r| (r, at)));
        }
        arrived
    });
    // One record at a time, each produced while the source waits.
    let recs: Vec<Rec> = (0..RECORDS)
        .map(|i| Rec::kv("k", format!("r{i}")))
        .collect();
    let producer = broker.client();
    let produced = tokio::task::spawn_blocking(move || {
        producer.produce_paced("held", &recs, Duration::from_millis(450))
    })
    .await
    .expect("producer");
    let arrived = reader.await.expect("reader");

    let mut latencies = Vec::new();
    for (i, ((record, at), (_, offset))) in arrived.iter().zip(&produced).enumerate() {
        assert_eq!(record.offset, *offset, "records in order, none lost");
        assert_eq!(record.value.as_deref(), Some(format!("r{i}").as_bytes()));
        latencies.push((*at - record.timestamp).to_std().unwrap_or(Duration::ZERO));
    }
    let mut polled = latencies[NOTICING..].to_vec();
    polled.sort();
    assert!(
        polled.iter().all(|&l| l < wait / 2),
        "once polling, every record should arrive within half the fetch wait ({:?}): {latencies:?}",
        wait / 2
    );
    assert!(
        polled[polled.len() / 2] < wait / 8,
        "once polling, the median should be under an eighth of the fetch wait ({:?}): {latencies:?}",
        wait / 8
    );
}

/// A record larger than `fetch_max_bytes` still comes through, in order with the small records
/// around it. Kafka returns a first record batch larger than the fetch whole (KIP-74); tansu
/// returns nothing, so this tests the source's retry with a larger fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_larger_than_the_fetch_size_is_read_in_order() {
    let broker = Broker::start("source_record_larger_than_fetch");
    broker.create_topic("big", 1);
    let big = vec![b'7'; 700 * 1024];
    broker.produce(
        "big",
        &[
            Rec::kv("a", "small-0"),
            Rec::kv("b", big.clone()),
            Rec::kv("c", "small-2"),
        ],
    );
    let kafka = KafkaConfig::new([broker.addr.clone()]);
    let client = kafka::connect(&kafka).await.expect("connect");
    let mut config = SourceConfig::new(vec![TopicSelection {
        topic: "big".into(),
        partitions: None,
    }]);
    config.fetch_max_bytes = 256 * 1024;
    config.until_end = true;
    let mut source = Source::start(Arc::clone(&client), &kafka, &config)
        .await
        .expect("source");
    let mut values = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(20), source.next_chunk())
        .await
        .expect("records within 20 s")
    {
        values.extend(
            chunk
                .expect("fetch")
                .into_iter()
                .map(|r| r.value.unwrap_or_default()),
        );
    }
    assert_eq!(values.len(), 3, "all three records read");
    assert_eq!(values[0], b"small-0");
    assert_eq!(values[1], big, "the large record whole");
    assert_eq!(values[2], b"small-2");
}
