//! The one error type of the dataset API.

use crate::codec::DecodeError;
use crate::kafka::group::GroupError;
use crate::kafka::KafkaError;
use crate::model::ModelError;

/// What can go wrong reading a [`KafkaDataset`](super::KafkaDataset), preparing its records for
/// a model, or writing through an [`OutputSequence`](super::OutputSequence) /
/// [`KafkaWriter`](super::KafkaWriter).
///
/// Every message names the thing at fault (a topic spec, a record's coordinates, an index) and
/// what to do about it. Per-record problems ([`Decode`](Self::Decode), [`Label`](Self::Label))
/// do not end a stream; Kafka errors do, after they were yielded.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A topic spec could not be parsed (tensorflow-io: `InvalidArgument: Invalid parameters`).
    #[error("topic spec `{spec}`: {reason} (expected `topic[:partition[:offset[:last]]]`, e.g. `pixels:0:0:99`)")]
    InvalidSpec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A topic spec names an offset the partition does not hold.
    #[error("topic spec `{spec}`: offset {offset} is outside partition {partition}'s range {low}..={high}; use an offset in that range, or `earliest` (-2) / `latest` (-1)")]
    OffsetOutOfRange {
        /// The spec as given.
        spec: String,
        /// Partition.
        partition: i32,
        /// Requested start offset.
        offset: i64,
        /// Oldest offset still kept.
        low: i64,
        /// Offset the next record will get (the high watermark).
        high: i64,
    },
    /// An option has a value that cannot work.
    #[error("`{option}`: {reason}")]
    InvalidOption {
        /// Option name (the builder method).
        option: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// Talking to Kafka failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// A consumer-group operation of a [`KafkaGroupDataset`](super::KafkaGroupDataset) (join,
    /// rejoin, committed offsets, commit, leave) failed.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// [`Acker::commit`](super::Acker::commit) was called after the
    /// [`KafkaGroupDataset`](super::KafkaGroupDataset) was closed (or its background task
    /// stopped).
    #[error("group dataset of group `{group}` is closed: nothing more can be committed (acknowledge and commit before `close`)")]
    GroupClosed {
        /// The group id.
        group: String,
    },
    /// The model or its signature does not fit.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A record's value could not be decoded into a row for the model.
    #[error("record {topic}/{partition}@{offset}: {source}")]
    Decode {
        /// Topic of the record.
        topic: String,
        /// Partition of the record.
        partition: i32,
        /// Offset of the record.
        offset: i64,
        /// Why the value does not fit.
        source: DecodeError,
    },
    /// A record's label (key, header or field) is missing or not a number.
    #[error("record {topic}/{partition}@{offset}: label {label}: {reason}")]
    Label {
        /// Topic of the record.
        topic: String,
        /// Partition of the record.
        partition: i32,
        /// Offset of the record.
        offset: i64,
        /// Where the label was taken from.
        label: String,
        /// What was wrong with it.
        reason: String,
    },
    /// [`OutputSequence::set`](super::OutputSequence::set) got an index that already holds an
    /// item waiting for a lower index.
    #[error("output sequence: index {index} was already set (every index may be set once)")]
    DuplicateIndex {
        /// The index.
        index: u64,
    },
    /// [`OutputSequence::set`](super::OutputSequence::set) got an index whose record was
    /// already written.
    #[error("output sequence: index {index} is already written (indexes 0..{written} are written; every index may be set once)")]
    StaleIndex {
        /// The index.
        index: u64,
        /// Length of the written prefix.
        written: u64,
    },
    /// Too many items wait for a lower index that was never set.
    #[error("output sequence: {pending} items wait for index {missing}, the limit is {max}; set index {missing} (or raise `max_pending`)")]
    TooManyPending {
        /// Items waiting.
        pending: usize,
        /// The lowest index not set yet.
        missing: u64,
        /// The configured limit.
        max: usize,
    },
    /// [`OutputSequence::close`](super::OutputSequence::close) found items that could not be
    /// written because a lower index was never set.
    #[error(
        "output sequence: {pending} items were never written because index {missing} was never set"
    )]
    Gap {
        /// Items left unwritten.
        pending: usize,
        /// The lowest index not set.
        missing: u64,
    },
    /// Records were not acknowledged in time.
    #[error("{unacked} records written to `{topic}` were not acknowledged within {waited_s} s (is the broker reachable? raise `flush_timeout` for slow clusters)")]
    FlushTimeout {
        /// Output topic.
        topic: String,
        /// Records still waiting for an acknowledgement.
        unacked: u64,
        /// Seconds waited.
        waited_s: u64,
    },
    /// The writer stopped after an earlier error and cannot write any more.
    #[error("writer for `{topic}` stopped after an earlier error: {message}")]
    WriterFailed {
        /// Output topic.
        topic: String,
        /// The earlier error.
        message: String,
    },
    /// A blocking method was called from inside an async runtime, where it would deadlock.
    #[error("the blocking API was used inside an async runtime; there, use the async API (`open().await`, `StreamExt::next`) instead")]
    BlockingInAsync,
    /// The runtime behind the blocking API could not be started.
    #[error("cannot start the runtime for the blocking API: {0}")]
    Runtime(String),
}

impl DatasetError {
    /// True for errors about one record (decode, label): the stream goes on after them.
    pub fn is_record_error(&self) -> bool {
        matches!(
            self,
            DatasetError::Decode { .. } | DatasetError::Label { .. }
        )
    }
}

impl From<crate::kafka::ConsumerError> for DatasetError {
    fn from(e: crate::kafka::ConsumerError) -> DatasetError {
        match e {
            crate::kafka::ConsumerError::Kafka(e) => DatasetError::Kafka(e),
            crate::kafka::ConsumerError::Group(e) => DatasetError::Group(e),
        }
    }
}
