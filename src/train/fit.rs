//! [`fit`]: the passes over the records and the epoch loop.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;

use super::data::{
    FeatureStats, Part, RecordSource, RowDecoder, RowFormat, ShuffleBuffer, SplitPoints,
};
use super::network::{self, DeviceBatch, Network};
use super::onnx::{DenseModel, Head, InputOp};
use super::options::{ConvBlock, Loss, Task, TrainOptions, Validation};
use super::TrainError;
use crate::dataset::SourceRecord;

/// Records read before the first one whose layout tells the feature count; past this many
/// unreadable records the source is taken to hold no training data.
const MAX_UNREADABLE_PREFIX: usize = 10_000;

/// What [`fit`] reports while it runs.
#[derive(Debug)]
pub enum Event<'a> {
    /// A record training cannot use (reported once, in the first pass); it is left out.
    Rejected {
        /// The record, unchanged.
        record: &'a SourceRecord,
        /// Why, in one line.
        reason: &'a str,
    },
    /// A gradient step was taken.
    Batch {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based batch within the epoch.
        batch: usize,
        /// The batch's mean loss.
        loss: f32,
    },
    /// An epoch ended.
    Epoch(&'a EpochStats),
    /// A checkpoint was written.
    Checkpoint {
        /// Where.
        path: &'a std::path::Path,
        /// Its version (1 for the first written by this run, or the initial model's + 1).
        version: u64,
    },
}

/// One epoch's figures, named like Keras' history keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochStats {
    /// 1-based epoch.
    pub epoch: usize,
    /// Training records used.
    pub records: u64,
    /// Wall time of the epoch (reading, training and validation).
    pub seconds: f64,
    /// Training records per second of the epoch's wall time.
    pub records_per_second: f64,
    /// Mean training loss over the epoch's records.
    pub loss: f64,
    /// Training accuracy (classification).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Training mean absolute error (regression).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mae: Option<f64>,
    /// Validation records used (0 without validation).
    pub val_records: u64,
    /// Validation loss.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Validation accuracy (classification).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_accuracy: Option<f64>,
    /// Validation mean absolute error (regression).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_mae: Option<f64>,
}

impl EpochStats {
    /// Adds the validation figures, if any.
    fn with_validation(mut self, validation: Option<&Figures>, classify: bool) -> EpochStats {
        if let Some(v) = validation {
            self.val_records = v.rows;
            self.val_loss = Some(v.mean_loss());
            self.val_accuracy = classify.then(|| v.accuracy());
            self.val_mae = (!classify).then(|| v.mae());
        }
        self
    }
}

/// What a training run saw, for `--metrics-json` and for programs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct History {
    /// Features per record.
    pub features: usize,
    /// Classes of a classifier (0 for regression).
    pub classes: usize,
    /// Records left out because training could not use them.
    pub rejected: u64,
    /// A fine-tuned model's validation figures before its first step (epoch 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial: Option<EpochStats>,
    /// One entry per epoch.
    pub epochs: Vec<EpochStats>,
}

/// A trained model and how it got there.
#[derive(Debug, Clone)]
pub struct Fitted {
    /// The model, ready to [`write`](DenseModel::write).
    pub model: DenseModel,
    /// Per-epoch figures.
    pub history: History,
}

impl Fitted {
    /// The framework's own forward pass on `rows` (row-major, `features` values each): what
    /// the written ONNX graph must reproduce. Returns the head's outputs, row-major.
    pub fn predict(&self, rows: &[f32]) -> Result<Vec<f32>, TrainError> {
        predict(&self.model, rows)
    }
}

