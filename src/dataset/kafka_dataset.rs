//! [`KafkaDataset`]: records of topic specs as an async stream (and, through
//! [`Blocking`](super::Blocking), an iterator).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{Stream, StreamExt};

use super::batch::Batches;
use super::blocking::Blocking;
use super::connection::{configuration_error, take_configuration, Connection};
use super::librdkafka::Entry;
use super::origin::{into_stream, ChunkStream, RecordSource, Revocation, SpecReader};
use super::preprocess::{Examples, Preprocess};
use super::spec::TopicSpec;
use super::timer::QuietTimer;
use super::DatasetError;
use crate::kafka::SourceRecord;

/// tensorflow-io's default `timeout`, 1000 ms.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);

/// How to open a [`KafkaDataset`]: tensorflow-io's
/// `KafkaDataset(topics, servers="localhost", group="", eof=False, timeout=1000)` arguments,
/// plus `stream_timeout` from its `KafkaGroupIODataset`.
///
/// The builder is cheap to clone: opening it again reads the specs again (a new epoch).
#[derive(Debug, Clone)]
pub struct KafkaDatasetBuilder {
    topics: Vec<String>,
    connection: Connection,
    group: String,
    eof: bool,
    timeout: Duration,
    stream_timeout: Option<Duration>,
    /// The first `configuration` entry that cannot work, reported by `open`.
    invalid: Option<String>,
}

/// The `configuration` keys of a [`KafkaDataset`] besides the connection's.
const DATASET_KEYS: &[&str] = &["group.id", "enable.auto.commit"];

impl KafkaDatasetBuilder {
    /// The topic specs, as given.
    pub fn topic_specs(&self) -> &[String] {
        &self.topics
    }

    super::connection::connection_setters!();

    /// tensorflow-io's `group`. In tensorflow-io it only made librdkafka auto-commit the
    /// positions it fetched (before the model saw the records, hence its data loss); which
    /// records are read always came from the topic specs. This dataset commits nothing, so a
    /// group here changes nothing but a log line; it is accepted so ported programs keep their
    /// shape. Consumer-group reading with commits on acknowledgement is the job of
    /// [`KafkaGroupDataset`](super::KafkaGroupDataset).
    pub fn group(mut self, group: &str) -> Self {
        self.group = group.to_string();
        self
    }

    /// tensorflow-io's `eof`: `true` stops each partition at the end offset it had when the
    /// dataset was opened; `false` (the default) keeps waiting for new records (a spec with a
    /// `last` offset still ends there). See the timeline on [`KafkaDataset`].
    pub fn eof(mut self, eof: bool) -> Self {
        self.eof = eof;
        self
    }

    /// tensorflow-io's `timeout` (milliseconds there, default 1000): how long one poll waits
    /// for a record. A poll that times out is simply repeated, so on its own this never ends
    /// the dataset, exactly as in tensorflow-io. It is the unit the other waits are counted in:
    /// [`stream_timeout`](Self::stream_timeout) is never shorter, and
    /// [`KafkaBatchDataset`](super::KafkaBatchDataset) closes a partial mini-batch after one
    /// timed-out poll. Must be greater than zero.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// tensorflow-io's `stream_timeout` (from `KafkaGroupIODataset`): end the dataset once it
    /// has waited this long without a record. `None` (the default) waits forever, like
    /// tensorflow-io's `-1`. As there, a value below [`timeout`](Self::timeout) is raised to
    /// it. Works with `eof` too (whichever comes first ends the dataset).
    pub fn stream_timeout(mut self, stream_timeout: impl Into<Option<Duration>>) -> Self {
        self.stream_timeout = stream_timeout.into();
        self
    }

