//! Consumer-group scaling: records/s of 1, 2 and 3 `streamtract run --group --until-end`
//! processes sharing one 6-partition topic on a local tansu broker, in one invocation.
//!
//!     cargo bench --bench group                       # 60,000 records
//!     STREAMTRACT_BENCH_RECORDS=20000 cargo bench --bench group
//!
//! Each member count gets its own group id and output topic. Wall time runs from starting the
//! processes to the last one exiting, so it includes joining the group (tansu makes each
//! follower's first JoinGroup wait about 3 s) and the rebalances while members arrive.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use chrono::Utc;
use streamtract::kafka::{self, KafkaConfig, OutputRecord, Sink, SinkConfig};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct LocalBroker(PathBuf);

impl Drop for LocalBroker {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/broker.sh"))
            .args(["stop", self.0.to_str().unwrap_or("")])
            .status();
    }
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n: usize = match std::env::var("STREAMTRACT_BENCH_RECORDS") {
        Ok(v) => v
            .parse()
            .expect("STREAMTRACT_BENCH_RECORDS must be a number"),
        Err(_) if bench => 60_000,
        Err(_) => 3_000,
    };
    let dir = root().join("target/bench-group-broker");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(Command::new(root().join("scripts/broker.sh"))
        .args(["start", dir.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    let _broker = LocalBroker(dir.clone());
    let addr = std::fs::read_to_string(dir.join("broker.addr"))
        .unwrap()
        .trim()
        .to_string();
    let kafka = KafkaConfig::new([addr.clone()]);
    let client = kafka::connect(&kafka).await.expect("connect");
    let controller = client.controller_client().expect("controller");
    for topic in ["events", "out-1", "out-2", "out-3"] {
        controller
            .create_topic(topic, 6, 1, 10_000)
            .await
            .expect("create topic");
    }
    let pixels = std::fs::read_to_string(root().join("data/digits.csv")).unwrap();
    let value = pixels
        .lines()
        .next()
        .unwrap()
        .split_once(',')
        .unwrap()
        .1
        .to_string();
    let sink = Sink::start(client, &kafka, &SinkConfig::new("events"), None)
        .await
        .expect("sink");
    for i in 0..n {
        let key = format!("k{i}").into_bytes();
        let partition = sink.partition_for(Some(&key), 0);
        let record = OutputRecord {
            key: Some(key),
            value: value.clone().into_bytes(),
            headers: BTreeMap::new(),
            timestamp: Utc::now(),
            source: None,
        };
        sink.send(partition, record).await.expect("send");
    }
    sink.close().await.expect("close");
    println!("{n} records on a 6-partition topic");

    println!("\n{:>8} {:>10} {:>12}", "members", "seconds", "records/s");
    for members in 1..=3 {
        let started = Instant::now();
        let children: Vec<_> = (0..members)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_streamtract"))
                    .args([
                        "run",
                        "--brokers",
                        &addr,
                        "--input",
                        "events",
                        "--output",
                        &format!("out-{members}"),
                    ])
                    .args([
                        "--model",
                        "models/digits_mlp.onnx",
                        "--group",
                        &format!("bench-{members}"),
                        "--until-end",
                    ])
                    .args([
                        "--workers",
                        "1",
                        "--session-timeout-ms",
                        "6000",
                        "--heartbeat-interval-ms",
                        "500",
                    ])
                    .current_dir(root())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn streamtract")
            })
            .collect();
        for mut c in children {
            assert!(c.wait().expect("wait").success(), "a member failed");
        }
        let secs = started.elapsed().as_secs_f64();
        println!("{members:>8} {secs:>10.2} {:>12.0}", n as f64 / secs);
    }
}
