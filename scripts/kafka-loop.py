#!/usr/bin/env python3
"""The anchors of scripts/bench-throughput.sh: what a user could write instead of streamtract.

    kafka-loop.py ceiling --brokers B --input T --output O --records N
    kafka-loop.py model   --brokers B --input T --output O --records N --model M.onnx [--batch 256]

`ceiling`: librdkafka (confluent-kafka) consuming the input and producing every record's
value to the output at once, no model: what the broker and the client library can move.
`model`: the twenty-line Python loop a user writes with confluent-kafka and onnxruntime:
consume a batch, parse the CSV rows, run the model on the batch, produce one JSON record per
input (the input's key, no headers), flush per batch.

Both read the input from the beginning until N records were read, and print one JSON line:
{"records": N, "seconds": S} (time from the first poll to the last acknowledgement).
"""

import argparse
import json
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition


def consumer(args):
    c = Consumer(
        {
            "bootstrap.servers": args.brokers,
            "group.id": "bench-loop",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    c.assign([TopicPartition(args.input, p, 0) for p in range(args.partitions)])
    return c


def producer(args):
    return Producer({"bootstrap.servers": args.brokers})


def failed(err, _msg):
    if err is not None:
        sys.exit(f"delivery failed: {err}")


def run_ceiling(args):
    c, p = consumer(args), producer(args)
    seen = 0
    started = time.monotonic()
    while seen < args.records:
        for m in c.consume(num_messages=args.batch, timeout=1.0):
            if m.error():
                sys.exit(f"consume failed: {m.error()}")
            p.produce(args.output, value=m.value(), key=m.key(), on_delivery=failed)
            seen += 1
        p.poll(0)
    p.flush(60)
    return seen, time.monotonic() - started


def run_model(args):
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    row_shape = [d for d in feed.shape[1:]]
    c, p = consumer(args), producer(args)
    seen = 0
    started = time.monotonic()
    while seen < args.records:
        batch = c.consume(num_messages=args.batch, timeout=1.0)
        if not batch:
            continue
        rows = []
        for m in batch:
            if m.error():
                sys.exit(f"consume failed: {m.error()}")
            rows.append(np.array(m.value().split(b","), dtype=np.float32))
        x = np.stack(rows).reshape([len(rows)] + row_shape)
        probabilities = session.run(None, {feed.name: x})[0]
        for m, probs in zip(batch, probabilities):
            value = json.dumps(
                {"prediction": int(probs.argmax()), "probabilities": [float(v) for v in probs]}
            )
            p.produce(args.output, value=value.encode(), key=m.key(), on_delivery=failed)
        p.flush(60)
        seen += len(batch)
    return seen, time.monotonic() - started


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["ceiling", "model"])
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--records", type=int, required=True)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--model")
    args = ap.parse_args()
    if args.mode == "model" and not args.model:
        sys.exit("--model is required in model mode")
    seen, seconds = run_ceiling(args) if args.mode == "ceiling" else run_model(args)
    print(json.dumps({"records": seen, "seconds": seconds}))


if __name__ == "__main__":
    main()
