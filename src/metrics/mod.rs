//! What a running pipeline reports to operators: Prometheus metrics and readiness.
//!
//! [`Metrics`] is a cheap-to-clone handle: the pipeline counts into it as it works, and
//! [`serve`] exposes it over HTTP (`/metrics` in the Prometheus/OpenMetrics text format,
//! `/healthz`, `/readyz`). Counting is always on (a few atomic adds per record); the listener
//! only runs when asked for (`--metrics-addr`).
//!
//! ```
//! use streamtract::metrics::{Metrics, Stage};
//! let metrics = Metrics::default();
//! metrics.record_in("events", 0, 3);
//! metrics.rejected(Stage::Decode, true);
//! let text = metrics.encode();
//! assert!(text.contains(r#"streamtract_records_in_total{topic="events",partition="0"} 3"#));
//! assert!(text.contains(r#"streamtract_dead_letters_total{stage="decode"} 1"#));
//! ```

mod server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use server::{serve, MetricsServer};

use crate::kafka::{ConsumerLag, SpoolReading, SpoolStatus};

/// A topic partition as metric labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: String,
}

/// The stage that rejected a record (also the `dlq.stage` header's value).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Stage {
    /// Larger than `max_record_bytes`.
    Size,
    /// Not decodable, or not fitting the model's input signature.
    Decode,
    /// The model failed on it.
    Model,
}

impl Stage {
    /// The label and header value: `size`, `decode` or `model`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Size => "size",
            Stage::Decode => "decode",
            Stage::Model => "model",
        }
    }
}

impl EncodeLabelValue for Stage {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: Stage,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    sha256: String,
    path: String,
}

/// Why the pipeline is not ready, or that it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Connecting to the brokers, joining the group, loading the model.
    Starting,
    /// Reading its partitions with a loaded model.
    Ready,
    /// Giving up its partitions for a consumer-group rebalance.
    Rebalancing,
    /// Finishing the records in flight before exiting.
    Stopping,
}

impl Readiness {
    fn as_str(self) -> &'static str {
        match self {
            Readiness::Starting => "starting",
            Readiness::Ready => "ready",
            Readiness::Rebalancing => "rebalancing",
            Readiness::Stopping => "stopping",
        }
    }
}

struct Inner {
    registry: Registry,
    records: RecordMetrics,
    timing: TimingMetrics,
    consumer: ConsumerMetrics,
    serving: ModelMetrics,
    uplink: UplinkMetrics,
    readiness: Mutex<Readiness>,
    lag_source: Mutex<Option<ConsumerLag>>,
    spool_source: Mutex<Option<SpoolStatus>>,
    /// Totals over all partitions, for progress displays.
    read: AtomicU64,
    written: AtomicU64,
}

/// Where records went: read, written, rejected and dead-lettered.
struct RecordMetrics {
    records_in: Family<PartitionLabels, Counter>,
    records_out: Family<PartitionLabels, Counter>,
    rejected: Family<StageLabels, Counter>,
    dead_letters: Family<StageLabels, Counter>,
}

impl RecordMetrics {
    /// Registers the record counters.
    fn register(registry: &mut Registry) -> RecordMetrics {
        let records_in = Family::default();
        registry.register(
            "records_in",
            "Records read, per source topic partition",
            records_in.clone(),
        );
        let records_out = Family::default();
        registry.register(
            "records_out",
            "Outputs handed to the producer, per output topic partition",
            records_out.clone(),
        );
        let rejected = Family::default();
        registry.register(
            "rejected",
            "Records rejected (dead-lettered, skipped or stopping the run), per stage",
            rejected.clone(),
        );
        let dead_letters = Family::default();
        registry.register(
            "dead_letters",
            "Rejected records written to the dead-letter topic, per stage",
            dead_letters.clone(),
        );
        RecordMetrics {
            records_in,
            records_out,
            rejected,
            dead_letters,
        }
    }
}

/// Batch sizes, inference time and end-to-end latency.
struct TimingMetrics {
    batch_rows: Histogram,
    inference_seconds: Histogram,
    end_to_end_seconds: Histogram,
}

impl TimingMetrics {
    /// Registers the batch and latency histograms.
    fn register(registry: &mut Registry) -> TimingMetrics {
        let batch_rows = Histogram::new(exponential_buckets(1.0, 2.0, 17));
        registry.register("batch_rows", "Rows per inference batch", batch_rows.clone());
        let inference_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        registry.register(
            "inference_seconds",
            "Time a batch spends in the model, on its inference thread",
            inference_seconds.clone(),
        );
        let end_to_end_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 18));
        registry.register(
            "end_to_end_seconds",
            "From a record's timestamp to the broker's acknowledgement of its output or dead letter",
            end_to_end_seconds.clone(),
        );
        TimingMetrics {
            batch_rows,
            inference_seconds,
            end_to_end_seconds,
        }
    }
}

/// The consumer's standing: lag, commits and rebalances.
struct ConsumerMetrics {
    lag: Family<PartitionLabels, Gauge>,
    commits: Counter,
    rebalances: Counter,
}

