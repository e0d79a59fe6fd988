//! The tensorflow-io Kafka API (`streamtract::dataset`) against a real broker (tansu), with
//! records produced and read back by an independent client (confluent-kafka).
//!
//! Covers: topic spec semantics (`last` inclusive, specs read in order, `eof`, `timeout`,
//! `stream_timeout`), record coordinates, preprocessing and batching, mini-batches, the output
//! sequence and `write_kafka`, and the `seed` and `evaluate` examples.

mod common;

#[allow(dead_code)]
#[path = "../examples/seed.rs"]
mod seed;

#[allow(dead_code)]
#[path = "../examples/evaluate.rs"]
mod evaluate;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{digits, tf_classes, Broker, Rec};
use futures::StreamExt;
use streamtract::codec::InputFormat;
use streamtract::dataset::{
    write_kafka, DatasetError, KafkaBatchDataset, KafkaDataset, KafkaWriter, Label, OutputConfig,
    OutputItem, OutputSequence, Preprocess, SourceRecord,
};
use streamtract::model::Model;
use streamtract::KafkaError;
use tokio::time::timeout;

const MODEL: &str = "models/digits_mlp.onnx";

fn value(r: &SourceRecord) -> String {
    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()
}

fn values(records: &[SourceRecord]) -> Vec<String> {
    records.iter().map(value).collect()
}

fn strings(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("D{i}")).collect()
}

/// Reads a bounded dataset to its end.
async fn read_all(broker: &Broker, specs: &[&str]) -> Vec<SourceRecord> {
    let mut dataset = KafkaDataset::builder(specs.iter().copied())
        .servers(&broker.addr)
        .eof(true)
        .open()
        .await
        .unwrap_or_else(|e| panic!("open {specs:?}: {e}"));
    let mut out = vec![];
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Some(r) = timeout(Duration::from_secs(20), dataset.next())
        .await
        .unwrap_or_else(|_| panic!("{specs:?}: no end within 20 s"))
    {
        out.push(r.unwrap());
        assert!(Instant::now() < deadline, "{specs:?} does not end");
    }
    out
}

async fn open_error(broker: &Broker, spec: &str) -> DatasetError {
    KafkaDataset::builder([spec])
        .servers(&broker.addr)
        .eof(true)
        .open()
        .await
        .expect_err(spec)
}

