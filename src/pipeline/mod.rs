//! The stages composed: source → decode → batch → infer → encode → sink.
//!
//! [`Pipeline`] is what `streamtract run` executes. Rows from many partitions may share a
//! batch; batches run on the [`InferencePool`](crate::model::InferencePool) in parallel and
//! their results are written in the order the batches were formed, so outputs keep the order
//! of their input partition.

mod error;
mod latency;
mod reload;
mod run;
mod serving;

pub use crate::codec::{split_outputs, Batch};
pub use crate::kafka::offsets::{OffsetTracker, TopicPartition};
pub use error::{ConfigError, Error, Result};
pub use latency::{Latency, LatencyRecorder};
pub use reload::ReloadHandle;

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::mpsc;

use run::{RunLoop, Stages, Stop};
use serving::Serving;

use crate::codec::{InputFormat, OutputFormat};
use crate::kafka::group::GroupConfig;
use crate::kafka::ConsumerLag;
use crate::kafka::{
    self, Consumer, KafkaConfig, Sink, SinkConfig, Source, SourceConfig, Spool, SpoolConfig,
    StartPosition, TopicSelection,
};
use crate::metrics::{Metrics, MetricsServer, Readiness};
use crate::model::{GraphRewrites, Model, ModelOptions};

/// Header names written on output records and dead letters.
pub mod headers {
    /// The compact provenance header ([`OutputHeaders::Compact`](super::OutputHeaders), the
    /// default): `TOPIC:PARTITION:OFFSET:TIMESTAMP_MS:MODEL`, where `MODEL` is the first 16 hex
    /// digits of the model's SHA-256 (Kafka topic names cannot contain `:`). Read it with
    /// [`CompactSource::parse`].
    pub const SOURCE: &str = "streamtract.source";
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
    /// The model's version when `streamtract train` wrote it (its `streamtract.version`
    /// metadata); absent for other models.
    pub const MODEL_VERSION: &str = "model.version";
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

    /// Hex digits of the model's SHA-256 in the compact header: 64 bits, enough to tell model
    /// versions apart, a quarter of the bytes.
    pub const COMPACT_SHA256_DIGITS: usize = 16;

    /// The fields of a [`SOURCE`] header.
    ///
    /// ```
    /// use streamtract::pipeline::headers::CompactSource;
    /// let source = CompactSource::parse(b"pixels:2:1041:1764940000123:3f2a9c1e0b7d4a51").unwrap();
    /// assert_eq!((source.topic.as_str(), source.partition, source.offset), ("pixels", 2, 1041));
    /// assert_eq!(source.timestamp_ms, 1764940000123);
    /// assert_eq!(source.model_sha256_prefix, "3f2a9c1e0b7d4a51");
    /// assert_eq!(source.to_bytes(), b"pixels:2:1041:1764940000123:3f2a9c1e0b7d4a51");
    /// ```
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CompactSource {
        /// Topic of the input record.
        pub topic: String,
        /// Its partition.
        pub partition: i32,
        /// Its offset.
        pub offset: i64,
        /// Its timestamp, milliseconds since the epoch.
        pub timestamp_ms: i64,
        /// The first [`COMPACT_SHA256_DIGITS`] hex digits of the model's SHA-256.
        pub model_sha256_prefix: String,
    }

    impl CompactSource {
        /// Reads a header value; `None` if it is not five `:`-separated fields of the right
        /// kinds.
        pub fn parse(value: &[u8]) -> Option<CompactSource> {
            let text = std::str::from_utf8(value).ok()?;
            let mut fields = text.split(':');
            let source = CompactSource {
                topic: fields.next().filter(|t| !t.is_empty())?.to_string(),
                partition: fields.next()?.parse().ok()?,
                offset: fields.next()?.parse().ok()?,
                timestamp_ms: fields.next()?.parse().ok()?,
                model_sha256_prefix: fields.next()?.to_string(),
            };
            fields.next().is_none().then_some(source)
        }

        /// The header value.
        pub fn to_bytes(&self) -> Vec<u8> {
            compact_source(
                &self.topic,
                self.partition,
                self.offset,
                self.timestamp_ms,
                self.model_sha256_prefix.as_bytes(),
            )
        }
    }