/// Trains a dense network on `source` as `model.fit` would, reporting through `on_event`.
///
/// Fails before training on a bad option, when Kafka cannot be read, or when no record is
/// usable; during training when the loss becomes NaN or infinite.
pub fn fit(
    source: &mut dyn RecordSource,
    rows: &RowFormat,
    options: &TrainOptions,
    on_event: &mut dyn FnMut(Event<'_>) -> Result<(), TrainError>,
) -> Result<Fitted, TrainError> {
    options.check()?;
    let options = &options.for_init()?;
    if matches!(options.validation, Validation::Separate) && !source.has_validation() {
        return Err(TrainError::Option {
            option: "validation",
            reason: "separate validation was asked for but the source has no validation records"
                .into(),
        });
    }
    let survey = survey(source, rows, options, on_event)?;
    options.check_init_features(survey.features, &source.describe())?;
    let mut trainer = Trainer::new(survey, options)?;
    if options.normalize {
        trainer.adapt(source)?;
    }
    if options.init.is_some() {
        trainer.evaluate_initial(source, on_event)?;
    }
    for epoch in 1..=options.epochs {
        trainer.epoch(source, epoch, on_event)?;
    }
    let model = trainer.model(options.first_version + options.epochs as u64 - 1)?;
    Ok(Fitted {
        model,
        history: trainer.history,
    })
}

/// Logs a record training leaves out and reports it ([`Event::Rejected`]): once per record.
pub(crate) fn report_rejected(
    record: &SourceRecord,
    reason: &str,
    on_event: &mut dyn FnMut(Event<'_>) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, %reason, "record left out of training");
    on_event(Event::Rejected { record, reason })
}

/// What the first pass found.
struct Survey {
    decoder: RowDecoder,
    input_name: String,
    features: usize,
    classes: usize,
    rejected: u64,
    split: SplitPoints,
}

/// The first pass: the feature count (from the first readable record), the classes (from the
/// labels, unless given), the partitions' ranges for a validation split, and every record that
/// cannot be used, reported once.
fn survey(
    source: &mut dyn RecordSource,
    rows: &RowFormat,
    options: &TrainOptions,
    on_event: &mut dyn FnMut(Event<'_>) -> Result<(), TrainError>,
) -> Result<Survey, TrainError> {
    let mut pass = FirstPass::default();
    for record in source.read(Part::Training)? {
        if !pass.observe(record?, rows, options, on_event)? {
            break;
        }
    }
    let FirstPass {
        decoder,
        unreadable,
        mut split,
        tally,
    } = pass;
    let rejected_total = tally.rejected + unreadable.len() as u64;
    let (mut decoder, features) = match decoder {
        Some(found) if tally.usable > 0 => found,
        _ => {
            return Err(TrainError::NoData {
                what: source.describe(),
                rejected: rejected_total,
            })
        }
    };
    let classes = class_count(options, &mut decoder, tally.max_label, &*source)?;
    if let Validation::Split(fraction) = options.validation {
        split.split(fraction);
    }
    tracing::info!(
        features,
        classes,
        usable = tally.usable,
        rejected = rejected_total,
        "training records surveyed"
    );
    Ok(Survey {
        decoder,
        input_name: rows.input_name.clone(),
        features,
        classes,
        rejected: rejected_total,
        split,
    })
}

/// What the first pass has read so far.
#[derive(Default)]
struct FirstPass {
    /// The decoder and the feature count, once a record told the layout.
    decoder: Option<(RowDecoder, usize)>,
    /// Records read before that, checked once the decoder exists.
    unreadable: Vec<SourceRecord>,
    split: SplitPoints,
    tally: Tally,
}

impl FirstPass {
    /// Takes one training record; false when [`MAX_UNREADABLE_PREFIX`] records came without
    /// telling the layout, so reading stops.
    fn observe(
        &mut self,
        record: SourceRecord,
        rows: &RowFormat,
        options: &TrainOptions,
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), TrainError>,
    ) -> Result<bool, TrainError> {
        self.split.observe(&record);
        if self.decoder.is_none() {
            match rows.feature_count(&record) {
                Some(features) => {
                    let d = RowDecoder::new(rows.preprocess(features)?, options.task);
                    for earlier in self.unreadable.drain(..) {
                        self.tally.check(&d, &earlier, on_event)?;
                    }
                    self.decoder = Some((d, features));
                }
                None if self.unreadable.len() < MAX_UNREADABLE_PREFIX => {
                    self.unreadable.push(record);
                    return Ok(true);
                }
                None => return Ok(false),
            }
        }
        if let Some((d, _)) = &self.decoder {
            self.tally.check(d, &record, on_event)?;
        }
        Ok(true)
    }
}

/// The first pass's counts of usable and rejected records, and the largest label seen.
#[derive(Default)]
struct Tally {
    usable: u64,
    rejected: u64,
    max_label: f32,
}

impl Tally {
    /// Decodes `record`: counts it as usable (with its label), or reports it rejected.
    fn check(
        &mut self,
        decoder: &RowDecoder,
        record: &SourceRecord,
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        match decoder.decode(record) {
            Ok((_, label)) => {
                self.usable += 1;
                self.max_label = self.max_label.max(label);
            }
            Err(reason) => {
                self.rejected += 1;
                report_rejected(record, &reason, on_event)?;
            }
        }
        Ok(())
    }
}

/// The number of classes: as given, or the largest label + 1 (set on the decoder, which then
/// rejects labels outside it); 0 for regression.
fn class_count(
    options: &TrainOptions,
    decoder: &mut RowDecoder,
    max_label: f32,
    source: &dyn RecordSource,
) -> Result<usize, TrainError> {
    Ok(match options.task {
        Task::Classify { classes: Some(c) } => c,
        Task::Classify { classes: None } => {
            let c = max_label as usize + 1;
            if c < 2 {
                return Err(TrainError::Option {
                    option: "classes",
                    reason: format!(
                        "every label in {} is 0; a classifier needs at least 2 classes",
                        source.describe()
                    ),
                });
            }
            decoder.set_classes(c);
            c
        }
        Task::Regress => 0,
    })
}

/// The network, its optimizer and the running figures between epochs.
struct Trainer {
    survey: Survey,
    state: State,
    history: History,
    /// The shuffle buffer's generator, carried from epoch to epoch.
    rng: StdRng,
}

/// What a gradient step changes, apart from the survey the record iterator borrows.
pub(crate) struct State {
    options: TrainOptions,
    loss: Loss,
    head: Head,
    device: burn::tensor::Device,
    /// Always `Some` between steps; taken while burn's optimizer consumes it.
    network: Option<Network>,
    optimizer: burn::optim::ModuleOptimizer,
    input_ops: Vec<InputOp>,
    features: usize,
    input_name: String,
    batch: Batch,
    figures: Figures,
    epoch: usize,
    steps: usize,
    /// The checkpoint written last, left untouched when the loss turns NaN.
    written: Option<PathBuf>,
}

impl Trainer {
    fn new(survey: Survey, options: &TrainOptions) -> Result<Trainer, TrainError> {
        let state = State::new(options, survey.features, survey.classes, &survey.input_name)?;
        let history = History {
            features: survey.features,
            classes: survey.classes,
            rejected: survey.rejected,
            initial: None,
            epochs: Vec::new(),
        };
        Ok(Trainer {
            survey,
            state,
            history,
            rng: shuffle_rng(options.seed),
        })
    }

    /// Keras' `Normalization.adapt`: mean and standard deviation of the training rows.
    fn adapt(&mut self, source: &mut dyn RecordSource) -> Result<(), TrainError> {
        let mut stats = FeatureStats::new(self.survey.features);
        for row in training_rows(&self.survey, source)? {
            stats.add(&row?.0);
        }
        let (mean, std) = stats.finish();
        self.state.input_ops = InputOp::standardize(mean, std);
        Ok(())
    }

    /// One pass over the training records through the shuffle buffer, a step per batch, then
    /// the validation records; reports the epoch and writes the checkpoint.
    fn epoch(
        &mut self,
        source: &mut dyn RecordSource,
        epoch: usize,
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        let started = Instant::now();
        let state = &mut self.state;
        state.epoch = epoch;
        state.steps = 0;
        state.figures = Figures::default();
        let mut shuffle = ShuffleBuffer::new(state.options.shuffle_buffer, &mut self.rng);
        for row in training_rows(&self.survey, source)? {
            if let Some((x, y)) = shuffle.push(row?) {
                state.push(x, y, on_event)?;
            }
        }
        while let Some((x, y)) = shuffle.pop() {
            state.push(x, y, on_event)?;
        }
        state.step(on_event)?;
        let train = std::mem::take(&mut state.figures);
        let validation = self.validate(source)?;
        let seconds = started.elapsed().as_secs_f64();
        let classify = self.state.is_classifier();
        let stats = train
            .stats(epoch, seconds, classify)
            .with_validation(validation.as_ref(), classify);
        on_event(Event::Epoch(&stats))?;
        self.history.epochs.push(stats);
        if let Some(path) = self.state.options.checkpoint.clone() {
            let version = self.state.options.first_version + epoch as u64 - 1;
            self.model(version)?.write(&path)?;
            on_event(Event::Checkpoint {
                path: &path,
                version,
            })?;
            self.state.written = Some(path);
        }
        Ok(())
    }

    /// A fine-tuned model's starting point: the validation figures before any step.
    fn evaluate_initial(
        &mut self,
        source: &mut dyn RecordSource,
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        let started = Instant::now();
        let Some(validation) = self.validate(source)? else {
            return Ok(());
        };
        let classify = self.state.is_classifier();
        let mut stats = Figures::default()
            .stats(0, started.elapsed().as_secs_f64(), classify)
            .with_validation(Some(&validation), classify);
        // No training happened: no training figures.
        (stats.loss, stats.accuracy, stats.mae) = (f64::NAN, None, None);
        on_event(Event::Epoch(&stats))?;
        self.history.initial = Some(stats);
        Ok(())
    }

    /// Loss and accuracy / MAE on the validation records, with the network in inference mode.
    fn validate(&mut self, source: &mut dyn RecordSource) -> Result<Option<Figures>, TrainError> {
        let state = &self.state;
        let records = match state.options.validation {
            Validation::None => return Ok(None),
            Validation::Split(_) => source.read(Part::Training)?,
            Validation::Separate => source.read(Part::Validation)?,
        };
        let split = matches!(state.options.validation, Validation::Split(_));
        let network = state.network()?.valid();
        let mut figures = Figures::default();
        let mut batch = Batch::new(state.options.batch_size.max(256));
        let flush = |batch: &mut Batch, figures: &mut Figures| -> Result<(), TrainError> {
            if batch.labels.is_empty() {
                return Ok(());
            }
            let labels = std::mem::take(&mut batch.labels);
            let device_batch = DeviceBatch::new(
                std::mem::take(&mut batch.features),
                &labels,
                state.features,
                state.loss,
                &burn::tensor::Device::flex(),
            );
            let (loss, logits) = network::evaluate(&network, state.loss, device_batch)?;
            figures.add(loss, &logits, &labels, state.head);
            Ok(())
        };
        for record in records {
            let record = record?;
            if split && !self.survey.split.held_out(&record) {
                continue;
            }
            let Ok((mut x, y)) = self.survey.decoder.decode(&record) else {
                continue;
            };
            state.normalize(&mut x);
            batch.push(x, y);
            if batch.is_full() {
                flush(&mut batch, &mut figures)?;
            }
        }
        flush(&mut batch, &mut figures)?;
        Ok(Some(figures))
    }

    fn model(&self, version: u64) -> Result<DenseModel, TrainError> {
        self.state.model(version)
    }
}

impl State {
    /// The network for `features` inputs and `classes` classes (0 for regression), fresh or
    /// from the initial model, with its head and optimizer.
    pub(crate) fn new(
        options: &TrainOptions,
        features: usize,
        classes: usize,
        input_name: &str,
    ) -> Result<State, TrainError> {
        let loss = options.loss();
        let (head, outputs) = head_for(loss, classes)?;
        let image = image_plan(options, features)?;
        let flattened = match image {
            Some((shape, blocks)) => flattened(shape, blocks),
            None => features,
        };
        let mut sizes = vec![flattened];
        sizes.extend(&options.hidden_layers);
        sizes.push(outputs);
        let device = network::training_device(options.seed);
        let (network, input_ops, input_name) = match &options.init {
            Some(init) => (
                Network::from_weights(
                    init.image.as_ref(),
                    &init.layers,
                    init.activation,
                    options.dropout,
                    &device,
                ),
                init.input_ops.clone(),
                init.input_name.clone(),
            ),
            None => (
                Network::new(
                    image,
                    &sizes,
                    options.activation,
                    options.dropout,
                    &mut StdRng::seed_from_u64(options.seed),
                    &device,
                ),
                Vec::new(),
                input_name.to_string(),
            ),
        };
        Ok(State {
            options: options.clone(),
            loss,
            head,
            device,
            network: Some(network),
            optimizer: network::optimizer(options.optimizer),
            input_ops,
            features,
            input_name,
            batch: Batch::new(options.batch_size),
            figures: Figures::default(),
            epoch: 0,
            steps: 0,
            written: None,
        })
    }

    /// Sets the input standardisation (after adapting it on the first records).
    pub(crate) fn set_input_ops(&mut self, ops: Vec<InputOp>) {
        self.input_ops = ops;
    }

    /// Whether the input operations are set (adapted, or from the initial model).
    pub(crate) fn has_input_ops(&self) -> bool {
        !self.input_ops.is_empty()
    }

    /// The figures gathered since the last call.
    pub(crate) fn take_figures(&mut self) -> Figures {
        std::mem::take(&mut self.figures)
    }

    /// Whether the head classifies (accuracy) rather than regresses (MAE).
    pub(crate) fn is_classifier(&self) -> bool {
        self.head != Head::Identity
    }

    /// A checkpoint is at `path`: what a NaN loss leaves in place.
    pub(crate) fn mark_written(&mut self, path: &std::path::Path) {
        self.written = Some(path.to_path_buf());
    }

    /// Rows waiting in the partial batch.
    pub(crate) fn batched(&self) -> usize {
        self.batch.labels.len()
    }

    fn network(&self) -> Result<&Network, TrainError> {
        self.network
            .as_ref()
            .ok_or_else(|| TrainError::Framework("the network was lost in a failed step".into()))
    }

    fn normalize(&self, row: &mut [f32]) {
        InputOp::apply_all(&self.input_ops, row);
    }

    /// Adds a row to the batch, stepping when it is full.
    pub(crate) fn push(
        &mut self,
        mut x: Vec<f32>,
        y: f32,
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        self.normalize(&mut x);
        self.batch.push(x, y);
        if self.batch.is_full() {
            self.step(on_event)?;
        }
        Ok(())
    }

    /// One gradient step on the gathered rows (none when the batch is empty: never an empty
    /// batch).
    pub(crate) fn step(
        &mut self,
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        if self.batch.labels.is_empty() {
            return Ok(());
        }
        let labels = std::mem::take(&mut self.batch.labels);
        let features = std::mem::take(&mut self.batch.features);
        let batch = DeviceBatch::new(features, &labels, self.features, self.loss, &self.device);
        let network = self
            .network
            .take()
            .ok_or_else(|| TrainError::Framework("the network was lost in a failed step".into()))?;
        let (network, loss, logits) = network::step(
            network,
            &mut self.optimizer,
            self.options.learning_rate,
            self.loss,
            batch,
        )?;
        self.network = Some(network);
        self.steps += 1;
        if !loss.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                value: loss,
                epoch: self.epoch,
                batch: self.steps,
                kept: self.written.clone(),
            });
        }
        self.figures.add(loss, &logits, &labels, self.head);
        on_event(Event::Batch {
            epoch: self.epoch,
            batch: self.steps,
            loss,
        })?;
        Ok(())
    }

    pub(crate) fn model(&self, version: u64) -> Result<DenseModel, TrainError> {
        Ok(DenseModel {
            input_name: self.input_name.clone(),
            features: self.features,
            input_ops: self.input_ops.clone(),
            image: self.network()?.image_weights()?,
            layers: self.network()?.weights()?,
            activation: self.options.activation,
            head: self.head,
            version,
            template: self.options.init.as_ref().and_then(|m| m.template.clone()),
        })
    }
}

