//! The writer of one output partition when the sink has a spool.
//!
//! While the partition's spool is empty, records go straight to the output cluster as in a
//! sink without one. A produce request that fails or does not finish within the uplink
//! timeout puts its records (and every later one of the partition) into the spool. While the
//! spool holds records, new records are appended behind them and the writer sends from the
//! front of the spool, retrying every `retry_interval` while the uplink is down; once the spool
//! is empty, records go straight out again. So each partition's records reach the cluster in
//! the order they were sent.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::partition::{Compression, PartitionClient};
use rskafka::record::Record;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{PartitionSpool, Shared, Spool, SpoolError};
use crate::kafka::record::{OutputRecord, SourceCoordinates};
use crate::kafka::stats::RequestStats;

/// A record taken from the queue and not yet stored (acknowledged or spooled).
struct Pending {
    record: Record,
    source: Option<SourceCoordinates>,
    bytes: usize,
}

impl From<OutputRecord> for Pending {
    fn from(r: OutputRecord) -> Pending {
        let (record, source) = r.into_parts();
        Pending {
            bytes: record.approximate_size(),
            record,
            source,
        }
    }
}

/// Why a produce request did not succeed.
enum Failure {
    /// The cluster did not answer in time, or the connection failed: spool and retry.
    Unavailable(String),
    /// The cluster answered no to these records (too large, not authorised, ...): retrying
    /// would not help, and spooling would only stall the partition behind them.
    Refused(String),
}

enum Attempt {
    Direct(Vec<Pending>),
    Drain {
        records: u64,
        next: super::partition::Position,
        bytes: u64,
    },
}

type Produce = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>>;

/// How the sink batches (from its `SinkConfig`).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub topic: String,
    pub max_batch_records: usize,
    pub max_batch_bytes: usize,
    pub produces: RequestStats,
}

/// Everything one partition writer uses.
pub(crate) struct Writer {
    /// The partition's connection; `None` while the sink waits for its cluster
    /// ([`Sink::start_offline`](crate::kafka::Sink::start_offline)): until `later` brings it,
    /// every record goes to the spool.
    pub pc: Option<Arc<PartitionClient>>,
    pub later: Option<tokio::sync::oneshot::Receiver<PartitionClient>>,
    pub queue: mpsc::Receiver<OutputRecord>,
    pub limits: Limits,
    pub spool: Spool,
    pub partition: PartitionSpool,
    /// Records stored (acknowledged by the cluster, or synced into the spool).
    pub stored: Arc<AtomicU64>,
    pub acks: Option<mpsc::UnboundedSender<Vec<SourceCoordinates>>>,
}

impl Writer {
    /// [`run`](Self::run), with the sink's error type.
    pub(crate) async fn run_to_end(self) -> Result<(), crate::kafka::KafkaError> {
        Ok(self.run().await?)
    }

    /// Runs until the sink closes its queue and everything taken is stored; returns early
    /// only on an error the spool cannot absorb.
    pub(crate) async fn run(self) -> Result<(), SpoolError> {
        let mut flow = Flow::new(self);
        loop {
            if flow.inflight.is_none() {
                match flow.start_attempt().await? {
                    Step::Done => return Ok(()),
                    Step::Again => continue,
                    Step::Wait => {}
                }
            }
            flow.wait().await?;
            if flow.spooling() && !flow.held.is_empty() {
                flow.spool_held()?;
            }
        }
    }
}

/// What [`Flow::start_attempt`] leads to.
enum Step {
    /// The queue is closed and everything taken is stored (or stays in the spool).
    Done,
    /// Look again (the queue just closed).
    Again,
    /// Wait for the attempt, a record, the retry time or the connection.
    Wait,
}

/// A partition writer's state while it runs.
struct Flow {
    w: Writer,
    label: String,
    /// Records taken from the queue and not stored yet, oldest first (before the queue's).
    held: VecDeque<Pending>,
    queue_open: bool,
    inflight: Option<(Attempt, Produce)>,
    /// After a failed request, when to try again.
    retry_at: Option<Instant>,
}

impl Flow {
    fn new(w: Writer) -> Flow {
        let label = format!("{}/{}", w.limits.topic, w.partition.id());
        if w.pc.is_none() {
            let since = w.spool.shared.mark_down(&label);
            tracing::warn!(spool = %label, down_since = %since.to_rfc3339(),
                "output cluster unreachable at start-up; outputs go to the spool");
        }
        Flow {
            w,
            label,
            held: VecDeque::new(),
            queue_open: true,
            inflight: None,
            retry_at: None,
        }
    }

    /// Records go to the spool: it holds older ones, or there is no connection yet.
    fn spooling(&self) -> bool {
        !self.w.partition.is_empty() || self.w.pc.is_none()
    }

    fn due(&self) -> bool {
        self.retry_at.is_none_or(|t| Instant::now() >= t)
    }

