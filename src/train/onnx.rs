//! The trained model as a standard ONNX file (opset 13), written with the protobuf types
//! tract-onnx already carries, and written atomically so that a reader (a `streamtract run`
//! reloading the file, or a crash half-way) never sees half a model.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use super::options::Activation;
use super::TrainError;

/// ONNX opset the graph is written for; every operator used is unchanged since.
pub const OPSET: i64 = 13;
/// IR version 7, the newest tract-onnx 0.23 reads and the one opset 13 came with.
const IR_VERSION: i64 = 7;
/// The symbolic batch dimension's name, as in the repo's TensorFlow exports.
const BATCH: &str = "N";
/// Metadata key of the model version.
pub const VERSION_KEY: &str = "streamtract.version";

/// What follows the last dense layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// `Softmax` over the classes: output `probabilities` `[N, C]`.
    Softmax,
    /// `Sigmoid` of one unit: output `probabilities` `[N, 1]`, the probability of class 1.
    Sigmoid,
    /// Nothing: output `prediction` `[N, 1]` (regression).
    Identity,
}

impl Head {
    /// The output's name in the written graph.
    pub fn output_name(self) -> &'static str {
        match self {
            Head::Softmax | Head::Sigmoid => "probabilities",
            Head::Identity => "prediction",
        }
    }
}

/// A fixed per-feature operation on the input before the first dense layer: Keras'
/// `Normalization` (`Sub` mean, `Div` std, or `Mul` by the reciprocal) and `Rescaling` (`Mul`,
/// `Add`) as TensorFlow exports them. Not trained.
#[derive(Debug, Clone, PartialEq)]
pub enum InputOp {
    /// `x - c`.
    Sub(Vec<f32>),
    /// `x / c`.
    Div(Vec<f32>),
    /// `x * c`.
    Mul(Vec<f32>),
    /// `x + c`.
    Add(Vec<f32>),
}

impl InputOp {
    /// Standardisation with a mean and a standard deviation (never 0).
    pub fn standardize(mean: Vec<f32>, std: Vec<f32>) -> Vec<InputOp> {
        vec![InputOp::Sub(mean), InputOp::Div(std)]
    }

    fn onnx(&self) -> (&'static str, &[f32]) {
        match self {
            InputOp::Sub(c) => ("Sub", c),
            InputOp::Div(c) => ("Div", c),
            InputOp::Mul(c) => ("Mul", c),
            InputOp::Add(c) => ("Add", c),
        }
    }

    /// Applies `ops` to one row, in order: what the graph computes before its first layer.
    pub fn apply_all(ops: &[InputOp], row: &mut [f32]) {
        for op in ops {
            op.apply(row);
        }
    }

    /// Applies the operation to one row, in f32 as the graph's operator does, so the trainer's
    /// inputs are bit for bit what the served model computes.
    pub fn apply(&self, row: &mut [f32]) {
        let (_, c) = self.onnx();
        for (x, &c) in row.iter_mut().zip(c) {
            *x = match self {
                InputOp::Sub(_) => *x - c,
                InputOp::Div(_) => *x / c,
                InputOp::Mul(_) => *x * c,
                InputOp::Add(_) => *x + c,
            };
        }
    }
}

/// The graph a fine-tuned model came from: written back with only its dense weights replaced,
/// so names, inputs, outputs and every other node stay the exporter's.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub(crate) proto: ModelProto,
    /// Per dense layer: the kernel's and the bias's initializer names, and whether the kernel
    /// is stored transposed (`Gemm` with `transB = 1`).
    pub(crate) layers: Vec<(String, String, bool)>,
}

/// One dense layer's parameters, as ONNX `MatMul` + `Add` take them.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseWeights {
    /// Inputs of the layer.
    pub inputs: usize,
    /// Units (outputs) of the layer.
    pub units: usize,
    /// Row-major `[inputs, units]` (the ONNX `MatMul` right operand, Keras' kernel layout).
    pub kernel: Vec<f32>,
    /// `[units]`.
    pub bias: Vec<f32>,
}

/// One trained convolution: ONNX `Conv` weights `[filters, channels, kernel, kernel]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvWeights {
    /// Output channels.
    pub filters: usize,
    /// Input channels.
    pub channels: usize,
    /// Square kernel size (odd; "same" padding).
    pub kernel: usize,
    /// Row-major `[filters, channels, kernel, kernel]`.
    pub weight: Vec<f32>,
    /// `[filters]`.
    pub bias: Vec<f32>,
}

/// A step of the convolutional part, with its weights.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageBlock {
    /// A convolution followed by the model's activation.
    Conv(ConvWeights),
    /// Max pooling over `size` × `size` windows, stride `size`.
    MaxPool(usize),
}

