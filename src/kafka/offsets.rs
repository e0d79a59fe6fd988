//! Which offsets are safe to commit.
//!
//! A record is *done* when the broker acknowledged its output (or its dead letter), or when the
//! error policy skipped it. Outputs are acknowledged out of order across output partitions, so
//! per input partition we keep the offsets read but not yet done, in read order, and commit the
//! offset of the first one that is not done: everything before it is done. Offsets need not be
//! contiguous (compaction, transaction markers); only offsets actually read are tracked.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// A topic partition.
pub type TopicPartition = (Arc<str>, i32);

#[derive(Debug, Default)]
struct PartitionState {
    /// Offsets read and not yet known done, with their done flag and size in bytes, in read
    /// (= offset) order.
    pending: VecDeque<(i64, bool, usize)>,
    /// Offsets read and not yet covered by a confirmed commit, in read order.
    uncommitted: VecDeque<i64>,
    /// One past the last offset read.
    next_read: Option<i64>,
    /// The last position confirmed committed (or where reading started).
    committed: Option<i64>,
}

impl PartitionState {
    fn position(&self) -> Option<i64> {
        match self.pending.front() {
            Some((offset, _, _)) => Some(*offset),
            None => self.next_read,
        }
    }
}

/// Tracks read and done offsets per partition and yields commit positions.
///
/// ```
/// use std::sync::Arc;
/// use streamtract::kafka::OffsetTracker;
/// let tp: (Arc<str>, i32) = (Arc::from("in"), 0);
/// let mut t = OffsetTracker::default();
/// for o in 10..13 { t.read(&tp, o); }
/// t.done(&tp, 11);                       // acked out of order: nothing committable yet
/// assert!(t.take_commits().is_empty());
/// t.done(&tp, 10);
/// assert_eq!(t.take_commits()[&tp], 12); // 10 and 11 done: the next record to read is 12
/// ```
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: BTreeMap<TopicPartition, PartitionState>,
    in_flight: usize,
    in_flight_bytes: usize,
    uncommitted: usize,
}

impl OffsetTracker {
    /// A record entered the pipeline.
    pub fn read(&mut self, tp: &TopicPartition, offset: i64) {
        self.read_sized(tp, offset, 0);
    }

    /// A record of `bytes` bytes entered the pipeline; the bytes count in
    /// [`in_flight_bytes`](Self::in_flight_bytes) until the record is done.
    pub fn read_sized(&mut self, tp: &TopicPartition, offset: i64, bytes: usize) {
        let state = self.partitions.entry(tp.clone()).or_default();
        // The position before the first record read is where reading started: nothing to commit.
        state.committed.get_or_insert(offset);
        state.pending.push_back((offset, false, bytes));
        state.uncommitted.push_back(offset);
        state.next_read = Some(offset + 1);
        self.in_flight += 1;
        self.in_flight_bytes += bytes;
        self.uncommitted += 1;
    }

    /// The record at `offset` is done (output or dead letter acknowledged, or skipped).
    /// Unknown offsets (e.g. of a partition revoked since) are ignored.
    pub fn done(&mut self, tp: &TopicPartition, offset: i64) {
        let Some(state) = self.partitions.get_mut(tp) else {
            return;
        };
        if let Ok(ix) = state.pending.binary_search_by_key(&offset, |(o, _, _)| *o) {
            let entry = &mut state.pending[ix];
            if !entry.1 {
                entry.1 = true;
                self.in_flight -= 1;
                self.in_flight_bytes -= entry.2;
            }
        }
        while state.pending.front().is_some_and(|(_, done, _)| *done) {
            state.pending.pop_front();
        }
    }