    /// Starts the next request: the front of the spool while it holds records, else the next
    /// records from the queue; or finds that there is nothing left to do.
    async fn start_attempt(&mut self) -> Result<Step, SpoolError> {
        let due = self.due();
        if !self.queue_open
            && self.held.is_empty()
            && self.spooling()
            && (self.w.pc.is_none() || !due)
        {
            if !self.w.partition.is_empty() {
                tracing::info!(spool = %self.label, records = self.w.partition.records(),
                    "closing while the output cluster is unreachable; the spooled records are sent after the next start");
            }
            return Ok(Step::Done);
        }
        let Some(pc) = self.w.pc.clone().filter(|_| due) else {
            return Ok(Step::Wait);
        };
        let timeout = self.w.spool.config.uplink_timeout;
        if !self.w.partition.is_empty() {
            let limits = &self.w.limits;
            let partition = &self.w.partition;
            let mut peeked = blocking(|| {
                partition.peek(limits.max_batch_records, limits.max_batch_bytes as u64)
            })?;
            let records = std::mem::take(&mut peeked.records);
            let attempt = Attempt::Drain {
                records: records.len() as u64,
                next: peeked.next,
                bytes: peeked.bytes,
            };
            self.inflight = Some((attempt, Box::pin(produce(pc, records, timeout))));
            return Ok(Step::Wait);
        }
        if self.held.is_empty() {
            if !self.queue_open {
                return Ok(Step::Done);
            }
            match self.w.queue.recv().await {
                Some(r) => self.held.push_back(r.into()),
                None => {
                    self.queue_open = false;
                    return Ok(Step::Again);
                }
            }
        }
        take_queued(&mut self.held, &mut self.w.queue, &self.w.limits);
        let batch = front_batch(&mut self.held, &self.w.limits);
        let records = batch.iter().map(|p| p.record.clone()).collect();
        self.inflight = Some((
            Attempt::Direct(batch),
            Box::pin(produce(pc, records, timeout)),
        ));
        Ok(Step::Wait)
    }

