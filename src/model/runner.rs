//! Dedicated inference threads.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tract_onnx::prelude::Tensor;

use super::ModelError;
use super::{Model, States};

type Outputs = Result<Vec<Tensor>, ModelError>;

/// A batch's outputs and the time it spent in the model on its thread.
type Reply = (Outputs, Duration);

struct Job {
    inputs: Vec<Tensor>,
    reply: oneshot::Sender<Reply>,
}

/// A fixed set of OS threads, each holding its own tract state for one model.
///
/// Batches are queued on a bounded channel (two per worker), so a producer that outruns the
/// workers waits in [`submit`](Self::submit) instead of piling up tensors in memory.
///
/// ```no_run
/// # async fn demo() -> Result<(), streamtract::Error> {
/// use streamtract::model::{InferencePool, Model};
/// use tract_onnx::prelude::Tensor;
/// let model = Model::load("models/digits_mlp.onnx")?;
/// let pool = InferencePool::new(&model, 2)?;
/// let batch = Tensor::from_shape(&[1, 64], &[0f32; 64]).unwrap();
/// let outputs = pool.submit(vec![batch]).await?.await?;
/// assert_eq!(outputs[0].shape(), &[1, 10]);
/// # Ok(()) }
/// ```
pub struct InferencePool {
    jobs: mpsc::Sender<Job>,
    workers: usize,
}

impl std::fmt::Debug for InferencePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferencePool")
            .field("workers", &self.workers)
            .finish()
    }
}

impl InferencePool {
    /// Starts `workers` threads (at least one) running `model`.
    pub fn new(model: &Model, workers: usize) -> Result<InferencePool, ModelError> {
        let workers = workers.max(1);
        let (tx, rx) = mpsc::channel::<Job>(workers * 2);
        let rx = Arc::new(Mutex::new(rx));
        for ix in 0..workers {
            let rx = Arc::clone(&rx);
            let model = model.clone();
            std::thread::Builder::new()
                .name(format!("streamtract-infer-{ix}"))
                .spawn(move || {
                    let mut states = States::default();
                    loop {
                        // Hold the lock only while waiting for the next job, not while running it.
                        let job = match rx.lock() {
                            Ok(mut guard) => guard.blocking_recv(),
                            Err(_) => None,
                        };
                        let Some(job) = job else { break };
                        let started = Instant::now();
                        let result = model.run_with(&mut states, job.inputs);
                        // The caller may have given up on this batch; nothing to do then.
                        let _ = job.reply.send((result, started.elapsed()));
                    }
                })
                .map_err(|e| ModelError::Stopped(format!("cannot start inference thread: {e}")))?;
        }
        Ok(InferencePool { jobs: tx, workers })
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Queues a batch (inputs in signature order) and returns a future of its outputs.
    ///
    /// Waits while the queue is full, which is what gives the pipeline its backpressure.
    pub async fn submit(&self, inputs: Vec<Tensor>) -> Result<PendingBatch, ModelError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job { inputs, reply })
            .await
            .map_err(|_| ModelError::Stopped("the inference threads have ended".into()))?;
        Ok(PendingBatch(rx))
    }
}

/// The outputs of a batch queued with [`InferencePool::submit`], once a worker has run it.
#[derive(Debug)]
pub struct PendingBatch(oneshot::Receiver<Reply>);

impl PendingBatch {
    /// The outputs together with the time the batch spent in the model (on its inference
    /// thread, queueing excluded).
    pub async fn timed(self) -> (Outputs, Duration) {
        self.0
            .await
            .unwrap_or_else(|_| (Err(thread_ended()), Duration::ZERO))
    }
}

impl Future for PendingBatch {
    type Output = Outputs;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| match r {
            Ok((outputs, _)) => outputs,
            Err(_) => Err(thread_ended()),
        })
    }
}

fn thread_ended() -> ModelError {
    ModelError::Stopped("an inference thread ended during a batch".into())
}
