#!/usr/bin/env python3
"""Build the small CNNs that test streamtract's graph rewrites on models they were not
written for (tests/rewrites.rs).

The rewrites (src/model/rewrites/) were tuned on the 8x8 digits CNN: 3x3 kernels, "same"
padding, stride 1, 1 -> 16 -> 32 channels, a 2x2 max pool. These models differ from it in
every property a rewrite checks, some so that a rewrite should apply to a new shape, some so
that it must not apply at all:

  rewrites_k5_rgb           12x10x3 input; 1x1 conv (8 ch; tract makes it a matrix product),
                            5x5 "same" conv (8 ch), 3x3 "valid" conv (4 ch), 3x3 pool over
                            10x8 (a row and two columns left over)
  rewrites_even_kernels     9x7x2 input; 4x2 and 2x3 "same" convs (uneven padding: more after
                            than before), the first without activation (8 then 4 ch), 2x2 pool
                            over 9x7 (a row and a column left over)
  rewrites_stride2          16x16x1 input; 3x3 stride-2 conv (must not be rewritten), 3x3
                            "valid" conv, 3x3 pool with stride 2 (overlapping: must not be
                            rewritten)
  rewrites_grouped_dilated  11x11x4 input; 3x3 depthwise conv (4 groups), 3x3 conv dilated by
                            2, 2x2 "same" pool over 7x7 (padded): none may be rewritten
  rewrites_wide_rows        3x130x1 input; images already as wide as tract's direct
                            convolution wants (no side by side), 1x2 pool
  rewrites_nhwc_layout      8x8x2 input; 3x3 "same" conv followed by a 1x1 conv, for which
                            tract lays the 3x3 conv out NHWC (must not be rewritten), 2x2 pool

Each ends in Flatten and a linear Dense(8) named `logits`. Weights are Keras' seeded random
initialisation (biases too, so that they are not zero): no training, the tests only compare
implementations. Each model is exported with make_models.py's path (SavedModel -> tf2onnx CLI,
opset 13 -> tidied, batch dimension `N`) into models/rewrites/ (apart from the models of
make_models.py, which tests/parity.rs lists), with NAME.reference.json: TensorFlow's own
outputs for 16 rows of seeded random integer pixels 0..15 (the models rescale by 1/16, as the
digits models do), in make_models.py's reference format. onnxruntime must agree with TensorFlow
on them within 1e-5. Re-running gives the same weights and reference files; tf2onnx may pick
a different name for one of two equal constants it merges, so an .onnx file can differ in
those names only.

    /work/tfenv/bin/python models/make_rewrite_models.py   # same packages as make_models.py
    /work/tfenv/bin/python models/make_rewrite_models.py --only rewrites_stride2
"""

import argparse
import os
import tempfile

import make_models  # noqa: F401  (sets the TF determinism environment before TF loads)
from make_models import (
    check_onnx_io,
    describe_onnx,
    export_onnx,
    reset_seed,
    run_ort,
    tf_predict,
    write_reference,
)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

keras = tf.keras
layers = keras.layers

N_REFERENCE_ROWS = 16
OUTPUT = "logits"
OUTPUT_WIDTH = 8


def bias():
    return keras.initializers.RandomNormal(stddev=0.2)


def conv(filters, kernel, **kw):
    return layers.Conv2D(filters, kernel, bias_initializer=bias(), **kw)


def head(x):
    x = layers.Flatten(name="flatten")(x)
    return layers.Dense(OUTPUT_WIDTH, bias_initializer=bias(), name=OUTPUT)(x)


def rescaled_input(shape):
    pixels = keras.Input(shape=shape, name="pixels")
    return pixels, layers.Rescaling(1.0 / 16.0, name="rescale")(pixels)


def build_k5_rgb():
    # The 1x1 convolution first: tract runs it as a matrix product, which reads the input in
    # any layout; placed after the others it makes tract lay them out NHWC.
    pixels, x = rescaled_input((12, 10, 3))
    x = conv(8, 1, padding="valid", activation="relu", name="conv1x1")(x)
    x = conv(8, 5, padding="same", activation="relu", name="conv5x5")(x)
    x = conv(4, 3, padding="valid", activation="relu", name="conv3x3_valid")(x)  # 10x8x4
    x = layers.MaxPooling2D(3, name="pool3x3")(x)  # 3x2x4, a row and 2 columns dropped
    return keras.Model(pixels, head(x), name="rewrites_k5_rgb")


