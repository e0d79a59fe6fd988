//! What an operator sees: the metrics endpoint scraped with an independent HTTP client
//! (Python's urllib) while a pipeline runs, `/healthz` and `/readyz` as the pipeline goes from
//! starting (broker down) to ready (connected, assigned, model loaded) to stopped.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Broker, Rec};

/// GET `url` with Python's urllib: (status, body). Status 0 when nothing answers.
fn http_get(url: &str) -> (u16, String) {
    let script = r#"
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=5)
    print(r.status); sys.stdout.write(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); sys.stdout.write(e.read().decode())
except OSError:
    print(0)
"#;
    let out = Command::new(common::python())
        .args(["-c", script, url])
        .output()
        .expect("run python");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n').unwrap_or((text.trim(), ""));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Metric samples `name{labels} value` → value, for the lines starting with `name`.
fn samples(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn total(text: &str, name: &str) -> f64 {
    samples(text, name).values().sum()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn metrics_count_what_the_pipeline_did_and_readyz_follows_its_state() {
    let mut broker = Broker::start("metrics");
    broker.create_topic("pixels", 2);
    broker.create_topic("predictions", 2);
    broker.create_topic("pixels-dlq", 1);
    let pixels =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits.csv")).unwrap();
    let rows: Vec<&str> = pixels
        .lines()
        .map(|l| l.split_once(',').unwrap().1)
        .collect();
    let recs: Vec<Rec> = (0..600)
        .map(|i| {
            if i % 100 == 7 {
                Rec::kv(&format!("k{i}"), "not,a,digit")
            } else {
                Rec::kv(&format!("k{i}"), rows[i % rows.len()])
            }
        })
        .collect();
    let coords = broker.produce("pixels", &recs);
    let mut per_partition = BTreeMap::new();
    for (p, _) in &coords {
        *per_partition.entry(*p).or_insert(0u64) += 1;
    }
    // Down while the pipeline starts: it keeps trying to connect and is not ready.
    broker.stop();

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_streamtract"))
        .args(["run", "--brokers", &broker.addr, "--input", "pixels"])
        .args([
            "--output",
            "predictions",
            "--model",
            "models/digits_mlp.onnx",
        ])
        .args(["--dlq", "pixels-dlq", "--group", "metrics-test"])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(["--connect-timeout", "120"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Killed(child);

    wait_for("the metrics listener", Duration::from_secs(30), || {
        http_get(&format!("{base}/healthz")).0 == 200
    });
    let (status, body) = http_get(&format!("{base}/readyz"));
    assert_eq!(
        (status, body.trim()),
        (503, "not ready: starting"),
        "broker down"
    );
    let (status, body) = http_get(&format!("{base}/nope"));
    assert_eq!(status, 404, "{body}");

    broker.start_again();
    wait_for("/readyz to say ready", Duration::from_secs(60), || {
        http_get(&format!("{base}/readyz")) == (200, "ready\n".to_string())
    });
    // Bad records are 1 in 100: 594 outputs and 6 dead letters once everything is through.
    let mut text = String::new();
    wait_for(
        "every record to be counted",
        Duration::from_secs(60),
        || {
            text = http_get(&format!("{base}/metrics")).1;
            total(&text, "streamtract_records_out_total") >= 594.0
                && total(&text, "streamtract_commits_total") >= 1.0
        },
    );
    let records_in = samples(&text, "streamtract_records_in_total");
    for (p, n) in &per_partition {
        let key = format!("streamtract_records_in_total{{topic=\"pixels\",partition=\"{p}\"}}");
        assert_eq!(records_in.get(&key), Some(&(*n as f64)), "{text}");
    }
    assert_eq!(
        total(&text, "streamtract_records_out_total"),
        594.0,
        "{text}"
    );
    assert_eq!(
        samples(&text, "streamtract_dead_letters_total")
            .get("streamtract_dead_letters_total{stage=\"decode\"}"),
        Some(&6.0),
        "{text}"
    );
    assert_eq!(total(&text, "streamtract_rejected_total"), 6.0, "{text}");
    let sha = streamtract::model::Model::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/digits_mlp.onnx"
    ))
    .unwrap()
    .sha256()
    .to_string();
    assert!(
        text.contains(&format!("streamtract_model_info{{sha256=\"{sha}\"")),
        "{text}"
    );
    let batches = total(&text, "streamtract_batch_rows_count");
    assert!(batches >= 1.0, "{text}");
    assert_eq!(total(&text, "streamtract_batch_rows_sum"), 594.0, "{text}");
    assert_eq!(
        total(&text, "streamtract_inference_seconds_count"),
        batches,
        "{text}"
    );
    assert_eq!(
        total(&text, "streamtract_end_to_end_seconds_count"),
        594.0,
        "{text}"
    );
    assert!(text.contains("streamtract_consumer_lag"), "{text}");
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );

    // SIGTERM: drains, commits, exits 0; the listener goes away with the process.
    let pid = child.0.id();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert_eq!(http_get(&format!("{base}/healthz")).0, 0);
}
