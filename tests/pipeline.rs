//! End to end through the `streamtract run` binary: records produced by an independent client
//! (confluent-kafka) on a real broker (tansu), outputs read back by that client and checked
//! against TensorFlow's own predictions (`models/*.tf_classes.txt`).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{argmax, sha_prefix, stop_with_sigterm, tf_classes, Broker, Consumed, Rec};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Rows of a `data/*.csv` file: (label, features).
fn dataset(name: &str) -> Vec<(usize, Vec<f32>)> {
    std::fs::read_to_string(root().join("data").join(name))
        .unwrap()
        .lines()
        .map(|l| {
            let mut fields = l.split(',');
            let label = fields.next().unwrap().parse().unwrap();
            (label, fields.map(|f| f.parse().unwrap()).collect())
        })
        .collect()
}

fn csv_line(values: &[f32]) -> String {
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `streamtract ARGS` with a time limit; returns its output.
fn streamtract(args: &[&str]) -> Output {
    common::streamtract_within(args, Duration::from_secs(180))
}

/// `streamtract run` from `input` to `output` on `broker` with `model`, then `extra` flags.
fn run_args<'a>(
    broker: &'a Broker,
    input: &'a str,
    output: &'a str,
    model: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--brokers",
        &broker.addr,
        "--input",
        input,
        "--output",
        output,
        "--model",
        model,
    ];
    args.extend_from_slice(extra);
    args
}

fn run_ok(args: &[&str]) -> String {
    let out = streamtract(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "streamtract {args:?} failed ({}):\n{stderr}",
        out.status
    );
    stderr
}

/// Reads `count` outputs (and checks no extra ones appear), one per key.
fn outputs_by_key(
    broker: &Broker,
    topic: &str,
    count: usize,
) -> (Vec<Consumed>, HashMap<String, Consumed>) {
    let outs = broker.consume_with_extra_wait(
        topic,
        count,
        Duration::from_secs(60),
        Duration::from_secs(2),
    );
    assert_eq!(
        outs.len(),
        count,
        "expected exactly {count} outputs on {topic}"
    );
    let mut by_key = HashMap::new();
    for o in &outs {
        let key = o.key_str().expect("outputs keep the input key");
        assert!(
            by_key.insert(key.clone(), o.clone()).is_none(),
            "two outputs for key {key}"
        );
    }
    (outs, by_key)
}

/// Per output partition, records from one input partition must appear in input-offset order.
fn assert_order_kept(outs: &[Consumed]) {
    let mut last: BTreeMap<(i32, i32), i64> = BTreeMap::new();
    let mut sorted = outs.to_vec();
    sorted.sort_by_key(|o| (o.partition, o.offset));
    for o in &sorted {
        let source = o.source();
        let (src_p, src_o) = (source.partition, source.offset);
        if let Some(prev) = last.insert((o.partition, src_p), src_o) {
            assert!(
                src_o > prev,
                "output partition {} has source offset {src_o} after {prev}",
                o.partition
            );
        }
    }
}

fn produce_digits(
    broker: &Broker,
    topic: &str,
    value: impl Fn(&[f32]) -> Vec<u8>,
) -> Vec<(i32, i64)> {
    let recs: Vec<Rec> = dataset("digits.csv")
        .iter()
        .enumerate()
        .map(|(i, (_, px))| Rec::kv(&format!("digit-{i}"), value(px)))
        .collect();
    broker.produce(topic, &recs)
}