/// Must-show 1: `t:0:0:4` yields offsets 0..=4, specs are read in order, bare topics read
/// every partition, bad specs fail at open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_specs_read_like_tensorflow_io() {
    let broker = Broker::start("dataset-specs");
    broker.create_topic("test", 1);
    let recs: Vec<Rec> = (0..10).map(|i| Rec::unkeyed(format!("D{i}"))).collect();
    broker.produce("test", &recs);

    // tensorflow-io's own test case: "test:0:0:4" gives D0..D4, `last` inclusive.
    let first = read_all(&broker, &["test:0:0:4"]).await;
    assert_eq!(values(&first), strings(0..5));
    assert_eq!(
        first.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(
        values(&read_all(&broker, &["test:0:5:-1"]).await),
        strings(5..10)
    );
    // Several specs: one after the other, in the order given.
    assert_eq!(
        values(&read_all(&broker, &["test:0:0:4", "test:0:5:-1"]).await),
        strings(0..10)
    );
    let mut reversed = strings(5..10);
    reversed.extend(strings(0..5));
    assert_eq!(
        values(&read_all(&broker, &["test:0:5", "test:0:0:4"]).await),
        reversed
    );
    assert_eq!(
        values(&read_all(&broker, &["test:0:2:3"]).await),
        ["D2", "D3"]
    );
    assert_eq!(values(&read_all(&broker, &["test:0:7:7"]).await), ["D7"]);
    assert!(read_all(&broker, &["test:0:5:4"]).await.is_empty());
    assert_eq!(values(&read_all(&broker, &["test"]).await), strings(0..10));
    assert!(read_all(&broker, &["test:0:latest"]).await.is_empty());

    // A bare topic reads every partition (tensorflow-io read partition 0 only).
    broker.create_topic("multi", 3);
    let recs: Vec<Rec> = (0..12)
        .map(|i| Rec::unkeyed(format!("p{}-{}", i % 3, i / 3)).partition(i % 3))
        .collect();
    broker.produce("multi", &recs);
    let all = read_all(&broker, &["multi"]).await;
    assert_eq!(all.len(), 12);
    for p in 0..3 {
        let offsets: Vec<i64> = all
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.offset)
            .collect();
        assert_eq!(offsets, vec![0, 1, 2, 3], "partition {p} in offset order");
    }
    let one = read_all(&broker, &["multi:1"]).await;
    assert_eq!(values(&one), ["p1-0", "p1-1", "p1-2", "p1-3"]);
    assert_eq!(
        values(&read_all(&broker, &["multi:2:1:2"]).await),
        ["p2-1", "p2-2"]
    );

    // Specs that cannot work fail at open, saying why.
    let e = open_error(&broker, "nope").await;
    assert!(
        matches!(&e, DatasetError::Kafka(KafkaError::UnknownTopic { .. })),
        "{e}"
    );
    let e = open_error(&broker, "test:4").await;
    assert!(
        matches!(&e, DatasetError::Kafka(KafkaError::UnknownPartition { .. })),
        "{e}"
    );
    let e = open_error(&broker, "test:0:50").await;
    assert!(
        matches!(&e, DatasetError::OffsetOutOfRange { high: 10, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("0..=10"), "{e}");
    let e = open_error(&broker, "test:zero").await;
    assert!(matches!(&e, DatasetError::InvalidSpec { .. }), "{e}");
}

/// Must-show 1: `eof=false` waits for records produced later (and ends at `last`); `eof=true`
/// stops at the end offsets the partition had when the dataset was opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eof_false_waits_for_records_produced_later() {
    let broker = Broker::start("dataset-eof");
    broker.create_topic("live", 1);
    broker.produce("live", &[Rec::unkeyed("D0"), Rec::unkeyed("D1")]);

    let mut following = KafkaDataset::builder(["live:0:0:4"])
        .servers(&broker.addr)
        .eof(false)
        .timeout(Duration::from_millis(200))
        .open()
        .await
        .unwrap();
    let bounded = KafkaDataset::builder(["live"])
        .servers(&broker.addr)
        .eof(true)
        .open()
        .await
        .unwrap();

    let client = broker.client();
    let started = Instant::now();
    let producer = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(1500));
        let recs: Vec<Rec> = (2..6).map(|i| Rec::unkeyed(format!("D{i}"))).collect();
        client.produce("live", &recs);
        Instant::now()
    });

    let mut got = vec![];
    while let Some(r) = timeout(Duration::from_secs(20), following.next())
        .await
        .expect("eof=false with last=4 ends once offset 4 arrived")
    {
        let r = r.unwrap();
        got.push((value(&r), started.elapsed()));
    }
    let produced_at = producer.await.unwrap();
    let names: Vec<&str> = got.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(
        names,
        ["D0", "D1", "D2", "D3", "D4"],
        "offsets 0..=4, D5 not read"
    );
    assert!(got[1].1 < Duration::from_millis(1500), "D1 came at once");
    assert!(
        got[2].1 >= produced_at.duration_since(started) - Duration::from_millis(600),
        "D2 could only come after it was produced ({:?})",
        got[2].1
    );

    // The bounded dataset was opened when the topic held 2 records: it stops there.
    let rest: Vec<_> = bounded.collect().await;
    let rest: Vec<String> = rest.iter().map(|r| value(r.as_ref().unwrap())).collect();
    assert_eq!(rest, ["D0", "D1"]);

    // Opened now, it sees all six.
    assert_eq!(values(&read_all(&broker, &["live"]).await), strings(0..6));
}

