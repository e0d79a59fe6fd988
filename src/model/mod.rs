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
//!
//! How a model is compiled is chosen with [`ModelOptions`] and [`Model::load_with`]; today
//! that is whether streamtract's graph rewrites ([`rewrites`]) apply.

mod error;
mod kernels;
pub mod rewrites;
mod runner;
mod signature;
mod softmax;

pub use error::ModelError;
pub use kernels::Kernels;
pub use rewrites::{rewrite_for_batch, GraphRewrites, RewriteCounts};
pub use runner::{InferencePool, PendingBatch};

pub use signature::{Dim, ElementType, Signature, TensorSpec};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// A compiled tract plan.
pub(crate) type Plan = Arc<TypedRunnableModel>;

/// How [`Model::load_with`] compiles a model. `ModelOptions::default()` is what
/// [`Model::load`] uses.
///
/// ```no_run
/// use streamtract::model::{GraphRewrites, Model, ModelOptions};
/// let options = ModelOptions::default().graph_rewrites(GraphRewrites::Off);
/// let model = Model::load_with("models/digits_cnn.onnx", &options)?;
/// # Ok::<(), streamtract::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModelOptions {
    /// Whether plans compiled per batch size get streamtract's graph rewrites
    /// ([`GraphRewrites`]; on by default).
    pub graph_rewrites: GraphRewrites,
}

impl ModelOptions {
    /// Turns streamtract's graph rewrites on (the default) or off.
    pub fn graph_rewrites(mut self, rewrites: GraphRewrites) -> Self {
        self.graph_rewrites = rewrites;
        self
    }
}

/// A plan compiled for one batch size, and how many nodes each graph rewrite took in it.
type SizedPlan = (Plan, RewriteCounts);

/// How the graph was compiled.
///
/// tract keeps the batch dimension symbolic when every shape computation in the graph can be
/// done on symbols. Some exports compute a shape at run time (Keras `Flatten` becomes
/// `Shape → Gather → Concat → Reshape`), which tract cannot type symbolically; those models are
/// compiled once per batch size instead, for power-of-two sizes, and a smaller batch is padded
/// with zero rows up to the next size (the padding rows' outputs are dropped). So are models
/// that streamtract's graph rewrites speed up ([`rewrite_for_batch`]), when they are on
/// ([`ModelOptions::graph_rewrites`]), since the rewrites need to know the batch size: a
/// convolutional network with a symbolic batch would otherwise run at tract's speed alone.
enum Compiled {
    Dynamic(Plan),
    PerBatchSize {
        graph: Arc<InferenceModel>,
        plans: Mutex<HashMap<usize, SizedPlan>>,
    },
}

/// A loaded, optimised model ready to run batches.
#[derive(Clone)]
pub struct Model {
    path: PathBuf,
    sha256: String,
    /// The `streamtract.version` metadata a model written by `streamtract train` carries.
    version: Option<String>,
    signature: Signature,
    options: ModelOptions,
    compiled: Arc<Compiled>,
    /// Per output: whether its final Softmax was cut from the plan and is applied after each
    /// run (see `softmax.rs`).
    softmax_outputs: Arc<Vec<bool>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .field("signature", &self.signature)
            .field("dynamic_batch", &self.has_dynamic_batch())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Loads an ONNX file, reads its signature and compiles it with the default
    /// [`ModelOptions`] (graph rewrites on); see [`Model::load_with`].
    ///
    /// Fails with [`ModelError::Unreadable`] when the file is missing, [`ModelError::Load`]
    /// when tract cannot parse it, and [`ModelError::Signature`] when an input is not float32
    /// or a dimension other than the first is symbolic.
    pub fn load(path: impl AsRef<Path>) -> Result<Model, ModelError> {
        Model::load_with(path, &ModelOptions::default())
    }

