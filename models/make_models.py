#!/usr/bin/env python3
"""Build, train and export the streamtract test/demo models.

Trains four small Keras models on scikit-learn's bundled datasets, exports
each one as a TensorFlow SavedModel, converts that with tf2onnx's command line
tool to ONNX (opset 13) and writes, next to each model:

  NAME.onnx            the model
  NAME.reference.json  TensorFlow's own outputs (the Keras model run in TF)
                       for 32 rows of the test split
  NAME.tf_classes.txt  TensorFlow's predicted class for every dataset row,
                       in dataset order

It also writes the sample data in ../data/ and a metrics.json summary.

Usage (see README.md for the exact package versions):

    python make_models.py            # writes into the directory of this file
    python make_models.py --out DIR  # models into DIR, data into DIR/../data
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

# Reproducibility: deterministic kernels, no oneDNN re-ordering of float sums.
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_digits, load_wine  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

keras = tf.keras

SEED = 42
N_REFERENCE_ROWS = 32
BATCH_DIM = "N"


def reset_seed():
    keras.utils.set_random_seed(SEED)


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


def build_digits_mlp():
    pixels = keras.Input(shape=(64,), name="pixels")
    x = keras.layers.Rescaling(1.0 / 16.0, name="rescale")(pixels)
    x = keras.layers.Dense(64, activation="relu", name="hidden1")(x)
    x = keras.layers.Dense(32, activation="relu", name="hidden2")(x)
    out = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(pixels, out, name="digits_mlp")


def build_digits_cnn():
    pixels = keras.Input(shape=(8, 8, 1), name="pixels")
    x = keras.layers.Rescaling(1.0 / 16.0, name="rescale")(pixels)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)  # 4x4x32
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(32, activation="relu", name="hidden")(x)
    out = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(pixels, out, name="digits_cnn")


def build_digits_embedding():
    """Each pixel intensity (an integer 0..16) is a token looked up in an embedding table.
    Intensities outside 0..16 make the lookup fail, in TensorFlow and in tract alike: the
    model that tests "the model itself rejects a well-formed record"."""
    pixels = keras.Input(shape=(64,), name="pixels")
    x = keras.layers.Embedding(17, 4, name="intensity_embedding")(pixels)  # N x 64 x 4
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(32, activation="relu", name="hidden")(x)
    out = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(pixels, out, name="digits_embedding")


def build_breast_cancer(x_train):
    norm = keras.layers.Normalization(axis=-1, name="normalize")
    norm.adapt(x_train)
    features = keras.Input(shape=(30,), name="features")
    x = norm(features)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    return keras.Model(features, out, name="breast_cancer")


def build_wine(chem_train, color_train):
    norm_chem = keras.layers.Normalization(axis=-1, name="normalize_chemistry")
    norm_chem.adapt(chem_train)
    norm_color = keras.layers.Normalization(axis=-1, name="normalize_color")
    norm_color.adapt(color_train)
    chemistry = keras.Input(shape=(9,), name="chemistry")
    color = keras.Input(shape=(4,), name="color")
    a = keras.layers.Dense(8, activation="relu", name="chemistry_dense")(norm_chem(chemistry))
    b = keras.layers.Dense(4, activation="relu", name="color_dense")(norm_color(color))
    x = keras.layers.Concatenate(name="concat")([a, b])
    x = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    out = keras.layers.Dense(3, activation="softmax", name="probabilities")(x)
    return keras.Model([chemistry, color], out, name="wine_two_inputs")


# --------------------------------------------------------------------------
# Export and checks
# --------------------------------------------------------------------------


def export_onnx(model, name, input_names, output_name, out_dir, work_dir):
    """SavedModel -> tf2onnx CLI -> ONNX. Returns the path of the .onnx file.

    input_names must be given in the order tf2onnx lists the SavedModel's
    signature inputs (checked afterwards by feeding distinguishable data).
    """
    saved = os.path.join(work_dir, name + "_savedmodel")
    model.export(saved, verbose=False)
    onnx_path = os.path.join(out_dir, name + ".onnx")
    cmd = [
        sys.executable, "-m", "tf2onnx.convert",
        "--saved-model", saved,
        "--output", onnx_path,
        "--opset", "13",
        "--rename-inputs", ",".join(input_names),
        "--rename-outputs", output_name,
    ]
    print("+", " ".join(cmd), flush=True)
    # tf2onnx's generated node names depend on set iteration order: fix the
    # hash seed so that re-running gives byte-identical .onnx files.
    env = dict(os.environ, PYTHONHASHSEED="0")
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    tidy_onnx(onnx_path)
    return onnx_path


def tidy_onnx(onnx_path):
    """Cosmetic fixes to tf2onnx's output, no change to the computation:
    - tf2onnx names the dynamic batch dim 'unk__<n>', a different symbol per
      tensor; give every graph input/output the same symbol BATCH_DIM so the
      batch dimensions of the two wine inputs and the output are one symbol;
    - drop opset imports of domains no node uses (tf2onnx always adds
      ai.onnx.ml);
    - replace the graph doc string (it holds the temporary SavedModel path)
      by a fixed one, so that re-running gives byte-identical files."""
    m = onnx.load(onnx_path)
    m.graph.doc_string = "Keras SavedModel converted by tf2onnx; see make_models.py"
    used = {n.domain or "" for n in m.graph.node}
    keep = [o for o in m.opset_import if (o.domain or "") in used or (o.domain or "") == ""]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    for vi in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].dim_param.startswith("unk__"):
            dims[0].dim_param = BATCH_DIM
    onnx.checker.check_model(m)
    onnx.save(m, onnx_path)


def describe_onnx(onnx_path):
    m = onnx.load(onnx_path)
    onnx.checker.check_model(m)
    onnx.shape_inference.infer_shapes(m, strict_mode=True)

    def info(vi):
        t = vi.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        return {
            "name": vi.name,
            "dtype": onnx.TensorProto.DataType.Name(t.elem_type),
            "shape": dims,
        }

    return {
        "inputs": [info(v) for v in m.graph.input],
        "outputs": [info(v) for v in m.graph.output],
        "opset": [(o.domain or "ai.onnx", o.version) for o in m.opset_import],
        "ops": sorted({n.op_type for n in m.graph.node}),
        "initializers": len(m.graph.initializer),
        "bytes": os.path.getsize(onnx_path),
    }


def check_onnx_io(desc, expected_inputs, output_name, output_tail):
    got = [(i["name"], i["dtype"], i["shape"]) for i in desc["inputs"]]
    want = [(n, "FLOAT", [BATCH_DIM] + list(tail)) for n, tail in expected_inputs]
    assert got == want, f"ONNX inputs {got} != expected {want}"
    outs = [(o["name"], o["dtype"], o["shape"]) for o in desc["outputs"]]
    want_out = [(output_name, "FLOAT", [BATCH_DIM] + list(output_tail))]
    assert outs == want_out, f"ONNX outputs {outs} != expected {want_out}"


def run_ort(onnx_path, feeds):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def tf_predict(model, x):
    return np.asarray(model(x, training=False), dtype=np.float32)


def tensor_json(a):
    a = np.asarray(a, dtype=np.float32)
    return {"shape": list(a.shape), "data": [float(v) for v in a.reshape(-1)]}


def write_reference(out_dir, name, inputs, output_name, output):
    doc = {
        "model": name + ".onnx",
        "inputs": {k: tensor_json(v) for k, v in inputs.items()},
        "outputs": {output_name: tensor_json(output)},
    }
    with open(os.path.join(out_dir, name + ".reference.json"), "w") as f:
        json.dump(doc, f)
        f.write("\n")


def write_classes(out_dir, name, classes):
    with open(os.path.join(out_dir, name + ".tf_classes.txt"), "w") as f:
        for c in classes:
            f.write(f"{int(c)}\n")


def train(model, x, y, loss, epochs, batch_size):
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)


def finish(model, name, out_dir, work_dir, inputs_all, y_all, test_idx,
           output_name, output_tail, to_classes):
    """Export, verify and write references for one trained model.

    inputs_all: ordered dict input name -> float32 array over the whole dataset.
    """
    input_names = list(inputs_all)
    tf_in = lambda idx: [inputs_all[n][idx] for n in input_names]  # noqa: E731
    single = len(input_names) == 1

    def predict(idx):
        xs = tf_in(idx)
        return tf_predict(model, xs[0] if single else xs)

    all_idx = np.arange(len(y_all))
    probs_all = predict(all_idx)
    classes_all = to_classes(probs_all)
    test_acc = float(np.mean(classes_all[test_idx] == y_all[test_idx]))
    train_mask = np.ones(len(y_all), bool)
    train_mask[test_idx] = False
    train_acc = float(np.mean(classes_all[train_mask] == y_all[train_mask]))

    onnx_path = export_onnx(model, name, input_names, output_name, out_dir, work_dir)
    desc = describe_onnx(onnx_path)
    check_onnx_io(desc, [(n, inputs_all[n].shape[1:]) for n in input_names],
                  output_name, output_tail)

    ref_idx = test_idx[:N_REFERENCE_ROWS]
    ref_inputs = {n: inputs_all[n][ref_idx] for n in input_names}
    ref_out = predict(ref_idx)
    write_reference(out_dir, name, ref_inputs, output_name, ref_out)
    write_classes(out_dir, name, classes_all)

    ort_ref = run_ort(onnx_path, ref_inputs)
    diff_ref = float(np.max(np.abs(ort_ref - ref_out)))
    ort_all = run_ort(onnx_path, {n: inputs_all[n] for n in input_names})
    diff_all = float(np.max(np.abs(ort_all - probs_all)))
    class_mismatch = int(np.sum(to_classes(ort_all) != classes_all))
    assert diff_ref <= 1e-5, f"{name}: onnxruntime differs from TF by {diff_ref}"

    result = {
        "onnx": desc,
        "params": int(model.count_params()),
        "train_rows": int(train_mask.sum()),
        "test_rows": int(len(test_idx)),
        "train_accuracy": train_acc,
        "test_accuracy": test_acc,
        "ort_max_abs_diff_reference_rows": diff_ref,
        "ort_max_abs_diff_all_rows": diff_all,
        "ort_class_mismatches_all_rows": class_mismatch,
    }
    print(name, json.dumps(result, indent=1), flush=True)
    return result


def split(y, test_size):
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_size, stratify=y, random_state=SEED)
    return np.sort(tr), np.sort(te)


def argmax_classes(p):
    return np.argmax(p, axis=1)


def threshold_classes(p):
    return (p[:, 0] >= 0.5).astype(np.int64)


# --------------------------------------------------------------------------
# Sample data
# --------------------------------------------------------------------------


def write_data(data_dir):
    os.makedirs(data_dir, exist_ok=True)
    d = load_digits()
    with open(os.path.join(data_dir, "digits.csv"), "w") as f:
        for label, row in zip(d.target, d.data):
            assert np.all(row == np.round(row))
            f.write(",".join([str(int(label))] + [str(int(v)) for v in row]) + "\n")
    for fname, ds in (("breast_cancer.csv", load_breast_cancer()), ("wine.csv", load_wine())):
        with open(os.path.join(data_dir, fname), "w") as f:
            for label, row in zip(ds.target, ds.data):
                f.write(",".join([str(int(label))] + [repr(float(v)) for v in row]) + "\n")


# --------------------------------------------------------------------------


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=here, help="models directory (default: this script's)")
    ap.add_argument("--data", default=None, help="data directory (default: OUT/../data)")
    ap.add_argument("--only", default=None,
                    help="build only this model (e.g. digits_embedding); metrics.json is "
                         "updated for it and data files are left alone")
    args = ap.parse_args()
    out_dir = os.path.abspath(args.out)
    data_dir = os.path.abspath(args.data or os.path.join(out_dir, "..", "data"))
    os.makedirs(out_dir, exist_ok=True)
    tf.config.experimental.enable_op_determinism()

    results = {}
    want = lambda name: args.only in (None, name)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="streamtract-models-") as work_dir:
        # ---- digits (shared split) ----
        digits = load_digits()
        dx = digits.data.astype(np.float32)  # 0..16
        dy = digits.target.astype(np.int64)
        tr, te = split(dy, 0.2)

        if want("digits_mlp"):
            reset_seed()
            m = build_digits_mlp()
            train(m, dx[tr], dy[tr], "sparse_categorical_crossentropy", epochs=100,
                  batch_size=32)
            results["digits_mlp"] = finish(m, "digits_mlp", out_dir, work_dir, {"pixels": dx},
                                           dy, te, "probabilities", [10], argmax_classes)

        if want("digits_cnn"):
            reset_seed()
            dimg = dx.reshape(-1, 8, 8, 1)
            m = build_digits_cnn()
            train(m, dimg[tr], dy[tr], "sparse_categorical_crossentropy", epochs=40,
                  batch_size=32)
            results["digits_cnn"] = finish(m, "digits_cnn", out_dir, work_dir,
                                           {"pixels": dimg}, dy, te, "probabilities", [10],
                                           argmax_classes)

        if want("digits_embedding"):
            reset_seed()
            m = build_digits_embedding()
            train(m, dx[tr], dy[tr], "sparse_categorical_crossentropy", epochs=60,
                  batch_size=32)
            results["digits_embedding"] = finish(m, "digits_embedding", out_dir, work_dir,
                                                 {"pixels": dx}, dy, te, "probabilities", [10],
                                                 argmax_classes)
            results["digits_embedding"]["out_of_range_check"] = check_embedding_rejects(
                m, dx[te[:4]])

        # ---- breast cancer ----
        if want("breast_cancer"):
            bc = load_breast_cancer()
            bx = bc.data.astype(np.float32)
            by = bc.target.astype(np.int64)
            tr, te = split(by, 0.2)
            reset_seed()
            m = build_breast_cancer(bx[tr])
            train(m, bx[tr], by[tr].astype(np.float32), "binary_crossentropy", epochs=100,
                  batch_size=32)
            results["breast_cancer"] = finish(m, "breast_cancer", out_dir, work_dir,
                                              {"features": bx}, by, te, "probability", [1],
                                              threshold_classes)

        # ---- wine, two inputs ----
        if want("wine_two_inputs"):
            wine = load_wine()
            wx = wine.data.astype(np.float32)
            wy = wine.target.astype(np.int64)
            tr, te = split(wy, 0.25)
            chem, color = wx[:, :9], wx[:, 9:]
            reset_seed()
            m = build_wine(chem[tr], color[tr])
            train(m, [chem[tr], color[tr]], wy[tr], "sparse_categorical_crossentropy",
                  epochs=150, batch_size=16)
            results["wine_two_inputs"] = finish(m, "wine_two_inputs", out_dir, work_dir,
                                                {"chemistry": chem, "color": color}, wy, te,
                                                "probabilities", [3], argmax_classes)
            results["wine_two_inputs"]["input_order_check"] = check_wine_input_order(
                m, os.path.join(out_dir, "wine_two_inputs.onnx"), chem, color)

    if args.only is not None:
        # Keep the other models' entries; data files are unchanged.
        with open(os.path.join(out_dir, "metrics.json")) as f:
            previous = json.load(f)["models"]
        results = {**previous, **results}
    else:
        write_data(data_dir)

    versions = {}
    import keras as _k
    import onnxruntime
    import sklearn
    import tf2onnx
    for mod in (tf, _k, tf2onnx, onnx, onnxruntime, np, sklearn):
        versions[mod.__name__] = mod.__version__
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump({"versions": versions, "models": results}, f, indent=1)
        f.write("\n")


def check_embedding_rejects(model, rows):
    """TensorFlow itself refuses a pixel intensity outside the embedding table (0..16)."""
    bad = np.array(rows, dtype=np.float32)
    bad[0, 5] = 40.0
    try:
        tf_predict(model, bad)
    except tf.errors.InvalidArgumentError as e:
        return {"tensorflow_error": str(e).splitlines()[0][:200]}
    raise AssertionError("TensorFlow accepted an out-of-range intensity")


def check_wine_input_order(model, onnx_path, chem, color):
    """Verify that the ONNX input named 'chemistry' really feeds the chemistry
    branch and 'color' the color branch: run TF and ONNX on mixed rows
    (chemistry of class-0 wines with color of class-2 wines and vice versa) and
    check both that the outputs agree and that changing one input alone moves
    the output a lot (so a swap could not go unnoticed)."""
    c0, c2 = chem[:16], chem[-16:]  # dataset order: first rows class 0, last class 2
    k0, k2 = color[:16], color[-16:]
    diffs, effects = [], []
    for c, k in ((c0, k0), (c0, k2), (c2, k0), (c2, k2)):
        t = tf_predict(model, [c, k])
        o = run_ort(onnx_path, {"chemistry": c, "color": k})
        diffs.append(float(np.max(np.abs(t - o))))
    base = tf_predict(model, [c0, k0])
    effects.append(float(np.max(np.abs(tf_predict(model, [c0, k2]) - base))))
    effects.append(float(np.max(np.abs(tf_predict(model, [c2, k0]) - base))))
    assert max(diffs) <= 1e-5 and min(effects) > 1e-3, (diffs, effects)
    return {"max_abs_diff": max(diffs), "effect_of_changing_only_color": effects[0],
            "effect_of_changing_only_chemistry": effects[1]}


if __name__ == "__main__":
    main()
