//! The edge uplink: inputs from one broker (the edge), outputs to another (the central
//! cluster), and a disk spool for the outputs while the central broker is down. Two tansu
//! instances; records produced and read back with confluent-kafka; streamtract's own figures
//! read from its `/metrics` and `/healthz` with Python's urllib.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http_get, total, wait_for, Broker, Consumed, Rec};

const KEYS: usize = 200;
const GROUP: &str = "uplink";

/// One row of data/digits.csv without its label: every input is this row, so each output is
/// told apart by its `streamtract.source` header (input partition and offset).
fn pixels() -> String {
    let text = fs::read_to_string(common::repo_root().join("data/digits.csv")).unwrap();
    text.lines()
        .next()
        .unwrap()
        .split_once(',')
        .unwrap()
        .1
        .to_string()
}

fn records(range: std::ops::Range<usize>) -> Vec<Rec> {
    let value = pixels();
    range
        .map(|i| Rec::kv(&format!("dev{}", i % KEYS), value.clone()))
        .collect()
}

/// Produces `recs` to the edge broker in chunks; returns each record's (partition, offset).
fn produce(edge: &Broker, recs: &[Rec]) -> Vec<(i32, i64)> {
    recs.chunks(5_000)
        .flat_map(|c| edge.produce("events", c))
        .collect()
}

struct Run {
    child: Option<Child>,
    log: PathBuf,
    metrics: String,
}

