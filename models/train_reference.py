#!/usr/bin/env python3
"""Keras reference figures for streamtract's Rust trainer.

For each dataset CSV in ../data (relative to this file) this script trains a
small fixed Keras MLP with seeds 1, 2 and 3 and writes the test figures to
train_reference.json next to this file. The Rust trainer is compared against
these numbers (test accuracy within 2 points, regression test MSE within 10%).

Data and split
  The CSVs have no header; the FIRST column is the label (class index, or the
  raw regression target for diabetes), the rest are the features as written.
  Row i (0-based, file order) is TEST if i % 4 == 0, else TRAIN; both splits
  keep file order. Features are fed to Keras as float32.

Recipe (same for every dataset unless noted)
  Input(F) -> Normalization(axis=-1), adapted on the TRAIN features only
  -> Dense(h, relu) for each hidden size -> output layer.
    digits         F=64  hidden [64, 32]  Dense(10, softmax)  sparse CE  20 epochs
    breast_cancer  F=30  hidden [16, 8]   Dense(2, softmax)   sparse CE  30 epochs
    wine           F=13  hidden [16]      Dense(3, softmax)   sparse CE  60 epochs
    diabetes       F=10  hidden [32, 16]  Dense(1, linear)    mse (+mae) 200 epochs
    digits_sgd     as digits, but SGD(learning_rate=0.01, momentum=0.9)
    digits_cnn     rows as 8x8x1 images, Normalization per position, Conv2D(16,3,same,relu),
                   Conv2D(32,3,same,relu), MaxPooling2D(2), Flatten, hidden [32], 10 epochs
  Optimizer Adam(learning_rate=1e-3) (Keras defaults otherwise), batch_size 32,
  shuffle=True, no validation, Keras default initialisers (Glorot uniform
  kernels, zero biases). keras.utils.set_random_seed(seed) right before each
  model is built; TF_DETERMINISTIC_OPS=1, TF_ENABLE_ONEDNN_OPTS=0.

Recorded per dataset and seed: test accuracy (classification) or test MSE and
MAE (regression, computed in float64 from the model's float32 outputs on the whole
test split), the final train loss
(Keras's reported loss for the last epoch, i.e. the mean over that epoch's
batches while the weights were still moving), train/test row counts; plus the
mean over the 3 seeds. For seed 1 it also times model.fit on the in-memory
arrays: samples/s = train rows * epochs / fit seconds (this includes Keras's
one-off graph tracing), and, separately, the same rate over epochs 2..N only.

Package versions that produced the committed train_reference.json (Python 3.11,
2 CPU cores):
  tensorflow-cpu 2.16.2, keras 3.15.1, numpy 1.26.4, scikit-learn 1.9.1
  (onnx 1.16.2 and onnxruntime 1.32.0 sit in the same venv but are not used here)

How to run, in a virtualenv OUTSIDE the repository:

    python3 -m venv target/tfenv
    target/tfenv/bin/pip install "tensorflow-cpu==2.16.2" "onnx==1.16.2" scikit-learn "numpy<2"
    target/tfenv/bin/python models/train_reference.py            # writes models/train_reference.json
    target/tfenv/bin/python models/train_reference.py --out X.json

It takes a few minutes on 2 cores. Re-runs on the same machine and library
versions give the same figures; another CPU or version may differ slightly.
"""

import argparse
import json
import os
import platform
import time

os.environ["TF_DETERMINISTIC_OPS"] = "1"
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import sklearn  # noqa: E402
import tensorflow as tf  # noqa: E402

keras = tf.keras

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(HERE, "..", "data")

SEEDS = [1, 2, 3]
BATCH_SIZE = 32
ADAM_LR = 1e-3
SGD_LR = 0.01
SGD_MOMENTUM = 0.9
MACHINE_NOTE = "2 cores"

