//! What to train and how: the network, the task and its loss, the optimizer and the epochs.
//!
//! The defaults follow Keras' (`Adam(1e-3)`, batch 32, `Dense` kernels drawn Glorot-uniform
//! with zero biases), so a recipe written for `model.fit` means the same here.

use std::fmt;
use std::str::FromStr;

use super::TrainError;

/// The activation between dense layers (Keras' `activation=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// `max(x, 0)`, the Keras default for hidden layers in most recipes.
    #[default]
    Relu,
    /// Hyperbolic tangent.
    Tanh,
    /// Logistic sigmoid.
    Sigmoid,
    /// No activation.
    Linear,
}

impl Activation {
    /// The ONNX operator that computes it, `None` for [`Activation::Linear`].
    pub(crate) fn onnx_op(self) -> Option<&'static str> {
        match self {
            Activation::Relu => Some("Relu"),
            Activation::Tanh => Some("Tanh"),
            Activation::Sigmoid => Some("Sigmoid"),
            Activation::Linear => None,
        }
    }
}

impl FromStr for Activation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "relu" => Ok(Activation::Relu),
            "tanh" => Ok(Activation::Tanh),
            "sigmoid" => Ok(Activation::Sigmoid),
            "linear" => Ok(Activation::Linear),
            _ => Err("one of relu, tanh, sigmoid, linear".into()),
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Linear => "linear",
        })
    }
}

/// One step of the convolutional part of a network, which runs on image-shaped rows
/// ([`TrainOptions::input_shape`]) before the dense layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvBlock {
    /// Keras' `Conv2D(filters, kernel, padding="same")` followed by the hidden activation.
    Conv {
        /// Output channels.
        filters: usize,
        /// Square kernel size, odd (so "same" padding is symmetric, as ONNX writes it).
        kernel: usize,
    },
    /// Keras' `MaxPooling2D(size)`: windows of `size` × `size`, stride `size`.
    MaxPool {
        /// Window size and stride.
        size: usize,
    },
}

impl FromStr for ConvBlock {
    type Err = String;
    /// `FILTERS:KERNEL` (`16:3`) or `pool:SIZE` (`pool:2`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("`{s}`: expected FILTERS:KERNEL (e.g. 16:3) or pool:SIZE (e.g. pool:2)");
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        let b: usize = b.trim().parse().map_err(|_| bad())?;
        if a.trim() == "pool" {
            return Ok(ConvBlock::MaxPool { size: b });
        }
        let filters: usize = a.trim().parse().map_err(|_| bad())?;
        Ok(ConvBlock::Conv { filters, kernel: b })
    }
}

/// What the model learns to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// One class out of `classes`; labels are the integers `0..classes`. `None` counts the
    /// classes from the data (the largest label + 1).
    Classify {
        /// Number of classes, or `None` to infer it from the labels.
        classes: Option<usize>,
    },
    /// One real number per record.
    Regress,
}

impl FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "classify" => Ok(Task::Classify { classes: None }),
            "regress" => Ok(Task::Regress),
            _ => Err("one of classify, regress".into()),
        }
    }
}

/// The loss minimised (Keras' `loss=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// `sparse_categorical_crossentropy` over a softmax output, integer labels.
    SparseCategoricalCrossentropy,
    /// `binary_crossentropy` over one sigmoid output, labels 0 and 1.
    BinaryCrossentropy,
    /// Mean squared error (regression).
    MeanSquaredError,
    /// Mean absolute error (regression).
    MeanAbsoluteError,
}

impl Loss {
    /// The loss Keras recipes use for a task: sparse categorical cross-entropy for
    /// classification, MSE for regression.
    pub fn default_for(task: Task) -> Loss {
        match task {
            Task::Classify { .. } => Loss::SparseCategoricalCrossentropy,
            Task::Regress => Loss::MeanSquaredError,
        }
    }

    /// Whether this loss fits the task; the error says which losses do.
    pub(crate) fn check(self, task: Task) -> Result<(), TrainError> {
        let fits = match task {
            Task::Classify { .. } => matches!(
                self,
                Loss::SparseCategoricalCrossentropy | Loss::BinaryCrossentropy
            ),
            Task::Regress => matches!(self, Loss::MeanSquaredError | Loss::MeanAbsoluteError),
        };
        if fits {
            return Ok(());
        }
        let expected = match task {
            Task::Classify { .. } => {
                "sparse-categorical-crossentropy or binary-crossentropy for --task classify"
            }
            Task::Regress => "mse or mae for --task regress",
        };
        Err(TrainError::Option {
            option: "loss",
            reason: format!("`{self}` does not fit the task; use {expected}"),
        })
    }
}

