//! Encoders: one record's slice of every model output → one output record value.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use super::avro::AvroOutput;
use crate::model::ModelError;
use crate::model::Signature;

/// How output record values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// `{"<output name>": <array shaped like the output row>, ...}` plus `"top_k"` when asked.
    #[default]
    Json,
    /// Every output's values flattened and joined by `,`, in signature order; with top-k, the
    /// K class indices and then the K scores follow.
    Csv,
    /// Little-endian float32 bytes of every output in signature order.
    Raw,
    /// A bare Avro datum of a record schema generated from the model's outputs: the input
    /// record's key, one field per output (floats, arrays nested like its shape), `top_k`
    /// when asked ([`Encoder::avro_schema`]).
    Avro,
    /// The same datum in Confluent's wire format, framed with the id the schema registry gave
    /// the schema ([`Encoder::with_schema_id`]).
    ConfluentAvro,
}

impl FromStr for OutputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(OutputFormat::Json),
            "csv" => Ok(OutputFormat::Csv),
            "raw" => Ok(OutputFormat::Raw),
            "avro" => Ok(OutputFormat::Avro),
            "confluent-avro" => Ok(OutputFormat::ConfluentAvro),
            _ => Err("one of json, csv, raw, avro, confluent-avro".into()),
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputFormat::Json => "json",
            OutputFormat::Csv => "csv",
            OutputFormat::Raw => "raw",
            OutputFormat::Avro => "avro",
            OutputFormat::ConfluentAvro => "confluent-avro",
        })
    }
}

#[derive(Debug, Clone)]
struct OutputLayout {
    name: String,
    shape: Vec<usize>,
    len: usize,
}

/// Writes one record's model outputs.
///
/// ```
/// use streamtract::codec::{Encoder, OutputFormat};
/// use streamtract::model::{Dim, ElementType, Signature, TensorSpec};
/// let sig = Signature {
///     inputs: vec![],
///     outputs: vec![TensorSpec { name: "p".into(), element_type: ElementType::F32,
///                                shape: vec![Dim::Symbolic("N".into()), Dim::Fixed(3)] }],
/// };
/// let enc = Encoder::new(OutputFormat::Json, &sig, Some(1), "m.onnx").unwrap();
/// let out = enc.encode(&[&[0.1, 0.7, 0.2]]);
/// assert_eq!(String::from_utf8(out).unwrap(),
///            r#"{"p":[0.1,0.7,0.2],"top_k":[{"index":1,"score":0.7}]}"#);
/// ```
#[derive(Debug, Clone)]
pub struct Encoder {
    format: OutputFormat,
    outputs: Vec<OutputLayout>,
    top_k: Option<usize>,
    avro: Option<AvroOutput>,
}

impl Encoder {
    /// Builds an encoder for the model's outputs. `top_k` ranks the first output's values.
    pub fn new(
        format: OutputFormat,
        signature: &Signature,
        top_k: Option<usize>,
        model: &str,
    ) -> Result<Encoder, ModelError> {
        let mut outputs = Vec::new();
        for spec in &signature.outputs {
            let shape = spec.row_shape().ok_or_else(|| ModelError::Signature {
                model: model.into(),
                message: format!(
                    "output `{spec}` has a symbolic dimension after the batch dimension"
                ),
            })?;
            let len = shape.iter().product();
            outputs.push(OutputLayout {
                name: spec.name.clone(),
                shape,
                len,
            });
        }
        if let Some(k) = top_k {
            let classes = outputs.first().map(|o| o.len).unwrap_or(0);
            if k == 0 || k > classes {
                return Err(ModelError::Signature {
                    model: model.into(),
                    message: format!("top_k = {k} but the first output has {classes} values"),
                });
            }
            if format == OutputFormat::Raw {
                return Err(ModelError::Signature {
                    model: model.into(),
                    message: "top_k cannot be written in the raw output format; use json or csv"
                        .into(),
                });
            }
        }
        let avro = match format {
            OutputFormat::Avro | OutputFormat::ConfluentAvro => {
                let named: Vec<(String, Vec<usize>)> = outputs
                    .iter()
                    .map(|o| (o.name.clone(), o.shape.clone()))
                    .collect();
                Some(AvroOutput::new(&named, top_k.is_some()).map_err(|message| {
                    ModelError::Signature {
                        model: model.into(),
                        message,
                    }
                })?)
            }
            _ => None,
        };
        Ok(Encoder {
            format,
            outputs,
            top_k,
            avro,
        })
    }

    /// The Avro output formats: the generated record schema (Avro JSON), to register or to
    /// hand to readers.
    pub fn avro_schema(&self) -> Option<&str> {
        self.avro.as_ref().map(|a| a.schema())
    }

    /// [`OutputFormat::ConfluentAvro`]: frames every value with the Confluent header carrying
    /// `id`, the id the schema registry returned for [`avro_schema`](Self::avro_schema).
    /// Until then values are framed with id 0, which no registry assigns.
    pub fn with_schema_id(mut self, id: u32) -> Encoder {
        if let (OutputFormat::ConfluentAvro, Some(avro)) = (self.format, &mut self.avro) {
            avro.set_schema_id(id);
        }
        self
    }

