//! Fine-tuning: reading a dense ONNX model (a TensorFlow/Keras export, or one this trainer
//! wrote) back into a [`DenseModel`] whose weights training can continue from.
//!
//! The graph must be one chain from its single input to its single output of:
//! per-feature constant operations (`Sub`, `Div`, `Mul`, `Add`: Keras' `Normalization` and
//! `Rescaling`), then dense layers (`MatMul` + `Add`, or `Gemm`), each but the last followed by
//! the same activation (`Relu`, `Tanh`, `Sigmoid`), then an optional `Softmax` or `Sigmoid`
//! head. Anything else is refused with the operator and the node named, never trained wrong.

use std::collections::HashMap;
use std::path::Path;

use prost::Message;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{ModelProto, NodeProto, TensorProto};

use super::onnx::DenseWeights;
use super::onnx::{transpose, DenseModel, Head, InputOp, Template, VERSION_KEY};
use super::options::Activation;
use super::TrainError;

impl DenseModel {
    /// Reads a dense model to fine-tune: one chain from a single `[N, F]` float input to a
    /// single output of per-feature constant operations (`Sub`, `Div`, `Mul`, `Add`), dense
    /// layers (`MatMul` + `Add`, or `Gemm`) with one activation between them, and an optional
    /// `Softmax` or `Sigmoid` head. Anything else fails with [`TrainError::Init`] naming the
    /// operator and the node.
    pub fn read(path: &Path) -> Result<DenseModel, TrainError> {
        let fail = |reason: String| TrainError::Init {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let proto = ModelProto::decode(bytes.as_slice())
            .map_err(|e| fail(format!("not an ONNX model: {e}")))?;
        Reader::new(&proto)
            .map_err(fail)?
            .read(&proto)
            .map_err(fail)
    }
}

struct Reader<'p> {
    constants: HashMap<&'p str, &'p TensorProto>,
    consumers: HashMap<&'p str, Vec<&'p NodeProto>>,
    input: String,
    output: String,
    features: usize,
}

impl<'p> Reader<'p> {
    fn new(proto: &'p ModelProto) -> Result<Reader<'p>, String> {
        let graph = proto.graph.as_ref().ok_or("the model has no graph")?;
        let constants: HashMap<&str, &TensorProto> = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|i| !constants.contains_key(i.name.as_str()))
            .collect();
        let [input] = inputs.as_slice() else {
            return Err(format!(
                "it has {} inputs; only single-input dense models can be fine-tuned",
                inputs.len()
            ));
        };
        let [output] = graph.output.as_slice() else {
            return Err(format!(
                "it has {} outputs; only single-output models can be fine-tuned",
                graph.output.len()
            ));
        };
        let features = input_width(input).ok_or_else(|| {
            format!(
                "input `{}` is not a float32 [N, features] tensor",
                input.name
            )
        })?;
        let mut consumers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
        for node in &graph.node {
            for name in &node.input {
                consumers.entry(name.as_str()).or_default().push(node);
            }
        }
        Ok(Reader {
            constants,
            consumers,
            input: input.name.clone(),
            output: output.name.clone(),
            features,
        })
    }

    /// Walks the chain from the input to the output.
    fn read(self, proto: &ModelProto) -> Result<DenseModel, String> {
        let mut input_ops = Vec::new();
        let mut layers: Vec<DenseWeights> = Vec::new();
        let mut names = Vec::new();
        let mut activation: Option<Activation> = None;
        let mut head = Head::Identity;
        let mut current = self.input.clone();
        while current != self.output {
            let node = self.next(&current)?;
            match node.op_type.as_str() {
                "Sub" | "Div" | "Mul" | "Add" if layers.is_empty() => {
                    input_ops.push(self.input_op(node, &current)?);
                    current = node.output[0].clone();
                }
                "MatMul" | "Gemm" => {
                    let inputs = layers.last().map_or(self.features, |l| l.units);
                    let (layer, kernel, bias, transposed, out) = self.dense(node, inputs)?;
                    layers.push(layer);
                    names.push((kernel, bias, transposed));
                    current = out;
                }
                "Relu" | "Tanh" | "Sigmoid" if !layers.is_empty() => {
                    let found = node.op_type.to_lowercase().parse::<Activation>()?;
                    let is_output = node.output[0] == self.output;
                    if is_output && found == Activation::Sigmoid {
                        head = Head::Sigmoid;
                    } else if is_output {
                        return Err(unsupported(
                            node,
                            "an activation on the output cannot be trained",
                        ));
                    } else if activation.is_some_and(|a| a != found) {
                        return Err(unsupported(
                            node,
                            "every hidden layer must have the same activation",
                        ));
                    } else {
                        activation = Some(found);
                    }
                    current = node.output[0].clone();
                }
                "Softmax" if !layers.is_empty() && node.output[0] == self.output => {
                    head = Head::Softmax;
                    current = node.output[0].clone();
                }
                _ => return Err(unsupported(node, "this operator cannot be trained here")),
            }
        }
        if layers.is_empty() {
            return Err("it has no dense layer (MatMul + Add or Gemm)".into());
        }
        let version = proto
            .metadata_props
            .iter()
            .find(|p| p.key == VERSION_KEY)
            .and_then(|p| p.value.parse().ok())
            .unwrap_or(proto.model_version.max(0) as u64);
        Ok(DenseModel {
            input_name: self.input.clone(),
            features: self.features,
            input_ops,
            image: None,
            layers,
            activation: activation.unwrap_or(Activation::Linear),
            head,
            version,
            template: Some(Template {
                proto: proto.clone(),
                layers: names,
            }),
        })
    }