impl FromStr for Loss {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sparse-categorical-crossentropy" | "sparse_categorical_crossentropy" => {
                Ok(Loss::SparseCategoricalCrossentropy)
            }
            "binary-crossentropy" | "binary_crossentropy" => Ok(Loss::BinaryCrossentropy),
            "mse" | "mean-squared-error" => Ok(Loss::MeanSquaredError),
            "mae" | "mean-absolute-error" => Ok(Loss::MeanAbsoluteError),
            _ => {
                Err("one of sparse-categorical-crossentropy, binary-crossentropy, mse, mae".into())
            }
        }
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Loss::SparseCategoricalCrossentropy => "sparse-categorical-crossentropy",
            Loss::BinaryCrossentropy => "binary-crossentropy",
            Loss::MeanSquaredError => "mse",
            Loss::MeanAbsoluteError => "mae",
        })
    }
}

/// The optimizer (Keras' `optimizer=`); the learning rate is [`TrainOptions::learning_rate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    /// Adam with Keras' defaults (β₁ 0.9, β₂ 0.999, ε 1e-7).
    Adam,
    /// Stochastic gradient descent with (undampened) momentum, as Keras' `SGD(momentum=…)`.
    Sgd {
        /// Momentum, 0 for plain SGD.
        momentum: f64,
    },
}

impl FromStr for Optimizer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "adam" => Ok(Optimizer::Adam),
            "sgd" => Ok(Optimizer::Sgd { momentum: 0.9 }),
            _ => Err("one of adam, sgd".into()),
        }
    }
}

/// Which records measure the model on data it did not train on.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Validation {
    /// No validation.
    #[default]
    None,
    /// The last fraction of each partition's range (by offset), like Keras' `validation_split`
    /// takes the last fraction of the arrays. Between 0 and 1, exclusive.
    Split(f64),
    /// The record source's own validation records (for Kafka, other topic specs:
    /// [`KafkaRecords::validation`](super::KafkaRecords::validation)), read to their end after
    /// each epoch.
    Separate,
}

/// Everything about a training run except where the records come from.
///
/// ```
/// use streamtract::train::{Task, TrainOptions};
/// let options = TrainOptions::new(Task::Classify { classes: None })
///     .hidden_layers([64, 32])
///     .epochs(20)
///     .seed(1);
/// assert_eq!(options.batch_size, 32);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// Classification or regression.
    pub task: Task,
    /// Units of each hidden dense layer, input side first. Empty: a linear (or logistic) model.
    pub hidden_layers: Vec<usize>,
    /// The shape of one row as an image, `[height, width, channels]` (Keras' channels-last),
    /// for a network with [`conv`](Self::conv) blocks; the written model takes
    /// `[N, height, width, channels]`.
    pub input_shape: Option<[usize; 3]>,
    /// Convolution and pooling blocks before the dense layers (a small CNN); empty for a dense
    /// network.
    pub conv: Vec<ConvBlock>,
    /// Activation after each hidden layer.
    pub activation: Activation,
    /// Dropout rate after each hidden layer while training (0 disables it).
    pub dropout: f64,
    /// Standardise each feature with the training data's mean and standard deviation (Keras'
    /// `Normalization` layer after `adapt`), baked into the written model.
    pub normalize: bool,
    /// The loss; `None` takes [`Loss::default_for`] the task.
    pub loss: Option<Loss>,
    /// The optimizer.
    pub optimizer: Optimizer,
    /// The learning rate.
    pub learning_rate: f64,
    /// Passes over the training records.
    pub epochs: usize,
    /// Records per gradient step; the last batch of an epoch may be smaller.
    pub batch_size: usize,
    /// Records held to shuffle from, as tf.data's `shuffle(buffer_size)`: a buffer at least as
    /// large as the data gives a full shuffle each epoch; 0 or 1 keeps the stream order.
    pub shuffle_buffer: usize,
    /// Validation records.
    pub validation: Validation,
    /// Seeds the weights, dropout and shuffling: the same seed on the same records in the
    /// same order gives the same model.
    pub seed: u64,
    /// Where to write the model after every epoch (atomically), so that a crash or a loss that
    /// turns NaN leaves the last good model there. `None`: only the returned model.
    pub checkpoint: Option<std::path::PathBuf>,
    /// The version stamped on the first model written (later ones count up from it).
    pub first_version: u64,
    /// Fine-tune this model ([`DenseModel::read`](super::DenseModel::read)) instead of
    /// training a new one: its layers, activation, head and input operations are kept, only
    /// the dense weights train, and the written file is its graph with the new weights.
    pub init: Option<super::DenseModel>,
}

impl TrainOptions {
    /// Keras-like defaults for `task`: no hidden layer, relu, no dropout, normalisation on,
    /// Adam at 1e-3, 10 epochs of batch 32, a 10,000-record shuffle buffer, no validation,
    /// seed 0.
    pub fn new(task: Task) -> TrainOptions {
        TrainOptions {
            task,
            hidden_layers: Vec::new(),
            input_shape: None,
            conv: Vec::new(),
            activation: Activation::Relu,
            dropout: 0.0,
            normalize: true,
            loss: None,
            optimizer: Optimizer::Adam,
            learning_rate: 1e-3,
            epochs: 10,
            batch_size: 32,
            shuffle_buffer: 10_000,
            validation: Validation::None,
            seed: 0,
            checkpoint: None,
            first_version: 1,
            init: None,
        }
    }

