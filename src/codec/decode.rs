//! Decoders: one record value → one row of every model input.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use super::avro::{AvroDecoder, AvroInput};
pub use super::input::DecodeError;
use super::input::InputLayout;
use crate::model::ModelError;
use crate::model::Signature;

/// How record values are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputFormat {
    /// Numbers separated by `delimiter`, filling the inputs row-major, in signature order.
    Csv {
        /// Field separator, `,` by default.
        delimiter: u8,
    },
    /// A (nested) array of numbers shaped like the single input (a flat array of the same
    /// length is accepted too), or an object with one such array per input name.
    Json,
    /// Little-endian float32 bytes of every input in signature order, exact length.
    Raw,
    /// Avro records, bare (`avro`) or in Confluent's wire format (`confluent-avro`); fields
    /// map to inputs by name (see [`AvroInput`]).
    Avro(AvroInput),
}

impl FromStr for InputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "csv" => Ok(InputFormat::Csv { delimiter: b',' }),
            "json" => Ok(InputFormat::Json),
            "raw" => Ok(InputFormat::Raw),
            "avro" | "confluent-avro" => Err(format!(
                "{s} needs a schema: build it with InputFormat::Avro (the CLI's `schema` and `schema_registry` settings)"
            )),
            _ => Err("one of csv, json, raw, avro, confluent-avro".into()),
        }
    }
}

impl fmt::Display for InputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InputFormat::Csv { .. } => "csv",
            InputFormat::Json => "json",
            InputFormat::Raw => "raw",
            InputFormat::Avro(a) => a.name(),
        })
    }
}

/// One record's worth of every model input, in signature order, each flattened row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// One vector per model input.
    pub values: Vec<Vec<f32>>,
}

/// Turns record values into [`Row`]s for one model.
///
/// ```
/// use streamtract::codec::{Decoder, InputFormat};
/// use streamtract::model::{Dim, ElementType, Signature, TensorSpec};
/// let sig = Signature {
///     inputs: vec![TensorSpec { name: "x".into(), element_type: ElementType::F32,
///                               shape: vec![Dim::Symbolic("N".into()), Dim::Fixed(3)] }],
///     outputs: vec![],
/// };
/// let decoder = Decoder::new(InputFormat::Csv { delimiter: b',' }, &sig, "m.onnx").unwrap();
/// assert_eq!(decoder.decode(b"1,2.5,-3").unwrap().values, vec![vec![1.0, 2.5, -3.0]]);
/// assert!(decoder.decode(b"1,2").is_err());
/// ```
#[derive(Debug, Clone)]
pub struct Decoder {
    format: InputFormat,
    inputs: Vec<InputLayout>,
    total_len: usize,
    avro: Option<AvroDecoder>,
}

impl Decoder {
    /// Builds a decoder for `signature`, failing if the format cannot feed the model.
    pub fn new(
        format: InputFormat,
        signature: &Signature,
        model: &str,
    ) -> Result<Decoder, ModelError> {
        let mut inputs = Vec::new();
        for spec in &signature.inputs {
            let shape = spec.row_shape().ok_or_else(|| ModelError::Signature {
                model: model.into(),
                message: format!("input `{spec}` has a symbolic row dimension"),
            })?;
            let len = shape.iter().product();
            inputs.push(InputLayout {
                name: spec.name.clone(),
                shape,
                len,
            });
        }
        if inputs.is_empty() {
            return Err(ModelError::Signature {
                model: model.into(),
                message: "the model has no inputs".into(),
            });
        }
        let total_len = inputs.iter().map(|i| i.len).sum();
        let avro = match &format {
            InputFormat::Avro(input) => Some(
                AvroDecoder::new(input.clone(), inputs.clone()).map_err(|message| {
                    ModelError::Signature {
                        model: model.into(),
                        message,
                    }
                })?,
            ),
            _ => None,
        };
        Ok(Decoder {
            format,
            inputs,
            total_len,
            avro,
        })
    }

    /// The format this decoder reads.
    pub fn format(&self) -> &InputFormat {
        &self.format
    }

