//! Where training records come from and how they become `(features, label)` rows: a
//! replayable record source (a Kafka topic range, read again each epoch), the decoding with a
//! label, the checks on labels, the validation split and tf.data's shuffle buffer.

use std::collections::HashMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::RngExt;

use super::options::Task;
use super::TrainError;
use crate::codec::InputFormat;
use crate::dataset::{DatasetError, KafkaDatasetBuilder, Label, Preprocess, SourceRecord};
use crate::model::{Dim, ElementType, Signature, TensorSpec};

/// Which records a pass reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The training records (and, with a validation split, the records split off them).
    Training,
    /// The records of a separate validation source.
    Validation,
}

/// Records that can be read again from the start, once per pass: what `model.fit` needs from a
/// dataset. A Kafka topic range is one ([`KafkaRecords`]); records in memory are another
/// ([`MemoryRecords`]).
pub trait RecordSource {
    /// A description for messages (the topic specs).
    fn describe(&self) -> String;
    /// Whether [`Part::Validation`] has records of its own.
    fn has_validation(&self) -> bool;
    /// Reads `part` from its start to its end.
    fn read(
        &mut self,
        part: Part,
    ) -> Result<Box<dyn Iterator<Item = Result<SourceRecord, DatasetError>> + '_>, TrainError>;
}

/// A [`KafkaDataset`](crate::dataset::KafkaDataset) range replayed once per pass, as
/// `model.fit(dataset.repeat())` reads it in tensorflow-io. Every pass stops at the end each
/// partition had when the pass began (`eof`), so an epoch is a bounded range.
///
/// ```no_run
/// use streamtract::dataset::KafkaDataset;
/// use streamtract::train::KafkaRecords;
/// let records = KafkaRecords::new(KafkaDataset::builder(["digits-train"]).servers("127.0.0.1:9092"))
///     .validation(KafkaDataset::builder(["digits-test"]).servers("127.0.0.1:9092"));
/// ```
#[derive(Debug, Clone)]
pub struct KafkaRecords {
    training: KafkaDatasetBuilder,
    validation: Option<KafkaDatasetBuilder>,
    describe: String,
}

impl KafkaRecords {
    /// Training records: the topic specs of `dataset`, each pass read to the end.
    pub fn new(dataset: KafkaDatasetBuilder) -> KafkaRecords {
        let describe = dataset.topic_specs().join(", ");
        KafkaRecords {
            training: dataset.eof(true),
            validation: None,
            describe,
        }
    }

    /// Validation records from other topic specs (use with
    /// [`Validation::Separate`](super::Validation::Separate)).
    pub fn validation(mut self, dataset: KafkaDatasetBuilder) -> KafkaRecords {
        self.validation = Some(dataset.eof(true));
        self
    }

    /// Names the records in messages (for example the topic specs as the user typed them).
    pub fn described_as(mut self, text: impl Into<String>) -> KafkaRecords {
        self.describe = text.into();
        self
    }
}

impl RecordSource for KafkaRecords {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn has_validation(&self) -> bool {
        self.validation.is_some()
    }

    fn read(
        &mut self,
        part: Part,
    ) -> Result<Box<dyn Iterator<Item = Result<SourceRecord, DatasetError>> + '_>, TrainError> {
        let builder = match part {
            Part::Training => &self.training,
            Part::Validation => self.validation.as_ref().ok_or(TrainError::Option {
                option: "validation",
                reason: "no validation topics were given".into(),
            })?,
        };
        Ok(Box::new(builder.clone().open_blocking()?))
    }
}

/// Records held in memory, for tests and for programs that already have them.
#[derive(Debug, Clone, Default)]
pub struct MemoryRecords {
    /// Training records, in the order each pass reads them.
    pub training: Vec<SourceRecord>,
    /// Validation records (empty: none).
    pub validation: Vec<SourceRecord>,
}

impl RecordSource for MemoryRecords {
    fn describe(&self) -> String {
        format!("{} records in memory", self.training.len())
    }

    fn has_validation(&self) -> bool {
        !self.validation.is_empty()
    }

    fn read(
        &mut self,
        part: Part,
    ) -> Result<Box<dyn Iterator<Item = Result<SourceRecord, DatasetError>> + '_>, TrainError> {
        let records = match part {
            Part::Training => &self.training,
            Part::Validation => &self.validation,
        };
        Ok(Box::new(records.iter().cloned().map(Ok)))
    }
}

/// How records become rows: the value format, where the label is and the name of the model
/// input (also the JSON field holding the features in object values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowFormat {
    /// Layout of record values.
    pub format: InputFormat,
    /// Where the label is.
    pub label: Label,
    /// Name of the written model's input, and the JSON field of the features in JSON objects.
    pub input_name: String,
}

impl RowFormat {
    /// Values in `format`, the label at `label`, the input named `features`.
    pub fn new(format: InputFormat, label: Label) -> RowFormat {
        RowFormat {
            format,
            label,
            input_name: "features".into(),
        }
    }

