//! The spool of one output partition: segment files read from the front, appended at the back.
//!
//! Files in `DIR/TOPIC/PARTITION/`: segments named by a sequence number (`00000000000000000007.seg`),
//! and `cursor`, the segment and byte position of the first record not yet acknowledged by the
//! output cluster. The cursor is written after each drained batch but not synced: losing it in a
//! crash only means the records after the previous cursor are sent again (at-least-once), while
//! syncing it would cost a disk flush per batch.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rskafka::record::Record;

use super::frame::{self, Decoded, Spooled};
use super::{Shared, SpoolError};

#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// Bytes of whole, checked frames.
    len: u64,
}

/// Where draining has got to: a segment and a byte position in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    seq: u64,
    pos: u64,
}

/// A batch read from the front of the spool, not yet removed from it.
#[derive(Debug)]
pub(crate) struct Peeked {
    /// The records, oldest first.
    pub records: Vec<Record>,
    /// Their frame bytes.
    pub bytes: u64,
    /// Where the spool starts once they are acknowledged.
    pub next: Position,
}

/// The spool of one output partition (see the module docs).
#[derive(Debug)]
pub(crate) struct PartitionSpool {
    id: i32,
    dir: PathBuf,
    label: String,
    segments: VecDeque<Segment>,
    /// Position of the first record not yet drained (in the first segment).
    head: u64,
    records: u64,
    writer: Option<File>,
    shared: Arc<Shared>,
}

