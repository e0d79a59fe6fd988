//! What an operator sees: the metrics endpoint scraped with an independent HTTP client
//! (Python's urllib) while a pipeline runs, `/healthz` and `/readyz` as the pipeline goes from
//! starting (broker down) to ready (connected, assigned, model loaded) to stopped.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{argmax, digits, free_port, http_get, samples, sha_prefix, tf_classes, total};
use common::{wait_for, Broker, Rec};

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
    let rows = digits();
    let recs: Vec<Rec> = (0..600)
        .map(|i| {
            if i % 100 == 7 {
                Rec::kv(&format!("k{i}"), "not,a,digit")
            } else {
                Rec::kv(&format!("k{i}"), rows[i % rows.len()].1.as_str())
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
                && total(&text, "streamtract_end_to_end_seconds_count") >= 600.0
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
    // Measured when the broker acknowledges an output or a dead letter: all 600 records.
    assert_eq!(
        total(&text, "streamtract_end_to_end_seconds_count"),
        600.0,
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

/// Every digits row as a record keyed `k<row>` with the 64 pixel values as CSV.
fn digit_records() -> Vec<Rec> {
    digits()
        .iter()
        .enumerate()
        .map(|(i, (_, pixels))| Rec::kv(&format!("k{i}"), pixels.as_str()))
        .collect()
}

/// Replaces `path` the way deployment tools do: write a new file next to it, rename over it.
fn replace_file(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Replaces the model file mid-run (MLP → CNN), then with a broken file, then sends SIGHUP:
/// outputs before and after the swap carry the two models' SHA-256 and their predictions,
/// the broken file is rejected (twice: once found by the file check, once on SIGHUP) and the
/// CNN keeps serving; no record is lost or duplicated and per-partition order holds.
#[test]
fn replacing_the_model_file_mid_run_swaps_models_between_batches() {
    let broker = Broker::start("reload");
    broker.create_topic("pixels", 2);
    broker.create_topic("predictions", 2);
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join(format!("target/tmp/reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model_path = dir.join("model.onnx");
    let mlp = std::fs::read(root.join("models/digits_mlp.onnx")).unwrap();
    let cnn = std::fs::read(root.join("models/digits_cnn.onnx")).unwrap();
    replace_file(&model_path, &mlp);
    let sha = |name: &str| {
        streamtract::model::Model::load(root.join("models").join(name))
            .unwrap()
            .sha256()
            .to_string()
    };
    let (mlp_sha, cnn_sha) = (sha("digits_mlp.onnx"), sha("digits_cnn.onnx"));

    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_streamtract"))
            .args(["run", "--brokers", &broker.addr, "--input", "pixels"])
            .args([
                "--output",
                "predictions",
                "--model",
                model_path.to_str().unwrap(),
            ])
            .args(["--model-check-interval-ms", "300", "--group", "reload"])
            .current_dir(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let log = std::sync::Arc::clone(&log);
        let stderr = child.0.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                log.lock().unwrap().push(line);
            }
        });
    }
    let lines_with = |text: &str| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(text))
            .count()
    };
    let rows = digits();
    let produce_phase = |phase: usize| {
        let recs: Vec<Rec> = (0..500)
            .map(|i| Rec::kv(&format!("p{phase}-{i}"), rows[phase * 500 + i].1.as_str()))
            .collect();
        broker.produce("pixels", &recs);
    };
    wait_for("pipeline ready", Duration::from_secs(60), || {
        lines_with("pipeline ready") == 1
    });

    produce_phase(0);
    let outs = broker.consume("predictions", 500, Duration::from_secs(60));
    assert_eq!(outs.len(), 500, "phase 0 outputs");

    // Phase 1 is produced while the swap happens: its records may go to either model.
    replace_file(&model_path, &cnn);
    produce_phase(1);
    wait_for("the CNN to be swapped in", Duration::from_secs(30), || {
        lines_with("model reloaded") == 1
    });

    replace_file(&model_path, b"this is not an ONNX model");
    wait_for(
        "the broken file to be rejected",
        Duration::from_secs(30),
        || lines_with("model reload failed") == 1,
    );
    Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap();
    wait_for(
        "SIGHUP to retry and reject it",
        Duration::from_secs(30),
        || lines_with("model reload failed") == 2,
    );
    produce_phase(2);

    let outs = broker.consume_with_extra_wait(
        "predictions",
        1500,
        Duration::from_secs(60),
        Duration::from_secs(2),
    );
    assert_eq!(outs.len(), 1500, "every record exactly once");
    let (mlp_tf, cnn_tf) = (tf_classes("digits_mlp"), tf_classes("digits_cnn"));
    let mut seen = std::collections::HashSet::new();
    let mut last: BTreeMap<(i32, String), i64> = BTreeMap::new();
    // Per source partition in offset order, the model only ever changes from MLP to CNN once.
    let mut by_source: BTreeMap<(String, i64), bool> = BTreeMap::new();
    let mut sorted = outs.clone();
    sorted.sort_by_key(|o| (o.partition, o.offset));
    for o in &sorted {
        let key = o.key_str().unwrap();
        assert!(seen.insert(key.clone()), "two outputs for {key}");
        let (phase, i) = key[1..].split_once('-').unwrap();
        let row: usize = phase.parse::<usize>().unwrap() * 500 + i.parse::<usize>().unwrap();
        let class = argmax(o.value_json()["probabilities"].as_array().unwrap());
        let source = o.source();
        let sha = source.model.as_str();
        let is_cnn = sha == sha_prefix(&cnn_sha);
        assert!(
            is_cnn || sha == sha_prefix(&mlp_sha),
            "{key}: unknown model {sha}"
        );
        match phase {
            "0" => assert!(!is_cnn, "{key}: produced before the swap"),
            "2" => assert!(is_cnn, "{key}: produced after the swap"),
            _ => {}
        }
        let want_class = if is_cnn { cnn_tf[row] } else { mlp_tf[row] };
        assert_eq!(
            class, want_class,
            "{key}: output is not from the model it names"
        );
        let (src_p, src_o) = (source.partition.to_string(), source.offset);
        if let Some(prev) = last.insert((o.partition, src_p.clone()), src_o) {
            assert!(src_o > prev, "{key}: order not kept");
        }
        by_source.insert((src_p, src_o), is_cnn);
    }
    let mut previous: BTreeMap<String, bool> = BTreeMap::new();
    for ((p, o), is_cnn) in by_source {
        if let Some(was_cnn) = previous.insert(p.clone(), is_cnn) {
            assert!(
                !was_cnn || is_cnn,
                "partition {p} offset {o}: back to the old model"
            );
        }
    }
    assert_eq!(
        lines_with("model reloaded"),
        1,
        "the broken file never served"
    );

    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(child.0.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// On a terminal, a bounded run shows records done of the total, the rate and the time left
/// (run under `script`, which gives the process a pseudo-terminal). With stderr piped, as in
/// every other test here, nothing of it appears (the JSON-log test checks every line).
#[test]
fn bounded_runs_show_progress_on_a_terminal() {
    let broker = Broker::start("progress");
    broker.create_topic("pixels", 1);
    broker.create_topic("predictions", 1);
    let recs = digit_records();
    broker.produce("pixels", &recs);
    let command = format!(
        "{} run --brokers {} --input pixels --output predictions --model models/digits_mlp.onnx --until-end",
        env!("CARGO_BIN_EXE_streamtract"),
        broker.addr
    );
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run `script` (util-linux / bsdutils) to get a pseudo-terminal");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let total = recs.len();
    assert!(
        text.contains(&format!(" / {total} records (")) && text.contains("records/s"),
        "{text}"
    );
    assert!(
        text.contains(&format!("done: {total} records in")),
        "{text}"
    );
}

/// A shadow model scores the same batches: its outputs (with its own SHA-256) go to their own
/// topic and the run reports how often its top class differs from the main model's, which
/// must equal how often TensorFlow's two models differ on the same rows.
#[test]
fn a_shadow_model_scores_the_same_records_and_disagreements_are_counted() {
    let broker = Broker::start("shadow");
    broker.create_topic("pixels", 2);
    broker.create_topic("predictions", 2);
    broker.create_topic("shadow-predictions", 1);
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let recs = digit_records();
    broker.produce("pixels", &recs);
    let run_with_shadow = |shadow_model: &str| {
        Command::new(env!("CARGO_BIN_EXE_streamtract"))
            .args(["run", "--brokers", &broker.addr, "--input", "pixels"])
            .args(["--output", "predictions", "--until-end"])
            .args([
                "--model",
                "models/digits_mlp.onnx",
                "--shadow-model",
                shadow_model,
            ])
            .args(["--shadow-output", "shadow-predictions"])
            .current_dir(&root)
            .output()
            .unwrap()
    };
    let out = run_with_shadow("models/digits_cnn.onnx");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let (mlp_tf, cnn_tf) = (tf_classes("digits_mlp"), tf_classes("digits_cnn"));
    let differ = mlp_tf.iter().zip(&cnn_tf).filter(|(a, b)| a != b).count();
    assert!(
        differ > 0,
        "the two models must differ somewhere for this test to mean something"
    );
    assert!(
        stderr.contains(&format!(
            "shadow model: {} rows scored, top class differs from the model's on {differ}",
            recs.len()
        )),
        "{stderr}"
    );
    let cnn_sha = streamtract::model::Model::load(root.join("models/digits_cnn.onnx"))
        .unwrap()
        .sha256()
        .to_string();
    let shadow = broker.consume_with_extra_wait(
        "shadow-predictions",
        recs.len(),
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    assert_eq!(shadow.len(), recs.len());
    for o in &shadow {
        let key = o.key_str().unwrap();
        let i: usize = key[1..].parse().unwrap();
        assert_eq!(o.source().model, sha_prefix(&cnn_sha), "{key}");
        assert_eq!(
            argmax(o.value_json()["probabilities"].as_array().unwrap()),
            cnn_tf[i],
            "{key}"
        );
    }
    let main = broker.consume("predictions", recs.len(), Duration::from_secs(60));
    assert_eq!(main.len(), recs.len());

    // A shadow model whose inputs differ from the model's is refused before anything runs.
    let out = run_with_shadow("models/breast_cancer.onnx");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`shadow_model`"), "{stderr}");
}
