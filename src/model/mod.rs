//! Loading TensorFlow models exported to ONNX and running them with tract.
//!
//! [`Model::load`] reads the file, records its SHA-256 (written on every output record so a
//! consumer can tell model versions apart), reads the [`Signature`] and compiles an optimised
//! plan whose batch dimension stays symbolic, so one plan serves every batch size.
//! [`InferencePool`] runs that plan on dedicated OS threads, one tract state per thread, so
//! inference never blocks the async runtime that drives Kafka I/O.
//!
//! ```no_run
//! use streamtract::model::Model;
//! let model = Model::load("models/digits_mlp.onnx")?;
//! println!("{}", model.signature());
//! # Ok::<(), streamtract::Error>(())
//! ```

mod runner;
mod signature;

pub use runner::{InferencePool, PendingBatch};
pub use signature::{Dim, ElementType, Signature, TensorSpec};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;

use crate::error::ModelError;

/// The compiled tract plan.
pub(crate) type Plan = Arc<TypedRunnableModel>;

/// A loaded, optimised model ready to run batches.
#[derive(Clone)]
pub struct Model {
    path: PathBuf,
    sha256: String,
    signature: Signature,
    plan: Plan,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .field("signature", &self.signature)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Loads an ONNX file, reads its signature and compiles it for any batch size.
    ///
    /// Fails with [`ModelError::Unreadable`] when the file is missing, [`ModelError::Load`]
    /// when tract cannot parse it, and [`ModelError::Signature`] when an input is not float32
    /// or a dimension other than the first is symbolic.
    pub fn load(path: impl AsRef<Path>) -> Result<Model, ModelError> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|e| ModelError::Unreadable {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let load_err = |e: TractError| ModelError::Load {
            path: path.clone(),
            message: format!("{e:#}"),
        };
        let typed = tract_onnx::onnx()
            .model_for_read(&mut bytes.as_slice())
            .and_then(|m| m.into_typed())
            .map_err(load_err)?;
        let signature = read_signature(&typed).map_err(load_err)?;
        check_supported(&path, &signature)?;
        let plan = typed
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(load_err)?;
        Ok(Model { path, sha256, signature, plan })
    }

    /// The file the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lower-case hex SHA-256 of the model file.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Inputs and outputs of the graph.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Runs one batch on the calling thread. `inputs` are in signature order, each shaped
    /// `[n, row_shape...]`; the result holds one f32 array per output, batch dimension first.
    ///
    /// Prefer [`InferencePool`] in async code: this call blocks for the whole inference.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        let mut state = self.plan.spawn().map_err(|e| ModelError::Run(format!("{e:#}")))?;
        run_with_state(&mut state, inputs)
    }

    pub(crate) fn plan(&self) -> &Plan {
        &self.plan
    }

    pub(crate) fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

/// Runs a batch on an existing tract state and converts every output to f32.
pub(crate) fn run_with_state(
    state: &mut TypedSimpleState,
    inputs: Vec<Tensor>,
) -> Result<Vec<Tensor>, ModelError> {
    let inputs: TVec<TValue> = inputs.into_iter().map(|t| t.into()).collect();
    let outputs = state.run(inputs).map_err(|e| ModelError::Run(format!("{e:#}")))?;
    outputs
        .into_iter()
        .map(|v| {
            let t = v.into_tensor();
            if t.datum_type() == f32::datum_type() {
                Ok(t)
            } else {
                t.cast_to::<f32>()
                    .map(|c| c.into_owned())
                    .map_err(|e| ModelError::Run(format!("cannot convert output to f32: {e:#}")))
            }
        })
        .collect()
}

fn read_signature(model: &TypedModel) -> TractResult<Signature> {
    let spec = |outlet: OutletId, fact: &TypedFact| -> TensorSpec {
        let name = model
            .outlet_label(outlet)
            .map(str::to_owned)
            .unwrap_or_else(|| model.node(outlet.node).name.clone());
        let element_type = if fact.datum_type == f32::datum_type() {
            ElementType::F32
        } else {
            ElementType::Other(datum_name(fact.datum_type))
        };
        let shape = fact
            .shape
            .iter()
            .map(|d| match d.to_i64() {
                Ok(n) if n >= 0 => Dim::Fixed(n as usize),
                _ => Dim::Symbolic(d.to_string()),
            })
            .collect();
        TensorSpec { name, element_type, shape }
    };
    let mut inputs = Vec::new();
    for (ix, outlet) in model.input_outlets()?.iter().enumerate() {
        let mut s = spec(*outlet, model.input_fact(ix)?);
        // Inputs are named by their source node, which is what tf2onnx's --rename-inputs sets.
        s.name = model.node(outlet.node).name.clone();
        inputs.push(s);
    }
    let mut outputs = Vec::new();
    for (ix, outlet) in model.output_outlets()?.iter().enumerate() {
        outputs.push(spec(*outlet, model.output_fact(ix)?));
    }
    Ok(Signature { inputs, outputs })
}

fn check_supported(path: &Path, sig: &Signature) -> Result<(), ModelError> {
    let model = path.display().to_string();
    for t in &sig.inputs {
        if t.element_type != ElementType::F32 {
            return Err(ModelError::Signature {
                model,
                message: format!(
                    "input `{}` is {}; only float32 inputs are supported",
                    t.name, t.element_type
                ),
            });
        }
        if t.shape.is_empty() {
            return Err(ModelError::Signature {
                model,
                message: format!("input `{}` is a scalar; a batch dimension is required", t.name),
            });
        }
        if t.row_shape().is_none() {
            return Err(ModelError::Signature {
                model,
                message: format!(
                    "input `{t}` has a symbolic dimension after the batch dimension; \
                     only the first (batch) dimension may be symbolic"
                ),
            });
        }
    }
    Ok(())
}

fn datum_name(dt: DatumType) -> &'static str {
    match dt {
        DatumType::F16 => "float16",
        DatumType::F64 => "float64",
        DatumType::I8 => "int8",
        DatumType::I16 => "int16",
        DatumType::I32 => "int32",
        DatumType::I64 => "int64",
        DatumType::U8 => "uint8",
        DatumType::Bool => "bool",
        DatumType::String => "string",
        _ => "unsupported type",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
