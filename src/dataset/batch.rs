//! Decoded records stacked into tensors: tensorflow-io's `dataset.batch(n)`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{Stream, StreamExt};
use tract_onnx::prelude::tract_ndarray::{Array1, ArrayViewD};
use tract_onnx::prelude::Tensor;

use super::preprocess::Preprocess;
use super::timer::QuietTimer;
use super::DatasetError;
use crate::codec::Batch;
use crate::kafka::SourceRecord;

/// A batch of decoded records, ready for a model or a trainer.
///
/// `inputs` go straight to [`Runner::run`](crate::model::Runner::run) or
/// [`InferencePool::submit`](crate::model::InferencePool::submit);
/// [`features`](Self::features) and `labels` are the same data as ndarray for a trainer. Row
/// `i` of every tensor came from `records[i]`. Never empty.
#[derive(Debug, Clone)]
pub struct TensorBatch {
    /// One tensor per model input, in signature order, shaped `[rows, row_shape...]`.
    pub inputs: Vec<Tensor>,
    /// One label per row, when the [`Preprocess`] reads labels.
    pub labels: Option<Array1<f32>>,
    /// The records, in row order.
    pub records: Vec<SourceRecord>,
}

impl TensorBatch {
    /// Rows in the batch (at least 1).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Always false: empty batches are never made.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Input `input` (signature order) as an ndarray view `[rows, row_shape...]`.
    pub fn features(&self, input: usize) -> Option<ArrayViewD<'_, f32>> {
        self.inputs.get(input)?.to_plain_array_view::<f32>().ok()
    }
}

/// Turns records into [`TensorBatch`]es of at most `size` rows.
#[derive(Debug)]
pub(crate) struct Batcher {
    preprocess: Preprocess,
    size: usize,
    pending: Batch<(SourceRecord, Option<f32>)>,
}

impl Batcher {
    pub(crate) fn new(preprocess: Preprocess, size: usize) -> Batcher {
        Batcher {
            preprocess,
            size: size.max(1),
            pending: Batch::default(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Adds a record; returns the batch it completed, or the record's decode error (the
    /// record is then left out).
    pub(crate) fn push(
        &mut self,
        record: SourceRecord,
    ) -> Result<Option<TensorBatch>, DatasetError> {
        let (row, label) = self.preprocess.decode(&record)?;
        self.pending.push(row, (record, label));
        if self.pending.len() >= self.size {
            return self.take().transpose();
        }
        Ok(None)
    }

    /// The rows collected so far as a batch, if there are any.
    pub(crate) fn take(&mut self) -> Option<Result<TensorBatch, DatasetError>> {
        if self.pending.is_empty() {
            return None;
        }
        let pending = std::mem::take(&mut self.pending);
        let has_label = self.preprocess.label_source().is_some();
        Some(
            pending
                .into_tensors(self.preprocess.row_shapes())
                .map_err(DatasetError::from)
                .map(|(inputs, meta)| {
                    let (records, labels): (Vec<_>, Vec<_>) = meta.into_iter().unzip();
                    let labels = has_label
                        .then(|| labels.into_iter().map(|l| l.unwrap_or(f32::NAN)).collect());
                    TensorBatch {
                        inputs,
                        labels,
                        records,
                    }
                }),
        )
    }
}

/// A stream of [`TensorBatch`]es ([`KafkaDataset::batch`](super::KafkaDataset::batch)).
///
/// Each batch holds `size` rows, except the last one before the records end, which holds what
/// is left; an empty batch is never yielded (tensorflow-io's `KafkaBatchIODataset` could end on
/// one, which crashed training). With [`linger`](Self::linger), a partial batch is also yielded
/// once no record has arrived for that long, so a following dataset does not hold rows back.
///
/// A record that cannot be decoded is yielded as an error item ([`DatasetError::is_record_error`])
/// and left out of its batch; the stream goes on. [`skip_bad_records`](Self::skip_bad_records)
/// turns those items into a log line and a count instead. A Kafka error ends the stream, after
/// the rows collected before it were yielded as a batch.
#[derive(Debug)]
pub struct Batches<S> {
    inner: S,
    batcher: Batcher,
    quiet: QuietTimer,
    deferred: Option<DatasetError>,
    done: bool,
    skip_bad: bool,
    skipped: u64,
}

impl<S> Batches<S> {
    pub(crate) fn new(inner: S, size: usize, preprocess: Preprocess) -> Batches<S> {
        Batches {
            inner,
            batcher: Batcher::new(preprocess, size),
            quiet: QuietTimer::new(None),
            deferred: None,
            done: false,
            skip_bad: false,
            skipped: 0,
        }
    }

    /// Yields a partial batch once no record has arrived for `linger`.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.quiet = QuietTimer::new(Some(linger));
        self
    }

    /// Leaves records that cannot be decoded out with a warning in the log instead of yielding
    /// an error item for them; [`skipped`](Self::skipped) counts them.
    pub fn skip_bad_records(mut self, skip: bool) -> Self {
        self.skip_bad = skip;
        self
    }

    /// Records left out by [`skip_bad_records`](Self::skip_bad_records).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The record stream underneath.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Counts and logs a record error when skipping; otherwise hands it back.
    fn record_error(&mut self, e: DatasetError) -> Option<DatasetError> {
        if self.skip_bad {
            self.skipped += 1;
            tracing::warn!(error = %e, "record left out of its batch");
            None
        } else {
            Some(e)
        }
    }
}

impl<S> Stream for Batches<S>
where
    S: Stream<Item = Result<SourceRecord, DatasetError>> + Unpin,
{
    type Item = Result<TensorBatch, DatasetError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(e) = this.deferred.take() {
                return Poll::Ready(Some(Err(e)));
            }
            if this.done {
                return Poll::Ready(this.batcher.take());
            }
            match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(record))) => {
                    this.quiet.reset();
                    match this.batcher.push(record) {
                        Ok(Some(batch)) => return Poll::Ready(Some(Ok(batch))),
                        Ok(None) => {}
                        Err(e) if e.is_record_error() => {
                            if let Some(e) = this.record_error(e) {
                                return Poll::Ready(Some(Err(e)));
                            }
                        }
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    }
                }
                Poll::Ready(Some(Err(e))) if e.is_record_error() => {
                    if let Some(e) = this.record_error(e) {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    match this.batcher.take() {
                        Some(batch) => {
                            this.deferred = Some(e);
                            return Poll::Ready(Some(batch));
                        }
                        None => return Poll::Ready(Some(Err(e))),
                    }
                }
                Poll::Ready(None) => this.done = true,
                Poll::Pending => {
                    if !this.batcher.is_empty() && this.quiet.expired(cx) {
                        this.quiet.reset();
                        return Poll::Ready(this.batcher.take());
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}
