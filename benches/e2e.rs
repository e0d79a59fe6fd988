//! End to end against a local tansu broker, in one invocation on one broker so that the ratios
//! are stable on a noisy machine. Two tables:
//!
//! * **Throughput**: a topic filled beforehand is read to its end (bounded mode) by the
//!   pipeline with the digits MLP and CNN, next to a pass-through run (the same records
//!   consumed and produced, no model) before and after them. Records/s and peak RSS.
//! * **Latency**: records produced at a steady rate (100/s by default) while the pipeline
//!   follows the topic; latency is from each record's timestamp (set by the producer when it
//!   sends it) to the broker's acknowledgement of its output. p50/p99/max and peak RSS, for
//!   the pass-through and for the MLP and CNN at several `linger` settings.
//!
//! Every run is a child process (this bench binary started again with
//! `STREAMTRACT_E2E_CHILD`), so that its peak RSS (VmHWM) is its own.
//!
//! tansu stores every record header as a database row, so the five headers the pipeline puts
//! on each output cost the broker more than everything else together; the throughput table
//! therefore also shows a pass-through that writes the same five headers, and model runs
//! without them (`output_headers = false`), so each model run has a like-for-like reference.
//!
//!     cargo bench --bench e2e                       # 100,000 records; 1,000 at 100/s
//!     STREAMTRACT_BENCH_RECORDS=20000 STREAMTRACT_BENCH_RATE=1000 cargo bench --bench e2e
//!
//! Needs tansu (scripts/setup-test-env.sh). Under `cargo test --all-targets` it runs a small
//! smoke version and checks the counts.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use streamtract::kafka::{
    self, KafkaConfig, OutputRecord, Sink, SinkConfig, Source, SourceConfig, SourceRecord,
    TopicSelection,
};
use streamtract::pipeline::{
    headers, Latency, LatencyRecorder, OutputHeaders, Pipeline, PipelineConfig,
};
use support::{create_topic, produce_digits, produce_digits_at, root, LocalBroker};
use tokio::sync::mpsc;

const PARTITIONS: i32 = 3;

/// One run, as named on the command line of a child and in the tables:
/// `pass-through[+headers][/fetch=MS][/warm]` or
/// `MODEL/BATCH[/linger=MS][/fetch=MS][/no-headers][/wait][/warm]`.
#[derive(Debug, Clone)]
struct RunSpec {
    /// None for the pass-through.
    model: Option<String>,
    batch: usize,
    linger_ms: u64,
    /// The source's `fetch_max_wait`.
    fetch_wait_ms: u64,
    headers: bool,
    /// `/wait`: a partial batch always waits out the linger, even when the input is caught up
    /// (`flush_when_caught_up = false`).
    wait: bool,
    /// In a latency run: one second of records first, not measured (`/warm`), so that the
    /// figures are the steady state, after the source settled on how to fetch.
    warm: bool,
}

impl RunSpec {
    fn parse(name: &str) -> RunSpec {
        let mut spec = RunSpec {
            model: None,
            batch: 256,
            linger_ms: 5,
            fetch_wait_ms: 100,
            headers: true,
            wait: false,
            warm: false,
        };
        let mut parts = name.split('/');
        match parts.next() {
            Some("pass-through") => spec.headers = false,
            Some("pass-through+headers") => {}
            model => {
                spec.model = model.map(str::to_string);
                spec.batch = parts
                    .next()
                    .and_then(|b| b.parse().ok())
                    .expect("MODEL/BATCH");
            }
        }
        for part in parts {
            match part.split_once('=') {
                Some(("linger", ms)) => spec.linger_ms = ms.parse().expect("linger=MS"),
                Some(("fetch", ms)) => spec.fetch_wait_ms = ms.parse().expect("fetch=MS"),
                None if part == "no-headers" => spec.headers = false,
                None if part == "warm" => spec.warm = true,
                None if part == "wait" => spec.wait = true,
                _ => panic!("unknown run option {part}"),
            }
        }
        spec
    }
}

/// What a child reports.
#[derive(Debug, Clone, Copy)]
struct RunResult {
    records: u64,
    elapsed: Duration,
    latency: Latency,
    peak_rss_kib: u64,
}

