//! Kafka I/O on top of rskafka: connecting, reading partitions ([`Source`]) and writing
//! ordered, acknowledged output ([`Sink`]).

mod client;
pub mod consumer;
mod error;
pub mod group;
mod lag;
pub mod offsets;
mod pacing;
mod partitioner;
mod record;
pub mod security;
mod sink;
mod source;
pub mod spool;
pub mod stats;

pub use client::{connect, parse_brokers, topic_partitions, KafkaConfig};
pub use consumer::{Consumer, ConsumerError};
pub use error::KafkaError;
pub use lag::{ConsumerLag, PartitionLag};
pub use offsets::OffsetTracker;
pub use pacing::FetchEvidence;
pub use partitioner::{murmur2, partition_for_key};
pub use security::{Password, SaslConfig, SaslMechanism, SecurityConfig, SecurityError, TlsConfig};
pub use sink::{OutputRecord, Sink, SinkConfig, SourceCoordinates};
pub use source::{
    PartitionRange, Source, SourceConfig, SourceRecord, StartPosition, TopicSelection,
    LARGEST_FETCH,
};
pub use spool::{Spool, SpoolConfig, SpoolError, SpoolReading, SpoolStatus};
pub use stats::{RequestCounts, RequestStats};
