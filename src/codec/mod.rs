//! Record values to tensor rows ([`Decoder`]), rows to batch tensors and back ([`Batch`],
//! [`split_outputs`]), and model outputs to record values ([`Encoder`]).
//!
//! Both are built from a model [`Signature`](crate::model::Signature) and checked against it
//! when built, so a format that cannot fit the model fails at start-up, not on the first record.

pub mod avro;
mod batch;
mod decode;
mod encode;
mod input;
pub mod registry;

pub use avro::AvroInput;
pub use batch::{split_outputs, Batch};
pub use decode::{DecodeError, Decoder, InputFormat, Row};
pub use encode::{Encoder, OutputFormat};
pub use registry::{RegistryConfig, RegistryError, SchemaRegistry};
