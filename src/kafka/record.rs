//! What a [`Sink`](super::Sink) writes: an output record and the input record it answers.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rskafka::record::Record;

/// Where an output record came from; reported back when the broker acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceCoordinates {
    /// Input topic.
    pub topic: Arc<str>,
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
    /// The input record's timestamp (end-to-end latency is measured from it).
    pub timestamp: DateTime<Utc>,
}

/// A record to write.
#[derive(Debug, Clone)]
pub struct OutputRecord {
    /// Record key; also decides the partition (murmur2, like the Java client).
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub value: Vec<u8>,
    /// Record headers.
    pub headers: BTreeMap<String, Vec<u8>>,
    /// Record timestamp.
    pub timestamp: DateTime<Utc>,
    /// The input record this output answers, if any.
    pub source: Option<SourceCoordinates>,
}

impl OutputRecord {
    /// The record as it goes on the wire, and where it came from.
    pub(crate) fn into_parts(self) -> (Record, Option<SourceCoordinates>) {
        let record = Record {
            key: self.key,
            value: Some(self.value),
            headers: self.headers,
            timestamp: self.timestamp,
        };
        (record, self.source)
    }
}
