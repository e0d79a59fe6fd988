#!/usr/bin/env python3
"""Keras `model.fit` on the digits training rows, for scripts/bench-train.sh.

    keras-fit.py kafka --brokers HOST:PORT --topic T --records N --epochs E [--result F]
    keras-fit.py numpy --csv data/digits.csv [--repeat R] --epochs E [--result F]

Both train the bench recipe: Normalization (adapted on the training features) -> Dense(64, relu)
-> Dense(32, relu) -> Dense(10, softmax), Adam(1e-3), sparse categorical cross-entropy, batch 32,
seed 1, verbose=2 (one line per epoch).

`kafka` is tensorflow-io's documented way to fit on Kafka: the classic
`tensorflow_io.kafka.KafkaDataset(["T:0:0:N-1"], eof=True)` (partition 0, offsets 0..N-1), CSV
lines parsed with tf.strings.split / tf.strings.to_number, `.batch(32)`, `model.fit(ds, epochs=E)`.
Keras 3 makes a new iterator of the dataset every epoch, and every iterator of a KafkaDataset
opens a new consumer at offset 0, so each epoch re-reads the topic (no `.repeat()` needed; the
script checks every epoch's step count). The Normalization layer is adapted on one more pass over the topic.
The librdkafka inside tensorflow-io 0.37.1 is v1.5.0, which cannot parse tansu 0.6.0's
ApiVersions v3 response (it mis-skips the tagged fields tansu writes), so the consumer is
configured with `api.version.request=false` and `broker.version.fallback=0.9.0` (Metadata v0,
Fetch v1); --rdkafka-config replaces that list. `tfio.IODataset.from_kafka` and
`tfio.experimental.streaming.KafkaGroupIODataset` need ListOffsets, whose v0 response from tansu
0.6.0 librdkafka 1.5.0 reads as truncated, so they cannot be used against tansu at all.

`numpy` fits the same rows (0-based row index i % 4 != 0, the CSV's rows repeated --repeat times)
from in-memory arrays (`model.fit(x, y)`, which shuffles each epoch).

Writes a JSON summary (rows, epochs, steps per epoch, final loss and accuracy, phase timings)
to --result and prints it on stdout.
"""

import argparse
import json
import os
import sys
import time

T0 = time.time()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_RDKAFKA = ["api.version.request=false", "broker.version.fallback=0.9.0"]
FEATURES = 64


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=["kafka", "numpy"])
    p.add_argument("--brokers")
    p.add_argument("--topic")
    p.add_argument("--records", type=int, help="records in partition 0 of --topic (offsets 0..N-1)")
    p.add_argument("--rdkafka-config", action="append", default=None,
                   help=f"librdkafka global property K=V (repeatable; default {DEFAULT_RDKAFKA})")
    p.add_argument("--csv", default=os.path.join(os.path.dirname(__file__), "..", "data", "digits.csv"))
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--result")
    a = p.parse_args()
    if a.source == "kafka" and not (a.brokers and a.topic and a.records):
        p.error("kafka needs --brokers, --topic and --records")
    return a


def build_model(keras, norm):
    model = keras.Sequential([
        keras.Input(shape=(FEATURES,)),
        norm,
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def step_counter(keras):
    class Steps(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.per_epoch = []

        def on_epoch_begin(self, epoch, logs=None):
            self.per_epoch.append(0)

        def on_train_batch_end(self, batch, logs=None):
            self.per_epoch[-1] += 1

    return Steps()


def main():
    a = parse_args()
    import tensorflow as tf
    import keras
    info = {"source": a.source, "tensorflow": tf.__version__, "keras": keras.__version__}
    if a.source == "kafka":
        import tensorflow_io as tfio
        import tensorflow_io.kafka as kafka_io
        info["tensorflow_io"] = tfio.__version__
    t_import = time.time()
    keras.utils.set_random_seed(a.seed)
    norm = keras.layers.Normalization(axis=-1)

    if a.source == "kafka":
        config = a.rdkafka_config if a.rdkafka_config is not None else DEFAULT_RDKAFKA
        info["rdkafka_config"] = config
        spec = f"{a.topic}:0:0:{a.records - 1}"

        def parse(line):
            fields = tf.strings.to_number(tf.strings.split(line, ","), out_type=tf.float32)
            x = tf.ensure_shape(fields[1:], [FEATURES])
            y = tf.cast(fields[0], tf.int32)
            return x, y

        def dataset():
            return kafka_io.KafkaDataset([spec], servers=a.brokers, group="keras-fit-bench", eof=True,
                                         config_global=config).map(parse)

        norm.adapt(dataset().map(lambda x, y: x).batch(256))
        t_adapt = time.time()
        train = dataset().batch(a.batch_size)
        rows = a.records
        model = build_model(keras, norm)
        steps = step_counter(keras)
        hist = model.fit(train, epochs=a.epochs, verbose=2, callbacks=[steps])
    else:
        import numpy as np
        data = np.loadtxt(a.csv, delimiter=",", dtype=np.float32)
        data = data[np.arange(len(data)) % 4 != 0]
        data = np.tile(data, (a.repeat, 1))
        x, y = data[:, 1:], data[:, 0].astype(np.int32)
        norm.adapt(x)
        t_adapt = time.time()
        rows = len(x)
        model = build_model(keras, norm)
        steps = step_counter(keras)
        hist = model.fit(x, y, batch_size=a.batch_size, epochs=a.epochs, verbose=2, callbacks=[steps])
    t_fit = time.time()

    expected_steps = -(-rows // a.batch_size)
    info.update({
        "rows": rows, "epochs": a.epochs, "steps_per_epoch": sorted(set(steps.per_epoch)),
        "loss": float(hist.history["loss"][-1]), "accuracy": float(hist.history["accuracy"][-1]),
        "seconds_import": round(t_import - T0, 3), "seconds_adapt": round(t_adapt - t_import, 3),
        "seconds_fit": round(t_fit - t_adapt, 3),
    })
    if steps.per_epoch != [expected_steps] * a.epochs:
        info["warning"] = f"steps per epoch {steps.per_epoch}, expected {expected_steps} in each of {a.epochs}"
    text = json.dumps(info)
    print(text)
    if a.result:
        with open(a.result, "w") as f:
            f.write(text + "\n")
    if "warning" in info:
        print(info["warning"], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
