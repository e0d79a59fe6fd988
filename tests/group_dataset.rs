//! `KafkaGroupDataset` (tensorflow-io's `KafkaGroupIODataset`) against a real broker (tansu):
//! acknowledged records are committed (checked with confluent-kafka), records not acknowledged
//! are delivered again to the group's next reader, `stream_timeout` ends an idle stream, and
//! two readers in one group split the partitions.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Broker, Rec};
use futures::StreamExt;
use streamtract::dataset::{
    DatasetError, KafkaGroupDataset, KafkaGroupDatasetBuilder, SourceRecord,
};
use streamtract::kafka::group::TopicPartition;
use tokio::time::timeout;

/// A reader tuned for tansu: short session and heartbeats so rebalances are noticed quickly.
fn reader(broker: &Broker, topic: &str, group: &str) -> KafkaGroupDatasetBuilder {
    KafkaGroupDataset::builder([topic], group)
        .servers(&broker.addr)
        .session_timeout(Duration::from_millis(6000))
        .heartbeat_interval(Duration::from_millis(500))
        .message_poll_timeout(Duration::from_millis(500))
}

/// Produces `per_partition` records into each of `partitions` partitions of `topic`; record
/// `i` of partition `p` has key `p{p}-{i}` and lands at offset `i`.
fn produce_per_partition(broker: &Broker, topic: &str, partitions: i32, per_partition: i64) {
    let recs: Vec<Rec> = (0..partitions)
        .flat_map(|p| {
            (0..per_partition)
                .map(move |i| Rec::kv(&format!("p{p}-{i}"), format!("v{p}-{i}")).partition(p))
        })
        .collect();
    let placed = broker.produce(topic, &recs);
    assert_eq!(placed.len(), recs.len());
}

fn key(r: &SourceRecord) -> String {
    String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned()
}

fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition::new(topic, partition)
}

/// Reads `count` records (failing after `limit`).
async fn take(dataset: &mut KafkaGroupDataset, count: usize, limit: Duration) -> Vec<SourceRecord> {
    let mut out = Vec::new();
    let deadline = Instant::now() + limit;
    while out.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, dataset.next()).await {
            Ok(Some(r)) => out.push(r.expect("record")),
            Ok(None) => panic!("the stream ended after {} of {count} records", out.len()),
            Err(_) => panic!("only {} of {count} records within {limit:?}", out.len()),
        }
    }
    out
}

