#!/usr/bin/env python3
"""Derive digits_cnn_dynamic.onnx from digits_cnn.onnx (no TensorFlow needed).

Keras' Flatten computes its output shape at run time (tf2onnx writes it as
Shape -> Gather -> Cast -> Slice -> Concat -> Cast -> Reshape), so tract cannot type the
digits CNN with a symbolic batch and streamtract compiles it per batch size. Exporters that
fold shapes write the same Flatten as a Reshape to the constant shape [-1, 512]. This script
makes that variant: the same weights and the same computation, so TensorFlow's reference
outputs for digits_cnn hold for it too; only the shape computation differs. tract types it
with a symbolic batch, which is what the tests of that path need.

    /tmp/tfenv/bin/python models/make_dynamic_cnn.py   # needs onnx, numpy, onnxruntime

It checks the result with the onnx checker and with onnxruntime against
digits_cnn.reference.json (max abs diff <= 1e-5).
"""

import json
import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
FLATTEN = "StatefulPartitionedCall/digits_cnn_1/flatten_1/Reshape"


def main():
    model = onnx.load(os.path.join(HERE, "digits_cnn.onnx"))
    graph = model.graph
    reshape = next(n for n in graph.node if n.name == FLATTEN)
    shape = numpy_helper.from_array(np.array([-1, 512], dtype=np.int64), "flatten_shape")
    graph.initializer.append(shape)
    reshape.input[1] = "flatten_shape"

    # Drop what no longer feeds anything: the shape computation and its constants.
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    graph.doc_string = (
        "digits_cnn.onnx with Flatten as a Reshape to the constant shape [-1, 512]; "
        "see make_dynamic_cnn.py"
    )
    onnx.checker.check_model(model, full_check=True)
    out = os.path.join(HERE, "digits_cnn_dynamic.onnx")
    onnx.save(model, out)

    import onnxruntime as ort

    with open(os.path.join(HERE, "digits_cnn.reference.json")) as f:
        ref = json.load(f)
    feeds = {
        name: np.array(t["data"], dtype=np.float32).reshape(t["shape"])
        for name, t in ref["inputs"].items()
    }
    got = ort.InferenceSession(out).run(None, feeds)[0]
    want = np.array(ref["outputs"]["probabilities"]["data"], dtype=np.float32)
    diff = float(np.abs(got.reshape(-1) - want).max())
    assert diff <= 1e-5, f"onnxruntime differs from TensorFlow's reference by {diff}"
    removed = len(onnx.load(os.path.join(HERE, "digits_cnn.onnx")).graph.node) - len(graph.node)
    print(f"wrote {out}: {removed} nodes fewer, max abs diff to TF reference {diff:.2e}")


if __name__ == "__main__":
    main()
