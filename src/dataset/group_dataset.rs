//! [`KafkaGroupDataset`]: tensorflow-io's `KafkaGroupIODataset`, records of the partitions a
//! consumer group assigns, committed only once acknowledged.
//!
//! A background task owns the [`GroupMember`] and the [`Source`] over its assignment. It hands
//! records to the dataset's stream (`GroupReader`, a [`RecordSource`]) through a bounded
//! channel, notes each in the ledger the [`Acker`]s write to, commits on an
//! interval, on request and at close, and on a rebalance stops fetching, revokes what the
//! stream still buffers, commits, rejoins and reads the new assignment from its committed
//! positions, the way the pipeline's group loop does.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::acker::{Acker, Committed, Control, Shared};
use super::batch::Batches;
use super::blocking::Blocking;
use super::connection::{take_configuration, Connection};
use super::kafka_dataset::{KafkaDataset, Settings};
use super::librdkafka::Entry;
use super::mini_batch::KafkaBatchDataset;
use super::origin::{RecordSource, Revocation};
use super::preprocess::{Examples, Preprocess};
use super::spec::TopicSpec;
use super::DatasetError;
use crate::kafka::group::{Assignor, GroupConfig, TopicPartition};
use crate::kafka::{
    topic_partitions, Consumer, Source, SourceConfig, SourceRecord, StartPosition, TopicSelection,
};

/// tensorflow-io's default `message_poll_timeout`, 10 000 ms.
pub const DEFAULT_MESSAGE_POLL_TIMEOUT: Duration = Duration::from_millis(10_000);

/// How often acknowledged positions are committed unless told otherwise.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// Records handed out and not committed after which fetching pauses, unless told otherwise.
pub const DEFAULT_MAX_UNCOMMITTED: usize = 100_000;

/// How to open a [`KafkaGroupDataset`]: tensorflow-io's
/// `KafkaGroupIODataset(topics, group_id, servers, stream_timeout=0, message_poll_timeout=10000,
/// configuration=None)` arguments, plus the acknowledgement settings tensorflow-io lacked.
///
/// The builder is cheap to clone; every [`open`](Self::open) joins the group as a new member.
#[derive(Debug, Clone)]
pub struct KafkaGroupDatasetBuilder {
    topics: Vec<String>,
    group: GroupConfig,
    connection: Connection,
    start: StartPosition,
    stream_timeout: Option<Duration>,
    message_poll_timeout: Duration,
    commit_interval: Duration,
    max_uncommitted: usize,
    /// A `configuration` entry that cannot work, reported by `open`.
    invalid: Option<(&'static str, String)>,
}

/// The `configuration` keys of a [`KafkaGroupDataset`] besides the connection's.
const GROUP_KEYS: &[&str] = &[
    "group.id",
    "auto.offset.reset",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "auto.commit.interval.ms",
    "enable.auto.commit",
];

impl KafkaGroupDatasetBuilder {
    super::connection::connection_setters!();

    /// Where to start in a partition the group has no committed position for (or one that is
    /// no longer in the partition): tensorflow-io's `configuration=["auto.offset.reset=..."]`.
    /// Default [`StartPosition::Earliest`]. (librdkafka, hence tensorflow-io, defaults to
    /// `latest`, which skips what is already in the topic; tensorflow-io's own examples set
    /// `earliest`.)
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// tensorflow-io's `stream_timeout`: end the stream once it has waited this long without a
    /// record. `None` waits forever (tensorflow-io's `-1`). The default, zero as in
    /// tensorflow-io, ends the stream after one [`message_poll_timeout`](Self::message_poll_timeout)
    /// without a record: as there, a value below `message_poll_timeout` is raised to it. See
    /// the timeline on [`KafkaGroupDataset`].
    pub fn stream_timeout(mut self, stream_timeout: impl Into<Option<Duration>>) -> Self {
        self.stream_timeout = stream_timeout.into();
        self
    }

    /// tensorflow-io's `message_poll_timeout` (default 10 s): the unit the stream waits in.
    /// [`stream_timeout`](Self::stream_timeout) is never shorter, and a
    /// [`KafkaBatchDataset`] made from this dataset closes a partial mini-batch after one
    /// `message_poll_timeout` without a record (tensorflow-io's `KafkaBatchIODataset`). Fetches
    /// themselves do not wait for it: a record is handed out as soon as it arrives. Must be
    /// greater than zero.
    pub fn message_poll_timeout(mut self, timeout: Duration) -> Self {
        self.message_poll_timeout = timeout;
        self
    }

