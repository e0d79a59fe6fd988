//! Training without a broker: records in memory, the written ONNX model run by streamtract's
//! own runner (tract) against the framework's forward pass.

#![cfg(feature = "train")]

use std::sync::Arc;

use streamtract::codec::InputFormat;
use streamtract::dataset::{Label, SourceRecord};
use streamtract::model::Model;
use streamtract::train::{
    fit, Event, Head, MemoryRecords, RowFormat, Task, TrainOptions, Validation,
};
use tract_onnx::prelude::{tract_ndarray, IntoTensor};

fn records(path: &str, keep: impl Fn(usize) -> bool) -> Vec<SourceRecord> {
    let text = std::fs::read_to_string(path).expect("sample data is in the repository");
    text.lines()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .enumerate()
        .map(|(offset, (_, line))| SourceRecord {
            topic: Arc::from("memory"),
            partition: 0,
            offset: offset as i64,
            timestamp: Default::default(),
            key: None,
            value: Some(line.as_bytes().to_vec()),
            headers: Default::default(),
        })
        .collect()
}

fn features(records: &[SourceRecord]) -> (Vec<f32>, Vec<usize>) {
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for r in records {
        let text = std::str::from_utf8(r.value.as_deref().unwrap()).unwrap();
        let mut fields = text.split(',').map(|f| f.parse::<f32>().unwrap());
        labels.push(fields.next().unwrap() as usize);
        rows.extend(fields);
    }
    (rows, labels)
}

#[test]
fn a_trained_digits_model_runs_in_tract_as_in_the_framework() {
    let mut source = MemoryRecords {
        training: records("data/digits.csv", |i| i % 4 != 0),
        validation: records("data/digits.csv", |i| i % 4 == 0),
    };
    let rows = RowFormat::new(InputFormat::Csv { delimiter: b',' }, Label::CsvColumn(0));
    let mut options = TrainOptions::new(Task::Classify { classes: None })
        .hidden_layers([64, 32])
        .epochs(5)
        .seed(1);
    options.validation = Validation::Separate;
    let mut epochs = 0;
    let fitted = fit(&mut source, &rows, &options, &mut |e| {
        if let Event::Epoch(_) = e {
            epochs += 1
        }
        Ok(())
    })
    .expect("training runs");
    assert_eq!(epochs, 5);
    let last = fitted.history.epochs.last().unwrap();
    assert!(last.val_accuracy.unwrap() > 0.9, "{last:?}");
    assert_eq!(fitted.model.head, Head::Softmax);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("digits.onnx");
    fitted.model.write(&path).unwrap();
    let model = Model::load(&path).expect("tract loads the written model");
    let (x, _) = features(&source.validation);
    let worst = max_diff(&model, &fitted, x, &[64]);
    assert!(worst <= 1e-5, "tract and burn differ by {worst}");
}

/// `features.len()` values per row from `records`' CSV values (label first), as JSON objects
/// `{"x": [...], "y": label}` instead.
fn as_json(records: &[SourceRecord]) -> Vec<SourceRecord> {
    records
        .iter()
        .map(|r| {
            let text = std::str::from_utf8(r.value.as_deref().unwrap()).unwrap();
            let (label, rest) = text.split_once(',').unwrap();
            let x: Vec<f64> = rest.split(',').map(|f| f.parse().unwrap()).collect();
            let value = serde_json::json!({"x": x, "y": label.parse::<f64>().unwrap()});
            SourceRecord {
                value: Some(value.to_string().into_bytes()),
                ..r.clone()
            }
        })
        .collect()
}

