//! Where a dataset's records come from.
//!
//! [`KafkaDataset`](super::KafkaDataset) only sees a [`RecordSource`]: something that hands out
//! chunks of records, in offset order per partition, and says when there are no more. Reading
//! topic specs in order ([`SpecReader`]) is one; a consumer-group member
//! (`group_dataset::GroupReader`) is another, so the dataset's preprocessing,
//! batching, timeouts and blocking face serve both. A group source also hands the dataset a
//! [`Revocation`], so records of partitions taken away in a rebalance are dropped.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use rskafka::client::Client;

use super::spec::{SpecOffset, TopicSpec};
use super::DatasetError;
use crate::kafka::KafkaError;
use crate::kafka::{
    topic_partitions, KafkaConfig, Source, SourceConfig, SourceRecord, StartPosition,
    TopicSelection,
};

/// A supplier of records for a dataset.
pub(crate) trait RecordSource: Send + 'static {
    /// The next records (never an empty chunk), in offset order per partition; `None` once the
    /// source is exhausted (bounded reading only). An error is the last item.
    fn next_chunk(&mut self) -> BoxFuture<'_, Option<Result<Vec<SourceRecord>, DatasetError>>>;
}

/// A record source as a stream of chunks.
pub(crate) type ChunkStream = BoxStream<'static, Result<Vec<SourceRecord>, DatasetError>>;

pub(crate) fn into_stream(source: Box<dyn RecordSource>) -> ChunkStream {
    futures::stream::unfold(source, |mut source| async move {
        let chunk = source.next_chunk().await?;
        Some((chunk, source))
    })
    .boxed()
}

/// One partition of a spec, resolved when the dataset was opened.
#[derive(Debug, Clone)]
struct PartitionPlan {
    partition: i32,
    /// First offset to read.
    start: i64,
    /// Offset to stop before: `last + 1` and/or the end at opening (eof); `None` = follow.
    stop: Option<i64>,
}

/// One topic spec, resolved.
#[derive(Debug, Clone)]
struct SpecPlan {
    spec: TopicSpec,
    /// Whether the spec names one partition (then `start` is an explicit offset).
    single: bool,
    partitions: Vec<PartitionPlan>,
}

/// The spec being read.
struct Active {
    source: Source,
    stops: HashMap<i32, i64>,
    finished: BTreeSet<i32>,
    /// Some partition has no stop: only the source ending finishes the spec.
    unbounded: bool,
}

impl Active {
    fn done(&self) -> bool {
        !self.unbounded && self.finished.len() == self.stops.len()
    }

    /// Drops records at or past their partition's stop and notes finished partitions.
    fn keep(&mut self, chunk: Vec<SourceRecord>) -> Vec<SourceRecord> {
        let mut kept = Vec::with_capacity(chunk.len());
        for r in chunk {
            match self.stops.get(&r.partition) {
                Some(&stop) if r.offset >= stop => {
                    self.finished.insert(r.partition);
                }
                Some(&stop) => {
                    if r.offset + 1 >= stop {
                        self.finished.insert(r.partition);
                    }
                    kept.push(r);
                }
                None => kept.push(r),
            }
        }
        kept
    }
}

/// Reads topic specs one after the other, as tensorflow-io's `KafkaDataset` does: the next spec
/// starts once the previous one reached its `last` offset (or, with `eof`, the end it had when
/// the dataset was opened).
pub(crate) struct SpecReader {
    client: Arc<Client>,
    kafka: KafkaConfig,
    eof: bool,
    plans: VecDeque<SpecPlan>,
    active: Option<Active>,
    failed: bool,
}

impl fmt::Debug for SpecReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpecReader")
            .field("eof", &self.eof)
            .field("plans", &self.plans)
            .finish_non_exhaustive()
    }
}