    /// tensorflow-io's `configuration` (and the old `KafkaDataset`'s `config_global` and
    /// `config_topic`): librdkafka `key=value` entries, so a ported program keeps its list.
    ///
    /// Accepted: the connection keys of [`Connection::configuration`] (brokers, client id,
    /// timeouts, `security.protocol`, `ssl.*`, `sasl.*`), which has the table; `group.id` (the
    /// same as [`group`](Self::group)); and `enable.auto.commit=false`, which is what this
    /// dataset does (it commits nothing; `true` is refused: committed reading is
    /// [`KafkaGroupDataset`](super::KafkaGroupDataset)'s). tensorflow-io's `conf.topic.`
    /// prefix is dropped. A few librdkafka keys with nothing to tune here (e.g.
    /// `api.version.request`) are accepted without effect. Any other key, `auto.offset.reset`
    /// included (the topic specs say where to start), a value that does not parse, or
    /// security keys that do not go together make [`open`](Self::open) fail with
    /// [`DatasetError::InvalidOption`] naming the entry and the accepted keys, before
    /// connecting. Entries may be given in several calls; TLS and SASL come from the list
    /// alone when it has any security key.
    ///
    /// ```
    /// use streamtract::dataset::KafkaDataset;
    /// let dataset = KafkaDataset::builder(["pixels:0:0:99"]).eof(true).configuration([
    ///     "bootstrap.servers=broker.example.com:9093",
    ///     "security.protocol=SASL_SSL",
    ///     "ssl.ca.location=/etc/kafka/ca.pem",
    ///     "sasl.mechanism=SCRAM-SHA-256",
    ///     "sasl.username=alice",
    ///     "sasl.password=correct horse",
    /// ]);
    /// # let _ = dataset;
    ///
    /// // Keys without an equivalent are refused (before anything connects).
    /// let err = KafkaDataset::builder(["pixels"])
    ///     .configuration(["fetch.min.bytes=1"])
    ///     .open_blocking()
    ///     .unwrap_err()
    ///     .to_string();
    /// assert!(err.contains("unknown key `fetch.min.bytes`"), "{err}");
    /// assert!(err.contains("Accepted keys: group.id, enable.auto.commit, bootstrap.servers"), "{err}");
    /// ```
    pub fn configuration(mut self, entries: impl IntoIterator<Item = impl AsRef<str>>) -> Self {
        let refused = take_configuration(&mut self, entries, |b| &mut b.connection, Self::apply);
        if let Some(reason) = refused {
            self.invalid.get_or_insert(reason);
        }
        self
    }

    /// A key of this builder's own; the error names the entry.
    fn apply(&mut self, entry: &Entry<'_>) -> Result<(), String> {
        match entry.key {
            "group.id" => self.group = entry.value.to_string(),
            "enable.auto.commit" => {
                if entry.boolean()? {
                    return Err(entry.invalid(
                        "a KafkaDataset commits no offsets (its topic specs say what it reads); \
                         for records committed once processed use KafkaGroupDataset. Remove the \
                         entry",
                    ));
                }
            }
            "auto.offset.reset" => {
                return Err(entry.invalid(
                    "a KafkaDataset starts where its topic specs say (`topic:partition:offset`, \
                     `earliest`, `latest`), and an offset outside a partition is an error naming \
                     its range, never a silent reset. Remove the entry",
                ))
            }
            _ => return Err(entry.unknown("KafkaDataset", DATASET_KEYS)),
        }
        Ok(())
    }

    /// Connects (unless a [`client`](Self::client) was given), checks every spec against the
    /// cluster and takes the end offsets `eof` stops at. Records are fetched as the dataset is
    /// read, one spec after the other.
    ///
    /// Fails before reading anything when a [`configuration`](Self::configuration) entry cannot
    /// work, a spec does not parse, a topic or partition does not exist, or a start offset is
    /// outside its partition.
    pub async fn open(mut self) -> Result<KafkaDataset, DatasetError> {
        if let Some(reason) = self.invalid.take() {
            return Err(configuration_error(reason));
        }
        if self.topics.is_empty() {
            return Err(DatasetError::InvalidOption {
                option: "topics",
                reason:
                    "no topic spec given; pass at least one `topic[:partition[:offset[:last]]]`"
                        .into(),
            });
        }
        if self.timeout.is_zero() {
            return Err(DatasetError::InvalidOption {
                option: "timeout",
                reason: "must be greater than zero (tensorflow-io: `Timeout value should be large than 0`)".into(),
            });
        }
        self.connection.prepare()?;
        let specs = self
            .topics
            .iter()
            .map(|t| t.parse::<TopicSpec>())
            .collect::<Result<Vec<_>, _>>()?;
        if !self.group.is_empty() {
            tracing::info!(group = %self.group, "KafkaDataset reads the partitions of its topic specs and commits no offsets; `group` is not used");
        }
        let client = self.connection.connect().await?;
        let reader = SpecReader::plan(
            client,
            self.connection.kafka().clone(),
            specs.clone(),
            self.eof,
        )
        .await?;
        Ok(KafkaDataset::from_source(
            Box::new(reader),
            Settings {
                specs,
                group: self.group,
                eof: self.eof,
                timeout: self.timeout,
                stream_timeout: self.stream_timeout,
            },
        ))
    }

