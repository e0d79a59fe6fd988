//! A bounded disk spool for output records the output cluster cannot take now.
//!
//! On an edge box the results usually go to a central cluster over a link that drops for
//! minutes or hours. With a spool, a [`Sink`](super::Sink) whose produce request does not
//! succeed within the uplink timeout writes the records to disk instead, syncs them, and
//! reports them as stored: the pipeline commits their input offsets and goes on working. When
//! the uplink answers again, each output partition sends its spooled records first, in order,
//! before any newer record of that partition; drained segment files are deleted.
//!
//! - **Nothing counts before it is synced.** A record is acknowledged to the pipeline only when
//!   the output cluster acknowledged it or after `fsync` of the spool file that holds it.
//! - **Torn tails are cut.** Each record carries a CRC-32C; a crash in the middle of an append
//!   leaves a record that fails its check, and opening the spool cuts the file there (that
//!   record was never acknowledged, so its input is read again).
//! - **Bounded.** The spool's files never exceed `max_bytes` together. When it is full, the sink
//!   stops taking records, the pipeline's sends wait, and reading slows down (backpressure);
//!   nothing is dropped.
//! - **At least once.** A record drained but whose cursor update was lost in a crash is sent
//!   again after a restart.
//!
//! Layout: `DIR/LOCK` (held while a process uses the spool), `DIR/TOPIC/PARTITION/*.seg`.
//!
//! ```no_run
//! use streamtract::kafka::{SinkConfig, Spool, SpoolConfig};
//! # fn demo() -> Result<(), streamtract::kafka::SpoolError> {
//! let spool = Spool::open(SpoolConfig::new("/var/lib/streamtract/spool", 1 << 30))?;
//! let sink = SinkConfig::new("scores").with_spool(spool.clone());
//! // Sink::start(client, &kafka, &sink, acks) then writes through the spool while the
//! // uplink is down; spool.status() has the figures for metrics and health.
//! # let _ = sink; Ok(()) }
//! ```

mod frame;
mod partition;
pub(crate) mod writer;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

pub(crate) use partition::PartitionSpool;

/// The smallest spool accepted: room for one record as large as one produce request (1 MiB),
/// framing included. A smaller spool could never hold the largest record the sink sends.
pub const MIN_SPOOL_BYTES: u64 = (1 << 20) + 4096;

/// Where and how large the spool is, and when the uplink counts as down.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Directory of the spool (created if missing; must be writable).
    pub dir: PathBuf,
    /// Bound on the spool files' bytes together.
    pub max_bytes: u64,
    /// How long one produce request may take before its records go to the spool instead.
    pub uplink_timeout: Duration,
    /// Pause between attempts to send spooled records while the uplink is down.
    pub retry_interval: Duration,
}

impl SpoolConfig {
    /// A spool in `dir` of at most `max_bytes`; uplink timeout 10 s, retries every second.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> SpoolConfig {
        SpoolConfig {
            dir: dir.into(),
            max_bytes,
            uplink_timeout: Duration::from_secs(10),
            retry_interval: Duration::from_secs(1),
        }
    }
}

