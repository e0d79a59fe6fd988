//! End-to-end smoke run of one streamtract binary: TensorFlow's own sample inputs for the
//! digits MLP and CNN go into a real broker (written by confluent-kafka), `streamtract run`
//! scores them, and every output row must equal TensorFlow's reference output to 1e-4.
//!
//! By default the binary is the one cargo built for this test run. The emulated ARM check
//! (scripts/test-emulated.sh) runs the same test with
//! `STREAMTRACT_SMOKE_BIN=target/aarch64-unknown-linux-musl/release/streamtract` and
//! `STREAMTRACT_TEST_RUNNER=qemu-aarch64-static` and `STREAMTRACT_SMOKE_ARCH=aarch64`: the ARM binary under qemu-user talks to the
//! x86_64 broker on loopback.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{Broker, Rec};
use serde_json::Value;

const TOLERANCE: f64 = 1e-4;

/// The binary under test.
fn binary() -> PathBuf {
    let bin = std::env::var_os("STREAMTRACT_SMOKE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_streamtract")));
    assert!(
        bin.is_file(),
        "STREAMTRACT_SMOKE_BIN {} is not a file",
        bin.display()
    );
    bin
}

/// Runs the binary under test with `args`, killed after `limit`; returns its exit status and
/// stderr.
fn run_binary(args: &[&str], limit: Duration) -> (std::process::ExitStatus, String) {
    let bin = binary();
    let child = common::command_for(&bin)
        .args(args)
        .current_dir(common::repo_root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let out = common::output_within(child, limit);
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Rows of a reference tensor (`{"shape": [...], "data": [...]}`), flattened per row.
fn rows(tensor: &Value) -> Vec<Vec<f64>> {
    let shape: Vec<usize> = tensor["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data: Vec<f64> = tensor["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let per_row = shape[1..].iter().product::<usize>();
    data.chunks(per_row).map(<[f64]>::to_vec).collect()
}

/// Feeds `models/NAME.reference.json`'s inputs through the binary; checks every output.
fn check_against_reference(broker: &Broker, name: &str) {
    let path = common::repo_root().join(format!("models/{name}.reference.json"));
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let (input_name, input) = reference["inputs"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    let (output_name, output) = reference["outputs"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    let inputs = rows(input);
    let expected = rows(output);
    assert_eq!(inputs.len(), expected.len());

    let (in_topic, out_topic) = (format!("{name}-in"), format!("{name}-out"));
    broker.create_topic(&in_topic, 1);
    broker.create_topic(&out_topic, 1);
    let recs: Vec<Rec> = inputs
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let csv: Vec<String> = row.iter().map(|v| v.to_string()).collect();
            Rec::kv(&format!("row-{i}"), csv.join(","))
        })
        .collect();
    broker.produce(&in_topic, &recs);

    let model = format!("models/{name}.onnx");
    let args = [
        "run",
        "--brokers",
        &broker.addr,
        "--input",
        &in_topic,
        "--output",
        &out_topic,
        "--model",
        &model,
        "--until-end",
    ];
    // Emulation runs the whole binary, model compilation included, 10-50x slower.
    let (status, stderr) = run_binary(&args, Duration::from_secs(600));
    assert!(
        status.success(),
        "streamtract run on {name} ({input_name}) failed ({status}):\n{stderr}"
    );
    // The start-up log names the kernel family, of the architecture under test (tract's
    // name for 32-bit ARM is `arm`): this proves which binary ran, and that it ran its own
    // architecture's kernels.
    let arch = std::env::var("STREAMTRACT_SMOKE_ARCH").unwrap_or(std::env::consts::ARCH.into());
    assert!(
        stderr.contains(&format!("kernels={arch} ")),
        "the start-up log should name {arch}'s kernel family:\n{stderr}"
    );

    let outs = broker.consume(&out_topic, expected.len(), Duration::from_secs(60));
    assert_eq!(
        outs.len(),
        expected.len(),
        "one output per input for {name}"
    );
    let mut by_key: HashMap<String, Vec<f64>> = HashMap::new();
    for o in &outs {
        let values = o.value_json()[output_name.as_str()]
            .as_array()
            .unwrap_or_else(|| panic!("output has no `{output_name}`: {:?}", o.value_str()))
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        by_key.insert(o.key_str().unwrap(), values);
    }
    for (i, want) in expected.iter().enumerate() {
        let got = &by_key[&format!("row-{i}")];
        assert_eq!(got.len(), want.len(), "{name} row {i}");
        for (j, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= TOLERANCE,
                "{name} row {i} value {j}: streamtract {g}, TensorFlow {w}"
            );
        }
    }
}

#[test]
fn digits_mlp_and_cnn_outputs_equal_tensorflow_references() {
    let broker = Broker::start("smoke");
    check_against_reference(&broker, "digits_mlp");
    check_against_reference(&broker, "digits_cnn");
}