impl RunResult {
    fn to_line(self) -> String {
        format!(
            "RESULT {} {} {} {} {} {} {}",
            self.records,
            self.elapsed.as_micros(),
            self.latency.count,
            self.latency.p50.as_micros(),
            self.latency.p99.as_micros(),
            self.latency.max.as_micros(),
            self.peak_rss_kib
        )
    }

    fn from_line(line: &str) -> Option<RunResult> {
        let f: Vec<u64> = line
            .strip_prefix("RESULT ")?
            .split(' ')
            .map(|v| v.parse().ok())
            .collect::<Option<_>>()?;
        if f.len() != 7 {
            return None;
        }
        let us = Duration::from_micros;
        Some(RunResult {
            records: f[0],
            elapsed: us(f[1]),
            latency: Latency {
                count: f[2],
                p50: us(f[3]),
                p99: us(f[4]),
                max: us(f[5]),
            },
            peak_rss_kib: f[6],
        })
    }
}

/// Peak resident set of this process so far (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Consume and produce the same records with no model: the ceiling for the pipeline. With
/// `headers`, each output also carries the five headers the pipeline writes, which shows what
/// those cost at the broker. Stops at the end of the topic (`follow` false) or after `stop_after`
/// acknowledged outputs.
async fn pass_through(
    kafka: &KafkaConfig,
    input: &str,
    output: &str,
    spec: &RunSpec,
    follow: bool,
    stop_after: u64,
) -> RunResult {
    let client = kafka::connect(kafka).await.expect("connect");
    let (ack_tx, mut acks) = mpsc::unbounded_channel();
    let sink = Sink::start(
        Arc::clone(&client),
        kafka,
        &SinkConfig::new(output),
        Some(ack_tx),
    )
    .await
    .expect("sink");
    let mut config = SourceConfig::new(vec![TopicSelection {
        topic: input.into(),
        partitions: None,
    }]);
    config.until_end = !follow;
    config.fetch_max_wait = Duration::from_millis(spec.fetch_wait_ms);
    let started = Instant::now();
    let mut source = Source::start(client, kafka, &config).await.expect("source");
    println!("READY");
    let mut latency = LatencyRecorder::new();
    let mut on_acks = |acked: Vec<kafka::SourceCoordinates>| {
        let now = Utc::now();
        for c in acked {
            latency.record(c.timestamp, now);
        }
    };
    let mut acked = 0;
    while !(follow && acked >= stop_after) {
        tokio::select! {
            chunk = source.next_chunk() => match chunk {
                Some(chunk) => {
                    for r in chunk.expect("fetch") {
                        let partition = sink.partition_for(r.key.as_deref(), r.partition);
                        sink.send(partition, pass_through_output(r, spec.headers)).await.expect("send");
                    }
                }
                None => break,
            },
            Some(batch) = acks.recv() => {
                acked += batch.len() as u64;
                on_acks(batch);
            }
        }
    }
    drop(source);
    let records = sink.close().await.expect("close");
    while let Ok(batch) = acks.try_recv() {
        on_acks(batch);
    }
    RunResult {
        records,
        elapsed: started.elapsed(),
        latency: latency.summary(),
        peak_rss_kib: peak_rss_kib(),
    }
}

fn pass_through_output(r: SourceRecord, with_headers: bool) -> OutputRecord {
    let mut h = r.headers;
    if with_headers {
        h.insert(headers::SOURCE_TOPIC.into(), r.topic.as_bytes().to_vec());
        h.insert(
            headers::SOURCE_PARTITION.into(),
            r.partition.to_string().into_bytes(),
        );
        h.insert(
            headers::SOURCE_OFFSET.into(),
            r.offset.to_string().into_bytes(),
        );
        h.insert(
            headers::SOURCE_TIMESTAMP.into(),
            r.timestamp.timestamp_millis().to_string().into_bytes(),
        );
        h.insert(headers::MODEL_SHA256.into(), [b'0'; 64].to_vec());
    }
    OutputRecord {
        key: r.key,
        value: r.value.unwrap_or_default(),
        headers: h,
        timestamp: Utc::now(),
        source: Some(kafka::SourceCoordinates {
            topic: r.topic,
            partition: r.partition,
            offset: r.offset,
            timestamp: r.timestamp,
        }),
    }
}

