//! [`Acker`]: acknowledging the records of a [`KafkaGroupDataset`](super::KafkaGroupDataset),
//! and committing what was acknowledged.
//!
//! Acknowledgements land in a [`Ledger`] shared with the dataset's background task, which
//! notes every record it hands to the dataset and, per partition, commits only the offset of the
//! first record not acknowledged (the pipeline's [`OffsetTracker`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use super::DatasetError;
use crate::kafka::group::TopicPartition;
use crate::kafka::OffsetTracker;
use crate::kafka::SourceRecord;

/// A partition as the offset tracker keys it.
pub(crate) type Tp = (Arc<str>, i32);

/// Positions committed by one call: the next offset to read per partition.
pub type Committed = BTreeMap<TopicPartition, i64>;

/// What was read and what was acknowledged, per partition, in the current generation.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    tracker: OffsetTracker,
    /// Offsets read and not yet swept by `ack_through` or passed by a commit, in read order
    /// (what `ack_through` marks done).
    unswept: HashMap<Tp, VecDeque<i64>>,
}

impl Ledger {
    /// The dataset is handed the record at `offset`.
    pub(crate) fn read(&mut self, tp: &Tp, offset: i64) {
        self.tracker.read(tp, offset);
        self.unswept
            .entry(tp.clone())
            .or_default()
            .push_back(offset);
    }

    fn ack(&mut self, tp: &Tp, offset: i64) {
        self.tracker.done(tp, offset);
    }

    fn ack_through(&mut self, tp: &Tp, offset: i64) {
        let Some(offsets) = self.unswept.get_mut(tp) else {
            return;
        };
        while let Some(o) = offsets.front().copied().filter(|&o| o <= offset) {
            offsets.pop_front();
            self.tracker.done(tp, o);
        }
    }

    /// Positions (next offset to read) that moved past the last confirmed commit.
    pub(crate) fn commits(&self) -> BTreeMap<Tp, i64> {
        self.tracker.commits()
    }

    /// The broker accepted `positions`.
    pub(crate) fn confirm(&mut self, positions: &BTreeMap<Tp, i64>) {
        self.tracker.confirm(positions);
        for (tp, pos) in positions {
            if let Some(offsets) = self.unswept.get_mut(tp) {
                while offsets.front().is_some_and(|o| o < pos) {
                    offsets.pop_front();
                }
            }
        }
    }

    /// The partitions were revoked: their records will be read again by their next owner.
    pub(crate) fn forget_all(&mut self) {
        self.tracker.forget_all();
        self.unswept.clear();
    }

    /// Records handed out and not covered by a confirmed commit.
    pub(crate) fn uncommitted(&self) -> usize {
        self.tracker.uncommitted()
    }

    fn unacknowledged(&self) -> usize {
        self.tracker.in_flight()
    }
}

/// A request to the dataset's background task.
pub(crate) enum Control {
    /// Commit the acknowledged positions now.
    Commit(oneshot::Sender<Result<Committed, DatasetError>>),
    /// Commit, leave the group, stop.
    Close(oneshot::Sender<Result<Committed, DatasetError>>),
}

/// State shared by the background task and every [`Acker`].
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) group: String,
    ledger: Mutex<Ledger>,
    assignment: Mutex<Vec<TopicPartition>>,
    closed: AtomicBool,
}