/// The head a loss trains, and the last layer's width.
fn head_for(loss: Loss, classes: usize) -> Result<(Head, usize), TrainError> {
    match loss {
        Loss::SparseCategoricalCrossentropy => Ok((Head::Softmax, classes)),
        Loss::BinaryCrossentropy if classes == 2 => Ok((Head::Sigmoid, 1)),
        Loss::BinaryCrossentropy => Err(TrainError::Option {
            option: "loss",
            reason: format!(
                "binary-crossentropy needs 2 classes, the labels have {classes}; use sparse-categorical-crossentropy"
            ),
        }),
        Loss::MeanSquaredError | Loss::MeanAbsoluteError => Ok((Head::Identity, 1)),
    }
}

/// A row's image shape and the conv blocks to run on it.
type ImagePlan<'a> = ([usize; 3], &'a [ConvBlock]);

/// The image shape and conv blocks, checked against the records' feature count.
fn image_plan(
    options: &TrainOptions,
    features: usize,
) -> Result<Option<ImagePlan<'_>>, TrainError> {
    match options.input_shape {
        Some(shape) if shape.iter().product::<usize>() != features => Err(TrainError::Option {
            option: "input_shape",
            reason: format!(
                "{shape:?} holds {} values, the records have {features} features",
                shape.iter().product::<usize>()
            ),
        }),
        Some(shape) => Ok(Some((shape, options.conv.as_slice()))),
        None => Ok(None),
    }
}