impl PartitionSpool {
    /// Opens (and recovers) the spool in `dir`, creating the directory if needed.
    pub(super) fn open(
        id: i32,
        dir: PathBuf,
        label: String,
        shared: Arc<Shared>,
    ) -> Result<PartitionSpool, SpoolError> {
        let io_err = |what: &'static str, path: &Path, e: io::Error| SpoolError::Io {
            what,
            path: path.to_path_buf(),
            source: e,
        };
        fs::create_dir_all(&dir).map_err(|e| io_err("create", &dir, e))?;
        let mut seqs = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io_err("list", &dir, e))? {
            let entry = entry.map_err(|e| io_err("list", &dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name
                .strip_suffix(".seg")
                .and_then(|s| s.parse::<u64>().ok())
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut spool = PartitionSpool {
            id,
            dir,
            label,
            segments: VecDeque::new(),
            head: 0,
            records: 0,
            writer: None,
            shared,
        };
        let cursor = spool.read_cursor();
        let last = seqs.last().copied();
        for seq in seqs {
            let path = spool.segment_path(seq);
            let (len, counts) = recover_segment(&path, Some(seq) == last, &spool.label)?;
            if len == 0 {
                fs::remove_file(&path).map_err(|e| io_err("remove", &path, e))?;
                continue;
            }
            let skipped = match cursor {
                Some(c) if c.seq == seq && spool.segments.is_empty() => {
                    spool.head = counts.bytes_before(c.pos);
                    counts.records_before(c.pos)
                }
                _ => 0,
            };
            spool.records += counts.offsets.len() as u64 - skipped;
            spool
                .shared
                .charge(len, counts.offsets.len() as u64 - skipped);
            spool.segments.push_back(Segment { seq, path, len });
        }
        if spool.records == 0 {
            spool.clear()?;
        } else {
            tracing::info!(spool = %spool.label, records = spool.records,
                segments = spool.segments.len(), "spooled records from an earlier run; they are sent first");
        }
        spool.publish_oldest();
        Ok(spool)
    }

    /// The output partition.
    pub(crate) fn id(&self) -> i32 {
        self.id
    }

    /// Records waiting to be sent.
    pub(crate) fn records(&self) -> u64 {
        self.records
    }

    /// Nothing waits to be sent.
    pub(crate) fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Appends as many of `records` (oldest first) as the spool's bound has room for, syncs
    /// them to disk, and returns how many were stored. Only stored records count: the rest
    /// stay with the caller.
    pub(crate) fn append<'a>(
        &mut self,
        records: impl Iterator<Item = &'a Record>,
    ) -> Result<usize, SpoolError> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut buf = Vec::new();
        let mut n = 0;
        for record in records {
            let len = frame::encoded_len(record) as u64;
            if !self.shared.reserve(len) {
                break;
            }
            frame::encode(record, now, &mut buf);
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        let written = self.write_synced(&buf);
        if let Err(e) = written {
            self.shared.release(buf.len() as u64, 0);
            return Err(e);
        }
        if self.records == 0 {
            // The oldest waiting record is the first one just written; it only changes on an
            // append into an empty spool (no file read needed).
            self.shared.set_oldest(&self.label, Some(now));
        }
        self.records += n as u64;
        self.shared.add_records(n as u64);
        Ok(n)
    }

    fn write_synced(&mut self, buf: &[u8]) -> Result<(), SpoolError> {
        let roll = match self.segments.back() {
            None => true,
            Some(s) => s.len > 0 && s.len + buf.len() as u64 > self.shared.segment_bytes,
        };
        if roll || self.writer.is_none() {
            self.open_writer(roll)?;
        }
        let (Some(file), Some(segment)) = (self.writer.as_mut(), self.segments.back_mut()) else {
            return Err(SpoolError::Io {
                what: "append to",
                path: self.dir.clone(),
                source: io::Error::other("no segment open"),
            });
        };
        let path = &segment.path;
        let io_err = |e| SpoolError::Io {
            what: "append to",
            path: path.clone(),
            source: e,
        };
        // The records count as stored (and their input offsets may be committed) only after
        // the sync. On a failed write the file is cut back to its last whole frame, so that
        // later appends do not land behind a partial one.
        let written = file.write_all(buf).and_then(|()| file.sync_data());
        if let Err(e) = written {
            let _ = file.set_len(segment.len);
            self.writer = None;
            return Err(io_err(e));
        }
        segment.len += buf.len() as u64;
        Ok(())
    }

    /// Opens the last segment for appending, or a new one after it when `roll`.
    fn open_writer(&mut self, roll: bool) -> Result<(), SpoolError> {
        if roll {
            let seq = self.segments.back().map_or(0, |s| s.seq + 1);
            let path = self.segment_path(seq);
            self.segments.push_back(Segment { seq, path, len: 0 });
        }
        let Some(segment) = self.segments.back() else {
            return Ok(());
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&segment.path)
            .map_err(|e| SpoolError::Io {
                what: "create",
                path: segment.path.clone(),
                source: e,
            })?;
        if roll {
            // A new file's name must survive a crash too, or its synced records would vanish.
            sync_dir(&self.dir)?;
        }
        self.writer = Some(file);
        Ok(())
    }

    /// Reads up to `max_records` records or `max_bytes` bytes of frames (but always at least
    /// one record) from the front, oldest first, without removing them.
    pub(crate) fn peek(&self, max_records: usize, max_bytes: u64) -> Result<Peeked, SpoolError> {
        let mut peeked = Peeked {
            records: Vec::new(),
            bytes: 0,
            next: Position {
                seq: self.segments.front().map_or(0, |s| s.seq),
                pos: self.head,
            },
        };
        // One frame's bytes at a time, in a buffer kept across frames.
        let mut buf = Vec::new();
        for (i, segment) in self.segments.iter().enumerate() {
            let mut pos = if i == 0 { self.head } else { 0 };
            if pos >= segment.len {
                continue;
            }
            let io_err = |e| SpoolError::Io {
                what: "read",
                path: segment.path.clone(),
                source: e,
            };
            let mut file = File::open(&segment.path).map_err(io_err)?;
            file.seek(SeekFrom::Start(pos)).map_err(io_err)?;
            let mut reader = BufReader::with_capacity(256 << 10, file);
            while pos < segment.len {
                buf.resize(frame::HEADER_BYTES, 0);
                reader.read_exact(&mut buf).map_err(io_err)?;
                let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as u64;
                let total = frame::HEADER_BYTES as u64 + len;
                if len > frame::MAX_PAYLOAD as u64 || pos + total > segment.len {
                    return Err(damaged(segment, pos, "length out of range"));
                }
                if !peeked.records.is_empty() && peeked.bytes + total > max_bytes {
                    return Ok(peeked);
                }
                buf.resize(total as usize, 0);
                reader
                    .read_exact(&mut buf[frame::HEADER_BYTES..])
                    .map_err(io_err)?;
                match frame::decode(&buf) {
                    Decoded::Frame(Spooled { record, .. }, _) => peeked.records.push(record),
                    // Checked when written or recovered; damage now is the disk's doing.
                    Decoded::Damaged(why) => return Err(damaged(segment, pos, why)),
                    Decoded::Short => return Err(damaged(segment, pos, "cut short")),
                }
                pos += total;
                peeked.bytes += total;
                peeked.next = Position {
                    seq: segment.seq,
                    pos,
                };
                if peeked.records.len() >= max_records {
                    return Ok(peeked);
                }
            }
        }
        Ok(peeked)
    }

    /// Removes the `n` records a [`peek`](Self::peek) read, up to its `next` position, once the
    /// output cluster acknowledged them: segments drained to their end are deleted, the cursor
    /// moves on.
    pub(crate) fn consume(&mut self, n: u64, next: Position) -> Result<(), SpoolError> {
        self.records = self.records.saturating_sub(n);
        self.shared.release(0, n);
        let Position { seq, pos } = next;
        while let Some(front) = self.segments.front() {
            let drained = front.seq < seq || (front.seq == seq && pos >= front.len);
            let is_tail = self.segments.len() == 1;
            if !drained || (is_tail && self.records > 0) {
                break;
            }
            if is_tail {
                self.writer = None;
            }
            let Some(done) = self.segments.pop_front() else {
                break;
            };
            remove(&done.path)?;
            self.shared.release(done.len, 0);
            self.head = 0;
        }
        if let Some(front) = self.segments.front() {
            if front.seq == seq {
                self.head = pos;
            }
            self.write_cursor()?;
        } else {
            self.remove_cursor()?;
        }
        self.publish_oldest();
        Ok(())
    }

    /// Deletes every segment and the cursor (used when nothing is left).
    fn clear(&mut self) -> Result<(), SpoolError> {
        self.writer = None;
        while let Some(segment) = self.segments.pop_front() {
            remove(&segment.path)?;
            self.shared.release(segment.len, 0);
        }
        self.head = 0;
        self.remove_cursor()
    }

    /// Tells the shared status when this partition's oldest record was spooled.
    fn publish_oldest(&self) {
        let oldest = match self.segments.front() {
            Some(s) if self.records > 0 => read_range(&s.path, self.head, 16, s.len)
                .ok()
                .and_then(|b| frame::spooled_at(&b)),
            _ => None,
        };
        self.shared.set_oldest(&self.label, oldest);
    }

    fn segment_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.seg"))
    }

    fn read_cursor(&self) -> Option<Position> {
        let text = fs::read_to_string(self.dir.join("cursor")).ok()?;
        let (seq, pos) = text.trim().split_once(' ')?;
        Some(Position {
            seq: seq.parse().ok()?,
            pos: pos.parse().ok()?,
        })
    }

    fn write_cursor(&self) -> Result<(), SpoolError> {
        let (Some(front), tmp) = (self.segments.front(), self.dir.join("cursor.tmp")) else {
            return Ok(());
        };
        let path = self.dir.join("cursor");
        fs::write(&tmp, format!("{} {}\n", front.seq, self.head))
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| SpoolError::Io {
                what: "write",
                path,
                source: e,
            })
    }

    fn remove_cursor(&self) -> Result<(), SpoolError> {
        remove(&self.dir.join("cursor"))
    }
}