/// What can go wrong with the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The bound cannot hold one record.
    #[error("spool max bytes {max_bytes} is smaller than one record can be ({min} bytes: one produce request of 1 MiB and its framing); raise --spool-max-bytes")]
    TooSmall {
        /// The configured bound.
        max_bytes: u64,
        /// The smallest bound accepted.
        min: u64,
    },
    /// The directory cannot be created or written.
    #[error("spool directory {} is not usable: cannot {what} it: {source} (check that it exists and that this user may write there)", path.display())]
    NotWritable {
        /// The directory.
        path: PathBuf,
        /// What failed.
        what: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// Another process holds the spool.
    #[error("spool directory {} is in use by another process (its LOCK file is held); give each streamtract its own --spool-dir", path.display())]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// A file operation failed while running.
    #[error("spool: cannot {what} {}: {source}", path.display())]
    Io {
        /// What failed.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A record that passed its check when written no longer does.
    #[error("spool file {} is damaged at byte {position} ({reason}); move the spool directory aside to start without it", path.display())]
    Damaged {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the bad record.
        position: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The output cluster is unreachable at start-up and the spool does not know the topic.
    #[error("the output cluster is unreachable and the spool in {} has never seen topic `{topic}` (its partition count is learnt from the cluster): start once with the output cluster reachable", dir.display())]
    NeverConnected {
        /// Output topic.
        topic: String,
        /// The spool directory.
        dir: PathBuf,
    },
    /// The output cluster refuses records (too large, not authorised, ...), or cannot be
    /// reached while closing with a full spool: the records were not stored, so their inputs
    /// are not committed and are read again by the next run.
    #[error("output {topic}/{partition}: {reason}")]
    Refused {
        /// Output topic.
        topic: String,
        /// Output partition.
        partition: i32,
        /// What happened.
        reason: String,
    },
    /// The spool holds records for partitions the output topic does not have.
    #[error("spool holds records for {topic} partition {partition}, but the topic has {partitions} partitions; restore the partitions or move {} aside", dir.display())]
    PartitionGone {
        /// Output topic.
        topic: String,
        /// Partition in the spool.
        partition: i32,
        /// Partitions the topic has now.
        partitions: i32,
        /// The partition's spool directory.
        dir: PathBuf,
    },
}

impl SpoolError {
    /// A setting or state a restart cannot fix (bound, directory, lock, topic); the others
    /// happened while running.
    pub fn is_startup(&self) -> bool {
        matches!(
            self,
            SpoolError::TooSmall { .. }
                | SpoolError::NotWritable { .. }
                | SpoolError::Locked { .. }
                | SpoolError::NeverConnected { .. }
                | SpoolError::PartitionGone { .. }
        )
    }
}

/// The spool's figures, for metrics and health (cheap to clone; clones share them).
#[derive(Debug, Clone)]
pub struct SpoolStatus(Arc<Shared>);

/// A reading of [`SpoolStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolReading {
    /// Bytes of spool files on disk.
    pub bytes: u64,
    /// Records waiting to be sent.
    pub records: u64,
    /// The bound.
    pub max_bytes: u64,
    /// When the oldest waiting record was spooled.
    pub oldest: Option<DateTime<Utc>>,
    /// Since when the output cluster has not taken records, if it does not now.
    pub uplink_down_since: Option<DateTime<Utc>>,
}

impl SpoolStatus {
    /// The figures now.
    pub fn read(&self) -> SpoolReading {
        let s = &self.0;
        let oldest = s
            .oldest
            .lock()
            .ok()
            .and_then(|m| m.values().min().copied())
            .and_then(DateTime::from_timestamp_millis);
        let down = s.down.lock().ok().and_then(|m| m.values().min().copied());
        SpoolReading {
            bytes: s.bytes.load(Ordering::Relaxed),
            records: s.records.load(Ordering::Relaxed),
            max_bytes: s.max_bytes,
            oldest,
            uplink_down_since: down,
        }
    }
}

/// A spool directory opened by this process (see the module docs). Clones share it.
#[derive(Debug, Clone)]
pub struct Spool {
    config: SpoolConfig,
    shared: Arc<Shared>,
    /// Held open for the LOCK file's lock.
    _lock: Arc<File>,
}

impl Spool {
    /// Checks the configuration, creates the directory and takes its lock. What an earlier
    /// run left is recovered and counted when a sink opens each partition's spool.
    ///
    /// Errors: a bound below [`MIN_SPOOL_BYTES`], a directory that cannot be created or written,
    /// a directory another process uses.
    pub fn open(config: SpoolConfig) -> Result<Spool, SpoolError> {
        if config.max_bytes < MIN_SPOOL_BYTES {
            return Err(SpoolError::TooSmall {
                max_bytes: config.max_bytes,
                min: MIN_SPOOL_BYTES,
            });
        }
        let dir = &config.dir;
        let not_writable = |what, source| SpoolError::NotWritable {
            path: dir.clone(),
            what,
            source,
        };
        fs::create_dir_all(dir).map_err(|e| not_writable("create", e))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(|e| not_writable("write to", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked { path: dir.clone() })
            }
            Err(fs::TryLockError::Error(e)) => return Err(not_writable("lock", e)),
        }
        probe_writable(dir).map_err(|e| not_writable("write to", e))?;
        let shared = Arc::new(Shared {
            max_bytes: config.max_bytes,
            segment_bytes: (config.max_bytes / 8).clamp(MIN_SPOOL_BYTES / 2, 64 << 20),
            bytes: AtomicU64::new(0),
            records: AtomicU64::new(0),
            oldest: Mutex::new(BTreeMap::new()),
            down: Mutex::new(BTreeMap::new()),
        });
        Ok(Spool {
            config,
            shared,
            _lock: Arc::new(lock),
        })
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &SpoolConfig {
        &self.config
    }

    /// The figures for metrics and health.
    pub fn status(&self) -> SpoolStatus {
        SpoolStatus(Arc::clone(&self.shared))
    }

    /// Partitions of `topic` with spool directories from an earlier run.
    pub(crate) fn partitions_on_disk(&self, topic: &str) -> Vec<i32> {
        let Ok(entries) = fs::read_dir(self.config.dir.join(topic)) else {
            return Vec::new();
        };
        let mut found: Vec<i32> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        found.sort_unstable();
        found
    }

    /// Opens (recovering it) the spool of one output partition.
    pub(crate) fn partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<PartitionSpool, SpoolError> {
        PartitionSpool::open(
            partition,
            self.partition_dir(topic, partition),
            format!("{topic}/{partition}"),
            Arc::clone(&self.shared),
        )
    }

    /// Notes how many partitions `topic` has, for a later start while the cluster is down.
    pub(crate) fn remember_partitions(
        &self,
        topic: &str,
        partitions: i32,
    ) -> Result<(), SpoolError> {
        let dir = self.config.dir.join(topic);
        let path = dir.join("partitions");
        let io_err = |source| SpoolError::Io {
            what: "write",
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(io_err)?;
        let tmp = dir.join("partitions.tmp");
        fs::write(&tmp, format!("{partitions}\n"))
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(io_err)
    }

    /// The partition count [`remember_partitions`](Self::remember_partitions) noted.
    pub(crate) fn remembered_partitions(&self, topic: &str) -> Result<i32, SpoolError> {
        let path = self.config.dir.join(topic).join("partitions");
        fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .filter(|&n: &i32| n > 0)
            .ok_or_else(|| SpoolError::NeverConnected {
                topic: topic.to_string(),
                dir: self.config.dir.clone(),
            })
    }

    pub(crate) fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.config.dir.join(topic).join(partition.to_string())
    }
}

/// Writes, syncs and removes a file, so a read-only or full disk shows at start-up.
fn probe_writable(dir: &Path) -> io::Result<()> {
    let probe = dir.join(".probe");
    let mut file = File::create(&probe)?;
    file.write_all(b"streamtract")?;
    file.sync_all()?;
    fs::remove_file(&probe)
}

/// What every partition's spool shares: the bound and the figures.
#[derive(Debug)]
pub(crate) struct Shared {
    max_bytes: u64,
    /// Segment files roll over at this size.
    pub(crate) segment_bytes: u64,
    bytes: AtomicU64,
    records: AtomicU64,
    /// Per partition (`topic/partition`), when its oldest waiting record was spooled.
    oldest: Mutex<BTreeMap<String, i64>>,
    /// Per partition, since when its produce requests fail.
    down: Mutex<BTreeMap<String, DateTime<Utc>>>,
}

impl Shared {
    /// Takes `n` bytes of the bound, if there is room.
    fn reserve(&self, n: u64) -> bool {
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + n <= self.max_bytes).then_some(used + n)
            })
            .is_ok()
    }

    /// Counts what an earlier run left (may exceed the bound if it was lowered).
    fn charge(&self, bytes: u64, records: u64) {
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
        self.records.fetch_add(records, Ordering::AcqRel);
    }

    fn add_records(&self, n: u64) {
        self.records.fetch_add(n, Ordering::AcqRel);
    }

    fn release(&self, bytes: u64, records: u64) {
        let sub = |v: u64, n: u64| Some(v.saturating_sub(n));
        let _ = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| sub(v, bytes));
        let _ = self
            .records
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| sub(v, records));
    }

    fn set_oldest(&self, label: &str, oldest: Option<i64>) {
        if let Ok(mut map) = self.oldest.lock() {
            match oldest {
                Some(ms) => map.insert(label.to_string(), ms),
                None => map.remove(label),
            };
        }
    }

    /// Notes that `label`'s produce requests fail (keeps the first time).
    pub(crate) fn mark_down(&self, label: &str) -> DateTime<Utc> {
        let now = Utc::now();
        match self.down.lock() {
            Ok(mut map) => *map.entry(label.to_string()).or_insert(now),
            Err(_) => now,
        }
    }

    /// Notes that `label` delivers again; returns since when it was down.
    pub(crate) fn mark_up(&self, label: &str) -> Option<DateTime<Utc>> {
        self.down.lock().ok()?.remove(label)
    }
}

#[cfg(test)]
mod tests;
