//! One spooled record on disk: a length, a CRC and the record.
//!
//! ```text
//! u32 LE  payload length
//! u32 LE  CRC-32C of the payload (the checksum Kafka's own record batches use)
//! payload i64 spooled-at (ms since the epoch), i64 record timestamp (ms),
//!         i32 key length (-1: no key), key, u32 value length, value,
//!         u32 header count, then per header: u32 name length, name, u32 value length, value
//! ```
//!
//! A frame is either whole and checks out, or it is where the good data ends: a crash while
//! appending leaves a frame cut short or with a checksum that does not match, and recovery cuts
//! the file there.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rskafka::record::Record;

/// Bytes before the payload.
pub(crate) const HEADER_BYTES: usize = 8;

/// The largest payload a frame may claim. Larger lengths are treated as damage: no output
/// record the sink writes comes near it (produce requests are bounded far below).
pub(crate) const MAX_PAYLOAD: usize = 256 << 20;

/// A record read back from the spool.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spooled {
    /// When it was written to the spool (for the oldest-record age).
    pub spooled_at_ms: i64,
    /// The record as it goes to the output cluster.
    pub record: Record,
}

/// Appends the frame of `record` to `out`; returns the frame's length.
pub(crate) fn encode(record: &Record, spooled_at_ms: i64, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    out.extend_from_slice(&spooled_at_ms.to_le_bytes());
    out.extend_from_slice(&record.timestamp.timestamp_millis().to_le_bytes());
    match &record.key {
        Some(key) => {
            out.extend_from_slice(&(key.len() as i32).to_le_bytes());
            out.extend_from_slice(key);
        }
        None => out.extend_from_slice(&(-1i32).to_le_bytes()),
    }
    let value = record.value.as_deref().unwrap_or_default();
    put_bytes(out, value);
    out.extend_from_slice(&(record.headers.len() as u32).to_le_bytes());
    for (name, value) in &record.headers {
        put_bytes(out, name.as_bytes());
        put_bytes(out, value);
    }
    let payload_len = out.len() - start - HEADER_BYTES;
    let crc = crc32c::crc32c(&out[start + HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// The length a frame of `record` will have.
pub(crate) fn encoded_len(record: &Record) -> usize {
    HEADER_BYTES
        + 8
        + 8
        + 4
        + record.key.as_ref().map_or(0, Vec::len)
        + 4
        + record.value.as_ref().map_or(0, Vec::len)
        + 4
        + record
            .headers
            .iter()
            .map(|(n, v)| 8 + n.len() + v.len())
            .sum::<usize>()
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// What is at the start of `buf`.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    /// A whole, checked frame of this many bytes.
    Frame(Spooled, usize),
    /// `buf` ends inside a frame (or is empty): read more, or, at the end of the file, a torn
    /// tail.
    Short,
    /// Not a frame: a bad length or checksum, or a payload that does not parse.
    Damaged(&'static str),
}

/// Reads the frame at the start of `buf`.
pub(crate) fn decode(buf: &[u8]) -> Decoded {
    if buf.len() < HEADER_BYTES {
        return Decoded::Short;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len > MAX_PAYLOAD {
        return Decoded::Damaged("length out of range");
    }
    let Some(payload) = buf.get(HEADER_BYTES..HEADER_BYTES + len) else {
        return Decoded::Short;
    };
    if crc32c::crc32c(payload) != crc {
        return Decoded::Damaged("checksum mismatch");
    }
    match parse_payload(payload) {
        Some(spooled) => Decoded::Frame(spooled, HEADER_BYTES + len),
        None => Decoded::Damaged("payload does not parse"),
    }
}

/// Reads only the spooled-at time of the frame at the start of `buf` (no checksum: used on
/// frames already checked when the spool was opened or written).
pub(crate) fn spooled_at(buf: &[u8]) -> Option<i64> {
    let bytes = buf.get(HEADER_BYTES..HEADER_BYTES + 8)?;
    Some(i64::from_le_bytes(bytes.try_into().ok()?))
}

fn parse_payload(payload: &[u8]) -> Option<Spooled> {
    let mut r = Reader(payload);
    let spooled_at_ms = r.i64()?;
    let timestamp: DateTime<Utc> = DateTime::from_timestamp_millis(r.i64()?)?;
    let key_len = r.i32()?;
    let key = match key_len {
        -1 => None,
        n if n >= 0 => Some(r.take(n as usize)?.to_vec()),
        _ => return None,
    };
    let value = r.bytes()?.to_vec();
    let count = r.u32()? as usize;
    let mut headers = BTreeMap::new();
    for _ in 0..count {
        let name = String::from_utf8(r.bytes()?.to_vec()).ok()?;
        let value = r.bytes()?.to_vec();
        headers.insert(name, value);
    }
    if !r.0.is_empty() {
        return None;
    }
    Some(Spooled {
        spooled_at_ms,
        record: Record {
            key,
            value: Some(value),
            headers,
            timestamp,
        },
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_le_bytes)
    }

    fn i32(&mut self) -> Option<i32> {
        self.array().map(i32::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: Option<&str>, value: &str) -> Record {
        let mut headers = BTreeMap::new();
        headers.insert("streamtract.source".to_string(), b"in:0:7:1:m".to_vec());
        Record {
            key: key.map(|k| k.as_bytes().to_vec()),
            value: Some(value.as_bytes().to_vec()),
            headers,
            timestamp: DateTime::from_timestamp_millis(1_733_400_000_123).unwrap(),
        }
    }

    #[test]
    fn a_frame_reads_back_as_written() {
        for r in [record(Some("k1"), "{\"p\":[0.5]}"), record(None, "")] {
            let mut buf = Vec::new();
            let n = encode(&r, 42, &mut buf);
            assert_eq!(n, buf.len());
            assert_eq!(n, encoded_len(&r));
            assert_eq!(spooled_at(&buf), Some(42));
            match decode(&buf) {
                Decoded::Frame(s, len) => {
                    assert_eq!(len, n);
                    assert_eq!(s.spooled_at_ms, 42);
                    assert_eq!(s.record, r);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_cut_frame_is_short_and_a_flipped_byte_is_damage() {
        let mut buf = Vec::new();
        let n = encode(&record(Some("k"), "value"), 1, &mut buf);
        for cut in 0..n {
            assert_eq!(decode(&buf[..cut]), Decoded::Short, "cut at {cut}");
        }
        for i in HEADER_BYTES..n {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert_eq!(
                decode(&bad),
                Decoded::Damaged("checksum mismatch"),
                "byte {i}"
            );
        }
        let mut long = buf.clone();
        long[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&long), Decoded::Damaged("length out of range"));
    }
}
