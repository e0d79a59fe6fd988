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
use tract_onnx::prelude::{Tensor, TractResult};

use super::latency::LatencyRecorder;
use super::serving::Serving;
use super::{headers, ErrorPolicy, OutputHeaders, PipelineConfig, RunSummary};
use super::{Error, Result};
use crate::codec::{split_outputs, Batch};
use crate::codec::{DecodeError, Decoder, Row};
use crate::kafka::offsets::{OffsetTracker, TopicPartition};
use crate::kafka::{OutputRecord, Sink, Source, SourceCoordinates, SourceRecord};
use crate::metrics::{Metrics, Stage};
use crate::model::ModelError;

/// A batch back from the model: its records (kept whole, so that a record the model fails on
/// can still be dead-lettered unchanged), its input tensors (to re-run rows one by one after
/// a failure) and the model's outputs.
/// It also carries the model that ran it: after a reload, batches of the old model are still
/// re-run and encoded by the old model, and their outputs name its SHA-256.
type BatchResult = (
    Vec<SourceRecord>,
    Vec<Tensor>,
    Arc<Serving>,
    (Outputs, Duration),
    Option<Outputs>,
);
type Outputs = std::result::Result<Vec<Tensor>, ModelError>;
/// `Sync` as well as `Send`: the run loop is borrowed across awaits, so for
/// `tokio::spawn(pipeline.run())` to compile everything it holds must be `Sync`.
type InFlight = FuturesOrdered<Pin<Box<dyn Future<Output = BatchResult> + Send + Sync>>>;

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
    /// The model new batches go to.
    serving: Arc<Serving>,
    /// New versions of the model, from the reload watcher.
    reloads: Option<mpsc::Receiver<Serving>>,
    sink: Sink,
    dlq: Option<Sink>,
    /// The shadow model and the sink of its outputs.
    shadow: Option<(Arc<Serving>, Sink)>,
    batch: Batch<SourceRecord>,
    batch_deadline: tokio::time::Instant,
    inflight: InFlight,
    acks: mpsc::UnboundedReceiver<Vec<SourceCoordinates>>,
    pub(super) tracker: OffsetTracker,
    pub(super) summary: RunSummary,
    /// From each record's timestamp to its output's (or dead letter's) acknowledgement.
    latency: LatencyRecorder,
    fatal: Option<Error>,
    /// Records fetched but not taken in yet because the uncommitted bound was reached; they
    /// are not tracked, so if the run stops they are simply read again by the next owner.
    held: std::collections::VecDeque<SourceRecord>,
}

/// The pieces a [`RunLoop`] is built from.
pub(super) struct Stages {
    pub config: PipelineConfig,
    pub serving: Serving,
    pub sink: Sink,
    pub dlq: Option<Sink>,
    pub shadow: Option<(Serving, Sink)>,
    pub acks: mpsc::UnboundedReceiver<Vec<SourceCoordinates>>,
}