    /// tensorflow-io's `configuration`: librdkafka `key=value` settings, so a ported program can
    /// keep its list.
    ///
    /// Accepted: the connection keys of [`Connection::configuration`] (brokers, client id,
    /// timeouts, `security.protocol`, `ssl.*`, `sasl.*`), which has the table, and the group's
    /// own: `group.id`, `auto.offset.reset` (also as `conf.topic.auto.offset.reset`;
    /// `earliest`/`smallest`/`beginning` or `latest`/`largest`/`end`), `session.timeout.ms`,
    /// `heartbeat.interval.ms`, `max.poll.interval.ms` (the rebalance timeout),
    /// `partition.assignment.strategy` (`range`, `roundrobin`), `auto.commit.interval.ms` (the
    /// [`commit_interval`](Self::commit_interval)) and `enable.auto.commit=false` (the only
    /// behaviour here). A few librdkafka keys with nothing to tune here (e.g.
    /// `api.version.request`) are accepted without effect and logged. Any other key, a value
    /// that does not parse, `enable.auto.commit=true`, or security keys that do not go together
    /// make [`open`](Self::open) fail with [`DatasetError::InvalidOption`] naming the entry and
    /// the accepted keys, before connecting.
    ///
    /// ```
    /// use streamtract::dataset::KafkaGroupDataset;
    /// let readers = KafkaGroupDataset::builder(["pixels"], "readers").configuration([
    ///     "bootstrap.servers=broker.example.com:9093",
    ///     "security.protocol=sasl_ssl",
    ///     "ssl.ca.location=/etc/kafka/ca.pem",
    ///     "sasl.mechanisms=SCRAM-SHA-512",
    ///     "sasl.username=alice",
    ///     "sasl.password=correct horse",
    ///     "session.timeout.ms=7000",
    ///     "auto.offset.reset=earliest",
    /// ]);
    /// # let _ = readers;
    ///
    /// let err = KafkaGroupDataset::builder(["pixels"], "readers")
    ///     .configuration(["enable.partition.eof=true"])
    ///     .open_blocking()
    ///     .unwrap_err()
    ///     .to_string();
    /// assert!(err.contains("unknown key `enable.partition.eof`"), "{err}");
    /// ```
    pub fn configuration(mut self, entries: impl IntoIterator<Item = impl AsRef<str>>) -> Self {
        let refused = take_configuration(&mut self, entries, |b| &mut b.connection, Self::apply);
        if let Some(reason) = refused {
            self.invalid.get_or_insert(("configuration", reason));
        }
        self
    }

    /// A key of the group's own; the error names the entry.
    fn apply(&mut self, entry: &Entry<'_>) -> Result<(), String> {
        match entry.key {
            "auto.offset.reset" => {
                self.start = match entry.value {
                    "earliest" | "smallest" | "beginning" => StartPosition::Earliest,
                    "latest" | "largest" | "end" => StartPosition::Latest,
                    _ => {
                        return Err(entry.invalid(
                            "expected `earliest` or `latest` (or librdkafka's `smallest`, `beginning`, `largest`, `end`)",
                        ))
                    }
                }
            }
            "session.timeout.ms" => self.group.session_timeout = entry.millis()?,
            "heartbeat.interval.ms" => self.group.heartbeat_interval = entry.millis()?,
            "max.poll.interval.ms" => self.group.rebalance_timeout = entry.millis()?,
            "auto.commit.interval.ms" => self.commit_interval = entry.millis()?,
            "partition.assignment.strategy" => {
                self.group.assignors =
                    Assignor::parse_list(entry.value).map_err(|e| entry.invalid(e))?;
            }
            "enable.auto.commit" => {
                if entry.boolean()? {
                    return Err(entry.invalid(
                        "records are committed once acknowledged (see `Acker`), never when fetched; \
                         auto-commit on fetch is what lost records in tensorflow-io. Remove the entry",
                    ));
                }
            }
            "group.id" => self.group.group_id = entry.value.to_string(),
            _ => return Err(entry.unknown("KafkaGroupDataset", GROUP_KEYS)),
        }
        Ok(())
    }

    /// The group's session timeout (`session.timeout.ms`, default 45 s): the broker drops a
    /// member it has not heard from for this long.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.group.session_timeout = timeout;
        self
    }