    /// How many features a record carries, read from its layout (the label removed), or `None`
    /// when the record is not readable at all.
    pub(crate) fn feature_count(&self, record: &SourceRecord) -> Option<usize> {
        let value = record.value.as_deref()?;
        let label_in_value = matches!(
            self.label,
            Label::CsvColumn(_) | Label::CsvLastColumn | Label::JsonField(_)
        );
        let n = match self.format {
            InputFormat::Csv { delimiter } => std::str::from_utf8(value)
                .ok()?
                .trim_end_matches(['\n', '\r'])
                .split(delimiter as char)
                .count(),
            InputFormat::Json => {
                let parsed: serde_json::Value = serde_json::from_slice(value).ok()?;
                let features = match &parsed {
                    serde_json::Value::Object(o) => o.get(&self.input_name)?,
                    other => other,
                };
                return Some(count_numbers(features)).filter(|&n| n > 0);
            }
            InputFormat::Raw => value.len() / 4,
            // Training reads its features from CSV, JSON or raw values only (`streamtract
            // train --format`); an Avro record has no feature count without a model.
            InputFormat::Avro(_) => return None,
        };
        let n = if label_in_value { n.checked_sub(1)? } else { n };
        Some(n).filter(|&n| n > 0)
    }

    /// The decoder for rows of `features` values, with the label.
    pub(crate) fn preprocess(&self, features: usize) -> Result<Preprocess, TrainError> {
        let signature = Signature {
            inputs: vec![TensorSpec {
                name: self.input_name.clone(),
                element_type: ElementType::F32,
                shape: vec![Dim::Symbolic("N".into()), Dim::Fixed(features)],
            }],
            outputs: Vec::new(),
        };
        Ok(Preprocess::new(self.format.clone(), &signature)?.label(self.label.clone())?)
    }
}

fn count_numbers(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => items.iter().map(count_numbers).sum(),
        serde_json::Value::Number(_) => 1,
        _ => 0,
    }
}

/// Decodes records into `(features, label)` and rejects those training cannot use.
#[derive(Debug, Clone)]
pub(crate) struct RowDecoder {
    preprocess: Preprocess,
    task: Task,
    /// Classes of a classifier once known; labels at or above are rejected.
    classes: Option<usize>,
}

impl RowDecoder {
    pub(crate) fn new(preprocess: Preprocess, task: Task) -> RowDecoder {
        let classes = match task {
            Task::Classify { classes } => classes,
            Task::Regress => None,
        };
        RowDecoder {
            preprocess,
            task,
            classes,
        }
    }

    pub(crate) fn set_classes(&mut self, classes: usize) {
        self.classes = Some(classes);
    }

    /// The record's features and label, or why it cannot be trained on (one line).
    pub(crate) fn decode(&self, record: &SourceRecord) -> Result<(Vec<f32>, f32), String> {
        if record.value.as_deref().is_none_or(<[u8]>::is_empty) {
            return Err(crate::codec::DecodeError::Empty.to_string());
        }
        let (row, label) = self.preprocess.decode(record).map_err(|e| e.to_string())?;
        let label = label.ok_or("the record has no label")?;
        let features = row.values.into_iter().next().unwrap_or_default();
        if let Task::Classify { .. } = self.task {
            if label < 0.0 || label.fract() != 0.0 {
                return Err(format!(
                    "label {label} is not a class index (a whole number from 0)"
                ));
            }
            if let Some(classes) = self.classes {
                if label as usize >= classes {
                    return Err(format!(
                        "label {label} is out of range: the model has {classes} classes (0..{})",
                        classes - 1
                    ));
                }
            }
        }
        Ok((features, label))
    }
}

/// Which training records are held out for validation with a split: per partition, the
/// records from a cutoff offset on (the last fraction of the range read).
#[derive(Debug, Clone, Default)]
pub(crate) struct SplitPoints {
    ranges: HashMap<(Arc<str>, i32), (i64, i64)>,
    cutoffs: HashMap<(Arc<str>, i32), i64>,
}

impl SplitPoints {
    /// Notes a record's coordinates during the survey pass.
    pub(crate) fn observe(&mut self, record: &SourceRecord) {
        let entry = self
            .ranges
            .entry((record.topic.clone(), record.partition))
            .or_insert((record.offset, record.offset));
        entry.0 = entry.0.min(record.offset);
        entry.1 = entry.1.max(record.offset);
    }

    /// Fixes the cutoffs so that `fraction` of each partition's range is held out.
    pub(crate) fn split(&mut self, fraction: f64) {
        self.cutoffs = self
            .ranges
            .iter()
            .map(|(key, &(first, last))| {
                let span = (last - first + 1) as f64;
                let kept = (span * (1.0 - fraction)).ceil() as i64;
                (key.clone(), first + kept)
            })
            .collect();
    }

