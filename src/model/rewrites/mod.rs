//! streamtract's graph rewrites: ops of a graph typed for one batch size replaced by ops of
//! ours that tract then runs faster than the graph as exported.
//!
//! They were written for, and measured on, the 8×8 digits CNN (`models/digits_cnn.onnx`,
//! docs/performance.md "The CNN's graph rewrites"):
//!
//! - [`lay_images_side_by_side`] (`side_by_side.rs`): a convolution over a batch of small
//!   images runs as one convolution over a wide image, the images side by side;
//! - [`replace_tiled_max_pools`] (`tiled_max_pool.rs`): a max pooling over whole tiles runs
//!   as [`TiledMaxPool`];
//! - [`fuse_wide_copies`] (`fused_copies.rs`): the copies out of a wide image are fused with
//!   the ReLU, pooling or next copy that follows them.
//!
//! Each one takes a node only after checking every property of it that its replacement
//! relies on (data type, layout, shapes, strides, dilations, padding, groups, what consumes
//! its output), and leaves any other node alone; `tests/rewrites.rs` runs them on CNNs they
//! were not written for against TensorFlow's outputs, and checks how many nodes each took.
//!
//! Whether a model gets them is the caller's choice: [`GraphRewrites`] in
//! [`ModelOptions`](super::ModelOptions), on by default. They use tract-core internals (its
//! `Conv`, `MaxPool` and `PoolSpec` fields, `TypedModelPatch`, the direct convolution's
//! limits), which is why `Cargo.toml` pins tract to one exact release.

mod fused_copies;
mod side_by_side;
mod tiled_max_pool;

pub use fused_copies::fuse_wide_copies;
pub use side_by_side::lay_images_side_by_side;
pub use tiled_max_pool::{replace_tiled_max_pools, TiledMaxPool};

use tract_onnx::prelude::*;

/// Whether plans compiled for one batch size get streamtract's graph rewrites.
///
/// `On` (the default) is what the benchmarks in docs/performance.md measure: on the digits
/// CNN the rewrites made a batch about 1.9× faster. `Off` compiles every model the way tract
/// does by itself: for measuring the rewrites' effect, and as a way out should a rewrite
/// misbehave on some model. It is an option of [`ModelOptions`](super::ModelOptions), chosen
/// by the application (the `streamtract` binary has a flag for it), never read from the
/// environment by the library.
///
/// Parses from and prints as `on` / `off`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum GraphRewrites {
    /// Apply the rewrites wherever their pattern matches (default).
    #[default]
    On,
    /// Leave every graph to tract alone.
    Off,
}

impl std::str::FromStr for GraphRewrites {
    type Err = String;

    fn from_str(s: &str) -> Result<GraphRewrites, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "on" => Ok(GraphRewrites::On),
            "off" => Ok(GraphRewrites::Off),
            other => Err(format!(
                "graph rewrites must be `on` or `off`, not `{other}`"
            )),
        }
    }
}

impl std::fmt::Display for GraphRewrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GraphRewrites::On => "on",
            GraphRewrites::Off => "off",
        })
    }
}

/// How many nodes each rewrite took in one graph: what [`rewrite_for_batch`] returns and
/// [`Model::rewrite_counts`](super::Model::rewrite_counts) reports, so that a test or an
/// operator can see which rewrites a model got (and that one did not take what it should
/// not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RewriteCounts {
    /// Convolutions run over the batch's images side by side ([`lay_images_side_by_side`]).
    pub side_by_side: usize,
    /// Max poolings replaced by [`TiledMaxPool`] ([`replace_tiled_max_pools`]); a pool later
    /// taken into a fused copy still counts here.
    pub tiled_max_pools: usize,
    /// Chains from a copy out of a wide image to what follows it, fused into one op
    /// ([`fuse_wide_copies`]).
    pub fused_chains: usize,
}

impl RewriteCounts {
    /// All the nodes rewritten (a fused chain counts as one).
    pub fn total(&self) -> usize {
        self.side_by_side + self.tiled_max_pools + self.fused_chains
    }
}

impl std::fmt::Display for RewriteCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} convolutions side by side, {} tiled max pools, {} fused chains)",
            self.total(),
            self.side_by_side,
            self.tiled_max_pools,
            self.fused_chains
        )
    }
}

