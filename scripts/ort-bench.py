#!/usr/bin/env python3
"""onnxruntime's time per batch for one of our models: the other side of the figures in
docs/performance.md "Batch inference". Not part of the tests; needs a virtualenv with onnxruntime and
numpy (models/README.md has one):

    /tmp/tfenv/bin/python scripts/ort-bench.py models/digits_cnn.onnx [BATCH] [THREADS]

Inputs are random values of each input's shape with BATCH rows (256 by default), on THREADS
intra-op threads (1 by default, as `cargo bench --bench inference` runs tract).
"""
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    path = sys.argv[1]
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(42)
    feeds = {
        i.name: (rng.random([batch] + list(i.shape[1:])) * 16).astype(np.float32)
        for i in session.get_inputs()
    }
    for _ in range(50):
        session.run(None, feeds)
    runs = 500
    started = time.perf_counter()
    for _ in range(runs):
        session.run(None, feeds)
    per_batch = (time.perf_counter() - started) / runs
    print(f"onnxruntime {ort.__version__}, {path}, batch {batch}, {threads} thread(s): "
          f"{per_batch * 1e6:.1f} µs per batch ({batch / per_batch:,.0f} rows/s)")


if __name__ == "__main__":
    main()
