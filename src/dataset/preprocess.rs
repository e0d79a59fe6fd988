//! Records → model rows: the pipeline's decoders, plus an optional label.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::{Stream, StreamExt};
use tract_onnx::prelude::tract_ndarray::{ArrayD, IxDyn};

use super::DatasetError;
use crate::codec::{DecodeError, Decoder, InputFormat, Row};
use crate::kafka::SourceRecord;
use crate::model::{Model, Signature};

/// Where a record's label (the training target, or the true class for evaluation) is.
///
/// The label is a number: a class index or a regression target, read from UTF-8 text such as
/// `7` or `0.25`. (tensorflow-io's `KafkaBatchIODataset` treats the key as the label; here any
/// of these can be.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    /// The record key.
    Key,
    /// A record header, by name.
    Header(String),
    /// A field of a JSON object value (the other fields feed the model as usual).
    JsonField(String),
    /// A column of a CSV value, counted from 0; it is removed before the rest is decoded.
    CsvColumn(usize),
    /// The last column of a CSV value (the layout of most exported tables); it is removed
    /// before the rest is decoded.
    CsvLastColumn,
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Label::Key => f.write_str("from the key"),
            Label::Header(h) => write!(f, "from header `{h}`"),
            Label::JsonField(n) => write!(f, "from JSON field `{n}`"),
            Label::CsvColumn(c) => write!(f, "from CSV column {c}"),
            Label::CsvLastColumn => f.write_str("from the last CSV column"),
        }
    }
}

/// Decodes records into rows for one model with the pipeline's [`Decoder`], and reads their
/// label: the body of tensorflow-io's `dataset.map(lambda x: ...)`, checked against the
/// model's signature when built.
///
/// ```no_run
/// use streamtract::codec::InputFormat;
/// use streamtract::dataset::{Label, Preprocess};
/// use streamtract::model::Model;
/// let model = Model::load("models/digits_mlp.onnx")?;
/// // CSV rows `label,pixel0,...,pixel63`
/// let preprocess = Preprocess::for_model(&model, InputFormat::Csv { delimiter: b',' })?
///     .label(Label::CsvColumn(0))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Preprocess {
    decoder: Decoder,
    row_shapes: Vec<Vec<usize>>,
    label: Option<Label>,
}

impl Preprocess {
    /// A preprocessing step for a model with this `signature`, reading values in `format`.
    ///
    /// Fails when the format cannot feed the model (e.g. an input with a symbolic row
    /// dimension).
    pub fn new(format: InputFormat, signature: &Signature) -> Result<Preprocess, DatasetError> {
        Self::build(format, signature, "model")
    }

    /// [`new`](Self::new) for a loaded model.
    pub fn for_model(model: &Model, format: InputFormat) -> Result<Preprocess, DatasetError> {
        Self::build(
            format,
            model.signature(),
            &model.path().display().to_string(),
        )
    }

    fn build(
        format: InputFormat,
        signature: &Signature,
        name: &str,
    ) -> Result<Preprocess, DatasetError> {
        let decoder = Decoder::new(format, signature, name)?;
        // Decoder::new has checked that every row shape is fixed.
        let row_shapes = signature
            .inputs
            .iter()
            .map(|i| i.row_shape().unwrap_or_default())
            .collect();
        Ok(Preprocess {
            decoder,
            row_shapes,
            label: None,
        })
    }

    /// Also reads a label from each record. A CSV column needs CSV values, a JSON field JSON
    /// values.
    pub fn label(mut self, label: Label) -> Result<Preprocess, DatasetError> {
        let format = self.decoder.format();
        let fits = match &label {
            Label::CsvColumn(_) | Label::CsvLastColumn => {
                matches!(format, InputFormat::Csv { .. })
            }
            Label::JsonField(_) => *format == InputFormat::Json,
            Label::Key | Label::Header(_) => true,
        };
        if !fits {
            return Err(DatasetError::InvalidOption {
                option: "label",
                reason: format!("a label {label} cannot be read from {format} values"),
            });
        }
        self.label = Some(label);
        Ok(self)
    }

    /// The configured label, if any.
    pub fn label_source(&self) -> Option<&Label> {
        self.label.as_ref()
    }

    /// One row shape per model input (the shape after the batch dimension).
    pub fn row_shapes(&self) -> &[Vec<usize>] {
        &self.row_shapes
    }

    /// Decodes one record into a [`Row`] (what the pipeline batches) and its label.
    pub fn decode(&self, record: &SourceRecord) -> Result<(Row, Option<f32>), DatasetError> {
        let value = record.value.as_deref().unwrap_or_default();
        let Some(label) = &self.label else {
            return Ok((self.row(record, value)?, None));
        };
        let y = match label {
            Label::Key => {
                let text = record
                    .key
                    .as_deref()
                    .ok_or_else(|| label_error(record, label, "the record has no key".into()))?;
                parse_label(text).map_err(|r| label_error(record, label, r))?
            }
            Label::Header(name) => {
                let text = record.headers.get(name).ok_or_else(|| {
                    label_error(record, label, "the record has no such header".into())
                })?;
                parse_label(text).map_err(|r| label_error(record, label, r))?
            }
            Label::JsonField(name) => json_label(record, value, label, name)?,
            Label::CsvColumn(_) | Label::CsvLastColumn => {
                let (y, rest) = self.csv_label(record, value, label)?;
                return Ok((self.row(record, rest.as_bytes())?, Some(y)));
            }
        };
        Ok((self.row(record, value)?, Some(y)))
    }