/// Checks every digits output: class equals TensorFlow's, headers carry the source, and the
/// output partition is the Java partitioner's choice for the key.
fn check_digit_outputs(broker: &Broker, model: &str, coords: &[(i32, i64)], out_partitions: i32) {
    let (outs, by_key) = outputs_by_key(broker, "predictions", coords.len());
    let tf = tf_classes(model);
    let keys: Vec<String> = (0..coords.len()).map(|i| format!("digit-{i}")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let java_partitions = broker.murmur2_partitions(&key_refs, out_partitions);
    let sha = streamtract::model::Model::load(root().join("models").join(format!("{model}.onnx")))
        .unwrap();
    for (i, key) in keys.iter().enumerate() {
        let o = &by_key[key];
        let v = o.value_json();
        let class = argmax(v["probabilities"].as_array().expect("probabilities array"));
        assert_eq!(
            class, tf[i],
            "{key}: streamtract says {class}, TensorFlow says {}",
            tf[i]
        );
        let source = o.source();
        assert_eq!(source.topic, "pixels");
        assert_eq!((source.partition, source.offset), coords[i], "{key}");
        assert_eq!(source.model, sha_prefix(sha.sha256()));
        assert_eq!(
            o.headers.len(),
            1,
            "{key}: only the compact header by default"
        );
        assert_eq!(
            o.partition, java_partitions[i],
            "{key}: output partition differs from the Java partitioner"
        );
    }
    assert_order_kept(&outs);
}

#[test]
fn digits_csv_through_the_cnn_match_tensorflow() {
    let broker = Broker::start("digits_csv_cnn");
    broker.create_topic("pixels", 3);
    broker.create_topic("predictions", 4);
    let coords = produce_digits(&broker, "pixels", |px| csv_line(px).into_bytes());
    assert_eq!(
        coords
            .iter()
            .map(|c| c.0)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3
    );
    let stderr = run_ok(&run_args(
        &broker,
        "pixels",
        "predictions",
        "models/digits_cnn.onnx",
        &["--format", "csv", "--until-end"],
    ));
    assert!(
        stderr.contains("1797 records in, 1797 outputs written, 0 rejected"),
        "{stderr}"
    );
    check_digit_outputs(&broker, "digits_cnn", &coords, 4);
}

/// The three header modes on the same records: `full` writes every coordinate and the whole
/// SHA-256, `compact` (the default) the same coordinates in one header with a 16-digit SHA-256
/// prefix, `none` nothing; the values are the same either way.
#[test]
fn output_headers_full_compact_and_none_name_the_same_source() {
    let broker = Broker::start("output_headers");
    broker.create_topic("pixels", 2);
    let recs: Vec<Rec> = dataset("digits.csv")
        .iter()
        .take(40)
        .enumerate()
        .map(|(i, (_, px))| Rec::kv(&format!("digit-{i}"), csv_line(px)))
        .collect();
    let coords = broker.produce("pixels", &recs);
    let sha = streamtract::model::Model::load(root().join("models/digits_mlp.onnx"))
        .unwrap()
        .sha256()
        .to_string();
    let mut by_mode = BTreeMap::new();
    for mode in ["full", "compact", "none", "default"] {
        let topic = format!("out-{mode}");
        broker.create_topic(&topic, 1);
        let mut extra = vec!["--until-end"];
        if mode != "default" {
            extra.extend(["--output-headers", mode]);
        }
        run_ok(&run_args(
            &broker,
            "pixels",
            &topic,
            "models/digits_mlp.onnx",
            &extra,
        ));
        let (_, by_key) = outputs_by_key(&broker, &topic, recs.len());
        by_mode.insert(mode, by_key);
    }
    for (i, coord) in coords.iter().enumerate() {
        let key = format!("digit-{i}");
        let full = &by_mode["full"][&key];
        let names: Vec<&str> = full.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "model.sha256",
                "source.offset",
                "source.partition",
                "source.timestamp",
                "source.topic"
            ],
            "{key}"
        );
        assert_eq!(full.header("source.topic").as_deref(), Some("pixels"));
        assert_eq!(full.header("source.partition"), Some(coord.0.to_string()));
        assert_eq!(full.header("source.offset"), Some(coord.1.to_string()));
        assert_eq!(full.header("model.sha256").as_deref(), Some(sha.as_str()));
        for mode in ["compact", "default"] {
            let compact = &by_mode[mode][&key];
            assert_eq!(compact.headers.len(), 1, "{mode} {key}: one header");
            let source = compact.source();
            assert_eq!(source.topic, "pixels");
            assert_eq!((source.partition, source.offset), *coord, "{mode} {key}");
            assert_eq!(
                Some(source.timestamp_ms.to_string()),
                full.header("source.timestamp"),
                "{mode} {key}"
            );
            assert_eq!(source.model, sha_prefix(&sha), "{mode} {key}");
            assert_eq!(compact.value, full.value, "{mode} {key}: same prediction");
        }
        assert!(by_mode["none"][&key].headers.is_empty(), "{key}");
    }
}