    /// Loads an ONNX file, reads its signature and compiles it as `options` say: with
    /// [`GraphRewrites::Off`], every model is compiled the way tract does by itself. Fails as
    /// [`Model::load`] does.
    pub fn load_with(path: impl AsRef<Path>, options: &ModelOptions) -> Result<Model, ModelError> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|e| ModelError::Unreadable {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let version = metadata_version(&bytes);
        let load_err = |e: TractError| ModelError::Load {
            path: path.clone(),
            message: format!("{e:#}"),
        };
        let graph = tract_onnx::onnx()
            .model_for_read(&mut bytes.as_slice())
            .map_err(load_err)?;
        let batch_symbol = batch_symbol(&graph);
        let (signature, compiled, softmax_outputs) = match graph.clone().into_typed() {
            Ok(mut typed) => {
                let signature = read_signature(&typed, None).map_err(load_err)?;
                check_supported(&path, &signature)?;
                let softmax = softmax::detach_output_softmax(&mut typed).map_err(load_err)?;
                let rewrites = options.graph_rewrites;
                let compiled = match rewritten_at_largest_size(&graph, &typed, &softmax, rewrites) {
                    // Its plan is the first of those compiled per batch size.
                    Some((rewritten, counts)) => {
                        let plan = rewritten
                            .into_optimized()
                            .and_then(|m| m.into_runnable())
                            .map_err(load_err)?;
                        let first = (MAX_COMPILED_ROWS, (plan, counts));
                        Compiled::PerBatchSize {
                            graph: Arc::new(graph),
                            plans: Mutex::new(HashMap::from([first])),
                        }
                    }
                    None => {
                        let plan = typed
                            .into_optimized()
                            .and_then(|m| m.into_runnable())
                            .map_err(load_err)?;
                        Compiled::Dynamic(plan)
                    }
                };
                (signature, compiled, softmax)
            }
            Err(symbolic_error) => {
                // Read the signature from a batch-of-one compilation, then restore the batch
                // dimension's name.
                let mut typed = with_batch_size(&graph, 1)
                    .and_then(|g| g.into_typed())
                    .map_err(|_| load_err(symbolic_error))?;
                let signature = read_signature(&typed, Some(&batch_symbol)).map_err(load_err)?;
                check_supported(&path, &signature)?;
                let softmax = softmax::detach_output_softmax(&mut typed).map_err(load_err)?;
                let compiled = Compiled::PerBatchSize {
                    graph: Arc::new(graph),
                    plans: Mutex::new(HashMap::new()),
                };
                (signature, compiled, softmax)
            }
        };
        Ok(Model {
            path,
            sha256,
            version,
            signature,
            options: options.clone(),
            compiled: Arc::new(compiled),
            softmax_outputs: Arc::new(softmax_outputs),
        })
    }

    /// The file the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lower-case hex SHA-256 of the model file.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The version `streamtract train` stamped on the file (metadata `streamtract.version`),
    /// counting up with every checkpoint of a training run; `None` for other models.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// Inputs and outputs of the graph.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The options the model was loaded with.
    pub fn options(&self) -> &ModelOptions {
        &self.options
    }

    /// True when one compiled plan serves every batch size; false when the model is compiled
    /// per (power-of-two) batch size, because its graph computes shapes at run time or because
    /// streamtract's graph rewrites apply to it (see [`rewrite_for_batch`]).
    pub fn has_dynamic_batch(&self) -> bool {
        matches!(*self.compiled, Compiled::Dynamic(_))
    }

