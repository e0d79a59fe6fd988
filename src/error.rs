//! Errors of the library, one enum per concern, gathered in [`Error`].
//!
//! Every message is written for the person running the pipeline: it names the thing that is
//! wrong (a config field, a model input, a topic), what was expected and what was found.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid; nothing was consumed.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The model could not be loaded or does not fit the configuration.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Talking to Kafka failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// A consumer-group or offset operation failed.
    #[error(transparent)]
    Group(#[from] crate::kafka::group::GroupError),
    /// A record could not be decoded and the error policy says stop.
    #[error("stopping on a bad record ({policy}): {source}")]
    BadRecord {
        /// Where the record came from and why it was rejected.
        source: crate::codec::DecodeError,
        /// The policy that made this fatal.
        policy: &'static str,
    },
    /// The model failed on a record and the error policy says stop.
    #[error("stopping on a record the model failed on ({policy}): {topic}/{partition}@{offset}: {source}")]
    ModelRejected {
        /// Source topic of the record.
        topic: String,
        /// Source partition.
        partition: i32,
        /// Source offset.
        offset: i64,
        /// What the model reported.
        source: ModelError,
        /// The policy that made this fatal.
        policy: &'static str,
    },
    /// A worker thread or task ended unexpectedly.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A configuration field holds something that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field has a value of the wrong form.
    #[error("`{field}`: expected {expected}, found `{found}`")]
    Invalid {
        /// The config key / flag name (TOML spelling).
        field: &'static str,
        /// What a valid value looks like.
        expected: String,
        /// What was given.
        found: String,
    },
    /// A required field is missing from both the flags and the file.
    #[error("`{field}` is required (flag --{flag} or `{field} = ...` in the config file)")]
    Missing {
        /// TOML key.
        field: &'static str,
        /// Flag spelling.
        flag: &'static str,
    },
    /// The config file could not be read or parsed.
    #[error("config file {path}: {message}")]
    File {
        /// The file given with `--config`.
        path: PathBuf,
        /// What went wrong, including the TOML parser's location.
        message: String,
    },
    /// A TLS or SASL setting names a file that is missing or malformed, or cannot work.
    #[error(transparent)]
    Security(#[from] crate::kafka::SecurityError),
}

/// Loading or checking a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model file does not exist or cannot be read.
    #[error("model file {path}: {message} (check `model` / --model)")]
    Unreadable {
        /// Path given.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// tract could not parse or optimise the graph.
    #[error("model {path} could not be loaded by tract: {message}")]
    Load {
        /// Path given.
        path: PathBuf,
        /// tract's error chain.
        message: String,
    },
    /// The model's signature is not supported or does not match the decoder configuration.
    #[error("model {model}: {message}")]
    Signature {
        /// Model file name.
        model: String,
        /// What does not match.
        message: String,
    },
    /// Running the model on a batch failed.
    #[error("inference failed: {0}")]
    Run(String),
    /// tract crashed while running a batch (it trusts some input values, such as lookup
    /// indices, without checking them); the worker recovered.
    #[error("the model crashed on this input (tract panicked: {0})")]
    Panicked(String),
    /// The inference threads are gone; no further batch can run.
    #[error("inference stopped: {0}")]
    Stopped(String),
}

impl ModelError {
    /// True when the failure may come from the values of the batch, so that running its
    /// rows one by one can tell the bad records from the good ones.
    pub fn depends_on_input(&self) -> bool {
        matches!(self, ModelError::Run(_) | ModelError::Panicked(_))
    }
}

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
    Security(#[from] crate::kafka::SecurityError),
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
        )
    }
}