    /// Time between heartbeats (`heartbeat.interval.ms`, default 3 s).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.group.heartbeat_interval = interval;
        self
    }

    /// How long the group waits for its members to rejoin in a rebalance
    /// (`max.poll.interval.ms`, default 300 s).
    pub fn rebalance_timeout(mut self, timeout: Duration) -> Self {
        self.group.rebalance_timeout = timeout;
        self
    }

    /// Partition assignors, most preferred first (`partition.assignment.strategy`, default
    /// `range`). Every member of the group should list the same.
    pub fn assignors(mut self, assignors: impl IntoIterator<Item = Assignor>) -> Self {
        self.group.assignors = assignors.into_iter().collect();
        self
    }

    /// How often acknowledged positions are committed (default 1 s). They are also committed
    /// before a rebalance, on [`Acker::commit`] and on [`Acker::close`].
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Fetching pauses while this many records were handed out and not committed (default
    /// 100 000), so a program that forgets to acknowledge stalls with a warning instead of
    /// growing without bound.
    pub fn max_uncommitted(mut self, records: usize) -> Self {
        self.max_uncommitted = records;
        self
    }

    fn check(&self) -> Result<(), DatasetError> {
        let invalid = |option: &'static str, reason: &str| {
            Err(DatasetError::InvalidOption {
                option,
                reason: reason.into(),
            })
        };
        if let Some((option, reason)) = &self.invalid {
            return invalid(option, reason);
        }
        self.connection.check()?;
        if self.topics.is_empty() {
            return invalid("topics", "no topic given; pass at least one topic name");
        }
        if let Some(t) = self.topics.iter().find(|t| t.is_empty() || t.contains(':')) {
            return Err(DatasetError::InvalidOption {
                option: "topics",
                reason: format!(
                    "`{t}`: a group dataset takes topic names (the group assigns the partitions and its committed offsets say where to start); for `topic:partition:offset` specs use `KafkaDataset`"
                ),
            });
        }
        if self.message_poll_timeout.is_zero() {
            return invalid("message_poll_timeout", "must be greater than zero");
        }
        if self.commit_interval.is_zero() {
            return invalid("commit_interval", "must be greater than zero");
        }
        if self.max_uncommitted == 0 {
            return invalid("max_uncommitted", "must be at least 1");
        }
        // The group's coordinator connection needs brokers even when a client is given.
        if self.connection.kafka().brokers.is_empty() {
            return invalid(
                "servers",
                "no bootstrap server given; e.g. `127.0.0.1:9092`",
            );
        }
        self.group.validate()?;
        Ok(())
    }

    /// Checks the settings and that every topic exists, joins the group (which may take a few
    /// seconds while the other members rejoin), and starts fetching the assigned partitions
    /// from the group's committed positions (or from [`start`](Self::start)).
    ///
    /// Must be called inside a tokio runtime, which then runs the dataset's background task
    /// (heartbeats, fetches, commits) until [`KafkaGroupDataset::close`].
    pub async fn open(mut self) -> Result<KafkaGroupDataset, DatasetError> {
        self.check()?;
        self.connection.prepare()?;
        let client = self.connection.connect().await?;
        let kafka = self.connection.kafka();
        for topic in &self.topics {
            topic_partitions(&client, kafka, topic, "input").await?;
        }
        let mut template = SourceConfig::new(
            self.topics
                .iter()
                .map(|topic| TopicSelection {
                    topic: topic.clone(),
                    partitions: None,
                })
                .collect(),
        );
        template.start = self.start;
        let consumer = Consumer::start(client, kafka, template, Some(&self.group)).await?;
        let shared = Arc::new(Shared::new(&self.group.group_id));
        shared.set_assignment(consumer.assignment());
        let revocation = Revocation::default();
        let driver = Driver {
            consumer,
            shared: Arc::clone(&shared),
            revocation: revocation.clone(),
            commit_interval: self.commit_interval,
            max_uncommitted: self.max_uncommitted,
        };
        let source = match driver.start_source().await {
            Ok(source) => source,
            Err(e) => {
                if let Err(leave) = driver.consumer.leave().await {
                    tracing::warn!(error = %leave, "leaving the group after a failed open failed");
                }
                return Err(e);
            }
        };
        let (deliveries_tx, deliveries) = mpsc::channel(1);
        let (control_tx, control) = mpsc::channel(16);
        tokio::spawn(driver.run(source, deliveries_tx, control));
        let reader = GroupReader {
            deliveries,
            revocation: revocation.clone(),
            _driver: control_tx.clone(),
        };
        let specs = self
            .topics
            .iter()
            .map(|t| TopicSpec::topic(t.clone()))
            .collect();
        let dataset = KafkaDataset::from_source(
            Box::new(reader),
            Settings {
                specs,
                group: self.group.group_id.clone(),
                eof: false,
                timeout: self.message_poll_timeout,
                stream_timeout: self.stream_timeout,
            },
        )
        .with_revocation(revocation);
        Ok(KafkaGroupDataset {
            dataset,
            acker: Acker::new(shared, control_tx),
        })
    }

    /// Opens the dataset for a program without an async runtime: an [`Iterator`] of records,
    /// driven by a small runtime (one I/O thread) it owns, which also runs the group member.
    /// Acknowledge with its [`acker`](Blocking::acker) and finish with
    /// [`Acker::close_blocking`] before dropping it.
    ///
    /// Returns [`DatasetError::BlockingInAsync`] when called from async code.
    pub fn open_blocking(self) -> Result<BlockingKafkaGroupDataset, DatasetError> {
        let runtime = Blocking::<()>::runtime()?;
        let dataset = runtime.block_on(self.open())?;
        Ok(Blocking::new(dataset, runtime))
    }
}

