//! The dataset API for programs without async code: iterators and a blocking output sequence,
//! each driven by a small tokio runtime it owns.

use futures::stream::{Stream, StreamExt};
use tokio::runtime::{Handle, Runtime};

use super::batch::Batches;
use super::kafka_dataset::KafkaDataset;
use super::mini_batch::KafkaBatchDataset;
use super::output::{OutputConfig, OutputItem, OutputSequence};
use super::preprocess::{Examples, Preprocess};
use super::DatasetError;

/// A dataset stream as a blocking [`Iterator`] (tensorflow-io's datasets are iterated with a
/// plain `for` loop; this is that).
///
/// It owns a tokio runtime with one I/O thread, which keeps fetching in the background while
/// the program works on what it got. Do not use it inside async code: there, iterating returns
/// [`DatasetError::BlockingInAsync`] instead of blocking the runtime; use the stream itself.
///
/// ```no_run
/// use streamtract::dataset::KafkaDataset;
/// let dataset = KafkaDataset::builder(["pixels:0:0:99"])
///     .servers("127.0.0.1:9092")
///     .eof(true)
///     .open_blocking()?;
/// for record in dataset {
///     let record = record?;
///     println!("{}@{}", record.partition, record.offset);
/// }
/// # Ok::<(), streamtract::dataset::DatasetError>(())
/// ```
pub struct Blocking<S> {
    stream: Option<S>,
    runtime: Option<Runtime>,
}

/// [`KafkaDataset`] as a blocking iterator of records
/// ([`KafkaDatasetBuilder::open_blocking`](super::KafkaDatasetBuilder::open_blocking)).
pub type BlockingKafkaDataset = Blocking<KafkaDataset>;

impl<S: std::fmt::Debug> std::fmt::Debug for Blocking<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocking")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl Blocking<()> {
    /// The runtime behind a blocking value: one worker thread for I/O and timers.
    pub(crate) fn runtime() -> Result<Runtime, DatasetError> {
        if Handle::try_current().is_ok() {
            return Err(DatasetError::BlockingInAsync);
        }
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("streamtract-dataset-io")
            .enable_all()
            .build()
            .map_err(|e| DatasetError::Runtime(e.to_string()))
    }
}

impl<S> Blocking<S> {
    pub(crate) fn new(stream: S, runtime: Runtime) -> Blocking<S> {
        Blocking {
            stream: Some(stream),
            runtime: Some(runtime),
        }
    }

    /// The stream being iterated.
    pub fn get_ref(&self) -> Option<&S> {
        self.stream.as_ref()
    }

    /// Wraps the stream into another (e.g. [`Batches::linger`]) on the same runtime.
    pub fn map_stream<T>(mut self, f: impl FnOnce(S) -> T) -> Blocking<T> {
        let runtime = self.runtime.take();
        let stream = self.stream.take().map(|s| {
            // Stream adapters may create timers, which need the runtime's context.
            let _guard = runtime.as_ref().map(Runtime::enter);
            f(s)
        });
        Blocking { stream, runtime }
    }
}

impl Blocking<KafkaDataset> {
    /// [`KafkaDataset::examples`], blocking.
    pub fn examples(self, preprocess: Preprocess) -> Blocking<Examples<KafkaDataset>> {
        self.map_stream(|d| d.examples(preprocess))
    }

    /// [`KafkaDataset::batch`], blocking.
    pub fn batch(self, size: usize, preprocess: Preprocess) -> Blocking<Batches<KafkaDataset>> {
        self.map_stream(|d| d.batch(size, preprocess))
    }

    /// [`KafkaBatchDataset::new`], blocking.
    pub fn mini_batches(self, mini_batch_size: usize) -> Blocking<KafkaBatchDataset> {
        self.map_stream(|d| KafkaBatchDataset::new(d, mini_batch_size))
    }
}

impl<S, T> Iterator for Blocking<S>
where
    S: Stream<Item = Result<T, DatasetError>> + Unpin,
{
    type Item = Result<T, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if Handle::try_current().is_ok() {
            return Some(Err(DatasetError::BlockingInAsync));
        }
        let (Some(stream), Some(runtime)) = (self.stream.as_mut(), self.runtime.as_ref()) else {
            return None;
        };
        runtime.block_on(stream.next())
    }
}

impl<S> Drop for Blocking<S> {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            {
                // Fetch tasks and connections are torn down inside their runtime.
                let _guard = runtime.enter();
                self.stream.take();
            }
            runtime.shutdown_background();
        }
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