    /// Runs one batch on the calling thread. `inputs` are in signature order, each shaped
    /// `[n, row_shape...]`; the result holds one f32 tensor per output, batch dimension first.
    ///
    /// This sets up a fresh tract state per call; to run many batches on one thread, use a
    /// [`Runner`]. Prefer [`InferencePool`] in async code: this call blocks for the whole
    /// inference.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        self.runner().run(inputs)
    }

    /// A runner that keeps its tract states (and their buffers) between batches.
    pub fn runner(&self) -> Runner {
        Runner {
            model: self.clone(),
            states: States::default(),
        }
    }

    /// Compiles ahead of time every plan that a batch of up to `rows` rows can run on (a no-op
    /// for dynamic models): one per power-of-two size up to `rows`, and at most 64, since
    /// larger batches run in chunks of 64 rows (see [`Model::run`]). Otherwise the
    /// first batch of each size pays for compiling its plan; at a low input rate batches are
    /// small and of every size, so that would be many of the first batches.
    pub fn warm_up(&self, rows: usize) -> Result<(), ModelError> {
        if let Compiled::PerBatchSize { .. } = &*self.compiled {
            let largest = rows.clamp(1, MAX_COMPILED_ROWS).next_power_of_two();
            for size in (0..=largest.trailing_zeros()).map(|bit| 1 << bit) {
                self.plan_for(size)?;
            }
        }
        Ok(())
    }

    /// The batch sizes that have a compiled plan, in increasing order (empty for dynamic
    /// models, which have one plan for every size).
    pub fn compiled_batch_sizes(&self) -> Vec<usize> {
        match &*self.compiled {
            Compiled::Dynamic(_) => Vec::new(),
            Compiled::PerBatchSize { plans, .. } => {
                let mut sizes: Vec<usize> = plans
                    .lock()
                    .map(|p| p.keys().copied().collect())
                    .unwrap_or_default();
                sizes.sort_unstable();
                sizes
            }
        }
    }

    /// How many nodes each of streamtract's graph rewrites took in the plan that a batch of
    /// `rows` rows runs on (for more than 64 rows, the plan its 64-row chunks run on),
    /// compiling that plan if it is not compiled yet. All zero for a model with one plan for
    /// every batch size and for one loaded with [`GraphRewrites::Off`]. For telling which
    /// rewrites a model gets, and for tests that a rewrite takes no node it should not.
    pub fn rewrite_counts(&self, rows: usize) -> Result<RewriteCounts, ModelError> {
        Ok(self.compiled_for(rows.min(MAX_COMPILED_ROWS))?.2)
    }

    /// The plan to run `rows` rows with, and the number of rows it expects.
    fn plan_for(&self, rows: usize) -> Result<(Plan, usize), ModelError> {
        let (plan, size, _) = self.compiled_for(rows)?;
        Ok((plan, size))
    }

    /// The plan to run `rows` rows with, the number of rows it expects and what the rewrites
    /// took in it; a plan per batch size is compiled on first use.
    fn compiled_for(&self, rows: usize) -> Result<(Plan, usize, RewriteCounts), ModelError> {
        match &*self.compiled {
            Compiled::Dynamic(plan) => Ok((Arc::clone(plan), rows, RewriteCounts::default())),
            Compiled::PerBatchSize { graph, plans } => {
                let size = rows.max(1).next_power_of_two();
                let mut plans = plans
                    .lock()
                    .map_err(|_| ModelError::Run("plan cache poisoned".into()))?;
                if let Some((plan, counts)) = plans.get(&size) {
                    return Ok((Arc::clone(plan), size, *counts));
                }
                let rewrites = self.options.graph_rewrites;
                let (typed, counts) = typed_for_batch(graph, size, &self.softmax_outputs, rewrites)
                    .map_err(|e| self.load_error(e))?;
                let plan = typed
                    .into_optimized()
                    .and_then(|m| m.into_runnable())
                    .map_err(|e| self.load_error(e))?;
                plans.insert(size, (Arc::clone(&plan), counts));
                Ok((plan, size, counts))
            }
        }
    }

    /// A failure to compile this model's graph.
    fn load_error(&self, e: TractError) -> ModelError {
        ModelError::Load {
            path: self.path.clone(),
            message: format!("{e:#}"),
        }
    }

    /// Runs a batch reusing the tract states in `states` (one per compiled batch size).
    ///
    /// A model compiled per batch size runs a batch of more than [`MAX_COMPILED_ROWS`] rows in
    /// chunks of that many: its per-row speed does not grow past that size (the digits CNN ran
    /// 29k–39k rows/s at every size from 32 to 256), while each compiled size keeps scratch
    /// buffers that grow with it (im2col for a 256-row batch of the CNN is about 9 MiB, per
    /// worker).
    pub(crate) fn run_with(
        &self,
        states: &mut States,
        inputs: Vec<Tensor>,
    ) -> Result<Vec<Tensor>, ModelError> {
        let rows = batch_rows(&inputs);
        if rows <= MAX_COMPILED_ROWS || matches!(*self.compiled, Compiled::Dynamic(_)) {
            return self.run_compiled(states, inputs);
        }
        let run_err = |e: TractError| ModelError::Run(format!("{e:#}"));
        // Per output, its pieces in row order.
        let mut pieces: Vec<Vec<Tensor>> = Vec::new();
        for start in (0..rows).step_by(MAX_COMPILED_ROWS) {
            let end = (start + MAX_COMPILED_ROWS).min(rows);
            let chunk = inputs
                .iter()
                .map(|t| t.slice(0, start, end))
                .collect::<TractResult<Vec<_>>>()
                .map_err(run_err)?;
            for (output, t) in self.run_compiled(states, chunk)?.into_iter().enumerate() {
                match pieces.get_mut(output) {
                    Some(p) => p.push(t),
                    None => pieces.push(vec![t]),
                }
            }
        }
        pieces
            .iter()
            .map(|p| Tensor::stack_tensors(0, p).map_err(run_err))
            .collect()
    }

    /// Runs a batch on the plan compiled for its size (padded up to a power of two for models
    /// compiled per batch size).
    fn run_compiled(
        &self,
        states: &mut States,
        inputs: Vec<Tensor>,
    ) -> Result<Vec<Tensor>, ModelError> {
        let run_err = |e: TractError| ModelError::Run(format!("{e:#}"));
        let rows = batch_rows(&inputs);
        let (plan, size) = self.plan_for(rows)?;
        let inputs = if size == rows {
            inputs
        } else {
            inputs
                .into_iter()
                .map(|t| pad_rows(t, size))
                .collect::<TractResult<Vec<_>>>()
                .map_err(run_err)?
        };
        let state = match states.0.entry(size) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(plan.spawn().map_err(run_err)?)
            }
        };
        let inputs: TVec<TValue> = inputs.into_iter().map(|t| t.into()).collect();
        // tract indexes some inputs without bounds checks of its own (a Gather with an
        // out-of-range index panics). A panic here is about this batch's data, not the
        // process: turn it into an error and drop the state, which may be half-updated.
        let guarded = || {
            IN_TRACT_RUN.with(|flag| flag.set(true));
            let result = state.run(inputs);
            IN_TRACT_RUN.with(|flag| flag.set(false));
            result
        };
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(guarded));
        IN_TRACT_RUN.with(|flag| flag.set(false));
        clear_avx_upper_state();
        let outputs = match caught {
            Ok(result) => result.map_err(run_err)?,
            Err(panic) => {
                states.0.remove(&size);
                return Err(ModelError::Panicked(panic_message(panic.as_ref())));
            }
        };
        outputs
            .into_iter()
            .zip(self.softmax_outputs.iter())
            .map(|(v, &softmax)| {
                let mut t = v.into_tensor();
                if t.datum_type() != f32::datum_type() {
                    t = t.cast_to::<f32>().map_err(run_err)?.into_owned();
                }
                if softmax {
                    softmax::softmax_last_axis(&mut t).map_err(run_err)?;
                }
                if size != rows {
                    t = t.slice(0, 0, rows).map_err(run_err)?;
                }
                Ok(t)
            })
            .collect()
    }

    pub(crate) fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

