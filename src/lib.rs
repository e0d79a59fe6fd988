//! # streamtract
//!
//! Real-time inference on Kafka streams, in pure Rust: records are read from Kafka topics,
//! decoded into tensors, run through a TensorFlow/Keras model exported to ONNX (executed
//! in-process by [tract](https://github.com/sonos/tract)), and the results are written back to
//! Kafka with the input's key and its source coordinates in headers.
//!
//! The crate is organised by stage:
//!
//! | module | job |
//! |---|---|
//! | [`kafka`] | connect, read partitions ([`kafka::Source`]), write ordered output ([`kafka::Sink`]), Java-compatible key partitioning |
//! | [`codec`] | record value → tensor row ([`codec::Decoder`]), model output → record value ([`codec::Encoder`]) |
//! | [`model`] | load ONNX, read its [`model::Signature`], run batches on worker threads ([`model::InferencePool`]) |
//! | [`pipeline`] | the stages composed: batching, ordering, error policy ([`pipeline::Pipeline`]) |
//! | [`metrics`] | Prometheus metrics and readiness of a running pipeline, served over HTTP |
//! | [`dataset`] | the tensorflow-io Kafka API: [`dataset::KafkaDataset`], batches for a model, [`dataset::OutputSequence`] |
//! | `train` | `model.fit` on a topic range: dense networks trained with burn, written as ONNX (feature `train`, on by default) |
//!
//! ```no_run
//! use streamtract::pipeline::{Pipeline, PipelineConfig};
//! # async fn demo() -> Result<(), streamtract::Error> {
//! let config = PipelineConfig::new(["127.0.0.1:9092"], "pixels", "predictions", "models/digits_cnn.onnx")
//!     .until_end(true);
//! let summary = Pipeline::connect(config).await?.run().await?;
//! println!("{} records in, {} predictions written", summary.records_in, summary.records_out);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod codec;
pub mod dataset;
pub mod kafka;
pub mod metrics;
pub mod model;
pub mod pipeline;
#[cfg(feature = "train")]
pub mod train;

pub use kafka::KafkaError;
pub use model::ModelError;
pub use pipeline::{ConfigError, Error, Result};
