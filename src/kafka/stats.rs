//! Request counters of sources and sinks: how many fetch and produce requests a run made and
//! what they carried, so that "records per request" is a figure rather than a guess (the
//! `run finished` log line prints them; docs/performance.md "Kafka path" uses them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Requests of one kind and what they carried. Clones share the counters.
#[derive(Debug, Clone, Default)]
pub struct RequestStats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
}

/// A reading of [`RequestStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Requests answered.
    pub requests: u64,
    /// Records they carried.
    pub records: u64,
    /// Bytes of record keys and values they carried.
    pub bytes: u64,
}

impl RequestCounts {
    /// Records per request (0 without requests).
    pub fn records_per_request(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.records as f64 / self.requests as f64
        }
    }
}

impl RequestStats {
    /// Notes one answered request that carried `records` records of `bytes` bytes.
    pub fn add(&self, records: usize, bytes: usize) {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        self.0.records.fetch_add(records as u64, Ordering::Relaxed);
        self.0.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn read(&self) -> RequestCounts {
        RequestCounts {
            requests: self.0.requests.load(Ordering::Relaxed),
            records: self.0.records.load(Ordering::Relaxed),
            bytes: self.0.bytes.load(Ordering::Relaxed),
        }
    }
}