/// Must-show 1: `timeout` alone never ends a dataset (as in tensorflow-io, a timed-out poll is
/// repeated); `stream_timeout` ends it after that long without a record, never below
/// `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_and_stream_timeout() {
    let broker = Broker::start("dataset-timeout");
    broker.create_topic("idle", 1);
    broker.produce("idle", &[Rec::unkeyed("D0")]);

    // eof=false, timeout 200 ms, no stream_timeout: many timeouts go by, the dataset waits.
    let mut waiting = KafkaDataset::builder(["idle:0"])
        .servers(&broker.addr)
        .timeout(Duration::from_millis(200))
        .open()
        .await
        .unwrap();
    assert_eq!(waiting.stream_timeout(), None);
    assert_eq!(value(&waiting.next().await.unwrap().unwrap()), "D0");
    assert!(
        timeout(Duration::from_millis(1500), waiting.next())
            .await
            .is_err(),
        "7 poll timeouts later the dataset still waits"
    );
    broker.produce("idle", &[Rec::unkeyed("D1")]);
    let d1 = timeout(Duration::from_secs(15), waiting.next())
        .await
        .expect("the record produced later arrives")
        .unwrap()
        .unwrap();
    assert_eq!(value(&d1), "D1");

    // stream_timeout 800 ms: the dataset ends 800 ms after the last record.
    let mut idle = KafkaDataset::builder(["idle"])
        .servers(&broker.addr)
        .timeout(Duration::from_millis(200))
        .stream_timeout(Duration::from_millis(800))
        .open()
        .await
        .unwrap();
    let mut n = 0;
    let mut last_record = Instant::now();
    while let Some(r) = timeout(Duration::from_secs(15), idle.next())
        .await
        .expect("stream_timeout ends the dataset")
    {
        r.unwrap();
        n += 1;
        last_record = Instant::now();
    }
    let quiet = last_record.elapsed();
    assert_eq!(n, 2);
    assert!(
        quiet >= Duration::from_millis(750) && quiet < Duration::from_secs(5),
        "ended {quiet:?} after the last record"
    );

    // A stream_timeout below timeout is raised to it (tensorflow-io: max of the two).
    let mut raised = KafkaDataset::builder(["idle:0:2"])
        .servers(&broker.addr)
        .timeout(Duration::from_millis(900))
        .stream_timeout(Duration::from_millis(100))
        .open()
        .await
        .unwrap();
    assert_eq!(raised.stream_timeout(), Some(Duration::from_millis(900)));
    let opened = Instant::now();
    assert!(timeout(Duration::from_secs(15), raised.next())
        .await
        .unwrap()
        .is_none());
    assert!(
        opened.elapsed() >= Duration::from_millis(850),
        "{:?}",
        opened.elapsed()
    );

    assert!(matches!(
        KafkaDataset::builder(["idle"])
            .servers(&broker.addr)
            .timeout(Duration::ZERO)
            .open()
            .await,
        Err(DatasetError::InvalidOption {
            option: "timeout",
            ..
        })
    ));
}

/// Must-show 2: key, offset, partition, timestamp and headers of records produced by
/// confluent-kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_carry_coordinates_from_confluent_kafka() {
    let broker = Broker::start("dataset-coords");
    broker.create_topic("coords", 3);
    let recs = vec![
        Rec::kv("alpha", "v0")
            .header("trace", "t-0")
            .header("bin", vec![0u8, 159, 146, 150]),
        Rec::unkeyed("v1").partition(2).header("only", "header"),
        Rec::kv_bytes(vec![0u8, 1, 2, 255], "v2"),
        Rec::kv("beta", "v3").header("empty", ""),
        Rec::kv("gamma", vec![0xffu8, 0xfe]),
        Rec::kv("alpha", "v5").header("trace", "t-5"),
        Rec::unkeyed("v6").partition(1),
    ];
    let before_ms = chrono::Utc::now().timestamp_millis();
    let produced = broker.produce("coords", &recs);
    let consumed = broker.consume("coords", recs.len(), Duration::from_secs(20));
    assert_eq!(consumed.len(), recs.len());

    let read = read_all(&broker, &["coords"]).await;
    assert_eq!(read.len(), recs.len());
    let by_position: BTreeMap<(i32, i64), &SourceRecord> =
        read.iter().map(|r| ((r.partition, r.offset), r)).collect();
    for (rec, &(partition, offset)) in recs.iter().zip(&produced) {
        let r = by_position
            .get(&(partition, offset))
            .unwrap_or_else(|| panic!("no record at {partition}@{offset}"));
        assert_eq!(&*r.topic, "coords");
        assert_eq!(r.key, rec.key, "key at {partition}@{offset}");
        assert_eq!(r.value, rec.value, "value at {partition}@{offset}");
        let headers: BTreeMap<String, Vec<u8>> = rec
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone().unwrap_or_default()))
            .collect();
        assert_eq!(r.headers, headers, "headers at {partition}@{offset}");
        let theirs = consumed
            .iter()
            .find(|c| c.partition == partition && c.offset == offset)
            .unwrap();
        assert_eq!(r.timestamp.timestamp_millis(), theirs.timestamp_ms);
        assert!(theirs.timestamp_ms >= before_ms - 1000);
    }
    // Keyed records were partitioned by the key (the same key, the same partition).
    let alpha: Vec<i32> = read
        .iter()
        .filter(|r| r.key.as_deref() == Some(b"alpha"))
        .map(|r| r.partition)
        .collect();
    assert_eq!(alpha.len(), 2);
    assert_eq!(alpha[0], alpha[1]);
}

