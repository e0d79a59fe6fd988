//! The copies out of a wide image fused with what follows them.
//!
//! Once [`lay_images_side_by_side`](super::lay_images_side_by_side) and
//! [`replace_tiled_max_pools`](super::replace_tiled_max_pools) have run, the digits CNN walks
//! its activations five times between the two convolutions and the dense layers: the first
//! convolution's outputs are copied back to images, the ReLU goes over them, and they are
//! copied again into the second convolution's wide image; its outputs are copied back, the
//! ReLU goes over them, and the pool reads them. Each walk is cheap, but together they took
//! about 160 µs of a 757 µs batch of 64 rows (glibc build without page faults; 70 µs fused,
//! and the static binary's 256-row batch went from 2.8–3.0 to 2.5–2.6 ms, docs/performance.md "Batch
//! inference"). [`fuse_wide_copies`] makes each chain one walk:
//!
//! - `BackToImages → ReLU → SideBySide` becomes [`Rewiden`], which copies each image's output
//!   columns from one wide image straight into the next one's frame, through the ReLU;
//! - `BackToImages → ReLU → TiledMaxPool` becomes a [`BackToImages`] that applies the ReLU
//!   and pools the tiles as it copies;
//! - any other `BackToImages → ReLU` becomes a [`BackToImages`] that applies the ReLU.
//!
//! The points are computed as the separate ops compute them (`max(v, 0)` before the tile's
//! maximum), so the outputs are those of the chain.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::math::Max;
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use super::eval_f32;
use super::side_by_side::{BackToImages, Frame, SideBySide};
use super::TiledMaxPool;

/// Fuses each copy out of a wide image in `model` with the ReLU, the copy into another wide
/// image or the tiled max pooling that follows it (see the module's documentation). Returns
/// how many chains were fused. [`rewrite_for_batch`](super::rewrite_for_batch) runs it after
/// the other rewrites.
pub fn fuse_wide_copies(model: &mut TypedModel) -> TractResult<usize> {
    let chains: Vec<Chain> = model
        .eval_order()?
        .into_iter()
        .filter_map(|id| Chain::from(model, id))
        .collect();
    for chain in &chains {
        let first = model.node(chain.first);
        let mut patch = TypedModelPatch::new(format!("streamtract fusion from {}", first.name));
        let taps = patch.taps(model, &first.inputs)?;
        let name = format!("{}.fused", model.node(chain.last).name);
        let output = match &chain.op {
            Fused::Back(op) => patch.wire_node(name, op.clone(), &taps)?[0],
            Fused::Rewiden(op) => patch.wire_node(name, op.clone(), &taps)?[0],
        };
        patch.shunt_outside(model, OutletId::new(chain.last, 0), output)?;
        patch.apply(model)?;
    }
    Ok(chains.len())
}

/// A chain of nodes from a `BackToImages` (`first`) to `last`, and the op that replaces it.
struct Chain {
    first: usize,
    last: usize,
    op: Fused,
}

enum Fused {
    Back(BackToImages),
    Rewiden(Rewiden),
}

impl Chain {
    /// The chain that starts at node `id`, if it is a `BackToImages` followed by what a fused
    /// op computes. Each link is checked before it is taken: it is the only consumer of the
    /// link before it, whose output is not a model output; a ReLU is exactly `max(x, 0)` on
    /// that output (see `is_relu`); a `SideBySide` frames exactly the images the copy back
    /// makes (`Rewiden::between`); a `TiledMaxPool` pools exactly the shape the copy back
    /// makes. Anything else ends the chain before it, and a chain of one node is no chain.
    fn from(model: &TypedModel, id: usize) -> Option<Chain> {
        let mut back = model.node(id).op_as::<BackToImages>()?.clone();
        let mut last = id;
        if let Some(relu) = sole_consumer(model, last).filter(|n| is_relu(model, n, last)) {
            back.relu = true;
            last = relu.id;
        }
        let next = sole_consumer(model, last);
        let op = if let Some(wide) = next.and_then(|n| n.op_as::<SideBySide>()) {
            let rewiden = Rewiden::between(&back, &wide.frame)?;
            last = next?.id;
            Fused::Rewiden(rewiden)
        } else if let Some(pool) = next.and_then(|n| n.op_as::<TiledMaxPool>()) {
            if pool.shape != back.output_shape() {
                return None;
            }
            back.tile = [pool.tile_height, pool.tile_width];
            last = next?.id;
            Fused::Back(back)
        } else {
            Fused::Back(back)
        };
        (last != id).then_some(Chain {
            first: id,
            last,
            op,
        })
    }
}

/// The node that takes node `id`'s output, if it is the only one and the output is not one of
/// the model's.
fn sole_consumer(model: &TypedModel, id: usize) -> Option<&TypedNode> {
    let outlet = OutletId::new(id, 0);
    match model.outlet_successors(outlet) {
        [inlet] if !model.outputs.contains(&outlet) => Some(model.node(inlet.node)),
        _ => None,
    }
}