/// The largest difference between tract's output of the written `model` and the framework's
/// forward pass, on rows `x` shaped `row` each.
fn max_diff(model: &Model, fitted: &streamtract::train::Fitted, x: Vec<f32>, row: &[usize]) -> f32 {
    let width: usize = row.iter().product();
    let mut shape = vec![x.len() / width];
    shape.extend_from_slice(row);
    let expected = fitted.predict(&x).unwrap();
    let input = tract_ndarray::ArrayD::from_shape_vec(shape, x)
        .unwrap()
        .into_tensor();
    let out = model.run(vec![input]).unwrap();
    let got = out[0].to_plain_array_view::<f32>().unwrap();
    assert_eq!(got.len(), expected.len());
    got.iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

/// Binary cross-entropy (one sigmoid output), tanh, dropout, a validation split, JSON records
/// with the label in a field: trains, and tract runs the written model as burn does.
#[test]
fn a_binary_classifier_from_json_with_dropout_and_a_split() {
    let mut source = MemoryRecords {
        training: as_json(&records("data/breast_cancer.csv", |_| true)),
        validation: Vec::new(),
    };
    let mut rows = RowFormat::new(InputFormat::Json, Label::JsonField("y".into()));
    rows.input_name = "x".into();
    let mut options = TrainOptions::new(Task::Classify { classes: None })
        .hidden_layers([16])
        .epochs(15)
        .seed(3);
    options.loss = Some(streamtract::train::Loss::BinaryCrossentropy);
    options.activation = streamtract::train::Activation::Tanh;
    options.dropout = 0.2;
    options.validation = Validation::Split(0.25);
    let fitted = fit(&mut source, &rows, &options, &mut |_| Ok(())).unwrap();
    assert_eq!(fitted.model.head, Head::Sigmoid);
    assert_eq!(fitted.model.input_name, "x");
    let last = fitted.history.epochs.last().unwrap();
    // 569 rows: the last quarter of the offsets (142) held out, 427 trained on.
    assert_eq!((last.records, last.val_records), (427, 142));
    assert!(last.val_accuracy.unwrap() > 0.9, "{last:?}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bc.onnx");
    fitted.model.write(&path).unwrap();
    let model = Model::load(&path).unwrap();
    assert_eq!(model.signature().inputs[0].name, "x");
    let (x, _) = features(&records("data/breast_cancer.csv", |i| i < 64));
    let worst = max_diff(&model, &fitted, x, &[30]);
    assert!(worst <= 1e-5, "tract and burn differ by {worst}");
}

/// Regression with mean absolute error and SGD: the loss goes down, tract agrees with burn.
#[test]
fn a_regression_with_mae_and_sgd() {
    let mut source = MemoryRecords {
        training: records("data/diabetes.csv", |_| true),
        validation: Vec::new(),
    };
    let rows = RowFormat::new(InputFormat::Csv { delimiter: b',' }, Label::CsvColumn(0));
    let mut options = TrainOptions::new(Task::Regress)
        .hidden_layers([8])
        .epochs(30)
        .seed(5);
    options.loss = Some(streamtract::train::Loss::MeanAbsoluteError);
    options.optimizer = streamtract::train::Optimizer::Sgd { momentum: 0.9 };
    options.learning_rate = 0.01;
    let fitted = fit(&mut source, &rows, &options, &mut |_| Ok(())).unwrap();
    assert_eq!(fitted.model.head, Head::Identity);
    let first = &fitted.history.epochs[0];
    let last = fitted.history.epochs.last().unwrap();
    // The mean target is 152; predicting 0 costs an MAE of about 150.
    assert!(
        last.loss < first.loss && last.loss < 70.0,
        "{first:?} -> {last:?}"
    );
    assert_eq!(
        last.mae.map(|m| (m - last.loss).abs() < 1.0),
        Some(true),
        "{last:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diabetes.onnx");
    fitted.model.write(&path).unwrap();
    let model = Model::load(&path).unwrap();
    assert_eq!(model.signature().outputs[0].name, "prediction");
    let text = std::fs::read_to_string("data/diabetes.csv").unwrap();
    let x: Vec<f32> = text
        .lines()
        .take(50)
        .flat_map(|l| {
            l.split(',')
                .skip(1)
                .map(|f| f.parse::<f32>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let worst = max_diff(&model, &fitted, x, &[10]);
    assert!(
        worst <= 1e-3,
        "tract and burn differ by {worst} (targets around 150)"
    );
}

/// The same seed on the same records gives the same model, byte for byte.
#[test]
fn the_same_seed_gives_the_same_model() {
    let train = || {
        let mut source = MemoryRecords {
            training: records("data/wine.csv", |_| true),
            validation: Vec::new(),
        };
        let rows = RowFormat::new(InputFormat::Csv { delimiter: b',' }, Label::CsvColumn(0));
        let options = TrainOptions::new(Task::Classify { classes: None })
            .hidden_layers([8])
            .epochs(3)
            .seed(11);
        fit(&mut source, &rows, &options, &mut |_| Ok(()))
            .unwrap()
            .model
            .to_onnx()
    };
    assert_eq!(train(), train());
}

/// A small CNN (the repo's digits CNN layout: two 3×3 convolutions, a 2×2 max pool, a dense
/// layer) trained on digits rows as 8×8×1 images: accurate, and tract runs the written
/// `[N, 8, 8, 1]` model as burn does.
#[test]
fn a_cnn_on_digit_images_runs_in_tract_as_in_the_framework() {
    use streamtract::train::ConvBlock;
    let mut source = MemoryRecords {
        training: records("data/digits.csv", |i| i % 4 != 0),
        validation: records("data/digits.csv", |i| i % 4 == 0),
    };
    let rows = RowFormat::new(InputFormat::Csv { delimiter: b',' }, Label::CsvColumn(0));
    let mut options = TrainOptions::new(Task::Classify { classes: None })
        .hidden_layers([32])
        .epochs(4)
        .seed(2);
    options.input_shape = Some([8, 8, 1]);
    options.conv = vec![
        ConvBlock::Conv {
            filters: 8,
            kernel: 3,
        },
        ConvBlock::Conv {
            filters: 16,
            kernel: 3,
        },
        ConvBlock::MaxPool { size: 2 },
    ];
    options.validation = Validation::Separate;
    let fitted = fit(&mut source, &rows, &options, &mut |_| Ok(())).unwrap();
    let last = fitted.history.epochs.last().unwrap();
    assert!(last.val_accuracy.unwrap() > 0.9, "{last:?}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cnn.onnx");
    fitted.model.write(&path).unwrap();
    let model = Model::load(&path).unwrap();
    assert_eq!(
        model.signature().inputs[0].to_string(),
        "features: float32[N, 8, 8, 1]"
    );
    let (x, _) = features(&source.validation);
    let worst = max_diff(&model, &fitted, x, &[8, 8, 1]);
    assert!(worst <= 1e-5, "tract and burn differ by {worst}");
}

/// docs/training.md names every flag `streamtract train --help` lists, so the reference cannot
/// drift from the binary.
#[test]
fn the_training_docs_name_every_flag_of_train_help() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_streamtract"))
        .args(["train", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    let docs = std::fs::read_to_string("docs/training.md").unwrap();
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .map(|l| l.split([' ', '<', '[']).next().unwrap_or(""))
        .filter(|f| !f.is_empty() && *f != "help")
        .collect();
    assert!(flags.len() > 30, "{flags:?}");
    let missing: Vec<&&str> = flags
        .iter()
        .filter(|f| !docs.contains(&format!("--{f}")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/training.md does not name: {missing:?}"
    );
}