    /// Confluent Avro: fetches the writer schemas of `values` that are not cached yet, so that
    /// [`decode`](Self::decode) (synchronous) finds them. A registry that fails is retried
    /// with backoff for its `retry_for`; the records whose schema it could not give then fail
    /// to decode with the reason, until the next call. Other formats: nothing to do.
    pub async fn resolve_schemas<'a>(&self, values: impl IntoIterator<Item = &'a [u8]>) {
        if let Some(avro) = &self.avro {
            avro.resolve(values).await;
        }
    }

    /// Confluent Avro: whether records written with `schema` (e.g. the latest version
    /// registered for the input topic) can feed the model; the error names the input that
    /// has no field and lists the record's fields.
    pub fn check_avro_schema(&self, schema: apache_avro::Schema) -> Result<(), String> {
        match &self.avro {
            Some(avro) => avro.check(schema),
            None => Ok(()),
        }
    }

    /// The Avro settings, for the Avro formats.
    pub fn avro_input(&self) -> Option<&AvroInput> {
        self.avro.as_ref().map(|a| a.input())
    }

    /// Decodes one record value.
    pub fn decode(&self, value: &[u8]) -> Result<Row, DecodeError> {
        if value.is_empty() {
            return Err(DecodeError::Empty);
        }
        match &self.format {
            InputFormat::Csv { delimiter } => self.decode_csv(value, *delimiter),
            InputFormat::Json => self.decode_json(value),
            InputFormat::Raw => self.decode_raw(value),
            InputFormat::Avro(_) => match &self.avro {
                Some(avro) => Ok(Row {
                    values: avro.decode(value)?,
                }),
                None => Err(DecodeError::Avro("no Avro decoder".into())),
            },
        }
    }

    fn what(&self) -> String {
        let parts: Vec<String> = self
            .inputs
            .iter()
            .map(|i| format!("`{}` {:?}", i.name, i.shape))
            .collect();
        parts.join(" + ")
    }

    fn split_flat(&self, flat: Vec<f32>) -> Row {
        if self.inputs.len() == 1 {
            return Row { values: vec![flat] };
        }
        let mut values = Vec::with_capacity(self.inputs.len());
        let mut start = 0;
        for input in &self.inputs {
            values.push(flat[start..start + input.len].to_vec());
            start += input.len;
        }
        Row { values }
    }

    fn decode_csv(&self, value: &[u8], delimiter: u8) -> Result<Row, DecodeError> {
        let text = std::str::from_utf8(value).map_err(|e| DecodeError::NotUtf8(e.valid_up_to()))?;
        let text = text.trim_end_matches(['\n', '\r']);
        let mut flat = Vec::with_capacity(self.total_len);
        let mut found = 0;
        for (index, field) in text.split(delimiter as char).enumerate() {
            found += 1;
            if found > self.total_len {
                continue; // keep counting for the error message
            }
            flat.push(parse_number(field.trim(), index)?);
        }
        if found != self.total_len {
            return Err(DecodeError::Count {
                what: self.what(),
                expected: self.total_len,
                found,
            });
        }
        Ok(self.split_flat(flat))
    }

    fn decode_raw(&self, value: &[u8]) -> Result<Row, DecodeError> {
        let expected = self.total_len * 4;
        if value.len() != expected {
            return Err(DecodeError::RawLength {
                expected,
                values: self.total_len,
                found: value.len(),
            });
        }
        let mut flat = Vec::with_capacity(self.total_len);
        for (index, chunk) in value.chunks_exact(4).enumerate() {
            let v = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            check_finite(v, index)?;
            flat.push(v);
        }
        Ok(self.split_flat(flat))
    }

    fn decode_json(&self, value: &[u8]) -> Result<Row, DecodeError> {
        let parsed: Value =
            serde_json::from_slice(value).map_err(|e| DecodeError::Json(e.to_string()))?;
        match parsed {
            Value::Object(mut fields) => {
                let mut values = Vec::with_capacity(self.inputs.len());
                for input in &self.inputs {
                    let field = fields.remove(&input.name).ok_or_else(|| {
                        DecodeError::MissingField(input.name.clone(), self.input_names())
                    })?;
                    values.push(json_tensor(&field, input)?);
                }
                Ok(Row { values })
            }
            array @ Value::Array(_) if self.inputs.len() == 1 => Ok(Row {
                values: vec![json_tensor(&array, &self.inputs[0])?],
            }),
            Value::Array(_) => Err(DecodeError::Shape {
                input: self.input_names(),
                message: "a model with several inputs needs an object with one field per input"
                    .into(),
            }),
            other => Err(DecodeError::Json(format!(
                "expected an array or an object, found {}",
                json_kind(&other)
            ))),
        }
    }

    fn input_names(&self) -> String {
        self.inputs
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn parse_number(field: &str, index: usize) -> Result<f32, DecodeError> {
    let v: f32 = field.parse().map_err(|_| DecodeError::NotANumber {
        index,
        found: field.chars().take(32).collect(),
    })?;
    check_finite(v, index)?;
    Ok(v)
}

fn check_finite(v: f32, index: usize) -> Result<(), DecodeError> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(DecodeError::NotFinite {
            index,
            found: v.to_string(),
        })
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads one input from JSON: either nested exactly like the row shape, or flat with the
/// same number of values.
fn json_tensor(v: &Value, input: &InputLayout) -> Result<Vec<f32>, DecodeError> {
    let shape_err = |message: String| DecodeError::Shape {
        input: input.name.clone(),
        message,
    };
    let Value::Array(items) = v else {
        return Err(shape_err(format!(
            "expected an array, found {}",
            json_kind(v)
        )));
    };
    let mut out = Vec::with_capacity(input.len);
    let flat = items.len() == input.len && items.iter().all(|i| !i.is_array());
    if flat {
        for (index, item) in items.iter().enumerate() {
            out.push(json_number(item, index)?);
        }
        return Ok(out);
    }
    fill_nested(v, &input.shape, &mut out).map_err(|m| {
        shape_err(format!(
            "expected shape {:?} (or {} flat values): {m}",
            input.shape, input.len
        ))
    })?;
    Ok(out)
}

fn json_number(item: &Value, index: usize) -> Result<f32, DecodeError> {
    match item.as_f64() {
        Some(x) => {
            let v = x as f32;
            check_finite(v, index)?;
            Ok(v)
        }
        None => Err(DecodeError::NotANumber {
            index,
            found: item.to_string().chars().take(32).collect(),
        }),
    }
}

fn fill_nested(v: &Value, shape: &[usize], out: &mut Vec<f32>) -> Result<(), String> {
    match (shape.split_first(), v) {
        (None, item) => {
            let index = out.len();
            out.push(json_number(item, index).map_err(|e| e.to_string())?);
            Ok(())
        }
        (Some((&n, rest)), Value::Array(items)) => {
            if items.len() != n {
                return Err(format!(
                    "found an array of {} where {} were expected",
                    items.len(),
                    n
                ));
            }
            items.iter().try_for_each(|i| fill_nested(i, rest, out))
        }
        (Some((&n, _)), other) => Err(format!(
            "found {} where an array of {n} was expected",
            json_kind(other)
        )),
    }
}