    /// A per-feature constant operation on `current` (before the first dense layer).
    fn input_op(&self, node: &NodeProto, current: &str) -> Result<InputOp, String> {
        let commutes = matches!(node.op_type.as_str(), "Mul" | "Add");
        if node.input.first().map(String::as_str) != Some(current) && !commutes {
            return Err(unsupported(node, "the input must be the left operand"));
        }
        let constant = node
            .input
            .iter()
            .find(|i| i.as_str() != current)
            .and_then(|i| self.constants.get(i.as_str()).copied())
            .ok_or_else(|| unsupported(node, "the other operand is not a constant"))?;
        let values = per_feature(constant, self.features).ok_or_else(|| {
            unsupported(
                node,
                "the constant is not a scalar or one value per feature",
            )
        })?;
        Ok(match node.op_type.as_str() {
            "Sub" => InputOp::Sub(values),
            "Div" => InputOp::Div(values),
            "Mul" => InputOp::Mul(values),
            _ => InputOp::Add(values),
        })
    }

    /// The one node that reads `name`.
    fn next(&self, name: &str) -> Result<&'p NodeProto, String> {
        match self.consumers.get(name).map(Vec::as_slice) {
            Some([node]) => Ok(node),
            Some(nodes) if nodes.len() > 1 => Err(format!(
                "`{name}` feeds {} nodes; only a single chain of layers can be fine-tuned",
                nodes.len()
            )),
            _ => Err(format!(
                "nothing reads `{name}`; the graph does not reach its output"
            )),
        }
    }

    /// A dense layer at `node`: `MatMul` then `Add` of a bias, or one `Gemm`.
    fn dense(
        &self,
        node: &NodeProto,
        inputs: usize,
    ) -> Result<(DenseWeights, String, String, bool, String), String> {
        let kernel = self.kernel(node, inputs)?;
        let bias = self.bias(node, kernel.units)?;
        Ok((
            DenseWeights {
                inputs,
                units: kernel.units,
                kernel: kernel.values,
                bias: bias.values,
            },
            kernel.name,
            bias.name,
            kernel.transposed,
            bias.out,
        ))
    }

    /// The layer's weights (`node`'s second operand, a constant matrix taking `inputs`
    /// values), stored `[inputs, units]` row-major whatever the graph's layout.
    fn kernel(&self, node: &NodeProto, inputs: usize) -> Result<Kernel, String> {
        let kernel_name = node
            .input
            .get(1)
            .ok_or_else(|| unsupported(node, "no weight operand"))?;
        let kernel = self
            .constants
            .get(kernel_name.as_str())
            .ok_or_else(|| unsupported(node, "the weights are not a constant"))?;
        let transposed = gemm_transposed(node)?;
        let dims: Vec<usize> = kernel.dims.iter().map(|&d| d as usize).collect();
        let (rows, cols) = match dims.as_slice() {
            [r, c] => (*r, *c),
            _ => return Err(unsupported(node, "the weights are not a matrix")),
        };
        let (k_in, units) = if transposed {
            (cols, rows)
        } else {
            (rows, cols)
        };
        if k_in != inputs {
            return Err(unsupported(
                node,
                &format!("the weights take {k_in} inputs, the layer before gives {inputs}"),
            ));
        }
        let mut values =
            floats(kernel).ok_or_else(|| unsupported(node, "the weights are not float32"))?;
        if transposed {
            values = transpose(&values, units, k_in);
        }
        Ok(Kernel {
            name: kernel_name.clone(),
            values,
            units,
            transposed,
        })
    }

    /// The layer's bias of `units` values: `Gemm`'s third operand, or the constant the `Add`
    /// after a `MatMul` adds; with the name the layer's output leaves under.
    fn bias(&self, node: &NodeProto, units: usize) -> Result<Bias, String> {
        let (bias_node, bias_name, out) = if node.op_type == "Gemm" {
            let name = node
                .input
                .get(2)
                .ok_or_else(|| unsupported(node, "Gemm without a bias"))?;
            (node, name.clone(), node.output[0].clone())
        } else {
            let add = self.next(&node.output[0])?;
            if add.op_type != "Add" {
                return Err(unsupported(
                    add,
                    "a MatMul must be followed by the Add of its bias",
                ));
            }
            let name = add
                .input
                .iter()
                .find(|i| **i != node.output[0])
                .ok_or_else(|| unsupported(add, "no bias operand"))?;
            (add, name.clone(), add.output[0].clone())
        };
        let values = self
            .constants
            .get(bias_name.as_str())
            .and_then(|t| floats(t))
            .filter(|b| b.len() == units)
            .ok_or_else(|| {
                unsupported(
                    bias_node,
                    &format!("the bias is not a constant of {units} float32 values"),
                )
            })?;
        Ok(Bias {
            name: bias_name,
            values,
            out,
        })
    }
}