/// Must-show 3: indexes set in shuffled order land in index order; duplicate and stale
/// indexes are errors; `flush` returns only once the broker acknowledged everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_sequence_writes_in_index_order() {
    let broker = Broker::start("dataset-output");
    broker.create_topic("seq", 1);
    const N: u64 = 40;
    let mut sequence = OutputSequence::connect(&broker.addr, "seq").await.unwrap();
    let order: Vec<u64> = (0..N).map(|i| (i * 17 + 5) % N).collect();
    let mut set = std::collections::BTreeSet::new();
    for (step, &index) in order.iter().enumerate() {
        let item = OutputItem::new(format!("item-{index}"))
            .key(format!("k{index}"))
            .header("index", index.to_string());
        sequence.set(index, item).await.unwrap();
        set.insert(index);
        let prefix = (0..).find(|i| !set.contains(i)).unwrap();
        assert_eq!(sequence.written(), prefix, "after setting {index}");
        assert_eq!(sequence.pending() as u64, set.len() as u64 - prefix);
        if step == 10 {
            let pending = *set.iter().find(|&&i| i >= prefix).unwrap();
            let e = sequence.set(pending, "again").await.unwrap_err();
            assert!(
                matches!(e, DatasetError::DuplicateIndex { index } if index == pending),
                "{e}"
            );
            if prefix > 0 {
                let e = sequence.set(0, "stale").await.unwrap_err();
                assert!(
                    matches!(e, DatasetError::StaleIndex { index: 0, .. }),
                    "{e}"
                );
            }
        }
    }
    let e = sequence.set(3, "stale").await.unwrap_err();
    assert!(
        matches!(
            e,
            DatasetError::StaleIndex {
                index: 3,
                written: N
            }
        ),
        "{e}"
    );
    sequence.flush().await.unwrap();
    assert_eq!(sequence.acked(), N);
    // Acknowledged means on the broker: the high watermark says so at once.
    assert_eq!(
        broker.topic_info("seq").unwrap().high_watermarks,
        vec![N as i64]
    );
    let got = broker.consume("seq", N as usize, Duration::from_secs(20));
    let got_values: Vec<String> = got.iter().map(|c| c.value_str().unwrap()).collect();
    let want: Vec<String> = (0..N).map(|i| format!("item-{i}")).collect();
    assert_eq!(got_values, want);
    for (i, c) in got.iter().enumerate() {
        assert_eq!(c.key_str().unwrap(), format!("k{i}"));
        assert_eq!(c.header("index").unwrap(), i.to_string());
    }
    assert_eq!(sequence.close().await.unwrap(), N);

    // Closing with a hole: the items after it were never written, and that is an error.
    broker.create_topic("holes", 1);
    let mut holes = OutputSequence::connect(&broker.addr, "holes")
        .await
        .unwrap();
    holes.set(0, "a").await.unwrap();
    holes.set(2, "c").await.unwrap();
    let e = holes.close().await.unwrap_err();
    assert!(
        matches!(
            e,
            DatasetError::Gap {
                pending: 1,
                missing: 1
            }
        ),
        "{e}"
    );
    assert_eq!(broker.topic_info("holes").unwrap().high_watermarks, vec![1]);
}