    /// Opens the dataset for a program without an async runtime: the result is an
    /// [`Iterator`] of records, driven by a small runtime (one I/O thread) it owns.
    ///
    /// Returns [`DatasetError::BlockingInAsync`] when called from async code; use
    /// [`open`](Self::open) there.
    pub fn open_blocking(self) -> Result<BlockingKafkaDataset, DatasetError> {
        let runtime = Blocking::<()>::runtime()?;
        let dataset = runtime.block_on(self.open())?;
        Ok(Blocking::new(dataset, runtime))
    }
}

/// What a dataset was opened with, whatever its record source.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) specs: Vec<TopicSpec>,
    pub(crate) group: String,
    pub(crate) eof: bool,
    pub(crate) timeout: Duration,
    pub(crate) stream_timeout: Option<Duration>,
}

/// Records of Kafka topics, read as tensorflow-io's `KafkaDataset` reads them: topic specs in
/// order, each from its start offset to its `last` offset, or to its end (`eof`), or forever.
///
/// It is a [`futures::Stream`] of [`SourceRecord`]s (value, key, topic, partition, offset,
/// timestamp and headers; tensorflow-io gave only the value and, on request, key and offset).
/// [`KafkaDatasetBuilder::open_blocking`] gives the same as an [`Iterator`] for programs
/// without async code. [`examples`](Self::examples) decodes records into ndarray rows for a
/// model (tensorflow-io: `dataset.map(...)`), [`batch`](Self::batch) stacks them into tensors
/// (`dataset.batch(n)`), [`KafkaBatchDataset`](super::KafkaBatchDataset) cuts the stream into
/// mini-batches for online learning. For another epoch, open the builder again.
///
/// Within a partition, records come in offset order; a spec naming no partition interleaves
/// its partitions' records.
///
/// # When it ends: `eof`, `timeout`, `stream_timeout`
///
/// Records 0, 1, 2 are in partition 0 of `t` when the dataset is opened; record 3 is produced
/// at t = 4 s. `timeout` is 1 s.
///
/// ```text
/// spec t:0, eof = true                 spec t:0, eof = false            spec t:0, eof = false,
///                                                                       stream_timeout = 2 s
/// 0 s   open: end offset 3 noted       0 s   open                       0 s   open
///       yields 0, 1, 2                       yields 0, 1, 2                   yields 0, 1, 2
///       ends (3 was the end at open)   1 s   poll timed out, poll again   1 s   poll timed out
///                                      2 s   poll timed out, poll again   2 s   2 s without a
///                                      3 s   poll timed out, poll again         record: ends
///                                      4 s   yields 3
///                                      ...   waits for the next record, forever
/// ```
///
/// With spec `t:0:0:4` and `eof = false`, the dataset yields 0 to 3, waits, and ends right
/// after offset 4 arrives: `last` ends a spec whatever `eof` says. Several specs are read one
/// after the other, so a spec that never ends (no `last`, `eof = false`) keeps the next ones
/// from being read, as in tensorflow-io.
///
/// A Kafka error (e.g. the broker stayed unreachable past the request timeout) is yielded once
/// and ends the dataset, so no record is skipped silently.
///
/// ```no_run
/// use futures::StreamExt;
/// use streamtract::dataset::KafkaDataset;
/// # async fn demo() -> Result<(), streamtract::dataset::DatasetError> {
/// let mut dataset = KafkaDataset::builder(["pixels:0:0:99"])
///     .servers("127.0.0.1:9092")
///     .eof(true)
///     .open()
///     .await?;
/// while let Some(record) = dataset.next().await {
///     let record = record?;
///     println!("{}@{} key={:?}", record.partition, record.offset, record.key);
/// }
/// # Ok(()) }
/// ```
pub struct KafkaDataset {
    chunks: ChunkStream,
    buffered: VecDeque<SourceRecord>,
    idle: QuietTimer,
    finished: bool,
    settings: Settings,
    yielded: u64,
    /// For a consumer-group source: buffered records of an older epoch were revoked.
    revocation: Option<Revocation>,
    /// The epoch the buffered records were read in.
    buffered_epoch: u64,
}