/// Values per row after the conv and pool blocks.
fn flattened(shape: [usize; 3], blocks: &[ConvBlock]) -> usize {
    let [mut h, mut w, mut c] = shape;
    for block in blocks {
        match *block {
            ConvBlock::Conv { filters, .. } => c = filters,
            ConvBlock::MaxPool { size } => (h, w) = (h / size, w / size),
        }
    }
    h * w * c
}

/// The shuffle buffer's generator: seeded apart from the weights' so the two streams differ.
fn shuffle_rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ 0x5348_5546_464c_4521)
}

/// The training rows of one pass, in stream order, without the held-out split and without
/// the records the survey rejected (reported once there).
fn training_rows<'s>(
    survey: &'s Survey,
    source: &'s mut dyn RecordSource,
) -> Result<impl Iterator<Item = Result<(Vec<f32>, f32), TrainError>> + 's, TrainError> {
    let records = source.read(Part::Training)?;
    Ok(records.filter_map(move |record| match record {
        Err(e) => Some(Err(e.into())),
        Ok(r) if survey.split.held_out(&r) => None,
        Ok(r) => survey.decoder.decode(&r).ok().map(Ok),
    }))
}

/// Rows gathered for one step.
#[derive(Default)]
pub(crate) struct Batch {
    size: usize,
    features: Vec<f32>,
    labels: Vec<f32>,
}