def build_even_kernels():
    pixels, x = rescaled_input((9, 7, 2))
    x = conv(8, (4, 2), padding="same", name="conv4x2_linear")(x)
    x = conv(4, (2, 3), padding="same", activation="relu", name="conv2x3")(x)
    x = layers.MaxPooling2D(2, name="pool2x2")(x)  # 4x3x4
    return keras.Model(pixels, head(x), name="rewrites_even_kernels")


def build_stride2():
    pixels, x = rescaled_input((16, 16, 1))
    x = conv(8, 3, strides=2, padding="same", activation="relu", name="conv_stride2")(x)
    x = conv(8, 3, padding="valid", activation="relu", name="conv_valid")(x)  # 6x6x8
    x = layers.MaxPooling2D(3, strides=2, name="pool3_stride2")(x)  # 2x2x8
    return keras.Model(pixels, head(x), name="rewrites_stride2")


def build_grouped_dilated():
    pixels, x = rescaled_input((11, 11, 4))
    x = layers.DepthwiseConv2D(3, padding="same", activation="relu",
                               bias_initializer=bias(), name="depthwise")(x)
    x = conv(8, 3, dilation_rate=2, padding="valid", activation="relu",
             name="conv_dilated")(x)  # 7x7x8
    x = layers.MaxPooling2D(2, padding="same", name="pool_padded")(x)  # 4x4x8
    return keras.Model(pixels, head(x), name="rewrites_grouped_dilated")


def build_wide_rows():
    pixels, x = rescaled_input((3, 130, 1))
    x = conv(4, 3, padding="same", activation="relu", name="conv_wide")(x)
    x = layers.MaxPooling2D((1, 2), name="pool1x2")(x)  # 3x65x4
    return keras.Model(pixels, head(x), name="rewrites_wide_rows")


def build_nhwc_layout():
    # tract runs the 1x1 convolution as a matrix product that reads channels last, and then
    # keeps the 3x3 convolution before it channels last too, to save a transposition.
    pixels, x = rescaled_input((8, 8, 2))
    x = conv(8, 3, padding="same", activation="relu", name="conv3x3")(x)
    x = conv(4, 1, padding="valid", activation="relu", name="conv1x1")(x)
    x = layers.MaxPooling2D(2, name="pool2x2")(x)  # 4x4x4
    return keras.Model(pixels, head(x), name="rewrites_nhwc_layout")


MODELS = {
    "rewrites_k5_rgb": build_k5_rgb,
    "rewrites_even_kernels": build_even_kernels,
    "rewrites_stride2": build_stride2,
    "rewrites_grouped_dilated": build_grouped_dilated,
    "rewrites_wide_rows": build_wide_rows,
    "rewrites_nhwc_layout": build_nhwc_layout,
}


def make(name, build, out_dir, work_dir):
    reset_seed()
    model = build()
    row_shape = tuple(model.input_shape[1:])
    rng = np.random.default_rng(make_models.SEED)
    pixels = rng.integers(0, 16, size=(N_REFERENCE_ROWS,) + row_shape).astype(np.float32)
    onnx_path = export_onnx(model, name, ["pixels"], OUTPUT, out_dir, work_dir)
    desc = describe_onnx(onnx_path)
    check_onnx_io(desc, [("pixels", row_shape)], OUTPUT, [OUTPUT_WIDTH])
    want = tf_predict(model, pixels)
    write_reference(out_dir, name, {"pixels": pixels}, OUTPUT, want)
    diff = float(np.max(np.abs(run_ort(onnx_path, {"pixels": pixels}) - want)))
    assert diff <= 1e-5, f"{name}: onnxruntime differs from TF by {diff}"
    print(f"{name}: {desc['bytes']} bytes, ops {desc['ops']}, onnxruntime vs TF {diff:.2e}",
          flush=True)


def main():
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rewrites")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=here, help="output directory (default: models/rewrites)")
    ap.add_argument("--only", default=None, choices=sorted(MODELS), help="build one model")
    args = ap.parse_args()
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    tf.config.experimental.enable_op_determinism()
    with tempfile.TemporaryDirectory(prefix="streamtract-rewrite-models-") as work_dir:
        for name, build in MODELS.items():
            if args.only in (None, name):
                make(name, build, out_dir, work_dir)


if __name__ == "__main__":
    main()
