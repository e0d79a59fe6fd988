//! Reading records from a set of topic partitions.
//!
//! One task per partition fetches from the partition leader and pushes what it read into one
//! bounded channel; when the consumer of that channel is slow the fetch tasks wait, so memory
//! stays bounded by `channel capacity × fetch size` whatever the topic size.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::Client;
use rskafka::record::RecordAndOffset;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

use super::client::{topic_partitions, KafkaConfig};
use super::pacing::FetchPacing;
use super::KafkaError;

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// The oldest record still kept.
    #[default]
    Earliest,
    /// Only records produced after start-up.
    Latest,
    /// This offset in every partition (must lie within the partition's range).
    Offset(i64),
    /// The first record whose timestamp is at or after this instant.
    Timestamp(DateTime<Utc>),
}

impl FromStr for StartPosition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "earliest" => Ok(StartPosition::Earliest),
            "latest" => Ok(StartPosition::Latest),
            _ => {
                if let Ok(n) = s.parse::<i64>() {
                    if n >= 0 {
                        return Ok(StartPosition::Offset(n));
                    }
                }
                DateTime::parse_from_rfc3339(s)
                    .map(|t| StartPosition::Timestamp(t.with_timezone(&Utc)))
                    .map_err(|_| {
                        "`earliest`, `latest`, an offset >= 0 or an RFC 3339 timestamp \
                         such as 2026-11-27T13:00:00Z"
                            .to_string()
                    })
            }
        }
    }
}

impl fmt::Display for StartPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartPosition::Earliest => f.write_str("earliest"),
            StartPosition::Latest => f.write_str("latest"),
            StartPosition::Offset(n) => write!(f, "{n}"),
            StartPosition::Timestamp(t) => write!(f, "{}", t.to_rfc3339()),
        }
    }
}

/// A topic to read, with all its partitions or an explicit set.
///
/// Parses from `topic` or `topic:0,2,5`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSelection {
    /// Topic name.
    pub topic: String,
    /// `None` means every partition of the topic.
    pub partitions: Option<Vec<i32>>,
}

impl FromStr for TopicSelection {
    /// What a valid selection looks like, for the caller to put in its own error.
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || "`TOPIC` or `TOPIC:P1,P2,...` with partition numbers >= 0".to_string();
        let (topic, partitions) = match s.split_once(':') {
            None => (s, None),
            Some((topic, list)) => {
                let parts: Result<Vec<i32>, _> =
                    list.split(',').map(|p| p.trim().parse::<i32>()).collect();
                match parts {
                    Ok(p) if !p.is_empty() && p.iter().all(|&x| x >= 0) => (topic, Some(p)),
                    _ => return Err(invalid()),
                }
            }
        };
        if topic.is_empty() {
            return Err(invalid());
        }
        Ok(TopicSelection {
            topic: topic.to_string(),
            partitions,
        })
    }
}

/// A record read from Kafka, with all its coordinates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    /// Topic it was read from.
    pub topic: Arc<str>,
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// Record timestamp (create or log-append time, as the topic is configured).
    pub timestamp: DateTime<Utc>,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub value: Option<Vec<u8>>,
    /// Record headers.
    pub headers: BTreeMap<String, Vec<u8>>,
}

impl SourceRecord {
    /// Bytes of key, value and headers: what holding this record costs, roughly.
    pub fn size(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len) + headers
    }
}