    /// A [`SOURCE`] header value written straight from the coordinates (this runs once per
    /// output record): `model_sha256` is cut to [`COMPACT_SHA256_DIGITS`].
    pub fn compact_source(
        topic: &str,
        partition: i32,
        offset: i64,
        timestamp_ms: i64,
        model_sha256: &[u8],
    ) -> Vec<u8> {
        use std::io::Write;
        let model = &model_sha256[..COMPACT_SHA256_DIGITS.min(model_sha256.len())];
        let mut value = Vec::with_capacity(topic.len() + 48 + model.len());
        // Writing to a Vec cannot fail.
        let _ = write!(value, "{topic}:{partition}:{offset}:{timestamp_ms}:");
        value.extend_from_slice(model);
        value
    }

    /// A rejected record's headers as its dead letter carries them: its own, then where it
    /// came from, the stage that rejected it and why (on one line, as people and tools read
    /// it). Used by `run` and by `train`.
    pub fn dead_letter(
        record: &crate::kafka::SourceRecord,
        stage: &str,
        reason: &str,
    ) -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut h = record.headers.clone();
        let reason = reason.replace(['\n', '\r'], " ");
        for (name, value) in [
            (DLQ_SOURCE_TOPIC, record.topic.as_bytes().to_vec()),
            (
                DLQ_SOURCE_PARTITION,
                record.partition.to_string().into_bytes(),
            ),
            (DLQ_SOURCE_OFFSET, record.offset.to_string().into_bytes()),
            (DLQ_STAGE, stage.as_bytes().to_vec()),
            (DLQ_REASON, reason.into_bytes()),
        ] {
            h.insert(name.to_string(), value);
        }
        h
    }
}

/// Which provenance headers each output record carries.
///
/// Headers cost the broker work per record (tansu stores each as a database row) and bytes on
/// the wire; docs/performance.md "Output headers" has the figures behind the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputHeaders {
    /// Each coordinate in a header of its own: `source.topic`, `source.partition`,
    /// `source.offset`, `source.timestamp`, `model.sha256` (and `model.version` for a model
    /// `streamtract train` wrote).
    Full,
    /// One header, [`headers::SOURCE`], with the same coordinates and a 16-digit prefix of the
    /// model's SHA-256 (and `model.version` for a versioned model): the default.
    #[default]
    Compact,
    /// No headers: outputs no longer say where they came from.
    None,
}

