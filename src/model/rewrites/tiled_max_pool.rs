//! Max pooling over tiles (kernel = stride, no padding), the pooling of Keras'
//! `MaxPooling2D` with its defaults.
//!
//! tract runs it as `OptMaxPool`, one channel plane at a time with bounds checks per tap: on
//! the digits CNN (`[N, 32, 8, 8]` to `[N, 32, 4, 4]`) that took 1.0–1.2 ms per 256 rows,
//! a fifth of the batch once the convolutions were side by side. [`TiledMaxPool`] walks each
//! plane a row of tiles at a time, over slices of whole input rows, with no bounds to check
//! per tap.
//!
//! It takes the maximum exactly as tract does (from `f32::MIN`, with `f32::max`, so a NaN
//! is skipped), so the outputs are the same bits.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::MaxPool;
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use super::{eval_f32, rewrite_nodes, NodeFacts};

/// Replaces every max pooling of `model` over whole tiles of a float NCHW input of concrete
/// shape by [`TiledMaxPool`]; returns how many. Pools with padding, overlapping or strided
/// windows, dilation, ceil mode or an index output stay tract's (every check is listed at
/// `TiledMaxPool::for_pool`).
pub fn replace_tiled_max_pools(model: &mut TypedModel) -> TractResult<usize> {
    rewrite_nodes(model, TiledMaxPool::for_pool, |patch, name, taps, op| {
        Ok(patch.wire_node(format!("{name}.tiled"), op, &taps[..1])?[0])
    })
}

/// Max pooling of `[N, C, H, W]` over `tile_height × tile_width` tiles: `[N, C, H / tile
/// height, W / tile width]` (rows and columns past the last whole tile are dropped, as with
/// unpadded pooling).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TiledMaxPool {
    pub(super) shape: [usize; 4],
    pub(super) tile_height: usize,
    pub(super) tile_width: usize,
}

impl TiledMaxPool {
    /// The tiled pool that computes what `pool`'s node (with `facts`) does, if it is one:
    ///
    /// - one float32 NCHW input of a concrete 4-D shape, one float32 output (no index
    ///   output), a 2-D kernel with no empty side;
    /// - dilation 1 and strides equal to the kernel on both axes (tiles that neither overlap
    ///   nor leave gaps; absent strides mean 1 in tract, so they only pass for a 1×1 kernel,
    ///   which is not worth a rewrite and is left alone too);
    /// - no padding on either side of either axis, and as many output rows and columns as
    ///   there are whole tiles (which rules out ceil mode);
    /// - the node's output shape exactly `[N, C, H / tile height, W / tile width]`.
    fn for_pool(pool: &MaxPool, facts: &NodeFacts) -> Option<TiledMaxPool> {
        let spec = &pool.pool_spec;
        let [input] = facts.inputs.as_slice() else {
            return None;
        };
        let shape: [usize; 4] = input.shape.as_concrete()?.try_into().ok()?;
        let kernel: [usize; 2] = spec.kernel_shape.as_slice().try_into().ok()?;
        let unit = spec
            .dilations
            .as_ref()
            .is_none_or(|d| d.iter().all(|&d| d == 1));
        let tiles = spec
            .strides
            .as_ref()
            .is_some_and(|s| s.as_slice() == kernel);
        if pool.with_index_outputs.is_some()
            || input.datum_type != f32::datum_type()
            || facts.output.datum_type != f32::datum_type()
            || spec.data_format != DataFormat::NCHW
            || !unit
            || !tiles
            || kernel.contains(&0)
            || shape[2] < kernel[0]
            || shape[3] < kernel[1]
        {
            return None;
        }
        let padding = spec.computed_padding(&shape[2..]);
        let [vertical, horizontal] = padding.as_slice() else {
            return None;
        };
        let unpadded = padding
            .iter()
            .all(|d| d.pad_before == 0 && d.pad_after == 0);
        let whole_tiles = vertical.convoluted == shape[2] / kernel[0]
            && horizontal.convoluted == shape[3] / kernel[1];
        let op = TiledMaxPool {
            shape,
            tile_height: kernel[0],
            tile_width: kernel[1],
        };
        let same_output = facts.output.shape.as_concrete() == Some(&op.output_shape()[..]);
        (unpadded && whole_tiles && same_output).then_some(op)
    }

    fn output_shape(&self) -> [usize; 4] {
        let [n, c, h, w] = self.shape;
        [n, c, h / self.tile_height, w / self.tile_width]
    }
}