/// How the source reads.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Topics (and partitions) to read.
    pub topics: Vec<TopicSelection>,
    /// Where to start in each partition.
    pub start: StartPosition,
    /// Stop each partition at the end offset read at start-up (bounded mode) instead of
    /// following it forever.
    pub until_end: bool,
    /// Most bytes one fetch may return per partition. A record larger than this is still read:
    /// the fetch is retried at once with twice the size, up to [`LARGEST_FETCH`], while none
    /// comes, and stays that large while the partition's batches need it.
    pub fetch_max_bytes: i32,
    /// How long the broker may hold a fetch open waiting for new records. Apache Kafka answers
    /// as soon as a record arrives. Some brokers (tansu) read the partition when the fetch
    /// arrives and hold the answer for the whole wait; on those the source polls instead, as
    /// often as every `fetch_max_wait / 20` while records flow and at most every
    /// `fetch_max_wait` when the partition is idle (see `kafka/pacing.rs`).
    pub fetch_max_wait: Duration,
    /// Fetch responses buffered between the fetch tasks and the consumer (each fetch task
    /// holds one more while it waits for room). Two keep the consumer fed: a fetch answered
    /// from a backlog takes a few milliseconds, and each buffered response is up to
    /// `fetch_max_bytes` of records, decoded.
    pub channel_capacity: usize,
    /// Committed positions (next offset to read) per `(topic, partition)`. A partition with
    /// one starts there; if it is outside the partition's range, `start` applies instead,
    /// with a warning (like Kafka's `auto.offset.reset`).
    pub resume: BTreeMap<(String, i32), i64>,
    /// Where fetch responses' high watermarks are recorded (shared by clones).
    pub lag: super::ConsumerLag,
    /// Whether the broker holds fetches, as the fetchers found out (shared by clones, so a
    /// source started again after a rebalance knows it from the start).
    pub fetch_evidence: super::FetchEvidence,
    /// Fetch requests answered and the records they carried (shared by clones).
    pub fetches: super::RequestStats,
}

impl SourceConfig {
    /// Reads all partitions of `topics` from the earliest offset, following forever.
    pub fn new(topics: Vec<TopicSelection>) -> SourceConfig {
        SourceConfig {
            topics,
            start: StartPosition::Earliest,
            until_end: false,
            // 512 KiB: on tansu each fetch costs the broker a database query, and fetches of
            // 256 KiB made the broker, not the pipeline, the limit (docs/performance.md "Kafka
            // path", 2026-12-05); 1 MiB (librdkafka's max.partition.fetch.bytes) ran about as
            // fast with a third more memory.
            fetch_max_bytes: 512 << 10,
            fetch_max_wait: Duration::from_millis(100),
            channel_capacity: 2,
            resume: BTreeMap::new(),
            lag: super::ConsumerLag::default(),
            fetch_evidence: super::FetchEvidence::default(),
            fetches: super::RequestStats::default(),
        }
    }
}

/// Where one partition starts and (in bounded mode) stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRange {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset to read.
    pub start: i64,
    /// Offset to stop before (the high watermark at start-up), in bounded mode.
    pub end: Option<i64>,
}

/// Records from many partitions, delivered in offset order per partition.
#[derive(Debug)]
pub struct Source {
    records: mpsc::Receiver<Result<Vec<SourceRecord>, KafkaError>>,
    ranges: Vec<PartitionRange>,
    tasks: JoinSet<()>,
    behind: Arc<Behind>,
}

impl Source {
    /// Resolves every partition's start (and end) offset, then starts fetching.
    ///
    /// Fails before reading anything if a topic or partition does not exist or a start offset
    /// is out of range.
    pub async fn start(
        client: Arc<Client>,
        kafka: &KafkaConfig,
        config: &SourceConfig,
    ) -> Result<Source, KafkaError> {
        let mut plan = Vec::new();
        for sel in &config.topics {
            let existing = topic_partitions(&client, kafka, &sel.topic, "input").await?;
            let partitions: Vec<i32> = match &sel.partitions {
                None => existing.iter().copied().collect(),
                Some(wanted) => {
                    for p in wanted {
                        if !existing.contains(p) {
                            return Err(KafkaError::UnknownPartition {
                                topic: sel.topic.clone(),
                                partition: *p,
                                count: existing.len(),
                            });
                        }
                    }
                    wanted.clone()
                }
            };
            for p in partitions {
                let own = super::client::connect_dedicated(kafka).await?;
                let pc = own
                    .partition_client(sel.topic.clone(), p, UnknownTopicHandling::Retry)
                    .await
                    .map_err(|e| KafkaError::request("connect to leader", &sel.topic, p, e))?;
                let resume = config.resume.get(&(sel.topic.clone(), p)).copied();
                let range = resolve_range(&pc, config.start, resume, config.until_end).await?;
                plan.push((pc, range));
            }
        }
        let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
        let mut tasks = JoinSet::new();
        let mut ranges = Vec::new();
        let behind = Arc::new(Behind::default());
        for (pc, range) in plan {
            ranges.push(range.clone());
            if range.end.is_some_and(|end| range.start >= end) {
                continue; // nothing to read in bounded mode
            }
            let position = Position::new(Arc::clone(&behind));
            tasks.spawn(fetch_partition(
                pc,
                range,
                config.clone(),
                tx.clone(),
                position,
            ));
        }
        Ok(Source {
            records: rx,
            ranges,
            tasks,
            behind,
        })
    }