impl FromStr for OutputHeaders {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "full" | "true" => Ok(OutputHeaders::Full),
            "compact" => Ok(OutputHeaders::Compact),
            "none" | "false" => Ok(OutputHeaders::None),
            _ => Err("`full`, `compact` or `none` (`true` means full, `false` none)".into()),
        }
    }
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
    /// Cluster connection (inputs, and outputs unless `output_kafka` is set).
    pub kafka: KafkaConfig,
    /// The cluster outputs (and dead letters and shadow outputs) go to, when it is not the
    /// input cluster: e.g. an edge box reading a broker on the box and sending results to a
    /// central cluster. Its own brokers, TLS and SASL.
    pub output_kafka: Option<KafkaConfig>,
    /// A disk spool for outputs while the output cluster cannot take them (see
    /// [`crate::kafka::spool`]); opened by [`Pipeline::connect`] and used by every sink.
    pub spool: Option<SpoolConfig>,
    /// What to read and from where.
    pub source: SourceConfig,
    /// Output topic and its batching.
    pub sink: SinkConfig,
    /// ONNX model file.
    pub model: PathBuf,
    /// How the model (and a shadow model) is compiled, on every load and reload: default
    /// options unless set, e.g. with [`PipelineConfig::graph_rewrites`].
    pub model_options: ModelOptions,
    /// How input values are decoded.
    pub input_format: InputFormat,
    /// How outputs are encoded.
    pub output_format: OutputFormat,
    /// The schema registry [`OutputFormat::ConfluentAvro`] registers its schema with (the
    /// Confluent Avro input carries its own, usually a clone of this one).
    pub schema_registry: Option<crate::codec::SchemaRegistry>,
    /// Add the K best classes of the first output.
    pub top_k: Option<usize>,
    /// Most rows per inference batch.
    pub batch_size: usize,
    /// Longest a row waits for its batch to fill.
    pub linger: Duration,
    /// Run a batch that has not filled at once, without waiting out `linger`, when every
    /// input partition has been read up to its high watermark ([`Source::caught_up`]): at a
    /// low rate a record then waits for no other (default `true`). Under a backlog fetches
    /// are not caught up and batches fill as before; at rates in between, batches hold what
    /// each fetch brought. `false` always waits out `linger` for a fuller batch.
    pub flush_when_caught_up: bool,
    /// Inference threads.
    pub workers: usize,
    /// Values larger than this are rejected as bad records.
    pub max_record_bytes: usize,
    /// Bad-record policy when no dead-letter topic is configured.
    pub on_error: ErrorPolicy,
    /// Dead-letter topic: rejected records are written there unchanged, with headers saying
    /// where they came from and why they were rejected.
    pub dlq: Option<String>,
    /// The provenance headers on every output ([`OutputHeaders::Compact`] by default).
    pub output_headers: OutputHeaders,
    /// Consumer group: with it, positions are fetched from and committed to the group, and
    /// (unless every input names explicit partitions) Kafka assigns the partitions.
    pub group: Option<GroupConfig>,
    /// How often acknowledged positions are committed (consumer-group mode).
    pub commit_interval: Duration,
    /// In group mode, reading pauses while this many records are read but not committed:
    /// the most records a crash can make the next reader process again.
    pub max_uncommitted: usize,
    /// Reading pauses while the records read and not yet done (output or dead letter not yet
    /// acknowledged) hold this many bytes of key, value and headers. With the fetch buffers
    /// ([`SourceConfig`]) this bounds memory when the output side is slower than the input.
    /// 4 MiB by default: held records take two to three times their counted bytes in memory
    /// (allocations, decoded rows, outputs with headers), and a few hundred kilobytes in flight
    /// already keep the pipeline busy.
    pub max_in_flight_bytes: usize,
    /// On shutdown or rebalance, how long to wait for in-flight records to be acknowledged.
    pub drain_timeout: Duration,
    /// Where the pipeline counts what it does and reports readiness; clone it before
    /// [`Pipeline::connect`] to read or serve it ([`crate::metrics::serve`]).
    pub metrics: Metrics,
    /// Serve `metrics` over HTTP on this address (`/metrics`, `/healthz`, `/readyz`) from the
    /// start of [`Pipeline::connect`] until the run ends. Off by default.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How often the model file is checked for a new version (changed modification time or
    /// size, stable for one interval); a new version is loaded, checked and swapped in between
    /// batches. `None`: only [`ReloadHandle::request`] reloads.
    pub model_check_interval: Option<Duration>,
    /// A second model fed the same batches, for comparing a candidate with the model in
    /// service: its outputs go to their own topic and disagreements on the top class are
    /// counted. Its outputs are best effort (not part of what is committed).
    pub shadow: Option<ShadowConfig>,
}

/// A shadow model and where its outputs go; see [`PipelineConfig::shadow`].
#[derive(Debug, Clone)]
pub struct ShadowConfig {
    /// ONNX model file; its inputs must have the same shapes as the main model's.
    pub model: PathBuf,
    /// Topic for its outputs (must exist).
    pub output: String,
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
            output_kafka: None,
            spool: None,
            source: SourceConfig::new(vec![TopicSelection {
                topic: input.to_string(),
                partitions: None,
            }]),
            sink: SinkConfig::new(output),
            model: model.into(),
            model_options: ModelOptions::default(),
            input_format: InputFormat::Csv { delimiter: b',' },
            output_format: OutputFormat::Json,
            schema_registry: None,
            top_k: None,
            batch_size: 256,
            linger: Duration::from_millis(5),
            flush_when_caught_up: true,
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            max_record_bytes: 1 << 20,
            on_error: ErrorPolicy::Skip,
            dlq: None,
            output_headers: OutputHeaders::Compact,
            group: None,
            commit_interval: Duration::from_secs(1),
            max_uncommitted: 10_000,
            max_in_flight_bytes: 4 << 20,
            drain_timeout: Duration::from_secs(30),
            metrics: Metrics::default(),
            metrics_addr: None,
            model_check_interval: Some(Duration::from_secs(2)),
            shadow: None,
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

    /// Whether a partial batch runs as soon as every input partition is caught up (default)
    /// or always waits out the linger; see the field of the same name.
    pub fn flush_when_caught_up(mut self, yes: bool) -> Self {
        self.flush_when_caught_up = yes;
        self
    }

