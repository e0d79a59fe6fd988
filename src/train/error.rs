//! Why training stopped.

use std::path::PathBuf;

use crate::dataset::DatasetError;

/// Everything that can stop [`fit`](super::fit). Bad records do not: they are counted, logged
/// and (with a dead-letter topic) written there, and training goes on without them.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// An option cannot work; nothing was read.
    #[error("invalid training option `{option}`: {reason}")]
    Option {
        /// The option (CLI flag without dashes, `_` for `-`).
        option: &'static str,
        /// What is wrong and what would work.
        reason: String,
    },
    /// Reading the records failed (Kafka unreachable, a topic or partition missing, …).
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// No record could be used for training.
    #[error("no usable training record in {what} ({rejected} rejected); check the topic specs, the format and the label")]
    NoData {
        /// The records' description (topic specs).
        what: String,
        /// Records read but rejected.
        rejected: u64,
    },
    /// The loss became NaN or infinite (Keras' `TerminateOnNaN`): the learning rate is likely
    /// too high or the features unscaled. The model written last (if any) is kept.
    #[error("the loss became {value} at epoch {epoch}, batch {batch}; training stopped (try a lower --learning-rate or --normalize){kept}", kept = match .kept { Some(p) => format!("; the last good model is still at {}", p.display()), None => String::new() })]
    NonFiniteLoss {
        /// The value seen.
        value: f32,
        /// 1-based epoch.
        epoch: usize,
        /// 1-based batch within the epoch.
        batch: usize,
        /// The model file written before, untouched.
        kept: Option<PathBuf>,
    },
    /// An initial model cannot be trained (an operator or layout the trainer does not know).
    #[error("cannot fine-tune {path}: {reason}")]
    Init {
        /// The ONNX file given as the initial model.
        path: PathBuf,
        /// The operator and node that stopped it, or what else is wrong.
        reason: String,
    },
    /// Writing the model file failed.
    #[error("cannot write the model to {path}: {source}")]
    Write {
        /// Target path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The training framework failed (a shape mismatch inside the network).
    #[error("training framework error: {0}")]
    Framework(String),
}
