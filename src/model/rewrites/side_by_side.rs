//! Small-image convolutions run as one wide image: the batch's images laid side by side.
//!
//! tract compiles a convolution over a batch of small images (the digits CNN's 8×8) as an
//! im2col per image followed by a matrix product: the im2col packs each image element by
//! element and took 40% of the CNN's batch time, the matrix products (one per image, 64 output
//! points each) another 30%. tract also has a direct convolution (`DirectSpatialConv`, a
//! filter along the width, four output channels at a time) that needs no im2col, but it only
//! takes rows of at least 128 points.
//!
//! [`lay_images_side_by_side`] gives it such rows. Each eligible convolution becomes three
//! nodes:
//!
//! 1. [`SideBySide`] copies the `N` images of `[N, C, H, W]` into one image
//!    `[1, C, H + pads, about N × (W + pad)]`, with zeros above and below as deep as the
//!    convolution's padding and columns of zeros between the images as wide as its wider
//!    side padding (one gap is the right padding of one image and the left padding of the
//!    next, so no point is computed for two pads);
//! 2. the same convolution without padding (the zeros are the padding), which tract then
//!    compiles as a direct convolution over rows of about `N × (W + pad)` points;
//! 3. [`BackToImages`] copies each image's output columns back to `[N, C', H', W']`.
//!
//! A gap is as wide as the kernel reaches past an image's edge, so no output point of one
//! image reads a pixel of its neighbour: the results are those of the original convolution,
//! up to the order of the float additions. The two copies move about as many bytes as the
//! convolution reads and writes once; on the digits CNN they made the static binary's
//! 256-row batch 1.45× faster (5.6 → 3.85 ms, docs/performance.md "Batch inference").

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, PaddingSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use super::{eval_f32, rewrite_nodes, NodeFacts};

/// tract's direct convolution takes rows at least this wide (its `MIN_DIRECT_SPATIAL_W`).
const DIRECT_MIN_WIDTH: usize = 128;

/// The wide image gets zero columns at its end up to an output row of a multiple of this many
/// points: on the digits CNN, tract's direct convolution took 18% longer over output rows of
/// 638 points than of 640 (773 against 655 µs for 64 images, glibc build); its kernel works
/// on whole vectors of points, and we did not look further into how it ends a row.
const TAIL_ALIGN: usize = 16;

/// tract's direct convolution takes at most this many taps per output channel (input channels
/// × kernel volume) on hosts without Apple's AMX.
const DIRECT_MAX_TAPS: usize = 576;

/// Rewrites every convolution of `model` that tract would run image by image, and that its
/// direct convolution can take once the images are side by side. Returns how many were
/// rewritten. The model must be typed (and best decluttered) with a concrete batch size;
/// convolutions whose shapes are not concrete are left alone, and so is every convolution
/// that does not pass all the checks listed at `Frame::for_conv` (strides, dilations,
/// padding, groups, layout, data types, shapes). [`Model`](crate::model::Model) does
/// this for every plan it compiles per batch size; call it when compiling a tract plan of
/// your own.
///
/// ```no_run
/// use tract_onnx::prelude::*;
/// let mut model = tract_onnx::onnx()
///     .model_for_path("models/digits_cnn.onnx")?
///     .with_input_fact(0, f32::fact([64, 8, 8, 1]).into())?
///     .into_typed()?
///     .into_decluttered()?;
/// let rewritten = streamtract::model::rewrites::lay_images_side_by_side(&mut model)?;
/// assert_eq!(rewritten, 2);
/// let plan = model.into_optimized()?.into_runnable()?;
/// # Ok::<(), TractError>(())
/// ```
pub fn lay_images_side_by_side(model: &mut TypedModel) -> TractResult<usize> {
    // Without the direct kernel on this host, tract would run the wide image through im2col
    // too, and the copies would be pure cost.
    if tract_linalg::routines::conv_w4_f32().is_none() {
        return Ok(0);
    }
    let select = |conv: &Conv, facts: &NodeFacts| {
        let frame = Frame::for_conv(conv, facts)?;
        // The frames are the padding.
        let mut unpadded = conv.clone();
        unpadded.pool_spec.padding = PaddingSpec::Valid;
        Some((unpadded, frame))
    };
    rewrite_nodes(model, select, |patch, name, taps, (unpadded, frame)| {
        let side_by_side = SideBySide {
            frame: frame.clone(),
        };
        let mut inputs = taps.to_vec();
        inputs[0] = patch.wire_node(format!("{name}.side_by_side"), side_by_side, &taps[..1])?[0];
        let wide = patch.wire_node(format!("{name}.wide"), unpadded, &inputs)?[0];
        let back = BackToImages::new(frame);
        Ok(patch.wire_node(format!("{name}.back_to_images"), back, &[wide])?[0])
    })
}