impl ConsumerMetrics {
    /// Registers the lag gauge and the commit and rebalance counters.
    fn register(registry: &mut Registry) -> ConsumerMetrics {
        let lag = Family::default();
        registry.register(
            "consumer_lag",
            "High watermark minus committed position, per partition (commit modes only)",
            lag.clone(),
        );
        let commits = Counter::default();
        registry.register(
            "commits",
            "Offset commits accepted by the broker",
            commits.clone(),
        );
        let rebalances = Counter::default();
        registry.register(
            "rebalances",
            "Consumer-group rebalances this process went through",
            rebalances.clone(),
        );
        ConsumerMetrics {
            lag,
            commits,
            rebalances,
        }
    }
}

/// The output spool and the uplink (with `--spool-dir`).
struct UplinkMetrics {
    spool_bytes: Gauge,
    spool_records: Gauge,
    spool_oldest_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    uplink_up: Gauge,
}

impl UplinkMetrics {
    fn register(registry: &mut Registry) -> UplinkMetrics {
        let spool_bytes = Gauge::default();
        registry.register(
            "spool_bytes",
            "Bytes of output spool files on disk",
            spool_bytes.clone(),
        );
        let spool_records = Gauge::default();
        registry.register(
            "spool_records",
            "Output records in the spool, waiting for the output cluster",
            spool_records.clone(),
        );
        let spool_oldest_age = Gauge::default();
        registry.register(
            "spool_oldest_age_seconds",
            "Age of the oldest record in the spool (0 when empty)",
            spool_oldest_age.clone(),
        );
        let uplink_up = Gauge::default();
        registry.register(
            "uplink_up",
            "1 while the output cluster takes records, 0 while outputs are spooled",
            uplink_up.clone(),
        );
        UplinkMetrics {
            spool_bytes,
            spool_records,
            spool_oldest_age,
            uplink_up,
        }
    }
}

/// The model being served: reloads, the shadow model's figures and the model's identity.
struct ModelMetrics {
    reloads: Family<OutcomeLabels, Counter>,
    shadow_rows: Counter,
    shadow_disagreements: Counter,
    shadow_failures: Counter,
    model: Family<ModelLabels, Gauge>,
}

impl ModelMetrics {
    /// Registers the reload and shadow counters and the model info gauge.
    fn register(registry: &mut Registry) -> ModelMetrics {
        let reloads = Family::default();
        registry.register(
            "model_reloads",
            "Model reload attempts, by outcome: loaded, unchanged (same SHA-256) or failed",
            reloads.clone(),
        );
        let shadow_rows = Counter::default();
        registry.register(
            "shadow_rows",
            "Rows scored by the shadow model next to the main model",
            shadow_rows.clone(),
        );
        let shadow_disagreements = Counter::default();
        registry.register(
            "shadow_disagreements",
            "Shadow-scored rows whose top class differs from the main model's",
            shadow_disagreements.clone(),
        );
        let shadow_failures = Counter::default();
        registry.register(
            "shadow_failures",
            "Batches the shadow model failed on, or whose shadow outputs could not be written",
            shadow_failures.clone(),
        );
        let model = Family::default();
        registry.register(
            "model_info",
            "The model being served (value 1), by SHA-256 and path",
            model.clone(),
        );
        ModelMetrics {
            reloads,
            shadow_rows,
            shadow_disagreements,
            shadow_failures,
            model,
        }
    }
}

/// The pipeline's counters, histograms and readiness; clones share them.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("readiness", &self.readiness())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("streamtract");
        // Registered in this order, which is the order `/metrics` lists them in.
        let records = RecordMetrics::register(&mut registry);
        let timing = TimingMetrics::register(&mut registry);
        let consumer = ConsumerMetrics::register(&mut registry);
        let serving = ModelMetrics::register(&mut registry);
        let uplink = UplinkMetrics::register(&mut registry);
        Metrics(Arc::new(Inner {
            registry,
            records,
            timing,
            consumer,
            serving,
            uplink,
            readiness: Mutex::new(Readiness::Starting),
            lag_source: Mutex::new(None),
            spool_source: Mutex::new(None),
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
        }))
    }
}

fn partition_labels(topic: &str, partition: i32) -> PartitionLabels {
    PartitionLabels {
        topic: topic.to_string(),
        partition: partition.to_string(),
    }
}

