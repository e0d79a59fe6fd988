//! The run loop: records in, batches to the model, outputs to the sink, acks to the offset
//! tracker. [`Pipeline`](super::Pipeline) drives it, between start-up, rebalances and shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::mpsc;
use tract_onnx::prelude::Tensor;

use super::batch::{split_outputs, Batch};
use super::offsets::{OffsetTracker, TopicPartition};
use super::{headers, ErrorPolicy, PipelineConfig, RunSummary};
use crate::codec::{DecodeError, Decoder, Encoder, Row};
use crate::error::{Error, ModelError, Result};
use crate::kafka::{OutputRecord, Sink, Source, SourceCoordinates, SourceRecord};
use crate::model::InferencePool;

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
type InFlight = FuturesOrdered<Pin<Box<dyn Future<Output = BatchResult> + Send>>>;

/// Why [`RunLoop::pump`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// Every partition reached its end offset (bounded mode).
    SourceEnded,
    /// The shutdown future completed.
    Shutdown,
    /// The consumer group needs a rebalance.
    Rebalance,
    /// An error stopped reading; [`RunLoop::finish`] returns it.
    Fatal,
}

/// The stages between a [`Source`] and the sinks, with their in-flight state.
pub(super) struct RunLoop {
    config: PipelineConfig,
    decoder: Decoder,
    encoder: Encoder,
    pool: InferencePool,
    sink: Sink,
    dlq: Option<Sink>,
    row_shapes: Vec<Vec<usize>>,
    sha: Vec<u8>,
    batch: Batch<RowMeta>,
    batch_deadline: tokio::time::Instant,
    inflight: InFlight,
    acks: mpsc::UnboundedReceiver<Vec<SourceCoordinates>>,
    pub(super) tracker: OffsetTracker,
    pub(super) summary: RunSummary,
    fatal: Option<Error>,
    /// Records fetched but not taken in yet because the uncommitted bound was reached; they
    /// are not tracked, so if the run stops they are simply read again by the next owner.
    held: std::collections::VecDeque<SourceRecord>,
}

/// The pieces a [`RunLoop`] is built from.
pub(super) struct Stages {
    pub config: PipelineConfig,
    pub decoder: Decoder,
    pub encoder: Encoder,
    pub pool: InferencePool,
    pub sink: Sink,
    pub dlq: Option<Sink>,
    pub acks: mpsc::UnboundedReceiver<Vec<SourceCoordinates>>,
    pub row_shapes: Vec<Vec<usize>>,
    pub sha: Vec<u8>,
}

impl RunLoop {
    pub(super) fn new(s: Stages) -> RunLoop {
        RunLoop {
            config: s.config,
            decoder: s.decoder,
            encoder: s.encoder,
            pool: s.pool,
            sink: s.sink,
            dlq: s.dlq,
            row_shapes: s.row_shapes,
            sha: s.sha,
            batch: Batch::default(),
            batch_deadline: tokio::time::Instant::now(),
            inflight: FuturesOrdered::new(),
            acks: s.acks,
            tracker: OffsetTracker::default(),
            summary: RunSummary::default(),
            fatal: None,
            held: std::collections::VecDeque::new(),
        }
    }

    /// Reads from `source` until it ends, `shutdown` or `rebalance` completes, an error
    /// happens, or `commit_due` fires (returns `None` then, so the caller can commit and call
    /// again).
    pub(super) async fn pump(
        &mut self,
        source: &mut Source,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
        rebalance: &mut (impl Future<Output = ()> + Unpin),
        commit_due: &mut tokio::time::Interval,
    ) -> Option<Stop> {
        let max_inflight = self.pool.workers() * 2 + 1;
        loop {
            if self.fatal.is_some() {
                return Some(Stop::Fatal);
            }
            // At the uncommitted bound reading pauses; commit as soon as there is progress.
            let room = self
                .config
                .max_uncommitted
                .saturating_sub(self.tracker.uncommitted());
            let at_bound = room == 0;
            if at_bound && !self.tracker.commits().is_empty() {
                return None;
            }
            // Records held back at the bound go first, as far as there is room.
            if !self.held.is_empty() && !at_bound && self.inflight.len() < max_inflight {
                let take = room.min(self.held.len());
                let records: Vec<SourceRecord> = self.held.drain(..take).collect();
                self.on_records(records).await;
                continue;
            }
            let can_read = self.inflight.len() < max_inflight && !at_bound && self.held.is_empty();
            tokio::select! {
                biased;
                _ = &mut *shutdown => return Some(Stop::Shutdown),
                _ = &mut *rebalance => return Some(Stop::Rebalance),
                Some(acked) = self.acks.recv() => self.on_acks(acked),
                Some(result) = self.inflight.next(), if !self.inflight.is_empty() => self.on_batch_done(result).await,
                chunk = source.next_chunk(), if can_read => match chunk {
                    None => return Some(Stop::SourceEnded),
                    Some(Err(e)) => { self.fatal.get_or_insert(e.into()); }
                    Some(Ok(mut records)) => {
                        // Take no more than the bound allows; hold the rest (at most one chunk).
                        if records.len() > room {
                            self.held.extend(records.drain(room..));
                        }
                        self.on_records(records).await;
                    }
                },
                _ = tokio::time::sleep_until(self.batch_deadline), if !self.batch.is_empty() => self.dispatch().await,
                _ = commit_due.tick() => return None,
            }
        }
    }