/// Where the images of a batch go in the wide image: `images` of `height × width` pixels,
/// with `top`/`bottom` rows of zeros above and below, `left` columns of zeros before the
/// first image, `right` after the last and the wider of the two between images; and
/// `out_height × out_width` points of convolution output each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Frame {
    pub(super) images: usize,
    pub(super) channels: usize,
    pub(super) height: usize,
    pub(super) width: usize,
    pub(super) top: usize,
    pub(super) bottom: usize,
    pub(super) left: usize,
    pub(super) right: usize,
    pub(super) out_channels: usize,
    pub(super) out_height: usize,
    pub(super) out_width: usize,
}

impl Frame {
    /// The frame for `conv`, if its node (with `facts`) is a convolution whose output the
    /// wide image gives exactly and that tract can then run as a direct convolution. It
    /// checks everything the copies and the unpadded convolution rely on:
    ///
    /// - a plain float convolution: no quantisation, float32 input, kernel, bias and output,
    ///   one group, three inputs;
    /// - over a batch: NCHW layout (a batch axis, channels first), a concrete 4-D input whose
    ///   channels are the convolution's, a 2-D kernel;
    /// - stride and dilation 1 on both axes (a stride would make output columns that start
    ///   in the gaps, a dilation taps that reach over them);
    /// - output height and width exactly `framed − kernel + 1` on both axes, which rules out
    ///   ceil-mode pooling padding or any other padding arithmetic the frame does not model,
    ///   and the node's output shape exactly `[N, C', H', W']` of the frame;
    /// - at least two images, each narrower than tract's direct minimum, side by side at
    ///   least as wide, and a kernel tract's direct convolution takes (at most
    ///   [`DIRECT_MAX_TAPS`] taps per output channel, output channels a multiple of 4).
    ///
    /// The last point is about speed; every other one about giving the same results.
    fn for_conv(conv: &Conv, facts: &NodeFacts) -> Option<Frame> {
        let spec = &conv.pool_spec;
        let f32_fact = |f: &&TypedFact| f.datum_type == f32::datum_type();
        let [input, _, _] = facts.inputs.as_slice() else {
            return None;
        };
        let shape = input.shape.as_concrete()?;
        let kernel: [usize; 2] = spec.kernel_shape.as_slice().try_into().ok()?;
        let unit = |v: &Option<TVec<usize>>| v.as_ref().is_none_or(|v| v.iter().all(|&s| s == 1));
        if conv.q_params.is_some()
            || conv.group != 1
            || !facts.inputs.iter().all(f32_fact)
            || !f32_fact(&facts.output)
            || spec.data_format != DataFormat::NCHW
            || shape.len() != 4
            || shape[1] != spec.input_channels
            || kernel.contains(&0)
            || !unit(&spec.strides)
            || !unit(&spec.dilations)
            || spec.input_channels * kernel[0] * kernel[1] > DIRECT_MAX_TAPS
            || !spec.output_channels.is_multiple_of(4)
        {
            return None;
        }
        let (images, channels, height, width) = (shape[0], shape[1], shape[2], shape[3]);
        let padding = spec.computed_padding(&[height, width]);
        let [vertical, horizontal] = padding.as_slice() else {
            return None;
        };
        let frame = Frame {
            images,
            channels,
            height,
            width,
            top: vertical.pad_before,
            bottom: vertical.pad_after,
            left: horizontal.pad_before,
            right: horizontal.pad_after,
            out_channels: spec.output_channels,
            out_height: vertical.convoluted,
            out_width: horizontal.convoluted,
        };
        // A kernel larger than the framed image has no output to place (checked first: the
        // widths below would underflow).
        let fits = frame.framed_height() >= kernel[0]
            && frame.framed_width() >= kernel[1]
            && frame.out_height + kernel[0] == frame.framed_height() + 1
            && frame.out_width + kernel[1] == frame.framed_width() + 1;
        let output = [
            images,
            frame.out_channels,
            frame.out_height,
            frame.out_width,
        ];
        if !fits
            || facts.output.shape.as_concrete() != Some(&output[..])
            || images < 2
            || width >= DIRECT_MIN_WIDTH
        {
            return None;
        }
        (frame.wide_out_width(kernel[1]) >= DIRECT_MIN_WIDTH).then_some(frame)
    }

