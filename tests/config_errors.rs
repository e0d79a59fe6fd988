//! Invalid configuration exits non-zero before consuming anything, with a message that names
//! the field, what was expected and what was found.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Broker, Rec};

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_streamtract"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A valid command line with `changes` applied: a flag already present gets the new value,
/// others are appended.
fn base<'a>(broker: &'a str, changes: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "run",
        "--brokers",
        broker,
        "--input",
        "pixels",
        "--output",
        "predictions",
        "--model",
        "models/digits_mlp.onnx",
        "--until-end",
    ];
    for pair in changes.chunks(2) {
        match v.iter().position(|a| *a == pair[0]) {
            Some(i) => v[i + 1] = pair[1],
            None => v.extend_from_slice(pair),
        }
    }
    v
}

#[test]
fn invalid_configurations_fail_before_consuming() {
    let broker = Broker::start("config_errors");
    broker.create_topic("pixels", 2);
    broker.create_topic("predictions", 1);
    broker.produce("pixels", &[Rec::kv("k", "1,2,3")]);
    let addr = broker.addr.as_str();

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            base(addr, &["--model", "models/missing.onnx"]),
            "model file models/missing.onnx: No such file",
        ),
        (
            base(addr, &["--input", "nosuchtopic"]),
            "topic `nosuchtopic` does not exist",
        ),
        (
            base(addr, &["--output", "nosuchout"]),
            "topic `nosuchout` does not exist",
        ),
        (
            base(addr, &["--input", "pixels:0,5"]),
            "topic `pixels` has no partition 5 (it has 2)",
        ),
        (
            base(addr, &["--metrics-addr", "nowhere"]),
            "`metrics_addr`: expected HOST:PORT to listen on, e.g. 127.0.0.1:9464, found `nowhere`",
        ),
        (
            base(addr, &["--metrics-addr", "192.0.2.1:9464"]),
            "`metrics_addr`: expected an address this process can listen on, found `192.0.2.1:9464 (",
        ),
        (
            base(addr, &["--max-in-flight-bytes", "0"]),
            "`max_in_flight_bytes`: expected a number >= 1, found `0`",
        ),
        (
            base(addr, &["--fetch-max-wait-ms", "0"]),
            "`fetch_max_wait_ms`: expected a number of milliseconds from 1 to 30000, found `0`",
        ),
        (
            base(addr, &["--fetch-max-bytes", "100"]),
            "`fetch_max_bytes`: expected a number of bytes from 1024 to 67108864, found `100`",
        ),
        (
            base(addr, &["--format", "xml"]),
            "`format`: expected one of csv, json, raw, avro, confluent-avro, found `xml`",
        ),
        (
            base(addr, &["--format", "avro"]),
            "`schema` is required (flag --schema FILE.avsc",
        ),
        (
            base(addr, &["--format", "confluent-avro"]),
            "`schema_registry` is required (flag --schema-registry URL",
        ),
        (
            base(addr, &["--output-format", "confluent-avro"]),
            "`schema_registry` is required (flag --schema-registry URL",
        ),
        (
            base(addr, &["--fields", "a,b"]),
            "`format`: expected avro or confluent-avro when schema or fields is set, found `csv`",
        ),
        (
            base(addr, &["--top-k", "11"]),
            "top_k = 11 but the first output has 10 values",
        ),
        (
            base(addr, &["--batch-size", "0"]),
            "`batch_size`: expected a number from 1 to 65536, found `0`",
        ),
        (
            base(addr, &["--start", "soon"]),
            "`start`: expected `earliest`, `latest`, an offset",
        ),
        (
            base(addr, &["--delimiter", "ab"]),
            "`delimiter`: expected one ASCII character",
        ),
        (
            base(addr, &["--output-format", "raw", "--top-k", "3"]),
            "top_k cannot be written in the raw output format",
        ),
        (
            vec![
                "run",
                "--brokers",
                addr,
                "--input",
                "pixels",
                "--model",
                "models/digits_mlp.onnx",
            ],
            "`output` is required (flag --output",
        ),
        (
            base("127.0.0.1:1", &["--connect-timeout", "2"]),
            "cannot reach Kafka at 127.0.0.1:1 within 2 s",
        ),
        (base("localhost", &[]), "`brokers`: expected HOST:PORT"),
    ];
    for (args, expected) in cases {
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(2), "{args:?} should exit 2; stderr:\n{stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in:\n{stderr}"
        );
    }

    // Nothing was written by any of the failed runs.
    let outs = broker.consume_with_extra_wait(
        "predictions",
        0,
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(1),
    );
    assert!(outs.is_empty(), "a failed run wrote {} records", outs.len());
}

#[test]
fn config_file_values_apply_and_flags_override_them() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("pipeline.toml");
    std::fs::write(
        &path,
        "brokers = \"127.0.0.1:9092\"\ninput = [\"pixels\"]\nbatchsize = 4\n",
    )
    .unwrap();
    let (code, stderr) = run(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("unknown field `batchsize`"), "{stderr}");

    std::fs::write(&path, "brokers = \"127.0.0.1:1\"\ninput = [\"pixels\"]\noutput = \"p\"\nmodel = \"models/nope.onnx\"\n").unwrap();
    let (code, stderr) = run(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("models/nope.onnx"), "{stderr}");
    // The flag wins over the file.
    let (_, stderr) = run(&[
        "run",
        "--config",
        path.to_str().unwrap(),
        "--model",
        "models/other.onnx",
    ]);
    assert!(stderr.contains("models/other.onnx"), "{stderr}");
}

#[test]
fn inspect_prints_the_signature() {
    let out = Command::new(env!("CARGO_BIN_EXE_streamtract"))
        .args(["inspect", "models/digits_cnn.onnx"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("pixels: float32[N, 8, 8, 1]"), "{stdout}");
    assert!(stdout.contains("probabilities: float32[N, 10]"), "{stdout}");
}

#[test]
fn version_names_the_allocator_and_the_memory_copies() {
    let out = Command::new(env!("CARGO_BIN_EXE_streamtract"))
        .arg("--version")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(
        stdout.trim(),
        format!(
            "streamtract {} (allocator: {}, memcpy: {})",
            env!("CARGO_PKG_VERSION"),
            expected_allocator(),
            expected_memcopy()
        )
    );
}

/// The allocator the binary must install for this target and these features
/// (src/cli/allocator.rs), restated here so a wrong choice fails.
fn expected_allocator() -> &'static str {
    if cfg!(feature = "mimalloc") {
        "mimalloc"
    } else if cfg!(all(target_env = "musl", not(feature = "libc-malloc"))) {
        "dlmalloc"
    } else {
        "C library malloc"
    }
}

/// Whose `memcpy` the binary must link for this target and these features (src/cli/memcopy.rs).
fn expected_memcopy() -> &'static str {
    if cfg!(all(
        target_arch = "x86_64",
        target_env = "musl",
        not(feature = "libc-memcpy")
    )) {
        "streamtract"
    } else {
        "C library"
    }
}