impl Shared {
    pub(crate) fn new(group: &str) -> Shared {
        Shared {
            group: group.to_string(),
            ledger: Mutex::new(Ledger::default()),
            assignment: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }

    pub(crate) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock leaves the ledger consistent (every method is a few
        // plain updates), so a poisoned lock is still usable.
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_assignment(&self, assignment: Vec<TopicPartition>) {
        *self.assignment.lock().unwrap_or_else(|e| e.into_inner()) = assignment;
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.assignment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn mark_closed(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Acknowledges records of a [`KafkaGroupDataset`](super::KafkaGroupDataset) and commits them.
///
/// tensorflow-io's `KafkaGroupIODataset` has no such thing: librdkafka auto-committed every
/// record as soon as it was fetched, before the model saw it, so a crash lost the records in
/// between. Here a record counts as processed only once it is acknowledged, and per partition
/// only the offset of the first record *not* acknowledged is committed: everything before it
/// was acknowledged. Records acknowledged out of order wait for the ones before them. After a
/// crash, or after [`close`](Self::close), the next reader of the group (this program started
/// again, or another member) gets every record that was not acknowledged, and perhaps some that
/// were but were not committed yet: at-least-once delivery.
///
/// Commits happen every `commit_interval` (see
/// [`KafkaGroupDatasetBuilder::commit_interval`](super::KafkaGroupDatasetBuilder::commit_interval)),
/// before the member gives up its partitions in a rebalance, on [`commit`](Self::commit), and
/// on [`close`](Self::close).
///
/// The acker is cheap to clone and can be used from any thread: acknowledging is a short lock,
/// never a wait. Acknowledging a record that is not (or no longer) this member's, or twice, is
/// harmless.
///
/// Records that a stream left out ([`Batches::skip_bad_records`](super::Batches::skip_bad_records))
/// or yielded as an error item ([`DatasetError::Decode`], with the record's coordinates) must be
/// acknowledged too, or their partition's commits stop at them: use
/// [`ack_offset`](Self::ack_offset) for them, or [`ack_through`](Self::ack_through) the last
/// record of each partition when batches are processed in order.
#[derive(Clone)]
pub struct Acker {
    shared: Arc<Shared>,
    control: mpsc::Sender<Control>,
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acker")
            .field("group", &self.shared.group)
            .field("unacknowledged", &self.unacknowledged())
            .field("closed", &self.shared.is_closed())
            .finish_non_exhaustive()
    }
}

impl Acker {
    pub(crate) fn new(shared: Arc<Shared>, control: mpsc::Sender<Control>) -> Acker {
        Acker { shared, control }
    }

    /// The record was processed: its offset may be committed once every earlier record of its
    /// partition was acknowledged too.
    pub fn ack(&self, record: &SourceRecord) {
        self.shared.ledger().ack(
            &(Arc::clone(&record.topic), record.partition),
            record.offset,
        );
    }

    /// [`ack`](Self::ack) for each record, e.g. the `records` of a
    /// [`TensorBatch`](super::TensorBatch) or a [`MiniBatch`](super::MiniBatch).
    pub fn ack_all<'a>(&self, records: impl IntoIterator<Item = &'a SourceRecord>) {
        let mut ledger = self.shared.ledger();
        for record in records {
            ledger.ack(
                &(Arc::clone(&record.topic), record.partition),
                record.offset,
            );
        }
    }

    /// The record and every record of its partition handed out before it were processed
    /// (Kafka's usual "commit up to here"). Right when records are processed in the order they
    /// came; it also covers records a stream left out, such as ones that could not be decoded.
    pub fn ack_through(&self, record: &SourceRecord) {
        self.shared.ledger().ack_through(
            &(Arc::clone(&record.topic), record.partition),
            record.offset,
        );
    }

    /// [`ack`](Self::ack) by coordinates, for records known only by them (e.g. from a
    /// [`DatasetError::Decode`]).
    pub fn ack_offset(&self, topic: &str, partition: i32, offset: i64) {
        self.shared
            .ledger()
            .ack(&(Arc::from(topic), partition), offset);
    }

    /// Commits the acknowledged positions now, and returns what this call committed (the next
    /// offset to read per partition; empty when nothing moved since the last commit).
    ///
    /// Waits while the member rejoins its group. Fails with [`DatasetError::Group`] if the
    /// broker refused the commit (e.g. the member's generation is over: the dataset then
    /// rebalances and the records after the last commit are delivered again), and with
    /// [`DatasetError::GroupClosed`] after [`close`](Self::close).
    pub async fn commit(&self) -> Result<Committed, DatasetError> {
        let (reply, answer) = oneshot::channel();
        if self.control.send(Control::Commit(reply)).await.is_err() {
            return Err(self.closed());
        }
        answer.await.unwrap_or_else(|_| Err(self.closed()))
    }

    /// Commits the acknowledged positions, leaves the group (LeaveGroup, so the other members
    /// take the partitions over at once instead of after the session timeout) and ends the
    /// dataset's stream. Returns what the final commit committed. Closing again does nothing.
    ///
    /// Records handed out and not acknowledged by now are delivered again to the partition's
    /// next reader.
    pub async fn close(&self) -> Result<Committed, DatasetError> {
        if self.shared.is_closed() {
            return Ok(Committed::new());
        }
        let (reply, answer) = oneshot::channel();
        if self.control.send(Control::Close(reply)).await.is_err() {
            return self.closed_again();
        }
        match answer.await {
            Ok(result) => result,
            Err(_) => self.closed_again(),
        }
    }

    /// [`commit`](Self::commit) for programs without async code (the dataset opened with
    /// [`open_blocking`](super::KafkaGroupDatasetBuilder::open_blocking)); returns
    /// [`DatasetError::BlockingInAsync`] inside an async runtime.
    pub fn commit_blocking(&self) -> Result<Committed, DatasetError> {
        if Handle::try_current().is_ok() {
            return Err(DatasetError::BlockingInAsync);
        }
        futures::executor::block_on(self.commit())
    }

    /// [`close`](Self::close) for programs without async code. Call it before dropping the
    /// blocking dataset: dropping it stops the runtime its group member runs on, and the broker
    /// then keeps the member's partitions until its session times out.
    pub fn close_blocking(&self) -> Result<Committed, DatasetError> {
        if Handle::try_current().is_ok() {
            return Err(DatasetError::BlockingInAsync);
        }
        futures::executor::block_on(self.close())
    }

    /// The partitions the group assigned to this member (empty while it rejoins, and after
    /// [`close`](Self::close)).
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.shared.assignment()
    }

    /// The group id.
    pub fn group_id(&self) -> &str {
        &self.shared.group
    }

    /// Records handed out in the current assignment and not acknowledged yet.
    pub fn unacknowledged(&self) -> usize {
        self.shared.ledger().unacknowledged()
    }

    /// Records handed out in the current assignment and not covered by a commit yet: what the
    /// next reader would get again if this process died now.
    pub fn uncommitted(&self) -> usize {
        self.shared.ledger().uncommitted()
    }

    /// Whether [`close`](Self::close) finished.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    fn closed(&self) -> DatasetError {
        DatasetError::GroupClosed {
            group: self.shared.group.clone(),
        }
    }

    /// The task is gone: fine if a close finished, an error if it stopped otherwise.
    fn closed_again(&self) -> Result<Committed, DatasetError> {
        if self.shared.is_closed() {
            Ok(Committed::new())
        } else {
            Err(self.closed())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> Tp {
        (Arc::from("t"), p)
    }

    #[test]
    fn ack_through_covers_every_earlier_record_read() {
        let mut ledger = Ledger::default();
        for o in [3, 4, 7, 8, 9] {
            ledger.read(&tp(0), o); // 5 and 6 compacted away
        }
        ledger.ack_through(&tp(0), 7);
        assert_eq!(ledger.commits()[&tp(0)], 8);
        assert_eq!(ledger.unacknowledged(), 2);
        ledger.ack(&tp(0), 9);
        assert_eq!(ledger.commits()[&tp(0)], 8, "8 is not acknowledged");
        ledger.ack_through(&tp(0), 8);
        assert_eq!(ledger.commits()[&tp(0)], 10);
    }

    #[test]
    fn confirmed_commits_trim_what_ack_through_remembers() {
        let mut ledger = Ledger::default();
        for o in 0..100 {
            ledger.read(&tp(1), o);
        }
        for o in 0..60 {
            ledger.ack(&tp(1), o);
        }
        let positions = ledger.commits();
        assert_eq!(positions[&tp(1)], 60);
        ledger.confirm(&positions);
        assert_eq!(ledger.unswept[&tp(1)].len(), 40);
        assert_eq!(ledger.uncommitted(), 40);
        ledger.forget_all();
        assert!(ledger.commits().is_empty());
        ledger.ack(&tp(1), 60); // a late acknowledgement of a revoked partition
        assert!(ledger.commits().is_empty());
    }
}