    /// A source that reads nothing and never ends, used while partitions are being reassigned.
    pub fn idle() -> Source {
        let (tx, records) = mpsc::channel(1);
        // Keep one sender alive inside the task set so `next_chunk` waits instead of ending.
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        Source {
            records,
            ranges: Vec::new(),
            tasks,
            behind: Arc::new(Behind::default()),
        }
    }

    /// The partitions being read, with their start and end offsets.
    pub fn ranges(&self) -> &[PartitionRange] {
        &self.ranges
    }

    /// Records in bounded mode: the sum over partitions of `end - start`.
    pub fn bounded_total(&self) -> Option<u64> {
        self.ranges
            .iter()
            .map(|r| r.end.map(|e| (e - r.start).max(0) as u64))
            .sum()
    }

    /// The next records from some partition; `None` once every partition reached its end
    /// (bounded mode only; in follow mode this waits for new records forever).
    pub async fn next_chunk(&mut self) -> Option<Result<Vec<SourceRecord>, KafkaError>> {
        self.records.recv().await
    }

    /// True when every partition was, at its last fetch, read up to the broker's high
    /// watermark (or to its end in bounded mode) and everything fetched has been taken with
    /// [`next_chunk`](Self::next_chunk): no record is waiting anywhere, so more can only come
    /// with records produced after those fetches.
    ///
    /// A partition counts as behind until its first fetch answers. The pipeline uses this to
    /// run a partial batch at once instead of waiting out its linger.
    pub fn caught_up(&self) -> bool {
        self.behind.count.load(Ordering::Acquire) == 0 && self.records.is_empty()
    }

    /// Completes when the last partition behind catches up: a fetch that brought no record
    /// (so no chunk to wake a reader) can still be the one that leaves nothing to wait for. If
    /// that happened since the last such future completed, this one completes at once. Check
    /// [`caught_up`](Self::caught_up) when it does: records may have come since.
    pub fn when_caught_up(&self) -> impl Future<Output = ()> + Send + 'static {
        let behind = Arc::clone(&self.behind);
        async move { behind.none_left.notified().await }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn resolve_range(
    pc: &PartitionClient,
    start: StartPosition,
    resume: Option<i64>,
    until_end: bool,
) -> Result<PartitionRange, KafkaError> {
    let (topic, partition) = (pc.topic().to_string(), pc.partition());
    let offset_at = |at: OffsetAt| async move {
        pc.get_offset(at)
            .await
            .map_err(|e| KafkaError::request("list offsets", pc.topic(), pc.partition(), e))
    };
    let low = offset_at(OffsetAt::Earliest).await?;
    let high = offset_at(OffsetAt::Latest).await?;
    if let Some(pos) = resume {
        if (low..=high).contains(&pos) {
            return Ok(PartitionRange {
                topic,
                partition,
                start: pos,
                end: until_end.then_some(high),
            });
        }
        tracing::warn!(
            topic = %topic, partition, committed = pos, low, high, policy = %start,
            "committed offset is out of range; starting from the start policy instead"
        );
    }
    let first = match start {
        StartPosition::Earliest => low,
        StartPosition::Latest => high,
        StartPosition::Offset(n) => {
            if n < low || n > high {
                return Err(KafkaError::request(
                    "start",
                    &topic,
                    partition,
                    format!("start offset {n} is outside the partition's range {low}..={high}"),
                ));
            }
            n
        }
        StartPosition::Timestamp(t) => {
            let found = offset_at(OffsetAt::Timestamp(t)).await?;
            // Kafka answers -1 when no record is that recent: start at the end.
            if found < 0 {
                high
            } else {
                found.clamp(low, high)
            }
        }
    };
    Ok(PartitionRange {
        topic,
        partition,
        start: first,
        end: until_end.then_some(high),
    })
}

/// The most bytes a fetch asks for: the ceiling of `fetch_max_bytes`, and how far a fetch grows
/// when the next record does not fit in `fetch_max_bytes`.
pub const LARGEST_FETCH: i32 = 64 << 20;

/// How many bytes one partition fetcher asks for: `fetch_max_bytes`, grown while the next record
/// batch does not fit.
///
/// Kafka sends a first batch larger than the fetch size whole (KIP-74); tansu sends nothing,
/// so a fetch that comes back empty while the partition has records past the offset is asked
/// again at twice the size, at once and without a wait (the records are there), up to
/// [`LARGEST_FETCH`]. A grown size stays while fetches fill at least a quarter of it: a
/// topic of large records has them one after another, and shrinking after each one cost a
/// climb of fetches per record (60 records of 600 KiB took 4.1 s to read instead of 2.1 s).
#[derive(Debug)]
struct FetchSize {
    configured: i32,
    current: i32,
    /// The last fetch came back empty though records were there; the next one asks for more,
    /// with no wait.
    retrying: bool,
}

impl FetchSize {
    fn new(configured: i32) -> Self {
        FetchSize {
            configured,
            current: configured,
            retrying: false,
        }
    }