/// [`KafkaGroupDataset`] as a blocking iterator of records
/// ([`KafkaGroupDatasetBuilder::open_blocking`]).
pub type BlockingKafkaGroupDataset = Blocking<KafkaGroupDataset>;

impl Blocking<KafkaGroupDataset> {
    /// The dataset's [`Acker`]; use [`Acker::commit_blocking`] and [`Acker::close_blocking`].
    pub fn acker(&self) -> Acker {
        // The stream is only taken out when the value is dropped.
        self.get_ref()
            .map(KafkaGroupDataset::acker)
            .expect("a blocking dataset holds its stream until dropped")
    }

    /// [`KafkaGroupDataset::examples`], blocking.
    pub fn examples(self, preprocess: Preprocess) -> Blocking<Examples<KafkaGroupDataset>> {
        self.map_stream(|d| d.examples(preprocess))
    }

    /// [`KafkaGroupDataset::batch`], blocking.
    pub fn batch(
        self,
        size: usize,
        preprocess: Preprocess,
    ) -> Blocking<Batches<KafkaGroupDataset>> {
        self.map_stream(|d| d.batch(size, preprocess))
    }

    /// [`KafkaGroupDataset::mini_batches`], blocking.
    pub fn mini_batches(self, mini_batch_size: usize) -> Blocking<KafkaBatchDataset> {
        self.map_stream(|d| d.mini_batches(mini_batch_size))
    }
}