    /// Waits for whichever comes first: the request's outcome, a record to spool, the retry
    /// time, room in the spool, or the connection of a sink started offline.
    async fn wait(&mut self) -> Result<(), SpoolError> {
        let spooling = self.spooling();
        let waiting_for_room = !self.held.is_empty() && spooling;
        let accepting = self.queue_open && self.held.is_empty() && spooling;
        let retry_wait = self.inflight.is_none() && !self.due();
        let retry_at = self.retry_at.unwrap_or_else(Instant::now);
        tokio::select! {
            result = in_flight(&mut self.inflight) => {
                if let Some((attempt, _)) = self.inflight.take() {
                    self.on_result(attempt, result)?;
                }
            }
            r = self.w.queue.recv(), if accepting => match r {
                Some(r) => {
                    self.held.push_back(r.into());
                    take_queued(&mut self.held, &mut self.w.queue, &self.w.limits);
                }
                None => self.queue_open = false,
            },
            _ = tokio::time::sleep_until(retry_at), if retry_wait => {}
            // The bound is shared by every partition: look again for room now and then.
            _ = tokio::time::sleep(Duration::from_millis(50)), if waiting_for_room && !accepting => {}
            connected = connection(&mut self.w.later), if self.w.later.is_some() => {
                self.w.later = None;
                if let Some(client) = connected {
                    self.w.pc = Some(Arc::new(client));
                    self.retry_at = None;
                }
            }
            // Not reached by the states above; a pause rather than a panic if it ever is.
            else => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        Ok(())
    }

    /// What a request's outcome means for the records it carried.
    fn on_result(
        &mut self,
        attempt: Attempt,
        result: Result<(), Failure>,
    ) -> Result<(), SpoolError> {
        let shared = &self.w.spool.shared;
        match (attempt, result) {
            (Attempt::Direct(batch), Ok(())) => {
                self.retry_at = None;
                note_up(shared, &self.label, 0);
                let bytes = batch.iter().map(|p| p.bytes).sum();
                self.w.limits.produces.add(batch.len(), bytes);
                self.w
                    .stored
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.report(batch.into_iter().filter_map(|p| p.source).collect());
            }
            (Attempt::Direct(batch), Err(Failure::Unavailable(why))) => {
                let since = shared.mark_down(&self.label);
                tracing::warn!(spool = %self.label, records = batch.len(), error = %why,
                    down_since = %since.to_rfc3339(), "the output cluster did not take a batch; spooling");
                for p in batch.into_iter().rev() {
                    self.held.push_front(p);
                }
                self.retry_at = Some(Instant::now() + self.w.spool.config.retry_interval);
                if self.spool_held()? == 0 && !self.queue_open {
                    return Err(self.refused(format!(
                        "closing with the output cluster unreachable ({why}) and the spool full; \
                         {} records were not written and their input will be read again",
                        self.held.len()
                    )));
                }
            }
            (
                Attempt::Drain {
                    records,
                    next,
                    bytes,
                },
                Ok(()),
            ) => {
                self.retry_at = None;
                let partition = &mut self.w.partition;
                blocking(|| partition.consume(records, next))?;
                self.w.limits.produces.add(records as usize, bytes as usize);
                if self.w.partition.is_empty() {
                    note_up(shared, &self.label, records);
                }
            }
            (Attempt::Drain { .. }, Err(Failure::Unavailable(why))) => {
                shared.mark_down(&self.label);
                tracing::debug!(spool = %self.label, error = %why, "output cluster still unreachable");
                self.retry_at = Some(Instant::now() + self.w.spool.config.retry_interval);
            }
            (Attempt::Direct(_), Err(Failure::Refused(why))) => return Err(self.refused(why)),
            (Attempt::Drain { .. }, Err(Failure::Refused(why))) => {
                let dir = self
                    .w
                    .spool
                    .partition_dir(&self.w.limits.topic, self.w.partition.id());
                return Err(self.refused(format!(
                    "the output cluster refuses the oldest spooled record ({why}); it stays in {}",
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    /// Appends what the bound has room for of `held` to the spool; those records count as
    /// stored. Returns how many.
    fn spool_held(&mut self) -> Result<usize, SpoolError> {
        let partition = &mut self.w.partition;
        let held = &self.held;
        let n = blocking(|| partition.append(held.iter().map(|p| &p.record)))?;
        if n > 0 {
            self.w.stored.fetch_add(n as u64, Ordering::Relaxed);
            let sources = self.held.drain(..n).filter_map(|p| p.source).collect();
            self.report(sources);
        }
        Ok(n)
    }

    /// Tells the pipeline which inputs' outputs are stored.
    fn report(&self, batch: Vec<SourceCoordinates>) {
        if let Some(acks) = &self.w.acks {
            let _ = acks.send(batch);
        }
    }

    fn refused(&self, reason: String) -> SpoolError {
        SpoolError::Refused {
            topic: self.w.limits.topic.clone(),
            partition: self.w.partition.id(),
            reason,
        }
    }
}

/// The connection handed to a sink started offline; never ready without one to wait for.
async fn connection(
    later: &mut Option<tokio::sync::oneshot::Receiver<PartitionClient>>,
) -> Option<PartitionClient> {
    match later.as_mut() {
        Some(rx) => rx.await.ok(),
        None => std::future::pending().await,
    }
}

fn note_up(shared: &Shared, label: &str, drained: u64) {
    if let Some(since) = shared.mark_up(label) {
        let down_s = (chrono::Utc::now() - since).num_milliseconds() as f64 / 1000.0;
        tracing::info!(spool = %label, down_s, drained, "the output cluster takes records again");
    }
}

/// Moves what is already queued behind `held`, up to one batch.
fn take_queued(
    held: &mut VecDeque<Pending>,
    queue: &mut mpsc::Receiver<OutputRecord>,
    config: &Limits,
) {
    let mut bytes: usize = held.iter().map(|p| p.bytes).sum();
    while held.len() < config.max_batch_records && bytes < config.max_batch_bytes {
        match queue.try_recv() {
            Ok(r) => {
                let p = Pending::from(r);
                bytes += p.bytes;
                held.push_back(p);
            }
            Err(_) => break,
        }
    }
}

/// Takes one produce request's worth of records from the front of `held`.
fn front_batch(held: &mut VecDeque<Pending>, config: &Limits) -> Vec<Pending> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some(p) = held.front() {
        if !batch.is_empty()
            && (batch.len() >= config.max_batch_records || bytes + p.bytes > config.max_batch_bytes)
        {
            break;
        }
        bytes += p.bytes;
        batch.extend(held.pop_front());
    }
    batch
}

/// The in-flight request's outcome; never ready without one.
async fn in_flight(inflight: &mut Option<(Attempt, Produce)>) -> Result<(), Failure> {
    match inflight {
        Some((_, produce)) => produce.as_mut().await,
        None => std::future::pending().await,
    }
}

/// One produce request, bounded by the uplink timeout.
async fn produce(
    pc: Arc<PartitionClient>,
    records: Vec<Record>,
    timeout: Duration,
) -> Result<(), Failure> {
    match tokio::time::timeout(timeout, pc.produce(records, Compression::NoCompression)).await {
        Err(_) => Err(Failure::Unavailable(format!(
            "no acknowledgement within {} ms",
            timeout.as_millis()
        ))),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if refused(&e) => Err(Failure::Refused(e.to_string())),
        Ok(Err(e)) => Err(Failure::Unavailable(e.to_string())),
    }
}

/// Errors about the records or our rights, not about reaching the cluster.
fn refused(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::ServerError {
            protocol_error: ProtocolError::MessageTooLarge
                | ProtocolError::RecordListTooLarge
                | ProtocolError::InvalidRecord
                | ProtocolError::CorruptMessage
                | ProtocolError::InvalidTopicException
                | ProtocolError::TopicAuthorizationFailed
                | ProtocolError::ClusterAuthorizationFailed
                | ProtocolError::UnsupportedVersion
                | ProtocolError::UnsupportedForMessageFormat,
            ..
        }
    )
}

/// Runs file work (appends with their `fsync`, reads, deletes) off the async worker threads
/// where the runtime has others; on a current-thread runtime, in place.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