    fn framed_width(&self) -> usize {
        self.left + self.width + self.right
    }

    /// Columns from one image's start to the next's: the image and one gap of zeros, which
    /// is the right padding of the one and the left padding of the other.
    pub(super) fn pitch(&self) -> usize {
        self.width + self.left.max(self.right)
    }

    pub(super) fn framed_height(&self) -> usize {
        self.top + self.height + self.bottom
    }

    /// Width of the wide image up to the last image's right padding.
    fn padded_width(&self) -> usize {
        self.left + (self.images - 1) * self.pitch() + self.width + self.right
    }

    /// Output width of the unpadded convolution over the wide image.
    fn wide_out_width(&self, kernel_width: usize) -> usize {
        self.padded_width() + 1 - kernel_width
    }

    /// The row length of `wide`, the output of the unpadded convolution over the wide image,
    /// after checking that its rows hold every image's output points.
    pub(super) fn wide_output_row(&self, wide: &[f32]) -> TractResult<usize> {
        let rows = self.out_channels * self.out_height;
        let row = wide.len() / rows.max(1);
        ensure!(row * rows == wide.len());
        ensure!((self.images - 1) * self.pitch() + self.out_width <= row);
        Ok(row)
    }

    /// Shape of the wide image this frame makes: `[1, C, framed height, wide width]`, what
    /// `SideBySide` makes and a `Rewiden` into this frame too.
    pub(super) fn wide_shape(&self) -> [usize; 4] {
        [1, self.channels, self.framed_height(), self.wide_width()]
    }

    /// Width of the wide image: the images and their padding, then zeros up to an output row
    /// that is a whole number of TAIL_ALIGN points.
    pub(super) fn wide_width(&self) -> usize {
        let kernel_width = self.framed_width() + 1 - self.out_width;
        let out = self.wide_out_width(kernel_width);
        self.padded_width() + out.next_multiple_of(TAIL_ALIGN) - out
    }
}

/// `[N, C, H, W]` → `[1, C, H + top + bottom, wide width]`: the images side by side, with
/// zeros around and between them (see [`Frame`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SideBySide {
    pub(super) frame: Frame,
}

impl Op for SideBySide {
    fn name(&self) -> StaticName {
        "SideBySide".into()
    }

    op_as_typed_op!();
}

impl EvalOp for SideBySide {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let f = &self.frame;
        let shape = f.wide_shape();
        let [_, _, fh, row] = shape;
        let pitch = f.pitch();
        eval_f32(&inputs, &shape, move |input, out| {
            ensure!(input.len() == f.images * f.channels * f.height * f.width);
            for (n, image) in input
                .chunks_exact(f.channels * f.height * f.width)
                .enumerate()
            {
                for (c, plane) in image.chunks_exact(f.height * f.width).enumerate() {
                    for (y, pixels) in plane.chunks_exact(f.width).enumerate() {
                        let at = (c * fh + f.top + y) * row + f.left + n * pitch;
                        out[at..at + f.width].copy_from_slice(pixels);
                    }
                }
            }
            Ok(())
        })
    }
}

impl TypedOp for SideBySide {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let f = &self.frame;
        let expected = [f.images, f.channels, f.height, f.width];
        ensure!(inputs[0].shape.as_concrete() == Some(&expected[..]));
        Ok(tvec!(f32::fact(f.wide_shape())))
    }

    as_op!();
}

