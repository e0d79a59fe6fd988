//! Parity with TensorFlow: every model in `models/` is run by tract on the sample inputs that
//! TensorFlow itself scored (`NAME.reference.json`, written by `models/make_models.py`), and every
//! output value must be within 1e-5 of TensorFlow's.

use std::path::Path;

mod common;

use serde_json::Value;
use streamtract::model::{Dim, GraphRewrites, Model, ModelOptions, Signature};
use tract_onnx::prelude::Tensor;

const TOLERANCE: f32 = 1e-5;

fn models_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models"))
}

fn tensor_of(v: &Value) -> (Vec<usize>, Vec<f32>) {
    let shape = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    (shape, data)
}

fn check_model(name: &str) {
    check_model_against(name, name);
}

/// Runs `models/NAME.onnx` on the inputs of `models/REFERENCE.reference.json` and compares.
fn check_model_against(name: &str, reference: &str) {
    let model = Model::load(models_dir().join(format!("{name}.onnx"))).unwrap();
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(models_dir().join(format!("{reference}.reference.json"))).unwrap(),
    )
    .unwrap();
    let sig = model.signature().clone();
    let mut inputs = Vec::new();
    for spec in &sig.inputs {
        let (shape, data) = tensor_of(&reference["inputs"][&spec.name]);
        assert!(
            matches!(spec.shape[0], Dim::Symbolic(_)),
            "{name}: batch dim of {spec} must be symbolic"
        );
        inputs.push(Tensor::from_shape(&shape, &data).unwrap());
    }
    // The reference rows, and the same rows five times over in one batch (160 rows: a model
    // compiled per batch size runs that in chunks, a dynamic one in one go).
    const COPIES: usize = 5;
    let repeated: Vec<Tensor> = inputs
        .iter()
        .map(|t| Tensor::stack_tensors(0, &vec![t.clone(); COPIES]).unwrap())
        .collect();
    compare(name, &sig, &reference, model.run(inputs).unwrap(), 1);
    compare(name, &sig, &reference, model.run(repeated).unwrap(), COPIES);
}

fn compare(name: &str, sig: &Signature, reference: &Value, outputs: Vec<Tensor>, copies: usize) {
    assert_eq!(outputs.len(), sig.outputs.len());
    for (spec, got) in sig.outputs.iter().zip(&outputs) {
        let (mut shape, once) = tensor_of(&reference["outputs"][&spec.name]);
        shape[0] *= copies;
        let want: Vec<f32> = once.repeat(copies);
        assert_eq!(
            got.shape(),
            shape.as_slice(),
            "{name}: output {} shape",
            spec.name
        );
        let got = got.to_plain_array_view::<f32>().unwrap();
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!(
            "{name}/{}: max abs diff vs TensorFlow = {max_diff:e}",
            spec.name
        );
        assert!(
            max_diff <= TOLERANCE,
            "{name}/{}: max abs diff {max_diff} > {TOLERANCE}",
            spec.name
        );
    }
}

#[test]
fn digits_mlp_matches_tensorflow() {
    check_model("digits_mlp");
}

#[test]
fn digits_cnn_matches_tensorflow() {
    check_model("digits_cnn");
}

