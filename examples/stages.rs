//! The stages one by one: a source, a decoder, the model on worker threads, an encoder and a
//! sink, wired by hand. Useful when a service wants its own logic between the stages.
//!
//!     cargo run --example stages -- 127.0.0.1:9092 pixels predictions
//!
//! Reads the input topic up to its current end, one batch per fetched chunk.

use std::collections::BTreeMap;
use std::sync::Arc;

use streamtract::codec::{Decoder, Encoder, InputFormat, OutputFormat};
use streamtract::kafka::{
    self, KafkaConfig, OutputRecord, Sink, SinkConfig, Source, SourceConfig, TopicSelection,
};
use streamtract::model::{InferencePool, Model};
use streamtract::pipeline::{split_outputs, Batch};

#[tokio::main]
async fn main() -> Result<(), streamtract::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [brokers, input, output] = args.as_slice() else {
        eprintln!("usage: stages BROKER INPUT_TOPIC OUTPUT_TOPIC");
        std::process::exit(64);
    };
    let model = Model::load("models/digits_mlp.onnx")?;
    let decoder = Decoder::new(
        InputFormat::Csv { delimiter: b',' },
        model.signature(),
        "digits_mlp",
    )?;
    let encoder = Encoder::new(OutputFormat::Json, model.signature(), Some(1), "digits_mlp")?;
    let row_shapes: Vec<Vec<usize>> = model
        .signature()
        .inputs
        .iter()
        .map(|i| i.row_shape().unwrap_or_default())
        .collect();
    let pool = InferencePool::new(&model, 2)?;

    let kafka_config = KafkaConfig::new([brokers.as_str()]);
    let client = kafka::connect(&kafka_config).await?;
    let sink = Sink::start(
        Arc::clone(&client),
        &kafka_config,
        &SinkConfig::new(output.as_str()),
        None,
    )
    .await?;
    let mut source_config = SourceConfig::new(vec![TopicSelection {
        topic: input.clone(),
        partitions: None,
    }]);
    source_config.until_end = true;
    let mut source = Source::start(client, &kafka_config, &source_config).await?;

    while let Some(chunk) = source.next_chunk().await {
        let mut batch = Batch::default();
        for record in chunk? {
            match decoder.decode(record.value.as_deref().unwrap_or_default()) {
                Ok(row) => batch.push(row, record),
                Err(e) => eprintln!(
                    "skipping {}/{}@{}: {e}",
                    record.topic, record.partition, record.offset
                ),
            }
        }
        if batch.is_empty() {
            continue;
        }
        let (tensors, records) = batch.into_tensors(&row_shapes)?;
        let outputs = pool.submit(tensors).await?.await?;
        for (record, row) in records.iter().zip(split_outputs(&outputs, records.len())?) {
            let partition = sink.partition_for(record.key.as_deref(), record.partition);
            let out = OutputRecord {
                key: record.key.clone(),
                value: encoder.encode(&row),
                headers: BTreeMap::new(),
                timestamp: record.timestamp,
                source: None,
            };
            sink.send(partition, out).await?;
        }
    }
    println!("{} outputs acknowledged", sink.close().await?);
    Ok(())
}