/// `[1, C', H', wide output width]` → `[N, C', H', W']`: each image's output columns of the
/// wide convolution, back in a batch.
///
/// A copy back can also take over what follows it (see [`super::fuse_wide_copies`]): a ReLU
/// (`relu`), applied to each point, and a max pooling over `tile` (height, width; `[1, 1]`
/// for none), which makes it `[N, C', H' / tile height, W' / tile width]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BackToImages {
    pub(super) frame: Frame,
    pub(super) relu: bool,
    pub(super) tile: [usize; 2],
}

impl BackToImages {
    fn new(frame: Frame) -> BackToImages {
        BackToImages {
            frame,
            relu: false,
            tile: [1, 1],
        }
    }

    /// `[N, C', H', W']`, or with a tile, `[N, C', H' / tile height, W' / tile width]`.
    pub(super) fn output_shape(&self) -> [usize; 4] {
        let f = &self.frame;
        let [th, tw] = self.tile;
        [
            f.images,
            f.out_channels,
            f.out_height / th,
            f.out_width / tw,
        ]
    }
}

impl Op for BackToImages {
    fn name(&self) -> StaticName {
        "BackToImages".into()
    }

    op_as_typed_op!();
}

impl EvalOp for BackToImages {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (frame, tile) = (&self.frame, self.tile);
        let shape = self.output_shape();
        eval_f32(&inputs, &shape, move |wide, out| {
            let row = frame.wide_output_row(wide)?;
            // The ReLU as a constant of the loops, which LLVM then compiles without a branch.
            if self.relu {
                collect::<true>(frame, tile, row, wide, out);
            } else {
                collect::<false>(frame, tile, row, wide, out);
            }
            Ok(())
        })
    }
}

/// Copies each image's output points from the wide output (rows of `row` points) to `out`,
/// `[N, C', H' / tile height, W' / tile width]`, through a ReLU if `RELU` and pooling the
/// tiles. The loops go along the wide rows, images inside, so no index is divided per row.
fn collect<const RELU: bool>(
    f: &Frame,
    [th, tw]: [usize; 2],
    row: usize,
    wide: &[f32],
    out: &mut [f32],
) {
    let act = |v: f32| if RELU { v.max(0.0) } else { v };
    let (out_height, out_width) = (f.out_height / th, f.out_width / tw);
    let width = out_width * tw;
    for c in 0..f.out_channels {
        for y in 0..out_height {
            // Output row y of channel c comes from `th` rows of the wide output (same
            // channel), each image's from the column where its left padding starts.
            let first = (c * f.out_height + y * th) * row;
            for n in 0..f.images {
                let at = first + n * f.pitch();
                let to = ((n * f.out_channels + c) * out_height + y) * out_width;
                let points = &mut out[to..to + out_width];
                match [th, tw] {
                    [1, 1] if !RELU => points.copy_from_slice(&wide[at..at + width]),
                    [1, 1] => {
                        for (o, &v) in points.iter_mut().zip(&wide[at..at + width]) {
                            *o = act(v);
                        }
                    }
                    // The maximum as TiledMaxPool takes it (from f32::MIN, with f32::max).
                    [2, 2] => {
                        let top = wide[at..at + width].chunks_exact(2);
                        let bottom = wide[at + row..at + row + width].chunks_exact(2);
                        for (o, (a, b)) in points.iter_mut().zip(top.zip(bottom)) {
                            *o = f32::MIN
                                .max(act(a[0]))
                                .max(act(a[1]))
                                .max(act(b[0]))
                                .max(act(b[1]));
                        }
                    }
                    _ => {
                        for (x, o) in points.iter_mut().enumerate() {
                            *o = (0..th)
                                .flat_map(|r| {
                                    let start = at + r * row + x * tw;
                                    &wide[start..start + tw]
                                })
                                .fold(f32::MIN, |m, &v| m.max(act(v)));
                        }
                    }
                }
            }
        }
    }
}