    /// A fetch brought nothing though the partition has records past the offset: doubles the
    /// size for the next fetch, or returns false when it is already [`LARGEST_FETCH`].
    fn grow(&mut self) -> bool {
        self.retrying = self.current < LARGEST_FETCH;
        if self.retrying {
            self.current = self.current.saturating_mul(2).min(LARGEST_FETCH);
        }
        self.retrying
    }

    /// A fetch brought `records`: a grown size halves once a fetch uses less than a quarter of
    /// it. At the configured size (the usual case) the records are not even counted.
    fn fetched(&mut self, records: &[SourceRecord]) {
        if self.current == self.configured {
            return;
        }
        let bytes: usize = records.iter().map(SourceRecord::size).sum();
        while self.current > self.configured && bytes < (self.current / 4) as usize {
            self.current = (self.current / 2).max(self.configured);
        }
    }
}

/// The partitions of a [`Source`] that are behind, counted by their fetchers, and a signal
/// for when the count comes down to zero.
#[derive(Debug, Default)]
struct Behind {
    count: AtomicUsize,
    none_left: Notify,
}

impl Behind {
    fn add(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    fn remove(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            // One permit is kept if nobody waits, so a reader that looks later still wakes.
            self.none_left.notify_one();
        }
    }
}

/// Whether one partition fetcher has read up to the high watermark, kept in the count of
/// partitions behind that its [`Source`] shares with all its fetchers.
///
/// A fetcher starts behind (nothing is known before its first fetch) and leaves the count
/// when it ends, whatever the reason, so a stopped fetcher never holds the count up.
#[derive(Debug)]
struct Position {
    behind: Arc<Behind>,
    is_behind: bool,
}

impl Position {
    fn new(behind: Arc<Behind>) -> Self {
        behind.add();
        Position {
            behind,
            is_behind: true,
        }
    }

