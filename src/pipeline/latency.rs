//! End-to-end latency of a run: from each input record's timestamp to the broker's
//! acknowledgement of what the pipeline wrote for it (its output or its dead letter).
//!
//! Kafka record timestamps have millisecond resolution, so each figure may read up to 1 ms
//! high. A record whose timestamp is later than the acknowledgement (producer clock ahead of
//! ours) is not counted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;

/// Latency percentiles over the records of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// Records measured.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

/// Collects latencies in microseconds with three significant digits (an HDR histogram: a few
/// tens of kilobytes, whatever the number of records).
///
/// ```
/// use chrono::{TimeDelta, Utc};
/// use streamtract::pipeline::LatencyRecorder;
///
/// let mut latency = LatencyRecorder::default();
/// let acked = Utc::now();
/// latency.record(acked - TimeDelta::milliseconds(12), acked);
/// assert_eq!(latency.summary().count, 1);
/// assert_eq!(latency.summary().p50.as_millis(), 12);
/// ```
#[derive(Debug)]
pub struct LatencyRecorder(Histogram<u64>);

/// Latencies above this (one day) are counted as this.
const MAX_MICROS: u64 = 86_400_000_000;

impl LatencyRecorder {
    /// An empty recorder.
    pub fn new() -> LatencyRecorder {
        // Cannot fail: 1 ≤ low, high ≥ 2 × low, and 3 significant digits is within 0..=5.
        let histogram = Histogram::new_with_bounds(1, MAX_MICROS, 3)
            .unwrap_or_else(|_| unreachable!("valid histogram bounds"));
        LatencyRecorder(histogram)
    }

    /// Records the latency of a record with timestamp `since`, acknowledged at `now`;
    /// returns it, or `None` if `since` is in the future.
    pub fn record(&mut self, since: DateTime<Utc>, now: DateTime<Utc>) -> Option<Duration> {
        let latency = (now - since).to_std().ok()?;
        let micros = u64::try_from(latency.as_micros()).unwrap_or(MAX_MICROS);
        self.0.saturating_record(micros.clamp(1, MAX_MICROS));
        Some(latency)
    }

    /// The percentiles so far (all zero before the first record).
    pub fn summary(&self) -> Latency {
        let at = |q: f64| Duration::from_micros(self.0.value_at_quantile(q));
        Latency {
            count: self.0.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: Duration::from_micros(self.0.max()),
        }
    }
}

impl Default for LatencyRecorder {
    fn default() -> LatencyRecorder {
        LatencyRecorder::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    #[test]
    fn percentiles_of_a_known_spread() {
        let mut r = LatencyRecorder::new();
        let now = Utc::now();
        // 1..=100 ms: the median is 50 ms and the 99th percentile 99 ms.
        for ms in 1..=100 {
            r.record(now - TimeDelta::milliseconds(ms), now);
        }
        let s = r.summary();
        assert_eq!(s.count, 100);
        let near = |d: Duration, ms: u64| {
            d.abs_diff(Duration::from_millis(ms)) < Duration::from_micros(100)
        };
        assert!(near(s.p50, 50), "{s:?}");
        assert!(near(s.p99, 99), "{s:?}");
        assert!(near(s.max, 100), "{s:?}");
    }

    #[test]
    fn a_timestamp_from_the_future_is_not_counted() {
        let mut r = LatencyRecorder::new();
        let now = Utc::now();
        assert_eq!(r.record(now + TimeDelta::seconds(1), now), None);
        assert_eq!(r.summary(), Latency::default());
    }
}
