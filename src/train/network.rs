//! The trainable network on burn: dense layers, their activation, dropout, the loss and one
//! optimizer step. Everything burn-specific is here, so the rest of `train` deals in plain
//! `f32` slices and [`DenseWeights`].

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, PaddingConfig2d};
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{activation, Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::RngExt;

use super::onnx::{ConvWeights, DenseWeights, ImageBlock, ImageLayers};
use super::options::{Activation, ConvBlock, Loss, Optimizer};
use super::TrainError;

/// Dense layers with an activation between them and dropout after each hidden layer; the last
/// layer's output is left as logits (the head's softmax/sigmoid is part of the loss here and
/// of the written graph there).
#[derive(Module, Debug)]
pub(crate) struct Network {
    convs: Vec<Conv2d>,
    pools: Vec<MaxPool2d>,
    layers: Vec<Linear>,
    dropout: Dropout,
    #[module(skip)]
    activation: Activation,
    /// For image rows: their shape and the order of the conv (`true`) and pool blocks.
    #[module(skip)]
    image: Option<([usize; 3], Vec<bool>)>,
}

impl Network {
    /// A freshly initialised network: Glorot-uniform kernels and zero biases, as Keras'
    /// `Dense` and `Conv2D` defaults. The kernels are drawn from our own seeded generator
    /// rather than burn's process-wide one, so two trainings in one process do not disturb
    /// each other's weights. `sizes` are the dense layers' widths, input side first (the first
    /// is the flattened output of `image`, if any).
    pub(crate) fn new(
        image: Option<([usize; 3], &[ConvBlock])>,
        sizes: &[usize],
        activation: Activation,
        dropout: f64,
        rng: &mut StdRng,
        device: &Device,
    ) -> Network {
        let mut glorot = |fan_in: usize, fan_out: usize, n: usize| -> Vec<f32> {
            let limit = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
            (0..n).map(|_| rng.random_range(-limit..limit)).collect()
        };
        let image = image.map(|(shape, blocks)| {
            let mut channels = shape[2];
            let blocks = blocks
                .iter()
                .map(|block| match *block {
                    ConvBlock::Conv { filters, kernel } => {
                        let area = kernel * kernel;
                        let weight =
                            glorot(channels * area, filters * area, filters * channels * area);
                        let conv = ConvWeights {
                            filters,
                            channels,
                            kernel,
                            weight,
                            bias: vec![0.0; filters],
                        };
                        channels = filters;
                        ImageBlock::Conv(conv)
                    }
                    ConvBlock::MaxPool { size } => ImageBlock::MaxPool(size),
                })
                .collect();
            ImageLayers { shape, blocks }
        });
        let weights: Vec<DenseWeights> = sizes
            .windows(2)
            .map(|w| DenseWeights {
                inputs: w[0],
                units: w[1],
                kernel: glorot(w[0], w[1], w[0] * w[1]),
                bias: vec![0.0; w[1]],
            })
            .collect();
        Network::from_weights(image.as_ref(), &weights, activation, dropout, device)
    }

    /// A network holding given weights (fine-tuning, or the forward pass of a written model).
    pub(crate) fn from_weights(
        image: Option<&ImageLayers>,
        weights: &[DenseWeights],
        activation: Activation,
        dropout: f64,
        device: &Device,
    ) -> Network {
        let layers = weights
            .iter()
            .map(|w| Linear {
                weight: param(&w.kernel, [w.inputs, w.units], device),
                bias: Some(param(&w.bias, [w.units], device)),
            })
            .collect();
        let (mut convs, mut pools, mut order) = (Vec::new(), Vec::new(), Vec::new());
        for block in image.map_or(&[][..], |i| &i.blocks) {
            match block {
                ImageBlock::Conv(c) => {
                    let k = c.kernel;
                    let mut conv = Conv2dConfig::new([c.channels, c.filters], [k, k])
                        .with_padding(PaddingConfig2d::Same)
                        .init(device);
                    conv.weight = param(&c.weight, [c.filters, c.channels, k, k], device);
                    conv.bias = Some(param(&c.bias, [c.filters], device));
                    convs.push(conv);
                    order.push(true);
                }
                ImageBlock::MaxPool(size) => {
                    pools.push(MaxPool2dConfig::new([*size, *size]).init());
                    order.push(false);
                }
            }
        }
        Network {
            convs,
            pools,
            layers,
            dropout: DropoutConfig::new(dropout).init(),
            activation,
            image: image.map(|i| (i.shape, order)),
        }
    }

    fn activate<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self.activation {
            Activation::Relu => activation::relu(x),
            Activation::Tanh => activation::tanh(x),
            Activation::Sigmoid => activation::sigmoid(x),
            Activation::Linear => x,
        }
    }

    /// Image rows `[rows, h·w·c]` (channels-last) through the conv and pool blocks, flattened
    /// channels-first as the written graph's `Flatten` does.
    fn image_forward(&self, x: Tensor<2>) -> Tensor<2> {
        let Some(([h, w, c], order)) = &self.image else {
            return x;
        };
        let rows = x.dims()[0];
        let mut t: Tensor<4> = x.reshape([rows, *h, *w, *c]).permute([0, 3, 1, 2]);
        let (mut conv, mut pool) = (self.convs.iter(), self.pools.iter());
        for &is_conv in order {
            if is_conv {
                if let Some(layer) = conv.next() {
                    t = self.activate(layer.forward(t));
                }
            } else if let Some(layer) = pool.next() {
                t = layer.forward(t);
            }
        }
        t.flatten(1, 3)
    }

    /// Logits for a `[rows, features]` batch.
    pub(crate) fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mut x = self.image_forward(x);
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = self.activate(x);
                x = self.dropout.forward(x);
            }
        }
        x
    }

    /// The convolutional part's parameters, if any.
    pub(crate) fn image_weights(&self) -> Result<Option<ImageLayers>, TrainError> {
        let Some((shape, order)) = &self.image else {
            return Ok(None);
        };
        let (mut convs, mut pools) = (self.convs.iter(), self.pools.iter());
        let mut blocks = Vec::new();
        for &is_conv in order {
            if is_conv {
                let Some(conv) = convs.next() else { break };
                let [filters, channels, kernel, _] = conv.weight.val().dims();
                let bias = match &conv.bias {
                    Some(b) => to_vec(b.val().into_data())?,
                    None => vec![0.0; filters],
                };
                blocks.push(ImageBlock::Conv(ConvWeights {
                    filters,
                    channels,
                    kernel,
                    weight: to_vec(conv.weight.val().into_data())?,
                    bias,
                }));
            } else if let Some(pool) = pools.next() {
                blocks.push(ImageBlock::MaxPool(pool.kernel_size[0]));
            }
        }
        Ok(Some(ImageLayers {
            shape: *shape,
            blocks,
        }))
    }

    /// The layers' parameters, input side first.
    pub(crate) fn weights(&self) -> Result<Vec<DenseWeights>, TrainError> {
        self.layers
            .iter()
            .map(|layer| {
                let [inputs, units] = layer.weight.val().dims();
                let kernel = to_vec(layer.weight.val().into_data())?;
                let bias = match &layer.bias {
                    Some(b) => to_vec(b.val().into_data())?,
                    None => vec![0.0; units],
                };
                Ok(DenseWeights {
                    inputs,
                    units,
                    kernel,
                    bias,
                })
            })
            .collect()
    }
}