    /// After a fetch: `next` is the next offset to read, `last` the partition's high
    /// watermark (or its end in bounded mode, when that is lower).
    fn update(&mut self, next: i64, last: i64) {
        let is_behind = next < last;
        if is_behind != self.is_behind {
            self.is_behind = is_behind;
            if is_behind {
                self.behind.add();
            } else {
                self.behind.remove();
            }
        }
    }
}

impl Drop for Position {
    fn drop(&mut self) {
        if self.is_behind {
            self.behind.remove();
        }
    }
}

/// Reads one partition from `range.start` into `tx` (the task [`Source::start`] spawns).
async fn fetch_partition(
    pc: PartitionClient,
    range: PartitionRange,
    config: SourceConfig,
    tx: mpsc::Sender<Result<Vec<SourceRecord>, KafkaError>>,
    position: Position,
) {
    PartitionFetcher {
        topic: Arc::from(range.topic.as_str()),
        pacing: FetchPacing::new(config.fetch_max_wait, config.fetch_evidence.clone()),
        offset: range.start,
        size: FetchSize::new(config.fetch_max_bytes),
        warned_stuck: false,
        pc,
        range,
        config,
        tx,
        position,
    }
    .run()
    .await
}

/// One partition's fetch loop and what it keeps from one fetch to the next.
struct PartitionFetcher {
    pc: PartitionClient,
    range: PartitionRange,
    config: SourceConfig,
    tx: mpsc::Sender<Result<Vec<SourceRecord>, KafkaError>>,
    position: Position,
    /// The topic name shared by every record read.
    topic: Arc<str>,
    pacing: FetchPacing,
    /// The next offset to read.
    offset: i64,
    size: FetchSize,
    /// The stuck-partition warning was logged, and no record came since.
    warned_stuck: bool,
}

impl PartitionFetcher {
    /// Fetches until the end (bounded mode), a fetch error (sent to the consumer) or the
    /// consumer going away.
    async fn run(mut self) {
        loop {
            if self.range.end.is_some_and(|end| self.offset >= end) {
                return;
            }
            let asked = tokio::time::Instant::now();
            let wait = self.pacing.next_wait();
            // Only the fetch right after `grow` is a retry.
            let retried = std::mem::take(&mut self.size.retrying);
            let max_wait_ms = if retried {
                0
            } else {
                wait.as_millis().min(i32::MAX as u128) as i32
            };
            let fetched = self
                .pc
                .fetch_records(self.offset, 1..self.size.current, max_wait_ms)
                .await;
            let records = match fetched {
                Ok((records, high_watermark)) => {
                    let bytes = records.iter().map(|r| r.record.approximate_size()).sum();
                    self.config.fetches.add(records.len(), bytes);
                    if self.note_high_watermark(&records, high_watermark) {
                        continue;
                    }
                    records
                }
                Err(e) => {
                    let error =
                        KafkaError::request("fetch", &self.range.topic, self.range.partition, e);
                    let _ = self.tx.send(Err(error)).await;
                    return;
                }
            };
            // A retry asked for no wait, so it says nothing about how the broker holds fetches.
            if !retried {
                self.pause(asked, !records.is_empty()).await;
            }
            if records.is_empty() {
                continue;
            }
            let chunk = self.chunk(records);
            self.size.fetched(&chunk);
            if !chunk.is_empty() && self.tx.send(Ok(chunk)).await.is_err() {
                return; // the consumer went away
            }
        }
    }

    /// Records what a fetch saw of the partition (lag, caught up or not) and grows the fetch
    /// size when records are there but none came; true when the fetch is to be retried at
    /// once, larger.
    fn note_high_watermark(&mut self, records: &[RecordAndOffset], high_watermark: i64) -> bool {
        let range = &self.range;
        self.config
            .lag
            .set_high_watermark(&range.topic, range.partition, high_watermark);
        // Counted before the records are sent (a fetch with records has no pause before
        // that), so that whoever takes them sees where this fetch left the partition.
        let next = records.last().map_or(self.offset, |r| r.offset + 1);
        // Where reading this partition would be caught up, after a fetch that saw `high_watermark`.
        let last = range
            .end
            .map_or(high_watermark, |end| end.min(high_watermark));
        self.position.update(next, last);
        if records.is_empty() && high_watermark > self.offset {
            // There are records past `offset` but none came: the next batch is larger
            // than the fetch (see `FetchSize`). A record too large for the pipeline is
            // then rejected as a bad record instead of stalling here.
            if self.size.grow() {
                return true;
            }
            if !self.warned_stuck {
                self.warned_stuck = true;
                tracing::warn!(topic = %range.topic, partition = range.partition, offset = self.offset,
                    high_watermark, fetch_bytes = self.size.current,
                    "the broker sends no records from this offset though it has some; \
                     a record there may be larger than the largest fetch");
            }
        } else if !records.is_empty() {
            self.warned_stuck = false;
        }
        false
    }

    /// Waits as long as the pacing asks after a fetch sent at `asked`.
    async fn pause(&mut self, asked: tokio::time::Instant, brought_records: bool) {
        let pause = self
            .pacing
            .after_fetch(asked, tokio::time::Instant::now(), brought_records);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }

    /// The fetched records up to the end (bounded mode) as [`SourceRecord`]s, advancing the
    /// offset past them.
    fn chunk(&mut self, records: Vec<RecordAndOffset>) -> Vec<SourceRecord> {
        let mut chunk = Vec::with_capacity(records.len());
        for r in records {
            if self.range.end.is_some_and(|end| r.offset >= end) {
                break;
            }
            self.offset = r.offset + 1;
            chunk.push(SourceRecord {
                topic: Arc::clone(&self.topic),
                partition: self.range.partition,
                offset: r.offset,
                timestamp: r.record.timestamp,
                key: r.record.key,
                value: r.record.value,
                headers: r.record.headers,
            });
        }
        chunk
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use super::{Behind, FetchSize, Position, SourceRecord, LARGEST_FETCH};

    #[test]
    fn partitions_count_as_behind_until_a_fetch_reaches_the_high_watermark() {
        let behind = Arc::new(Behind::default());
        let count = || behind.count.load(Ordering::Acquire);
        let mut a = Position::new(Arc::clone(&behind));
        let mut b = Position::new(Arc::clone(&behind));
        assert_eq!(count(), 2, "nothing is known before the first fetch");
        a.update(10, 10);
        assert_eq!(count(), 1);
        a.update(10, 10);
        assert_eq!(count(), 1, "a second caught-up fetch counts once");
        b.update(3, 10);
        assert_eq!(count(), 1, "b is still behind");
        b.update(10, 10);
        assert_eq!(count(), 0);
        a.update(10, 12);
        assert_eq!(count(), 1, "new records behind a");
        drop(a);
        assert_eq!(count(), 0, "a fetcher that stops leaves the count");
        drop(b);
        assert_eq!(count(), 0);
    }

    /// The signal comes when the count reaches zero, from a fetch or a stopping fetcher,
    /// and is kept for a reader that looks later; not while a partition is behind.
    #[tokio::test]
    async fn the_last_partition_to_catch_up_wakes_the_reader() {
        let behind = Arc::new(Behind::default());
        let signalled = || async {
            let wait = behind.none_left.notified();
            tokio::time::timeout(std::time::Duration::from_millis(50), wait)
                .await
                .is_ok()
        };
        let mut a = Position::new(Arc::clone(&behind));
        let mut b = Position::new(Arc::clone(&behind));
        a.update(10, 10);
        assert!(!signalled().await, "b is still behind");
        b.update(7, 7);
        assert!(signalled().await, "an empty fetch that catches up signals");
        assert!(!signalled().await, "one signal per catching up");
        a.update(10, 12);
        drop(a);
        assert!(signalled().await, "a fetcher that stops behind signals too");
        drop(b);
    }

    /// What one fetch brought: a record of `bytes` bytes of value (none for 0).
    fn fetch_of(bytes: usize) -> Vec<SourceRecord> {
        if bytes == 0 {
            return Vec::new();
        }
        vec![SourceRecord {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            timestamp: chrono::Utc::now(),
            key: None,
            value: Some(vec![0; bytes]),
            headers: Default::default(),
        }]
    }

    #[test]
    fn a_fetch_size_grows_to_the_largest_fetch_and_no_further() {
        let mut size = FetchSize::new(256 << 10);
        assert!(!size.retrying);
        let mut seen = vec![size.current];
        while size.grow() {
            assert!(
                size.retrying,
                "the fetch after a growth is a retry, with no wait"
            );
            seen.push(size.current);
        }
        assert_eq!(seen.first(), Some(&(256 << 10)));
        assert_eq!(seen.last(), Some(&LARGEST_FETCH));
        assert!(seen.windows(2).all(|w| w[1] == w[0] * 2), "{seen:?}");
        assert!(
            !size.retrying,
            "no retry once the largest fetch brought nothing"
        );
        assert_eq!(size.current, LARGEST_FETCH);
    }

    #[test]
    fn a_grown_fetch_size_stays_while_batches_fill_it_and_shrinks_after() {
        let configured = 256 << 10;
        let mut size = FetchSize::new(configured);
        assert!(size.grow() && size.grow()); // a 700 KiB batch needs 1 MiB
        assert_eq!(size.current, 1 << 20);
        // Batches of that kind keep coming: the size stays, so each costs one fetch.
        size.fetched(&fetch_of(700 << 10));
        size.fetched(&fetch_of(300 << 10));
        assert_eq!(size.current, 1 << 20);
        // Small records again (or the end of the partition): back down, not below the setting.
        size.fetched(&fetch_of(100 << 10));
        assert_eq!(size.current, configured);
        size.fetched(&fetch_of(0));
        assert_eq!(size.current, configured);
    }
}