    /// Inference threads.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Whether the model gets streamtract's graph rewrites (on by default); see
    /// [`GraphRewrites`].
    pub fn graph_rewrites(mut self, rewrites: GraphRewrites) -> Self {
        self.model_options.graph_rewrites = rewrites;
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
    /// Rows the shadow model scored next to the main model (0 without a shadow model).
    pub shadow_rows: u64,
    /// Of those, rows where the two models' top classes (argmax of the first output) differ.
    pub shadow_disagreements: u64,
    /// From each record's timestamp to the broker's acknowledgement of its output or dead
    /// letter. For records that waited in the topic before the run, that wait is included.
    pub latency: Latency,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Fetch requests answered and the records they carried.
    pub fetches: kafka::RequestCounts,
    /// Produce requests of the output topic acknowledged and the records they carried.
    pub produces: kafka::RequestCounts,
}

/// A validated, connected pipeline, ready to [`run`](Pipeline::run).
pub struct Pipeline {
    config: PipelineConfig,
    model: Model,
    consumer: Consumer,
    source: Source,
    stages: Stages,
    /// Kept alive for the run; stops serving when dropped.
    metrics_server: Option<MetricsServer>,
    reload: ReloadHandle,
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
        // First, so that probes see `starting` while the rest connects and loads.
        let metrics_server = start_metrics_server(&config).await?;
        // The models before Kafka: a model that cannot work fails before anything is consumed.
        let (serving, shadow_serving) = load_models(&config).await?;
        let model = serving.model.clone();
        check_registry(&config, &serving).await?;
        let spool = open_spool(&config)?;
        let client = kafka::connect(&config.kafka).await?;
        let output = match &config.output_kafka {
            Some(kafka) => Output {
                client: connect_output(kafka, spool.as_ref()).await?,
                kafka,
                spool,
            },
            None => Output {
                client: Some(Arc::clone(&client)),
                kafka: &config.kafka,
                spool,
            },
        };
        let (sink, dlq, acks) = start_sinks(&output, &config).await?;
        let shadow = match (shadow_serving, &config.shadow) {
            (Some(s), Some(shadow)) => {
                let sink = output
                    .start(SinkConfig::new(shadow.output.as_str()), None)
                    .await?;
                tracing::info!(model = %shadow.model.display(), sha256 = s.sha256(),
                    output = %shadow.output, "shadow model ready");
                Some((s, sink))
            }
            _ => None,
        };
        // Unknown input topics fail here, before joining a group.
        for sel in &config.source.topics {
            kafka::topic_partitions(&client, &config.kafka, &sel.topic, "input").await?;
        }
        let consumer = Consumer::start(
            Arc::clone(&client),
            &config.kafka,
            config.source.clone(),
            config.group.as_ref(),
        )
        .await?;
        let source = start_source(&config, &consumer).await?;
        tracing::info!(
            model = %model.path().display(),
            sha256 = %model.sha256(),
            partitions = source.ranges().len(),
            bounded_total = ?source.bounded_total(),
            workers = serving.pool.workers(),
            compiled_batch_sizes = ?model.compiled_batch_sizes(),
            model_load_ms = serving.load_time.as_millis() as u64,
            kernels = %crate::model::Kernels::native(),
            "pipeline ready"
        );
        config.metrics.model(model.sha256(), model.path());
        config.metrics.watch_lag(config.source.lag.clone());
        config.metrics.set_readiness(Readiness::Ready);
        let stages = Stages {
            config: config.clone(),
            serving,
            sink,
            dlq,
            shadow,
            acks,
        };
        Ok(Pipeline {
            config,
            model,
            consumer,
            source,
            stages,
            metrics_server,
            reload: ReloadHandle::default(),
        })
    }

    /// The model loaded at start-up (a reload swaps in another one while the pipeline runs).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// A handle to request a model reload while the pipeline runs (the CLI calls it on
    /// SIGHUP); take it before [`run`](Self::run).
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// Per-partition consumer lag (high watermark minus committed position), updated while
    /// the pipeline runs; clone it before [`run`](Self::run) to watch it.
    pub fn lag(&self) -> ConsumerLag {
        self.config.source.lag.clone()
    }