/// `write_kafka`: one-shot writes with one producer, to an explicit partition or by key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_kafka_reuses_one_producer() {
    let broker = Broker::start("dataset-write");
    broker.create_topic("wk", 2);
    // tensorflow-io's `topic:partition` form.
    assert_eq!(
        write_kafka(&broker.addr, "wk:1", ["a", "b", "c"])
            .await
            .unwrap(),
        3
    );
    let info = broker.topic_info("wk").unwrap();
    assert_eq!(info.high_watermarks, vec![0, 3]);

    let keys = ["k0", "k1", "k2", "k3", "k4", "k5"];
    let mut writer = KafkaWriter::open(&OutputConfig::new("wk").unwrap().servers(&broker.addr))
        .await
        .unwrap();
    for (i, k) in keys.iter().enumerate() {
        // Each call returns once the broker acknowledged the record.
        writer
            .write_kafka(OutputItem::new(format!("v{i}")).key(*k))
            .await
            .unwrap();
        assert_eq!(writer.acked(), i as u64 + 1);
    }
    writer.write_kafka("unkeyed").await.unwrap();
    assert_eq!(writer.close().await.unwrap(), keys.len() as u64 + 1);

    let got = broker.consume("wk", 3 + keys.len() + 1, Duration::from_secs(20));
    let expected_partitions = broker.murmur2_partitions(&keys, 2);
    for (k, p) in keys.iter().zip(&expected_partitions) {
        let c = got
            .iter()
            .find(|c| c.key_str().as_deref() == Some(*k))
            .unwrap();
        assert_eq!(
            c.partition, *p,
            "key {k} goes where the Java partitioner puts it"
        );
    }
    let unkeyed = got
        .iter()
        .find(|c| c.key.is_none() && c.value_str().unwrap() == "unkeyed");
    assert_eq!(
        unkeyed.unwrap().partition,
        0,
        "unkeyed items go to partition 0"
    );
}