/// Reads until the stream ends (failing after `limit`).
async fn drain(dataset: &mut KafkaGroupDataset, limit: Duration) -> Vec<SourceRecord> {
    let mut out = Vec::new();
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, dataset.next()).await {
            Ok(Some(r)) => out.push(r.expect("record")),
            Ok(None) => return out,
            Err(_) => panic!(
                "the stream did not end within {limit:?} ({} records read)",
                out.len()
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_are_committed_and_the_rest_delivered_again() {
    const PARTITIONS: i32 = 3;
    const PER_PARTITION: i64 = 10;
    const ACKED: i64 = 4;
    let broker = Broker::start("group_dataset_ack");
    broker.create_topic("events", PARTITIONS);
    produce_per_partition(&broker, "events", PARTITIONS, PER_PARTITION);

    // Long commit interval: only the explicit commits below happen.
    let builder = reader(&broker, "events", "g-ack")
        .commit_interval(Duration::from_secs(600))
        .stream_timeout(Duration::from_secs(3));
    let mut first = builder.clone().open().await.unwrap();
    assert_eq!(
        first.assignment().len(),
        PARTITIONS as usize,
        "a lone reader gets every partition"
    );
    let records = take(
        &mut first,
        (PARTITIONS as i64 * PER_PARTITION) as usize,
        Duration::from_secs(30),
    )
    .await;
    let mut by_partition: BTreeMap<i32, Vec<&SourceRecord>> = BTreeMap::new();
    for r in &records {
        by_partition.entry(r.partition).or_default().push(r);
    }
    for (p, rs) in &by_partition {
        let offsets: Vec<i64> = rs.iter().map(|r| r.offset).collect();
        assert_eq!(
            offsets,
            (0..PER_PARTITION).collect::<Vec<_>>(),
            "partition {p} in offset order"
        );
        assert!(rs.iter().all(|r| key(r) == format!("p{p}-{}", r.offset)));
    }

    // Acknowledge the first ACKED records of each partition, three ways; partition 2 skips
    // offset 2 at first.
    let acker = first.acker();
    for r in &by_partition[&0][..ACKED as usize] {
        acker.ack(r);
    }
    acker.ack_through(by_partition[&1][ACKED as usize - 1]);
    for r in &by_partition[&2][..ACKED as usize] {
        if r.offset != 2 {
            first.ack(r);
        }
    }
    let committed_now = acker.commit().await.unwrap();
    assert_eq!(
        committed_now,
        BTreeMap::from([
            (tp("events", 0), ACKED),
            (tp("events", 1), ACKED),
            (tp("events", 2), 2)
        ]),
        "per partition, only the acknowledged prefix is committed"
    );
    assert_eq!(
        acker.commit().await.unwrap(),
        BTreeMap::new(),
        "nothing moved since"
    );
    assert_eq!(
        acker.unacknowledged(),
        (PARTITIONS as i64 * (PER_PARTITION - ACKED)) as usize + 1
    );
    acker.ack(by_partition[&2][2]);
    let closed = acker.close().await.unwrap();
    assert_eq!(
        closed,
        BTreeMap::from([(tp("events", 2), ACKED)]),
        "close commits what moved"
    );
    assert!(acker.is_closed());
    assert!(acker.assignment().is_empty());
    assert!(first.next().await.is_none(), "close ends the stream");
    assert!(matches!(
        acker.commit().await,
        Err(DatasetError::GroupClosed { .. })
    ));
    assert!(
        acker.close().await.unwrap().is_empty(),
        "closing again does nothing"
    );

    // confluent-kafka sees exactly the acknowledged prefixes.
    let expected: BTreeMap<i32, Option<i64>> = (0..PARTITIONS).map(|p| (p, Some(ACKED))).collect();
    assert_eq!(broker.committed("g-ack", "events", PARTITIONS), expected);

    // The next reader of the group gets exactly the records that were not acknowledged.
    let mut second = builder.open().await.unwrap();
    let again = drain(&mut second, Duration::from_secs(30)).await;
    let got: BTreeSet<(i32, i64)> = again.iter().map(|r| (r.partition, r.offset)).collect();
    let want: BTreeSet<(i32, i64)> = (0..PARTITIONS)
        .flat_map(|p| (ACKED..PER_PARTITION).map(move |o| (p, o)))
        .collect();
    assert_eq!(got, want);
    assert_eq!(again.len(), want.len(), "each once");
    // The stream has ended; what it handed out can still be acknowledged and committed.
    second.acker().ack_all(&again);
    let closed = second.close().await.unwrap();
    assert_eq!(
        closed.values().copied().collect::<Vec<_>>(),
        vec![PER_PARTITION; PARTITIONS as usize]
    );
    let expected: BTreeMap<i32, Option<i64>> =
        (0..PARTITIONS).map(|p| (p, Some(PER_PARTITION))).collect();
    assert_eq!(broker.committed("g-ack", "events", PARTITIONS), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_timeout_ends_an_idle_stream() {
    let broker = Broker::start("group_dataset_timeout");
    broker.create_topic("quiet", 1);
    produce_per_partition(&broker, "quiet", 1, 3);

    // stream_timeout = 2 s: the stream ends about 2 s after the last record.
    let mut dataset = reader(&broker, "quiet", "g-2s")
        .stream_timeout(Duration::from_secs(2))
        .open()
        .await
        .unwrap();
    assert_eq!(dataset.stream_timeout(), Some(Duration::from_secs(2)));
    let records = take(&mut dataset, 3, Duration::from_secs(20)).await;
    let idle_from = Instant::now();
    assert!(timeout(Duration::from_secs(20), dataset.next())
        .await
        .unwrap()
        .is_none());
    let waited = idle_from.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(7),
        "ended after {waited:?}, expected about 2 s"
    );
    dataset.acker().ack_all(&records);
    let closed = dataset.close().await.unwrap();
    assert_eq!(closed, BTreeMap::from([(tp("quiet", 0), 3)]));

    // tensorflow-io's default stream_timeout (0) is raised to message_poll_timeout; here through
    // the blocking face, from a thread without a runtime.
    let builder = reader(&broker, "quiet", "g-default")
        .message_poll_timeout(Duration::from_secs(1))
        .commit_interval(Duration::from_secs(600)); // only close commits
    let blocking = std::thread::spawn(move || {
        let dataset = builder.open_blocking().unwrap();
        let acker = dataset.acker();
        assert_eq!(
            dataset.get_ref().unwrap().stream_timeout(),
            Some(Duration::from_secs(1))
        );
        let mut offsets = vec![];
        let mut last = Instant::now();
        let mut dataset = dataset;
        for record in &mut dataset {
            let record = record.unwrap();
            offsets.push(record.offset);
            acker.ack(&record);
            last = Instant::now();
        }
        let waited = last.elapsed();
        let closed = acker.close_blocking().unwrap();
        (offsets, waited, closed)
    });
    let (offsets, waited, closed) = tokio::task::spawn_blocking(move || blocking.join().unwrap())
        .await
        .unwrap();
    assert_eq!(offsets, vec![0, 1, 2]);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(6),
        "default stream_timeout ended after {waited:?}, expected about 1 s"
    );
    assert_eq!(closed, BTreeMap::from([(tp("quiet", 0), 3)]));

    // stream_timeout = None (tensorflow-io's -1) waits for records produced later.
    let mut forever = reader(&broker, "quiet", "g-forever")
        .stream_timeout(None)
        .open()
        .await
        .unwrap();
    assert_eq!(forever.stream_timeout(), None);
    take(&mut forever, 3, Duration::from_secs(20)).await;
    assert!(
        timeout(Duration::from_secs(3), forever.next())
            .await
            .is_err(),
        "still waiting"
    );
    let producer = std::thread::spawn({
        let addr = broker.addr.clone();
        move || {
            common::KClient::new(&addr).produce("quiet", &[Rec::kv("late", "late").partition(0)])
        }
    });
    let late = take(&mut forever, 1, Duration::from_secs(20)).await;
    producer.join().unwrap();
    assert_eq!((late[0].offset, key(&late[0])), (3, "late".to_string()));
    forever.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_readers_in_one_group_split_the_partitions() {
    const PARTITIONS: i32 = 4;
    const PER_PARTITION: i64 = 10;
    let broker = Broker::start("group_dataset_split");
    broker.create_topic("shared", PARTITIONS);
    let builder = reader(&broker, "shared", "g-split")
        .commit_interval(Duration::from_millis(200))
        .stream_timeout(Duration::from_secs(4));
    let a = builder.clone().open().await.unwrap();
    assert_eq!(a.assignment().len(), PARTITIONS as usize);
    // The second reader's join makes the first one rebalance in the background.
    let b = builder.open().await.unwrap();
    let all: BTreeSet<TopicPartition> = (0..PARTITIONS).map(|p| tp("shared", p)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (assigned_a, assigned_b) = loop {
        let (x, y): (BTreeSet<_>, BTreeSet<_>) = (
            a.assignment().into_iter().collect(),
            b.assignment().into_iter().collect(),
        );
        if !x.is_empty()
            && !y.is_empty()
            && x.is_disjoint(&y)
            && x.union(&y).cloned().collect::<BTreeSet<_>>() == all
        {
            break (x, y);
        }
        assert!(
            Instant::now() < deadline,
            "no split within 30 s: {x:?} / {y:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    produce_per_partition(&broker, "shared", PARTITIONS, PER_PARTITION);
    let read = |mut dataset: KafkaGroupDataset| async move {
        let records = drain(&mut dataset, Duration::from_secs(40)).await;
        dataset.acker().ack_all(&records);
        let assignment: BTreeSet<TopicPartition> = dataset.assignment().into_iter().collect();
        dataset.close().await.unwrap();
        (records, assignment)
    };
    let (from_a, from_b) = tokio::join!(tokio::spawn(read(a)), tokio::spawn(read(b)));
    let ((records_a, still_a), (records_b, still_b)) = (from_a.unwrap(), from_b.unwrap());
    assert_eq!(
        (still_a, still_b),
        (assigned_a.clone(), assigned_b.clone()),
        "no rebalance while reading"
    );

    let partitions = |records: &[SourceRecord]| -> BTreeSet<TopicPartition> {
        records.iter().map(|r| tp(&r.topic, r.partition)).collect()
    };
    assert_eq!(
        partitions(&records_a),
        assigned_a,
        "reader A reads exactly its partitions"
    );
    assert_eq!(
        partitions(&records_b),
        assigned_b,
        "reader B reads exactly its partitions"
    );
    let mut every: Vec<(i32, i64)> = records_a
        .iter()
        .chain(&records_b)
        .map(|r| (r.partition, r.offset))
        .collect();
    every.sort_unstable();
    let want: Vec<(i32, i64)> = (0..PARTITIONS)
        .flat_map(|p| (0..PER_PARTITION).map(move |o| (p, o)))
        .collect();
    assert_eq!(every, want, "every record read once, by one of the readers");

    let expected: BTreeMap<i32, Option<i64>> =
        (0..PARTITIONS).map(|p| (p, Some(PER_PARTITION))).collect();
    assert_eq!(broker.committed("g-split", "shared", PARTITIONS), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_hands_unacknowledged_records_to_the_next_owner() {
    const PARTITIONS: i32 = 2;
    const PER_PARTITION: i64 = 10;
    const ACKED: i64 = 5;
    let broker = Broker::start("group_dataset_rebalance");
    broker.create_topic("moving", PARTITIONS);
    produce_per_partition(&broker, "moving", PARTITIONS, PER_PARTITION);
    // Only the rebalance and close commit.
    let builder = reader(&broker, "moving", "g-move").commit_interval(Duration::from_secs(600));
    let mut a = builder.clone().stream_timeout(None).open().await.unwrap();
    let before = take(
        &mut a,
        (PARTITIONS as i64 * PER_PARTITION) as usize,
        Duration::from_secs(30),
    )
    .await;
    a.acker()
        .ack_all(before.iter().filter(|r| r.offset < ACKED));

    // B joins: A commits its acknowledged prefixes, gives up a partition, and reads the one it
    // keeps again from the committed position.
    let mut b = builder
        .stream_timeout(Duration::from_secs(4))
        .open()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (kept, moved) = loop {
        let (x, y) = (a.assignment(), b.assignment());
        if x.len() == 1 && y.len() == 1 && x != y {
            break (x[0].partition, y[0].partition);
        }
        assert!(
            Instant::now() < deadline,
            "no split within 30 s: {x:?} / {y:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let expected: BTreeMap<i32, Option<i64>> = (0..PARTITIONS).map(|p| (p, Some(ACKED))).collect();
    assert_eq!(
        broker.committed("g-move", "moving", PARTITIONS),
        expected,
        "committed before rejoining"
    );

    let again_a = take(
        &mut a,
        (PER_PARTITION - ACKED) as usize,
        Duration::from_secs(30),
    )
    .await;
    let again_b = drain(&mut b, Duration::from_secs(30)).await;
    let coords = |rs: &[SourceRecord]| {
        rs.iter()
            .map(|r| (r.partition, r.offset))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        coords(&again_a),
        (ACKED..PER_PARTITION)
            .map(|o| (kept, o))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        coords(&again_b),
        (ACKED..PER_PARTITION)
            .map(|o| (moved, o))
            .collect::<Vec<_>>()
    );

    // A late acknowledgement of a record A no longer owns commits nothing.
    a.acker()
        .ack_all(before.iter().filter(|r| r.partition == moved));
    assert_eq!(a.commit().await.unwrap(), BTreeMap::new());
    b.acker().ack_all(&again_b);
    a.acker().ack_all(&again_a);
    assert_eq!(
        a.close().await.unwrap(),
        BTreeMap::from([(tp("moving", kept), PER_PARTITION)])
    );
    assert_eq!(
        b.close().await.unwrap(),
        BTreeMap::from([(tp("moving", moved), PER_PARTITION)])
    );
    let expected: BTreeMap<i32, Option<i64>> =
        (0..PARTITIONS).map(|p| (p, Some(PER_PARTITION))).collect();
    assert_eq!(broker.committed("g-move", "moving", PARTITIONS), expected);
}