impl Batch {
    fn new(size: usize) -> Batch {
        Batch {
            size,
            features: Vec::new(),
            labels: Vec::with_capacity(size),
        }
    }

    fn push(&mut self, x: Vec<f32>, y: f32) {
        self.features.extend(x);
        self.labels.push(y);
    }

    fn is_full(&self) -> bool {
        self.labels.len() >= self.size
    }
}

/// Running sums for an epoch's loss and accuracy / MAE.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    rows: u64,
    loss_sum: f64,
    correct: u64,
    abs_error_sum: f64,
}

impl Figures {
    /// The figures as one epoch's (or online window's) training statistics.
    pub(crate) fn stats(&self, epoch: usize, seconds: f64, classify: bool) -> EpochStats {
        EpochStats {
            epoch,
            records: self.rows,
            seconds,
            records_per_second: self.rows as f64 / seconds.max(1e-9),
            loss: self.mean_loss(),
            accuracy: classify.then(|| self.accuracy()),
            mae: (!classify).then(|| self.mae()),
            val_records: 0,
            val_loss: None,
            val_accuracy: None,
            val_mae: None,
        }
    }

    /// Adds a batch: its mean loss and the head's inputs (logits), row-major.
    fn add(&mut self, loss: f32, logits: &[f32], labels: &[f32], head: Head) {
        let n = labels.len();
        if n == 0 {
            return;
        }
        let width = logits.len() / n;
        self.rows += n as u64;
        self.loss_sum += f64::from(loss) * n as f64;
        for (row, &y) in logits.chunks(width.max(1)).zip(labels) {
            match head {
                Head::Softmax => {
                    let best = argmax(row);
                    self.correct += u64::from(best == y as usize);
                }
                Head::Sigmoid => {
                    let class = if row[0] > 0.0 { 1.0 } else { 0.0 };
                    self.correct += u64::from(class == y);
                }
                Head::Identity => self.abs_error_sum += f64::from((row[0] - y).abs()),
            }
        }
    }

