//! The tensorflow-io program, in Rust: read a topic as a dataset, preprocess, predict with the
//! model, and write the class names back through an output sequence.
//!
//! ```text
//! dataset = kafka_io.KafkaDataset(['topic'], servers='localhost', group='')
//! dataset = dataset.map(lambda x: ...)                      # preprocessing
//! class OutputCallback(tf.keras.callbacks.Callback):
//!     def on_predict_batch_end(self, batch, logs=None):
//!         self._sequence.setitem(index, class_names[np.argmax(output)])
//! model.predict(test_dataset, callbacks=[OutputCallback(32, 'topic', 'localhost')])
//! ```
//!
//!     cargo run --example seed -- 127.0.0.1:9092 pixels predictions [models/digits_mlp.onnx]
//!
//! Input records are CSV rows of the model's input (the digits models take 64 pixel values);
//! their keys are kept on the predictions. The dataset stops at the end the input had when it
//! was opened (`eof`), so the program ends. Batches run on two inference threads and finish in
//! any order, as Keras callbacks may; the output sequence still writes the predictions in input
//! order. The last lines printed are a summary, e.g.:
//!
//! ```text
//! seed: read 100 records in 4 batches from pixels
//! seed: wrote 100 predictions to predictions, 100 acknowledged
//! ```

use std::io::Write;

use futures::stream::{FuturesUnordered, StreamExt};
use streamtract::codec::InputFormat;
use streamtract::dataset::{KafkaDataset, OutputItem, OutputSequence, Preprocess, SourceRecord};
use streamtract::model::{InferencePool, Model};
use streamtract::pipeline::{headers, split_outputs};
use tract_onnx::prelude::Tensor;

/// The digits models' classes, by index.
pub const CLASS_NAMES: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

/// What the program did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub records: u64,
    pub batches: u64,
    pub written: u64,
    pub acked: u64,
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// `on_predict_batch_end`: the class name of every row of a finished batch, set at its index.
async fn set_predictions(
    sequence: &mut OutputSequence,
    first: u64,
    records: &[SourceRecord],
    outputs: &[Tensor],
) -> anyhow::Result<()> {
    for (i, (record, row)) in records
        .iter()
        .zip(split_outputs(outputs, records.len())?)
        .enumerate()
    {
        let class = CLASS_NAMES
            .get(argmax(row[0]))
            .copied()
            .unwrap_or("unknown");
        let item = OutputItem::new(class)
            .maybe_key(record.key.clone())
            .header(headers::SOURCE_TOPIC, record.topic.as_bytes())
            .header(headers::SOURCE_PARTITION, record.partition.to_string())
            .header(headers::SOURCE_OFFSET, record.offset.to_string());
        sequence.set(first + i as u64, item).await?;
    }
    Ok(())
}

/// Runs the program; progress and the summary go to `out`.
pub async fn run(
    brokers: &str,
    input: &str,
    output: &str,
    model_path: &str,
    out: &mut impl Write,
) -> anyhow::Result<Summary> {
    let model = Model::load(model_path)?;
    writeln!(out, "seed: model {model_path} (sha256 {})", model.sha256())?;
    let pool = InferencePool::new(&model, 2)?;

    // dataset = KafkaDataset([input], servers=..., group='', eof=True).map(decode).batch(32)
    let preprocess = Preprocess::for_model(&model, InputFormat::Csv { delimiter: b',' })?;
    let mut batches = KafkaDataset::builder([input])
        .servers(brokers)
        .group("")
        .eof(true)
        .open()
        .await?
        .batch(32, preprocess)
        .skip_bad_records(true);
    let mut sequence = OutputSequence::connect(brokers, output).await?;

    let mut next_index = 0u64;
    let (mut record_count, mut batch_count) = (0u64, 0u64);
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            batch = batches.next(), if running.len() < 4 => {
                let Some(batch) = batch else { break };
                let batch = batch?;
                let first = next_index;
                next_index += batch.len() as u64;
                record_count += batch.len() as u64;
                batch_count += 1;
                let pending = pool.submit(batch.inputs).await?;
                let records = batch.records;
                running.push(async move { (first, records, pending.await) });
            }
            Some((first, records, outputs)) = running.next() => {
                // Batches may finish in any order.
                set_predictions(&mut sequence, first, &records, &outputs?).await?;
            }
        }
    }
    while let Some((first, records, outputs)) = running.next().await {
        set_predictions(&mut sequence, first, &records, &outputs?).await?;
    }
    if batches.skipped() > 0 {
        writeln!(
            out,
            "seed: {} records could not be decoded",
            batches.skipped()
        )?;
    }
    sequence.flush().await?;
    let summary = Summary {
        records: record_count,
        batches: batch_count,
        written: sequence.written(),
        acked: sequence.acked(),
    };
    sequence.close().await?;
    writeln!(
        out,
        "seed: read {} records in {} batches from {input}",
        summary.records, summary.batches
    )?;
    writeln!(
        out,
        "seed: wrote {} predictions to {output}, {} acknowledged",
        summary.written, summary.acked
    )?;
    Ok(summary)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (brokers, input, output, model) = match args.as_slice() {
        [b, i, o] => (b, i, o, "models/digits_mlp.onnx"),
        [b, i, o, m] => (b, i, o, m.as_str()),
        _ => {
            eprintln!("usage: seed BROKERS INPUT_TOPIC OUTPUT_TOPIC [MODEL.onnx]");
            std::process::exit(64);
        }
    };
    run(brokers, input, output, model, &mut std::io::stdout()).await?;
    Ok(())
}