# name -> (csv file, task, number of features, hidden sizes, outputs, epochs, optimizer)
DATASETS = {
    "digits": ("digits.csv", "classification", 64, [64, 32], 10, 20, "adam"),
    "breast_cancer": ("breast_cancer.csv", "classification", 30, [16, 8], 2, 30, "adam"),
    "wine": ("wine.csv", "classification", 13, [16], 3, 60, "adam"),
    "diabetes": ("diabetes.csv", "regression", 10, [32, 16], 1, 200, "adam"),
    "digits_sgd": ("digits.csv", "classification", 64, [64, 32], 10, 20, "sgd"),
    # The repo's digits CNN layout on 8x8x1 images: Conv2D(16,3,same,relu),
    # Conv2D(32,3,same,relu), MaxPooling2D(2), Flatten, then the hidden Dense layers.
    "digits_cnn": ("digits.csv", "classification", 64, [32], 10, 10, "adam"),
}
# Datasets trained as images: name -> (row shape, conv blocks (filters, kernel) or ("pool", size)).
IMAGES = {"digits_cnn": ((8, 8, 1), [(16, 3), (32, 3), ("pool", 2)])}


def load_split(csv_name, n_features):
    raw = np.loadtxt(os.path.join(DATA_DIR, csv_name), delimiter=",", dtype=np.float64, ndmin=2)
    assert raw.shape[1] == n_features + 1, (csv_name, raw.shape)
    idx = np.arange(raw.shape[0])
    test = idx % 4 == 0
    y, x = raw[:, 0], raw[:, 1:].astype(np.float32)
    return x[~test], y[~test], x[test], y[test]


def make_optimizer(kind):
    if kind == "adam":
        return keras.optimizers.Adam(learning_rate=ADAM_LR)
    return keras.optimizers.SGD(learning_rate=SGD_LR, momentum=SGD_MOMENTUM)


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.starts, self.ends = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.starts.append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(time.perf_counter())