impl RunLoop {
    pub(super) fn new(s: Stages, reloads: Option<mpsc::Receiver<Serving>>) -> RunLoop {
        RunLoop {
            config: s.config,
            serving: Arc::new(s.serving),
            reloads,
            sink: s.sink,
            dlq: s.dlq,
            shadow: s.shadow.map(|(serving, sink)| (Arc::new(serving), sink)),
            batch: Batch::default(),
            batch_deadline: tokio::time::Instant::now(),
            inflight: FuturesOrdered::new(),
            acks: s.acks,
            tracker: OffsetTracker::default(),
            summary: RunSummary::default(),
            latency: LatencyRecorder::new(),
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
        loop {
            let max_inflight = self.serving.pool.workers() * 2 + 1;
            if self.fatal.is_some() {
                return Some(Stop::Fatal);
            }
            // At the uncommitted bound reading pauses; commit as soon as there is progress.
            let room = self
                .config
                .max_uncommitted
                .saturating_sub(self.tracker.uncommitted());
            if room == 0 && !self.tracker.commits().is_empty() {
                return None;
            }
            // At the in-flight bytes bound reading pauses until outputs are acknowledged.
            let bytes_room = self
                .config
                .max_in_flight_bytes
                .saturating_sub(self.tracker.in_flight_bytes());
            let at_bound = room == 0 || bytes_room == 0;
            // Records held back at a bound go first, as far as there is room.
            if !self.held.is_empty() && !at_bound && self.inflight.len() < max_inflight {
                let take = admit(self.held.iter(), room, bytes_room);
                let records: Vec<SourceRecord> = self.held.drain(..take).collect();
                self.on_records(records).await;
                continue;
            }
            let can_read = self.inflight.len() < max_inflight && !at_bound && self.held.is_empty();
            // A partition that catches up with an empty fetch sends no chunk, so the batch
            // would wait out its linger without this.
            let catching_up = self.flushes_when_caught_up();
            let caught_up = source.when_caught_up();
            tokio::select! {
                biased;
                _ = &mut *shutdown => return Some(Stop::Shutdown),
                _ = &mut *rebalance => return Some(Stop::Rebalance),
                Some(acked) = self.acks.recv() => self.on_acks(acked),
                Some(result) = self.inflight.next(), if !self.inflight.is_empty() => self.on_batch_done(result).await,
                Some(next) = next_model(&mut self.reloads) => self.swap_model(next).await,
                chunk = source.next_chunk(), if can_read => match chunk {
                    None => return Some(Stop::SourceEnded),
                    Some(Err(e)) => { self.fatal.get_or_insert(e.into()); }
                    Some(Ok(mut records)) => {
                        // Take no more than the bounds allow; hold the rest (at most one chunk).
                        let take = admit(records.iter(), room, bytes_room);
                        self.held.extend(records.drain(take..));
                        self.on_records(records).await;
                        // Nothing more to wait for: more records can only come with new fetches.
                        if self.flushes_when_caught_up() && source.caught_up() {
                            self.dispatch().await;
                        }
                    }
                },
                _ = caught_up, if catching_up => {
                    if source.caught_up() {
                        self.dispatch().await;
                    }
                }
                _ = tokio::time::sleep_until(self.batch_deadline), if !self.batch.is_empty() => self.dispatch().await,
                _ = commit_due.tick() => return None,
            }
        }
    }

    /// Whether the batch runs as soon as the source is caught up: it has rows, and no records
    /// held back at a bound are waiting to join it.
    fn flushes_when_caught_up(&self) -> bool {
        self.config.flush_when_caught_up && !self.batch.is_empty() && self.held.is_empty()
    }

    /// Makes `next` the model for new batches. Rows already decoded for the current model go
    /// to it first; batches in flight finish on it and are written in order as before.
    async fn swap_model(&mut self, next: Serving) {
        if !self.batch.is_empty() {
            self.dispatch().await;
        }
        tracing::info!(model = %next.model.path().display(), sha256 = next.sha256(),
            previous_sha256 = self.serving.sha256(), load_ms = next.load_time.as_millis() as u64, "model reloaded");
        self.config.metrics.model(next.sha256(), next.model.path());
        self.serving = Arc::new(next);
    }

    /// Where this run counts what it does.
    pub(super) fn metrics(&self) -> &Metrics {
        &self.config.metrics
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
        if let Some((_, shadow)) = self.shadow.take() {
            if let Err(e) = shadow.close().await {
                tracing::warn!(error = %e, "shadow outputs not all written");
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
            None => Ok(RunSummary {
                latency: self.latency.summary(),
                ..self.summary
            }),
        }
    }

    fn on_acks(&mut self, acked: Vec<SourceCoordinates>) {
        let now = Utc::now();
        for c in acked {
            if let Some(latency) = self.latency.record(c.timestamp, now) {
                self.config.metrics.end_to_end(latency);
            }
            self.tracker.done(&(c.topic, c.partition), c.offset);
        }
    }

    async fn on_records(&mut self, records: Vec<SourceRecord>) {
        // Confluent Avro: writer schemas not seen yet are fetched here, before the synchronous
        // decoding below (retrying a failing registry, so an outage delays records instead of
        // rejecting them). Nothing to do for the other formats.
        let decoder = &self.serving.decoder;
        decoder
            .resolve_schemas(records.iter().filter_map(|r| r.value.as_deref()))
            .await;
        count_by_partition(
            records.iter().map(|r| (&*r.topic, r.partition)),
            |t, p, n| self.config.metrics.record_in(t, p, n),
        );
        for record in records {
            self.summary.records_in += 1;
            let tp: TopicPartition = (Arc::clone(&record.topic), record.partition);
            self.tracker.read_sized(&tp, record.offset, record.size());
            match decode(&self.serving.decoder, &record, self.config.max_record_bytes) {
                Ok(row) => {
                    if self.batch.is_empty() {
                        self.batch_deadline = tokio::time::Instant::now() + self.config.linger;
                    }
                    self.batch.push(row, record);
                    if self.batch.len() >= self.config.batch_size {
                        self.dispatch().await;
                    }
                }
                Err(e) => {
                    if self.config.dlq.is_none()
                        && self.config.on_error == ErrorPolicy::Stop
                        && !self.batch.is_empty()
                    {
                        // Everything before the bad record is still written and committed.
                        self.dispatch().await;
                    }
                    if !self.reject(record, Rejection::Decode(e)).await {
                        return;
                    }
                }
            }
        }
    }

    /// Deals with a record that cannot be processed, as configured: dead letter, skip or stop.
    /// Returns false when the run must stop.
    async fn reject(&mut self, record: SourceRecord, why: Rejection) -> bool {
        self.summary.rejected += 1;
        self.config
            .metrics
            .rejected(why.stage(), self.dlq.is_some());
        tracing::warn!(topic = %record.topic, partition = record.partition,
            offset = record.offset, stage = why.stage().as_str(), reason = %why,
            dlq = ?self.config.dlq, "bad record");
        if let Some(dlq) = &self.dlq {
            // Done once the dead letter is acknowledged (through the ack channel).
            let letter = dead_letter(record, &why);
            let fallback = letter.source.as_ref().map_or(0, |s| s.partition);
            let partition = dlq.partition_for(letter.key.as_deref(), fallback);
            if let Err(e) = dlq.send(partition, letter).await {
                self.fatal.get_or_insert(e.into());
                return false;
            }
            return true;
        }
        match self.config.on_error {
            ErrorPolicy::Skip => {
                self.tracker.done(
                    &(Arc::clone(&record.topic), record.partition),
                    record.offset,
                );
                true
            }
            ErrorPolicy::Stop => {
                let policy = "on_error = stop";
                let error = match why {
                    Rejection::Decode(source) => Error::BadRecord { source, policy },
                    Rejection::Model(source) => Error::ModelRejected {
                        topic: record.topic.to_string(),
                        partition: record.partition,
                        offset: record.offset,
                        source,
                        policy,
                    },
                };
                self.fatal.get_or_insert(error);
                false
            }
        }
    }

    async fn dispatch(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let serving = Arc::clone(&self.serving);
        let (tensors, records) = match batch.into_tensors(&serving.row_shapes) {
            Ok(t) => t,
            Err(e) => {
                self.fatal.get_or_insert(e.into());
                return;
            }
        };
        // A copy of the inputs, kept in case the batch fails and its rows must be re-run one
        // by one; small next to the inference itself.
        let inputs = tensors.clone();
        // The shadow model gets the same batch on its own threads; a failure there only
        // costs its outputs.
        let shadow = match &self.shadow {
            Some((shadow, _)) => match shadow_inputs(&tensors, &shadow.row_shapes) {
                Ok(inputs) => shadow.pool.submit(inputs).await.ok(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot shape the batch for the shadow model");
                    None
                }
            },
            None => None,
        };
        match serving.pool.submit(tensors).await {
            Ok(pending) => {
                self.summary.batches += 1;
                self.inflight.push_back(Box::pin(async move {
                    let outputs = pending.timed().await;
                    let shadow = match shadow {
                        Some(pending) => Some(pending.await),
                        None => None,
                    };
                    (records, inputs, serving, outputs, shadow)
                }));
            }
            Err(e) => {
                self.fatal.get_or_insert(e.into());
            }
        }
    }

    async fn on_batch_done(
        &mut self,
        (records, inputs, serving, (outputs, took), shadow): BatchResult,
    ) {
        self.config.metrics.batch(records.len(), took);
        if let (Some(shadow), Ok(outputs)) = (shadow, &outputs) {
            self.shadow_outputs(&records, outputs, shadow).await;
        }
        let result = match outputs {
            Ok(outputs) => self.write_outputs(&serving, records, &outputs).await,
            Err(e) if e.depends_on_input() => self.isolate(&serving, records, inputs, e).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            self.fatal.get_or_insert(e);
        }
    }

    /// A batch failed in the model: runs its rows one at a time, in order, so that only the
    /// records the model fails on are rejected and the others still get their outputs.
    async fn isolate(
        &mut self,
        serving: &Serving,
        records: Vec<SourceRecord>,
        inputs: Vec<Tensor>,
        error: ModelError,
    ) -> Result<()> {
        if records.len() == 1 {
            if let Some(record) = records.into_iter().next() {
                self.reject(record, Rejection::Model(error)).await;
            }
            return Ok(());
        }
        tracing::warn!(rows = records.len(), %error,
            "a batch failed in the model; running its rows one by one to find the bad ones");
        for (row, record) in records.into_iter().enumerate() {
            if self.fatal.is_some() {
                // on_error = stop: the rest stays not done, so it is neither committed nor lost.
                return Ok(());
            }
            let single = inputs
                .iter()
                .map(|t| t.slice(0, row, row + 1))
                .collect::<TractResult<Vec<_>>>()
                .map_err(|e| ModelError::Run(format!("{e:#}")))?;
            match serving.pool.submit(single).await?.await {
                Ok(outputs) => self.write_outputs(serving, vec![record], &outputs).await?,
                Err(e) if e.depends_on_input() => {
                    self.reject(record, Rejection::Model(e)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Compares the shadow model's top classes with the main model's and writes its outputs
    /// to the shadow topic. Best effort: failures are logged and counted, nothing stops.
    async fn shadow_outputs(&mut self, records: &[SourceRecord], main: &[Tensor], shadow: Outputs) {
        let Some((serving, sink)) = &self.shadow else {
            return;
        };
        let outputs = match shadow {
            Ok(outputs) => outputs,
            Err(e) => {
                self.config.metrics.shadow_failure();
                tracing::warn!(error = %e, rows = records.len(), "the shadow model failed on a batch");
                return;
            }
        };
        let (Ok(main_rows), Ok(shadow_rows)) = (
            split_outputs(main, records.len()),
            split_outputs(&outputs, records.len()),
        ) else {
            self.config.metrics.shadow_failure();
            return;
        };
        let disagreements = main_rows
            .iter()
            .zip(&shadow_rows)
            .filter(|(m, s)| top_class(m[0]) != top_class(s[0]))
            .count() as u64;
        self.summary.shadow_rows += records.len() as u64;
        self.summary.shadow_disagreements += disagreements;
        self.config
            .metrics
            .shadow(records.len() as u64, disagreements);
        for (r, row) in records.iter().zip(shadow_rows) {
            let record = OutputRecord {
                key: r.key.clone(),
                value: serving.encoder.encode_keyed(r.key.as_deref(), &row),
                headers: output_headers(self.config.output_headers, r, serving),
                timestamp: Utc::now(),
                source: None,
            };
            let partition = sink.partition_for(r.key.as_deref(), r.partition);
            if let Err(e) = sink.send(partition, record).await {
                self.config.metrics.shadow_failure();
                tracing::warn!(error = %e, "cannot write shadow outputs; dropping the shadow model");
                self.shadow = None;
                return;
            }
        }
    }

    /// Sends the outputs `serving` computed for `records`.
    async fn write_outputs(
        &self,
        serving: &Serving,
        records: Vec<SourceRecord>,
        outputs: &[Tensor],
    ) -> Result<()> {
        let rows = split_outputs(outputs, records.len())?;
        let now = Utc::now();
        let mut out_partitions = Vec::with_capacity(records.len());
        for (r, row) in records.into_iter().zip(rows) {
            let value = serving.encoder.encode_keyed(r.key.as_deref(), &row);
            let h = output_headers(self.config.output_headers, &r, serving);
            let partition = self.sink.partition_for(r.key.as_deref(), r.partition);
            let source = SourceCoordinates {
                topic: r.topic,
                partition: r.partition,
                offset: r.offset,
                timestamp: r.timestamp,
            };
            let record = OutputRecord {
                key: r.key,
                value,
                headers: h,
                timestamp: now,
                source: Some(source),
            };
            self.sink.send(partition, record).await?;
            out_partitions.push(partition);
        }
        let topic = self.sink.topic();
        count_by_partition(out_partitions.into_iter().map(|p| (topic, p)), |t, p, n| {
            self.config.metrics.record_out(t, p, n)
        });
        Ok(())
    }
}

/// Calls `count(topic, partition, n)` once per run of equal neighbours: records come in
/// chunks of one partition, so this is a few metric updates per chunk, not one per record.
fn count_by_partition<'a>(
    items: impl Iterator<Item = (&'a str, i32)>,
    mut count: impl FnMut(&str, i32, u64),
) {
    let mut run: Option<((&str, i32), u64)> = None;
    for item in items {
        match &mut run {
            Some((current, n)) if *current == item => *n += 1,
            _ => {
                if let Some(((t, p), n)) = run.replace((item, 1)) {
                    count(t, p, n);
                }
            }
        }
    }
    if let Some(((t, p), n)) = run {
        count(t, p, n);
    }
}

/// The headers naming an output's source record and the model that produced it, as `mode`
/// asks.
fn output_headers(
    mode: OutputHeaders,
    r: &SourceRecord,
    serving: &Serving,
) -> BTreeMap<String, Vec<u8>> {
    let mut h = match mode {
        OutputHeaders::None => return BTreeMap::new(),
        OutputHeaders::Compact => compact_header(r, serving),
        OutputHeaders::Full => full_headers(r, serving),
    };
    if let Some(version) = &serving.version {
        h.insert(headers::MODEL_VERSION.to_string(), version.to_vec());
    }
    h
}

/// [`OutputHeaders::Compact`]: one `streamtract.source` header.
fn compact_header(r: &SourceRecord, serving: &Serving) -> BTreeMap<String, Vec<u8>> {
    let value = headers::compact_source(
        &r.topic,
        r.partition,
        r.offset,
        r.timestamp.timestamp_millis(),
        &serving.sha,
    );
    header_map([(headers::SOURCE, value)])
}

/// [`OutputHeaders::Full`]: a header per coordinate and the model's whole SHA-256.
fn full_headers(r: &SourceRecord, serving: &Serving) -> BTreeMap<String, Vec<u8>> {
    header_map([
        (headers::SOURCE_TOPIC, r.topic.as_bytes().to_vec()),
        (
            headers::SOURCE_PARTITION,
            r.partition.to_string().into_bytes(),
        ),
        (headers::SOURCE_OFFSET, r.offset.to_string().into_bytes()),
        (
            headers::SOURCE_TIMESTAMP,
            r.timestamp.timestamp_millis().to_string().into_bytes(),
        ),
        (headers::MODEL_SHA256, serving.sha.to_vec()),
    ])
}

/// The batch's input tensors reshaped to the shadow model's row shapes (same values).
fn shadow_inputs(tensors: &[Tensor], row_shapes: &[Vec<usize>]) -> TractResult<Vec<Tensor>> {
    tensors
        .iter()
        .zip(row_shapes)
        .map(|(t, row)| {
            let mut shape = vec![t.shape()[0]];
            shape.extend_from_slice(row);
            t.clone().into_shape(&shape)
        })
        .collect()
}

/// Index of the largest value (the first on ties; NaN never wins).
fn top_class(values: &[f32]) -> Option<usize> {
    values
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .max_by(|(ia, a), (ib, b)| a.total_cmp(b).then(ib.cmp(ia)))
        .map(|(i, _)| i)
}

/// The next model from the reload watcher; pending forever when there is none.
async fn next_model(reloads: &mut Option<mpsc::Receiver<Serving>>) -> Option<Serving> {
    match reloads {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// How many of `records` can be taken in with room for `room` more records and `bytes_room`
/// more bytes. A record that crosses the bytes bound is still taken, so one record larger than
/// the bound cannot stall the stream (it is at most `max_record_bytes` before rejection).
fn admit<'a>(
    records: impl Iterator<Item = &'a SourceRecord>,
    room: usize,
    bytes_room: usize,
) -> usize {
    let mut bytes = 0usize;
    let mut n = 0;
    for record in records.take(room) {
        if bytes >= bytes_room {
            break;
        }
        bytes += record.size();
        n += 1;
    }
    n
}

/// Why a record was rejected.
#[derive(Debug)]
enum Rejection {
    /// Too large, not decodable, or not fitting the model's input signature.
    Decode(DecodeError),
    /// The model failed on it (alone, after its batch failed).
    Model(ModelError),
}

impl Rejection {
    /// The stage named in the `dlq.stage` header and the metrics.
    fn stage(&self) -> Stage {
        match self {
            Rejection::Decode(DecodeError::TooLarge { .. }) => Stage::Size,
            Rejection::Decode(_) => Stage::Decode,
            Rejection::Model(_) => Stage::Model,
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Decode(e) => e.fmt(f),
            Rejection::Model(e) => e.fmt(f),
        }
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
fn dead_letter(record: SourceRecord, why: &Rejection) -> OutputRecord {
    let h = headers::dead_letter(&record, why.stage().as_str(), &why.to_string());
    let source = SourceCoordinates {
        topic: record.topic,
        partition: record.partition,
        offset: record.offset,
        timestamp: record.timestamp,
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
