//! What can go wrong talking to the broker.

/// Talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// No broker answered within the connect timeout.
    #[error("cannot reach Kafka at {brokers} within {timeout_s} s: {message} (check --brokers and that the broker is running)")]
    Unreachable {
        /// Bootstrap list.
        brokers: String,
        /// Seconds waited.
        timeout_s: u64,
        /// Last error seen.
        message: String,
    },
    /// A configured topic does not exist on the broker.
    #[error("topic `{topic}` does not exist on {brokers} ({role}); create it first{hint}")]
    UnknownTopic {
        /// Topic name.
        topic: String,
        /// Bootstrap list.
        brokers: String,
        /// `input` or `output`.
        role: &'static str,
        /// Extra hint (e.g. known topics).
        hint: String,
    },
    /// A configured partition does not exist.
    #[error("topic `{topic}` has no partition {partition} (it has {count})")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// Requested partition.
        partition: i32,
        /// Number of partitions the topic has.
        count: usize,
    },
    /// A request failed after retries.
    #[error("Kafka {operation} on {topic}/{partition} failed: {message}")]
    Request {
        /// What we were doing (fetch, produce, list offsets).
        operation: &'static str,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// rskafka's error.
        message: String,
    },
    /// Metadata request failed.
    #[error("Kafka metadata request failed: {0}")]
    Metadata(String),
    /// The broker rejected our TLS certificate check or SASL credentials, or we rejected its
    /// certificate.
    #[error(transparent)]
    Security(#[from] super::SecurityError),
    /// The output spool could not be opened or written.
    #[error(transparent)]
    Spool(Box<super::SpoolError>),
}

impl From<super::SpoolError> for KafkaError {
    fn from(e: super::SpoolError) -> KafkaError {
        KafkaError::Spool(Box::new(e))
    }
}

impl KafkaError {
    /// A failed request on one partition, with rskafka's (or the broker's) message.
    pub(crate) fn request(
        operation: &'static str,
        topic: &str,
        partition: i32,
        e: impl std::fmt::Display,
    ) -> KafkaError {
        KafkaError::Request {
            operation,
            topic: topic.to_string(),
            partition,
            message: e.to_string(),
        }
    }

    /// True for errors found while checking the configuration against the cluster (unreachable
    /// broker, unknown topic or partition), before anything was consumed.
    pub fn is_startup(&self) -> bool {
        matches!(
            self,
            KafkaError::Unreachable { .. }
                | KafkaError::UnknownTopic { .. }
                | KafkaError::UnknownPartition { .. }
                | KafkaError::Security(_)
        ) || matches!(self, KafkaError::Spool(e) if e.is_startup())
    }
}
