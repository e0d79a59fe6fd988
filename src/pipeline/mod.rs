//! The stages composed: source → decode → batch → infer → encode → sink.
//!
//! [`Pipeline`] is what `streamtract run` executes. Rows from many partitions may share a
//! batch; batches run on the [`InferencePool`] in parallel and their results are written in the
//! order the batches were formed, so outputs keep the order of their input partition.

mod batch;
mod offsets;

pub use batch::{split_outputs, Batch};
pub use offsets::{OffsetTracker, TopicPartition};

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::stream::{FuturesOrdered, StreamExt};
use tract_onnx::prelude::Tensor;

use crate::codec::{DecodeError, Decoder, Encoder, InputFormat, OutputFormat};
use crate::error::{Error, ModelError, Result};
use crate::kafka::{
    self, KafkaConfig, OutputRecord, Sink, SinkConfig, Source, SourceConfig, SourceCoordinates,
    SourceRecord, StartPosition, TopicSelection,
};
use crate::model::{InferencePool, Model};

/// Header names written on every output record.
pub mod headers {
    /// Topic of the input record.
    pub const SOURCE_TOPIC: &str = "source.topic";
    /// Partition of the input record (decimal).
    pub const SOURCE_PARTITION: &str = "source.partition";
    /// Offset of the input record (decimal).
    pub const SOURCE_OFFSET: &str = "source.offset";
    /// Timestamp of the input record, milliseconds since the epoch (decimal).
    pub const SOURCE_TIMESTAMP: &str = "source.timestamp";
    /// Lower-case hex SHA-256 of the model file that produced the output.
    pub const MODEL_SHA256: &str = "model.sha256";
    /// On a dead letter: topic the rejected record was read from.
    pub const DLQ_SOURCE_TOPIC: &str = "dlq.source.topic";
    /// On a dead letter: its partition (decimal).
    pub const DLQ_SOURCE_PARTITION: &str = "dlq.source.partition";
    /// On a dead letter: its offset (decimal).
    pub const DLQ_SOURCE_OFFSET: &str = "dlq.source.offset";
    /// On a dead letter: the stage that rejected it (`size` or `decode`).
    pub const DLQ_STAGE: &str = "dlq.stage";
    /// On a dead letter: a one-line reason.
    pub const DLQ_REASON: &str = "dlq.reason";
}

/// What to do with a record that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorPolicy {
    /// Log it, count it, go on.
    #[default]
    Skip,
    /// Finish writing everything before it, then stop with an error.
    Stop,
}

impl FromStr for ErrorPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "skip" => Ok(ErrorPolicy::Skip),
            "stop" => Ok(ErrorPolicy::Stop),
            _ => Err("`skip` or `stop`".into()),
        }
    }
}

/// Everything a [`Pipeline`] needs. Build it with [`PipelineConfig::new`] and the setters.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Cluster connection.
    pub kafka: KafkaConfig,
    /// What to read and from where.
    pub source: SourceConfig,
    /// Output topic and its batching.
    pub sink: SinkConfig,
    /// ONNX model file.
    pub model: PathBuf,
    /// How input values are decoded.
    pub input_format: InputFormat,
    /// How outputs are encoded.
    pub output_format: OutputFormat,
    /// Add the K best classes of the first output.
    pub top_k: Option<usize>,
    /// Most rows per inference batch.
    pub batch_size: usize,
    /// Longest a row waits for its batch to fill.
    pub linger: Duration,
    /// Inference threads.
    pub workers: usize,
    /// Values larger than this are rejected as bad records.
    pub max_record_bytes: usize,
    /// Bad-record policy when no dead-letter topic is configured.
    pub on_error: ErrorPolicy,
    /// Dead-letter topic: rejected records are written there unchanged, with headers saying
    /// where they came from and why they were rejected.
    pub dlq: Option<String>,
}

