//! streamtract's graph rewrites (src/model/rewrites/) on CNNs they were not written for.
//!
//! The rewrites were tuned on the 8×8 digits CNN. The models here (`models/rewrites/*.onnx`,
//! made by `models/make_rewrite_models.py`) have other kernel sizes (5×5, 1×1, 4×2, 2×3),
//! strides, dilations, groups, padding (valid, same, uneven same), channel counts, multi-channel
//! inputs, pools of other sizes, with strides other than their size or with padding, and images
//! already wide. Each is loaded with the rewrites on and off and run at batches of 1, 7 and 64
//! rows; both must give TensorFlow's outputs (`NAME.reference.json`) within 1e-4, and with the
//! rewrites on each rewrite must take exactly the nodes it is expected to: a rewrite that
//! matched a pattern it does not handle, or stopped matching one it does, fails here.
//!
//! No Kafka broker is needed.

use std::path::PathBuf;

use serde_json::Value;
use streamtract::model::{GraphRewrites, Model, ModelOptions, RewriteCounts};
use tract_onnx::prelude::Tensor;

const TOLERANCE: f32 = 1e-4;

/// Batch sizes run: one image (no side by side), a batch padded to a plan of 8 (too narrow
/// side by side for tract's direct convolution on these models) and the largest plan, 64.
const BATCHES: [usize; 3] = [1, 7, 64];

/// `models/rewrites/FILE`, or `models/FILE` for the digits CNN the rewrites were written for.
fn model_path(file: &str) -> PathBuf {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    if file.starts_with("rewrites_") {
        models.join("rewrites").join(file)
    } else {
        models.join(file)
    }
}

