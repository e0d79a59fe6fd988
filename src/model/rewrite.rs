//! What streamtract's graph rewrites share: the entry point, the switch that turns them off,
//! and the plumbing of finding nodes, patching them and evaluating the ops that replace them.

use tract_onnx::prelude::*;

use super::{fuse_wide_copies, lay_images_side_by_side, replace_tiled_max_pools};

/// streamtract's rewrites of a graph typed for one batch size, which tract then compiles
/// faster than the graph as exported: [`lay_images_side_by_side`],
/// [`replace_tiled_max_pools`] and then [`fuse_wide_copies`]. Returns how many nodes were
/// rewritten (a fused chain counts as one). Call it between
/// `into_decluttered()` and `into_optimized()` when compiling a plan of your own.
pub fn rewrite_for_batch(model: &mut TypedModel) -> TractResult<usize> {
    let replaced = lay_images_side_by_side(model)? + replace_tiled_max_pools(model)?;
    Ok(replaced + fuse_wide_copies(model)?)
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

/// Replaces each node of `model` whose op is an `O` that `select` accepts, in evaluation order:
/// `wire` builds the replacement in a patch from the node's name, its input wires and what
/// `select` returned, and gives back the wire that takes the node's output. Returns how many
/// nodes were replaced.
pub(crate) fn rewrite_nodes<O: TypedOp, P>(
    model: &mut TypedModel,
    select: impl Fn(&O, &TypedFact) -> Option<P>,
    wire: impl Fn(&mut TypedModelPatch, &str, &[OutletId], P) -> TractResult<OutletId>,
) -> TractResult<usize> {
    let chosen: Vec<(usize, P)> = model
        .eval_order()?
        .into_iter()
        .filter_map(|id| {
            let node = model.node(id);
            let op = node.op_as::<O>()?;
            let input = model.outlet_fact(*node.inputs.first()?).ok()?;
            select(op, input).map(|plan| (id, plan))
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

/// Set to `off` (or `0`, `false`) to compile models the way tract does by itself, without
/// [`lay_images_side_by_side`] and [`replace_tiled_max_pools`]: for measuring, and as a way
/// out should a rewrite ever misbehave on a model.
pub const REWRITES_ENV: &str = "STREAMTRACT_REWRITES";

/// Whether plans compiled per batch size get streamtract's graph rewrites ([`REWRITES_ENV`]).
pub(crate) fn enabled() -> bool {
    std::env::var(REWRITES_ENV)
        .map(|v| !matches!(v.trim(), "off" | "0" | "false"))
        .unwrap_or(true)
}

/// Evaluates one of the rewrites' ops: `fill` writes its output, a zeroed float tensor of
/// `shape`, from its (first) float input. Give it a `move` closure: with its sizes captured
/// by reference, the tiled pool's loop ran 5× slower (166 against 32 µs per 64 CNN rows).
pub(crate) fn eval_f32(
    inputs: &[TValue],
    shape: &[usize],
    fill: impl FnOnce(&[f32], &mut [f32]) -> TractResult<()>,
) -> TractResult<TVec<TValue>> {
    let input = inputs[0].try_as_plain_ram()?;
    let mut output = Tensor::zero::<f32>(shape)?;
    {
        let mut view = output.try_as_plain_ram_mut()?;
        fill(input.as_slice::<f32>()?, view.as_slice_mut::<f32>()?)?;
    }
    Ok(tvec!(output.into_tvalue()))
}