    /// Number of values of each output for one record, in signature order.
    pub fn output_lens(&self) -> Vec<usize> {
        self.outputs.iter().map(|o| o.len).collect()
    }

    /// Encodes one record: `outputs[i]` is this record's slice of output `i`.
    pub fn encode(&self, outputs: &[&[f32]]) -> Vec<u8> {
        self.encode_keyed(None, outputs)
    }

    /// [`encode`](Self::encode), with the input record's key (which the Avro formats carry in
    /// their `key` field; the others ignore it).
    pub fn encode_keyed(&self, key: Option<&[u8]>, outputs: &[&[f32]]) -> Vec<u8> {
        if let Some(avro) = &self.avro {
            return avro.encode(key, outputs, &self.top_k(outputs));
        }
        match self.format {
            OutputFormat::Json => self.encode_json(outputs).into_bytes(),
            OutputFormat::Csv => self.encode_csv(outputs).into_bytes(),
            OutputFormat::Raw => outputs
                .iter()
                .flat_map(|o| o.iter().flat_map(|v| v.to_le_bytes()))
                .collect(),
            // Both carry an `AvroOutput` (built in `new`), handled above.
            OutputFormat::Avro | OutputFormat::ConfluentAvro => Vec::new(),
        }
    }

    fn top_k(&self, outputs: &[&[f32]]) -> Vec<(usize, f32)> {
        let Some(k) = self.top_k else {
            return Vec::new();
        };
        let mut ranked: Vec<(usize, f32)> = outputs[0].iter().copied().enumerate().collect();
        // Ties keep the lower index first; NaN ranks last.
        ranked.sort_by(|a, b| {
            b.1.partial_cmp(&a.1)
                .unwrap_or(std::cmp::Ordering::Less)
                .then(a.0.cmp(&b.0))
        });
        ranked.truncate(k);
        ranked
    }

    fn encode_json(&self, outputs: &[&[f32]]) -> String {
        let mut s = String::with_capacity(32 + 12 * outputs.iter().map(|o| o.len()).sum::<usize>());
        s.push('{');
        for (i, (layout, values)) in self.outputs.iter().zip(outputs).enumerate() {
            if i > 0 {
                s.push(',');
            }
            write_json_string(&mut s, &layout.name);
            s.push(':');
            let mut it = values.iter();
            write_nested(&mut s, &layout.shape, &mut it);
        }
        if self.top_k.is_some() {
            s.push_str(",\"top_k\":[");
            for (i, (index, score)) in self.top_k(outputs).into_iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                let _ = write!(s, "{{\"index\":{index},\"score\":");
                write_json_number(&mut s, score);
                s.push('}');
            }
            s.push(']');
        }
        s.push('}');
        s
    }

    fn encode_csv(&self, outputs: &[&[f32]]) -> String {
        let mut s = String::new();
        let mut first = true;
        let mut field = |s: &mut String, text: String| {
            if !first {
                s.push(',');
            }
            first = false;
            s.push_str(&text);
        };
        for v in outputs.iter().flat_map(|o| o.iter()) {
            field(&mut s, number_text(*v));
        }
        let ranked = self.top_k(outputs);
        for (index, _) in &ranked {
            field(&mut s, index.to_string());
        }
        for (_, score) in &ranked {
            field(&mut s, number_text(*score));
        }
        s
    }
}

fn write_nested<'a>(s: &mut String, shape: &[usize], values: &mut impl Iterator<Item = &'a f32>) {
    match shape.split_first() {
        None => {
            let v = values.next().copied().unwrap_or(f32::NAN);
            write_json_number(s, v);
        }
        Some((&n, rest)) => {
            s.push('[');
            for i in 0..n {
                if i > 0 {
                    s.push(',');
                }
                write_nested(s, rest, values);
            }
            s.push(']');
        }
    }
}

/// JSON has no NaN or infinity: those are written as `null`.
fn write_json_number(s: &mut String, v: f32) {
    if v.is_finite() {
        s.push_str(ryu::Buffer::new().format_finite(v));
    } else {
        s.push_str("null");
    }
}

/// The shortest text that reads back as exactly `v` (`5.8151083e-16`, `0.99999845`, `1.0`);
/// `NaN`, `inf` and `-inf` as Rust writes them.
fn number_text(v: f32) -> String {
    if v.is_finite() {
        ryu::Buffer::new().format_finite(v).to_owned()
    } else {
        v.to_string()
    }
}

fn write_json_string(s: &mut String, text: &str) {
    // serde_json escapes exactly as JSON requires; output names are short.
    s.push_str(&serde_json::Value::String(text.to_owned()).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_the_shortest_text_that_reads_back_exactly() {
        for v in [
            5.815_108_3e-16f32,
            0.999_998_45,
            1.0,
            0.0,
            -2.5e12,
            f32::MIN_POSITIVE,
        ] {
            let text = number_text(v);
            assert_eq!(text.parse::<f32>().unwrap(), v, "{text}");
            assert!(text.len() <= 16, "{v}: {text}");
        }
        assert_eq!(number_text(5.815_108_3e-16), "5.8151083e-16");
        assert_eq!(number_text(f32::NAN), "NaN");
        let mut json = String::new();
        write_json_number(&mut json, f32::INFINITY);
        assert_eq!(json, "null");
    }
}
