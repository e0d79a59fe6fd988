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
        let record = Record {
            key: r.key,
            value: Some(r.value),
            headers: r.headers,
            timestamp: r.timestamp,
        };
        Pending {
            bytes: record.approximate_size(),
            record,
            source: r.source,
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
        let Writer {
            mut pc,
            mut later,
            mut queue,
            limits: config,
            spool,
            mut partition,
            stored,
            acks,
        } = self;
        let shared: &Shared = &spool.shared;
        let timeout = spool.config.uplink_timeout;
        let retry_interval = spool.config.retry_interval;
        let partition_id = partition.id();
        let label = format!("{}/{}", config.topic, partition_id);
        let fail = |reason: String| SpoolError::Refused {
            topic: config.topic.clone(),
            partition: partition_id,
            reason,
        };
        if pc.is_none() {
            let since = shared.mark_down(&label);
            tracing::warn!(spool = %label, down_since = %since.to_rfc3339(),
                "output cluster unreachable at start-up; outputs go to the spool");
        }
        let report = |batch: Vec<SourceCoordinates>| {
            if let Some(acks) = &acks {
                let _ = acks.send(batch);
            }
        };

        let mut held: VecDeque<Pending> = VecDeque::new();
        let mut queue_open = true;
        let mut inflight: Option<(Attempt, Produce)> = None;
        let mut retry_at: Option<Instant> = None;
        loop {
            // Without a connection every record is spooled, as while the uplink is down.
            let spooling = !partition.is_empty() || pc.is_none();
            if inflight.is_none() {
                let due = retry_at.is_none_or(|t| Instant::now() >= t);
                if !queue_open && held.is_empty() && spooling && (pc.is_none() || !due) {
                    if !partition.is_empty() {
                        tracing::info!(spool = %label, records = partition.records(),
                            "closing while the output cluster is unreachable; the spooled records are sent after the next start");
                    }
                    return Ok(());
                }
                if let (false, Some(pc), true) = (partition.is_empty(), &pc, due) {
                    let mut peeked = blocking(|| {
                        partition.peek(config.max_batch_records, config.max_batch_bytes as u64)
                    })?;
                    let records = std::mem::take(&mut peeked.records);
                    let attempt = Attempt::Drain {
                        records: records.len() as u64,
                        next: peeked.next,
                        bytes: peeked.bytes,
                    };
                    inflight = Some((attempt, Box::pin(produce(Arc::clone(pc), records, timeout))));
                } else if let (true, Some(pc), true) = (partition.is_empty(), &pc, due) {
                    if held.is_empty() {
                        if !queue_open {
                            return Ok(());
                        }
                        match queue.recv().await {
                            Some(r) => held.push_back(r.into()),
                            None => {
                                queue_open = false;
                                continue;
                            }
                        }
                    }
                    take_queued(&mut held, &mut queue, &config);
                    let batch = front_batch(&mut held, &config);
                    let records = batch.iter().map(|p| p.record.clone()).collect();
                    inflight = Some((
                        Attempt::Direct(batch),
                        Box::pin(produce(Arc::clone(pc), records, timeout)),
                    ));
                }
            }

            let spooling = !partition.is_empty() || pc.is_none();
            let waiting_for_room = !held.is_empty() && spooling;
            let accepting = queue_open && held.is_empty() && spooling;
            let retry_wait = inflight.is_none() && retry_at.is_some_and(|t| Instant::now() < t);
            tokio::select! {
                result = in_flight(&mut inflight) => {
                    let Some((attempt, _)) = inflight.take() else { continue };
                    match (attempt, result) {
                        (Attempt::Direct(batch), Ok(())) => {
                            retry_at = None;
                            note_up(shared, &label, 0);
                            config.produces.add(batch.len(), batch.iter().map(|p| p.bytes).sum());
                            stored.fetch_add(batch.len() as u64, Ordering::Relaxed);
                            report(batch.into_iter().filter_map(|p| p.source).collect());
                        }
                        (Attempt::Direct(batch), Err(Failure::Unavailable(why))) => {
                            let since = shared.mark_down(&label);
                            tracing::warn!(spool = %label, records = batch.len(), error = %why,
                                down_since = %since.to_rfc3339(), "the output cluster did not take a batch; spooling");
                            for p in batch.into_iter().rev() {
                                held.push_front(p);
                            }
                            retry_at = Some(Instant::now() + retry_interval);
                            let n = spool_held(&mut partition, &mut held, &stored, &report)
                                ?;
                            if n == 0 && !queue_open {
                                return Err(fail(format!(
                                    "closing with the output cluster unreachable ({why}) and the spool full; \
                                     {} records were not written and their input will be read again", held.len())));
                            }
                        }
                        (Attempt::Drain { records, next, bytes }, Ok(())) => {
                            retry_at = None;
                            blocking(|| partition.consume(records, next))
                                ?;
                            config.produces.add(records as usize, bytes as usize);
                            if partition.is_empty() {
                                note_up(shared, &label, records);
                            }
                        }
                        (Attempt::Drain { .. }, Err(Failure::Unavailable(why))) => {
                            shared.mark_down(&label);
                            tracing::debug!(spool = %label, error = %why, "output cluster still unreachable");
                            retry_at = Some(Instant::now() + retry_interval);
                        }
                        (Attempt::Direct(_), Err(Failure::Refused(why))) => return Err(fail(why)),
                        (Attempt::Drain { .. }, Err(Failure::Refused(why))) => {
                            return Err(fail(format!(
                                "the output cluster refuses the oldest spooled record ({why}); it stays in {}",
                                spool.partition_dir(&config.topic, partition_id).display())));
                        }
                    }
                }
                r = queue.recv(), if accepting => match r {
                    Some(r) => {
                        held.push_back(r.into());
                        take_queued(&mut held, &mut queue, &config);
                    }
                    None => queue_open = false,
                },
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_wait => {}
                connected = async {
                    match later.as_mut() {
                        Some(rx) => rx.await.ok(),
                        None => std::future::pending().await,
                    }
                }, if later.is_some() => {
                    later = None;
                    if let Some(client) = connected {
                        pc = Some(Arc::new(client));
                        retry_at = None;
                    }
                }
                // The bound is shared by every partition: look again for room now and then.
                _ = tokio::time::sleep(Duration::from_millis(50)), if waiting_for_room && !accepting => {}
            }
            if (!partition.is_empty() || pc.is_none()) && !held.is_empty() {
                spool_held(&mut partition, &mut held, &stored, &report)?;
            }
        }
    }
}

/// Appends what the bound has room for of `held` to the spool; those records count as
/// stored. Returns how many.
fn spool_held(
    partition: &mut PartitionSpool,
    held: &mut VecDeque<Pending>,
    stored: &AtomicU64,
    report: &impl Fn(Vec<SourceCoordinates>),
) -> Result<usize, SpoolError> {
    let n = blocking(|| partition.append(held.iter().map(|p| &p.record)))?;
    if n > 0 {
        stored.fetch_add(n as u64, Ordering::Relaxed);
        report(held.drain(..n).filter_map(|p| p.source).collect());
    }
    Ok(n)
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