impl Op for TiledMaxPool {
    fn name(&self) -> StaticName {
        "TiledMaxPool".into()
    }

    op_as_typed_op!();
}

impl EvalOp for TiledMaxPool {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let [_, _, h, w] = self.shape;
        let out_shape = self.output_shape();
        let (th, tw, ow) = (self.tile_height, self.tile_width, out_shape[3]);
        eval_f32(&inputs, &out_shape, move |input, out| {
            ensure!(input.len() == self.shape.iter().product::<usize>());
            let out_rows_per_plane = out_shape[2];
            // Each plane's rows past its last whole tile are skipped by taking the plane's
            // first `out_rows × tile height` rows.
            let planes = input.chunks_exact(h * w);
            for (plane, out_plane) in planes.zip(out.chunks_exact_mut(out_rows_per_plane * ow)) {
                let tile_rows = plane.chunks_exact(th * w);
                for (rows, out_row) in tile_rows.zip(out_plane.chunks_exact_mut(ow)) {
                    if th == 2 && tw == 2 {
                        let (top, bottom) = rows.split_at(w);
                        let pairs = top.chunks_exact(2).zip(bottom.chunks_exact(2));
                        for (o, (a, b)) in out_row.iter_mut().zip(pairs) {
                            *o = f32::MIN.max(a[0]).max(a[1]).max(b[0]).max(b[1]);
                        }
                    } else {
                        for (x, o) in out_row.iter_mut().enumerate() {
                            *o = rows
                                .chunks_exact(w)
                                .flat_map(|row| &row[x * tw..(x + 1) * tw])
                                .fold(f32::MIN, |m, &v| m.max(v));
                        }
                    }
                }
            }
            Ok(())
        })
    }
}

impl TypedOp for TiledMaxPool {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].shape.as_concrete() == Some(&self.shape[..]));
        Ok(tvec!(f32::fact(self.output_shape())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};

    /// A model of one max pooling over `shape`, as tract builds it from ONNX.
    fn pool_model(shape: [usize; 4], kernel: [usize; 2], strides: [usize; 2]) -> TypedModel {
        let mut model = TypedModel::default();
        let source = model.add_source("input", f32::fact(shape)).unwrap();
        let spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: kernel.into_iter().collect(),
            padding: PaddingSpec::Valid,
            dilations: None,
            strides: Some(strides.into_iter().collect()),
            input_channels: shape[1],
            output_channels: shape[1],
        };
        let pool = MaxPool {
            pool_spec: spec,
            with_index_outputs: None,
        };
        let out = model.wire_node("pool", pool, &[source]).unwrap();
        model.select_output_outlets(&out).unwrap();
        model
    }

    fn run(model: TypedModel, input: &Tensor) -> Vec<f32> {
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        let out = plan
            .spawn()
            .unwrap()
            .run(tvec!(input.clone().into_tvalue()))
            .unwrap();
        let out = out[0].clone().into_tensor();
        out.try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec()
    }

    /// Same bits as tract's own pooling, for 2×2 tiles and others, planes whose last rows
    /// and columns make no whole tile, and inputs with NaN and infinities.
    #[test]
    fn tiles_pool_to_the_same_bits_as_tract() {
        let cases = [
            ([3, 5, 8, 8], [2, 2]),
            ([2, 3, 7, 9], [2, 2]),
            ([2, 2, 9, 10], [3, 2]),
            ([1, 4, 6, 6], [1, 3]),
        ];
        for (shape, kernel) in cases {
            let len = shape.iter().product::<usize>();
            let values: Vec<f32> = (0..len)
                .map(|i| match i % 37 {
                    5 => f32::NAN,
                    11 => f32::NEG_INFINITY,
                    19 => f32::INFINITY,
                    _ => ((i * 7919) % 101) as f32 - 50.0,
                })
                .collect();
            let input = Tensor::from_shape(&shape, &values).unwrap();
            let mut tiled = pool_model(shape, kernel, kernel);
            assert_eq!(replace_tiled_max_pools(&mut tiled).unwrap(), 1, "{shape:?}");
            let ours = run(tiled, &input);
            let tracts = run(pool_model(shape, kernel, kernel), &input);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&ours), bits(&tracts), "{shape:?} {kernel:?}");
        }
    }

    #[test]
    fn overlapping_windows_stay_tracts() {
        let mut model = pool_model([1, 2, 8, 8], [3, 3], [1, 1]);
        assert_eq!(replace_tiled_max_pools(&mut model).unwrap(), 0);
    }
}