/// The CNN with a constant-shape Flatten (`models/make_dynamic_cnn.py`): the same weights and
/// computation, so TensorFlow's outputs for `digits_cnn` hold. tract types it with a symbolic
/// batch; streamtract compiles it per batch size all the same, so that the graph rewrites
/// apply, and turns that off with them (`ModelOptions::graph_rewrites`).
#[test]
fn digits_cnn_dynamic_matches_tensorflow_and_gets_the_rewrites() {
    check_model_against("digits_cnn_dynamic", "digits_cnn");
    let path = models_dir().join("digits_cnn_dynamic.onnx");
    let load =
        |rewrites| Model::load_with(&path, &ModelOptions::default().graph_rewrites(rewrites));
    assert!(
        !load(GraphRewrites::On).unwrap().has_dynamic_batch(),
        "compiled per batch size"
    );
    assert!(
        load(GraphRewrites::Off).unwrap().has_dynamic_batch(),
        "dynamic"
    );
    // And the same through the binary's flag.
    let batch_line = |rewrites: &str| {
        let out = common::command_for(Path::new(env!("CARGO_BIN_EXE_streamtract")))
            .args([
                "inspect",
                "models/digits_cnn_dynamic.onnx",
                "--graph-rewrites",
                rewrites,
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .find(|l| l.starts_with("batch:"))
            .map(str::to_owned)
    };
    assert_eq!(
        batch_line("on").as_deref(),
        Some("batch:  compiled per batch size")
    );
    assert_eq!(batch_line("off").as_deref(), Some("batch:  dynamic"));
}

/// Pipelines warm a model up for their batch size: every plan a batch of that size or smaller
/// runs on is compiled before the first record, for models compiled per batch size.
#[test]
fn warming_up_compiles_every_size_a_batch_can_run_on() {
    let cnn = Model::load(models_dir().join("digits_cnn.onnx")).unwrap();
    assert!(!cnn.has_dynamic_batch());
    assert!(cnn.compiled_batch_sizes().is_empty());
    cnn.warm_up(5).unwrap();
    assert_eq!(cnn.compiled_batch_sizes(), [1, 2, 4, 8]);
    // Batches over 64 rows run in chunks of 64: no larger plan.
    cnn.warm_up(256).unwrap();
    assert_eq!(cnn.compiled_batch_sizes(), [1, 2, 4, 8, 16, 32, 64]);
    let mlp = Model::load(models_dir().join("digits_mlp.onnx")).unwrap();
    assert!(mlp.has_dynamic_batch());
    mlp.warm_up(256).unwrap();
    assert!(mlp.compiled_batch_sizes().is_empty());
}

#[test]
fn digits_embedding_matches_tensorflow() {
    check_model("digits_embedding");
}

/// TensorFlow refuses a pixel intensity outside the embedding table (make_models.py checks
/// that); tract must refuse it too, with an error rather than a panic or a made-up output.
#[test]
fn embedding_lookup_out_of_range_is_an_error() {
    let model = Model::load(models_dir().join("digits_embedding.onnx")).unwrap();
    let mut pixels = vec![0f32; 2 * 64];
    pixels[64 + 5] = 40.0;
    let err = model
        .run(vec![Tensor::from_shape(&[2, 64], &pixels).unwrap()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("the model crashed on this input"), "{err}");
    let ok = model.run(vec![Tensor::from_shape(&[1, 64], &pixels[..64]).unwrap()]);
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn breast_cancer_with_normalization_matches_tensorflow() {
    check_model("breast_cancer");
}

#[test]
fn wine_two_inputs_matches_tensorflow() {
    check_model("wine_two_inputs");
}

#[test]
fn every_model_has_a_parity_test() {
    let mut names: Vec<String> = std::fs::read_dir(models_dir())
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".onnx")
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "breast_cancer",
            "digits_cnn",
            "digits_cnn_dynamic",
            "digits_embedding",
            "digits_mlp",
            "wine_two_inputs"
        ]
    );
}

#[test]
fn signatures_are_read_from_the_graph() {
    let model = Model::load(models_dir().join("wine_two_inputs.onnx")).unwrap();
    let text = model.signature().to_string();
    assert!(text.contains("chemistry: float32[N, 9]"), "{text}");
    assert!(text.contains("color: float32[N, 4]"), "{text}");
    assert!(text.contains("probabilities: float32[N, 3]"), "{text}");
    assert_eq!(model.sha256().len(), 64);
}

#[test]
fn missing_model_file_is_a_clear_error() {
    let err = Model::load("models/no_such_model.onnx")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no_such_model.onnx") && err.contains("No such file"),
        "{err}"
    );
}