    /// Drops records held back at the uncommitted bound (their partitions are being given up;
    /// they were never taken in, so the next owner reads them).
    pub(super) fn forget_held(&mut self) {
        self.held.clear();
    }

    /// Finishes everything read so far: runs the pending batch, writes the outputs and waits
    /// until the broker acknowledged all of them (or `deadline` passes).
    pub(super) async fn drain(&mut self, deadline: Duration) {
        if !self.batch.is_empty() && self.fatal.is_none() {
            self.dispatch().await;
        }
        let until = tokio::time::Instant::now() + deadline;
        while !self.inflight.is_empty() || (self.tracker.in_flight() > 0 && self.fatal.is_none()) {
            tokio::select! {
                Some(result) = self.inflight.next(), if !self.inflight.is_empty() => self.on_batch_done(result).await,
                Some(acked) = self.acks.recv() => self.on_acks(acked),
                _ = tokio::time::sleep_until(until) => {
                    tracing::warn!(in_flight = self.tracker.in_flight(), "drain deadline passed; records not acknowledged will be read again");
                    return;
                }
            }
        }
    }

    /// Closes the sinks and returns the summary, or the error that stopped the run.
    pub(super) async fn finish(mut self) -> Result<RunSummary> {
        let out = self.sink.close().await;
        match out {
            Ok(n) => self.summary.records_out = n,
            Err(e) => {
                self.fatal.get_or_insert(e.into());
            }
        }
        if let Some(dlq) = self.dlq.take() {
            match dlq.close().await {
                Ok(n) => self.summary.dead_letters = n,
                Err(e) => {
                    self.fatal.get_or_insert(e.into());
                }
            }
        }
        match self.fatal {
            Some(e) => Err(e),
            None => Ok(self.summary),
        }
    }

    fn on_acks(&mut self, acked: Vec<SourceCoordinates>) {
        for c in acked {
            self.tracker.done(&(c.topic, c.partition), c.offset);
        }
    }

    async fn on_records(&mut self, records: Vec<SourceRecord>) {
        for record in records {
            self.summary.records_in += 1;
            let tp: TopicPartition = (Arc::clone(&record.topic), record.partition);
            self.tracker.read(&tp, record.offset);
            match decode(&self.decoder, &record, self.config.max_record_bytes) {
                Ok(row) => {
                    if self.batch.is_empty() {
                        self.batch_deadline = tokio::time::Instant::now() + self.config.linger;
                    }
                    let meta = RowMeta {
                        topic: record.topic,
                        partition: record.partition,
                        offset: record.offset,
                        timestamp_ms: record.timestamp.timestamp_millis(),
                        key: record.key,
                    };
                    self.batch.push(row, meta);
                    if self.batch.len() >= self.config.batch_size {
                        self.dispatch().await;
                    }
                }
                Err(e) => {
                    self.summary.rejected += 1;
                    tracing::warn!(topic = %record.topic, partition = record.partition,
                        offset = record.offset, reason = %e, dlq = ?self.config.dlq, "bad record");
                    if let Some(dlq) = &self.dlq {
                        // Done once the dead letter is acknowledged (through the ack channel).
                        let letter = dead_letter(record, &e);
                        let fallback = letter.source.as_ref().map_or(0, |s| s.partition);
                        let partition = dlq.partition_for(letter.key.as_deref(), fallback);
                        if let Err(e) = dlq.send(partition, letter).await {
                            self.fatal.get_or_insert(e.into());
                            return;
                        }
                    } else if self.config.on_error == ErrorPolicy::Stop {
                        // Everything before the bad record is still written and committed.
                        if !self.batch.is_empty() {
                            self.dispatch().await;
                        }
                        self.fatal.get_or_insert(Error::BadRecord {
                            source: e,
                            policy: "on_error = stop",
                        });
                        return;
                    } else {
                        self.tracker.done(&tp, record.offset);
                    }
                }
            }
        }
    }