def run_one(name, seed):
    csv_name, task, n_features, hidden, n_out, epochs, opt = DATASETS[name]
    x_tr, y_tr, x_te, y_te = load_split(csv_name, n_features)
    if task == "classification":
        y_tr_k = y_tr.astype(np.int64)
        y_te_k = y_te.astype(np.int64)
    else:
        y_tr_k = y_tr.astype(np.float32)
        y_te_k = y_te

    keras.utils.set_random_seed(seed)
    image = IMAGES.get(name)
    if image:
        shape, blocks = image
        x_tr = x_tr.reshape((-1,) + shape)
        x_te = x_te.reshape((-1,) + shape)
        inp = keras.Input(shape=shape, name="features")
        # Per position, as streamtract standardises each input value.
        norm = keras.layers.Normalization(axis=(1, 2, 3), name="normalize")
    else:
        inp = keras.Input(shape=(n_features,), name="features")
        norm = keras.layers.Normalization(axis=-1, name="normalize")
    norm.adapt(x_tr)
    h = norm(inp)
    if image:
        for i, block in enumerate(blocks):
            if block[0] == "pool":
                h = keras.layers.MaxPooling2D(block[1], name=f"pool{i}")(h)
            else:
                h = keras.layers.Conv2D(block[0], block[1], padding="same", activation="relu",
                                        name=f"conv{i}")(h)
        h = keras.layers.Flatten(name="flatten")(h)
    for i, units in enumerate(hidden):
        h = keras.layers.Dense(units, activation="relu", name=f"hidden{i + 1}")(h)
    if task == "classification":
        out = keras.layers.Dense(n_out, activation="softmax", name="probabilities")(h)
        model = keras.Model(inp, out)
        model.compile(optimizer=make_optimizer(opt), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    else:
        out = keras.layers.Dense(1, activation="linear", name="prediction")(h)
        model = keras.Model(inp, out)
        model.compile(optimizer=make_optimizer(opt), loss="mse", metrics=["mae"])

    timer = EpochTimer()
    t0 = time.perf_counter()
    hist = model.fit(x_tr, y_tr_k, batch_size=BATCH_SIZE, epochs=epochs, shuffle=True,
                     verbose=0, callbacks=[timer])
    fit_s = time.perf_counter() - t0

    pred = model(x_te, training=False).numpy().astype(np.float64)
    res = {
        "seed": seed,
        "train_rows": int(x_tr.shape[0]),
        "test_rows": int(x_te.shape[0]),
        "final_train_loss": float(hist.history["loss"][-1]),
    }
    if task == "classification":
        res["test_accuracy"] = float(np.mean(np.argmax(pred, axis=1) == y_te_k))
    else:
        err = pred[:, 0] - y_te_k
        res["test_mse"] = float(np.mean(err ** 2))
        res["test_mae"] = float(np.mean(np.abs(err)))
    warm_s = timer.ends[-1] - timer.starts[1] if epochs > 1 else None
    timing = {
        "fit_seconds": fit_s,
        "samples_per_second": x_tr.shape[0] * epochs / fit_s,
        "warm_epochs_seconds": warm_s,
        "warm_samples_per_second": (x_tr.shape[0] * (epochs - 1) / warm_s) if warm_s else None,
    }
    return res, timing


def recipe_block():
    r = {
        "data": "CSV in data/, no header, column 0 = label (class index) or raw target "
                "(diabetes), columns 1.. = features as written, cast to float32",
        "split": "0-based row index i in file order: TEST if i % 4 == 0 else TRAIN; "
                 "both keep file order",
        "seeds": SEEDS,
        "seeding": "keras.utils.set_random_seed(seed) before building each model; "
                   "TF_DETERMINISTIC_OPS=1, TF_ENABLE_ONEDNN_OPTS=0",
        "model": "Input(F) -> Normalization(axis=-1) adapted on TRAIN features only -> "
                 "Dense(h, relu) per hidden size -> output Dense; Keras default init "
                 "(glorot_uniform kernels, zero biases)",
        "batch_size": BATCH_SIZE,
        "shuffle": True,
        "validation": None,
        "final_train_loss": "Keras history loss of the last epoch (mean over its batches)",
        "datasets": {},
    }
    for name, (csv_name, task, f, hidden, n_out, epochs, opt) in DATASETS.items():
        d = {
            "csv": f"data/{csv_name}",
            "task": task,
            "features": f,
            "hidden": hidden,
            "hidden_activation": "relu",
            "epochs": epochs,
        }
        if task == "classification":
            d.update(output=f"Dense({n_out}, softmax)", loss="sparse_categorical_crossentropy",
                     metrics=["accuracy"])
        else:
            d.update(output="Dense(1, linear)", loss="mse", metrics=["mae"])
        if opt == "adam":
            d["optimizer"] = {"name": "Adam", "learning_rate": ADAM_LR,
                              "other": "Keras defaults (beta_1 0.9, beta_2 0.999, epsilon 1e-7)"}
        else:
            d["optimizer"] = {"name": "SGD", "learning_rate": SGD_LR, "momentum": SGD_MOMENTUM,
                              "nesterov": False}
        r["datasets"][name] = d
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "train_reference.json"))
    args = ap.parse_args()

    out = {
        "versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "sklearn": sklearn.__version__,
            "python": platform.python_version(),
        },
        "recipe": recipe_block(),
        "results": {},
        "timing": {
            "what": "Keras model.fit on in-memory numpy arrays, seed 1, verbose=0; "
                    "samples_per_second = train_rows * epochs / fit_seconds (includes "
                    "graph tracing); warm_* = epochs 2..N only",
            "machine": MACHINE_NOTE,
            "datasets": {},
        },
    }
    for name in DATASETS:
        task = DATASETS[name][1]
        runs = []
        for seed in SEEDS:
            res, timing = run_one(name, seed)
            runs.append(res)
            if seed == 1:
                out["timing"]["datasets"][name] = {"train_rows": res["train_rows"],
                                                   "epochs": DATASETS[name][5], **timing}
            print(name, json.dumps(res), flush=True)
        keys = ["test_accuracy"] if task == "classification" else ["test_mse", "test_mae"]
        mean = {k: float(np.mean([r[k] for r in runs])) for k in keys + ["final_train_loss"]}
        out["results"][name] = {"per_seed": runs, "mean": mean}
        print(name, "mean", json.dumps(mean), "timing",
              json.dumps(out["timing"]["datasets"][name]), flush=True)

    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
