//! What the end-to-end benches share: a local tansu broker (scripts/broker.sh) stopped on drop,
//! topic creation, and the digits records they feed.

#![allow(dead_code)] // each bench uses its own subset

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use chrono::Utc;
use streamtract::kafka::{self, KafkaConfig, OutputRecord, Sink, SinkConfig};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Records to use: `STREAMTRACT_BENCH_RECORDS`, else `bench` under `cargo bench`, else `smoke`
/// (under `cargo test --all-targets` each bench runs a small version that checks its counts).
pub fn records(bench: usize, smoke: usize) -> usize {
    count_from_env("STREAMTRACT_BENCH_RECORDS", bench, smoke)
}

/// Records for a run at a steady rate: `STREAMTRACT_BENCH_PACED_RECORDS`, else as [`records`].
pub fn paced_records(bench: usize, smoke: usize) -> usize {
    count_from_env("STREAMTRACT_BENCH_PACED_RECORDS", bench, smoke)
}

fn count_from_env(var: &str, bench: usize, smoke: usize) -> usize {
    match std::env::var(var) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{var} must be a number")),
        Err(_) if std::env::args().any(|a| a == "--bench") => bench,
        Err(_) => smoke,
    }
}

/// A tansu broker started by scripts/broker.sh in `target/NAME`, stopped on drop.
pub struct LocalBroker {
    dir: PathBuf,
    pub addr: String,
}

impl LocalBroker {
    pub fn start(name: &str) -> LocalBroker {
        let dir = root().join("target").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let status = Command::new(root().join("scripts/broker.sh"))
            .args(["start", dir.to_str().expect("utf-8 path")])
            .status()
            .expect("run scripts/broker.sh (install tansu with scripts/setup-test-env.sh)");
        assert!(
            status.success(),
            "scripts/broker.sh start failed; see {}/broker.log",
            dir.display()
        );
        let addr = std::fs::read_to_string(dir.join("broker.addr"))
            .expect("broker.addr")
            .trim()
            .to_string();
        LocalBroker { dir, addr }
    }

    pub fn kafka(&self) -> KafkaConfig {
        KafkaConfig::new([self.addr.clone()])
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/broker.sh"))
            .args(["stop", self.dir.to_str().unwrap_or("")])
            .status();
    }
}

pub async fn create_topic(kafka: &KafkaConfig, name: &str, partitions: i32) {
    let client = kafka::connect(kafka).await.expect("connect");
    client
        .controller_client()
        .expect("controller")
        .create_topic(name, partitions, 1, 10_000)
        .await
        .expect("create topic");
}

/// Produces `n` records keyed `k0..`, valued with the digits dataset's pixel rows as CSV in
/// turn, partitioned by key like the Java client.
/// The 1,797 digits as CSV rows of 64 pixel intensities (the label column dropped).
pub fn digit_rows() -> Vec<String> {
    std::fs::read_to_string(root().join("data/digits.csv"))
        .expect("digits.csv")
        .lines()
        .map(|l| l.split_once(',').expect("label,pixels").1.to_string())
        .collect()
}

/// Produces `n` digit records (keys `k0`, `k1`, …) as fast as the broker takes them.
pub async fn produce_digits(kafka: &KafkaConfig, topic: &str, n: usize) {
    produce_digits_at(kafka, topic, n, None, 0).await
}

/// Produces `n` digit records, at `rate` per second if given; each is stamped when it is sent,
/// except the first `warm_up`, which are stamped a day ahead: the pipeline's latency recorder
/// ignores records from the future (clock skew), so they warm the run up without being measured.
pub async fn produce_digits_at(
    kafka: &KafkaConfig,
    topic: &str,
    n: usize,
    rate: Option<f64>,
    warm_up: usize,
) {
    produce_rows_at(kafka, topic, &digit_rows(), n, rate, warm_up).await
}

/// [`produce_digits_at`] with record values of the caller's choosing, used in turn.
pub async fn produce_rows_at(
    kafka: &KafkaConfig,
    topic: &str,
    rows: &[String],
    n: usize,
    rate: Option<f64>,
    warm_up: usize,
) {
    let client = kafka::connect(kafka).await.expect("connect");
    let sink = Sink::start(client, kafka, &SinkConfig::new(topic), None)
        .await
        .expect("sink");
    let mut tick = rate.map(|r| {
        let mut t = tokio::time::interval(std::time::Duration::from_secs_f64(1.0 / r));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    for i in 0..n {
        if let Some(t) = &mut tick {
            t.tick().await;
        }
        let key = format!("k{i}").into_bytes();
        let partition = sink.partition_for(Some(&key), 0);
        let record = OutputRecord {
            key: Some(key),
            value: rows[i % rows.len()].clone().into_bytes(),
            headers: BTreeMap::new(),
            timestamp: if i < warm_up {
                Utc::now() + chrono::TimeDelta::days(1)
            } else {
                Utc::now()
            },
            source: None,
        };
        sink.send(partition, record).await.expect("send");
    }
    assert_eq!(sink.close().await.expect("close") as usize, n);
}