/// Records of the partitions a Kafka consumer group assigns to this reader: tensorflow-io's
/// `KafkaGroupIODataset`, with commits on acknowledgement instead of on fetch.
///
/// Every reader opened with the same group id shares the topics' partitions with the others
/// (and with Java or librdkafka consumers in that group): the standard `consumer` group
/// protocol, eager rebalancing. Each reader starts a partition at the group's committed
/// position, or at [`start`](KafkaGroupDatasetBuilder::start) when there is none.
///
/// It is a [`futures::Stream`] of [`SourceRecord`]s (value, key, topic, partition, offset,
/// timestamp, headers), in offset order per partition, with the faces of a
/// [`KafkaDataset`]: [`examples`](Self::examples), [`batch`](Self::batch),
/// [`mini_batches`](Self::mini_batches) (tensorflow-io's `KafkaBatchIODataset`), and a blocking
/// iterator ([`open_blocking`](KafkaGroupDatasetBuilder::open_blocking)).
///
/// # Acknowledge, commit, close
///
/// tensorflow-io let librdkafka auto-commit each record when it was fetched, so the records
/// between a commit and a crash were lost, and with its default timeouts it discarded the
/// records of the poll round that ended the stream (they were committed all the same). Here
/// nothing is committed that was not acknowledged: call [`ack`](Self::ack) (or
/// [`Acker::ack_all`], [`Acker::ack_through`]) once a record's result is safe, e.g. after an
/// [`OutputSequence::flush`](super::OutputSequence::flush). Per
/// partition, the offset after the acknowledged prefix is committed every
/// [`commit_interval`](KafkaGroupDatasetBuilder::commit_interval), before a rebalance, on
/// [`commit`](Self::commit) and on [`close`](Self::close). The next reader of a partition gets
/// every record that was not acknowledged (at-least-once). The [`Acker`] is a separate,
/// cloneable handle ([`acker`](Self::acker)), so batching the dataset or moving it into another
/// task keeps the means to acknowledge and to close.
///
/// Call [`close`](Self::close) (or [`Acker::close`]) at the end: it commits and leaves the
/// group, so the other readers take the partitions over at once. Until then the reader stays in
/// the group, even after its stream ended, so records already handed out can still be
/// acknowledged and committed. A reader dropped without `close` commits what was acknowledged
/// and leaves once its stream and every `Acker` are gone (if its runtime still runs).
///
/// # When it ends: `stream_timeout` and `message_poll_timeout`
///
/// tensorflow-io polls librdkafka for up to `message_poll_timeout` at a time and ends the
/// dataset once `stream_timeout / message_poll_timeout` polls in a row found nothing. Here a
/// record is handed out as soon as it is fetched, and the stream ends once it has waited
/// `stream_timeout` (raised to `message_poll_timeout`, as in tensorflow-io) without one. Time
/// spent in a rebalance counts as waiting. The group's partitions hold records 0, 1, 2 past
/// the committed positions when the dataset opens; record 3 is produced at t = 4 s;
/// `message_poll_timeout` is 1 s:
///
/// ```text
/// stream_timeout = 0 (default)     stream_timeout = 2 s              stream_timeout = None (-1)
///
/// 0 s  open: join, yields 0, 1, 2  0 s  open, yields 0, 1, 2         0 s  open, yields 0, 1, 2
/// 1 s  1 s without a record        1 s  waiting                      1 s  waiting
///      (0 s raised to 1 s): ends   2 s  2 s without a record: ends   4 s  yields 3
///                                                                    ...  waits forever
/// ```
///
/// A Kafka or group error (a partition's leader stayed unreachable, the member could not
/// rejoin) is yielded once and ends the stream; records acknowledged before it can still be
/// committed and the reader closed.
///
/// # Rebalances
///
/// When a reader joins or leaves the group, every member stops fetching, drops the records it
/// fetched but had not handed out yet, commits its acknowledged positions, rejoins, and reads
/// its new assignment from the committed positions. Records handed out before and not
/// acknowledged by then are delivered again to their partition's new owner; acknowledging them
/// later is harmless.
///
/// ```no_run
/// use futures::StreamExt;
/// use streamtract::dataset::KafkaGroupDataset;
/// use streamtract::kafka::StartPosition;
/// # async fn demo() -> Result<(), streamtract::dataset::DatasetError> {
/// let mut dataset = KafkaGroupDataset::builder(["events"], "trainers")
///     .servers("127.0.0.1:9092")
///     .stream_timeout(std::time::Duration::from_secs(30))
///     .start(StartPosition::Earliest) // tensorflow-io: configuration=["auto.offset.reset=earliest"]
///     .open()
///     .await?;
/// let acker = dataset.acker();
/// while let Some(record) = dataset.next().await {
///     let record = record?;
///     println!("{}@{}", record.partition, record.offset); // process the record...
///     acker.ack(&record); // ...then acknowledge it
/// }
/// acker.close().await?; // commit what was acknowledged, leave the group
/// # Ok(()) }
/// ```
pub struct KafkaGroupDataset {
    dataset: KafkaDataset,
    acker: Acker,
}

impl fmt::Debug for KafkaGroupDataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaGroupDataset")
            .field("group", &self.acker.group_id())
            .field("dataset", &self.dataset)
            .field("acker", &self.acker)
            .finish()
    }
}

impl KafkaGroupDataset {
    /// Starts describing a reader of `topics` (topic names) in the consumer group `group_id`
    /// (tensorflow-io's `topics` and `group_id`).
    pub fn builder(
        topics: impl IntoIterator<Item = impl Into<String>>,
        group_id: &str,
    ) -> KafkaGroupDatasetBuilder {
        KafkaGroupDatasetBuilder {
            topics: topics.into_iter().map(Into::into).collect(),
            group: GroupConfig::new(group_id),
            connection: Connection::default(),
            start: StartPosition::Earliest,
            stream_timeout: Some(Duration::ZERO),
            message_poll_timeout: DEFAULT_MESSAGE_POLL_TIMEOUT,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            max_uncommitted: DEFAULT_MAX_UNCOMMITTED,
            invalid: None,
        }
    }

