//! Evaluates a model over a bounded topic and prints its accuracy: a program without async
//! code, using the dataset's blocking iterator.
//!
//!     cargo run --example evaluate -- 127.0.0.1:9092 labelled-pixels [models/digits_mlp.onnx]
//!
//! Input records are CSV rows `label,feature0,feature1,...` (the layout of `data/digits.csv`);
//! the label column is split off by the preprocessing, the rest feeds the model. Every
//! partition of the topic is read up to the end it had at start (`eof`). Records that cannot
//! be decoded are counted, not scored. The last line is the result, e.g.:
//!
//! ```text
//! evaluate: accuracy 0.9750 (351 of 360 records right)
//! ```

use std::io::Write;

use streamtract::codec::InputFormat;
use streamtract::dataset::{KafkaDataset, Label, Preprocess};
use streamtract::model::Model;
use streamtract::pipeline::split_outputs;

/// What the evaluation found.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub records: u64,
    pub correct: u64,
    pub rejected: u64,
    pub accuracy: f64,
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Runs the evaluation; progress and the result go to `out`. Blocking: call it from a plain
/// thread, not from async code.
pub fn run(
    brokers: &str,
    topic: &str,
    model_path: &str,
    out: &mut impl Write,
) -> anyhow::Result<Evaluation> {
    let model = Model::load(model_path)?;
    let mut runner = model.runner();
    let preprocess = Preprocess::for_model(&model, InputFormat::Csv { delimiter: b',' })?
        .label(Label::CsvColumn(0))?;
    let batches = KafkaDataset::builder([topic])
        .servers(brokers)
        .eof(true)
        .open_blocking()?
        .batch(64, preprocess);

    let (mut records, mut correct, mut rejected) = (0u64, 0u64, 0u64);
    for batch in batches {
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) if e.is_record_error() => {
                writeln!(out, "evaluate: skipped {e}")?;
                rejected += 1;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let labels = batch.labels.clone().unwrap_or_default();
        let rows = batch.len();
        let outputs = runner.run(batch.inputs)?;
        for (row, label) in split_outputs(&outputs, rows)?.iter().zip(labels.iter()) {
            records += 1;
            if argmax(row[0]) as f32 == *label {
                correct += 1;
            }
        }
    }
    let accuracy = if records == 0 {
        0.0
    } else {
        correct as f64 / records as f64
    };
    if rejected > 0 {
        writeln!(
            out,
            "evaluate: {rejected} records could not be decoded and were not scored"
        )?;
    }
    writeln!(
        out,
        "evaluate: accuracy {accuracy:.4} ({correct} of {records} records right)"
    )?;
    Ok(Evaluation {
        records,
        correct,
        rejected,
        accuracy,
    })
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (brokers, topic, model) = match args.as_slice() {
        [b, t] => (b, t, "models/digits_mlp.onnx"),
        [b, t, m] => (b, t, m.as_str()),
        _ => {
            eprintln!("usage: evaluate BROKERS TOPIC [MODEL.onnx]");
            std::process::exit(64);
        }
    };
    run(brokers, topic, model, &mut std::io::stdout())?;
    Ok(())
}