/// streamtract's rewrites of a graph typed for one batch size, which tract then compiles
/// faster than the graph as exported: [`lay_images_side_by_side`],
/// [`replace_tiled_max_pools`] and then [`fuse_wide_copies`]. Returns how many nodes each
/// rewrote. Call it between `into_decluttered()` and `into_optimized()` when compiling a plan
/// of your own; [`Model`](super::Model) does for each plan it compiles per batch size when
/// its [`GraphRewrites`] are `On`.
pub fn rewrite_for_batch(model: &mut TypedModel) -> TractResult<RewriteCounts> {
    let side_by_side = lay_images_side_by_side(model)?;
    let tiled_max_pools = replace_tiled_max_pools(model)?;
    let fused_chains = fuse_wide_copies(model)?;
    Ok(RewriteCounts {
        side_by_side,
        tiled_max_pools,
        fused_chains,
    })
}

/// Whether `model` has an op that a rewrite could take (a convolution or a max pool), at some
/// batch size: a cheap look before compiling a graph per batch size to find out.
pub(crate) fn may_apply(model: &TypedModel) -> bool {
    use tract_onnx::tract_core::ops::cnn::{Conv, MaxPool};
    model
        .nodes()
        .iter()
        .any(|n| n.op_is::<Conv>() || n.op_is::<MaxPool>())
}

/// The facts of a node a rewrite looks at before taking it: those of its inputs, in order,
/// and of its (only) output.
pub(crate) struct NodeFacts<'a> {
    pub inputs: TVec<&'a TypedFact>,
    pub output: &'a TypedFact,
}

/// Replaces each node of `model` whose op is an `O` that `select` accepts, in evaluation order:
/// `wire` builds the replacement in a patch from the node's name, its input wires and what
/// `select` returned, and gives back the wire that takes the node's output. Only nodes with
/// one output are offered to `select` (the replacement takes over output 0 alone). Returns how
/// many nodes were replaced.
pub(crate) fn rewrite_nodes<O: TypedOp, P>(
    model: &mut TypedModel,
    select: impl Fn(&O, &NodeFacts) -> Option<P>,
    wire: impl Fn(&mut TypedModelPatch, &str, &[OutletId], P) -> TractResult<OutletId>,
) -> TractResult<usize> {
    let chosen: Vec<(usize, P)> = model
        .eval_order()?
        .into_iter()
        .filter_map(|id| {
            let node = model.node(id);
            let op = node.op_as::<O>()?;
            if node.outputs.len() != 1 || node.inputs.is_empty() {
                return None;
            }
            let facts = NodeFacts {
                inputs: model.node_input_facts(id).ok()?,
                output: model.outlet_fact(OutletId::new(id, 0)).ok()?,
            };
            select(op, &facts).map(|plan| (id, plan))
        })
        .collect();
    let count = chosen.len();
    for (id, plan) in chosen {
        let node = model.node(id);
        let mut patch = TypedModelPatch::new(format!("streamtract rewrite of {}", node.name));
        let taps = patch.taps(model, &node.inputs)?;
        let output = wire(&mut patch, &node.name, &taps, plan)?;
        patch.shunt_outside(model, OutletId::new(id, 0), output)?;
        patch.apply(model)?;
    }
    Ok(count)
}

/// Evaluates one of the rewrites' ops: `fill` writes its output, a zeroed float tensor of
/// `shape`, from its (first) float input. Give it a `move` closure: with its sizes captured
/// by reference, the tiled pool's loop ran 5× slower (166 against 32 µs per 64 CNN rows).
pub(crate) fn eval_f32(
    inputs: &[TValue],
    shape: &[usize],
    fill: impl FnOnce(&[f32], &mut [f32]) -> TractResult<()>,
) -> TractResult<TVec<TValue>> {
    let input = inputs
        .first()
        .ok_or_else(|| anyhow::anyhow!("a rewritten op was run without its input"))?
        .try_as_plain_ram()?;
    let mut output = Tensor::zero::<f32>(shape)?;
    {
        let mut view = output.try_as_plain_ram_mut()?;
        fill(input.as_slice::<f32>()?, view.as_slice_mut::<f32>()?)?;
    }
    Ok(tvec!(output.into_tvalue()))
}