    /// A handle to acknowledge records, commit and close, usable from anywhere.
    pub fn acker(&self) -> Acker {
        self.acker.clone()
    }

    /// [`Acker::ack`].
    pub fn ack(&self, record: &SourceRecord) {
        self.acker.ack(record);
    }

    /// [`Acker::ack_through`].
    pub fn ack_through(&self, record: &SourceRecord) {
        self.acker.ack_through(record);
    }

    /// [`Acker::commit`].
    pub async fn commit(&self) -> Result<Committed, DatasetError> {
        self.acker.commit().await
    }

    /// [`Acker::close`]: commits what was acknowledged, leaves the group, ends the stream.
    pub async fn close(self) -> Result<Committed, DatasetError> {
        let KafkaGroupDataset { dataset, acker } = self;
        let result = acker.close().await;
        drop(dataset);
        result
    }

    /// The partitions currently assigned to this reader ([`Acker::assignment`]).
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.acker.assignment()
    }

    /// The group id.
    pub fn group_id(&self) -> &str {
        self.acker.group_id()
    }

    /// The idle time after which the stream ends, as applied (at least
    /// [`message_poll_timeout`](Self::message_poll_timeout)); `None` waits forever.
    pub fn stream_timeout(&self) -> Option<Duration> {
        self.dataset.stream_timeout()
    }

    /// tensorflow-io's `message_poll_timeout`.
    pub fn message_poll_timeout(&self) -> Duration {
        self.dataset.timeout()
    }

    /// Records handed out so far.
    pub fn records_read(&self) -> u64 {
        self.dataset.records_read()
    }

    /// The record stream as a plain [`KafkaDataset`] (keep an [`acker`](Self::acker) first).
    pub fn into_dataset(self) -> KafkaDataset {
        self.dataset
    }

    /// Decodes every record ([`KafkaDataset::examples`]); the dataset stays reachable through
    /// [`Examples`] only as a stream, so take an [`acker`](Self::acker) first.
    pub fn examples(self, preprocess: Preprocess) -> Examples<KafkaGroupDataset> {
        Examples::new(self, preprocess)
    }

    /// Tensor batches of `size` rows ([`KafkaDataset::batch`]); acknowledge each batch's
    /// `records` once its results are safe. [`Batches::get_ref`] reaches this dataset.
    pub fn batch(self, size: usize, preprocess: Preprocess) -> Batches<KafkaGroupDataset> {
        Batches::new(self, size, preprocess)
    }

    /// Mini-batches for online learning: tensorflow-io's `KafkaBatchIODataset`, which is a
    /// group dataset too. A partial mini-batch closes after one
    /// [`message_poll_timeout`](Self::message_poll_timeout) without a record. Take an
    /// [`acker`](Self::acker) first.
    pub fn mini_batches(self, mini_batch_size: usize) -> KafkaBatchDataset {
        KafkaBatchDataset::new(self.dataset, mini_batch_size)
    }
}

impl Stream for KafkaGroupDataset {
    type Item = Result<SourceRecord, DatasetError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.dataset.poll_next_unpin(cx)
    }
}

/// What the background task hands the stream.
enum Delivery {
    /// Records read in the assignment of `epoch`.
    Records {
        epoch: u64,
        records: Vec<SourceRecord>,
    },
    /// The stream ends with this error.
    Failed(DatasetError),
}

/// The stream's side: records from the background task, minus those revoked while queued.
struct GroupReader {
    deliveries: mpsc::Receiver<Delivery>,
    revocation: Revocation,
    /// Keeps the background task running while the stream lives.
    _driver: mpsc::Sender<Control>,
}

impl GroupReader {
    async fn next(&mut self) -> Option<Result<Vec<SourceRecord>, DatasetError>> {
        loop {
            match self.deliveries.recv().await? {
                Delivery::Records { epoch, records } => {
                    if epoch != self.revocation.current() {
                        continue; // read before a rebalance: the partition's next owner reads it
                    }
                    self.revocation.accept(epoch);
                    return Some(Ok(records));
                }
                Delivery::Failed(e) => return Some(Err(e)),
            }
        }
    }
}

impl RecordSource for GroupReader {
    fn next_chunk(&mut self) -> BoxFuture<'_, Option<Result<Vec<SourceRecord>, DatasetError>>> {
        Box::pin(self.next())
    }
}

/// The background task: the group member, the source over its assignment, the commits.
struct Driver {
    consumer: Consumer,
    shared: Arc<Shared>,
    revocation: Revocation,
    commit_interval: Duration,
    max_uncommitted: usize,
}

