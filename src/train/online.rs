//! Online learning: one endless pass over a consumer group (tensorflow-io's online training on
//! a `KafkaBatchDataset`), a new model version written every so many records or seconds, and
//! offsets committed only for records inside a model already written.
//!
//! ```text
//!  group ──► decode ──► adapt (first N rows) ──► batch ──► step ──► … ──► checkpoint:
//!                                                                         write model (atomic)
//!                                                                         → ack its records
//!                                                                         → commit
//! ```
//!
//! A restart (after a crash, or `kill -9`) reads the last model written and the group's
//! committed positions: it continues from the model that holds every committed record, so no
//! record is skipped; records trained after the last checkpoint are trained again (at least
//! once, like the pipeline's outputs).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::data::{FeatureStats, RowDecoder, RowFormat};
use super::fit::{report_rejected, Event, State};
use super::onnx::{DenseModel, InputOp};
use super::options::{Task, TrainOptions};
use super::TrainError;
use crate::dataset::{BlockingKafkaGroupDataset, SourceRecord};

/// When online training writes a model, and how it adapts its normalisation.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineOptions {
    /// Write a new version after this many records were trained on (or rejected).
    pub checkpoint_records: Option<u64>,
    /// Write a new version once this much time passed since the last one, if any record was
    /// trained on.
    pub checkpoint_interval: Option<Duration>,
    /// Records whose mean and standard deviation standardise the inputs (with
    /// [`TrainOptions::normalize`], for a model that has no input operations yet). They are
    /// held until then and trained on after.
    pub adapt_records: usize,
}

impl Default for OnlineOptions {
    /// A version every 1,000 records or 30 s, normalisation adapted on the first 1,000 rows.
    fn default() -> Self {
        OnlineOptions {
            checkpoint_records: Some(1_000),
            checkpoint_interval: Some(Duration::from_secs(30)),
            adapt_records: 1_000,
        }
    }
}

/// What an online run did before its stream ended.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineSummary {
    /// Records trained on.
    pub trained: u64,
    /// Records left out (reported through [`Event::Rejected`]).
    pub rejected: u64,
    /// Model versions written.
    pub checkpoints: u64,
    /// The version written last (or the one resumed from, if none was written).
    pub version: u64,
    /// Whether training resumed from a model already at the checkpoint path.
    pub resumed: bool,
}

/// A record's coordinates, kept until the model holding it is written.
type Coordinates = (Arc<str>, i32, i64);

fn coordinates(r: &SourceRecord) -> Coordinates {
    (r.topic.clone(), r.partition, r.offset)
}

/// Trains on `dataset` until its stream ends (its `stream_timeout`), writing a new model to
/// [`TrainOptions::checkpoint`] (required) as [`OnlineOptions`] say and committing the records
/// each one holds. When a model is already at that path, training continues from it.
///
/// Classification needs the number of classes up front ([`Task::Classify`] with `Some`),
/// since an endless stream cannot be surveyed.
pub fn follow(
    mut dataset: BlockingKafkaGroupDataset,
    rows: &RowFormat,
    options: &TrainOptions,
    online: &OnlineOptions,
    on_event: &mut dyn FnMut(Event<'_>) -> Result<(), TrainError>,
) -> Result<OnlineSummary, TrainError> {
    options.check()?;
    let path = options.checkpoint.clone().ok_or(TrainError::Option {
        option: "out",
        reason: "online training writes its versions to a file; give one".into(),
    })?;
    if online.checkpoint_records.is_none() && online.checkpoint_interval.is_none() {
        return Err(TrainError::Option {
            option: "checkpoint_every",
            reason: "give a number of records or an interval, or no version is ever written".into(),
        });
    }
    let mut options = options.clone();
    let resumed = path.exists();
    if resumed {
        let model = DenseModel::read(&path)?;
        tracing::info!(path = %path.display(), version = model.version, "resuming online training from the last model written");
        options.init = Some(model);
    }
    let options = options.for_init()?;
    let classes = match options.task {
        Task::Classify { classes: Some(c) } => c,
        Task::Classify { classes: None } => {
            return Err(TrainError::Option {
                option: "classes",
                reason: "online classification needs --classes: an endless stream cannot be surveyed for them".into(),
            })
        }
        Task::Regress => 0,
    };
    let acker = dataset.acker();
    let mut run = Online {
        rows,
        options: &options,
        online,
        path: &path,
        classes,
        decoder: None,
        state: None,
        adapting: Vec::new(),
        stats: None,
        in_batch: Vec::new(),
        done: Vec::new(),
        since_checkpoint: 0,
        last_checkpoint: Instant::now(),
        summary: OnlineSummary {
            trained: 0,
            rejected: 0,
            checkpoints: 0,
            version: options.init.as_ref().map_or(0, |m| m.version),
            resumed,
        },
    };
    for record in dataset.by_ref() {
        let record = record?;
        run.take(record, on_event)?;
        if run.checkpoint_due() {
            run.checkpoint(&acker, on_event)?;
        }
    }
    run.finish(&acker, on_event)?;
    acker.close_blocking()?;
    Ok(run.summary)
}

struct Online<'a> {
    rows: &'a RowFormat,
    options: &'a TrainOptions,
    online: &'a OnlineOptions,
    path: &'a Path,
    classes: usize,
    decoder: Option<RowDecoder>,
    state: Option<State>,
    /// Rows held while the normalisation adapts.
    adapting: Vec<(Vec<f32>, f32, Coordinates)>,
    stats: Option<FeatureStats>,
    /// Records in the partial batch: not in any model yet.
    in_batch: Vec<Coordinates>,
    /// Records trained on (or rejected) since the last checkpoint: committed with the next.
    done: Vec<Coordinates>,
    since_checkpoint: u64,
    /// When the last version was written (or the run started): the window's figures and the
    /// time-based checkpoint count from here.
    last_checkpoint: Instant,
    summary: OnlineSummary,
}