impl Metrics {
    /// `n` records read from a source partition.
    pub fn record_in(&self, topic: &str, partition: i32, n: u64) {
        self.0
            .records
            .records_in
            .get_or_create(&partition_labels(topic, partition))
            .inc_by(n);
        self.0.read.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` outputs handed to the producer for an output partition.
    pub fn record_out(&self, topic: &str, partition: i32, n: u64) {
        self.0
            .records
            .records_out
            .get_or_create(&partition_labels(topic, partition))
            .inc_by(n);
        self.0.written.fetch_add(n, Ordering::Relaxed);
    }

    /// Records read so far, all partitions together.
    pub fn records_read(&self) -> u64 {
        self.0.read.load(Ordering::Relaxed)
    }

    /// Records finished so far (output handed to the producer, or rejected).
    pub fn records_finished(&self) -> u64 {
        self.0.written.load(Ordering::Relaxed)
    }

    /// A record was rejected at `stage`; `dead_lettered` when it went to the DLQ.
    pub fn rejected(&self, stage: Stage, dead_lettered: bool) {
        let labels = StageLabels { stage };
        self.0.records.rejected.get_or_create(&labels).inc();
        self.0.written.fetch_add(1, Ordering::Relaxed);
        if dead_lettered {
            self.0.records.dead_letters.get_or_create(&labels).inc();
        }
    }

    /// A batch of `rows` rows came back from the model after `inference` on its thread.
    pub fn batch(&self, rows: usize, inference: Duration) {
        self.0.timing.batch_rows.observe(rows as f64);
        self.0
            .timing
            .inference_seconds
            .observe(inference.as_secs_f64());
    }

    /// The broker acknowledged a record's output (or dead letter) `latency` after the record's
    /// timestamp.
    pub fn end_to_end(&self, latency: Duration) {
        self.0
            .timing
            .end_to_end_seconds
            .observe(latency.as_secs_f64());
    }

    /// The broker accepted an offset commit.
    pub fn commit(&self) {
        self.0.consumer.commits.inc();
    }

    /// The process went through a consumer-group rebalance.
    pub fn rebalance(&self) {
        self.0.consumer.rebalances.inc();
    }

    /// The shadow model scored `rows` rows, `disagreements` of them with another top class.
    pub fn shadow(&self, rows: u64, disagreements: u64) {
        self.0.serving.shadow_rows.inc_by(rows);
        self.0.serving.shadow_disagreements.inc_by(disagreements);
    }

    /// The shadow model failed on a batch, or its outputs could not be written.
    pub fn shadow_failure(&self) {
        self.0.serving.shadow_failures.inc();
    }

    /// A model reload ended with `outcome` (`loaded`, `unchanged` or `failed`).
    pub fn model_reload(&self, outcome: &str) {
        self.0
            .serving
            .reloads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The model now being served.
    pub fn model(&self, sha256: &str, path: &std::path::Path) {
        self.0.serving.model.clear();
        self.0
            .serving
            .model
            .get_or_create(&ModelLabels {
                sha256: sha256.to_string(),
                path: path.display().to_string(),
            })
            .set(1);
    }

    /// Where consumer lag is read from when metrics are scraped.
    pub fn watch_lag(&self, lag: ConsumerLag) {
        if let Ok(mut source) = self.0.lag_source.lock() {
            *source = Some(lag);
        }
    }

    /// Where the spool's figures are read from when metrics are scraped or health is asked.
    pub fn watch_spool(&self, spool: SpoolStatus) {
        if let Ok(mut source) = self.0.spool_source.lock() {
            *source = Some(spool);
        }
    }

    /// What `/healthz` says: `ok`, or `degraded: uplink down since …` while outputs are
    /// spooled because the output cluster does not take them (the process still works: inputs
    /// are read, outputs stored on disk).
    pub fn health(&self) -> String {
        let reading = self.spool_reading();
        match reading.and_then(|r| Some((r.uplink_down_since?, r))) {
            Some((since, r)) => format!(
                "degraded: uplink down since {}; {} records ({} bytes of {}) spooled",
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                r.records,
                r.bytes,
                r.max_bytes
            ),
            None => "ok".into(),
        }
    }

    fn spool_reading(&self) -> Option<SpoolReading> {
        let source = self.0.spool_source.lock().ok()?;
        Some(source.as_ref()?.read())
    }

    /// Sets the readiness reported by `/readyz`.
    pub fn set_readiness(&self, readiness: Readiness) {
        if let Ok(mut r) = self.0.readiness.lock() {
            *r = readiness;
        }
    }

    /// The readiness reported by `/readyz`.
    pub fn readiness(&self) -> Readiness {
        self.0
            .readiness
            .lock()
            .map(|r| *r)
            .unwrap_or(Readiness::Stopping)
    }

    /// Every metric in the OpenMetrics text format (what `/metrics` serves).
    pub fn encode(&self) -> String {
        self.refresh_lag();
        self.refresh_spool();
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.0.registry);
        text
    }

    fn refresh_spool(&self) {
        let Some(r) = self.spool_reading() else {
            return;
        };
        let m = &self.0.uplink;
        m.spool_bytes.set(r.bytes as i64);
        m.spool_records.set(r.records as i64);
        let age = r.oldest.map_or(0.0, |t| {
            (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
        });
        m.spool_oldest_age.set(age);
        m.uplink_up.set(i64::from(r.uplink_down_since.is_none()));
    }

    fn refresh_lag(&self) {
        let Ok(source) = self.0.lag_source.lock() else {
            return;
        };
        let Some(lag) = source.as_ref() else { return };
        self.0.consumer.lag.clear();
        for ((topic, partition), l) in lag.snapshot() {
            if let Some(n) = l.lag() {
                self.0
                    .consumer
                    .lag
                    .get_or_create(&partition_labels(&topic, partition))
                    .set(n);
            }
        }
    }
}