/// The convolutional part of a model: rows are images `[height, width, channels]`
/// (channels-last, as Keras), convolved and pooled, then flattened for the dense layers.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageLayers {
    /// `[height, width, channels]` of one row.
    pub shape: [usize; 3],
    /// The blocks, input side first.
    pub blocks: Vec<ImageBlock>,
}

/// A dense network with everything needed to write it: the graph `streamtract train` writes
/// and `streamtract run` serves.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseModel {
    /// The input's name (`features` unless set otherwise).
    pub input_name: String,
    /// Features per row.
    pub features: usize,
    /// Fixed operations on the input before the first layer (standardisation, rescaling).
    pub input_ops: Vec<InputOp>,
    /// Convolution and pooling blocks before the dense layers, for image rows.
    pub image: Option<ImageLayers>,
    /// Dense layers, input side first.
    pub layers: Vec<DenseWeights>,
    /// Activation after every layer but the last.
    pub activation: Activation,
    /// What follows the last layer.
    pub head: Head,
    /// Stored in the file's metadata (`streamtract.version`) and as `model_version`: which
    /// checkpoint of a training run this is.
    pub version: u64,
    /// For a fine-tuned model, the graph it was read from.
    pub template: Option<Template>,
}

impl DenseModel {
    /// The serialised ONNX `ModelProto`.
    pub fn to_onnx(&self) -> Vec<u8> {
        self.model_proto().encode_to_vec()
    }

    /// Writes the model to `path` atomically: a temporary file in the same directory, fsync,
    /// rename over `path`, fsync of the directory. A reader sees the old file or the new one.
    pub fn write(&self, path: &Path) -> Result<(), TrainError> {
        write_atomically(path, &self.to_onnx())
    }

    fn model_proto(&self) -> ModelProto {
        match &self.template {
            Some(template) => self.fill_template(template),
            None => self.new_graph(),
        }
    }

    /// The template with this model's dense weights and version.
    fn fill_template(&self, template: &Template) -> ModelProto {
        let mut proto = template.proto.clone();
        let mut values = std::collections::HashMap::new();
        for (layer, (kernel, bias, transposed)) in self.layers.iter().zip(&template.layers) {
            let k = if *transposed {
                transpose(&layer.kernel, layer.inputs, layer.units)
            } else {
                layer.kernel.clone()
            };
            values.insert(kernel.as_str(), k);
            values.insert(bias.as_str(), layer.bias.clone());
        }
        if let Some(graph) = proto.graph.as_mut() {
            for init in &mut graph.initializer {
                if let Some(v) = values.remove(init.name.as_str()) {
                    init.raw_data.clear();
                    init.float_data = v;
                }
            }
        }
        proto.model_version = self.version as i64;
        proto.metadata_props.retain(|p| p.key != VERSION_KEY);
        proto.metadata_props.push(StringStringEntryProto {
            key: VERSION_KEY.into(),
            value: self.version.to_string(),
        });
        proto
    }

    fn new_graph(&self) -> ModelProto {
        let mut graph = GraphBuilder::default();
        let mut x = self.input_name.clone();
        let row_dims: Vec<usize> = match &self.image {
            Some(image) => image.shape.to_vec(),
            None => vec![self.features],
        };
        for (i, op) in self.input_ops.iter().enumerate() {
            let (name, values) = op.onnx();
            let node = format!("input_{i}/{}", name.to_lowercase());
            let constant = graph.constant(&format!("{node}/value"), &row_dims, values);
            x = graph.node(name, &node, [x, constant], None);
        }
        if let Some(image) = &self.image {
            x = self.image_nodes(&mut graph, image, x);
        }
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let name = format!("dense_{i}");
            let kernel = graph.constant(
                &format!("{name}/kernel"),
                &[layer.inputs, layer.units],
                &layer.kernel,
            );
            let bias = graph.constant(&format!("{name}/bias"), &[layer.units], &layer.bias);
            let product = graph.node("MatMul", &format!("{name}/matmul"), [x, kernel], None);
            x = graph.node("Add", &format!("{name}/bias_add"), [product, bias], None);
            if i < last {
                if let Some(op) = self.activation.onnx_op() {
                    let act = format!("{name}/{}", op.to_lowercase());
                    x = graph.node(op, &act, [x], None);
                }
            }
        }
        let output = self.head.output_name();
        let units = self.layers.last().map_or(self.features, |l| l.units);
        match self.head {
            Head::Softmax => {
                let axis = AttributeProto {
                    name: "axis".into(),
                    r#type: tract_onnx::pb::attribute_proto::AttributeType::Int as i32,
                    i: -1,
                    ..Default::default()
                };
                graph.output_node("Softmax", "softmax", [x], Some(axis), output)
            }
            Head::Sigmoid => graph.output_node("Sigmoid", "sigmoid", [x], None, output),
            Head::Identity => graph.output_node("Identity", "prediction", [x], None, output),
        }
        let proto = GraphProto {
            name: "streamtract_dense".into(),
            node: graph.nodes,
            initializer: graph.initializers,
            input: vec![value_info(&self.input_name, &row_dims)],
            output: vec![value_info(output, &[units])],
            ..Default::default()
        };
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "streamtract".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            model_version: self.version as i64,
            graph: Some(proto),
            metadata_props: vec![StringStringEntryProto {
                key: VERSION_KEY.into(),
                value: self.version.to_string(),
            }],
            ..Default::default()
        }
    }
}