/// A trainable parameter holding `values` in `shape`.
fn param<const D: usize>(values: &[f32], shape: [usize; D], device: &Device) -> Param<Tensor<D>> {
    Param::from_tensor(Tensor::from_data(
        TensorData::new(values.to_vec(), shape),
        device,
    ))
}

fn to_vec(data: TensorData) -> Result<Vec<f32>, TrainError> {
    data.try_to_vec::<f32>()
        .map_err(|e| TrainError::Framework(format!("reading a parameter: {e:?}")))
}

/// The device training runs on: burn's pure-Rust CPU backend, with autodiff. The seed goes to
/// burn's generator, which draws the dropout masks; that generator is process-wide, so with
/// dropout two trainings at once in one process are not reproducible.
pub(crate) fn training_device(seed: u64) -> Device {
    let device = Device::flex().autodiff();
    device.seed(seed);
    device
}

/// burn's optimizer for our [`Optimizer`], with Keras' constants (Adam ε = 1e-7; SGD momentum
/// without dampening, which is Keras' update rule up to the learning-rate scaling).
pub(crate) fn optimizer(kind: Optimizer) -> ModuleOptimizer {
    match kind {
        Optimizer::Adam => AdamConfig::new().with_epsilon(1e-7).init(),
        Optimizer::Sgd { momentum } if momentum > 0.0 => SgdConfig::new()
            .with_momentum(Some(
                MomentumConfig::new()
                    .with_momentum(momentum)
                    .with_dampening(0.0),
            ))
            .init(),
        Optimizer::Sgd { .. } => SgdConfig::new().init(),
    }
}

