//! Writing results back: [`KafkaWriter`] (tensorflow-io's `write_kafka`, with one producer for
//! every write) and [`OutputSequence`] (its `KafkaOutputSequence`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rskafka::client::Client;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::mpsc;

use super::blocking::Blocking;
use super::connection::{configuration_error, take_configuration, Connection};
use super::librdkafka::Entry;
use super::DatasetError;
use crate::kafka::{OutputRecord, Sink, SinkConfig, SourceCoordinates, Spool};

/// One record to write: a value, and optionally a key, headers and a timestamp.
///
/// Strings and byte vectors convert into an item with just a value (tensorflow-io's items were
/// strings, cut at the first NUL byte; here values are bytes, kept whole).
///
/// ```
/// use streamtract::dataset::OutputItem;
/// let item = OutputItem::new("seven").key("row-17").header("model", "digits_mlp");
/// assert_eq!(item.value, b"seven");
/// let plain: OutputItem = "three".into();
/// assert!(plain.key.is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputItem {
    /// Record value.
    pub value: Vec<u8>,
    /// Record key; unless the topic spec names a partition, it also picks the partition
    /// (murmur2, like the Java client).
    pub key: Option<Vec<u8>>,
    /// Record headers.
    pub headers: BTreeMap<String, Vec<u8>>,
    /// Record timestamp; the time of writing when `None`.
    pub timestamp: Option<DateTime<Utc>>,
}