impl PipelineConfig {
    /// A pipeline reading all partitions of `input` from the earliest offset, following forever,
    /// with CSV input, JSON output, batches of up to 256 rows, 5 ms linger and one inference
    /// worker per core.
    pub fn new(
        brokers: impl IntoIterator<Item = impl Into<String>>,
        input: &str,
        output: &str,
        model: impl Into<PathBuf>,
    ) -> PipelineConfig {
        PipelineConfig {
            kafka: KafkaConfig::new(brokers),
            source: SourceConfig::new(vec![TopicSelection {
                topic: input.to_string(),
                partitions: None,
            }]),
            sink: SinkConfig::new(output),
            model: model.into(),
            input_format: InputFormat::Csv { delimiter: b',' },
            output_format: OutputFormat::Json,
            top_k: None,
            batch_size: 256,
            linger: Duration::from_millis(5),
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            max_record_bytes: 1 << 20,
            on_error: ErrorPolicy::Skip,
            dlq: None,
        }
    }

    /// Stop at the end offsets read at start-up (`true`) or follow forever (`false`).
    pub fn until_end(mut self, yes: bool) -> Self {
        self.source.until_end = yes;
        self
    }

    /// Where to start reading.
    pub fn start(mut self, start: StartPosition) -> Self {
        self.source.start = start;
        self
    }

    /// Input decoding.
    pub fn input_format(mut self, format: InputFormat) -> Self {
        self.input_format = format;
        self
    }

    /// Output encoding.
    pub fn output_format(mut self, format: OutputFormat) -> Self {
        self.output_format = format;
        self
    }

    /// Rows per batch.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Batch linger.
    pub fn linger(mut self, d: Duration) -> Self {
        self.linger = d;
        self
    }

    /// Inference threads.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }
}

/// What a finished run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Records read from the input topics.
    pub records_in: u64,
    /// Output records acknowledged by the broker.
    pub records_out: u64,
    /// Records rejected by the decoder (logged and counted; written to the dead-letter topic
    /// when one is configured).
    pub rejected: u64,
    /// Dead letters acknowledged by the broker.
    pub dead_letters: u64,
    /// Inference batches run.
    pub batches: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Per-row data kept while the row is in a batch.
#[derive(Debug)]
struct RowMeta {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp_ms: i64,
    key: Option<Vec<u8>>,
}

type BatchResult = (Vec<RowMeta>, std::result::Result<Vec<Tensor>, ModelError>);

/// A validated, connected pipeline, ready to [`run`](Pipeline::run).
pub struct Pipeline {
    config: PipelineConfig,
    model: Model,
    decoder: Decoder,
    encoder: Encoder,
    pool: InferencePool,
    source: Source,
    sink: Sink,
    dlq: Option<Sink>,
    row_shapes: Vec<Vec<usize>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Loads and checks the model, connects to Kafka, checks the topics, and starts reading.
    ///
    /// Every configuration problem (missing model, format that does not fit the model,
    /// unreachable broker, unknown topic or partition) is reported here, before any output.
    pub async fn connect(config: PipelineConfig) -> Result<Pipeline> {
        let path = config.model.clone();
        let model = tokio::task::spawn_blocking(move || Model::load(path))
            .await
            .map_err(|e| Error::Internal(format!("model loading task: {e}")))??;
        let name = model.file_name();
        let decoder = Decoder::new(config.input_format, model.signature(), &name)?;
        let encoder = Encoder::new(config.output_format, model.signature(), config.top_k, &name)?;
        let row_shapes = model
            .signature()
            .inputs
            .iter()
            .map(|i| i.row_shape().unwrap_or_default())
            .collect();
        let client = kafka::connect(&config.kafka).await?;
        let sink = Sink::start(Arc::clone(&client), &config.kafka, &config.sink, None).await?;
        let dlq = match &config.dlq {
            Some(topic) => {
                let dlq_config = SinkConfig::new(topic.as_str());
                Some(Sink::start(Arc::clone(&client), &config.kafka, &dlq_config, None).await?)
            }
            None => None,
        };
        let source = Source::start(client, &config.kafka, &config.source).await?;
        let pool = InferencePool::new(&model, config.workers)?;
        tracing::info!(
            model = %model.path().display(),
            sha256 = %model.sha256(),
            partitions = source.ranges().len(),
            bounded_total = ?source.bounded_total(),
            workers = pool.workers(),
            "pipeline ready"
        );
        Ok(Pipeline {
            config,
            model,
            decoder,
            encoder,
            pool,
            source,
            sink,
            dlq,
            row_shapes,
        })
    }

