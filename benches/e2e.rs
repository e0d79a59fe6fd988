//! End to end against a local tansu broker: records/s of `Pipeline` with the digits MLP and
//! CNN next to a pass-through run (the same records consumed and produced, no model), all in
//! one invocation on one broker so the ratios are stable on a noisy machine.
//!
//! tansu stores every record header as a database row, so the five headers the pipeline puts
//! on each output cost the broker more than everything else together; the table therefore
//! also shows a pass-through that writes the same five headers, and model runs without them
//! (`output_headers = false`), so each model run has a like-for-like reference.
//!
//!     cargo bench --bench e2e                       # 100,000 records
//!     STREAMTRACT_BENCH_RECORDS=20000 cargo bench --bench e2e
//!
//! Needs tansu (scripts/setup-test-env.sh). Under `cargo test --all-targets` it runs a small
//! smoke version (2,000 records) and checks the counts.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use streamtract::kafka::{
    self, KafkaConfig, OutputRecord, Sink, SinkConfig, Source, SourceConfig, TopicSelection,
};
use streamtract::pipeline::{Pipeline, PipelineConfig};
use support::{create_topic, produce_digits, root, LocalBroker};

const PARTITIONS: i32 = 3;

/// Consume and produce the same records with no model: the ceiling for the pipeline. With
/// `with_headers`, each output also carries the five headers the pipeline writes, which shows
/// what those cost at the broker.
async fn pass_through(
    kafka: &KafkaConfig,
    input: &str,
    output: &str,
    with_headers: bool,
) -> (u64, Duration) {
    let client = kafka::connect(kafka).await.expect("connect");
    let sink = Sink::start(Arc::clone(&client), kafka, &SinkConfig::new(output), None)
        .await
        .expect("sink");
    let mut config = SourceConfig::new(vec![TopicSelection {
        topic: input.into(),
        partitions: None,
    }]);
    config.until_end = true;
    let started = Instant::now();
    let mut source = Source::start(client, kafka, &config).await.expect("source");
    while let Some(chunk) = source.next_chunk().await {
        for r in chunk.expect("fetch") {
            let partition = sink.partition_for(r.key.as_deref(), r.partition);
            let mut headers = r.headers;
            if with_headers {
                headers.insert("source.topic".into(), r.topic.as_bytes().to_vec());
                headers.insert(
                    "source.partition".into(),
                    r.partition.to_string().into_bytes(),
                );
                headers.insert("source.offset".into(), r.offset.to_string().into_bytes());
                headers.insert(
                    "source.timestamp".into(),
                    r.timestamp.timestamp_millis().to_string().into_bytes(),
                );
                headers.insert("model.sha256".into(), [b'0'; 64].to_vec());
            }
            let out = OutputRecord {
                key: r.key,
                value: r.value.unwrap_or_default(),
                headers,
                timestamp: Utc::now(),
                source: None,
            };
            sink.send(partition, out).await.expect("send");
        }
    }
    let n = sink.close().await.expect("close");
    (n, started.elapsed())
}

async fn with_model(
    kafka: &KafkaConfig,
    input: &str,
    output: &str,
    model: &str,
    batch: usize,
    output_headers: bool,
) -> (u64, Duration) {
    let mut config = PipelineConfig::new(
        kafka.brokers.clone(),
        input,
        output,
        root().join("models").join(model),
    )
    .until_end(true)
    .batch_size(batch);
    config.output_headers = output_headers;
    config.kafka = kafka.clone();
    let summary = Pipeline::connect(config)
        .await
        .expect("pipeline")
        .run()
        .await
        .expect("run");
    (summary.records_out, summary.elapsed)
}

#[tokio::main]
async fn main() {
    let n = support::records(100_000, 2_000);
    let broker = LocalBroker::start("bench-broker");
    let kafka = broker.kafka();
    create_topic(&kafka, "bench-in", PARTITIONS).await;
    let t = Instant::now();
    produce_digits(&kafka, "bench-in", n).await;
    println!(
        "produced {n} CSV digit records to a {PARTITIONS}-partition topic in {:.2} s",
        t.elapsed().as_secs_f64()
    );

    let mut results = Vec::new();
    let runs = [
        "pass-through",
        "pass-through+headers",
        "digits_mlp/256",
        "digits_cnn/256",
        "digits_mlp/256/no-headers",
        "digits_cnn/256/no-headers",
        "pass-through",
    ];
    for (run, mode) in runs.iter().enumerate() {
        let output = format!("bench-out-{run}");
        create_topic(&kafka, &output, PARTITIONS).await;
        let (done, elapsed) = match *mode {
            "pass-through" => pass_through(&kafka, "bench-in", &output, false).await,
            "pass-through+headers" => pass_through(&kafka, "bench-in", &output, true).await,
            run => {
                // model/batch[/no-headers]
                let mut parts = run.split('/');
                let model = parts.next().expect("model");
                let batch = parts
                    .next()
                    .and_then(|b| b.parse().ok())
                    .expect("batch size");
                let headers = parts.next() != Some("no-headers");
                with_model(
                    &kafka,
                    "bench-in",
                    &output,
                    &format!("{model}.onnx"),
                    batch,
                    headers,
                )
                .await
            }
        };
        assert_eq!(done as usize, n, "{mode}: {done} of {n} records written");
        results.push((*mode, n as f64 / elapsed.as_secs_f64(), elapsed));
    }
    // Pass-through ran first and last; its mean is the reference for the model runs.
    let reference = (results[0].1 + results[results.len() - 1].1) / 2.0;
    println!(
        "\n{:<22} {:>10} {:>10} {:>12} {:>16}",
        "run (model/batch)", "records", "seconds", "records/s", "vs pass-through"
    );
    for (mode, rate, elapsed) in &results {
        println!(
            "{mode:<22} {n:>10} {:>10.2} {rate:>12.0} {:>15.0}%",
            elapsed.as_secs_f64(),
            100.0 * rate / reference
        );
    }
    drop(broker);
}
