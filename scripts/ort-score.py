#!/usr/bin/env python3
"""Scores rows with onnxruntime: the independent runtime the tests hold our models against.

Usage: ort-score.py MODEL.onnx ROWS.csv
  ROWS.csv: one row of float features per line, comma separated, no label, no header.
Prints a JSON object: {"input": NAME, "output": NAME, "rows": [[...], ...]} with the first
output of the model for every row, in order.
"""
import json
import sys

import numpy as np
import onnxruntime as ort


def main():
    model, rows_path = sys.argv[1], sys.argv[2]
    rows = np.loadtxt(rows_path, delimiter=",", dtype=np.float32, ndmin=2)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    out = session.get_outputs()[0]
    # Image models take [N, H, W, C]: the rows are those values, row-major.
    rows = rows.reshape([-1] + [d for d in inp.shape[1:]])
    result = session.run([out.name], {inp.name: rows})[0]
    json.dump({"input": inp.name, "output": out.name, "rows": result.tolist()}, sys.stdout)


if __name__ == "__main__":
    main()
