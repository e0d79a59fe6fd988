//! Kafka I/O on top of rskafka: connecting, reading partitions ([`Source`]) and writing
//! ordered, acknowledged output ([`Sink`]).

mod client;
pub mod group;
mod partitioner;
mod sink;
mod source;

pub use client::{connect, topic_partitions, KafkaConfig};
pub use partitioner::{murmur2, partition_for_key};
pub use sink::{OutputRecord, Sink, SinkConfig, SourceCoordinates};
pub use source::{
    PartitionRange, Source, SourceConfig, SourceRecord, StartPosition, TopicSelection,
};
