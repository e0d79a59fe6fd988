//! What can go wrong loading, checking or running a model.

use std::path::PathBuf;

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