#[test]
fn digits_json_arrays_and_raw_through_the_mlp_match_tensorflow() {
    let broker = Broker::start("digits_json_raw");
    broker.create_topic("pixels", 3);
    broker.create_topic("predictions", 2);
    // JSON flat array form.
    let coords = produce_digits(&broker, "pixels", |px| serde_json::to_vec(px).unwrap());
    run_ok(&run_args(
        &broker,
        "pixels",
        "predictions",
        "models/digits_mlp.onnx",
        &["--format", "json", "--until-end", "--batch-size", "100"],
    ));
    check_digit_outputs(&broker, "digits_mlp", &coords, 2);

    // Raw little-endian float32, a fresh pair of topics on the same broker.
    let broker2 = Broker::start("digits_raw");
    broker2.create_topic("pixels", 3);
    broker2.create_topic("predictions", 2);
    let coords = produce_digits(&broker2, "pixels", |px| {
        px.iter().flat_map(|v| v.to_le_bytes()).collect()
    });
    run_ok(&run_args(
        &broker2,
        "pixels",
        "predictions",
        "models/digits_mlp.onnx",
        &["--format", "raw", "--until-end", "--workers", "1"],
    ));
    check_digit_outputs(&broker2, "digits_mlp", &coords, 2);
}

#[test]
fn digits_json_nested_and_object_forms_through_the_cnn() {
    let broker = Broker::start("digits_json_nested");
    broker.create_topic("pixels", 2);
    broker.create_topic("predictions", 3);
    let coords = produce_digits(&broker, "pixels", |px| {
        // Even rows: nested [8][8][1]; odd rows: object form {"pixels": nested}.
        let nested: Vec<Vec<Vec<f32>>> = px
            .chunks(8)
            .map(|r| r.iter().map(|v| vec![*v]).collect())
            .collect();
        let even = px.iter().sum::<f32>() as i64 % 2 == 0;
        if even {
            serde_json::to_vec(&nested).unwrap()
        } else {
            serde_json::to_vec(&serde_json::json!({ "pixels": nested })).unwrap()
        }
    });
    run_ok(&run_args(
        &broker,
        "pixels",
        "predictions",
        "models/digits_cnn.onnx",
        &["--format", "json", "--until-end", "--batch-size", "37"],
    ));
    check_digit_outputs(&broker, "digits_cnn", &coords, 3);
}

#[test]
fn two_input_model_reads_json_objects() {
    let broker = Broker::start("wine_two_inputs");
    broker.create_topic("wine", 2);
    broker.create_topic("wine-predictions", 2);
    let rows = dataset("wine.csv");
    let recs: Vec<Rec> = rows
        .iter()
        .enumerate()
        .map(|(i, (_, f))| {
            let v = serde_json::json!({ "chemistry": &f[..9], "color": &f[9..], "note": "extra fields are ignored" });
            Rec::kv(&format!("wine-{i}"), serde_json::to_vec(&v).unwrap())
        })
        .collect();
    broker.produce("wine", &recs);
    run_ok(&run_args(
        &broker,
        "wine",
        "wine-predictions",
        "models/wine_two_inputs.onnx",
        &["--format", "json", "--until-end", "--top-k", "2"],
    ));
    let (_, by_key) = outputs_by_key(&broker, "wine-predictions", rows.len());
    let tf = tf_classes("wine_two_inputs");
    for (i, class) in tf.iter().enumerate() {
        let v = by_key[&format!("wine-{i}")].value_json();
        assert_eq!(
            argmax(v["probabilities"].as_array().unwrap()),
            *class,
            "wine-{i}"
        );
        assert_eq!(
            v["top_k"][0]["index"].as_u64().unwrap() as usize,
            *class,
            "wine-{i} top_k"
        );
        assert_eq!(v["top_k"].as_array().unwrap().len(), 2);
    }
}