/// tract states kept by one worker thread, one per compiled batch size.
#[derive(Default)]
pub(crate) struct States(HashMap<usize, TypedSimpleState>);

/// Runs batches of one model on the calling thread, reusing its tract states.
///
/// ```no_run
/// use streamtract::model::Model;
/// use tract_onnx::prelude::Tensor;
/// let model = Model::load("models/digits_mlp.onnx")?;
/// let mut runner = model.runner();
/// let batch = Tensor::from_shape(&[2, 64], &[0f32; 128]).unwrap();
/// let outputs = runner.run(vec![batch])?;
/// assert_eq!(outputs[0].shape(), &[2, 10]);
/// # Ok::<(), streamtract::Error>(())
/// ```
pub struct Runner {
    model: Model,
    states: States,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("model", &self.model.path)
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// Runs one batch; see [`Model::run`].
    pub fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        self.model.run_with(&mut self.states, inputs)
    }
}

/// Largest batch a model compiled per batch size runs in one go (see [`Model::run_with`]).
const MAX_COMPILED_ROWS: usize = 64;

/// Rows of a batch: the first dimension of its first input.
fn batch_rows(inputs: &[Tensor]) -> usize {
    inputs
        .first()
        .and_then(|t| t.shape().first().copied())
        .unwrap_or(0)
}

fn pad_rows(t: Tensor, rows: usize) -> TractResult<Tensor> {
    let mut shape = t.shape().to_vec();
    let have = shape[0];
    shape[0] = rows - have;
    let zeros = Tensor::zero_dt(t.datum_type(), &shape)?;
    Tensor::stack_tensors(0, &[t, zeros])
}

thread_local! {
    /// Set while this thread is inside a tract run whose panics are caught (see `run_with`).
    static IN_TRACT_RUN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs a process-wide panic hook that reports panics caught inside model runs (tract
/// panics on some inputs; the run becomes a [`ModelError::Panicked`] for that batch) as one
/// debug log line instead of the default report with its backtrace, which is slow to print and
/// would repeat for every such record. Every other panic keeps the default report.
///
/// A library does not touch global hooks on its own; applications call this once at start-up
/// (the `streamtract` binary does).
pub fn quiet_caught_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if IN_TRACT_RUN.with(std::cell::Cell::get) {
            tracing::debug!(%info, "tract panicked inside a model run (caught)");
        } else {
            default(info);
        }
    }));
}

/// tract's x86-64 kernels return with the upper halves of the AVX registers dirty. Until
/// `vzeroupper`, every SSE instruction the thread runs pays a state-transition penalty: libm's
/// `expf` in our softmax took 120 ns instead of 2 ns per value after a tract run (measured with
/// `examples/profile.rs` and a scratch program on this machine's Xeon). Clearing the state
/// after each run keeps the code that follows on the inference thread at full speed.
#[allow(unsafe_code)] // one intrinsic, see the SAFETY comment
fn clear_avx_upper_state() {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx")]
        fn zero_upper() {
            std::arch::x86_64::_mm256_zeroupper();
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU supports AVX (checked just above), which is all `zero_upper`
            // needs; `vzeroupper` only clears the upper register halves, which hold no live
            // value outside AVX code.
            unsafe { zero_upper() }
        }
    }
}