impl Online<'_> {
    fn take(
        &mut self,
        record: SourceRecord,
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        if self.decoder.is_none() {
            self.start(&record)?;
        }
        let Some(decoder) = &self.decoder else {
            return self.reject(record, "the record's layout gives no features", on_event);
        };
        let (x, y) = match decoder.decode(&record) {
            Ok(row) => row,
            Err(reason) => return self.reject(record, &reason, on_event),
        };
        if let Some(stats) = &mut self.stats {
            stats.add(&x);
            self.adapting.push((x, y, coordinates(&record)));
            if self.adapting.len() >= self.online.adapt_records {
                self.adapted(on_event)?;
            }
            return Ok(());
        }
        self.train(x, y, coordinates(&record), on_event)
    }

    /// The first record: the feature count, the decoder, the network.
    fn start(&mut self, record: &SourceRecord) -> Result<(), TrainError> {
        let Some(features) = self.rows.feature_count(record) else {
            return Ok(());
        };
        self.options
            .check_init_features(features, "the group's topics")?;
        // The task carries the classes (required online), so the decoder rejects labels past them.
        let decoder = RowDecoder::new(self.rows.preprocess(features)?, self.options.task);
        let state = State::new(self.options, features, self.classes, &self.rows.input_name)?;
        if self.options.normalize && !state.has_input_ops() {
            self.stats = Some(FeatureStats::new(features));
        }
        self.state = Some(state);
        self.decoder = Some(decoder);
        Ok(())
    }

    fn reject(
        &mut self,
        record: SourceRecord,
        reason: &str,
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        report_rejected(&record, reason, on_event)?;
        self.summary.rejected += 1;
        self.done.push(coordinates(&record));
        self.since_checkpoint += 1;
        Ok(())
    }

    /// The adaptation window is full (or the stream ended): standardise and train on it.
    fn adapted(
        &mut self,
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        let Some(stats) = self.stats.take() else {
            return Ok(());
        };
        let (mean, std) = stats.finish();
        if let Some(state) = &mut self.state {
            state.set_input_ops(InputOp::standardize(mean, std));
        }
        for (x, y, at) in std::mem::take(&mut self.adapting) {
            self.train(x, y, at, on_event)?;
        }
        Ok(())
    }

    fn train(
        &mut self,
        x: Vec<f32>,
        y: f32,
        at: Coordinates,
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        let Some(state) = &mut self.state else {
            return Ok(());
        };
        self.in_batch.push(at);
        state.push(x, y, on_event)?;
        if state.batched() == 0 {
            self.stepped();
        }
        Ok(())
    }

    /// The partial batch became a step: its records are in the network now.
    fn stepped(&mut self) {
        let n = self.in_batch.len() as u64;
        self.summary.trained += n;
        self.since_checkpoint += n;
        self.done.append(&mut self.in_batch);
    }

    fn checkpoint_due(&self) -> bool {
        if self.since_checkpoint == 0 || self.state.is_none() || self.stats.is_some() {
            return false;
        }
        self.online
            .checkpoint_records
            .is_some_and(|n| self.since_checkpoint >= n)
            || self
                .online
                .checkpoint_interval
                .is_some_and(|t| self.last_checkpoint.elapsed() >= t)
    }

    /// Writes the next version, then acknowledges and commits the records it holds.
    fn checkpoint(
        &mut self,
        acker: &crate::dataset::Acker,
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        let Some(state) = &mut self.state else {
            return Ok(());
        };
        let version = self.summary.version + 1;
        let figures = state.take_figures();
        let seconds = self.last_checkpoint.elapsed().as_secs_f64();
        let stats = figures.stats(
            self.summary.checkpoints as usize + 1,
            seconds,
            state.is_classifier(),
        );
        on_event(Event::Epoch(&stats))?;
        state.model(version)?.write(self.path)?;
        state.mark_written(self.path);
        // The caller's dead letters are flushed here, before the records are committed.
        on_event(Event::Checkpoint {
            path: self.path,
            version,
        })?;
        for (topic, partition, offset) in self.done.drain(..) {
            acker.ack_offset(&topic, partition, offset);
        }
        acker.commit_blocking()?;
        self.summary.checkpoints += 1;
        self.summary.version = version;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// The stream ended: train on what is held, step the partial batch, write a last version.
    fn finish(
        &mut self,
        acker: &crate::dataset::Acker,
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        self.adapted(on_event)?;
        if let Some(state) = &mut self.state {
            state.step(on_event)?;
            if state.batched() == 0 {
                self.stepped();
            }
        }
        if self.since_checkpoint > 0 {
            self.checkpoint(acker, on_event)?;
        }
        Ok(())
    }
}