impl DenseModel {
    /// NHWC → NCHW, each block, then `Flatten`: what burn's forward pass does.
    fn image_nodes(&self, graph: &mut GraphBuilder, image: &ImageLayers, x: String) -> String {
        let mut x = graph.node(
            "Transpose",
            "image/to_nchw",
            [x],
            Some(ints("perm", &[0, 3, 1, 2])),
        );
        for (i, block) in image.blocks.iter().enumerate() {
            let name = format!("image_{i}");
            match block {
                ImageBlock::Conv(conv) => {
                    let k = conv.kernel;
                    let w = graph.constant(
                        &format!("{name}/kernel"),
                        &[conv.filters, conv.channels, k, k],
                        &conv.weight,
                    );
                    let b = graph.constant(&format!("{name}/bias"), &[conv.filters], &conv.bias);
                    let pad = (k as i64 - 1) / 2;
                    let node = NodeProto {
                        op_type: "Conv".into(),
                        name: format!("{name}/conv"),
                        input: vec![x, w, b],
                        output: vec![format!("{name}/conv")],
                        attribute: vec![
                            ints("kernel_shape", &[k as i64, k as i64]),
                            ints("pads", &[pad, pad, pad, pad]),
                            ints("strides", &[1, 1]),
                        ],
                        ..Default::default()
                    };
                    graph.nodes.push(node);
                    x = format!("{name}/conv");
                    if let Some(op) = self.activation.onnx_op() {
                        x = graph.node(op, &format!("{name}/{}", op.to_lowercase()), [x], None);
                    }
                }
                ImageBlock::MaxPool(size) => {
                    let size = *size as i64;
                    let node = NodeProto {
                        op_type: "MaxPool".into(),
                        name: format!("{name}/maxpool"),
                        input: vec![x],
                        output: vec![format!("{name}/maxpool")],
                        attribute: vec![
                            ints("kernel_shape", &[size, size]),
                            ints("strides", &[size, size]),
                        ],
                        ..Default::default()
                    };
                    graph.nodes.push(node);
                    x = format!("{name}/maxpool");
                }
            }
        }
        let axis = AttributeProto {
            name: "axis".into(),
            r#type: tract_onnx::pb::attribute_proto::AttributeType::Int as i32,
            i: 1,
            ..Default::default()
        };
        graph.node("Flatten", "image/flatten", [x], Some(axis))
    }
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: tract_onnx::pb::attribute_proto::AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

#[derive(Default)]
struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl GraphBuilder {
    fn constant(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        self.initializers.push(TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            float_data: values.to_vec(),
            ..Default::default()
        });
        name.into()
    }

    /// Adds a node whose single output is named after the node.
    fn node<const N: usize>(
        &mut self,
        op: &str,
        name: &str,
        inputs: [String; N],
        attribute: Option<AttributeProto>,
    ) -> String {
        self.output_node(op, name, inputs, attribute, name);
        name.into()
    }

    fn output_node<const N: usize>(
        &mut self,
        op: &str,
        name: &str,
        inputs: [String; N],
        attribute: Option<AttributeProto>,
        output: &str,
    ) {
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: inputs.into(),
            output: vec![output.into()],
            attribute: attribute.into_iter().collect(),
            ..Default::default()
        });
    }
}

/// `[rows, cols]` row-major to `[cols, rows]`.
pub(crate) fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

fn value_info(name: &str, row: &[usize]) -> ValueInfoProto {
    let dim = |value| Dimension {
        value: Some(value),
        ..Default::default()
    };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto {
                    dim: std::iter::once(dim(dimension::Value::DimParam(BATCH.into())))
                        .chain(
                            row.iter()
                                .map(|&d| dim(dimension::Value::DimValue(d as i64))),
                        )
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory: write, fsync,
/// rename, fsync the directory. A crash leaves either the old file or the new one, and at
/// worst a stray `.tmp` file next to it.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let error = |source| TrainError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path names no file",
        ))
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        // The rename is durable once the directory entry is.
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(error)
}
