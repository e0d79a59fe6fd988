//! How a partition fetcher waits for new records: long polls, or polling on brokers that hold
//! fetches.
//!
//! A Kafka fetch carries a `max_wait`: Apache Kafka (and Redpanda) hold the request open until
//! a record arrives or the wait ends, so one request per wait costs nothing and a new record
//! is answered within a round trip. Some brokers instead read the partition when the request
//! arrives and then hold the answer for the whole wait, records or not (tansu 0.6 does). There
//! a record waits for the rest of the current fetch *and* all of the next: 1.5 × `max_wait` on
//! average, 150 ms with the default wait.
//!
//! [`FetchPacing`] tells the two apart from the fetches themselves: a broker that kept
//! [`HELD_TO_SWITCH`] fetches in a row that had records for the whole wait holds them. For
//! such a broker it switches to polling: fetches with no wait, one right after another while
//! records keep coming, every `max_wait / 20` (at least 1 ms) when a poll finds nothing, and
//! after [`FAST_FOR`] without records the interval doubles up to `max_wait`, so an idle
//! partition costs no more requests than before. On a broker that answers early nothing
//! changes.
//!
//! What the fetches show is [`FetchEvidence`], shared by all partition fetchers of a source
//! and by the sources started again from the same config (after a rebalance): the broker is
//! learnt once, from whichever partitions have records first.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Consecutive held fetches with records after which the broker is taken to hold every fetch.
/// One could be a record that arrived just as the wait ended; three in a row are not.
pub(crate) const HELD_TO_SWITCH: u32 = 3;

/// How long polling stays at its fastest interval after the last record.
pub(crate) const FAST_FOR: Duration = Duration::from_secs(1);

/// The shortest interval between polls that find nothing.
const MIN_POLL: Duration = Duration::from_millis(1);

/// What the fetchers sharing it have seen of the broker: whether it holds fetches that have
/// records for the whole wait. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct FetchEvidence(Arc<Evidence>);

#[derive(Debug, Default)]
struct Evidence {
    /// Fetches with records in a row, across fetchers, that the broker held for the whole wait.
    held_in_a_row: AtomicU32,
    holds_fetches: AtomicBool,
}

impl FetchEvidence {
    /// Whether the broker was seen to hold fetches (the fetchers poll it).
    pub fn broker_holds_fetches(&self) -> bool {
        self.0.holds_fetches.load(Ordering::Relaxed)
    }

    fn held(&self, max_wait: Duration) {
        if self.0.held_in_a_row.fetch_add(1, Ordering::Relaxed) + 1 >= HELD_TO_SWITCH
            && !self.0.holds_fetches.swap(true, Ordering::Relaxed)
        {
            tracing::info!(
                max_wait_ms = max_wait.as_millis() as u64,
                "the broker holds fetches that have records for the whole wait; polling it instead"
            );
        }
    }

    fn answered_early(&self) {
        self.0.held_in_a_row.store(0, Ordering::Relaxed);
    }
}

/// The waiting strategy of one partition fetcher.
///
/// ```text
/// let mut pacing = FetchPacing::new(max_wait, evidence.clone());
/// loop {
///     let asked = Instant::now();
///     let records = fetch(offset, pacing.next_wait()).await;
///     let pause = pacing.after_fetch(asked, Instant::now(), !records.is_empty());
///     sleep(pause).await;
/// }
/// ```
#[derive(Debug, Clone)]
pub(crate) struct FetchPacing {
    max_wait: Duration,
    evidence: FetchEvidence,
    /// Whether the fetch in flight was sent as a poll (no wait).
    polled: bool,
    /// When the last records arrived (polling only).
    last_records: Option<Instant>,
    /// The next pause after an empty poll.
    poll_interval: Duration,
}