    /// Whether a record belongs to the held-out part.
    pub(crate) fn held_out(&self, record: &SourceRecord) -> bool {
        self.cutoffs
            .get(&(record.topic.clone(), record.partition))
            .is_some_and(|&cutoff| record.offset >= cutoff)
    }
}

/// tf.data's `shuffle(buffer_size)`: holds up to `capacity` items and hands out a random one
/// for each new one; at the end of the stream the rest come out in random order. Memory is
/// bounded by the buffer, whatever the length of the stream.
pub(crate) struct ShuffleBuffer<'r, T> {
    items: Vec<T>,
    capacity: usize,
    rng: &'r mut StdRng,
}

impl<'r, T> ShuffleBuffer<'r, T> {
    pub(crate) fn new(capacity: usize, rng: &'r mut StdRng) -> ShuffleBuffer<'r, T> {
        ShuffleBuffer {
            items: Vec::with_capacity(capacity.min(1 << 16)),
            capacity,
            rng,
        }
    }

    /// Takes `item`; returns the item to use next, if the buffer is full.
    pub(crate) fn push(&mut self, item: T) -> Option<T> {
        if self.capacity <= 1 {
            return Some(item);
        }
        if self.items.len() < self.capacity {
            self.items.push(item);
            return None;
        }
        let i = self.rng.random_range(0..self.items.len());
        Some(std::mem::replace(&mut self.items[i], item))
    }

    /// The next of the remaining items at the end of the stream.
    pub(crate) fn pop(&mut self) -> Option<T> {
        if self.items.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.items.len());
        Some(self.items.swap_remove(i))
    }
}

/// Per-feature mean and standard deviation of the training rows (Welford's online algorithm
/// in f64): what Keras' `Normalization.adapt` computes.
#[derive(Debug, Clone)]
pub(crate) struct FeatureStats {
    count: u64,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl FeatureStats {
    pub(crate) fn new(features: usize) -> FeatureStats {
        FeatureStats {
            count: 0,
            mean: vec![0.0; features],
            m2: vec![0.0; features],
        }
    }

    pub(crate) fn add(&mut self, row: &[f32]) {
        self.count += 1;
        let n = self.count as f64;
        for ((mean, m2), &x) in self.mean.iter_mut().zip(&mut self.m2).zip(row) {
            let x = f64::from(x);
            let delta = x - *mean;
            *mean += delta / n;
            *m2 += delta * (x - *mean);
        }
    }

    /// Means and standard deviations (population variance, as Keras). A feature that never
    /// varies gets a standard deviation of 1, where Keras divides by 1e-7 and turns any later
    /// non-zero value of that feature into a huge input.
    pub(crate) fn finish(&self) -> (Vec<f32>, Vec<f32>) {
        let n = self.count.max(1) as f64;
        let std = self
            .m2
            .iter()
            .map(|m2| {
                let s = (m2 / n).sqrt();
                if s < 1e-7 {
                    1.0
                } else {
                    s as f32
                }
            })
            .collect();
        (self.mean.iter().map(|&m| m as f32).collect(), std)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn shuffle_buffer_hands_out_every_item_once() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut buffer = ShuffleBuffer::new(8, &mut rng);
        let mut out: Vec<u32> = (0..100).filter_map(|i| buffer.push(i)).collect();
        while let Some(x) = buffer.pop() {
            out.push(x);
        }
        assert_ne!(out, (0..100).collect::<Vec<_>>(), "not shuffled");
        out.sort_unstable();
        assert_eq!(out, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_buffer_of_one_keeps_the_order() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut buffer = ShuffleBuffer::new(1, &mut rng);
        let out: Vec<u32> = (0..10).filter_map(|i| buffer.push(i)).collect();
        assert_eq!(out, (0..10).collect::<Vec<_>>());
        assert!(buffer.pop().is_none());
    }

    #[test]
    fn feature_stats_match_the_population_formula() {
        let mut stats = FeatureStats::new(2);
        for row in [[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [4.0, 5.0]] {
            stats.add(&row);
        }
        let (mean, std) = stats.finish();
        assert_eq!(mean, vec![2.5, 5.0]);
        assert!((std[0] - 1.118_034).abs() < 1e-6, "{std:?}");
        assert_eq!(std[1], 1.0, "a constant feature is left unscaled");
    }

    #[test]
    fn split_points_hold_out_the_last_fraction_of_each_partition() {
        let record = |partition, offset| SourceRecord {
            topic: Arc::from("t"),
            partition,
            offset,
            timestamp: Default::default(),
            key: None,
            value: None,
            headers: Default::default(),
        };
        let mut split = SplitPoints::default();
        for offset in 0..10 {
            split.observe(&record(0, offset));
            split.observe(&record(1, 100 + offset));
        }
        split.split(0.2);
        let held: Vec<i64> = (0..10).filter(|&o| split.held_out(&record(0, o))).collect();
        assert_eq!(held, vec![8, 9]);
        assert!(split.held_out(&record(1, 108)));
        assert!(!split.held_out(&record(1, 107)));
    }
}
