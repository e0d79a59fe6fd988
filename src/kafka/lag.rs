//! Consumer lag: per partition, the high watermark minus the committed position.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One partition's lag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    /// Offset the next produced record will get (from the latest fetch response).
    pub high_watermark: i64,
    /// Committed position (next offset to read), if any was committed in this run.
    pub committed: Option<i64>,
}

impl PartitionLag {
    /// Records produced but not committed yet: `high_watermark - committed`, when known.
    pub fn lag(&self) -> Option<i64> {
        self.committed.map(|c| (self.high_watermark - c).max(0))
    }
}

/// Shared, cheap-to-clone lag table: the source records high watermarks as it fetches, the
/// pipeline records positions as it commits, and anyone holding a clone can read it while
/// the pipeline runs.
///
/// ```
/// use streamtract::kafka::ConsumerLag;
/// let lag = ConsumerLag::default();
/// lag.set_high_watermark("in", 0, 120);
/// lag.set_committed("in", 0, 100);
/// assert_eq!(lag.snapshot()[&("in".to_string(), 0)].lag(), Some(20));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ConsumerLag {
    inner: Arc<Mutex<BTreeMap<(String, i32), PartitionLag>>>,
}

impl ConsumerLag {
    /// Records a partition's high watermark.
    pub fn set_high_watermark(&self, topic: &str, partition: i32, high_watermark: i64) {
        if let Ok(mut map) = self.inner.lock() {
            map.entry((topic.to_string(), partition))
                .or_insert(PartitionLag {
                    high_watermark,
                    committed: None,
                })
                .high_watermark = high_watermark;
        }
    }

    /// Records a partition's committed position.
    pub fn set_committed(&self, topic: &str, partition: i32, position: i64) {
        if let Ok(mut map) = self.inner.lock() {
            let entry = map
                .entry((topic.to_string(), partition))
                .or_insert(PartitionLag {
                    high_watermark: position,
                    committed: None,
                });
            entry.committed = Some(position);
        }
    }

    /// Forgets every partition (their ownership moved in a rebalance).
    pub fn clear(&self) {
        if let Ok(mut map) = self.inner.lock() {
            map.clear();
        }
    }

    /// A copy of the table.
    pub fn snapshot(&self) -> BTreeMap<(String, i32), PartitionLag> {
        self.inner.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Sum of the known lags.
    pub fn total(&self) -> i64 {
        self.snapshot().values().filter_map(PartitionLag::lag).sum()
    }
}