impl SpecReader {
    /// Checks every spec against the cluster and fixes where each partition starts and stops.
    pub(crate) async fn plan(
        client: Arc<Client>,
        kafka: KafkaConfig,
        specs: Vec<TopicSpec>,
        eof: bool,
    ) -> Result<SpecReader, DatasetError> {
        let mut plans = VecDeque::new();
        for spec in specs {
            let existing = topic_partitions(&client, &kafka, &spec.topic, "input").await?;
            let partitions: Vec<i32> = match spec.partition {
                Some(p) if !existing.contains(&p) => {
                    return Err(KafkaError::UnknownPartition {
                        topic: spec.topic.clone(),
                        partition: p,
                        count: existing.len(),
                    }
                    .into())
                }
                Some(p) => vec![p],
                None => existing.iter().copied().collect(),
            };
            let mut resolved = Vec::new();
            for p in partitions {
                let pc = client
                    .partition_client(spec.topic.clone(), p, UnknownTopicHandling::Retry)
                    .await
                    .map_err(|e| KafkaError::request("connect to leader", &spec.topic, p, e))?;
                let low = pc
                    .get_offset(OffsetAt::Earliest)
                    .await
                    .map_err(|e| KafkaError::request("list offsets", &spec.topic, p, e))?;
                let high = pc
                    .get_offset(OffsetAt::Latest)
                    .await
                    .map_err(|e| KafkaError::request("list offsets", &spec.topic, p, e))?;
                let start = match spec.offset {
                    SpecOffset::Earliest => low,
                    SpecOffset::Latest => high,
                    SpecOffset::At(n) if n < low || n > high => {
                        return Err(DatasetError::OffsetOutOfRange {
                            spec: spec.to_string(),
                            partition: p,
                            offset: n,
                            low,
                            high,
                        })
                    }
                    SpecOffset::At(n) => n,
                };
                let stop = match (spec.last.map(|l| l.saturating_add(1)), eof.then_some(high)) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if stop.is_some_and(|s| s <= start) {
                    continue; // nothing to read in this partition
                }
                resolved.push(PartitionPlan {
                    partition: p,
                    start,
                    stop,
                });
            }
            tracing::debug!(spec = %spec, partitions = ?resolved, "topic spec planned");
            if !resolved.is_empty() {
                plans.push_back(SpecPlan {
                    single: spec.partition.is_some(),
                    spec,
                    partitions: resolved,
                });
            }
        }
        Ok(SpecReader {
            client,
            kafka,
            eof,
            plans,
            active: None,
            failed: false,
        })
    }

    async fn start(&self, plan: SpecPlan) -> Result<Active, DatasetError> {
        let mut config = SourceConfig::new(vec![TopicSelection {
            topic: plan.spec.topic.clone(),
            partitions: Some(plan.partitions.iter().map(|p| p.partition).collect()),
        }]);
        config.start = match (plan.single, plan.partitions.first()) {
            (true, Some(p)) => StartPosition::Offset(p.start),
            _ => StartPosition::Earliest,
        };
        // With eof the source also stops by itself at the end it sees now (at or past the
        // end at opening, which `keep` enforces), so a spec never waits past its data.
        config.until_end = self.eof;
        let source = Source::start(Arc::clone(&self.client), &self.kafka, &config).await?;
        Ok(Active {
            source,
            stops: plan
                .partitions
                .iter()
                .filter_map(|p| p.stop.map(|s| (p.partition, s)))
                .collect(),
            finished: BTreeSet::new(),
            unbounded: plan.partitions.iter().any(|p| p.stop.is_none()),
        })
    }

    async fn next(&mut self) -> Option<Result<Vec<SourceRecord>, DatasetError>> {
        if self.failed {
            return None;
        }
        loop {
            let active = match self.active.as_mut() {
                Some(active) if active.done() => {
                    self.active = None; // dropping the source stops its fetches
                    continue;
                }
                Some(active) => active,
                None => {
                    let plan = self.plans.pop_front()?;
                    tracing::debug!(spec = %plan.spec, "reading topic spec");
                    match self.start(plan).await {
                        Ok(active) => self.active = Some(active),
                        Err(e) => {
                            self.failed = true;
                            return Some(Err(e));
                        }
                    }
                    continue;
                }
            };
            match active.source.next_chunk().await {
                None => self.active = None,
                Some(Err(e)) => {
                    // A partition's reader gave up: end here rather than skip its records.
                    self.failed = true;
                    self.active = None;
                    return Some(Err(e.into()));
                }
                Some(Ok(chunk)) => {
                    let kept = active.keep(chunk);
                    if !kept.is_empty() {
                        return Some(Ok(kept));
                    }
                }
            }
        }
    }
}

impl RecordSource for SpecReader {
    fn next_chunk(&mut self) -> BoxFuture<'_, Option<Result<Vec<SourceRecord>, DatasetError>>> {
        Box::pin(self.next())
    }
}

/// Tells a dataset that records it holds were revoked: a consumer-group source bumps the epoch
/// when its partitions are taken away (a rebalance, or closing), and the dataset drops the
/// records it buffered under an older epoch instead of handing them out, so another member's
/// copy of them is not processed twice.
#[derive(Debug, Clone, Default)]
pub(crate) struct Revocation {
    /// The epoch records must belong to, to be handed out.
    current: Arc<AtomicU64>,
    /// The epoch of the chunk the source handed out last.
    accepted: Arc<AtomicU64>,
}

impl Revocation {
    /// Revokes every record handed over so far; returns the new epoch.
    pub(crate) fn revoke(&self) -> u64 {
        self.current.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The current epoch.
    pub(crate) fn current(&self) -> u64 {
        self.current.load(Ordering::SeqCst)
    }

    /// The source is handing out a chunk read in `epoch`.
    pub(crate) fn accept(&self, epoch: u64) {
        self.accepted.store(epoch, Ordering::SeqCst);
    }

    /// The epoch of the chunk handed out last (read by the dataset right after it got it).
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}