/// Frame start offsets of a recovered segment.
struct Counts {
    offsets: Vec<u64>,
}

impl Counts {
    /// Records that start before `pos`.
    fn records_before(&self, pos: u64) -> u64 {
        self.offsets.partition_point(|&o| o < pos) as u64
    }

    /// The start of the first frame at or after `pos` (a cursor always points at one).
    fn bytes_before(&self, pos: u64) -> u64 {
        let i = self.offsets.partition_point(|&o| o < pos);
        self.offsets.get(i).copied().unwrap_or(pos)
    }
}

/// Checks every frame of a segment and cuts the file after the last good one. Returns the
/// good length and where each frame starts.
fn recover_segment(path: &Path, last: bool, label: &str) -> Result<(u64, Counts), SpoolError> {
    let io_err = |what, e| SpoolError::Io {
        what,
        path: path.to_path_buf(),
        source: e,
    };
    let buf = fs::read(path).map_err(|e| io_err("read", e))?;
    let mut at = 0;
    let mut offsets = Vec::new();
    let mut damage = None;
    while at < buf.len() {
        match frame::decode(&buf[at..]) {
            Decoded::Frame(_, len) => {
                offsets.push(at as u64);
                at += len;
            }
            Decoded::Short => {
                damage = Some("cut short");
                break;
            }
            Decoded::Damaged(why) => {
                damage = Some(why);
                break;
            }
        }
    }
    if let Some(why) = damage {
        let cut = buf.len() - at;
        if last {
            tracing::warn!(spool = %label, segment = %path.display(), position = at, bytes_cut = cut,
                reason = why, "spool: cut a torn last record (a crash while writing it; it was never counted as stored)");
        } else {
            tracing::error!(spool = %label, segment = %path.display(), position = at, bytes_cut = cut,
                reason = why, "spool: damaged record inside an older segment; the rest of that segment is dropped (disk damage?)");
        }
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| io_err("open", e))?;
        file.set_len(at as u64).map_err(|e| io_err("truncate", e))?;
        file.sync_all().map_err(|e| io_err("sync", e))?;
    }
    Ok((at as u64, Counts { offsets }))
}

fn damaged(segment: &Segment, position: u64, reason: &'static str) -> SpoolError {
    SpoolError::Damaged {
        path: segment.path.clone(),
        position,
        reason,
    }
}

/// Reads `want` bytes at `start` (capped at `len`, the segment's good length).
fn read_range(path: &Path, start: u64, want: u64, len: u64) -> Result<Vec<u8>, SpoolError> {
    let io_err = |e| SpoolError::Io {
        what: "read",
        path: path.to_path_buf(),
        source: e,
    };
    let mut file = File::open(path).map_err(io_err)?;
    file.seek(SeekFrom::Start(start)).map_err(io_err)?;
    let n = want.min(len.saturating_sub(start));
    let mut buf = Vec::with_capacity(n as usize);
    file.take(n).read_to_end(&mut buf).map_err(io_err)?;
    Ok(buf)
}

fn remove(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SpoolError::Io {
            what: "remove",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::Io {
            what: "sync",
            path: dir.to_path_buf(),
            source: e,
        })
}
