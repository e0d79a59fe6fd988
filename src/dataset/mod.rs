//! The tensorflow-io Kafka API in Rust: read topics as datasets, batch them for a model,
//! write results back in order.
//!
//! People who used `tensorflow_io.kafka` find the same concepts under the same names:
//!
//! | tensorflow-io | here |
//! |---|---|
//! | `KafkaDataset(topics, servers, group, eof, timeout)` | [`KafkaDataset::builder`] → [`KafkaDatasetBuilder::open`] (async [`Stream`](futures::Stream)) or [`open_blocking`](KafkaDatasetBuilder::open_blocking) ([`Iterator`]) |
//! | topic spec `topic:partition:offset:last` | [`TopicSpec`] (`last` is an inclusive end offset) |
//! | `stream_timeout` (of `KafkaGroupIODataset`) | [`KafkaDatasetBuilder::stream_timeout`] |
//! | `KafkaGroupIODataset(topics, group_id, servers, stream_timeout, message_poll_timeout, configuration)` | [`KafkaGroupDataset::builder`] → [`KafkaGroupDatasetBuilder::open`]; records are committed once acknowledged through an [`Acker`] |
//! | `dataset.map(decode)` | [`KafkaDataset::examples`] with a [`Preprocess`] (the pipeline's [decoders](crate::codec)) |
//! | `dataset.batch(n)` | [`KafkaDataset::batch`] → [`TensorBatch`]es (tract tensors and ndarray views, labels) |
//! | `KafkaBatchIODataset` | [`KafkaBatchDataset`] → [`MiniBatch`]es (over a group: [`KafkaGroupDataset::mini_batches`]) |
//! | `KafkaOutputSequence(topic, servers)`, `setitem`, `flush` | [`OutputSequence::connect`], [`set`](OutputSequence::set), [`flush`](OutputSequence::flush) |
//! | `write_kafka(message, topic, servers)` | [`KafkaWriter::write_kafka`] (one producer for every call), [`write_kafka`] (many messages) |
//! | `configuration=[...]` (librdkafka `key=value`: `security.protocol`, `ssl.ca.location`, `sasl.*`, ...) | [`KafkaDatasetBuilder::configuration`], [`KafkaGroupDatasetBuilder::configuration`], [`OutputConfig::configuration`] (then [`OutputSequence::open`]); the connection keys are [`Connection::configuration`]'s. Unknown keys are refused, not ignored |
//!
//! and not its known problems: every record carries its key, partition, offset, timestamp and
//! headers; a bare topic reads every partition; end-of-stream rules are stated (see
//! [`KafkaDataset`]); the last partial batch is kept and an empty batch never made; a record
//! that cannot be decoded is reported, never dropped silently; the writer reuses one producer,
//! keeps keys and partitions by key; `flush` waits for the broker's acknowledgements.
//!
//! The consumer-group reader, [`KafkaGroupDataset`], commits only records the program
//! acknowledged ([`Acker`]), where tensorflow-io auto-committed records as they were fetched
//! and lost them in a crash.
//!
//! The program tensorflow-io users know, in Rust (see `examples/seed.rs` for the whole of it):
//!
//! ```no_run
//! use futures::StreamExt;
//! use streamtract::codec::InputFormat;
//! use streamtract::dataset::{KafkaDataset, OutputSequence, Preprocess};
//! use streamtract::model::Model;
//! use streamtract::pipeline::split_outputs;
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let model = Model::load("models/digits_mlp.onnx")?;
//! let preprocess = Preprocess::for_model(&model, InputFormat::Csv { delimiter: b',' })?;
//! let dataset = KafkaDataset::builder(["pixels"]).servers("localhost:9092").group("").eof(true);
//! let mut batches = dataset.open().await?.batch(32, preprocess);
//! let mut sequence = OutputSequence::connect("localhost:9092", "predictions").await?;
//! let mut runner = model.runner();
//! let mut index = 0;
//! while let Some(batch) = batches.next().await {
//!     let batch = batch?;
//!     let outputs = runner.run(batch.inputs)?;
//!     for row in split_outputs(&outputs, batch.records.len())? {
//!         let class = row[0].iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |m| m.0);
//!         sequence.set(index, class.to_string()).await?;
//!         index += 1;
//!     }
//! }
//! sequence.flush().await?;
//! # Ok(()) }
//! ```

mod acker;
mod batch;
mod blocking;
mod connection;
mod error;
mod group_dataset;
mod kafka_dataset;
mod librdkafka;
mod mini_batch;
mod origin;
mod output;
mod preprocess;
mod spec;
mod timer;

pub use acker::{Acker, Committed};
pub use batch::{Batches, TensorBatch};
pub use blocking::Blocking;
pub use connection::Connection;
pub use error::DatasetError;
pub use group_dataset::{
    BlockingKafkaGroupDataset, KafkaGroupDataset, KafkaGroupDatasetBuilder,
    DEFAULT_COMMIT_INTERVAL, DEFAULT_MAX_UNCOMMITTED, DEFAULT_MESSAGE_POLL_TIMEOUT,
};
pub use kafka_dataset::{BlockingKafkaDataset, KafkaDataset, KafkaDatasetBuilder, DEFAULT_TIMEOUT};
pub use mini_batch::{KafkaBatchDataset, MiniBatch};
pub use output::{
    write_kafka, BlockingOutputSequence, KafkaWriter, OutputConfig, OutputItem, OutputSequence,
};
pub use preprocess::{Example, Examples, Label, Preprocess};
pub use spec::{SpecOffset, TopicSpec};

/// Records carry their full coordinates; re-exported for convenience.
pub use crate::kafka::SourceRecord;