/// Whether `node` is a ReLU of node `input`'s (only) output: a float32 `max` of exactly that
/// output and a constant zero (one value, so it broadcasts to nothing larger), with no
/// output type of its own (as quantised ops have), and an output of the input's shape.
fn is_relu(model: &TypedModel, node: &TypedNode, input: usize) -> bool {
    let Some(op) = node.op_as::<TypedBinOp>() else {
        return false;
    };
    let zero = |outlet: &OutletId| {
        model.outlet_fact(*outlet).ok().is_some_and(|fact| {
            fact.datum_type == f32::datum_type()
                && fact.konst.as_ref().is_some_and(|k| {
                    k.len() == 1 && k.cast_to_scalar::<f32>().is_ok_and(|v| v == 0.0)
                })
        })
    };
    let from_input = OutletId::new(input, 0);
    let operands = match node.inputs.as_slice() {
        [a, b] if *a == from_input => zero(b),
        [a, b] if *b == from_input => zero(a),
        _ => false,
    };
    let same_shape = || {
        let (Ok(a), Ok(b)) = (
            model.outlet_fact(from_input),
            model.outlet_fact(OutletId::new(node.id, 0)),
        ) else {
            return false;
        };
        a.shape == b.shape && a.datum_type == f32::datum_type() && b.datum_type == f32::datum_type()
    };
    op.0.downcast_ref::<Max>().is_some()
        && op.1.is_none()
        && node.outputs.len() == 1
        && operands
        && same_shape()
}

/// `[1, C', H', wide output width]` → `[1, C', H' + pads, wide width]`: each image's output
/// columns of one wide convolution, through a ReLU if `relu`, copied into the frame of the
/// next wide convolution (its `to`), which takes those images as its input. What
/// `BackToImages` and then `SideBySide` would make, in one walk.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Rewiden {
    from: Frame,
    to: Frame,
    relu: bool,
}

impl Rewiden {
    /// The copy from `back`'s wide output into the frame `to`, if `to` frames the images
    /// `back` makes.
    fn between(back: &BackToImages, to: &Frame) -> Option<Rewiden> {
        let from = &back.frame;
        let fits = back.tile == [1, 1]
            && to.images == from.images
            && to.channels == from.out_channels
            && to.height == from.out_height
            && to.width == from.out_width;
        fits.then(|| Rewiden {
            from: from.clone(),
            to: to.clone(),
            relu: back.relu,
        })
    }
}