impl FetchPacing {
    /// Long polls of `max_wait` until `evidence` shows that the broker holds fetches.
    pub(crate) fn new(max_wait: Duration, evidence: FetchEvidence) -> FetchPacing {
        FetchPacing {
            max_wait,
            evidence,
            polled: false,
            last_records: None,
            poll_interval: Self::fastest_poll(max_wait),
        }
    }

    fn fastest_poll(max_wait: Duration) -> Duration {
        (max_wait / 20).max(MIN_POLL).min(max_wait)
    }

    /// Whether the fetchers poll the broker.
    pub(crate) fn is_polling(&self) -> bool {
        self.evidence.broker_holds_fetches()
    }

    /// The `max_wait` to send with the next fetch.
    pub(crate) fn next_wait(&mut self) -> Duration {
        self.polled = self.is_polling();
        if self.polled {
            Duration::ZERO
        } else {
            self.max_wait
        }
    }

    /// Records how the fetch sent at `asked` went (answered at `answered`, with records or
    /// not) and returns how long to pause before the next one.
    pub(crate) fn after_fetch(
        &mut self,
        asked: Instant,
        answered: Instant,
        had_records: bool,
    ) -> Duration {
        let took = answered.saturating_duration_since(asked);
        if self.polled {
            return self.after_poll(answered, had_records);
        }
        if had_records {
            // Kafka answers as soon as there is a record, so a fetch with records answered
            // only after the whole wait was held with its records.
            if took >= self.max_wait {
                self.evidence.held(self.max_wait);
            } else {
                self.evidence.answered_early();
            }
        }
        if self.is_polling() {
            // Switched (by this fetch or another fetcher's): poll at the fast interval first.
            self.last_records = Some(answered);
            return Duration::ZERO;
        }
        if had_records {
            return Duration::ZERO;
        }
        // An empty answer long before the wait ended would make the fetch loop spin on a
        // broker that does not hold empty fetches; one that held it has already waited.
        if took < self.max_wait / 2 {
            self.max_wait.min(Duration::from_millis(50))
        } else {
            Duration::ZERO
        }
    }