/// Preprocessing and batching: CSV rows into tensors with labels, the last batch partial, a
/// bad record reported without stopping the stream, no empty batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_decoded_records() {
    let broker = Broker::start("dataset-batch");
    broker.create_topic("labelled", 1);
    let rows = &digits()[..70];
    let mut recs: Vec<Rec> = rows
        .iter()
        .map(|(label, features)| Rec::unkeyed(format!("{label},{features}")))
        .collect();
    recs.insert(40, Rec::unkeyed("7,not,numbers"));
    broker.produce("labelled", &recs);

    let model = Model::load(MODEL).unwrap();
    let csv = InputFormat::Csv { delimiter: b',' };
    let preprocess = Preprocess::for_model(&model, csv.clone())
        .unwrap()
        .label(Label::CsvColumn(0))
        .unwrap();
    let mut batches = KafkaDataset::builder(["labelled"])
        .servers(&broker.addr)
        .eof(true)
        .open()
        .await
        .unwrap()
        .batch(32, preprocess.clone());
    let (mut sizes, mut labels, mut errors, mut first_rows) = (vec![], vec![], vec![], vec![]);
    while let Some(item) = batches.next().await {
        match item {
            Ok(batch) => {
                sizes.push(batch.len());
                let features = batch.features(0).unwrap();
                assert_eq!(features.shape(), &[batch.len(), 64]);
                first_rows.push(
                    features
                        .outer_iter()
                        .next()
                        .unwrap()
                        .iter()
                        .copied()
                        .collect::<Vec<f32>>(),
                );
                labels.extend(batch.labels.unwrap().iter().map(|&l| l as usize));
            }
            Err(e) => errors.push(e),
        }
    }
    assert_eq!(sizes, vec![32, 32, 6]);
    let want: Vec<usize> = rows.iter().map(|(l, _)| *l).collect();
    assert_eq!(labels, want);
    assert_eq!(errors.len(), 1);
    assert!(
        matches!(&errors[0], DatasetError::Decode { offset: 40, .. }),
        "{}",
        errors[0]
    );
    let first: Vec<f32> = rows[0].1.split(',').map(|v| v.parse().unwrap()).collect();
    assert_eq!(first_rows[0], first);

    // The label from the key; `examples` gives ndarray rows one by one.
    broker.create_topic("keyed", 1);
    let recs: Vec<Rec> = rows[..5]
        .iter()
        .map(|(label, features)| Rec::kv(&label.to_string(), features.as_str()))
        .collect();
    broker.produce("keyed", &recs);
    let by_key = Preprocess::for_model(&model, csv)
        .unwrap()
        .label(Label::Key)
        .unwrap();
    let examples: Vec<_> = KafkaDataset::builder(["keyed"])
        .servers(&broker.addr)
        .eof(true)
        .open()
        .await
        .unwrap()
        .examples(by_key)
        .collect()
        .await;
    assert_eq!(examples.len(), 5);
    for (e, (label, _)) in examples.iter().zip(rows) {
        let e = e.as_ref().unwrap();
        assert_eq!(e.label, Some(*label as f32));
        assert_eq!(e.features[0].shape(), &[64]);
    }
    assert!(Preprocess::for_model(&model, InputFormat::Json)
        .unwrap()
        .label(Label::CsvColumn(0))
        .is_err());

    // An empty topic gives no batch at all, not an empty one.
    broker.create_topic("empty", 1);
    let none: Vec<_> = KafkaDataset::builder(["empty"])
        .servers(&broker.addr)
        .eof(true)
        .open()
        .await
        .unwrap()
        .batch(32, preprocess)
        .collect()
        .await;
    assert!(none.is_empty());
}

/// `KafkaBatchDataset`: mini-batches of the given size, the last one partial; while following,
/// a partial mini-batch is released after one poll timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mini_batches_for_online_learning() {
    let broker = Broker::start("dataset-mini");
    broker.create_topic("mini", 1);
    let rows = &digits()[..10];
    let recs: Vec<Rec> = rows
        .iter()
        .map(|(label, features)| Rec::kv(&label.to_string(), features.as_str()))
        .collect();
    broker.produce("mini", &recs);

    let dataset = KafkaDataset::builder(["mini"])
        .servers(&broker.addr)
        .eof(true)
        .open()
        .await
        .unwrap();
    let minis: Vec<_> = KafkaBatchDataset::new(dataset, 4).collect().await;
    let sizes: Vec<usize> = minis.iter().map(|m| m.as_ref().unwrap().len()).collect();
    assert_eq!(sizes, vec![4, 4, 2]);

    // Following: 3 records arrive, far fewer than the mini-batch size; one poll timeout later
    // they come out as a mini-batch.
    let following = KafkaDataset::builder(["mini:0:latest"])
        .servers(&broker.addr)
        .timeout(Duration::from_millis(300))
        .open()
        .await
        .unwrap();
    let mut minis = KafkaBatchDataset::new(following, 100);
    broker.produce("mini", &recs[..3]);
    let mini = timeout(Duration::from_secs(15), minis.next())
        .await
        .expect("a partial mini-batch after a poll timeout")
        .unwrap()
        .unwrap();
    assert_eq!(mini.len(), 3);
    assert_eq!(mini.records()[0].offset, 10);
    let model = Model::load(MODEL).unwrap();
    let preprocess = Preprocess::for_model(&model, InputFormat::Csv { delimiter: b',' })
        .unwrap()
        .label(Label::Key)
        .unwrap();
    let (batch, rejected) = mini.into_batch(&preprocess);
    let batch = batch.unwrap();
    assert!(rejected.is_empty());
    assert_eq!(batch.len(), 3);
    let labels: Vec<f32> = batch.labels.unwrap().to_vec();
    let want: Vec<f32> = rows[..3].iter().map(|(l, _)| *l as f32).collect();
    assert_eq!(labels, want);
}