    /// Records read and not yet done.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Bytes of the records read and not yet done (as given to [`read_sized`](Self::read_sized)).
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }

    /// Records read and not yet covered by a confirmed commit: what a crash now would make
    /// the next reader process again.
    pub fn uncommitted(&self) -> usize {
        self.uncommitted
    }

    /// Commit positions (next offset to read) that moved past the last confirmed commit.
    /// Call [`confirm`](Self::confirm) once the broker accepted them; until then they are
    /// offered again.
    pub fn commits(&self) -> BTreeMap<TopicPartition, i64> {
        let mut out = BTreeMap::new();
        for (tp, state) in &self.partitions {
            if let Some(pos) = state.position() {
                if state.committed != Some(pos) {
                    out.insert(tp.clone(), pos);
                }
            }
        }
        out
    }

    /// The broker accepted these commit positions.
    pub fn confirm(&mut self, positions: &BTreeMap<TopicPartition, i64>) {
        for (tp, pos) in positions {
            let Some(state) = self.partitions.get_mut(tp) else {
                continue;
            };
            state.committed = Some(*pos);
            while state.uncommitted.front().is_some_and(|o| o < pos) {
                state.uncommitted.pop_front();
                self.uncommitted -= 1;
            }
        }
    }

    /// [`commits`](Self::commits) confirmed at once, for runs that have nowhere to commit.
    pub fn take_commits(&mut self) -> BTreeMap<TopicPartition, i64> {
        let positions = self.commits();
        self.confirm(&positions);
        positions
    }

    /// Forgets a partition (revoked); its not-done records will be read again by its next owner.
    pub fn forget(&mut self, tp: &TopicPartition) {
        if let Some(state) = self.partitions.remove(tp) {
            for (_, done, bytes) in &state.pending {
                if !done {
                    self.in_flight -= 1;
                    self.in_flight_bytes -= bytes;
                }
            }
            self.uncommitted -= state.uncommitted.len();
        }
    }

    /// Forgets every partition (after a rebalance, all are assigned anew).
    pub fn forget_all(&mut self) {
        self.partitions.clear();
        self.in_flight = 0;
        self.in_flight_bytes = 0;
        self.uncommitted = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        (Arc::from("t"), p)
    }

    #[test]
    fn commits_only_the_done_prefix() {
        let mut t = OffsetTracker::default();
        for o in [0, 1, 2, 5, 6] {
            t.read(&tp(0), o); // 3 and 4 were compacted away
        }
        t.done(&tp(0), 2);
        t.done(&tp(0), 5);
        assert!(t.take_commits().is_empty(), "0 is not done");
        t.done(&tp(0), 0);
        assert_eq!(t.take_commits()[&tp(0)], 1);
        t.done(&tp(0), 1);
        assert_eq!(t.take_commits()[&tp(0)], 6);
        assert!(
            t.take_commits().is_empty(),
            "unchanged positions are not repeated"
        );
        t.done(&tp(0), 6);
        assert_eq!(t.take_commits()[&tp(0)], 7);
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.uncommitted(), 0);
    }

    #[test]
    fn unconfirmed_commits_are_offered_again() {
        let mut t = OffsetTracker::default();
        for o in 0..4 {
            t.read(&tp(0), o);
        }
        t.done(&tp(0), 0);
        t.done(&tp(0), 1);
        assert_eq!(t.uncommitted(), 4);
        let first = t.commits();
        assert_eq!(first[&tp(0)], 2);
        assert_eq!(t.commits(), first, "a failed commit is offered again");
        t.confirm(&first);
        assert_eq!(t.uncommitted(), 2);
        assert!(t.commits().is_empty());
    }

    #[test]
    fn partitions_are_independent_and_forgettable() {
        let mut t = OffsetTracker::default();
        t.read(&tp(0), 0);
        t.read(&tp(1), 40);
        t.read(&tp(1), 41);
        t.done(&tp(1), 40);
        t.done(&tp(1), 40); // duplicate acks are harmless
        let c = t.take_commits();
        assert_eq!(c.get(&tp(1)), Some(&41));
        assert_eq!(c.get(&tp(0)), None, "nothing done on partition 0 yet");
        assert_eq!(t.in_flight(), 2);
        t.forget(&tp(1));
        assert_eq!(t.in_flight(), 1);
        t.done(&tp(1), 41); // late ack of a revoked partition
        assert_eq!(t.in_flight(), 1);
    }

    #[test]
    fn in_flight_bytes_follow_done_and_forget() {
        let mut t = OffsetTracker::default();
        t.read_sized(&tp(0), 0, 100);
        t.read_sized(&tp(0), 1, 20);
        t.read_sized(&tp(1), 7, 3);
        assert_eq!(t.in_flight_bytes(), 123);
        t.done(&tp(0), 1);
        t.done(&tp(0), 1);
        assert_eq!(
            t.in_flight_bytes(),
            103,
            "a duplicate ack frees nothing twice"
        );
        t.forget(&tp(0));
        assert_eq!(t.in_flight_bytes(), 3);
        t.forget_all();
        assert_eq!(t.in_flight_bytes(), 0);
    }
}