    fn mean_loss(&self) -> f64 {
        self.loss_sum / self.rows.max(1) as f64
    }

    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.rows.max(1) as f64
    }

    fn mae(&self) -> f64 {
        self.abs_error_sum / self.rows.max(1) as f64
    }
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// The framework's forward pass of a [`DenseModel`]: normalisation, the layers on burn's CPU
/// backend, the head.
pub(crate) fn predict(model: &DenseModel, rows: &[f32]) -> Result<Vec<f32>, TrainError> {
    use burn::tensor::{activation, Tensor, TensorData};
    let width = model.features;
    if width == 0 || !rows.len().is_multiple_of(width) {
        return Err(TrainError::Option {
            option: "rows",
            reason: format!("{} values are not whole rows of {width}", rows.len()),
        });
    }
    let mut rows = rows.to_vec();
    for row in rows.chunks_mut(width) {
        InputOp::apply_all(&model.input_ops, row);
    }
    let device = burn::tensor::Device::flex();
    let network = Network::from_weights(
        model.image.as_ref(),
        &model.layers,
        model.activation,
        0.0,
        &device,
    );
    let n = rows.len() / width;
    let x = Tensor::<2>::from_data(TensorData::new(rows, [n, width]), &device);
    let logits = network.forward(x);
    let out = match model.head {
        Head::Softmax => activation::softmax(logits, 1),
        Head::Sigmoid => activation::sigmoid(logits),
        Head::Identity => logits,
    };
    out.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| TrainError::Framework(format!("reading the output: {e:?}")))
}
