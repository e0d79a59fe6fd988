//! Softmax at the end of a graph, computed by us instead of by tract.
//!
//! Classifiers end with a Softmax over a handful of classes. tract 0.23 runs a Softmax over
//! short rows (10 values for the digits models) through vector kernels built for long rows,
//! paying their set-up on every row: it was 73% of the digits MLP's time at batch 256
//! (`cargo run --profile bench --example profile -- models/digits_mlp.onnx 256`). When a graph
//! output is a plain float Softmax over its last axis, the plan is cut before it and the rows
//! are normalised here, in one pass over contiguous memory.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};

/// Re-points every graph output that is a last-axis float Softmax (used by nothing else) to
/// the Softmax's input. Returns, per output, whether it was detached: those outputs must go
/// through [`softmax_last_axis`] after each run.
pub(crate) fn detach_output_softmax(model: &mut TypedModel) -> TractResult<Vec<bool>> {
    let mut outlets = model.output_outlets()?.to_vec();
    let mut detached = vec![false; outlets.len()];
    for (i, outlet) in outlets.iter_mut().enumerate() {
        let node = model.node(outlet.node);
        let Some(op) = node.op_as::<Softmax>() else {
            continue;
        };
        let fact = model.outlet_fact(*outlet)?;
        let rank = fact.rank();
        let plain = op.kind == SoftmaxKind::Softmax
            && op.quant_output_dt.is_none()
            && fact.datum_type == f32::datum_type()
            && rank >= 1
            && op.axes.as_slice() == [rank - 1];
        // Nothing else may read the Softmax's result (it would lose it).
        let only_output = node.outputs.len() == 1
            && node.outputs[0].successors.is_empty()
            && outlets_using(model, *outlet)? == 1;
        if plain && only_output && node.inputs.len() == 1 {
            *outlet = node.inputs[0];
            detached[i] = true;
        }
    }
    if detached.iter().any(|d| *d) {
        model.select_output_outlets(&outlets)?;
    }
    Ok(detached)
}

fn outlets_using(model: &TypedModel, outlet: OutletId) -> TractResult<usize> {
    Ok(model
        .output_outlets()?
        .iter()
        .filter(|o| **o == outlet)
        .count())
}

/// Softmax over the last axis of a float tensor, in place, as TensorFlow computes it:
/// `exp(x - max) / sum(exp(x - max))` per row.
pub(crate) fn softmax_last_axis(tensor: &mut Tensor) -> TractResult<()> {
    let row = tensor.shape().last().copied().unwrap_or(1).max(1);
    let mut plain = tensor.try_as_plain_ram_mut()?;
    for values in plain.as_slice_mut::<f32>()?.chunks_mut(row) {
        let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for v in values.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        for v in values.iter_mut() {
            *v /= sum;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_to_one_and_keep_their_order() {
        let mut t =
            Tensor::from_shape(&[2, 3], &[1f32, 2.0, 3.0, 1000.0, 1000.0, -1000.0]).unwrap();
        softmax_last_axis(&mut t).unwrap();
        let plain = t.try_as_plain_ram().unwrap();
        let v = plain.as_slice::<f32>().unwrap();
        assert!((v[0] + v[1] + v[2] - 1.0).abs() < 1e-6);
        assert!(v[0] < v[1] && v[1] < v[2]);
        assert!(
            (v[3] - 0.5).abs() < 1e-6 && v[5] == 0.0,
            "large values do not overflow"
        );
    }
}