/// A batch on the device: `[rows, features]` and the labels.
pub(crate) struct DeviceBatch {
    pub(crate) features: Tensor<2>,
    pub(crate) labels: Labels,
}

/// Labels shaped for the loss.
pub(crate) enum Labels {
    /// Class indices `[rows]` (sparse categorical cross-entropy).
    Classes(Tensor<1, Int>),
    /// Targets `[rows, 1]` (binary cross-entropy, MSE, MAE).
    Targets(Tensor<2>),
}

impl DeviceBatch {
    pub(crate) fn new(
        features: Vec<f32>,
        labels: &[f32],
        width: usize,
        loss: Loss,
        device: &Device,
    ) -> DeviceBatch {
        let rows = labels.len();
        let features = Tensor::from_data(TensorData::new(features, [rows, width]), device);
        let labels = match loss {
            Loss::SparseCategoricalCrossentropy => {
                let classes: Vec<i64> = labels.iter().map(|&y| y as i64).collect();
                Labels::Classes(Tensor::from_data(TensorData::new(classes, [rows]), device))
            }
            _ => Labels::Targets(Tensor::from_data(
                TensorData::new(labels.to_vec(), [rows, 1]),
                device,
            )),
        };
        DeviceBatch { features, labels }
    }
}

/// The mean loss of `logits` against `labels`, as a scalar tensor gradients flow through.
pub(crate) fn loss(loss: Loss, logits: Tensor<2>, labels: Labels) -> Tensor<1> {
    match (loss, labels) {
        (Loss::SparseCategoricalCrossentropy, Labels::Classes(classes)) => {
            let device = logits.device();
            CrossEntropyLossConfig::new()
                .init(&device)
                .forward(logits, classes)
        }
        (Loss::BinaryCrossentropy, Labels::Targets(y)) => {
            // Stable form of -[y log σ(z) + (1-y) log(1-σ(z))]: max(z,0) - y z + log(1+e^-|z|).
            let softplus_tail = logits.clone().abs().neg().exp().add_scalar(1.0).log();
            (logits.clone().clamp_min(0.0) - y * logits + softplus_tail)
                .mean()
                .reshape([1])
        }
        (Loss::MeanAbsoluteError, Labels::Targets(y)) => (logits - y).abs().mean().reshape([1]),
        (_, Labels::Targets(y)) => {
            let d = logits - y;
            (d.clone() * d).mean().reshape([1])
        }
        // DeviceBatch::new makes class labels only for the categorical loss.
        (_, Labels::Classes(_)) => unreachable!("class labels are made for cross-entropy only"),
    }
}

/// One gradient step on a batch; returns the batch's mean loss before the step.
pub(crate) fn step(
    network: Network,
    optimizer: &mut ModuleOptimizer,
    learning_rate: f64,
    loss_kind: Loss,
    batch: DeviceBatch,
) -> Result<(Network, f32, Vec<f32>), TrainError> {
    let logits = network.forward(batch.features);
    let logits_out = to_vec(logits.clone().into_data())?;
    let loss_tensor = loss(loss_kind, logits, batch.labels);
    let loss_value = to_vec(loss_tensor.clone().into_data())?
        .first()
        .copied()
        .unwrap_or(f32::NAN);
    let grads = GradientsParams::from_grads(loss_tensor.backward(), &network);
    let network = optimizer.step(learning_rate, network, grads);
    Ok((network, loss_value, logits_out))
}

/// Logits and mean loss of a batch for a network in inference mode (`Module::valid`: no
/// dropout, no autodiff graph); the batch is moved off the autodiff device to match it.
pub(crate) fn evaluate(
    network: &Network,
    loss_kind: Loss,
    batch: DeviceBatch,
) -> Result<(f32, Vec<f32>), TrainError> {
    let features = batch.features.inner();
    let labels = match batch.labels {
        Labels::Classes(c) => Labels::Classes(c.inner()),
        Labels::Targets(t) => Labels::Targets(t.inner()),
    };
    let logits = network.forward(features);
    let logits_out = to_vec(logits.clone().into_data())?;
    let loss_value = to_vec(loss(loss_kind, logits, labels).into_data())?
        .first()
        .copied()
        .unwrap_or(f32::NAN);
    Ok((loss_value, logits_out))
}