    async fn dispatch(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let (tensors, meta) = match batch.into_tensors(&self.row_shapes) {
            Ok(t) => t,
            Err(e) => {
                self.fatal.get_or_insert(e.into());
                return;
            }
        };
        match self.pool.submit(tensors).await {
            Ok(pending) => {
                self.summary.batches += 1;
                self.inflight
                    .push_back(Box::pin(async move { (meta, pending.await) }));
            }
            Err(e) => {
                self.fatal.get_or_insert(e.into());
            }
        }
    }

    async fn on_batch_done(&mut self, (meta, outputs): BatchResult) {
        let result = match outputs {
            Ok(outputs) => self.write_outputs(meta, &outputs).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            self.fatal.get_or_insert(e);
        }
    }

    async fn write_outputs(&self, meta: Vec<RowMeta>, outputs: &[Tensor]) -> Result<()> {
        let rows = split_outputs(outputs, meta.len())?;
        let now = Utc::now();
        for (m, row) in meta.into_iter().zip(rows) {
            let value = self.encoder.encode(&row);
            let h = if self.config.output_headers {
                header_map([
                    (headers::SOURCE_TOPIC, m.topic.as_bytes().to_vec()),
                    (
                        headers::SOURCE_PARTITION,
                        m.partition.to_string().into_bytes(),
                    ),
                    (headers::SOURCE_OFFSET, m.offset.to_string().into_bytes()),
                    (
                        headers::SOURCE_TIMESTAMP,
                        m.timestamp_ms.to_string().into_bytes(),
                    ),
                    (headers::MODEL_SHA256, self.sha.clone()),
                ])
            } else {
                BTreeMap::new()
            };
            let partition = self.sink.partition_for(m.key.as_deref(), m.partition);
            let source = SourceCoordinates {
                topic: m.topic,
                partition: m.partition,
                offset: m.offset,
            };
            let record = OutputRecord {
                key: m.key,
                value,
                headers: h,
                timestamp: now,
                source: Some(source),
            };
            self.sink.send(partition, record).await?;
        }
        Ok(())
    }
}

fn decode(
    decoder: &Decoder,
    record: &SourceRecord,
    max_bytes: usize,
) -> std::result::Result<Row, DecodeError> {
    let value = record.value.as_deref().unwrap_or_default();
    if value.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            size: value.len(),
            max: max_bytes,
        });
    }
    decoder.decode(value)
}

/// The rejected record, unchanged, plus headers naming its source, the stage and the reason.
fn dead_letter(record: SourceRecord, error: &DecodeError) -> OutputRecord {
    let stage = match error {
        DecodeError::TooLarge { .. } => "size",
        _ => "decode",
    };
    let mut h = record.headers;
    h.extend(header_map([
        (headers::DLQ_SOURCE_TOPIC, record.topic.as_bytes().to_vec()),
        (
            headers::DLQ_SOURCE_PARTITION,
            record.partition.to_string().into_bytes(),
        ),
        (
            headers::DLQ_SOURCE_OFFSET,
            record.offset.to_string().into_bytes(),
        ),
        (headers::DLQ_STAGE, stage.as_bytes().to_vec()),
        (headers::DLQ_REASON, error.to_string().into_bytes()),
    ]));
    let source = SourceCoordinates {
        topic: record.topic,
        partition: record.partition,
        offset: record.offset,
    };
    OutputRecord {
        key: record.key,
        value: record.value.unwrap_or_default(),
        headers: h,
        timestamp: record.timestamp,
        source: Some(source),
    }
}

fn header_map<const N: usize>(pairs: [(&str, Vec<u8>); N]) -> BTreeMap<String, Vec<u8>> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}