impl OutputItem {
    /// An item with this value.
    pub fn new(value: impl Into<Vec<u8>>) -> OutputItem {
        OutputItem {
            value: value.into(),
            key: None,
            headers: BTreeMap::new(),
            timestamp: None,
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> OutputItem {
        self.key = Some(key.into());
        self
    }

    /// Sets the key, or clears it with `None`.
    pub fn maybe_key(mut self, key: Option<impl Into<Vec<u8>>>) -> OutputItem {
        self.key = key.map(Into::into);
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> OutputItem {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the timestamp.
    pub fn timestamp(mut self, timestamp: DateTime<Utc>) -> OutputItem {
        self.timestamp = Some(timestamp);
        self
    }
}

impl From<&str> for OutputItem {
    fn from(value: &str) -> Self {
        OutputItem::new(value)
    }
}

impl From<String> for OutputItem {
    fn from(value: String) -> Self {
        OutputItem::new(value)
    }
}

impl From<&[u8]> for OutputItem {
    fn from(value: &[u8]) -> Self {
        OutputItem::new(value)
    }
}

impl From<Vec<u8>> for OutputItem {
    fn from(value: Vec<u8>) -> Self {
        OutputItem::new(value)
    }
}

/// Where and how a [`KafkaWriter`] or [`OutputSequence`] writes.
///
/// The topic is tensorflow-io's `topic:partition` form: `predictions` or `predictions:2`.
/// With a partition every record goes there; without one a keyed record goes where its key
/// hashes to (murmur2, as the Java client), an unkeyed one to partition 0, as tensorflow-io
/// wrote everything. Order is kept per partition, so an [`OutputSequence`] of unkeyed items
/// (or with a partition given) holds its items in index order.
#[derive(Debug, Clone)]
pub struct OutputConfig {
    topic: String,
    partition: Option<i32>,
    connection: Connection,
    flush_timeout: Option<Duration>,
    max_pending: usize,
    max_batch_records: Option<usize>,
    max_batch_bytes: Option<usize>,
    spool: Option<Spool>,
    /// The first `configuration` entry that cannot work, reported when opening.
    invalid: Option<String>,
}

/// The `configuration` keys of an [`OutputConfig`] besides the connection's.
const OUTPUT_KEYS: &[&str] = &[
    "batch.num.messages",
    "batch.size",
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "compression.type",
    "compression.codec",
];

impl OutputConfig {
    /// Writes to `topic` (`name` or `name:partition`) on `localhost:9092`.
    pub fn new(topic: &str) -> Result<OutputConfig, DatasetError> {
        let invalid = |reason: String| DatasetError::InvalidSpec {
            spec: topic.to_string(),
            reason,
        };
        let (name, partition) = match topic.trim().split_once(':') {
            None => (topic.trim(), None),
            Some((name, p)) => match p.parse::<i32>() {
                Ok(n) if n >= 0 => (name, Some(n)),
                _ => {
                    return Err(invalid(format!(
                        "partition `{p}` is not a number >= 0 (an output topic is `topic` or `topic:partition`)"
                    )))
                }
            },
        };
        if name.is_empty() {
            return Err(invalid("the topic name is empty".into()));
        }
        Ok(OutputConfig {
            topic: name.to_string(),
            partition,
            connection: Connection::default(),
            flush_timeout: None,
            max_pending: 100_000,
            max_batch_records: None,
            max_batch_bytes: None,
            spool: None,
            invalid: None,
        })
    }

    super::connection::connection_setters!();

    /// How long a flush waits for acknowledgements before it gives up. Default: the request
    /// timeout of the Kafka config plus 10 s, so a failing request has reported its error by
    /// then (tensorflow-io waited 5 s and then failed).
    pub fn flush_timeout(mut self, timeout: Duration) -> Self {
        self.flush_timeout = Some(timeout);
        self
    }

    /// Most items an [`OutputSequence`] holds while they wait for a lower index (default
    /// 100 000); beyond that `set` fails instead of growing without bound.
    pub fn max_pending(mut self, max: usize) -> Self {
        self.max_pending = max.max(1);
        self
    }

    /// Most records in one produce request (librdkafka's `batch.num.messages`; default
    /// 10 000). A request carries what was queued while the previous one was in flight, up to
    /// this and [`max_batch_bytes`](Self::max_batch_bytes).
    pub fn max_batch_records(mut self, records: usize) -> Self {
        self.max_batch_records = Some(records.max(1));
        self
    }

    /// Most bytes of keys, values and headers in one produce request (librdkafka's
    /// `batch.size`; default 1 MiB).
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = Some(bytes.max(1));
        self
    }

    /// Writes through a disk spool while the cluster does not take records (see
    /// [`crate::kafka::spool`]): a write counts as done, and [`flush`](KafkaWriter::flush)
    /// returns, once the record is acknowledged by the cluster or synced into the spool;
    /// spooled records are sent first, in order per partition, when the cluster answers
    /// again, and [`close`](KafkaWriter::close) waits for that only while it answers. The
    /// cluster must be reachable when the writer opens.
    ///
    /// ```no_run
    /// use streamtract::dataset::{KafkaWriter, OutputConfig};
    /// use streamtract::kafka::{Spool, SpoolConfig};
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let spool = Spool::open(SpoolConfig::new("/var/lib/app/spool", 256 << 20))?;
    /// let config = OutputConfig::new("predictions")?.servers("central:9092").spool(spool);
    /// let mut writer = KafkaWriter::open(&config).await?;
    /// writer.write("0.97").await?;
    /// writer.flush().await?; // acknowledged, or on disk if the uplink is down
    /// # Ok(()) }
    /// ```
    pub fn spool(mut self, spool: Spool) -> Self {
        self.spool = Some(spool);
        self
    }

    /// tensorflow-io's `KafkaOutputSequence(topic, servers, configuration)`: librdkafka
    /// `key=value` entries, so a ported program keeps its list.
    ///
    /// Accepted: the connection keys of [`Connection::configuration`] (brokers, client id,
    /// timeouts, `security.protocol`, `ssl.*`, `sasl.*`), which has the table, and the
    /// producer keys that say what this writer does: `batch.num.messages`
    /// ([`max_batch_records`](Self::max_batch_records)), `batch.size`
    /// ([`max_batch_bytes`](Self::max_batch_bytes)), `acks`/`request.required.acks` = `all`
    /// or `-1` (the writer always waits for every in-sync replica), `enable.idempotence=false`
    /// and `compression.type`/`compression.codec` = `none` (it writes uncompressed batches).
    /// Other values of those are refused, and so is `linger.ms` (there is no linger timer). A
    /// few librdkafka keys with nothing to tune here (e.g. `api.version.request`) are
    /// accepted without effect. Any other key, a value that does not parse, or security keys
    /// that do not go together make [`KafkaWriter::open`] (and the sequences' `open`) fail with
    /// [`DatasetError::InvalidOption`] naming the entry and the accepted keys, before
    /// connecting.
    ///
    /// ```
    /// use streamtract::dataset::{BlockingOutputSequence, OutputConfig};
    /// # fn main() -> Result<(), streamtract::dataset::DatasetError> {
    /// let config = OutputConfig::new("predictions")?.configuration([
    ///     "bootstrap.servers=broker.example.com:9093",
    ///     "security.protocol=SSL",
    ///     "ssl.ca.location=/etc/kafka/ca.pem",
    ///     "batch.num.messages=1000",
    ///     "acks=all",
    /// ]);
    /// # let _ = config;
    ///
    /// let config = OutputConfig::new("predictions")?.configuration(["linger.ms=5"]);
    /// let err = BlockingOutputSequence::open(&config).unwrap_err().to_string();
    /// assert!(err.contains("`linger.ms=5`: the writer has no linger timer"), "{err}");
    /// # Ok(()) }
    /// ```
    pub fn configuration(mut self, entries: impl IntoIterator<Item = impl AsRef<str>>) -> Self {
        let refused = take_configuration(&mut self, entries, |b| &mut b.connection, Self::apply);
        if let Some(reason) = refused {
            self.invalid.get_or_insert(reason);
        }
        self
    }

    /// A producer key; the error names the entry.
    fn apply(&mut self, entry: &Entry<'_>) -> Result<(), String> {
        let value = entry.value.to_ascii_lowercase();
        match entry.key {
            "batch.num.messages" => self.max_batch_records = Some(entry.count()?),
            "batch.size" => self.max_batch_bytes = Some(entry.count()?),
            "acks" | "request.required.acks" => {
                if value != "all" && value != "-1" {
                    return Err(entry.invalid(
                        "the writer always waits for every in-sync replica (`all`), so a flush \
                         means the records are safe; remove the entry or set `all`",
                    ));
                }
            }
            "enable.idempotence" => {
                if entry.boolean()? {
                    return Err(entry.invalid(
                        "the writer is not an idempotent producer: a produce request retried \
                         after a lost answer may write its records twice (at-least-once); \
                         remove the entry or set `false`",
                    ));
                }
            }
            "compression.type" | "compression.codec" => {
                if value != "none" {
                    return Err(entry.invalid(
                        "the writer produces uncompressed batches (compressed ones are only \
                         read); remove the entry or set `none`",
                    ));
                }
            }
            "linger.ms" | "queue.buffering.max.ms" => {
                return Err(entry.invalid(
                    "the writer has no linger timer: each produce request carries what was \
                     queued while the previous one was in flight (up to `batch.num.messages` \
                     and `batch.size`); remove the entry",
                ))
            }
            _ => return Err(entry.unknown("an output sequence", OUTPUT_KEYS)),
        }
        Ok(())
    }

    /// The topic name (without a partition).
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition every record goes to, if the topic spec named one.
    pub fn partition(&self) -> Option<i32> {
        self.partition
    }
}

/// Writes records to one topic with one producer, batching what is written between
/// acknowledgements: tensorflow-io's `write_kafka(message, topic, servers)`, which made a new
/// producer and waited up to 5 s for every single message.
///
/// [`write`](Self::write) queues a record and returns; [`write_kafka`](Self::write_kafka)
/// also waits for its acknowledgement, like tensorflow-io's; [`flush`](Self::flush) waits for
/// everything written so far; [`close`](Self::close) flushes and stops. Dropping a writer with
/// records not yet acknowledged may lose them (a warning is logged): flush or close first.
pub struct KafkaWriter {
    config: OutputConfig,
    client: Arc<Client>,
    topic: Arc<str>,
    sink: Option<Sink>,
    acks: mpsc::UnboundedReceiver<Vec<SourceCoordinates>>,
    /// Records handed to the sink, per output partition.
    sent: Vec<u64>,
    /// Records the broker acknowledged, per output partition.
    acked: Vec<u64>,
    written: u64,
    failed: Option<String>,
}

impl fmt::Debug for KafkaWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaWriter")
            .field("topic", &self.config.topic)
            .field("partition", &self.config.partition)
            .field("written", &self.written)
            .field("acked", &self.acked())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl KafkaWriter {
    /// Connects (unless the config carries a client) and starts a producer for the topic.
    ///
    /// Fails if a [`configuration`](OutputConfig::configuration) entry cannot work (before
    /// connecting), or if the topic, or the partition the config names, does not exist.
    pub async fn open(config: &OutputConfig) -> Result<KafkaWriter, DatasetError> {
        if let Some(reason) = &config.invalid {
            return Err(configuration_error(reason.clone()));
        }
        let mut config = config.clone();
        config.connection.prepare()?;
        let client = config.connection.connect().await?;
        let (sink, acks) = Self::start_sink(&client, &config).await?;
        let partitions = sink.partitions();
        if let Some(p) = config.partition {
            if p >= partitions {
                let _ = sink.close().await;
                return Err(crate::kafka::KafkaError::UnknownPartition {
                    topic: config.topic.clone(),
                    partition: p,
                    count: partitions as usize,
                }
                .into());
            }
        }
        Ok(KafkaWriter {
            topic: Arc::from(config.topic.as_str()),
            config,
            client,
            sink: Some(sink),
            acks,
            sent: vec![0; partitions as usize],
            acked: vec![0; partitions as usize],
            written: 0,
            failed: None,
        })
    }

    async fn start_sink(
        client: &Arc<Client>,
        config: &OutputConfig,
    ) -> Result<(Sink, mpsc::UnboundedReceiver<Vec<SourceCoordinates>>), DatasetError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut sink_config = SinkConfig::new(config.topic.clone());
        if let Some(records) = config.max_batch_records {
            sink_config.max_batch_records = records;
        }
        if let Some(bytes) = config.max_batch_bytes {
            sink_config.max_batch_bytes = bytes;
        }
        sink_config.spool = config.spool.clone();
        let sink = Sink::start(
            Arc::clone(client),
            config.connection.kafka(),
            &sink_config,
            Some(tx),
        )
        .await?;
        Ok((sink, rx))
    }

    /// The topic written to.
    pub fn topic(&self) -> &str {
        &self.config.topic
    }

    /// Records written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Records the broker acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.iter().sum()
    }

    fn check_usable(&self) -> Result<(), DatasetError> {
        match &self.failed {
            Some(message) => Err(DatasetError::WriterFailed {
                topic: self.config.topic.clone(),
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Queues a record; returns once it is queued (waiting while the partition's queue is
    /// full), not when it is acknowledged. Returns the partition it goes to.
    pub async fn write(&mut self, item: impl Into<OutputItem>) -> Result<i32, DatasetError> {
        self.check_usable()?;
        let item = item.into();
        if self.sink.is_none() {
            // A flush that timed out closed the producer; start a new one.
            let (sink, acks) = Self::start_sink(&self.client, &self.config).await?;
            self.sink = Some(sink);
            self.acks = acks;
        }
        let Some(sink) = self.sink.as_ref() else {
            return Err(DatasetError::WriterFailed {
                topic: self.config.topic.clone(),
                message: "no producer".into(),
            });
        };
        let partition = match self.config.partition {
            Some(p) => p,
            None => sink.partition_for(item.key.as_deref(), 0),
        };
        let timestamp = item.timestamp.unwrap_or_else(Utc::now);
        let record = OutputRecord {
            key: item.key,
            value: item.value,
            headers: item.headers,
            timestamp,
            // Acknowledgements come back with these coordinates; the offset is our count.
            source: Some(SourceCoordinates {
                topic: Arc::clone(&self.topic),
                partition,
                offset: self.written as i64,
                timestamp,
            }),
        };
        if let Err(e) = sink.send(partition, record).await {
            // The partition writer stopped: its own error says why.
            let error = match self.sink.take() {
                Some(sink) => sink.close().await.err().unwrap_or(e),
                None => e,
            };
            self.failed = Some(error.to_string());
            return Err(error.into());
        }
        if let Some(n) = self.sent.get_mut(partition as usize) {
            *n += 1;
        }
        self.written += 1;
        Ok(partition)
    }

    /// Writes one record and waits until the broker acknowledged it: tensorflow-io's
    /// `write_kafka`, minus the new producer per call.
    pub async fn write_kafka(&mut self, item: impl Into<OutputItem>) -> Result<(), DatasetError> {
        let partition = self.write(item).await? as usize;
        let target = self.sent.get(partition).copied().unwrap_or(0);
        self.wait(|w| w.acked.get(partition).copied().unwrap_or(0) >= target)
            .await
    }

    /// Waits until every record written so far is acknowledged by the broker.
    ///
    /// Fails with the producer's error if a write failed, or with
    /// [`DatasetError::FlushTimeout`] after the flush timeout.
    pub async fn flush(&mut self) -> Result<(), DatasetError> {
        self.wait(|w| w.acked == w.sent).await
    }

    /// Flushes, stops the producer and returns the number of records acknowledged.
    pub async fn close(mut self) -> Result<u64, DatasetError> {
        self.flush().await?;
        if let Some(sink) = self.sink.take() {
            sink.close().await?;
        }
        Ok(self.acked())
    }

    fn apply_acks(&mut self, acks: Vec<SourceCoordinates>) {
        for c in acks {
            if let Some(n) = self.acked.get_mut(c.partition as usize) {
                *n += 1;
            }
        }
    }

    async fn wait(&mut self, done: impl Fn(&KafkaWriter) -> bool) -> Result<(), DatasetError> {
        self.check_usable()?;
        let waited = self
            .config
            .flush_timeout
            .unwrap_or(self.config.connection.kafka().request_timeout + Duration::from_secs(10));
        let deadline = tokio::time::Instant::now() + waited;
        loop {
            while let Ok(acks) = self.acks.try_recv() {
                self.apply_acks(acks);
            }
            if done(self) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, self.acks.recv()).await {
                Ok(Some(acks)) => self.apply_acks(acks),
                // Closed channel (no producer) or deadline: let the producer account for it.
                Ok(None) | Err(_) => break,
            }
        }
        // Closing waits for every queued request to finish and reports the first failure.
        if let Some(sink) = self.sink.take() {
            if let Err(e) = sink.close().await {
                self.failed = Some(e.to_string());
                return Err(e.into());
            }
        }
        while let Ok(acks) = self.acks.try_recv() {
            self.apply_acks(acks);
        }
        if done(self) {
            return Ok(());
        }
        let unacked = self.written - self.acked();
        self.failed = Some(format!("{unacked} records were not acknowledged"));
        Err(DatasetError::FlushTimeout {
            topic: self.config.topic.clone(),
            unacked,
            waited_s: waited.as_secs(),
        })
    }
}

impl Drop for KafkaWriter {
    fn drop(&mut self) {
        let mut acked = self.acked();
        while let Ok(acks) = self.acks.try_recv() {
            acked += acks.len() as u64;
        }
        if self.sink.is_some() && acked < self.written {
            tracing::warn!(
                topic = %self.config.topic,
                unacknowledged = self.written - acked,
                "KafkaWriter dropped before flush/close: records not yet acknowledged may be lost"
            );
        }
    }
}

/// Writes `items` to `topic` (`name` or `name:partition`) with one producer and waits until
/// all are acknowledged; returns how many were written. tensorflow-io's `write_kafka` called
/// once per message, without its per-message producer and flush.
pub async fn write_kafka<I>(servers: &str, topic: &str, items: I) -> Result<u64, DatasetError>
where
    I: IntoIterator,
    I::Item: Into<OutputItem>,
{
    let mut writer = KafkaWriter::open(&OutputConfig::new(topic)?.servers(servers)).await?;
    for item in items {
        writer.write(item).await?;
    }
    writer.close().await
}

/// The index bookkeeping of an [`OutputSequence`], without the writing.
#[derive(Debug)]
pub(crate) struct IndexOrder<T> {
    next: u64,
    pending: BTreeMap<u64, T>,
    max_pending: usize,
}

impl<T> IndexOrder<T> {
    pub(crate) fn new(max_pending: usize) -> IndexOrder<T> {
        IndexOrder {
            next: 0,
            pending: BTreeMap::new(),
            max_pending,
        }
    }

    /// Accepts `item` at `index`, or says why not.
    pub(crate) fn insert(&mut self, index: u64, item: T) -> Result<(), DatasetError> {
        if index < self.next {
            return Err(DatasetError::StaleIndex {
                index,
                written: self.next,
            });
        }
        if self.pending.contains_key(&index) {
            return Err(DatasetError::DuplicateIndex { index });
        }
        if index != self.next && self.pending.len() >= self.max_pending {
            return Err(DatasetError::TooManyPending {
                pending: self.pending.len(),
                missing: self.next,
                max: self.max_pending,
            });
        }
        self.pending.insert(index, item);
        Ok(())
    }

    /// The item at the start of the unwritten part, if it is there; the prefix then grows.
    pub(crate) fn pop_ready(&mut self) -> Option<T> {
        let item = self.pending.remove(&self.next)?;
        self.next += 1;
        Some(item)
    }

    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// Results written in index order, whatever order they are set in: tensorflow-io's
/// `KafkaOutputSequence`, for callbacks that see batches finish out of order.
///
/// [`set(index, item)`](Self::set) accepts each index from 0 up exactly once, in any order.
/// As soon as every index below some `n` is set, items `..n` are written in index order and
/// [`written`](Self::written) becomes `n`. Setting an index again, or one below `written`, is an
/// error. [`flush`](Self::flush) returns once the broker acknowledged everything written
/// (tensorflow-io's `flush` gave up after 5 s). Items may carry keys and headers; order is kept
/// per partition, so see [`OutputConfig`] for where items go.
///
/// ```no_run
/// use streamtract::dataset::{OutputItem, OutputSequence};
/// # async fn demo() -> Result<(), streamtract::dataset::DatasetError> {
/// let mut sequence = OutputSequence::connect("127.0.0.1:9092", "predictions").await?;
/// sequence.set(1, "cat").await?; // waits for index 0
/// sequence.set(0, OutputItem::new("dog").key("img-0")).await?; // writes 0, then 1
/// sequence.flush().await?;
/// assert_eq!(sequence.written(), 2);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct OutputSequence {
    writer: KafkaWriter,
    order: IndexOrder<OutputItem>,
}

impl OutputSequence {
    /// A sequence writing to `topic` (`name` or `name:partition`) on `servers`, like
    /// tensorflow-io's `KafkaOutputSequence(topic, servers)`.
    pub async fn connect(servers: &str, topic: &str) -> Result<OutputSequence, DatasetError> {
        Self::open(&OutputConfig::new(topic)?.servers(servers)).await
    }

    /// A sequence with more settings.
    pub async fn open(config: &OutputConfig) -> Result<OutputSequence, DatasetError> {
        Ok(OutputSequence {
            writer: KafkaWriter::open(config).await?,
            order: IndexOrder::new(config.max_pending),
        })
    }

    /// Sets item `index` (tensorflow-io's `setitem`). Writes it, and every item after it that
    /// was waiting, if all lower indexes are set; otherwise keeps it until they are.
    pub async fn set(
        &mut self,
        index: u64,
        item: impl Into<OutputItem>,
    ) -> Result<(), DatasetError> {
        self.writer.check_usable()?;
        self.order.insert(index, item.into())?;
        while let Some(item) = self.order.pop_ready() {
            self.writer.write(item).await?;
        }
        Ok(())
    }

    /// Length of the written prefix: items `0..written()` are written.
    pub fn written(&self) -> u64 {
        self.order.next()
    }

    /// Items set but waiting for a lower index.
    pub fn pending(&self) -> usize {
        self.order.pending()
    }

    /// Items the broker acknowledged.
    pub fn acked(&self) -> u64 {
        self.writer.acked()
    }

    /// Waits until every written item is acknowledged (tensorflow-io's `flush`). Items waiting
    /// for a lower index are not written by a flush.
    pub async fn flush(&mut self) -> Result<(), DatasetError> {
        self.writer.flush().await
    }

    /// Flushes and stops; returns the number of items written. Fails with
    /// [`DatasetError::Gap`] if items are still waiting for an index that was never set (they
    /// are not written).
    pub async fn close(self) -> Result<u64, DatasetError> {
        let gap = (self.order.pending() > 0).then(|| DatasetError::Gap {
            pending: self.order.pending(),
            missing: self.order.next(),
        });
        let written = self.writer.close().await?;
        match gap {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    /// The writer underneath (e.g. for one-off records outside the sequence).
    pub fn writer(&mut self) -> &mut KafkaWriter {
        &mut self.writer
    }
}

/// [`OutputSequence`] for programs without async code (tensorflow-io's `KafkaOutputSequence`
/// used from a Keras callback). Owns a small runtime like [`Blocking`]; do not use it inside
/// async code.
pub struct BlockingOutputSequence {
    sequence: Option<OutputSequence>,
    runtime: Option<Runtime>,
}

impl std::fmt::Debug for BlockingOutputSequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingOutputSequence")
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

impl BlockingOutputSequence {
    /// [`OutputSequence::connect`], blocking.
    pub fn connect(servers: &str, topic: &str) -> Result<BlockingOutputSequence, DatasetError> {
        Self::open(&OutputConfig::new(topic)?.servers(servers))
    }

    /// [`OutputSequence::open`], blocking.
    pub fn open(config: &OutputConfig) -> Result<BlockingOutputSequence, DatasetError> {
        let runtime = Blocking::<()>::runtime()?;
        let sequence = runtime.block_on(OutputSequence::open(config))?;
        Ok(BlockingOutputSequence {
            sequence: Some(sequence),
            runtime: Some(runtime),
        })
    }

    fn run<R>(
        &mut self,
        f: impl AsyncFnOnce(&mut OutputSequence) -> Result<R, DatasetError>,
    ) -> Result<R, DatasetError> {
        if Handle::try_current().is_ok() {
            return Err(DatasetError::BlockingInAsync);
        }
        match (self.sequence.as_mut(), self.runtime.as_ref()) {
            (Some(sequence), Some(runtime)) => runtime.block_on(f(sequence)),
            _ => Err(DatasetError::Runtime("the sequence was closed".into())),
        }
    }

    /// [`OutputSequence::set`], blocking.
    pub fn set(&mut self, index: u64, item: impl Into<OutputItem>) -> Result<(), DatasetError> {
        let item = item.into();
        self.run(async move |s| s.set(index, item).await)
    }

    /// [`OutputSequence::flush`], blocking.
    pub fn flush(&mut self) -> Result<(), DatasetError> {
        self.run(async |s| s.flush().await)
    }

    /// [`OutputSequence::written`].
    pub fn written(&self) -> u64 {
        self.sequence.as_ref().map_or(0, OutputSequence::written)
    }

    /// [`OutputSequence::pending`].
    pub fn pending(&self) -> usize {
        self.sequence.as_ref().map_or(0, OutputSequence::pending)
    }

    /// [`OutputSequence::close`], blocking.
    pub fn close(mut self) -> Result<u64, DatasetError> {
        if Handle::try_current().is_ok() {
            return Err(DatasetError::BlockingInAsync);
        }
        match (self.sequence.take(), self.runtime.as_ref()) {
            (Some(sequence), Some(runtime)) => runtime.block_on(sequence.close()),
            _ => Err(DatasetError::Runtime("the sequence was closed".into())),
        }
    }
}

impl Drop for BlockingOutputSequence {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            {
                let _guard = runtime.enter();
                self.sequence.take();
            }
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_order_writes_prefixes_and_rejects_repeats() {
        let mut order = IndexOrder::new(10);
        let mut written = vec![];
        for i in [2u64, 0, 3, 1, 5] {
            order.insert(i, i).unwrap();
            while let Some(x) = order.pop_ready() {
                written.push(x);
            }
        }
        assert_eq!(written, vec![0, 1, 2, 3]);
        assert_eq!((order.next(), order.pending()), (4, 1));
        assert!(matches!(
            order.insert(5, 5),
            Err(DatasetError::DuplicateIndex { index: 5 })
        ));
        assert!(matches!(
            order.insert(2, 2),
            Err(DatasetError::StaleIndex {
                index: 2,
                written: 4
            })
        ));
    }

    #[test]
    fn index_order_is_bounded() {
        let mut order = IndexOrder::new(2);
        order.insert(5, ()).unwrap();
        order.insert(6, ()).unwrap();
        let e = order.insert(7, ()).unwrap_err();
        assert!(e.to_string().contains("wait for index 0"), "{e}");
        // The missing index itself is always accepted.
        order.insert(0, ()).unwrap();
    }

    #[test]
    fn configuration_maps_producer_keys() {
        let config = OutputConfig::new("out").unwrap().configuration([
            "bootstrap.servers=a:1",
            "batch.num.messages=50",
            "batch.size=4096",
            "acks=all",
            "request.required.acks=-1",
            "enable.idempotence=false",
            "compression.type=none",
            "conf.topic.compression.codec=NONE",
            "api.version.request=true",
        ]);
        assert!(config.invalid.is_none(), "{:?}", config.invalid);
        assert_eq!(config.max_batch_records, Some(50));
        assert_eq!(config.max_batch_bytes, Some(4096));
        assert_eq!(config.connection.kafka().brokers, ["a:1"]);
        // The first refusal is kept; later entries are still read.
        let config = OutputConfig::new("out").unwrap().configuration([
            "acks=0",
            "linger.ms=1",
            "batch.size=10",
        ]);
        let reason = config.invalid.as_deref().unwrap_or_default();
        assert!(reason.starts_with("`acks=0`: "), "{reason}");
        assert_eq!(config.max_batch_bytes, Some(10));
    }

    #[test]
    fn output_topic_parses_tensorflow_io_form() {
        let c = OutputConfig::new("preds:3").unwrap();
        assert_eq!((c.topic(), c.partition()), ("preds", Some(3)));
        assert_eq!(OutputConfig::new("preds").unwrap().partition(), None);
        assert!(OutputConfig::new("preds:x").is_err());
        assert!(OutputConfig::new(":1").is_err());
    }
}
