//! What decoders share: the layout of one model input in a row, and why a record could not
//! become a row. Its own file so that the format modules (decode, avro) use it without
//! importing each other.

/// One model input: its name, the shape of one row (without the batch dimension) and the
/// number of values in it.
#[derive(Debug, Clone)]
pub(super) struct InputLayout {
    pub(super) name: String,
    pub(super) shape: Vec<usize>,
    pub(super) len: usize,
}

/// Why one record could not become a row. Each message fits on one line, since it also travels
/// in dead-letter headers and logs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The record has no value or an empty one.
    #[error("empty value")]
    Empty,
    /// The value is larger than the configured maximum.
    #[error("value of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Bytes in the value.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// A text format got bytes that are not UTF-8.
    #[error("value is not valid UTF-8 (at byte {0})")]
    NotUtf8(usize),
    /// Wrong number of values.
    #[error("expected {expected} values for {what}, found {found}")]
    Count {
        /// Which input(s).
        what: String,
        /// Values the shape needs.
        expected: usize,
        /// Values in the record.
        found: usize,
    },
    /// A field is not a number.
    #[error("value {index} is not a number: `{found}`")]
    NotANumber {
        /// Zero-based position.
        index: usize,
        /// The offending text (shortened).
        found: String,
    },
    /// NaN or infinity.
    #[error("value {index} is not finite ({found})")]
    NotFinite {
        /// Zero-based position.
        index: usize,
        /// `NaN`, `inf` or `-inf`.
        found: String,
    },
    /// JSON could not be parsed.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// JSON parsed but does not have the input's shape.
    #[error("input `{input}`: {message}")]
    Shape {
        /// Input name.
        input: String,
        /// What was wrong.
        message: String,
    },
    /// The JSON object lacks an input.
    #[error("object has no field `{0}` (the model's inputs are: {1})")]
    MissingField(String, String),
    /// Raw bytes of the wrong length.
    #[error("expected {expected} bytes ({values} float32 values), found {found}")]
    RawLength {
        /// Bytes needed.
        expected: usize,
        /// Values needed.
        values: usize,
        /// Bytes in the record.
        found: usize,
    },
    /// A Confluent wire-format value without its frame.
    #[error("not in the Confluent wire format: {0}")]
    Wire(String),
    /// The writer schema of a Confluent value is unknown, cannot be fetched, or cannot feed
    /// the model.
    #[error("schema id {id}: {message}")]
    Schema {
        /// The id in the value's frame.
        id: u32,
        /// What went wrong (the registry's answer, or which input has no field).
        message: String,
    },
    /// The bytes are not a datum of the writer schema (truncated, or another schema).
    #[error("invalid Avro: {0}")]
    Avro(String),
    /// An Avro field does not fit its model input (null, a string, the wrong shape).
    #[error("Avro field `{field}` {message}")]
    AvroField {
        /// Field name.
        field: String,
        /// What does not fit.
        message: String,
    },
}