/// The text of a caught panic (`panic!` payloads are `&str` or `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Name of the first input's first dimension when it is symbolic, else `N`.
fn batch_symbol(graph: &InferenceModel) -> String {
    graph
        .input_fact(0)
        .ok()
        .and_then(|f| f.shape.dims().next().and_then(|d| d.concretize()))
        .filter(|d| d.to_i64().is_err())
        .map(|d| d.to_string())
        .unwrap_or_else(|| "N".to_string())
}

/// `graph` typed for batches of `size` rows, ready for tract's optimisation: its final Softmax
/// detached (which must match `softmax_outputs`, what was detached at load), decluttered, and
/// with streamtract's rewrites applied if `rewrites` is on. Also returns how many nodes each
/// rewrite replaced.
fn typed_for_batch(
    graph: &InferenceModel,
    size: usize,
    softmax_outputs: &[bool],
    rewrites: GraphRewrites,
) -> TractResult<(TypedModel, RewriteCounts)> {
    let mut typed = with_batch_size(graph, size)?.into_typed()?;
    let softmax = softmax::detach_output_softmax(&mut typed)?;
    anyhow::ensure!(
        softmax == softmax_outputs,
        "the graph's final Softmax differs between batch sizes"
    );
    let mut typed = typed.into_decluttered()?;
    let rewritten = match rewrites {
        GraphRewrites::On => rewrite_for_batch(&mut typed)?,
        GraphRewrites::Off => RewriteCounts::default(),
    };
    Ok((typed, rewritten))
}

/// For `graph`, which tract types with a symbolic batch as `typed`: the graph typed for the
/// largest compiled size and what the rewrites took in it, if `rewrites` is on and they
/// changed it there, in which case it is worth compiling per batch size. Only graphs with a
/// convolution or a max pool are typed again to find out.
fn rewritten_at_largest_size(
    graph: &InferenceModel,
    typed: &TypedModel,
    softmax_outputs: &[bool],
    rewrites: GraphRewrites,
) -> Option<(TypedModel, RewriteCounts)> {
    if rewrites == GraphRewrites::Off || !rewrites::may_apply(typed) {
        return None;
    }
    match typed_for_batch(graph, MAX_COMPILED_ROWS, softmax_outputs, rewrites) {
        Ok((rewritten, counts)) if counts.total() > 0 => Some((rewritten, counts)),
        _ => None,
    }
}

/// The graph with every input's first dimension fixed to `rows`.
fn with_batch_size(graph: &InferenceModel, rows: usize) -> TractResult<InferenceModel> {
    let mut g = graph.clone();
    for ix in 0..g.input_outlets()?.len() {
        let fact = g.input_fact(ix)?.clone();
        let mut dims: Vec<TDim> = Vec::new();
        for (i, d) in fact.shape.dims().enumerate() {
            if i == 0 {
                dims.push(rows.to_dim());
            } else {
                dims.push(
                    d.concretize()
                        .ok_or_else(|| anyhow::anyhow!("input {ix} dimension {i} is unknown"))?,
                );
            }
        }
        let dt = fact.datum_type.concretize().unwrap_or(f32::datum_type());
        g.set_input_fact(ix, InferenceFact::dt_shape(dt, dims))?;
    }
    Ok(g)
}

fn read_signature(model: &TypedModel, batch_symbol: Option<&str>) -> TractResult<Signature> {
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
            .enumerate()
            .map(|(i, d)| match (i, batch_symbol, d.to_i64()) {
                (0, Some(sym), _) => Dim::Symbolic(sym.to_string()),
                (_, _, Ok(n)) if n >= 0 => Dim::Fixed(n as usize),
                _ => Dim::Symbolic(d.to_string()),
            })
            .collect();
        TensorSpec {
            name,
            element_type,
            shape,
        }
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
                message: format!(
                    "input `{}` is a scalar; a batch dimension is required",
                    t.name
                ),
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

/// The `streamtract.version` entry of an ONNX file's metadata, if any.
fn metadata_version(bytes: &[u8]) -> Option<String> {
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .ok()?;
    proto
        .metadata_props
        .into_iter()
        .find(|p| p.key == "streamtract.version")
        .map(|p| p.value)
}
