//! What a model expects and produces: names, element types and shapes, read from the ONNX graph.

use std::fmt;

/// One dimension of a tensor in a model's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A dimension left symbolic in the graph (the batch dimension, e.g. `unk__6` or `N`).
    Symbolic(String),
    /// A fixed size.
    Fixed(usize),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Symbolic(s) => write!(f, "{s}"),
            Dim::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// Element type of a model tensor, as far as streamtract needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    /// 32-bit IEEE float, the type Keras models use. The only input type supported today.
    F32,
    /// Any other type, by tract's name (outputs of these types are converted to f32).
    Other(&'static str),
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElementType::F32 => write!(f, "float32"),
            ElementType::Other(s) => write!(f, "{s}"),
        }
    }
}

/// One named input or output of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Tensor name in the ONNX graph (what `--rename-inputs` set at export).
    pub name: String,
    /// Element type.
    pub element_type: ElementType,
    /// Full shape, batch dimension first.
    pub shape: Vec<Dim>,
}

impl TensorSpec {
    /// The shape of one record's slice: every dimension after the batch dimension.
    ///
    /// Returns `None` when one of those dimensions is symbolic (variable-length rows are not
    /// supported).
    pub fn row_shape(&self) -> Option<Vec<usize>> {
        self.shape
            .iter()
            .skip(1)
            .map(|d| match d {
                Dim::Fixed(n) => Some(*n),
                Dim::Symbolic(_) => None,
            })
            .collect()
    }

    /// Number of values in one record's slice (product of [`row_shape`](Self::row_shape)).
    pub fn row_len(&self) -> Option<usize> {
        self.row_shape().map(|s| s.iter().product())
    }
}

impl fmt::Display for TensorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        write!(
            f,
            "{}: {}[{}]",
            self.name,
            self.element_type,
            dims.join(", ")
        )
    }
}

/// The inputs and outputs of a model, in graph order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Model inputs.
    pub inputs: Vec<TensorSpec>,
    /// Model outputs.
    pub outputs: Vec<TensorSpec>,
}

impl Signature {
    /// Finds an input by name.
    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|t| t.name == name)
    }

    /// Names of all inputs, comma separated, for error messages.
    pub fn input_names(&self) -> String {
        self.inputs
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "inputs:")?;
        for t in &self.inputs {
            writeln!(f, "  {t}")?;
        }
        writeln!(f, "outputs:")?;
        for t in &self.outputs {
            writeln!(f, "  {t}")?;
        }
        Ok(())
    }
}