/// The pipeline with a model: to the end of the topic, or (`follow`) until `stop_after`
/// records are done.
async fn with_model(
    kafka: &KafkaConfig,
    input: &str,
    output: &str,
    spec: &RunSpec,
    follow: bool,
    stop_after: u64,
) -> RunResult {
    let model = spec.model.as_deref().expect("a model run");
    let mut config = PipelineConfig::new(
        kafka.brokers.clone(),
        input,
        output,
        root().join("models").join(format!("{model}.onnx")),
    )
    .until_end(!follow)
    .batch_size(spec.batch)
    .linger(Duration::from_millis(spec.linger_ms));
    // The full set against none, as before the compact default (scripts/bench-throughput.sh
    // measures all three).
    config.output_headers = if spec.headers {
        OutputHeaders::Full
    } else {
        OutputHeaders::None
    };
    config.flush_when_caught_up = !spec.wait;
    config.source.fetch_max_wait = Duration::from_millis(spec.fetch_wait_ms);
    config.kafka = kafka.clone();
    let metrics = config.metrics.clone();
    let pipeline = Pipeline::connect(config).await.expect("pipeline");
    println!("READY");
    // In follow mode, stop once every record is done; the pipeline then waits for the
    // outstanding acknowledgements before it returns.
    let done = async move {
        while !follow || metrics.records_finished() < stop_after {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let summary = pipeline.run_until(done).await.expect("run");
    RunResult {
        records: summary.records_out,
        elapsed: summary.elapsed,
        latency: summary.latency,
        peak_rss_kib: peak_rss_kib(),
    }
}

/// The child side: one run, its result on stdout.
async fn child(spec: &str) {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"));
    let kafka = KafkaConfig::new([var("STREAMTRACT_E2E_BROKER")]);
    let (input, output) = (var("STREAMTRACT_E2E_INPUT"), var("STREAMTRACT_E2E_OUTPUT"));
    let follow = var("STREAMTRACT_E2E_FOLLOW") == "1";
    let stop_after: u64 = var("STREAMTRACT_E2E_RECORDS").parse().expect("a count");
    let spec = RunSpec::parse(spec);
    let result = match spec.model {
        None => pass_through(&kafka, &input, &output, &spec, follow, stop_after).await,
        Some(_) => with_model(&kafka, &input, &output, &spec, follow, stop_after).await,
    };
    println!("{}", result.to_line());
}

/// Runs `spec` in a child process; with `paced = Some((n, rate))`, produces `n` records at
/// `rate` per second to `input` once the child is reading.
async fn run_child(
    broker: &LocalBroker,
    spec: &str,
    input: &str,
    output: &str,
    records: usize,
    rate: Option<f64>,
) -> RunResult {
    let kafka = broker.kafka();
    create_topic(&kafka, output, PARTITIONS).await;
    // A warm run reads one second of unmeasured records first.
    let warm_up = match rate {
        Some(rate) if RunSpec::parse(spec).warm => rate.ceil() as usize,
        _ => 0,
    };
    let total = records + warm_up;
    let mut child = Command::new(std::env::current_exe().expect("bench binary"))
        .env("STREAMTRACT_E2E_CHILD", spec)
        .env("STREAMTRACT_E2E_BROKER", &broker.addr)
        .env("STREAMTRACT_E2E_INPUT", input)
        .env("STREAMTRACT_E2E_OUTPUT", output)
        .env(
            "STREAMTRACT_E2E_FOLLOW",
            if rate.is_some() { "1" } else { "0" },
        )
        .env("STREAMTRACT_E2E_RECORDS", total.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the child run");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next_line = move || lines.next().and_then(Result::ok);
    assert_eq!(
        next_line().as_deref(),
        Some("READY"),
        "{spec}: child failed to start"
    );
    if let Some(rate) = rate {
        // The child's fetchers start right after READY; give them a moment to reach the broker.
        tokio::time::sleep(Duration::from_millis(500)).await;
        produce_digits_at(&kafka, input, total, Some(rate), warm_up).await;
    }
    let line = tokio::task::spawn_blocking(move || {
        std::iter::from_fn(next_line).find(|l| l.starts_with("RESULT "))
    })
    .await
    .expect("reader");
    let status = child.wait().expect("child exit");
    assert!(status.success(), "{spec}: child run failed: {status}");
    let result = line
        .as_deref()
        .and_then(RunResult::from_line)
        .unwrap_or_else(|| panic!("{spec}: no result line"));
    assert_eq!(
        result.records as usize, total,
        "{spec}: {} of {total} records written",
        result.records
    );
    result
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    if let Ok(spec) = std::env::var("STREAMTRACT_E2E_CHILD") {
        return child(&spec).await;
    }
    let n = support::records(100_000, 2_000);
    let paced = support::paced_records(1_000, 50);
    let rate: f64 = std::env::var("STREAMTRACT_BENCH_RATE")
        .map(|r| r.parse().expect("STREAMTRACT_BENCH_RATE must be a number"))
        .unwrap_or(100.0);
    let broker = LocalBroker::start("bench-broker");
    let kafka = broker.kafka();
    create_topic(&kafka, "bench-in", PARTITIONS).await;
    let t = Instant::now();
    produce_digits(&kafka, "bench-in", n).await;
    println!(
        "produced {n} CSV digit records to a {PARTITIONS}-partition topic in {:.2} s",
        t.elapsed().as_secs_f64()
    );

    let throughput_runs = [
        "pass-through",
        "pass-through+headers",
        "digits_mlp/256",
        "digits_cnn/256",
        "digits_mlp/256/no-headers",
        "digits_cnn/256/no-headers",
        "pass-through",
    ];
    let mut results = Vec::new();
    for (i, spec) in throughput_runs.iter().enumerate() {
        let output = format!("bench-out-{i}");
        let r = run_child(&broker, spec, "bench-in", &output, n, None).await;
        results.push((*spec, r));
    }
    // Pass-through ran first and last; its mean is the reference for the model runs.
    let rate_of = |r: &RunResult| r.records as f64 / r.elapsed.as_secs_f64();
    let reference = (rate_of(&results[0].1) + rate_of(&results[results.len() - 1].1)) / 2.0;
    println!(
        "\nthroughput: {n} records, bounded mode\n{:<28} {:>10} {:>12} {:>16} {:>14}",
        "run (model/batch)", "seconds", "records/s", "vs pass-through", "peak RSS MiB"
    );
    for (spec, r) in &results {
        println!(
            "{spec:<28} {:>10.2} {:>12.0} {:>15.0}% {:>14.1}",
            r.elapsed.as_secs_f64(),
            rate_of(r),
            100.0 * rate_of(r) / reference,
            mib(r.peak_rss_kib)
        );
    }

    // linger 5 ms is the default, fetch wait 100 ms too. tansu holds every fetch for the whole
    // wait, so the source polls it instead (src/kafka/pacing.rs), every wait / 20 while records
    // flow; it takes three held fetches to notice, which the first run (cold) includes and
    // the warm runs leave out (they read one second of unmeasured records first). A partial
    // batch runs as soon as the input is caught up; `/wait` runs wait out the linger instead.
    let latency_runs = [
        "pass-through+headers/warm",
        "digits_mlp/256/linger=5",
        "digits_mlp/256/linger=5/warm",
        "digits_mlp/256/linger=5/wait/warm",
        "digits_mlp/256/linger=0/warm",
        "digits_mlp/256/linger=50/warm",
        "digits_mlp/256/linger=50/wait/warm",
        "digits_cnn/256/linger=5/warm",
        "digits_mlp/256/linger=5/fetch=20/warm",
    ];
    let mut results = Vec::new();
    for (i, spec) in latency_runs.iter().enumerate() {
        let input = format!("bench-paced-in-{i}");
        create_topic(&kafka, &input, PARTITIONS).await;
        let output = format!("bench-paced-out-{i}");
        let r = run_child(&broker, spec, &input, &output, paced, Some(rate)).await;
        assert_eq!(
            r.latency.count as usize, paced,
            "{spec}: latencies measured"
        );
        results.push((*spec, r));
    }
    println!(
        "\nlatency: {paced} records produced at {rate} records/s, follow mode (warm: after one second of records not measured); record timestamp -> output acknowledged\n{:<40} {:>10} {:>10} {:>10} {:>14}",
        "run (model/batch/linger)", "p50 ms", "p99 ms", "max ms", "peak RSS MiB"
    );
    for (spec, r) in &results {
        println!(
            "{spec:<40} {:>10.1} {:>10.1} {:>10.1} {:>14.1}",
            ms(r.latency.p50),
            ms(r.latency.p99),
            ms(r.latency.max),
            mib(r.peak_rss_kib)
        );
    }
    drop(broker);
}