impl TypedOp for BackToImages {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(f32::fact(self.output_shape())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Plan;

    fn eval(op: impl EvalOp, input: Tensor) -> Vec<f32> {
        let out = op.eval(&EvalContext::out_of_plan(), tvec!(input.into_tvalue()));
        let out = out.unwrap().remove(0).into_tensor();
        out.try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec()
    }

    /// Two 1-channel 2×3 images, padding of one pixel and a 3×3 kernel: the wide image is 4
    /// rows of 9 points (a zero, the first image, a zero, the second, a zero) plus a tail of
    /// zeros up to an output row of 16 points.
    fn frame() -> Frame {
        Frame {
            images: 2,
            channels: 1,
            height: 2,
            width: 3,
            top: 1,
            bottom: 1,
            left: 1,
            right: 1,
            out_channels: 1,
            out_height: 2,
            out_width: 3,
        }
    }

    #[test]
    fn images_go_side_by_side_with_zeros_around_and_between() {
        let f = frame();
        assert_eq!(f.wide_width(), 18);
        let pixels: Vec<f32> = (1..=12).map(|v| v as f32).collect();
        let input = Tensor::from_shape(&[2, 1, 2, 3], &pixels).unwrap();
        let wide = eval(SideBySide { frame: f }, input);
        let zeros = [0.0; 18];
        let mut want = zeros.to_vec();
        want.extend_from_slice(&[0., 1., 2., 3., 0., 7., 8., 9., 0.]);
        want.extend_from_slice(&[0.0; 9]);
        want.extend_from_slice(&[0., 4., 5., 6., 0., 10., 11., 12., 0.]);
        want.extend_from_slice(&[0.0; 9]);
        want.extend_from_slice(&zeros);
        assert_eq!(wide, want);
    }

    #[test]
    fn each_image_takes_its_own_output_columns_back() {
        let f = frame();
        // A wide output of 2 rows of 16 points, each point numbered by where it is.
        let wide: Vec<f32> = (0..32).map(|v| v as f32).collect();
        let input = Tensor::from_shape(&[1, 1, 2, 16], &wide).unwrap();
        let images = eval(BackToImages::new(f), input);
        // Image 0's outputs start at column 0, image 1's at column 4 (an image and a gap on).
        let want = [0., 1., 2., 16., 17., 18., 4., 5., 6., 20., 21., 22.];
        assert_eq!(images, want);
    }

    fn cnn(rows: usize, side_by_side: bool) -> (usize, Plan) {
        let mut model = tract_onnx::onnx()
            .model_for_path(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/models/digits_cnn.onnx"
            ))
            .and_then(|m| m.with_input_fact(0, f32::fact([rows, 8, 8, 1]).into()))
            .and_then(|m| m.into_typed())
            .and_then(|m| m.into_decluttered())
            .unwrap();
        let rewritten = if side_by_side {
            lay_images_side_by_side(&mut model).unwrap()
        } else {
            0
        };
        (
            rewritten,
            model.into_optimized().unwrap().into_runnable().unwrap(),
        )
    }

    /// The digits CNN gives the same outputs with its two convolutions side by side as tract
    /// alone, on pixels that differ in every row (an image reading its neighbour's pixels
    /// would show).
    #[test]
    fn the_cnn_gives_the_same_outputs_side_by_side() {
        let rows = 64;
        let pixels: Vec<f32> = (0..rows * 64).map(|i| ((i * 7919) % 17) as f32).collect();
        let input = Tensor::from_shape(&[rows, 8, 8, 1], &pixels).unwrap();
        let (rewritten, wide) = cnn(rows, true);
        let (none, plain) = cnn(rows, false);
        assert_eq!(none, 0);
        let expected = if tract_linalg::routines::conv_w4_f32().is_some() {
            2
        } else {
            0
        };
        assert_eq!(rewritten, expected, "both convolutions of the CNN qualify");
        let run = |plan: &Plan| {
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
        };
        let (got, want) = (run(&wide), run(&plain));
        assert_eq!(got.len(), rows * 10);
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_diff < 1e-5, "max abs diff {max_diff}");
    }

    /// Eight 8×8 images side by side make output rows of 71 points, too short for tract's
    /// direct convolution: those stay as they are.
    #[test]
    fn batches_too_narrow_for_the_direct_convolution_stay_as_they_are() {
        assert_eq!(cnn(8, true).0, 0);
        assert_eq!(cnn(16, true).0, cnn(64, true).0);
    }
}
