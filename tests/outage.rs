//! Broker outages: the broker is killed in the middle of a bounded run and started again;
//! the run retries with backoff, resumes, exits 0, and every input key has an output.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Broker, Rec};

const RECORDS: usize = 20_000;
const OUTAGE: Duration = Duration::from_secs(15);

#[test]
fn a_broker_outage_mid_run_loses_nothing() {
    let mut broker = Broker::start("outage");
    broker.create_topic("events", 3);
    broker.create_topic("predictions", 3);
    let pixels =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits.csv")).unwrap();
    let value = pixels
        .lines()
        .next()
        .unwrap()
        .split_once(',')
        .unwrap()
        .1
        .to_string();
    let recs: Vec<Rec> = (0..RECORDS)
        .map(|i| Rec::kv(&format!("k{i}"), value.clone()))
        .collect();
    for chunk in recs.chunks(10_000) {
        broker.produce("events", chunk);
    }

    let mut child = Command::new(env!("CARGO_BIN_EXE_streamtract"))
        .args([
            "run",
            "--brokers",
            &broker.addr,
            "--input",
            "events",
            "--output",
            "predictions",
            "--model",
            "models/digits_mlp.onnx",
            "--until-end",
            "--batch-size",
            "32",
            "--workers",
            "1",
            "--request-timeout",
            "120",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&log);
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });

    // Kill the broker once the run is well under way, keep it down, start it again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let written: i64 = broker
            .topic_info("predictions")
            .map(|t| t.high_watermarks.iter().sum())
            .unwrap_or(0);
        if written >= 2_000 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress before the outage");
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.stop();
    std::thread::sleep(OUTAGE);
    assert!(
        child.try_wait().unwrap().is_none(),
        "streamtract gave up during a {OUTAGE:?} outage:\n{}",
        log.lock().unwrap()
    );
    broker.start_again();

    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "run did not finish after the broker came back:\n{}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(status.success(), "exit {status}:\n{log}");

    let total: i64 = broker
        .topic_info("predictions")
        .unwrap()
        .high_watermarks
        .iter()
        .sum();
    assert!(total as usize >= RECORDS, "only {total} outputs:\n{log}");
    let outs = broker.consume("predictions", total as usize, Duration::from_secs(120));
    let keys: HashSet<String> = outs.iter().map(|o| o.key_str().unwrap()).collect();
    let missing: Vec<usize> = (0..RECORDS)
        .filter(|i| !keys.contains(&format!("k{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} keys without output after the outage, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    println!(
        "{total} outputs for {RECORDS} inputs ({} duplicates from retried requests)",
        total as usize - RECORDS
    );
}