    /// Records between the start and end offsets of all partitions in bounded mode (what a
    /// run will read unless it is stopped or rebalanced); `None` when following.
    pub fn bounded_total(&self) -> Option<u64> {
        self.source.bounded_total()
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
            mut consumer,
            mut source,
            stages,
            metrics_server: _metrics_server,
            reload,
        } = self;
        let started = Instant::now();
        let (reloads, watcher) = reload::watch(config.clone(), model.sha256().to_string(), reload);
        let mut run = RunLoop::new(stages, Some(reloads));
        let mut shutdown = Box::pin(shutdown.fuse());
        let mut commit_due = tokio::time::interval(config.commit_interval);
        commit_due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut result: Result<()> = Ok(());
        let consumer_commits = consumer.commits();
        let mut last_lag_log = Instant::now();
        loop {
            let stop = {
                let mut rebalance = Box::pin(consumer.rebalance_needed());
                run.pump(&mut source, &mut shutdown, &mut rebalance, &mut commit_due)
                    .await
            };
            match stop {
                None => {
                    commit(&consumer, &mut run, &config.source.lag).await;
                    if consumer_commits && last_lag_log.elapsed() >= Duration::from_secs(30) {
                        last_lag_log = Instant::now();
                        tracing::info!(total_lag = config.source.lag.total(), "consumer lag");
                    }
                }
                Some(Stop::SourceEnded) if consumer.is_member() && !config.source.until_end => {
                    // No partitions assigned: wait for a rebalance to bring some.
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = consumer.rebalance_needed() => {
                            if let Err(e) = rebalance(&config, &mut consumer, &mut run, &mut source).await {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                }
                Some(Stop::Rebalance) => {
                    if let Err(e) = rebalance(&config, &mut consumer, &mut run, &mut source).await {
                        result = Err(e);
                        break;
                    }
                }
                Some(Stop::Shutdown) => {
                    tracing::info!("shutdown requested: finishing the records in flight");
                    break;
                }
                Some(Stop::SourceEnded) | Some(Stop::Fatal) => break,
            }
        }
        config.metrics.set_readiness(Readiness::Stopping);
        drop(source);
        watcher.abort();
        wind_down(&config, consumer, &mut run).await;
        run.summary.elapsed = started.elapsed();
        run.summary.fetches = config.source.fetches.read();
        run.summary.produces = config.sink.produces.read();
        let summary = run.finish().await?;
        result?;
        log_summary(&summary);
        Ok(summary)
    }
}

/// After the loop: finishes the batches in flight, commits what they acknowledged (retried:
/// the last commit matters most, and a rebalance may be in progress), leaves the group and
/// logs the lag it leaves behind.
async fn wind_down(config: &PipelineConfig, consumer: Consumer, run: &mut RunLoop) {
    run.drain(config.drain_timeout).await;
    for _ in 0..5 {
        commit(&consumer, run, &config.source.lag).await;
        if run.tracker.commits().is_empty() {
            break;
        }
    }
    let commits = consumer.commits();
    if let Err(e) = consumer.leave().await {
        tracing::warn!(error = %e, "leaving the consumer group failed; the broker will drop this member after the session timeout");
    }
    if commits {
        for ((topic, partition), l) in config.source.lag.snapshot() {
            tracing::info!(%topic, partition, high_watermark = l.high_watermark, committed = ?l.committed, lag = ?l.lag(), "consumer lag at shutdown");
        }
    }
}

/// The `run finished` log line: the summary's figures as fields.
fn log_summary(summary: &RunSummary) {
    tracing::info!(
        records_in = summary.records_in,
        records_out = summary.records_out,
        rejected = summary.rejected,
        dead_letters = summary.dead_letters,
        batches = summary.batches,
        shadow_rows = summary.shadow_rows,
        shadow_disagreements = summary.shadow_disagreements,
        latency_p50_ms = millis(summary.latency.p50),
        latency_p99_ms = millis(summary.latency.p99),
        latency_max_ms = millis(summary.latency.max),
        fetch_requests = summary.fetches.requests,
        records_per_fetch = summary.fetches.records_per_request().round(),
        produce_requests = summary.produces.requests,
        records_per_produce = summary.produces.records_per_request().round(),
        seconds = summary.elapsed.as_secs_f64(),
        "run finished"
    );
}

/// Serves /metrics, /healthz and /readyz when an address is configured.
async fn start_metrics_server(config: &PipelineConfig) -> Result<Option<MetricsServer>> {
    let Some(addr) = config.metrics_addr else {
        return Ok(None);
    };
    let server = crate::metrics::serve(addr, config.metrics.clone())
        .await
        .map_err(|e| ConfigError::Invalid {
            field: "metrics_addr",
            expected: "an address this process can listen on".into(),
            found: format!("{addr} ({e})"),
        })?;
    tracing::info!(addr = %server.local_addr(), "serving /metrics, /healthz and /readyz");
    Ok(Some(server))
}

/// Loads the model and the shadow model, if any; the shadow model must take as many values
/// per record as the model, since the same decoded values feed both.
async fn load_models(config: &PipelineConfig) -> Result<(Serving, Option<Serving>)> {
    let serving = Serving::load(config, &config.model).await?;
    let Some(shadow) = &config.shadow else {
        return Ok((serving, None));
    };
    let s = Serving::load(config, &shadow.model).await?;
    // Per input, the row sizes must match (shapes may differ: [64] and [8, 8, 1] take the
    // same 64 values).
    let sizes = |shapes: &[Vec<usize>]| -> Vec<usize> {
        shapes.iter().map(|r| r.iter().product()).collect()
    };
    if sizes(&s.row_shapes) != sizes(&serving.row_shapes) {
        return Err(ConfigError::Invalid {
            field: "shadow_model",
            expected: format!(
                "a model taking as many values per record as {} (per input: {:?})",
                serving.model.file_name(),
                sizes(&serving.row_shapes)
            ),
            found: format!(
                "{} (per input: {:?})",
                shadow.model.display(),
                sizes(&s.row_shapes)
            ),
        }
        .into());
    }
    Ok((serving, Some(s)))
}

/// Confluent Avro input: the registry must answer at start-up (an unreachable registry or
/// one refusing our credentials is a configuration problem, not a stream of bad records), and
/// the latest schema registered for each input topic (`<topic>-value`, Confluent's
/// TopicNameStrategy), if any, must be able to feed the model.
async fn check_registry(config: &PipelineConfig, serving: &Serving) -> Result<()> {
    let Some(registry) = serving.decoder.avro_input().and_then(|a| a.registry()) else {
        return Ok(());
    };
    for sel in &config.source.topics {
        let subject = format!("{}-value", sel.topic);
        let latest = registry
            .check(&subject, config.kafka.connect_timeout)
            .await?;
        if let Some(schema) = latest {
            serving
                .decoder
                .check_avro_schema(schema)
                .map_err(|message| crate::model::ModelError::Signature {
                    model: serving.model.file_name(),
                    message: format!(
                        "the latest schema of subject `{subject}` in {}: {message}",
                        registry.url()
                    ),
                })?;
        }
    }
    tracing::info!(registry = registry.url(), "schema registry reachable");
    Ok(())
}

/// Acknowledged outputs of the sink and the dead-letter sink, as source coordinates.
type Acks = mpsc::UnboundedReceiver<Vec<kafka::SourceCoordinates>>;

/// Where outputs go: the output cluster's client (none while it cannot be reached and a
/// spool takes the outputs), its settings, and the spool if any.
struct Output<'a> {
    client: Option<Arc<rskafka::client::Client>>,
    kafka: &'a KafkaConfig,
    spool: Option<Spool>,
}