    /// The loaded model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The partitions being read and their offset ranges.
    pub fn source_ranges(&self) -> &[kafka::PartitionRange] {
        self.source.ranges()
    }

    /// Runs until the end offsets (bounded mode) or forever (follow mode).
    pub async fn run(self) -> Result<RunSummary> {
        self.run_until(std::future::pending()).await
    }

    /// Runs until done or until `shutdown` completes; on shutdown, stops reading, finishes the
    /// batches in flight and waits for their outputs to be acknowledged.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<RunSummary> {
        let Pipeline {
            config,
            model,
            decoder,
            encoder,
            pool,
            mut source,
            sink,
            dlq,
            row_shapes,
        } = self;
        let started = Instant::now();
        let sha = model.sha256().as_bytes().to_vec();
        let mut summary = RunSummary::default();
        let mut batch: Batch<RowMeta> = Batch::default();
        let mut batch_deadline = tokio::time::Instant::now();
        let mut inflight: FuturesOrdered<
            std::pin::Pin<Box<dyn Future<Output = BatchResult> + Send>>,
        > = FuturesOrdered::new();
        let max_inflight = pool.workers() * 2 + 1;
        let mut reading = true;
        let mut fatal: Option<Error> = None;
        tokio::pin!(shutdown);

        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown, if reading => {
                    tracing::info!("shutdown requested: finishing batches in flight");
                    reading = false;
                }
                Some((meta, outputs)) = inflight.next(), if !inflight.is_empty() => {
                    let outputs = match outputs {
                        Ok(o) => o,
                        Err(e) => { fatal.get_or_insert(e.into()); reading = false; continue; }
                    };
                    if let Err(e) = write_outputs(&sink, &encoder, &sha, meta, &outputs).await {
                        fatal.get_or_insert(e);
                        reading = false;
                    }
                }
                chunk = source.next_chunk(), if reading && inflight.len() < max_inflight => {
                    match chunk {
                        None => reading = false,
                        Some(Err(e)) => { fatal.get_or_insert(e.into()); reading = false; }
                        Some(Ok(records)) => {
                            for record in records {
                                summary.records_in += 1;
                                match decode(&decoder, &record, config.max_record_bytes) {
                                    Ok(row) => {
                                        if batch.is_empty() {
                                            batch_deadline = tokio::time::Instant::now() + config.linger;
                                        }
                                        batch.push(row, RowMeta {
                                            topic: record.topic,
                                            partition: record.partition,
                                            offset: record.offset,
                                            timestamp_ms: record.timestamp.timestamp_millis(),
                                            key: record.key,
                                        });
                                        if batch.len() >= config.batch_size {
                                            dispatch(&pool, &mut batch, &row_shapes, &mut inflight, &mut summary).await?;
                                        }
                                    }
                                    Err(e) => {
                                        summary.rejected += 1;
                                        tracing::warn!(topic = %record.topic, partition = record.partition,
                                            offset = record.offset, reason = %e, dlq = ?config.dlq, "bad record");
                                        if let Some(dlq) = &dlq {
                                            let letter = dead_letter(record, &e);
                                            let partition = dlq.partition_for(letter.key.as_deref(), letter.source.as_ref().map_or(0, |s| s.partition));
                                            if let Err(e) = dlq.send(partition, letter).await {
                                                fatal.get_or_insert(e.into());
                                                reading = false;
                                                break;
                                            }
                                        } else if config.on_error == ErrorPolicy::Stop {
                                            // Everything before the bad record is still written.
                                            if !batch.is_empty() {
                                                dispatch(&pool, &mut batch, &row_shapes, &mut inflight, &mut summary).await?;
                                            }
                                            fatal.get_or_insert(Error::BadRecord { source: e, policy: "on_error = stop" });
                                            reading = false;
                                            break;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(batch_deadline), if !batch.is_empty() => {
                    dispatch(&pool, &mut batch, &row_shapes, &mut inflight, &mut summary).await?;
                }
            }
            if !reading {
                if !batch.is_empty() && fatal.is_none() {
                    dispatch(&pool, &mut batch, &row_shapes, &mut inflight, &mut summary).await?;
                }
                if inflight.is_empty() {
                    break;
                }
            }
        }
        drop(source);
        let acked = sink.close().await;
        if let Some(dlq) = dlq {
            match dlq.close().await {
                Ok(n) => summary.dead_letters = n,
                Err(e) => {
                    fatal.get_or_insert(e.into());
                }
            }
        }
        summary.elapsed = started.elapsed();
        match (fatal, acked) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(e.into()),
            (None, Ok(n)) => {
                summary.records_out = n;
                tracing::info!(
                    records_in = summary.records_in,
                    records_out = summary.records_out,
                    rejected = summary.rejected,
                    dead_letters = summary.dead_letters,
                    batches = summary.batches,
                    seconds = summary.elapsed.as_secs_f64(),
                    "run finished"
                );
                Ok(summary)
            }
        }
    }
}

fn decode(
    decoder: &Decoder,
    record: &SourceRecord,
    max_bytes: usize,
) -> std::result::Result<crate::codec::Row, DecodeError> {
    let value = record.value.as_deref().unwrap_or_default();
    if value.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            size: value.len(),
            max: max_bytes,
        });
    }
    decoder.decode(value)
}

