//! The dataset API for programs without async code: any dataset stream as an iterator driven
//! by a small tokio runtime it owns. Each dataset adds its own blocking methods next to its
//! type (`kafka_dataset.rs`, `group_dataset.rs`, `mini_batch.rs`, `output.rs`), so this
//! module knows none of them.

use futures::stream::{Stream, StreamExt};
use tokio::runtime::{Handle, Runtime};

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

    /// Wraps the stream into another (e.g. [`Batches::linger`](super::Batches::linger)) on the
    /// same runtime.
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