/// A dense layer's weights, as training holds them.
struct Kernel {
    /// The initializer's name in the graph.
    name: String,
    /// `[inputs, units]`, row-major.
    values: Vec<f32>,
    units: usize,
    /// The graph stores them `[units, inputs]` (`Gemm` with `transB = 1`).
    transposed: bool,
}

/// A dense layer's bias.
struct Bias {
    /// The initializer's name in the graph.
    name: String,
    values: Vec<f32>,
    /// The layer's output: where the chain goes on.
    out: String,
}

/// Whether a `Gemm` takes its weights transposed (`transB`); fails on the `Gemm` variants
/// training does not reproduce. False for `MatMul`.
fn gemm_transposed(node: &NodeProto) -> Result<bool, String> {
    let int_attr = |name: &str| node.attribute.iter().find(|a| a.name == name).map(|a| a.i);
    let float_attr = |name: &str| node.attribute.iter().find(|a| a.name == name).map(|a| a.f);
    let transposed = node.op_type == "Gemm" && int_attr("transB") == Some(1);
    if node.op_type == "Gemm"
        && (int_attr("transA").unwrap_or(0) != 0
            || float_attr("alpha").unwrap_or(1.0) != 1.0
            || float_attr("beta").unwrap_or(1.0) != 1.0)
    {
        return Err(unsupported(
            node,
            "only Gemm with transA = 0, alpha = beta = 1",
        ));
    }
    Ok(transposed)
}

fn unsupported(node: &NodeProto, why: &str) -> String {
    format!("operator {} (node `{}`): {why}", node.op_type, node.name)
}

fn input_width(input: &tract_onnx::pb::ValueInfoProto) -> Option<usize> {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value;
    use tract_onnx::pb::type_proto;
    let Some(type_proto::Value::TensorType(t)) = input.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    if t.elem_type != DataType::Float as i32 {
        return None;
    }
    match t.shape.as_ref()?.dim.as_slice() {
        [_, width] => match width.value {
            Some(Value::DimValue(w)) if w > 0 => Some(w as usize),
            _ => None,
        },
        _ => None,
    }
}

/// A float32 initializer's values, from `float_data` or little-endian `raw_data`.
fn floats(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != DataType::Float as i32 {
        return None;
    }
    if !t.float_data.is_empty() {
        return Some(t.float_data.clone());
    }
    if !t.raw_data.len().is_multiple_of(4) {
        return None;
    }
    Some(
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// A constant as one value per feature: a scalar repeated, or `[F]` / `[1, F]`.
fn per_feature(t: &TensorProto, features: usize) -> Option<Vec<f32>> {
    let values = floats(t)?;
    match values.len() {
        1 => Some(vec![values[0]; features]),
        n if n == features => Some(values),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(path: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
    }

    #[test]
    fn reads_the_tensorflow_digits_mlp() {
        let model = DenseModel::read(&repo("models/digits_mlp.onnx")).unwrap();
        assert_eq!(model.input_name, "pixels");
        assert_eq!(model.features, 64);
        assert_eq!(model.head, Head::Softmax);
        assert_eq!(model.activation, Activation::Relu);
        let units: Vec<usize> = model.layers.iter().map(|l| l.units).collect();
        assert_eq!(units, vec![64, 32, 10]);
        assert!(
            matches!(&model.input_ops[..], [InputOp::Mul(m), InputOp::Add(_)] if (m[0] - 1.0 / 16.0).abs() < 1e-7)
        );
    }

    #[test]
    fn reads_the_breast_cancer_model_with_its_sigmoid_head() {
        let model = DenseModel::read(&repo("models/breast_cancer.onnx")).unwrap();
        assert_eq!(model.head, Head::Sigmoid);
        assert!(matches!(
            &model.input_ops[..],
            [InputOp::Sub(_), InputOp::Mul(_)]
        ));
        assert_eq!(model.layers.last().unwrap().units, 1);
    }

    #[test]
    fn refuses_a_cnn_by_its_input_shape() {
        let err = DenseModel::read(&repo("models/digits_cnn.onnx"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is not a float32 [N, features] tensor"),
            "{err}"
        );
    }

    #[test]
    fn refuses_an_embedding_naming_the_operator_and_node() {
        let err = DenseModel::read(&repo("models/digits_embedding.onnx"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot fine-tune"), "{err}");
        assert!(err.contains("operator "), "{err}");
        assert!(err.contains("(node `"), "{err}");
    }

    #[test]
    fn refuses_a_two_input_model() {
        let err = DenseModel::read(&repo("models/wine_two_inputs.onnx"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 inputs"), "{err}");
    }
}