    /// The model row decoded from `value` (the record's value, or what is left of it once the
    /// label column is taken out).
    fn row(&self, record: &SourceRecord, value: &[u8]) -> Result<Row, DatasetError> {
        self.decoder
            .decode(value)
            .map_err(|source| decode_error(record, source))
    }

    /// The label in a CSV column, and the row without that column (what the model reads).
    fn csv_label(
        &self,
        record: &SourceRecord,
        value: &[u8],
        label: &Label,
    ) -> Result<(f32, String), DatasetError> {
        let &InputFormat::Csv { delimiter } = self.decoder.format() else {
            return Err(label_error(record, label, "the values are not CSV".into()));
        };
        let text = std::str::from_utf8(value)
            .map_err(|e| decode_error(record, DecodeError::NotUtf8(e.valid_up_to())))?;
        let text = text.trim_end_matches(['\n', '\r']);
        let mut fields: Vec<&str> = text.split(delimiter as char).collect();
        let column = match label {
            Label::CsvColumn(c) => *c,
            _ => fields.len().saturating_sub(1),
        };
        if column >= fields.len() {
            return Err(label_error(
                record,
                label,
                format!("the row has only {} columns", fields.len()),
            ));
        }
        let field = fields.remove(column);
        let rest = fields.join(&(delimiter as char).to_string());
        let y = parse_label(field.trim().as_bytes()).map_err(|r| label_error(record, label, r))?;
        Ok((y, rest))
    }

    /// Decodes one record into an [`Example`].
    pub fn example(&self, record: SourceRecord) -> Result<Example, DatasetError> {
        let (row, label) = self.decode(&record)?;
        let mut features = Vec::with_capacity(row.values.len());
        for (values, shape) in row.values.into_iter().zip(&self.row_shapes) {
            let array = ArrayD::from_shape_vec(IxDyn(shape), values).map_err(|e| {
                DatasetError::Model(crate::model::ModelError::Run(format!(
                    "row of shape {shape:?}: {e}"
                )))
            })?;
            features.push(array);
        }
        Ok(Example {
            features,
            label,
            record,
        })
    }
}

/// The label in field `name` of a JSON object value: a number, or a string holding one.
fn json_label(
    record: &SourceRecord,
    value: &[u8],
    label: &Label,
    name: &str,
) -> Result<f32, DatasetError> {
    let parsed: serde_json::Value = serde_json::from_slice(value)
        .map_err(|e| decode_error(record, DecodeError::Json(e.to_string())))?;
    let field = parsed
        .as_object()
        .ok_or_else(|| label_error(record, label, "the value is not a JSON object".into()))?
        .get(name)
        .ok_or_else(|| label_error(record, label, "the object has no such field".into()))?;
    match field {
        serde_json::Value::Number(n) => n.as_f64().map(|v| v as f32),
        serde_json::Value::String(s) => s.trim().parse::<f32>().ok(),
        _ => None,
    }
    .filter(|v| v.is_finite())
    .ok_or_else(|| label_error(record, label, format!("`{field}` is not a finite number")))
}

/// `record`'s value does not decode.
fn decode_error(record: &SourceRecord, source: DecodeError) -> DatasetError {
    DatasetError::Decode {
        topic: record.topic.to_string(),
        partition: record.partition,
        offset: record.offset,
        source,
    }
}

/// `record`'s `label` cannot be read, for `reason`.
fn label_error(record: &SourceRecord, label: &Label, reason: String) -> DatasetError {
    DatasetError::Label {
        topic: record.topic.to_string(),
        partition: record.partition,
        offset: record.offset,
        label: label.to_string(),
        reason,
    }
}

fn parse_label(text: &[u8]) -> Result<f32, String> {
    let s = std::str::from_utf8(text).map_err(|_| "is not UTF-8 text".to_string())?;
    match s.trim().parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!(
            "`{}` is not a finite number",
            s.chars().take(32).collect::<String>()
        )),
    }
}

/// One decoded record: what tensorflow-io's `dataset.map(...)` returns per element.
#[derive(Debug, Clone)]
pub struct Example {
    /// One array per model input, shaped like that input's row (without the batch dimension).
    pub features: Vec<ArrayD<f32>>,
    /// The label, when the [`Preprocess`] reads one.
    pub label: Option<f32>,
    /// The record it came from, with its key, coordinates, timestamp and headers.
    pub record: SourceRecord,
}

/// A stream of [`Example`]s: records decoded one by one ([`KafkaDataset::examples`](super::KafkaDataset::examples)).
///
/// A record that cannot be decoded is yielded as a [`DatasetError::Decode`] /
/// [`DatasetError::Label`] item and the stream goes on (check
/// [`DatasetError::is_record_error`]); a Kafka error ends it.
#[derive(Debug)]
pub struct Examples<S> {
    inner: S,
    preprocess: Preprocess,
}

impl<S> Examples<S> {
    pub(crate) fn new(inner: S, preprocess: Preprocess) -> Examples<S> {
        Examples { inner, preprocess }
    }
}

impl<S> Stream for Examples<S>
where
    S: Stream<Item = Result<SourceRecord, DatasetError>> + Unpin,
{
    type Item = Result<Example, DatasetError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        this.inner
            .poll_next_unpin(cx)
            .map(|item| item.map(|r| r.and_then(|record| this.preprocess.example(record))))
    }
}