impl Driver {
    async fn run(
        mut self,
        mut source: Source,
        deliveries: mpsc::Sender<Delivery>,
        mut control: mpsc::Receiver<Control>,
    ) {
        let group = self.shared.group.clone();
        // Fetched records (or an error) waiting for room in `deliveries`.
        let mut outbox: Option<Delivery> = None;
        // False once the stream is gone or was handed an error.
        let mut fetching = true;
        // A rejoin failed: the member is out of the group for good.
        let mut out_of_group = false;
        let mut paused = false;
        let mut commit_due =
            tokio::time::interval_at(Instant::now() + self.commit_interval, self.commit_interval);
        commit_due.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if fetching && deliveries.is_closed() {
                tracing::debug!(%group, "the dataset stream ended; fetching stops, the member stays in the group until closed");
                fetching = false;
                outbox = None;
                source = Source::idle();
            }
            self.pause_or_resume(&mut paused);
            let want_records = fetching && outbox.is_none() && !paused;
            tokio::select! {
                biased;
                command = control.recv() => {
                    let Some(Control::Commit(reply)) = command else {
                        drop(source);
                        self.finish(command).await;
                        return;
                    };
                    let _ = reply.send(self.commit().await);
                }
                () = self.consumer.rebalance_needed(), if !out_of_group => {
                    outbox = None;
                    source = Source::idle();
                    match self.rebalance(fetching).await {
                        Ok(next) => source = next,
                        Err(e) => {
                            tracing::error!(%group, error = %e, "the group dataset could not rejoin its group; its stream ends");
                            out_of_group = true;
                            if fetching {
                                fetching = false;
                                outbox = Some(Delivery::Failed(e));
                            }
                        }
                    }
                }
                _ = commit_due.tick() => {
                    if let Err(e) = self.commit().await {
                        tracing::warn!(%group, error = %e, "commit failed; retrying at the next one");
                    }
                }
                permit = deliveries.reserve(), if outbox.is_some() => {
                    if let (Ok(permit), Some(delivery)) = (permit, outbox.take()) {
                        permit.send(delivery);
                    }
                }
                chunk = source.next_chunk(), if want_records => match chunk {
                    Some(Ok(records)) if !records.is_empty() => outbox = Some(self.hand_out(records)),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::error!(%group, error = %e, "fetching failed; the group dataset's stream ends");
                        source = Source::idle();
                        fetching = false;
                        outbox = Some(Delivery::Failed(e.into()));
                    }
                    // Nothing assigned: wait for a rebalance.
                    None => source = Source::idle(),
                },
            }
        }
    }

    /// Closes on request (answering it), or because every handle is gone without a close
    /// (doing what close would).
    async fn finish(self, command: Option<Control>) {
        let group = self.shared.group.clone();
        match command {
            Some(Control::Close(reply)) => {
                let _ = reply.send(self.close().await);
            }
            Some(Control::Commit(_)) | None => {
                if let Err(e) = self.close().await {
                    tracing::warn!(%group, error = %e, "closing the dropped group dataset failed");
                }
            }
        }
    }

    /// Pauses fetching while too many records are handed out and not committed (the
    /// program is not acknowledging), and resumes once commits catch up.
    fn pause_or_resume(&self, paused: &mut bool) {
        let group = &self.shared.group;
        let uncommitted = self.shared.ledger().uncommitted();
        if (uncommitted >= self.max_uncommitted) != *paused {
            *paused = !*paused;
            if *paused {
                tracing::warn!(%group, uncommitted, max_uncommitted = self.max_uncommitted,
                    "fetching paused: too many records handed out and not committed; acknowledge records (Acker::ack) or raise max_uncommitted");
            } else {
                tracing::info!(%group, uncommitted, "fetching resumed");
            }
        }
    }

    /// Notes fetched records in the ledger (they now wait for acknowledgement) and wraps
    /// them for the stream, stamped with the current assignment.
    fn hand_out(&self, records: Vec<SourceRecord>) -> Delivery {
        let mut ledger = self.shared.ledger();
        for r in &records {
            ledger.read(&(Arc::clone(&r.topic), r.partition), r.offset);
        }
        Delivery::Records {
            epoch: self.revocation.current(),
            records,
        }
    }

    /// Starts reading the assignment from the committed positions (or the start policy).
    async fn start_source(&self) -> Result<Source, DatasetError> {
        Ok(self.consumer.open_source().await?.source)
    }

    /// Commits the acknowledged positions that moved.
    async fn commit(&self) -> Result<Committed, DatasetError> {
        let positions = self.shared.ledger().commits();
        if positions.is_empty() {
            return Ok(Committed::new());
        }
        let offsets = self.consumer.commit(&positions).await?;
        self.shared.ledger().confirm(&positions);
        tracing::debug!(group = %self.shared.group, positions = %describe_positions(&offsets), "committed");
        Ok(offsets)
    }

    /// Eager rebalance: revoke what the stream buffers, commit, rejoin, read the new
    /// assignment (only while the stream is there to take it).
    async fn rebalance(&mut self, fetching: bool) -> Result<Source, DatasetError> {
        self.revocation.revoke();
        if let Err(e) = self.commit().await {
            tracing::warn!(group = %self.shared.group, error = %e, "commit before the rebalance failed; records after the last commit will be delivered again");
        }
        self.shared.ledger().forget_all();
        self.shared.set_assignment(Vec::new());
        self.consumer.rejoin().await?;
        self.shared.set_assignment(self.consumer.assignment());
        if !fetching {
            return Ok(Source::idle());
        }
        self.start_source().await
    }

    /// Final commit, then LeaveGroup.
    async fn close(self) -> Result<Committed, DatasetError> {
        self.revocation.revoke();
        let committed = self.commit().await;
        if let Err(e) = &committed {
            tracing::warn!(group = %self.shared.group, error = %e, "final commit failed; records after the last commit will be delivered again");
        }
        let shared = Arc::clone(&self.shared);
        let left = self.consumer.leave().await;
        shared.set_assignment(Vec::new());
        shared.mark_closed();
        tracing::info!(group = %shared.group, "group dataset closed");
        match (committed, left) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e.into()),
            (Ok(committed), Ok(())) => Ok(committed),
        }
    }
}