impl fmt::Debug for KafkaDataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaDataset")
            .field("settings", &self.settings)
            .field("buffered", &self.buffered.len())
            .field("yielded", &self.yielded)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl KafkaDataset {
    /// Starts describing a dataset over `topics`, each a `topic[:partition[:offset[:last]]]`
    /// spec ([`TopicSpec`]), read in the order given (tensorflow-io's `topics` argument).
    pub fn builder(topics: impl IntoIterator<Item = impl Into<String>>) -> KafkaDatasetBuilder {
        KafkaDatasetBuilder {
            topics: topics.into_iter().map(Into::into).collect(),
            connection: Connection::default(),
            group: String::new(),
            eof: false,
            timeout: DEFAULT_TIMEOUT,
            stream_timeout: None,
            invalid: None,
        }
    }

    /// A dataset over any record source. This is the seam for sources other than topic specs
    /// (a consumer-group member): batching, preprocessing, timeouts and the blocking face come
    /// with it.
    pub(crate) fn from_source(source: Box<dyn RecordSource>, settings: Settings) -> KafkaDataset {
        let quiet = settings.stream_timeout.map(|s| s.max(settings.timeout));
        KafkaDataset {
            chunks: into_stream(source),
            buffered: VecDeque::new(),
            idle: QuietTimer::new(quiet),
            finished: false,
            settings,
            yielded: 0,
            revocation: None,
            buffered_epoch: 0,
        }
    }

    /// Drops buffered records once `revocation` says their partitions were taken away (the
    /// source accepts each chunk it hands out under its epoch).
    pub(crate) fn with_revocation(mut self, revocation: Revocation) -> KafkaDataset {
        self.buffered_epoch = revocation.current();
        self.revocation = Some(revocation);
        self
    }

    /// The topic specs, parsed.
    pub fn specs(&self) -> &[TopicSpec] {
        &self.settings.specs
    }

    /// Whether each partition stops at its end at opening.
    pub fn eof(&self) -> bool {
        self.settings.eof
    }

    /// The poll timeout ([`KafkaDatasetBuilder::timeout`]).
    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// The idle time after which the dataset ends, as applied (at least
    /// [`timeout`](Self::timeout)); `None` waits forever.
    pub fn stream_timeout(&self) -> Option<Duration> {
        self.settings
            .stream_timeout
            .map(|s| s.max(self.settings.timeout))
    }

    /// The group given to the builder (unused; see [`KafkaDatasetBuilder::group`]), or the
    /// group of a [`KafkaGroupDataset`](super::KafkaGroupDataset).
    pub fn group(&self) -> &str {
        &self.settings.group
    }

    /// Records handed out so far.
    pub fn records_read(&self) -> u64 {
        self.yielded
    }

    /// Decodes every record into an [`Example`](super::Example) (ndarray rows for the model's
    /// inputs, and a label if configured): tensorflow-io's `dataset.map(decode)`.
    pub fn examples(self, preprocess: Preprocess) -> Examples<KafkaDataset> {
        Examples::new(self, preprocess)
    }

    /// Stacks decoded records into batches of `size` rows (at least 1): tensorflow-io's
    /// `dataset.map(decode).batch(size)`. The last batch may be smaller; an empty batch is
    /// never yielded.
    pub fn batch(self, size: usize, preprocess: Preprocess) -> Batches<KafkaDataset> {
        Batches::new(self, size, preprocess)
    }

    fn finish(&mut self) {
        self.finished = true;
        // Stop fetching now rather than when the dataset is dropped.
        self.chunks = futures::stream::empty().boxed();
    }
}

impl Stream for KafkaDataset {
    type Item = Result<SourceRecord, DatasetError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(revocation) = &this.revocation {
                if !this.buffered.is_empty() && revocation.current() != this.buffered_epoch {
                    tracing::debug!(
                        dropped = this.buffered.len(),
                        "buffered records of revoked partitions dropped"
                    );
                    this.buffered.clear();
                }
            }
            if let Some(record) = this.buffered.pop_front() {
                this.idle.reset();
                this.yielded += 1;
                return Poll::Ready(Some(Ok(record)));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            match this.chunks.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    if let Some(revocation) = &this.revocation {
                        this.buffered_epoch = revocation.accepted();
                    }
                    this.buffered.extend(chunk);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.finish();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if this.idle.expired(cx) {
                        tracing::info!(
                            stream_timeout_ms = this.stream_timeout().map(|d| d.as_millis() as u64),
                            records = this.yielded,
                            "no record within stream_timeout; the dataset ends"
                        );
                        this.finish();
                        return Poll::Ready(None);
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// [`KafkaDataset`] as a blocking iterator of records
/// ([`KafkaDatasetBuilder::open_blocking`]).
pub type BlockingKafkaDataset = Blocking<KafkaDataset>;

impl Blocking<KafkaDataset> {
    /// [`KafkaDataset::examples`], blocking.
    pub fn examples(self, preprocess: Preprocess) -> Blocking<Examples<KafkaDataset>> {
        self.map_stream(|d| d.examples(preprocess))
    }

    /// [`KafkaDataset::batch`], blocking.
    pub fn batch(self, size: usize, preprocess: Preprocess) -> Blocking<Batches<KafkaDataset>> {
        self.map_stream(|d| d.batch(size, preprocess))
    }
}