impl Run {
    /// Starts `streamtract run` reading `events` on `edge` in group `uplink`, writing
    /// `predictions` on `central`, spooling to `spool` (bounded by `max_bytes`).
    fn start(edge: &Broker, central: &Broker, spool: &Path, max_bytes: u64, name: &str) -> Run {
        let port = free_port();
        let log = spool.with_extension(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_streamtract"))
            .args([
                "run",
                "--brokers",
                &edge.addr,
                "--output-brokers",
                &central.addr,
            ])
            .args(["--input", "events", "--output", "predictions"])
            .args(["--model", "models/digits_mlp.onnx", "--group", GROUP])
            .args(["--commit-interval-ms", "300", "--workers", "1"])
            .arg("--spool-dir")
            .arg(spool)
            .args(["--spool-max-bytes", &max_bytes.to_string()])
            .args(["--uplink-timeout-ms", "2000", "--request-timeout", "600"])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .current_dir(common::repo_root())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut run = Run {
            child: Some(child),
            log,
            metrics: format!("http://127.0.0.1:{port}"),
        };
        wait_for("the pipeline to be ready", Duration::from_secs(60), || {
            run.assert_running();
            http_get(&format!("{}/readyz", run.metrics)).0 == 200
        });
        run
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        let exited = match self.child.as_mut() {
            Some(child) => child.try_wait().unwrap(),
            None => None,
        };
        if let Some(status) = exited {
            panic!("streamtract exited ({status}):\n{}", self.log());
        }
    }

    /// `/healthz`'s text.
    fn health(&self) -> String {
        let (status, body) = http_get(&format!("{}/healthz", self.metrics));
        assert_eq!(status, 200, "{body}\n{}", self.log());
        body.trim().to_string()
    }

    /// The value of metric `name` (summed over labels).
    fn metric(&self, name: &str) -> f64 {
        let (status, body) = http_get(&format!("{}/metrics", self.metrics));
        assert_eq!(status, 200, "{body}");
        total(&body, name)
    }

    /// SIGTERM; the run must exit 0 within a minute. Returns its log.
    fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("no exit within 60 s of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let log = self.log();
        assert!(status.success(), "exit {status} after SIGTERM:\n{log}");
        log
    }

    /// SIGKILL, as a power cut would.
    fn kill(mut self) -> String {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        self.log()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn setup(name: &str) -> (Broker, Broker, PathBuf) {
    let edge = Broker::start(&format!("{name}-edge"));
    let central = Broker::start(&format!("{name}-central"));
    edge.create_topic("events", 3);
    central.create_topic("predictions", 3);
    let spool = edge.dir.join("spool");
    (edge, central, spool)
}

/// Input records not yet committed by the group on the edge broker.
fn input_lag(edge: &Broker) -> i64 {
    let committed = edge.committed(GROUP, "events", 3);
    let ends = edge.topic_info("events").unwrap().high_watermarks;
    (0..3)
        .map(|p| ends[p as usize] - committed[&p].unwrap_or(0))
        .sum()
}

fn outputs_on(central: &Broker) -> i64 {
    central
        .topic_info("predictions")
        .map(|t| t.high_watermarks.iter().sum())
        .unwrap_or(0)
}

/// Spool segment files left on disk.
fn segments(spool: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![spool.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "seg") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Checks that every input (partition, offset) has an output, that outputs of each key come
/// in input order (first deliveries; a redelivery may repeat earlier ones), and returns how
/// many outputs were duplicates.
fn check_outputs(outputs: &[Consumed], inputs: &[(i32, i64)]) -> usize {
    let mut seen: HashMap<(i32, i64), usize> = HashMap::new();
    // Per output partition in offset order (consume sorts by partition, offset).
    let mut last_first_delivery: BTreeMap<String, (i32, i64)> = BTreeMap::new();
    for o in outputs {
        let s = o.source();
        assert_eq!(s.topic, "events");
        let count = seen.entry((s.partition, s.offset)).or_default();
        *count += 1;
        if *count > 1 {
            continue;
        }
        let key = o.key_str().unwrap();
        if let Some(&(p, off)) = last_first_delivery.get(&key) {
            assert_eq!(p, s.partition, "key {key} came from two input partitions");
            assert!(
                off < s.offset,
                "key {key}: input offset {} delivered after {off} (output {}/{})",
                s.offset,
                o.partition,
                o.offset
            );
        }
        last_first_delivery.insert(key, (s.partition, s.offset));
    }
    let wanted: HashSet<(i32, i64)> = inputs.iter().copied().collect();
    let missing: Vec<_> = wanted.iter().filter(|k| !seen.contains_key(k)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} inputs have no output, e.g. {:?}",
        missing.len(),
        wanted.len(),
        &missing[..missing.len().min(5)]
    );
    seen.values().map(|n| n - 1).sum()
}

#[test]
fn outputs_wait_in_the_spool_through_a_60_s_uplink_outage_and_all_arrive_in_order() {
    let (edge, mut central, spool) = setup("uplink-outage");
    let run = Run::start(&edge, &central, &spool, 256 << 20, "outage");
    let mut inputs = produce(&edge, &records(0..10_000));
    wait_for("the first 10,000 outputs", Duration::from_secs(120), || {
        outputs_on(&central) >= 10_000
    });
    assert_eq!(run.health(), "ok");
    assert_eq!(run.metric("streamtract_uplink_up"), 1.0);

    central.stop();
    let down_at = Instant::now();
    inputs.extend(produce(&edge, &records(10_000..20_000)));
    // The work goes on: every input is processed and committed while the uplink is down.
    let mut lags = Vec::new();
    wait_for(
        "the input lag to reach 0 during the outage",
        Duration::from_secs(55),
        || {
            let lag = input_lag(&edge);
            lags.push(lag);
            lag == 0
        },
    );
    let health = run.health();
    assert!(
        health.starts_with("degraded: uplink down since "),
        "{health}"
    );
    let spooled = run.metric("streamtract_spool_records");
    assert!(
        spooled >= 9_000.0,
        "only {spooled} records spooled:\n{}",
        run.log()
    );
    assert!(run.metric("streamtract_spool_bytes") > 0.0);
    assert_eq!(run.metric("streamtract_uplink_up"), 0.0);
    // The lag stayed flat: sampled until the end of the 60 s outage, it is 0 every time.
    while down_at.elapsed() < Duration::from_secs(60) {
        let lag = input_lag(&edge);
        assert_eq!(lag, 0, "input lag grew during the outage");
        std::thread::sleep(Duration::from_secs(2));
    }
    let oldest = run.metric("streamtract_spool_oldest_age_seconds");
    assert!(oldest >= 30.0, "oldest spooled record age {oldest} s");
    println!("lag samples while catching up during the outage: {lags:?}");

    central.start_again();
    // Newer records go behind the spooled ones.
    inputs.extend(produce(&edge, &records(20_000..30_000)));
    wait_for(
        "every output after the outage",
        Duration::from_secs(240),
        || outputs_on(&central) >= 30_000 && run.metric("streamtract_spool_records") == 0.0,
    );
    wait_for("health back to ok", Duration::from_secs(30), || {
        run.health() == "ok"
    });
    let log = run.stop();
    assert!(
        log.contains("the output cluster takes records again"),
        "{log}"
    );
    assert!(
        segments(&spool).is_empty(),
        "drained segments left: {:?}",
        segments(&spool)
    );

    let total = outputs_on(&central) as usize;
    let outputs = central.consume("predictions", total, Duration::from_secs(120));
    assert_eq!(outputs.len(), total);
    let duplicates = check_outputs(&outputs, &inputs);
    println!(
        "60 s uplink outage: {} inputs, {} outputs, {duplicates} duplicates",
        inputs.len(),
        outputs.len()
    );
    edge.assert_committed_to_end(GROUP, "events", 3);
}

#[test]
fn a_killed_run_restarts_during_the_outage_cuts_a_torn_tail_and_sends_its_spool() {
    let (edge, mut central, spool) = setup("uplink-kill");
    let run = Run::start(&edge, &central, &spool, 64 << 20, "first");
    central.stop();
    let mut inputs = produce(&edge, &records(0..5_000));
    wait_for(
        "every input spooled and committed",
        Duration::from_secs(60),
        || input_lag(&edge) == 0,
    );
    assert_eq!(run.metric("streamtract_spool_records"), 5_000.0);
    let first_log = run.kill();

    // A crash in the middle of an append: half of a record at the end of the last segment.
    let segs = segments(&spool);
    assert!(!segs.is_empty(), "nothing in the spool:\n{first_log}");
    let last = segs.last().unwrap();
    let bytes = fs::read(last).unwrap();
    let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    let mut torn = bytes.clone();
    torn.extend_from_slice(&bytes[..8 + len / 2]);
    fs::write(last, &torn).unwrap();

    // Restarted while the uplink is still down (an edge box rebooting during an outage): it
    // starts from the spool's record of the topic, keeps spooling and keeps reading.
    let run = Run::start(&edge, &central, &spool, 64 << 20, "second");
    assert!(run.health().starts_with("degraded"), "{}", run.health());
    assert!(
        fs::read(last).unwrap().len() < torn.len(),
        "torn tail not cut"
    );
    inputs.extend(produce(&edge, &records(5_000..6_000)));
    wait_for("the new inputs spooled", Duration::from_secs(60), || {
        input_lag(&edge) == 0 && run.metric("streamtract_spool_records") == 6_000.0
    });

    central.start_again();
    wait_for(
        "the spool sent once the uplink is back",
        Duration::from_secs(120),
        || outputs_on(&central) >= 6_000 && run.metric("streamtract_spool_records") == 0.0,
    );
    assert_eq!(run.health(), "ok");
    let log = run.stop();
    assert!(log.contains("cut a torn last record"), "{log}");
    assert!(
        log.contains("output cluster unreachable at start-up"),
        "{log}"
    );

    let total = outputs_on(&central) as usize;
    let outputs = central.consume("predictions", total, Duration::from_secs(60));
    let duplicates = check_outputs(&outputs, &inputs);
    println!(
        "kill -9 with 5,000 records spooled, restart during the outage, 1,000 more: {} outputs, {duplicates} duplicates",
        outputs.len()
    );
    edge.assert_committed_to_end(GROUP, "events", 3);
}

#[test]
fn a_full_spool_slows_the_input_and_never_exceeds_its_bound() {
    const MAX: u64 = 1_100_000;
    let (edge, mut central, spool) = setup("uplink-full");
    let run = Run::start(&edge, &central, &spool, MAX, "full");
    central.stop();
    let inputs = produce(&edge, &records(0..20_000));
    // Sample for 20 s: the bound holds on disk and in the metric, and reading stalls.
    let until = Instant::now() + Duration::from_secs(20);
    let mut most = 0;
    while Instant::now() < until {
        let on_disk: u64 = segments(&spool)
            .iter()
            .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        assert!(
            on_disk <= MAX,
            "spool files hold {on_disk} bytes, bound {MAX}"
        );
        let reported = run.metric("streamtract_spool_bytes") as u64;
        assert!(reported <= MAX, "spool_bytes {reported}");
        most = most.max(on_disk);
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(most > MAX / 2, "the spool never filled: {most} bytes");
    let lag = input_lag(&edge);
    assert!(lag > 5_000, "input not slowed: lag {lag}");
    assert!(run.health().starts_with("degraded"));

    central.start_again();
    wait_for(
        "every output once the uplink is back",
        Duration::from_secs(240),
        || outputs_on(&central) >= 20_000 && input_lag(&edge) == 0,
    );
    let log = run.stop();
    let total = outputs_on(&central) as usize;
    let outputs = central.consume("predictions", total, Duration::from_secs(120));
    let duplicates = check_outputs(&outputs, &inputs);
    println!(
        "spool full at {most} of {MAX} bytes; input lag {lag} while full; {duplicates} duplicates"
    );
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn bad_spool_and_output_settings_fail_at_start_up_with_what_to_do() {
    let file = std::env::temp_dir().join(format!("streamtract-uplink-{}", std::process::id()));
    fs::write(&file, b"a file, not a directory").unwrap();
    let base = [
        "run",
        "--brokers",
        "127.0.0.1:9",
        "--input",
        "events",
        "--output",
        "predictions",
        "--model",
        "models/digits_mlp.onnx",
    ];
    let cases: [(Vec<String>, &[&str]); 4] = [
        (
            vec![
                "--spool-dir".into(),
                file.join("spool").display().to_string(),
            ],
            &["spool directory", "not usable", "may write there"],
        ),
        (
            vec![
                "--spool-dir".into(),
                "/tmp/s".into(),
                "--spool-max-bytes".into(),
                "1000".into(),
            ],
            &["spool_max_bytes", "at least 1052672"],
        ),
        (
            vec!["--uplink-timeout-ms".into(), "500".into()],
            &["spool_dir", "--spool-dir"],
        ),
        (
            vec!["--output-sasl-username".into(), "edge".into()],
            &["output_brokers", "--output-brokers"],
        ),
    ];
    for (extra, wanted) in cases {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra.iter().map(String::as_str));
        let out = common::streamtract_within(&args, Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        for w in wanted {
            assert!(stderr.contains(w), "{extra:?}: no {w:?} in: {stderr}");
        }
    }
    let _ = fs::remove_file(&file);
}

/// The library's writer (tensorflow-io's `KafkaOutputSequence` side) with a spool: writes and
/// `flush` go on while its cluster is down, and the spooled records arrive, in order per
/// partition, when it is back.
#[test]
fn the_library_writer_spools_through_an_outage() {
    use streamtract::dataset::{KafkaWriter, OutputConfig, OutputItem};
    use streamtract::kafka::{Spool, SpoolConfig};

    let mut central = Broker::start("uplink-writer");
    central.create_topic("predictions", 2);
    let mut options = SpoolConfig::new(central.dir.join("writer-spool"), 16 << 20);
    options.uplink_timeout = Duration::from_secs(1);
    let spool = Spool::open(options).unwrap();
    let item = |i: usize| OutputItem::new(format!("v{i}")).key(format!("k{}", i % 20));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let config = OutputConfig::new("predictions")
            .unwrap()
            .servers(&central.addr)
            .spool(spool.clone());
        let mut writer = KafkaWriter::open(&config).await.unwrap();
        for i in 0..200 {
            writer.write(item(i)).await.unwrap();
        }
        writer.flush().await.unwrap();
        central.stop();
        for i in 200..700 {
            writer.write(item(i)).await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(60), writer.flush())
            .await
            .expect("flush returns once the records are in the spool")
            .unwrap();
        let reading = spool.status().read();
        assert_eq!(reading.records, 500, "{reading:?}");
        assert!(reading.uplink_down_since.is_some());

        central.start_again();
        let deadline = Instant::now() + Duration::from_secs(120);
        while spool.status().read().records > 0 {
            assert!(
                Instant::now() < deadline,
                "spool not drained: {:?}",
                spool.status().read()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(writer.close().await.unwrap(), 700);
    });
    let outputs = central.consume("predictions", 700, Duration::from_secs(60));
    let mut last: HashMap<String, usize> = HashMap::new();
    let mut seen = HashSet::new();
    for o in &outputs {
        let i: usize = o.value_str().unwrap()[1..].parse().unwrap();
        if !seen.insert(i) {
            continue;
        }
        let key = o.key_str().unwrap();
        if let Some(&before) = last.get(&key) {
            assert!(before < i, "key {key}: v{i} after v{before}");
        }
        last.insert(key, i);
    }
    assert_eq!(seen.len(), 700, "{} of 700 items arrived", seen.len());
}