    fn after_poll(&mut self, now: Instant, had_records: bool) -> Duration {
        let fastest = Self::fastest_poll(self.max_wait);
        if had_records {
            // More may be waiting (a backlog is read one fetch size at a time): ask again now.
            self.last_records = Some(now);
            self.poll_interval = fastest;
            return Duration::ZERO;
        }
        let idle = self
            .last_records
            .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
        if idle < FAST_FOR {
            return fastest;
        }
        let pause = self.poll_interval;
        self.poll_interval = (self.poll_interval * 2).min(self.max_wait);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(100);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn pacing(max_wait: Duration) -> FetchPacing {
        FetchPacing::new(max_wait, FetchEvidence::default())
    }

    /// Feeds one fetch that took `took` and returns the pause.
    fn fetch(p: &mut FetchPacing, now: &mut Instant, took: Duration, records: bool) -> Duration {
        p.next_wait();
        let asked = *now;
        *now += took;
        let pause = p.after_fetch(asked, *now, records);
        *now += pause;
        pause
    }

    #[test]
    fn a_broker_that_answers_early_keeps_long_polls() {
        let mut p = pacing(WAIT);
        let mut now = Instant::now();
        for _ in 0..10 {
            assert_eq!(fetch(&mut p, &mut now, ms(2), true), Duration::ZERO);
            // An empty fetch held for the whole wait: ask again at once.
            assert_eq!(fetch(&mut p, &mut now, WAIT, false), Duration::ZERO);
        }
        assert!(!p.is_polling());
        assert_eq!(p.next_wait(), WAIT);
    }

    #[test]
    fn an_empty_answer_before_the_wait_pauses_instead_of_spinning() {
        let mut p = pacing(WAIT);
        let mut now = Instant::now();
        assert_eq!(fetch(&mut p, &mut now, ms(1), false), ms(50));
        let mut short = pacing(ms(5));
        assert_eq!(fetch(&mut short, &mut now, ms(1), false), ms(5));
    }

    #[test]
    fn three_held_fetches_with_records_switch_to_polling() {
        let mut p = pacing(WAIT);
        let mut now = Instant::now();
        fetch(&mut p, &mut now, ms(101), true);
        fetch(&mut p, &mut now, ms(101), true);
        // One answered early: not a holding broker after all, start counting again.
        fetch(&mut p, &mut now, ms(3), true);
        fetch(&mut p, &mut now, ms(101), true);
        fetch(&mut p, &mut now, ms(101), true);
        assert!(!p.is_polling());
        fetch(&mut p, &mut now, ms(100), true);
        assert!(p.is_polling());
        assert_eq!(p.next_wait(), Duration::ZERO);
    }

    #[test]
    fn polling_is_fast_while_records_flow_and_slows_down_to_the_wait_when_idle() {
        let mut p = pacing(WAIT);
        let mut now = Instant::now();
        for _ in 0..HELD_TO_SWITCH {
            fetch(&mut p, &mut now, WAIT, true);
        }
        assert!(p.is_polling());
        // Records: ask again at once; none: every max_wait / 20.
        assert_eq!(fetch(&mut p, &mut now, ms(1), true), Duration::ZERO);
        assert_eq!(fetch(&mut p, &mut now, ms(1), false), ms(5));
        // Idle for longer than FAST_FOR: the pause doubles up to the wait.
        let mut pauses = Vec::new();
        let mut waited = Duration::ZERO;
        while waited < FAST_FOR + ms(2_000) {
            let pause = fetch(&mut p, &mut now, ms(1), false);
            waited += pause + ms(1);
            pauses.push(pause);
        }
        let slow: Vec<_> = pauses.iter().copied().filter(|&d| d > ms(5)).collect();
        assert_eq!(&slow[..5], &[ms(10), ms(20), ms(40), ms(80), ms(100)]);
        assert_eq!(pauses.last(), Some(&WAIT));
        // A record brings the fast interval back.
        assert_eq!(fetch(&mut p, &mut now, ms(1), true), Duration::ZERO);
        assert_eq!(fetch(&mut p, &mut now, ms(1), false), ms(5));
    }

    #[test]
    fn fetchers_sharing_evidence_learn_the_broker_together_and_keep_it() {
        let evidence = FetchEvidence::default();
        let mut fetchers: Vec<FetchPacing> = (0..3)
            .map(|_| FetchPacing::new(WAIT, evidence.clone()))
            .collect();
        let mut late = FetchPacing::new(WAIT, evidence.clone());
        let mut now = Instant::now();
        // This one's long poll is in flight while the others find out.
        assert_eq!(late.next_wait(), WAIT);
        let late_asked = now;
        // One held fetch with records on each partition: three in a row between them.
        for p in &mut fetchers[..2] {
            fetch(p, &mut now, ms(101), true);
        }
        assert!(!evidence.broker_holds_fetches());
        fetch(&mut fetchers[2], &mut now, ms(101), true);
        assert!(evidence.broker_holds_fetches());
        for p in &mut fetchers {
            assert_eq!(p.next_wait(), Duration::ZERO);
        }
        // The fetcher whose long poll was in flight polls from its answer on, fast at first.
        now += ms(50);
        assert_eq!(late.after_fetch(late_asked, now, false), Duration::ZERO);
        assert_eq!(fetch(&mut late, &mut now, ms(1), false), ms(5));
        // A source started again from the same config (a rebalance) starts out polling.
        let mut restarted = FetchPacing::new(WAIT, evidence.clone());
        assert_eq!(restarted.next_wait(), Duration::ZERO);
    }

    #[test]
    fn the_poll_interval_is_at_least_a_millisecond_and_at_most_the_wait() {
        assert_eq!(FetchPacing::fastest_poll(ms(5)), ms(1));
        assert_eq!(FetchPacing::fastest_poll(ms(1)), ms(1));
        assert_eq!(FetchPacing::fastest_poll(ms(1_000)), ms(50));
    }
}