    /// Sets the hidden layers' units.
    pub fn hidden_layers(mut self, units: impl IntoIterator<Item = usize>) -> Self {
        self.hidden_layers = units.into_iter().collect();
        self
    }

    /// Sets the number of epochs.
    pub fn epochs(mut self, epochs: usize) -> Self {
        self.epochs = epochs;
        self
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The loss used: the one set, or the task's default.
    pub fn loss(&self) -> Loss {
        self.loss.unwrap_or_else(|| Loss::default_for(self.task))
    }

    /// The options a fine-tuning run actually uses: the initial model's head decides the
    /// classes and the default loss, its activation and input operations stay, versions count
    /// on from its own. Without an initial model, the options unchanged.
    pub(crate) fn for_init(&self) -> Result<TrainOptions, TrainError> {
        use super::Head;
        let Some(init) = &self.init else {
            return Ok(self.clone());
        };
        let units = init.layers.last().map_or(0, |l| l.units);
        let mismatch = |reason: String| {
            Err(TrainError::Option {
                option: "init",
                reason,
            })
        };
        let (task, loss) = match (init.head, self.task) {
            (Head::Softmax, Task::Classify { classes }) if classes.is_none_or(|c| c == units) => (
                Task::Classify {
                    classes: Some(units),
                },
                Loss::SparseCategoricalCrossentropy,
            ),
            (Head::Sigmoid, Task::Classify { classes })
                if units == 1 && classes.is_none_or(|c| c == 2) =>
            {
                (
                    Task::Classify { classes: Some(2) },
                    Loss::BinaryCrossentropy,
                )
            }
            (Head::Identity, Task::Regress) if units == 1 => {
                (Task::Regress, Loss::MeanSquaredError)
            }
            (head, task) => {
                return mismatch(format!(
                    "the model's {head:?} head with {units} outputs does not fit {task:?}"
                ))
            }
        };
        if self
            .loss
            .is_some_and(|l| l != loss && !(task == Task::Regress && l == Loss::MeanAbsoluteError))
        {
            return mismatch(format!(
                "the model's head is trained with {loss}, not {}",
                self.loss()
            ));
        }
        let mut options = self.clone();
        options.task = task;
        options.loss = Some(self.loss.unwrap_or(loss));
        options.activation = init.activation;
        options.normalize = false;
        options.first_version = init.version + 1;
        Ok(options)
    }

    /// Checks that the initial model, if any, takes the `features` the records of `what` have.
    pub(crate) fn check_init_features(
        &self,
        features: usize,
        what: &str,
    ) -> Result<(), TrainError> {
        match &self.init {
            Some(init) if init.features != features => Err(TrainError::Option {
                option: "init",
                reason: format!(
                    "the model takes {} features, the records of {what} have {features}",
                    init.features
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Checks every option before a record is read; the error names the option.
    pub(crate) fn check(&self) -> Result<(), TrainError> {
        let invalid = |option, reason: &str| {
            Err(TrainError::Option {
                option,
                reason: reason.to_string(),
            })
        };
        if self.epochs == 0 {
            return invalid("epochs", "must be at least 1");
        }
        if self.batch_size == 0 {
            return invalid("batch_size", "must be at least 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return invalid("learning_rate", "must be a positive number");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return invalid("dropout", "must be in [0, 1)");
        }
        if self.hidden_layers.contains(&0) {
            return invalid("layers", "every layer needs at least one unit");
        }
        if !self.conv.is_empty() && self.input_shape.is_none() {
            return invalid(
                "conv",
                "convolution blocks need input_shape (height, width, channels)",
            );
        }
        if self.input_shape.is_some_and(|s| s.contains(&0)) {
            return invalid("input_shape", "every dimension must be at least 1");
        }
        if let Some([h, w, _]) = self.input_shape {
            let (mut h, mut w) = (h, w);
            for block in &self.conv {
                match *block {
                    ConvBlock::Conv { filters, kernel } => {
                        if filters == 0 || kernel % 2 == 0 {
                            return invalid(
                                "conv",
                                "a convolution needs filters and an odd kernel size (same padding)",
                            );
                        }
                    }
                    ConvBlock::MaxPool { size } => {
                        if size == 0 || size > h || size > w {
                            return invalid(
                                "conv",
                                "a pool window must fit the image at that point",
                            );
                        }
                        (h, w) = (h / size, w / size);
                    }
                }
            }
        }
        if self.init.is_some() && (!self.conv.is_empty() || self.input_shape.is_some()) {
            return invalid(
                "init",
                "fine-tuning takes dense models; leave out conv and input_shape",
            );
        }
        if let Optimizer::Sgd { momentum } = self.optimizer {
            if !(0.0..1.0).contains(&momentum) {
                return invalid("momentum", "must be in [0, 1)");
            }
        }
        if let Validation::Split(f) = self.validation {
            if !(f > 0.0 && f < 1.0) {
                return invalid("validation_split", "must be between 0 and 1, exclusive");
            }
        }
        if let Task::Classify { classes: Some(c) } = self.task {
            if c < 2 {
                return invalid("classes", "a classifier needs at least 2 classes");
            }
        }
        self.loss().check(self.task)
    }
}