impl Output<'_> {
    /// Starts a sink on the output cluster, through the spool if there is one.
    async fn start(
        &self,
        mut sink: SinkConfig,
        acks: Option<mpsc::UnboundedSender<Vec<kafka::SourceCoordinates>>>,
    ) -> Result<Sink> {
        if let Some(spool) = &self.spool {
            sink.spool = Some(spool.clone());
        }
        match &self.client {
            Some(client) => Ok(Sink::start(Arc::clone(client), self.kafka, &sink, acks).await?),
            None => {
                let kafka = self.kafka.clone();
                let connect = move || {
                    let kafka = kafka.clone();
                    async move { kafka::connect(&kafka).await }.boxed()
                };
                Ok(Sink::start_offline(&sink, acks, connect)?)
            }
        }
    }
}

/// Connects to a separate output cluster. With a spool, an unreachable cluster is not an
/// error: outputs go to the spool until it answers (tried for the uplink timeout here).
async fn connect_output(
    kafka: &KafkaConfig,
    spool: Option<&Spool>,
) -> Result<Option<Arc<rskafka::client::Client>>> {
    let Some(spool) = spool else {
        return Ok(Some(kafka::connect(kafka).await?));
    };
    let mut probe = kafka.clone();
    probe.connect_timeout = probe.connect_timeout.min(spool.config().uplink_timeout);
    match kafka::connect(&probe).await {
        Ok(client) => Ok(Some(client)),
        Err(e @ kafka::KafkaError::Unreachable { .. }) => {
            tracing::warn!(error = %e, "output cluster unreachable at start-up; outputs go to the spool until it answers");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens the spool (a bad directory or bound fails here, before anything is read) and has
/// the metrics watch it. What an earlier run left is logged as each sink opens it.
fn open_spool(config: &PipelineConfig) -> Result<Option<Spool>> {
    let spool = match (&config.spool, &config.sink.spool) {
        (Some(options), _) => Spool::open(options.clone()).map_err(kafka::KafkaError::from)?,
        (None, Some(spool)) => spool.clone(),
        (None, None) => return Ok(None),
    };
    config.metrics.watch_spool(spool.status());
    let options = spool.config();
    tracing::info!(dir = %options.dir.display(), max_bytes = options.max_bytes,
        uplink_timeout_ms = options.uplink_timeout.as_millis() as u64, "output spool ready");
    Ok(Some(spool))
}

/// Starts the output sink and the dead-letter sink; both report acknowledged records on the
/// returned channel, which is what commits follow.
async fn start_sinks(
    output: &Output<'_>,
    config: &PipelineConfig,
) -> Result<(Sink, Option<Sink>, Acks)> {
    let (ack_tx, acks) = mpsc::unbounded_channel();
    let sink = output
        .start(config.sink.clone(), Some(ack_tx.clone()))
        .await?;
    let dlq = match &config.dlq {
        Some(topic) => Some(
            output
                .start(SinkConfig::new(topic.as_str()), Some(ack_tx))
                .await?,
        ),
        None => None,
    };
    Ok((sink, dlq, acks))
}

/// Starts reading what the consumer says to read, from the committed positions where there
/// are any; those positions are the partitions' lag baselines.
async fn start_source(config: &PipelineConfig, consumer: &Consumer) -> Result<Source> {
    let opened = consumer.open_source().await?;
    for ((topic, partition), position) in &opened.resumed {
        config
            .source
            .lag
            .set_committed(topic, *partition, *position);
    }
    Ok(opened.source)
}

/// Commits the acknowledged positions; a failure is logged and retried at the next commit.
async fn commit(consumer: &Consumer, run: &mut RunLoop, lag: &ConsumerLag) {
    if !consumer.commits() {
        run.tracker.take_commits();
        return;
    }
    let positions = run.tracker.commits();
    if positions.is_empty() {
        return;
    }
    match consumer.commit(&positions).await {
        Ok(_) => {
            run.tracker.confirm(&positions);
            run.metrics().commit();
            for ((topic, partition), position) in &positions {
                lag.set_committed(topic, *partition, *position);
            }
            tracing::debug!(partitions = positions.len(), "committed");
        }
        Err(e) => {
            tracing::warn!(error = %e, "commit failed; will retry");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Eager rebalance: stop reading, finish and commit what is in flight, rejoin, read the new
/// assignment from its committed positions.
async fn rebalance(
    config: &PipelineConfig,
    consumer: &mut Consumer,
    run: &mut RunLoop,
    source: &mut Source,
) -> Result<()> {
    tracing::info!("rebalance: finishing the records in flight before giving up the partitions");
    config.metrics.set_readiness(Readiness::Rebalancing);
    config.metrics.rebalance();
    *source = Source::idle();
    run.drain(config.drain_timeout).await;
    commit(consumer, run, &config.source.lag).await;
    run.tracker.forget_all();
    run.forget_held();
    config.source.lag.clear();
    consumer.rejoin().await?;
    *source = start_source(config, consumer).await?;
    config.metrics.set_readiness(Readiness::Ready);
    Ok(())
}

/// A duration in milliseconds, for log fields.
fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