fn describe_positions(positions: &Committed) -> String {
    positions
        .iter()
        .map(|(tp, pos)| format!("{tp}={pos}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_entries_map_to_settings() {
        let b = KafkaGroupDataset::builder(["t"], "g").configuration([
            "session.timeout.ms=7000",
            "max.poll.interval.ms=8000",
            "conf.topic.auto.offset.reset=latest",
            "enable.auto.commit=false",
            "partition.assignment.strategy=roundrobin,range",
            "auto.commit.interval.ms=250",
            "bootstrap.servers=a:1, b:2",
            "socket.keepalive.enable=true",
        ]);
        assert!(b.invalid.is_none(), "{:?}", b.invalid);
        assert_eq!(b.group.session_timeout, Duration::from_millis(7000));
        assert_eq!(b.group.rebalance_timeout, Duration::from_millis(8000));
        assert_eq!(
            b.group.assignors,
            vec![Assignor::RoundRobin, Assignor::Range]
        );
        assert_eq!(b.start, StartPosition::Latest);
        assert_eq!(b.commit_interval, Duration::from_millis(250));
        assert_eq!(b.connection.kafka().brokers, vec!["a:1", "b:2"]);
        assert_eq!(b.connection.ignored_keys(), ["socket.keepalive.enable"]);
        b.check().unwrap();
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let refused = |b: KafkaGroupDatasetBuilder| b.check().unwrap_err().to_string();
        let b = || KafkaGroupDataset::builder(["t"], "g");
        assert!(refused(b().configuration(["enable.auto.commit=true"])).contains("acknowledged"));
        assert!(refused(b().configuration(["auto.offset.reset=error"])).contains("earliest"));
        assert!(refused(b().configuration(["session.timeout.ms"])).contains("key=value"));
        // Keys without an equivalent were ignored with a warning; they are refused now.
        assert!(refused(b().configuration(["fetch.wait.max.ms=10"]))
            .contains("unknown key `fetch.wait.max.ms`: KafkaGroupDataset has no equivalent"));
        assert!(
            refused(b().configuration(["security.protocol=ssl", "sasl.username=a"]))
                .contains("`sasl.username` is given but `security.protocol=ssl`")
        );
        assert!(refused(b().message_poll_timeout(Duration::ZERO)).contains("message_poll_timeout"));
        assert!(refused(KafkaGroupDataset::builder(["t:0"], "g")).contains("topic names"));
        assert!(refused(KafkaGroupDataset::builder(["t"], "")).contains("group_id"));
    }
}