/// Must-show 5: `examples/seed.rs` against the test broker: predictions written in input order
/// with TensorFlow's classes, and its summary lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_example_writes_predictions_in_order() {
    let broker = Broker::start("dataset-seed");
    broker.create_topic("pixels", 2);
    broker.create_topic("predictions", 1);
    const N: usize = 100;
    let rows = &digits()[..N];
    let recs: Vec<Rec> = rows
        .iter()
        .enumerate()
        .map(|(i, (_, features))| Rec::kv(&format!("row-{i}"), features.as_str()))
        .collect();
    let produced = broker.produce("pixels", &recs);

    let mut out = Vec::new();
    let summary = seed::run(&broker.addr, "pixels", "predictions", MODEL, &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(summary.records, N as u64);
    assert_eq!(summary.acked, N as u64);
    assert!(
        text.contains(&format!("seed: read {N} records in 4 batches from pixels")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "seed: wrote {N} predictions to predictions, {N} acknowledged"
        )),
        "{text}"
    );

    let got = broker.consume("predictions", N, Duration::from_secs(20));
    assert_eq!(got.len(), N);
    let classes = tf_classes("digits_mlp");
    let mut last_offset: BTreeMap<i32, i64> = BTreeMap::new();
    for c in &got {
        let key = c.key_str().unwrap();
        let row: usize = key.strip_prefix("row-").unwrap().parse().unwrap();
        assert_eq!(
            c.value_str().unwrap(),
            seed::CLASS_NAMES[classes[row]],
            "prediction for {key}"
        );
        // The source coordinates travel in headers, and per input partition the outputs keep
        // the input order.
        let partition: i32 = c.header("source.partition").unwrap().parse().unwrap();
        let offset: i64 = c.header("source.offset").unwrap().parse().unwrap();
        assert_eq!((partition, offset), produced[row]);
        if let Some(prev) = last_offset.insert(partition, offset) {
            assert!(
                offset > prev,
                "outputs of partition {partition} out of order"
            );
        }
    }
}

/// `examples/evaluate.rs`, a program without async code (the blocking iterator), against the
/// test broker: the accuracy it prints is TensorFlow's on the same rows.
#[test]
fn evaluate_example_prints_accuracy() {
    let broker = Broker::start("dataset-evaluate");
    broker.create_topic("labelled", 3);
    const N: usize = 300;
    let rows = &digits()[..N];
    let mut recs: Vec<Rec> = rows
        .iter()
        .enumerate()
        .map(|(i, (label, features))| {
            Rec::unkeyed(format!("{label},{features}")).partition(i as i32 % 3)
        })
        .collect();
    recs.push(Rec::unkeyed("3,1,2"));
    broker.produce("labelled", &recs);
    let classes = tf_classes("digits_mlp");
    let right = rows
        .iter()
        .zip(&classes)
        .filter(|((label, _), class)| label == *class)
        .count() as u64;

    let mut out = Vec::new();
    let result = evaluate::run(&broker.addr, "labelled", MODEL, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        (result.records, result.correct, result.rejected),
        (N as u64, right, 1)
    );
    assert!(
        text.contains(&format!(
            "evaluate: accuracy {:.4} ({right} of {N} records right)",
            right as f64 / N as f64
        )),
        "{text}"
    );
    assert!(
        text.contains("evaluate: 1 records could not be decoded"),
        "{text}"
    );

    // The blocking iterator directly, and the same read through the stream agree.
    let blocking: Vec<SourceRecord> = KafkaDataset::builder(["labelled:1:0:4"])
        .servers(&broker.addr)
        .eof(true)
        .open_blocking()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        blocking.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
}

/// The blocking API refuses to run inside an async runtime instead of deadlocking it.
#[tokio::test]
async fn blocking_api_inside_async_is_an_error() {
    let e = KafkaDataset::builder(["t"])
        .servers("127.0.0.1:1")
        .open_blocking()
        .unwrap_err();
    assert!(matches!(e, DatasetError::BlockingInAsync), "{e}");
}