impl Op for Rewiden {
    fn name(&self) -> StaticName {
        "Rewiden".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Rewiden {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (from, to) = (&self.from, &self.to);
        eval_f32(&inputs, &to.wide_shape(), move |wide, out| {
            let row = from.wide_output_row(wide)?;
            // The ReLU as a constant of the loops, which LLVM then compiles without a branch.
            if self.relu {
                rewiden::<true>(from, to, row, wide, out);
            } else {
                rewiden::<false>(from, to, row, wide, out);
            }
            Ok(())
        })
    }
}

/// Copies each image's output points from the wide output `wide` (rows of `row` points,
/// framed by `from`) into `out`, the zeroed wide image of frame `to`, through a ReLU if `RELU`.
fn rewiden<const RELU: bool>(from: &Frame, to: &Frame, row: usize, wide: &[f32], out: &mut [f32]) {
    let [_, _, height, out_row] = to.wide_shape();
    let width = from.out_width;
    // All the images' points of a row, and the gaps between them.
    let span = (from.images - 1) * from.pitch() + width;
    let copy = |into: &mut [f32], points: &[f32]| {
        for (o, &v) in into.iter_mut().zip(points) {
            *o = if RELU { v.max(0.0) } else { v };
        }
    };
    for c in 0..from.out_channels {
        for y in 0..from.out_height {
            // Row y of channel c goes to row y of channel c in the next frame, below its top
            // padding.
            let source = &wide[(c * from.out_height + y) * row..][..span];
            let target = (c * height + to.top + y) * out_row;
            let target = &mut out[target..target + out_row];
            if from.pitch() == to.pitch() {
                // One copy of the whole row; then the points between the images, which the
                // wide convolution computed across two images, become the gaps' zeros.
                copy(&mut target[to.left..to.left + span], source);
                for n in 1..from.images {
                    target[to.left + n * to.pitch() - (to.pitch() - width)..][..to.pitch() - width]
                        .fill(0.0);
                }
            } else {
                for n in 0..from.images {
                    let into = &mut target[to.left + n * to.pitch()..][..width];
                    copy(into, &source[n * from.pitch()..][..width]);
                }
            }
        }
    }
}

impl TypedOp for Rewiden {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(f32::fact(self.to.wide_shape())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::super::rewrite_for_batch;
    use super::*;

    fn eval(op: impl EvalOp, input: Tensor) -> Tensor {
        let out = op.eval(&EvalContext::out_of_plan(), tvec!(input.into_tvalue()));
        out.unwrap().remove(0).into_tensor()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec()
    }

    fn relu(t: Tensor) -> Tensor {
        let v: Vec<f32> = values(&t).iter().map(|v| v.max(0.0)).collect();
        Tensor::from_shape(t.shape(), &v).unwrap()
    }

    /// Three 2-channel 4×6 images through a 3×3 convolution with padding 1: a wide output of
    /// 4 rows per channel, its points numbered and shifted so that some are negative.
    fn frame_and_wide_output() -> (Frame, Tensor) {
        let frame = Frame {
            images: 3,
            channels: 2,
            height: 4,
            width: 6,
            top: 1,
            bottom: 1,
            left: 1,
            right: 1,
            out_channels: 2,
            out_height: 4,
            out_width: 6,
        };
        let row = frame.wide_width() - 2;
        let points: Vec<f32> = (0..2 * 4 * row).map(|v| v as f32 - 40.0).collect();
        let wide = Tensor::from_shape(&[1, 2, 4, row], &points).unwrap();
        (frame, wide)
    }

    #[test]
    fn rewidening_is_copying_back_then_relu_then_side_by_side() {
        let (frame, wide) = frame_and_wide_output();
        let back = BackToImages {
            frame: frame.clone(),
            relu: true,
            tile: [1, 1],
        };
        let rewiden = Rewiden::between(&back, &frame).unwrap();
        let plain = BackToImages {
            relu: false,
            ..back
        };
        let images = relu(eval(plain, wide.clone()));
        let want = eval(SideBySide { frame }, images);
        let got = eval(rewiden, wide);
        assert_eq!(got.shape(), want.shape());
        assert_eq!(values(&got), values(&want));
    }

    #[test]
    fn copying_back_with_relu_and_pool_is_the_three_ops_in_a_row() {
        let (frame, wide) = frame_and_wide_output();
        for tile in [[2, 2], [2, 3], [1, 1]] {
            let plain = BackToImages {
                frame: frame.clone(),
                relu: false,
                tile: [1, 1],
            };
            let images = relu(eval(plain.clone(), wide.clone()));
            let pool = TiledMaxPool {
                shape: plain.output_shape(),
                tile_height: tile[0],
                tile_width: tile[1],
            };
            let want = eval(pool, images);
            let fused = BackToImages {
                relu: true,
                tile,
                ..plain
            };
            let got = eval(fused, wide.clone());
            assert_eq!(got.shape(), want.shape(), "{tile:?}");
            assert_eq!(values(&got), values(&want), "{tile:?}");
        }
    }

    fn cnn(rows: usize) -> TypedModel {
        tract_onnx::onnx()
            .model_for_path(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/models/digits_cnn.onnx"
            ))
            .and_then(|m| m.with_input_fact(0, f32::fact([rows, 8, 8, 1]).into()))
            .and_then(|m| m.into_typed())
            .and_then(|m| m.into_decluttered())
            .unwrap()
    }

    /// The digits CNN's two chains are fused, and the fused plan gives the outputs of tract
    /// alone.
    #[test]
    fn the_cnn_runs_one_walk_between_its_convolutions_with_the_same_outputs() {
        let rows = 64;
        let mut fused = cnn(rows);
        let rewritten = rewrite_for_batch(&mut fused).unwrap();
        let fused = fused.into_optimized().unwrap();
        let ops: Vec<String> = fused.nodes().iter().map(|n| n.op.name().into()).collect();
        let count = |name: &str| ops.iter().filter(|o| *o == name).count();
        let ours = ["SideBySide", "Rewiden", "BackToImages", "TiledMaxPool"].map(count);
        if tract_linalg::routines::conv_w4_f32().is_some() {
            // Two convolutions side by side and a pool, then both chains fused: conv1's
            // SideBySide stays; conv2's comes from a Rewiden, the pool from a BackToImages.
            assert_eq!(rewritten.total(), 5);
            assert_eq!((rewritten.side_by_side, rewritten.tiled_max_pools), (2, 1));
            assert_eq!(ours, [1, 1, 1, 0], "{ops:?}");
        } else {
            // Without tract's direct convolution there are no wide images: only the pool.
            assert_eq!(rewritten.total(), 1);
            assert_eq!(rewritten.tiled_max_pools, 1);
            assert_eq!(ours, [0, 0, 0, 1], "{ops:?}");
        }

        let pixels: Vec<f32> = (0..rows * 64).map(|i| ((i * 7919) % 17) as f32).collect();
        let input = Tensor::from_shape(&[rows, 8, 8, 1], &pixels).unwrap();
        let run = |model: TypedModel| {
            let plan = model.into_runnable().unwrap();
            let out = plan.run(tvec!(input.clone().into_tvalue())).unwrap();
            values(&out[0].clone().into_tensor())
        };
        let (got, want) = (run(fused), run(cnn(rows).into_optimized().unwrap()));
        assert_eq!(got.len(), rows * 10);
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_diff < 1e-5, "max abs diff {max_diff}");
    }
}
