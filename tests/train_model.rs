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
    let (x, labels) = features(&source.validation);
    let n = labels.len();
    let expected = fitted.predict(&x).unwrap();
    let input = tract_ndarray::Array2::from_shape_vec((n, 64), x)
        .unwrap()
        .into_tensor();
    let out = model.run(vec![input]).expect("tract runs it");
    let got = out[0].to_plain_array_view::<f32>().unwrap();
    let got: Vec<f32> = got.iter().copied().collect();
    assert_eq!(got.len(), n * 10);
    let worst = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-5, "tract and burn differ by {worst}");
}