#[test]
fn breast_cancer_csv_with_normalization_and_csv_output() {
    let broker = Broker::start("breast_cancer");
    broker.create_topic("cells", 1);
    broker.create_topic("diagnoses", 1);
    let rows = dataset("breast_cancer.csv");
    let recs: Vec<Rec> = rows
        .iter()
        .enumerate()
        .map(|(i, (_, f))| Rec::kv(&format!("c{i}"), csv_line(f)))
        .collect();
    broker.produce("cells", &recs);
    run_ok(&run_args(
        &broker,
        "cells",
        "diagnoses",
        "models/breast_cancer.onnx",
        &["--format", "csv", "--output-format", "csv", "--until-end"],
    ));
    let (_, by_key) = outputs_by_key(&broker, "diagnoses", rows.len());
    for (i, class) in tf_classes("breast_cancer").iter().enumerate() {
        let p: f32 = by_key[&format!("c{i}")]
            .value_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(usize::from(p >= 0.5), *class, "c{i}: probability {p}");
    }
}

#[test]
fn bad_records_are_skipped_counted_and_do_not_stop_the_stream() {
    let broker = Broker::start("bad_records");
    broker.create_topic("pixels", 1);
    broker.create_topic("predictions", 1);
    let good = csv_line(&dataset("digits.csv")[0].1);
    let recs = vec![
        Rec::kv("ok-1", good.clone()),
        Rec::kv("short", "1,2,3"),
        Rec::kv("nan", good.replacen('0', "NaN", 1)),
        Rec::kv("empty", ""),
        Rec::kv_bytes("binary", vec![0xff, 0xfe, 0x00]),
        Rec::kv("ok-2", good.clone()),
    ];
    broker.produce("pixels", &recs);
    let stderr = run_ok(&run_args(
        &broker,
        "pixels",
        "predictions",
        "models/digits_mlp.onnx",
        &["--until-end"],
    ));
    assert!(
        stderr.contains("6 records in, 2 outputs written, 4 rejected"),
        "{stderr}"
    );
    assert!(stderr.contains("expected 64 values"), "{stderr}");
    assert!(stderr.contains("not finite"), "{stderr}");
    assert!(stderr.contains("not valid UTF-8"), "{stderr}");
    let (_, by_key) = outputs_by_key(&broker, "predictions", 2);
    assert!(by_key.contains_key("ok-1") && by_key.contains_key("ok-2"));

    // With `--on-error stop` the run fails on the first bad record, after writing what came before.
    broker.create_topic("predictions-stop", 1);
    let out = streamtract(&run_args(
        &broker,
        "pixels",
        "predictions-stop",
        "models/digits_mlp.onnx",
        &["--until-end", "--on-error", "stop"],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: stopping on a bad record"),
        "{stderr}"
    );
    let (_, by_key) = outputs_by_key(&broker, "predictions-stop", 1);
    assert!(by_key.contains_key("ok-1"));
}

#[test]
fn start_offset_reads_only_the_rest() {
    let broker = Broker::start("start_offset");
    broker.create_topic("pixels", 1);
    broker.create_topic("predictions", 1);
    let good = csv_line(&dataset("digits.csv")[0].1);
    let recs: Vec<Rec> = (0..10)
        .map(|i| Rec::kv(&format!("k{i}"), good.clone()))
        .collect();
    broker.produce("pixels", &recs);
    run_ok(&run_args(
        &broker,
        "pixels:0",
        "predictions",
        "models/digits_mlp.onnx",
        &["--until-end", "--start", "7"],
    ));
    let (_, by_key) = outputs_by_key(&broker, "predictions", 3);
    for k in ["k7", "k8", "k9"] {
        assert!(by_key.contains_key(k), "missing {k}");
    }
}

#[test]
fn key_partitioning_matches_the_java_client() {
    let broker = Broker::start("murmur2");
    let keys: Vec<String> = (0..200)
        .map(|i| format!("sensor-{i}"))
        .chain(["", "a", "ab", "abc", "ümlaut"].map(String::from))
        .collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    for partitions in [3, 6, 7] {
        let reference = broker.murmur2_partitions(&refs, partitions);
        for (key, want) in refs.iter().zip(reference) {
            assert_eq!(
                streamtract::kafka::partition_for_key(key.as_bytes(), partitions),
                want,
                "key {key:?}, {partitions} partitions"
            );
        }
    }
}

#[test]
fn start_timestamp_skips_older_records() {
    let broker = Broker::start("start_timestamp");
    broker.create_topic("pixels", 2);
    broker.create_topic("predictions", 1);
    let good = csv_line(&dataset("digits.csv")[0].1);
    let old: Vec<Rec> = (0..6)
        .map(|i| Rec::kv(&format!("old{i}"), good.clone()))
        .collect();
    broker.produce("pixels", &old);
    std::thread::sleep(Duration::from_millis(1500));
    let cut = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    std::thread::sleep(Duration::from_millis(500));
    let new: Vec<Rec> = (0..4)
        .map(|i| Rec::kv(&format!("new{i}"), good.clone()))
        .collect();
    broker.produce("pixels", &new);
    run_ok(&run_args(
        &broker,
        "pixels",
        "predictions",
        "models/digits_mlp.onnx",
        &["--until-end", "--start", &cut],
    ));
    let (_, by_key) = outputs_by_key(&broker, "predictions", 4);
    assert!(
        (0..4).all(|i| by_key.contains_key(&format!("new{i}"))),
        "{:?}",
        by_key.keys()
    );
}

#[test]
fn follow_mode_reads_several_topics_and_stops_cleanly_on_sigterm() {
    let broker = Broker::start("follow_sigterm");
    broker.create_topic("a", 2);
    broker.create_topic("b", 1);
    broker.create_topic("predictions", 2);
    let good = csv_line(&dataset("digits.csv")[0].1);
    broker.produce(
        "a",
        &(0..5)
            .map(|i| Rec::kv(&format!("a{i}"), good.clone()))
            .collect::<Vec<_>>(),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_streamtract"))
        .args([
            "run",
            "--brokers",
            &broker.addr,
            "--input",
            "a",
            "--input",
            "b",
            "--output",
            "predictions",
            "--model",
            "models/digits_mlp.onnx",
            "--linger-ms",
            "20",
        ])
        .current_dir(root())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Records produced while it runs are picked up (follow mode).
    std::thread::sleep(Duration::from_secs(2));
    broker.produce(
        "b",
        &(0..7)
            .map(|i| Rec::kv(&format!("b{i}"), good.clone()))
            .collect::<Vec<_>>(),
    );
    broker.produce(
        "a",
        &(5..8)
            .map(|i| Rec::kv(&format!("a{i}"), good.clone()))
            .collect::<Vec<_>>(),
    );
    let outs = broker.consume("predictions", 15, Duration::from_secs(30));
    assert_eq!(
        outs.len(),
        15,
        "follow mode should pick up records produced after start"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "follow mode must keep running"
    );
    let stderr = stop_with_sigterm(child);
    assert!(
        stderr.contains("15 records in, 15 outputs written"),
        "{stderr}"
    );
    let topics: std::collections::BTreeSet<String> =
        outs.iter().map(|o| o.source().topic).collect();
    assert_eq!(topics.into_iter().collect::<Vec<_>>(), ["a", "b"]);
}

/// Follows `input` with a long linger, `extra` flags added; stopped with SIGTERM once
/// `expected` outputs were read from `output` (or `wait` passed). Returns the outputs, how long
/// after start-up the first came, and the run's stderr.
fn follow_until_outputs(
    broker: &Broker,
    input: &str,
    output: &str,
    extra: &[&str],
    expected: usize,
    wait: Duration,
) -> (Vec<Consumed>, Duration, String) {
    let started = Instant::now();
    let args = run_args(broker, input, output, "models/digits_mlp.onnx", extra);
    let child = Command::new(env!("CARGO_BIN_EXE_streamtract"))
        .args(&args)
        .current_dir(root())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = broker.consume(output, 1, wait);
    let first_after = started.elapsed();
    let outs = if first.is_empty() {
        first
    } else {
        broker.consume(output, expected, wait)
    };
    (outs, first_after, stop_with_sigterm(child))
}

#[test]
fn a_partial_batch_runs_at_once_when_the_input_is_caught_up_unless_told_to_wait() {
    let broker = Broker::start("caught_up");
    let good = csv_line(&dataset("digits.csv")[0].1);
    let records: Vec<Rec> = (0..6)
        .map(|i| Rec::kv(&format!("k{i}"), good.clone()))
        .collect();
    for topic in ["quick-in", "quick-out", "patient-in", "patient-out"] {
        broker.create_topic(topic, 2);
    }
    broker.produce("quick-in", &records);
    broker.produce("patient-in", &records);

    // Default: the six records fill no batch of 256, but once both partitions are read to
    // their end the batch runs, long before the 60 s linger.
    let (outs, _, stderr) = follow_until_outputs(
        &broker,
        "quick-in",
        "quick-out",
        &["--linger-ms", "60000"],
        6,
        Duration::from_secs(30),
    );
    assert_eq!(
        outs.len(),
        6,
        "a caught-up input should not wait out the linger: {stderr}"
    );
    assert!(
        stderr.contains("6 records in, 6 outputs written"),
        "{stderr}"
    );

    // `--flush-when-caught-up false`: the batch waits out its 4 s linger, which starts when
    // the first record is read, after start-up; then all six come.
    let (outs, first_after, stderr) = follow_until_outputs(
        &broker,
        "patient-in",
        "patient-out",
        &["--linger-ms", "4000", "--flush-when-caught-up", "false"],
        6,
        Duration::from_secs(30),
    );
    assert_eq!(outs.len(), 6, "{stderr}");
    assert!(
        first_after >= Duration::from_secs(4),
        "the first output came {first_after:?} after start-up, before the linger ran out"
    );
    assert!(
        stderr.contains("6 records in, 6 outputs written"),
        "{stderr}"
    );
}

#[test]
fn malformed_records_go_to_the_dead_letter_topic_unchanged() {
    let broker = Broker::start("dlq");
    broker.create_topic("pixels", 3);
    broker.create_topic("predictions", 3);
    broker.create_topic("pixels-dlq", 1);
    let digits = dataset("digits.csv");
    let bad_values: [&[u8]; 5] = [b"1,2,3", b"", b"\xff\xfe", b"{\"pixels\": 1}", b"nan,nan"];
    let mut bad_keys = std::collections::BTreeSet::new();
    let recs: Vec<Rec> = (0..10_000)
        .map(|i| {
            if i % 100 == 37 {
                bad_keys.insert(format!("r{i}"));
                Rec::kv_bytes(format!("r{i}"), bad_values[i / 100 % 5].to_vec())
                    .header("trace", format!("t{i}"))
            } else {
                Rec::kv(&format!("r{i}"), csv_line(&digits[i % digits.len()].1))
            }
        })
        .collect();
    let coords = broker.produce("pixels", &recs);
    let stderr = run_ok(&run_args(
        &broker,
        "pixels",
        "predictions",
        "models/digits_mlp.onnx",
        &["--until-end", "--dlq", "pixels-dlq", "--group", "dlq-test"],
    ));
    assert!(
        stderr.contains(
            "10000 records in, 9900 outputs written, 100 rejected (100 dead letters written)"
        ),
        "{stderr}"
    );
    let (_, outputs) = outputs_by_key(&broker, "predictions", 9_900);
    assert!(bad_keys.iter().all(|k| !outputs.contains_key(k)));
    let (_, letters) = outputs_by_key(&broker, "pixels-dlq", 100);
    for key in &bad_keys {
        let letter = &letters[key];
        let i: usize = key[1..].parse().unwrap();
        assert_eq!(
            letter.value.clone().unwrap_or_default(),
            recs[i].value.clone().unwrap_or_default(),
            "{key}: value unchanged"
        );
        assert_eq!(
            letter.header("trace"),
            Some(format!("t{i}")),
            "{key}: original headers kept"
        );
        assert_eq!(letter.header("dlq.source.topic").as_deref(), Some("pixels"));
        assert_eq!(
            letter.header("dlq.source.partition"),
            Some(coords[i].0.to_string())
        );
        assert_eq!(
            letter.header("dlq.source.offset"),
            Some(coords[i].1.to_string())
        );
        assert_eq!(letter.header("dlq.stage").as_deref(), Some("decode"));
        assert!(!letter.header("dlq.reason").unwrap().is_empty());
    }
    assert!(letters["r37"]
        .header("dlq.reason")
        .unwrap()
        .contains("expected 64 values"));

    // Dead letters count as done: the group's offsets are committed past every bad record.
    broker.assert_committed_to_end("dlq-test", "pixels", 3);
}

/// Records that decode and fit the input signature but make the model itself fail: the
/// embedding model has a table for pixel intensities 0..16 only, and an intensity of 40 makes
/// the lookup fail (TensorFlow raises; tract panics, which the worker catches). The failing
/// batch is re-run row by row: only the bad records are dead-lettered, the rest of the batch
/// gets its outputs, in order.
#[test]
fn records_the_model_fails_on_go_to_the_dead_letter_topic() {
    let broker = Broker::start("model_dlq");
    broker.create_topic("pixels", 2);
    broker.create_topic("predictions", 2);
    broker.create_topic("pixels-dlq", 1);
    let digits = dataset("digits.csv");
    let is_bad = |i: usize| i % 90 == 11;
    let recs: Vec<Rec> = digits
        .iter()
        .enumerate()
        .map(|(i, (_, px))| {
            let mut px = px.clone();
            if is_bad(i) {
                px[5] = 40.0;
            }
            Rec::kv(&format!("digit-{i}"), csv_line(&px)).header("trace", format!("t{i}"))
        })
        .collect();
    let coords = broker.produce("pixels", &recs);
    let bad: Vec<usize> = (0..digits.len()).filter(|&i| is_bad(i)).collect();
    let good = digits.len() - bad.len();
    let stderr = run_ok(&run_args(
        &broker,
        "pixels",
        "predictions",
        "models/digits_embedding.onnx",
        &[
            "--until-end",
            "--batch-size",
            "64",
            "--dlq",
            "pixels-dlq",
            "--group",
            "model-dlq",
        ],
    ));
    assert!(
        stderr.contains(&format!(
            "{} records in, {good} outputs written, {} rejected ({} dead letters written)",
            digits.len(),
            bad.len(),
            bad.len()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("running its rows one by one"), "{stderr}");

    let (outs, by_key) = outputs_by_key(&broker, "predictions", good);
    let tf = tf_classes("digits_embedding");
    for (i, class) in tf.iter().enumerate() {
        let key = format!("digit-{i}");
        if is_bad(i) {
            assert!(!by_key.contains_key(&key), "{key} has an output");
            continue;
        }
        let v = by_key[&key].value_json();
        assert_eq!(
            argmax(v["probabilities"].as_array().unwrap()),
            *class,
            "{key}"
        );
    }
    assert_order_kept(&outs);

    let (_, letters) = outputs_by_key(&broker, "pixels-dlq", bad.len());
    for &i in &bad {
        let letter = &letters[&format!("digit-{i}")];
        assert_eq!(letter.value, recs[i].value, "digit-{i}: value unchanged");
        assert_eq!(letter.header("trace"), Some(format!("t{i}")));
        assert_eq!(letter.header("dlq.stage").as_deref(), Some("model"));
        assert_eq!(
            letter.header("dlq.source.offset"),
            Some(coords[i].1.to_string())
        );
        let reason = letter.header("dlq.reason").unwrap();
        assert!(
            reason.contains("the model crashed on this input") && !reason.contains('\n'),
            "{reason}"
        );
    }
    broker.assert_committed_to_end("model-dlq", "pixels", 2);

    // Without a dead-letter topic, `--on-error stop` fails on the first such record, after
    // committing everything before it in its partition.
    broker.create_topic("predictions-stop", 2);
    let out = streamtract(&run_args(
        &broker,
        "pixels",
        "predictions-stop",
        "models/digits_embedding.onnx",
        &["--until-end", "--on-error", "stop", "--group", "model-stop"],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: stopping on a record the model failed on (on_error = stop)"),
        "{stderr}"
    );
    let committed = broker.committed("model-stop", "pixels", 2);
    let first_bad: BTreeMap<i32, i64> = bad.iter().rev().map(|&i| coords[i]).collect();
    for (p, offset) in first_bad {
        let c = committed[&p].unwrap_or(0);
        assert!(
            c <= offset,
            "partition {p}: committed {c} past the bad record at {offset}"
        );
    }
}

/// `--log-format json`: every stderr line is one JSON object with `timestamp`, `level`,
/// `target` and `message`, and the event fields (here a bad record's coordinates, stage and
/// reason, and the final summary) at the top level.
#[test]
fn json_logs_are_one_object_per_line_with_event_fields() {
    let broker = Broker::start("json_logs");
    broker.create_topic("pixels", 1);
    broker.create_topic("predictions", 1);
    let good = csv_line(&dataset("digits.csv")[0].1);
    broker.produce(
        "pixels",
        &[
            Rec::kv("ok-1", good.clone()),
            Rec::kv("short", "1,2,3"),
            Rec::kv("ok-2", good),
        ],
    );
    let stderr = run_ok(&run_args(
        &broker,
        "pixels",
        "predictions",
        "models/digits_mlp.onnx",
        &["--until-end", "--log-format", "json"],
    ));
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for line in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(line.get(field).is_some(), "no `{field}` in {line}");
        }
    }
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no `{message}` line in {stderr}"))
    };
    let bad = find("bad record");
    assert_eq!(bad["level"], "WARN");
    assert_eq!(bad["topic"], "pixels");
    assert_eq!(bad["partition"], 0);
    assert_eq!(bad["offset"], 1);
    assert_eq!(bad["stage"], "decode");
    assert!(
        bad["reason"]
            .as_str()
            .unwrap()
            .contains("expected 64 values"),
        "{bad}"
    );
    let ready = find("pipeline ready");
    assert!(
        ready["sha256"].as_str().is_some_and(|s| s.len() == 64),
        "{ready}"
    );
    assert!(ready["model_load_ms"].as_u64().is_some(), "{ready}");
    // The MLP has one plan for every batch size.
    assert_eq!(ready["compiled_batch_sizes"], "[]", "{ready}");
    let done = find("run finished");
    assert_eq!(done["records_in"], 3);
    assert_eq!(done["records_out"], 2);
    assert_eq!(done["rejected"], 1);
    // End-to-end latency, record timestamp to acknowledged output: the records were produced
    // before the run, so it is above zero, and the percentiles are ordered.
    let ms = |field: &str| {
        done[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field}: {done}"))
    };
    assert!(ms("latency_p50_ms") > 0.0, "{done}");
    assert!(ms("latency_p50_ms") <= ms("latency_p99_ms"), "{done}");
    assert!(ms("latency_p99_ms") <= ms("latency_max_ms"), "{done}");

    // A fatal error is a JSON line too.
    let out = streamtract(&[
        "run",
        "--log-format",
        "json",
        "--brokers",
        &broker.addr,
        "--input",
        "pixels",
        "--output",
        "predictions",
        "--model",
        "models/no_such_model.onnx",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last: Value = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "ERROR");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("no_such_model.onnx"),
        "{last}"
    );
}
