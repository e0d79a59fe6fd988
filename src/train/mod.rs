//! Learning on the stream: Keras' `model.fit` over a Kafka topic range, in pure Rust, written
//! out as a standard ONNX model that `streamtract run` (or onnxruntime, or anything else)
//! serves.
//!
//! ```text
//!  topic range ──► KafkaRecords ──► RowFormat ──► survey ──► adapt ──► epochs: shuffle ──► batch ──► step
//!  (replayed       (one pass per    (decode +     (features,  (mean,    (tf.data's buffer)   (burn: autodiff,
//!   each pass)      epoch)           label)        classes)    std)                           Adam / SGD)
//!                                                                                                 │
//!                      DenseModel::write (ONNX, atomic) ◄── checkpoint after every epoch ◄────────┘
//! ```
//!
//! The network is trained with [burn](https://burn.dev) on its pure-Rust CPU backend; tract
//! stays the engine that serves. Like `model.fit`, [`fit`] reads the training records once per
//! epoch (plus one pass to find the feature count and the classes, and one to adapt the
//! normalisation), shuffles them through a bounded buffer, and reports each epoch's loss and
//! accuracy (or mean absolute error) on the training and validation records.
//!
//! Records that cannot be used (a malformed row, a missing label, a label that is not a class)
//! never reach a batch: each is reported once through [`Event::Rejected`] (the CLI writes it
//! to a dead-letter topic) and counted in [`History::rejected`]. A loss that turns NaN stops
//! training ([`TrainError::NonFiniteLoss`]) and leaves the last checkpoint untouched.
//!
//! ```no_run
//! use streamtract::codec::InputFormat;
//! use streamtract::dataset::{KafkaDataset, Label};
//! use streamtract::train::{fit, KafkaRecords, RowFormat, Task, TrainOptions};
//! # fn demo() -> Result<(), streamtract::train::TrainError> {
//! let mut records = KafkaRecords::new(KafkaDataset::builder(["digits"]).servers("127.0.0.1:9092"));
//! let rows = RowFormat::new(InputFormat::Csv { delimiter: b',' }, Label::CsvColumn(0));
//! let options = TrainOptions::new(Task::Classify { classes: None })
//!     .hidden_layers([64, 32])
//!     .epochs(20);
//! let fitted = fit(&mut records, &rows, &options, &mut |_event| Ok(()))?;
//! fitted.model.write("digits.onnx".as_ref())?;
//! # Ok(()) }
//! ```

mod data;
mod error;
mod fit;
mod init;
mod network;
mod online;
mod onnx;
mod options;

pub use data::{KafkaRecords, MemoryRecords, Part, RecordSource, RowFormat};
pub use error::TrainError;
pub use fit::{fit, EpochStats, Event, Fitted, History};
pub use online::{follow, OnlineOptions, OnlineSummary};
pub use onnx::{
    ConvWeights, DenseModel, DenseWeights, Head, ImageBlock, ImageLayers, InputOp, Template, OPSET,
    VERSION_KEY,
};
pub use options::{Activation, ConvBlock, Loss, Optimizer, Task, TrainOptions, Validation};
