//! Peak memory of `streamtract run` (the binary users run) on a large topic while the output
//! side is slow: the digits CNN over 1,000,000 CSV records on a local tansu broker, with a
//! throttled reader on the output topic at the same time. tansu itself is the slow writer here
//! (it stores every output header as a database row), so the pipeline's input side is faster
//! than its output side for the whole run, which is the case the bounds are for.
//!
//! Prints the peak resident set (VmHWM) when 10%, 50% and 100% of the run's time had passed:
//! with bounded queues it stops growing early, whatever the topic size.
//!
//!     cargo bench --bench memory                      # 1,000,000 records
//!     STREAMTRACT_BENCH_RECORDS=200000 cargo bench --bench memory
//!
//! `STREAMTRACT_BENCH_BIN` runs another build of the binary instead of the bench profile's,
//! e.g. the static musl one users run (`scripts/build-static.sh` prints its path).
//!
//! Extra `streamtract run` flags (to see what each setting costs) go in
//! `STREAMTRACT_BENCH_ARGS`, e.g. `STREAMTRACT_BENCH_ARGS="--workers 1"`.
//!
//! `STREAMTRACT_BENCH_PAD_BYTES=N` measures larger records with the same model work: each
//! record is then a JSON object, `{"pixels":[…64 numbers…],"pad":"…N bytes…"}` (the decoder
//! ignores the extra field), read with `--format json`.
//!
//! Under `cargo test --all-targets` it runs a small smoke version and checks the counts.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use streamtract::kafka::{self, Source, SourceConfig, TopicSelection};
use support::{create_topic, digit_rows, produce_rows_at, root, LocalBroker};

const PARTITIONS: i32 = 3;
/// Records per second the output reader takes at most.
const READER_RATE: usize = 2_000;

/// Peak resident set size of a process so far, in KiB (Linux `VmHWM`).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() {
    let n = support::records(1_000_000, 3_000);
    let broker = LocalBroker::start("bench-memory-broker");
    let kafka = broker.kafka();
    create_topic(&kafka, "mem-in", PARTITIONS).await;
    create_topic(&kafka, "mem-out", PARTITIONS).await;
    let pad: Option<usize> = std::env::var("STREAMTRACT_BENCH_PAD_BYTES").ok().map(|v| {
        v.parse()
            .expect("STREAMTRACT_BENCH_PAD_BYTES: a number of bytes")
    });
    let rows: Vec<String> = match pad {
        None => digit_rows(),
        Some(pad) => digit_rows()
            .iter()
            .map(|csv| format!(r#"{{"pixels":[{csv}],"pad":"{}"}}"#, "x".repeat(pad)))
            .collect(),
    };
    let bytes_per_record = rows.iter().map(String::len).sum::<usize>() / rows.len();
    let t = Instant::now();
    produce_rows_at(&kafka, "mem-in", &rows, n, None, 0).await;
    println!(
        "produced {n} digit records ({}, {bytes_per_record} bytes on average) in {:.1} s",
        if pad.is_some() { "JSON" } else { "CSV" },
        t.elapsed().as_secs_f64()
    );

    // The slow reader of the output: follows mem-out, at most READER_RATE records/s.
    let reader = {
        let kafka = kafka.clone();
        tokio::spawn(async move {
            let client = kafka::connect(&kafka).await.expect("connect");
            let config = SourceConfig::new(vec![TopicSelection {
                topic: "mem-out".into(),
                partitions: None,
            }]);
            let mut source = Source::start(client, &kafka, &config)
                .await
                .expect("source");
            let mut read = 0usize;
            while let Some(chunk) = source.next_chunk().await {
                let got = chunk.expect("fetch").len();
                read += got;
                tokio::time::sleep(Duration::from_secs_f64(got as f64 / READER_RATE as f64)).await;
            }
            read
        })
    };

    let extra = std::env::var("STREAMTRACT_BENCH_ARGS").unwrap_or_default();
    let started = Instant::now();
    let binary = std::env::var("STREAMTRACT_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_streamtract").to_string());
    let mut child = Command::new(&binary)
        .args(["run", "--brokers", &broker.addr, "--input", "mem-in"])
        .args(["--output", "mem-out", "--model", "models/digits_cnn.onnx"])
        .args(["--until-end"])
        .args(pad.map(|_| ["--format", "json"]).into_iter().flatten())
        .args(extra.split_whitespace())
        .current_dir(root())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn streamtract");
    let pid = child.id();
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let status = loop {
        if let Some(kib) = peak_rss_kib(pid) {
            samples.push((started.elapsed(), kib));
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = started.elapsed();
    let stderr = std::io::read_to_string(child.stderr.take().expect("stderr")).unwrap_or_default();
    assert!(status.success(), "streamtract failed:\n{stderr}");
    let want = format!("{n} records in, {n} outputs written");
    assert!(stderr.contains(&want), "expected `{want}` in:\n{stderr}");
    reader.abort();

    let peak_at = |fraction: f64| {
        samples
            .iter()
            .take_while(|(t, _)| t.as_secs_f64() <= fraction * elapsed.as_secs_f64())
            .map(|(_, kib)| *kib)
            .max()
            .unwrap_or(0) as f64
            / 1024.0
    };
    println!(
        "\nstreamtract run {extra}, digits CNN, {n} records of {bytes_per_record} bytes, {:.1} s, \
         {:.0} records/s, {:.1} MB/s in",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        (n * bytes_per_record) as f64 / elapsed.as_secs_f64() / 1e6
    );
    println!("{:>14} {:>16}", "run time", "peak RSS (MiB)");
    for fraction in [0.1, 0.5, 1.0] {
        println!("{:>13.0}% {:>16.1}", fraction * 100.0, peak_at(fraction));
    }
}