/// A model's reference: its one input's rows and TensorFlow's outputs for them.
struct Reference {
    row_shape: Vec<usize>,
    rows: usize,
    inputs: Vec<f32>,
    outputs: Vec<f32>,
    output_width: usize,
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("an array of numbers")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

fn shape(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("a shape")
        .iter()
        .map(|d| d.as_u64().expect("a dimension") as usize)
        .collect()
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(model_path(&format!("{name}.reference.json")))
        .expect("the reference file");
    let doc: Value = serde_json::from_str(&text).expect("reference JSON");
    let one = |key: &str| {
        let map = doc[key].as_object().expect("a map of tensors");
        assert_eq!(map.len(), 1, "{name}: one {key} expected");
        map.values().next().cloned().expect("one tensor")
    };
    let (input, output) = (one("inputs"), one("outputs"));
    let input_shape = shape(&input["shape"]);
    let output_shape = shape(&output["shape"]);
    assert_eq!(output_shape.len(), 2, "{name}: outputs [rows, width]");
    Reference {
        row_shape: input_shape[1..].to_vec(),
        rows: input_shape[0],
        inputs: floats(&input["data"]),
        outputs: floats(&output["data"]),
        output_width: output_shape[1],
    }
}

impl Reference {
    /// A batch of `rows` rows, row `i` being reference row `i mod rows`, and TensorFlow's
    /// outputs for it.
    fn batch(&self, rows: usize) -> (Tensor, Vec<f32>) {
        let row_len: usize = self.row_shape.iter().product();
        let mut inputs = Vec::with_capacity(rows * row_len);
        let mut outputs = Vec::with_capacity(rows * self.output_width);
        for i in 0..rows {
            let r = i % self.rows;
            inputs.extend_from_slice(&self.inputs[r * row_len..][..row_len]);
            outputs.extend_from_slice(&self.outputs[r * self.output_width..][..self.output_width]);
        }
        let mut shape = vec![rows];
        shape.extend_from_slice(&self.row_shape);
        let tensor = Tensor::from_shape(&shape, &inputs).expect("the batch tensor");
        (tensor, outputs)
    }
}

/// Whether this host has tract's direct convolution, without which the side-by-side rewrite
/// (and so the fusions of its copies) never applies.
fn direct_convolution() -> bool {
    tract_onnx::tract_core::internal::tract_linalg::routines::conv_w4_f32().is_some()
}

/// What each rewrite should take, as `(side by side, tiled max pools, fused chains)`, on this
/// host: without the direct convolution, no side by side and so no fusion.
fn counts(side_by_side: usize, tiled_max_pools: usize, fused_chains: usize) -> RewriteCounts {
    let direct = direct_convolution();
    RewriteCounts {
        side_by_side: if direct { side_by_side } else { 0 },
        tiled_max_pools,
        fused_chains: if direct { fused_chains } else { 0 },
    }
}

/// Loads `models/NAME.onnx` with the rewrites on and off and checks every batch size: the
/// rewrites took `expected(plan rows)` nodes (none when off), and the outputs are TensorFlow's.
fn check(name: &str, expected: impl Fn(usize) -> RewriteCounts) {
    let reference = reference(name);
    for rewrites in [GraphRewrites::On, GraphRewrites::Off] {
        let options = ModelOptions::default().graph_rewrites(rewrites);
        let model = Model::load_with(model_path(&format!("{name}.onnx")), &options)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for rows in BATCHES {
            let plan_rows = rows.next_power_of_two();
            let took = model.rewrite_counts(rows).expect("the plan compiles");
            let want = match rewrites {
                GraphRewrites::On => expected(plan_rows),
                GraphRewrites::Off => RewriteCounts::default(),
            };
            println!("{name}, rewrites {rewrites}, {rows} rows: rewrote {took}");
            assert_eq!(took, want, "{name}, rewrites {rewrites}, {rows} rows");

            let (input, want) = reference.batch(rows);
            let outputs = model.run(vec![input]).expect("the batch runs");
            assert_eq!(outputs.len(), 1);
            assert_eq!(outputs[0].shape(), [rows, reference.output_width]);
            let got = outputs[0]
                .to_plain_array_view::<f32>()
                .expect("f32 outputs");
            let max_diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            println!("    max abs diff vs TensorFlow {max_diff:e}");
            assert!(
                max_diff <= TOLERANCE,
                "{name}, rewrites {rewrites}, {rows} rows: max abs diff {max_diff} > {TOLERANCE}"
            );
        }
    }
}

/// The model the rewrites were written for, as a control: at 64 rows both convolutions go side
/// by side, the pool is tiled and both copies out are fused (into the second convolution's
/// wide image, and with the ReLU and the pool).
#[test]
fn digits_cnn_gets_every_rewrite_at_64_rows() {
    check("digits_cnn", |rows| match rows {
        64 => counts(2, 1, 2),
        _ => counts(0, 1, 0),
    });
}

/// 12×10×3 images; a 1×1 convolution to 8 channels (tract runs it as a matrix product, not a
/// convolution), a 5×5 "same" one to 8 and a 3×3 "valid" one to 4, a 3×3 pool over 10×8 (a
/// row and two columns dropped). At 64 rows the 5×5 and 3×3 convolutions go side by side
/// (output rows of 766 and 638 points), the copy out of the first is fused into the second's
/// wide image and the second's with its ReLU and the 3×3 tiles. At 8 rows (94 and 78 points)
/// only the pool is tiled.
#[test]
fn five_by_five_and_one_by_one_kernels_on_three_channels() {
    check("rewrites_k5_rgb", |rows| match rows {
        64 => counts(2, 1, 2),
        _ => counts(0, 1, 0),
    });
}

/// 9×7×2 images; 4×2 and 2×3 "same" convolutions, whose padding is uneven (more after than
/// before, in height and width), the first with no activation, to 8 and 4 channels; 2×2 pool
/// over 9×7 (a row and a column dropped). At 64 rows as for the 5×5 model: the copy out of the
/// first is fused into the second's wide image without a ReLU.
#[test]
fn even_kernels_with_uneven_padding_and_no_activation() {
    check("rewrites_even_kernels", |rows| match rows {
        64 => counts(2, 1, 2),
        _ => counts(0, 1, 0),
    });
}

/// 16×16×1 images; a 3×3 convolution with stride 2 (must not go side by side), a "valid" 3×3
/// one that may (8×8 images to 6×6, at 64 rows), then a 3×3 pool with stride 2, whose windows
/// overlap (must not be tiled): the second convolution's copy out is fused with its ReLU only.
#[test]
fn stride_two_convolution_and_overlapping_pool_are_left_to_tract() {
    check("rewrites_stride2", |rows| match rows {
        64 => counts(1, 0, 1),
        _ => counts(0, 0, 0),
    });
}

/// 11×11×4 images; a depthwise 3×3 convolution (4 groups), a 3×3 convolution dilated by 2 and
/// a 2×2 "same" pool over 7×7, which pads: no rewrite may take any of them.
#[test]
fn grouped_and_dilated_convolutions_and_a_padded_pool_are_left_to_tract() {
    check("rewrites_grouped_dilated", |_| counts(0, 0, 0));
}

/// 3×130×1 images: each is already as wide as tract's direct convolution wants, so the
/// convolution is not laid side by side at any batch size; its 1×2 pool is tiled.
#[test]
fn images_already_wide_are_not_laid_side_by_side() {
    check("rewrites_wide_rows", |_| counts(0, 1, 0));
}

/// 8×8×2 images; a 3×3 "same" convolution followed by a 1×1 one, which tract runs as a matrix
/// product reading channels last: tract then lays the 3×3 convolution out channels last
/// (NHWC) too, which the side-by-side copies do not handle, so it must be left alone (it would
/// otherwise qualify at 64 rows). The 2×2 pool, back in NCHW, is tiled.
#[test]
fn a_convolution_tract_lays_out_channels_last_is_left_to_tract() {
    check("rewrites_nhwc_layout", |_| counts(0, 1, 0));
}
