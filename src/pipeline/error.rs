//! Errors of the library, one enum per concern, gathered in [`Error`].
//!
//! Every message is written for the person running the pipeline: it names the thing that is
//! wrong (a config field, a model input, a topic), what was expected and what was found.

use std::path::PathBuf;

use crate::kafka::KafkaError;
use crate::model::ModelError;

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
    /// The schema registry could not be reached or refused a request at start-up.
    #[error(transparent)]
    Registry(#[from] crate::codec::RegistryError),
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

impl From<crate::kafka::ConsumerError> for Error {
    fn from(e: crate::kafka::ConsumerError) -> Error {
        match e {
            crate::kafka::ConsumerError::Kafka(e) => Error::Kafka(e),
            crate::kafka::ConsumerError::Group(e) => Error::Group(e),
        }
    }
}