async fn dispatch(
    pool: &InferencePool,
    batch: &mut Batch<RowMeta>,
    row_shapes: &[Vec<usize>],
    inflight: &mut FuturesOrdered<std::pin::Pin<Box<dyn Future<Output = BatchResult> + Send>>>,
    summary: &mut RunSummary,
) -> Result<()> {
    let (tensors, meta) = std::mem::take(batch).into_tensors(row_shapes)?;
    let pending = pool.submit(tensors).await?;
    summary.batches += 1;
    inflight.push_back(Box::pin(async move { (meta, pending.await) }));
    Ok(())
}

async fn write_outputs(
    sink: &Sink,
    encoder: &Encoder,
    sha: &[u8],
    meta: Vec<RowMeta>,
    outputs: &[Tensor],
) -> Result<()> {
    let rows = split_outputs(outputs, meta.len())?;
    let now = Utc::now();
    for (m, row) in meta.into_iter().zip(rows) {
        let value = encoder.encode(&row);
        let mut headers = BTreeMap::new();
        headers.insert(
            headers::SOURCE_TOPIC.to_string(),
            m.topic.as_bytes().to_vec(),
        );
        headers.insert(
            headers::SOURCE_PARTITION.to_string(),
            m.partition.to_string().into_bytes(),
        );
        headers.insert(
            headers::SOURCE_OFFSET.to_string(),
            m.offset.to_string().into_bytes(),
        );
        headers.insert(
            headers::SOURCE_TIMESTAMP.to_string(),
            m.timestamp_ms.to_string().into_bytes(),
        );
        headers.insert(headers::MODEL_SHA256.to_string(), sha.to_vec());
        let partition = sink.partition_for(m.key.as_deref(), m.partition);
        let source = SourceCoordinates {
            topic: m.topic,
            partition: m.partition,
            offset: m.offset,
        };
        sink.send(
            partition,
            OutputRecord {
                key: m.key,
                value,
                headers,
                timestamp: now,
                source: Some(source),
            },
        )
        .await?;
    }
    Ok(())
}

/// The rejected record, unchanged, plus headers naming its source, the stage and the reason.
fn dead_letter(record: SourceRecord, error: &DecodeError) -> OutputRecord {
    let stage = match error {
        DecodeError::TooLarge { .. } => "size",
        _ => "decode",
    };
    let mut headers = record.headers;
    headers.insert(
        headers::DLQ_SOURCE_TOPIC.to_string(),
        record.topic.as_bytes().to_vec(),
    );
    headers.insert(
        headers::DLQ_SOURCE_PARTITION.to_string(),
        record.partition.to_string().into_bytes(),
    );
    headers.insert(
        headers::DLQ_SOURCE_OFFSET.to_string(),
        record.offset.to_string().into_bytes(),
    );
    headers.insert(headers::DLQ_STAGE.to_string(), stage.as_bytes().to_vec());
    headers.insert(
        headers::DLQ_REASON.to_string(),
        error.to_string().into_bytes(),
    );
    let source = SourceCoordinates {
        topic: record.topic,
        partition: record.partition,
        offset: record.offset,
    };
    OutputRecord {
        key: record.key,
        value: record.value.unwrap_or_default(),
        headers,
        timestamp: record.timestamp,
        source: Some(source),
    }
}
