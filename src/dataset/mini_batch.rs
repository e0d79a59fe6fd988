//! [`KafkaBatchDataset`]: a record stream cut into mini-batches for online learning.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{Stream, StreamExt};

use super::batch::{Batcher, TensorBatch};
use super::blocking::Blocking;
use super::kafka_dataset::KafkaDataset;
use super::preprocess::{Example, Preprocess};
use super::timer::QuietTimer;
use super::DatasetError;
use crate::kafka::SourceRecord;

/// A stream of [`MiniBatch`]es: tensorflow-io's `KafkaBatchIODataset`, whose elements are
/// small datasets to `fit` a model on, one after the other (online learning).
///
/// A mini-batch closes when it holds `mini_batch_size` records, when one poll went by without
/// a record while it was partly filled (the dataset's [`timeout`](KafkaDataset::timeout), as
/// tensorflow-io's `message_poll_timeout` closes a batch), or when the dataset ends. It is never
/// empty, and the last records before the end are never dropped (tensorflow-io discarded the
/// final batch when `stream_timeout` ended the stream). Records come from any
/// [`KafkaDataset`], so `eof`, `stream_timeout` and the topic specs decide when the stream ends.
///
/// ```no_run
/// use futures::StreamExt;
/// use streamtract::dataset::{KafkaBatchDataset, KafkaDataset};
/// # async fn demo() -> Result<(), streamtract::dataset::DatasetError> {
/// let dataset = KafkaDataset::builder(["events"]).servers("127.0.0.1:9092").open().await?;
/// let mut mini_batches = KafkaBatchDataset::new(dataset, 256);
/// while let Some(mini_batch) = mini_batches.next().await {
///     let mini_batch = mini_batch?;
///     println!("{} records to train on", mini_batch.len());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct KafkaBatchDataset {
    inner: KafkaDataset,
    size: usize,
    pending: Vec<SourceRecord>,
    quiet: QuietTimer,
    deferred: Option<DatasetError>,
    done: bool,
}

impl KafkaBatchDataset {
    /// Mini-batches of at most `mini_batch_size` records (at least 1) from `dataset`.
    pub fn new(dataset: KafkaDataset, mini_batch_size: usize) -> KafkaBatchDataset {
        let quiet = QuietTimer::new(Some(dataset.timeout()));
        KafkaBatchDataset {
            inner: dataset,
            size: mini_batch_size.max(1),
            pending: Vec::new(),
            quiet,
            deferred: None,
            done: false,
        }
    }

    /// Closes a partial mini-batch after `timeout` without a record, instead of the dataset's
    /// poll timeout.
    pub fn poll_timeout(mut self, timeout: Duration) -> Self {
        self.quiet = QuietTimer::new(Some(timeout));
        self
    }

    /// Most records per mini-batch.
    pub fn mini_batch_size(&self) -> usize {
        self.size
    }

    /// The dataset the records come from.
    pub fn dataset(&self) -> &KafkaDataset {
        &self.inner
    }

    fn take(&mut self) -> Option<MiniBatch> {
        (!self.pending.is_empty()).then(|| MiniBatch {
            records: std::mem::take(&mut self.pending),
        })
    }
}

impl Stream for KafkaBatchDataset {
    type Item = Result<MiniBatch, DatasetError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(e) = this.deferred.take() {
                return Poll::Ready(Some(Err(e)));
            }
            if this.done {
                return Poll::Ready(this.take().map(Ok));
            }
            match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(record))) => {
                    this.quiet.reset();
                    this.pending.push(record);
                    if this.pending.len() >= this.size {
                        return Poll::Ready(this.take().map(Ok));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    match this.take() {
                        Some(mini_batch) => {
                            this.deferred = Some(e);
                            return Poll::Ready(Some(Ok(mini_batch)));
                        }
                        None => return Poll::Ready(Some(Err(e))),
                    }
                }
                Poll::Ready(None) => this.done = true,
                Poll::Pending => {
                    if !this.pending.is_empty() && this.quiet.expired(cx) {
                        this.quiet.reset();
                        return Poll::Ready(this.take().map(Ok));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// One element of a [`KafkaBatchDataset`]: a small in-memory dataset of records (never empty),
/// like the `tf.data.Dataset` each `KafkaBatchIODataset` element is.
#[derive(Debug, Clone)]
pub struct MiniBatch {
    records: Vec<SourceRecord>,
}

impl MiniBatch {
    /// Records in the mini-batch (at least 1).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Always false: empty mini-batches are never made.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records, in the order read.
    pub fn records(&self) -> &[SourceRecord] {
        &self.records
    }

    /// The records, owned.
    pub fn into_records(self) -> Vec<SourceRecord> {
        self.records
    }

    /// Each record decoded: the mini-batch's `map(decode)`.
    pub fn examples<'a>(
        &'a self,
        preprocess: &'a Preprocess,
    ) -> impl Iterator<Item = Result<Example, DatasetError>> + 'a {
        self.records.iter().map(|r| preprocess.example(r.clone()))
    }

    /// The mini-batch's `map(decode).batch(size)`: tensor batches of at most `size` rows, the
    /// last one smaller; records that cannot be decoded are error items in between.
    pub fn batches(
        self,
        preprocess: &Preprocess,
        size: usize,
    ) -> std::vec::IntoIter<Result<TensorBatch, DatasetError>> {
        let mut batcher = Batcher::new(preprocess.clone(), size);
        let mut out = Vec::new();
        for record in self.records {
            match batcher.push(record) {
                Ok(Some(batch)) => out.push(Ok(batch)),
                Ok(None) => {}
                Err(e) => out.push(Err(e)),
            }
        }
        out.extend(batcher.take());
        out.into_iter()
    }

    /// The whole mini-batch as one tensor batch (one training step), plus the records that
    /// could not be decoded. The batch is `None` only when no record could be.
    pub fn into_batch(self, preprocess: &Preprocess) -> (Option<TensorBatch>, Vec<DatasetError>) {
        let size = self.records.len();
        let mut batch = None;
        let mut rejected = Vec::new();
        for item in self.batches(preprocess, size) {
            match item {
                Ok(b) => batch = Some(b),
                Err(e) => rejected.push(e),
            }
        }
        (batch, rejected)
    }
}

impl IntoIterator for MiniBatch {
    type Item = SourceRecord;
    type IntoIter = std::vec::IntoIter<SourceRecord>;

    fn into_iter(self) -> Self::IntoIter {
        self.records.into_iter()
    }
}

impl Blocking<KafkaDataset> {
    /// [`KafkaBatchDataset::new`], blocking.
    pub fn mini_batches(self, mini_batch_size: usize) -> Blocking<KafkaBatchDataset> {
        self.map_stream(|d| KafkaBatchDataset::new(d, mini_batch_size))
    }
}
