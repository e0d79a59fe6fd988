//! Avro input and output end to end: records written by confluent-kafka's own AvroSerializer
//! (schemas registered through its SchemaRegistryClient) on a real broker (tansu), a schema
//! registry that is our small in-memory server (scripts/schema-registry.py: no Schema Registry
//! server can be installed here; confluent-kafka's client accepts it unchanged), outputs
//! compared with the CSV path's outputs on the same digits, and our Avro output read back by
//! confluent-kafka's AvroDeserializer.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::{Broker, Consumed, Rec};
use serde_json::{json, Value};

const MODEL: &str = "models/digits_mlp.onnx";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn schema(name: &str) -> String {
    root()
        .join("tests/avro-schemas")
        .join(name)
        .display()
        .to_string()
}

/// The first `n` rows of data/digits.csv: (label, 64 pixel values).
fn digits(n: usize) -> Vec<(usize, Vec<f32>)> {
    common::digits()
        .into_iter()
        .take(n)
        .map(|(label, line)| (label, line.split(',').map(|f| f.parse().unwrap()).collect()))
        .collect()
}

/// The schema registry of scripts/schema-registry.py, stopped when dropped.
struct Registry {
    url: String,
    child: Child,
}

impl Registry {
    fn start(auth: Option<(&str, &str)>) -> Registry {
        let mut cmd = Command::new(common::python());
        cmd.arg(root().join("scripts/schema-registry.py"));
        if let Some((user, password)) = auth {
            cmd.args(["--user", user, "--password", password]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start scripts/schema-registry.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("schema-registry.py said: {line}"))
            .to_string();
        Registry { url, child }
    }

    /// A request to the registry's test controls (no auth).
    fn control(&self, path: &str, body: Value) -> Value {
        let addr = self.url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        let body = body.to_string();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let (_, json) = answer.split_once("\r\n\r\n").unwrap();
        serde_json::from_str(json).unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Produces Avro records with confluent-kafka's AvroSerializer; each item is
/// `{"key": ..., "value": {...}, "schema": index}` or `{"key": ..., "raw": base64}`.
/// Returns the schema id of each record (None for raw values without the frame).
fn produce_avro(
    broker: &Broker,
    registry: Option<&Registry>,
    topic: &str,
    schemas: &[&str],
    items: &[Value],
    extra: &[&str],
) -> Vec<Option<u64>> {
    let mut args: Vec<String> = vec!["--topic".into(), topic.into()];
    if let Some(r) = registry {
        args.extend(["--registry".into(), r.url.clone()]);
    }
    for s in schemas {
        args.extend(["--schema".into(), schema(s)]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stdin: String = items.iter().map(|i| format!("{i}\n")).collect();
    let lines = broker.client().run_json("produce-avro", &args, &stdin);
    assert_eq!(lines.len(), items.len());
    lines.iter().map(|l| l["schema_id"].as_u64()).collect()
}

fn key(i: usize) -> String {
    B64.encode(format!("r{i}"))
}

fn run(broker: &Broker, input: &str, output: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "--brokers",
        &broker.addr,
        "--input",
        input,
        "--output",
        output,
        "--model",
        MODEL,
        "--until-end",
    ];
    args.extend_from_slice(extra);
    common::streamtract_within(&args, Duration::from_secs(180))
}

fn run_ok(broker: &Broker, input: &str, output: &str, extra: &[&str]) -> String {
    let out = run(broker, input, output, extra);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "streamtract failed:\n{stderr}");
    stderr
}

/// Exactly `count` records of `topic` (no more appear), by key.
fn by_key(broker: &Broker, topic: &str, count: usize) -> HashMap<String, Consumed> {
    let outs = broker.consume_with_extra_wait(
        topic,
        count,
        Duration::from_secs(60),
        Duration::from_secs(2),
    );
    assert_eq!(outs.len(), count, "records on {topic}");
    outs.into_iter()
        .map(|o| (o.key_str().expect("keyed"), o))
        .collect()
}

/// The JSON outputs of the CSV path for the first `n` digits, by key: the reference every
/// Avro path must reproduce.
fn csv_reference(broker: &Broker, n: usize) -> HashMap<String, Consumed> {
    broker.create_topic("pixels-csv", 1);
    broker.create_topic("preds-csv", 1);
    let recs: Vec<Rec> = digits(n)
        .iter()
        .enumerate()
        .map(|(i, (_, px))| {
            let line: Vec<String> = px.iter().map(|v| v.to_string()).collect();
            Rec::kv(&format!("r{i}"), line.join(","))
        })
        .collect();
    broker.produce("pixels-csv", &recs);
    run_ok(broker, "pixels-csv", "preds-csv", &[]);
    by_key(broker, "preds-csv", n)
}

/// Schema evolution in one topic: v1 records and v2 records (two added fields with defaults)
/// interleaved, each read with its own writer schema; every output equals the CSV path's, byte
/// for byte. Then the same topic with Avro output in the Confluent wire format, read back by
/// AvroDeserializer: same probabilities, the key, the top classes.
#[test]
fn confluent_avro_v1_and_v2_records_give_the_csv_outputs_and_our_avro_output_reads_back() {
    let broker = Broker::start("avro-evolution");
    let registry = Registry::start(None);
    let n = 300;
    let reference = csv_reference(&broker, n);
    broker.create_topic("pixels-avro", 3);
    broker.create_topic("preds-avro", 3);
    let items: Vec<Value> = digits(n)
        .iter()
        .enumerate()
        .map(|(i, (_, px))| {
            if i % 2 == 0 {
                json!({"key": key(i), "schema": 0, "value": {"pixels": px}})
            } else {
                json!({"key": key(i), "schema": 1,
                       "value": {"pixels": px, "sensor": format!("s{i}"), "gain": 1.5}})
            }
        })
        .collect();
    let ids = produce_avro(
        &broker,
        Some(&registry),
        "pixels-avro",
        &["digits_v1.avsc", "digits_v2.avsc"],
        &items,
        &[],
    );
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(
        distinct.len(),
        2,
        "v1 and v2 have their own ids: {distinct:?}"
    );

    let avro = [
        "--format",
        "confluent-avro",
        "--schema-registry",
        &registry.url,
    ];
    run_ok(&broker, "pixels-avro", "preds-avro", &avro);
    let outputs = by_key(&broker, "preds-avro", n);
    for (k, reference) in &reference {
        assert_eq!(
            outputs[k].value_str(),
            reference.value_str(),
            "{k}: Avro and CSV outputs differ"
        );
    }

    broker.create_topic("preds-avro-out", 1);
    let mut args = avro.to_vec();
    args.extend(["--output-format", "confluent-avro", "--top-k", "2"]);
    run_ok(&broker, "pixels-avro", "preds-avro-out", &args);
    let read = broker.client().run_json(
        "consume-avro",
        &[
            "--topic",
            "preds-avro-out",
            "--registry",
            &registry.url,
            "--count",
            &n.to_string(),
        ],
        "",
    );
    assert_eq!(read.len(), n);
    for r in &read {
        let k = String::from_utf8(B64.decode(r["key"].as_str().unwrap()).unwrap()).unwrap();
        let value = &r["value"];
        assert_eq!(
            value["key"], r["key"],
            "the Avro record carries the input key"
        );
        let expected = reference[&k].value_json();
        let (ours, theirs) = (
            value["probabilities"].as_array().expect("probabilities"),
            expected["probabilities"].as_array().unwrap(),
        );
        assert_eq!(ours.len(), 10);
        for (a, b) in ours.iter().zip(theirs) {
            // Avro floats are float32, as the model's outputs; JSON writes their shortest text.
            assert_eq!(
                a.as_f64().unwrap() as f32,
                b.as_f64().unwrap() as f32,
                "{k}"
            );
        }
        let top = value["top_k"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(
            top[0]["index"].as_u64().unwrap() as usize,
            common::argmax(theirs)
        );
    }
    assert!(
        read.iter().all(|r| r["schema_id"] == read[0]["schema_id"]),
        "one registered output schema"
    );
}

/// Bare Avro datums (written by fastavro) with 64 scalar fields of mixed types, picked and
/// ordered into the feature vector by `--fields`: the CSV path's outputs again.
#[test]
fn bare_avro_scalar_fields_picked_by_fields_give_the_csv_outputs() {
    let broker = Broker::start("avro-bare");
    let n = 200;
    let reference = csv_reference(&broker, n);
    broker.create_topic("pixels-bare", 2);
    broker.create_topic("preds-bare", 2);
    let items: Vec<Value> = digits(n)
        .iter()
        .enumerate()
        .map(|(i, (label, px))| {
            let mut record = serde_json::Map::new();
            record.insert("id".into(), json!(format!("r{i}")));
            for (j, v) in px.iter().enumerate() {
                // int, long, float, double, ["null", int]: whole numbers in the digits data.
                let value = if j % 5 == 2 || j % 5 == 3 {
                    json!(v)
                } else {
                    json!(*v as i64)
                };
                record.insert(format!("p{j}"), value);
            }
            record.insert("label".into(), json!(format!("d{label}")));
            json!({"key": key(i), "value": record})
        })
        .collect();
    produce_avro(
        &broker,
        None,
        "pixels-bare",
        &["digits_flat.avsc"],
        &items,
        &["--bare"],
    );
    let fields: Vec<String> = (0..64).map(|j| format!("p{j}")).collect();
    let fields = fields.join(",");
    let flat = schema("digits_flat.avsc");
    let args = ["--format", "avro", "--schema", &flat, "--fields", &fields];
    run_ok(&broker, "pixels-bare", "preds-bare", &args);
    let outputs = by_key(&broker, "preds-bare", n);
    for (k, reference) in &reference {
        assert_eq!(outputs[k].value_str(), reference.value_str(), "{k}");
    }

    // Without `fields` no record field is named like the model input: a start-up error that
    // lists both.
    let out = run(
        &broker,
        "pixels-bare",
        "preds-bare",
        &["--format", "avro", "--schema", &flat],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("model inputs: pixels [64]"), "{stderr}");
    assert!(stderr.contains("record fields: id, p0, p1"), "{stderr}");
}

/// A Confluent frame with schema `id`.
fn frame(id: u32) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend_from_slice(&id.to_be_bytes());
    v
}

fn raw(i: usize, bytes: &[u8]) -> Value {
    json!({"key": key(i), "raw": B64.encode(bytes)})
}

/// 64 pixels of digit `i`, as a v1 record.
fn v1(i: usize, px: &[f32]) -> Value {
    json!({"key": key(i), "schema": 0, "value": {"pixels": px}})
}

/// The first `n` digits as v1 records, keyed `r0`, `r1`, ….
fn v1_items(n: usize) -> Vec<Value> {
    digits(n)
        .iter()
        .enumerate()
        .map(|(i, (_, px))| v1(i, px))
        .collect()
}

/// Every kind of bad record, among good ones, through a registry that needs basic auth: each
/// bad record becomes a dead letter with its reason, every good one an output, and the
/// group's positions are committed past all of them. Without the credentials the run does not
/// start.
#[test]
fn bad_avro_records_become_dead_letters_with_the_reason() {
    let broker = Broker::start("avro-bad");
    let registry = Registry::start(Some(("alice", "s3cret")));
    broker.create_topic("pixels", 2);
    broker.create_topic("preds", 2);
    broker.create_topic("pixels-dlq", 1);
    let mut items = v1_items(100);
    // A v1 datum is [0x80, 0x01] (64, zig-zag), 64 floats, [0]: cut inside the floats.
    let mut truncated = frame(1);
    truncated.extend_from_slice(&[0x80, 0x01]);
    truncated.extend_from_slice(&[0u8; 100]);
    let mut unknown = frame(999);
    unknown.extend_from_slice(&[0x02, 0, 0, 0, 0, 0]);
    let bad = [
        (raw(100, br#"{"pixels": [1]}"#), "not the magic byte 0x00"),
        (
            raw(101, &unknown),
            "schema id 999: GET /schemas/ids/999: not found in the schema registry (404)",
        ),
        (raw(102, &truncated), "invalid Avro"),
        (raw(103, &[0, 0, 1]), "shorter than the 5-byte header"),
        (
            json!({"key": key(104), "schema": 1, "value": {"pixels": null}}),
            "Avro field `pixels` is null",
        ),
        (
            v1(105, &[1.0; 10]),
            "found an array of 10 where 64 were expected",
        ),
    ];
    items.extend(bad.iter().map(|(item, _)| item.clone()));
    produce_avro(
        &broker,
        Some(&registry),
        "pixels",
        &["digits_v1.avsc", "digits_nullable.avsc"],
        &items,
        &["--registry-auth", "alice:s3cret"],
    );
    let password = std::env::temp_dir().join(format!("avro-pw-{}", std::process::id()));
    std::fs::write(&password, "s3cret\n").unwrap();
    let password = password.display().to_string();
    let registry_args = [
        "--format",
        "confluent-avro",
        "--schema-registry",
        &registry.url,
        "--schema-registry-user",
        "alice",
    ];

    // Wrong credentials: a start-up error naming the 401, nothing read.
    let mut args = registry_args.to_vec();
    args.extend(["--connect-timeout", "1"]);
    let out = run(&broker, "pixels", "preds", &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("answered 401"), "{stderr}");

    let mut args = registry_args.to_vec();
    args.extend(["--schema-registry-password-file", &password]);
    args.extend(["--dlq", "pixels-dlq", "--group", "avro-bad"]);
    let stderr = run_ok(&broker, "pixels", "preds", &args);
    assert!(
        stderr.contains("106 records in, 100 outputs written, 6 rejected (6 dead letters written)"),
        "{stderr}"
    );
    by_key(&broker, "preds", 100);
    let letters = by_key(&broker, "pixels-dlq", bad.len());
    for (item, reason) in &bad {
        let k = String::from_utf8(B64.decode(item["key"].as_str().unwrap()).unwrap()).unwrap();
        let letter = &letters[&k];
        assert_eq!(letter.header("dlq.stage").as_deref(), Some("decode"));
        let got = letter.header("dlq.reason").unwrap();
        assert!(got.contains(reason), "{k}: `{got}` lacks `{reason}`");
    }
    broker.assert_committed_to_end("avro-bad", "pixels", 2);
}

/// The registry fails (503) for the first seconds of the run: records wait, are retried, and
/// every one gets its output; none is dead-lettered.
#[test]
fn a_registry_outage_mid_stream_delays_records_and_loses_none() {
    let broker = Broker::start("avro-outage");
    let registry = Registry::start(None);
    broker.create_topic("pixels", 2);
    broker.create_topic("preds", 2);
    broker.create_topic("pixels-dlq", 1);
    let items = v1_items(100);
    produce_avro(
        &broker,
        Some(&registry),
        "pixels",
        &["digits_v1.avsc"],
        &items,
        &[],
    );
    registry.control(
        "/_test/fail",
        json!({"status": 503, "seconds": 3, "path": "/schemas/ids"}),
    );
    let args = [
        "--format",
        "confluent-avro",
        "--schema-registry",
        &registry.url,
        "--dlq",
        "pixels-dlq",
    ];
    let stderr = run_ok(&broker, "pixels", "preds", &args);
    assert!(
        stderr.contains("answered 503"),
        "the outage was seen: {stderr}"
    );
    assert!(
        stderr.contains("100 records in, 100 outputs written, 0 rejected"),
        "{stderr}"
    );
    by_key(&broker, "preds", 100);
    let letters = broker.consume_with_extra_wait(
        "pixels-dlq",
        0,
        Duration::from_secs(5),
        Duration::from_secs(1),
    );
    assert!(letters.is_empty(), "no dead letters: {letters:?}");
}

/// A registry that keeps answering 401 or 500, or drops the connection, past
/// `--schema-registry-timeout`: the records become dead letters naming the failure. Once it
/// answers again, the same records decode.
#[test]
fn registry_failures_past_the_timeout_become_dead_letters() {
    let broker = Broker::start("avro-registry-down");
    let registry = Registry::start(None);
    broker.create_topic("pixels", 1);
    let items = v1_items(20);
    produce_avro(
        &broker,
        Some(&registry),
        "pixels",
        &["digits_v1.avsc"],
        &items,
        &[],
    );
    for (status, reason) in [
        (401, "answered 401"),
        (500, "answered 500"),
        (0, "unreachable"),
    ] {
        let (out, dlq) = (format!("preds-{status}"), format!("dlq-{status}"));
        broker.create_topic(&out, 1);
        broker.create_topic(&dlq, 1);
        registry.control(
            "/_test/fail",
            json!({"status": status, "count": 1000, "path": "/schemas/ids"}),
        );
        let args = [
            "--format",
            "confluent-avro",
            "--schema-registry",
            &registry.url,
            "--schema-registry-timeout",
            "1",
            "--dlq",
            &dlq,
        ];
        let stderr = run_ok(&broker, "pixels", &out, &args);
        assert!(
            stderr.contains(
                "20 records in, 0 outputs written, 20 rejected (20 dead letters written)"
            ),
            "{status}: {stderr}"
        );
        for letter in by_key(&broker, &dlq, 20).values() {
            let got = letter.header("dlq.reason").unwrap();
            assert!(got.starts_with("schema id 1: "), "{got}");
            assert!(got.contains(reason), "{status}: `{got}` lacks `{reason}`");
        }
    }
    registry.control("/_test/fail", json!({}));
    broker.create_topic("preds-ok", 1);
    let args = [
        "--format",
        "confluent-avro",
        "--schema-registry",
        &registry.url,
    ];
    run_ok(&broker, "pixels", "preds-ok", &args);
    by_key(&broker, "preds-ok", 20);
}

/// No registry listening: the run stops at start-up with the address and the error, before
/// it connects to Kafka.
#[test]
fn an_unreachable_registry_is_a_startup_error() {
    let url = format!("http://127.0.0.1:{}", common::free_port());
    let out = common::streamtract_within(
        &[
            "run",
            "--brokers",
            "127.0.0.1:1",
            "--input",
            "pixels",
            "--output",
            "preds",
            "--model",
            MODEL,
            "--format",
            "confluent-avro",
            "--schema-registry",
            &url,
            "--connect-timeout",
            "1",
        ],
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a start-up error: {stderr}");
    assert!(
        stderr.contains(&format!("schema registry {url} unreachable")),
        "{stderr}"
    );
}
