#!/usr/bin/env python3
"""Independent Kafka test client for streamtract's integration tests and demos.

Uses only the confluent-kafka package (librdkafka), so what it writes and reads is checked by a
client we did not write. Run it with the interpreter of the virtualenv made by
scripts/setup-test-env.sh (target/pyenv/bin/python).

Every subcommand takes --brokers HOST:PORT. Keys, values and header values travel as base64 in
JSON lines (null for a missing key/value/header value). Errors go to stderr with a non-zero exit.
See scripts/README.md for the input and output formats.
"""

import argparse
import base64
import json
import sys
import time
import uuid

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic


def die(msg, code=1):
    print(f"kclient: {msg}", file=sys.stderr)
    sys.exit(code)


def b64(data):
    return None if data is None else base64.b64encode(data).decode("ascii")


def unb64(text, what):
    if text is None:
        return None
    if not isinstance(text, str):
        die(f"{what} must be a base64 string or null, got {text!r}")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as e:
        die(f"{what} is not valid base64: {e}")


def base_config(args):
    return {
        "bootstrap.servers": args.brokers,
        # tansu listens on IPv4 only; never try an IPv6 resolution of "localhost".
        "broker.address.family": "v4",
        "client.id": "kclient",
    }


def topic_partitions(client, topic, timeout):
    """Number of partitions of topic per broker metadata, or None if the topic does not exist."""
    md = client.list_topics(topic=topic, timeout=timeout)
    t = md.topics.get(topic)
    if t is None:
        return None
    if t.error is not None:
        if t.error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
            return None
        raise KafkaException(t.error)
    return len(t.partitions)


def wait_topic(client, topic, partitions, timeout):
    """Wait until metadata shows topic with the given partition count (any count if None)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = topic_partitions(client, topic, timeout=5)
        except KafkaException as e:
            last = f"error: {e}"
        if isinstance(last, int) and (partitions is None or last == partitions):
            return last
        if time.monotonic() >= deadline:
            return last
        time.sleep(0.1)


def ensure_topic(args, topic, partitions, timeout=30.0):
    admin = AdminClient(base_config(args))
    existing = topic_partitions(admin, topic, timeout=10)
    if existing is None:
        futures = admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        try:
            futures[topic].result(timeout=timeout)
        except KafkaException as e:
            err = e.args[0] if e.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                die(f"create topic {topic!r} with {partitions} partitions: {e}")
    got = wait_topic(admin, topic, partitions, timeout)
    if got != partitions:
        die(f"topic {topic!r}: wanted {partitions} partitions, metadata shows {got!r}")


# --- subcommands -----------------------------------------------------------------------------


def cmd_ping(args):
    admin = AdminClient(base_config(args))
    try:
        md = admin.list_topics(timeout=args.timeout)
    except KafkaException as e:
        die(f"no metadata from {args.brokers}: {e}")
    if args.cluster_id is not None and md.cluster_id != args.cluster_id:
        die(f"{args.brokers} belongs to cluster {md.cluster_id!r}, not {args.cluster_id!r}")
    brokers = sorted(f"{b.host}:{b.port}" for b in md.brokers.values())
    print(json.dumps({"cluster_id": md.cluster_id, "brokers": brokers}))


def cmd_create_topic(args):
    ensure_topic(args, args.topic, args.partitions, timeout=args.timeout)


def make_producer(args, partitioner):
    conf = base_config(args)
    conf.update(
        {
            "acks": "all",
            "enable.idempotence": False,
            # one request in flight per connection keeps per-partition order without idempotence
            "max.in.flight.requests.per.connection": 1,
            "linger.ms": 5,
            "message.timeout.ms": 30000,
            "partitioner": partitioner,
        }
    )
    return Producer(conf)


def produce_all(producer, topic, items, interval=None):
    """items: list of dicts with key/value/headers/partition/timestamp (bytes, not base64).
    Returns [(partition, offset)] in input order; dies on any delivery error. With `interval`
    (seconds), each record is sent alone and its delivery awaited, then the interval slept."""
    results = [None] * len(items)
    errors = []

    def on_delivery(i):
        def cb(err, msg):
            if err is not None:
                errors.append(f"record {i}: {err}")
            else:
                results[i] = (msg.partition(), msg.offset())

        return cb

    for i, it in enumerate(items):
        kwargs = {"value": it["value"], "key": it["key"], "on_delivery": on_delivery(i)}
        if it.get("headers"):
            kwargs["headers"] = it["headers"]
        if it.get("partition") is not None:
            kwargs["partition"] = it["partition"]
        if it.get("timestamp") is not None:
            kwargs["timestamp"] = it["timestamp"]
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        if interval is not None:
            producer.flush(60)
            time.sleep(interval)

    remaining = producer.flush(60)
    if remaining:
        errors.append(f"{remaining} record(s) still undelivered after 60 s")
    if errors:
        die("delivery failed: " + "; ".join(errors[:10]))
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        die(f"no delivery report for records {missing[:10]}")
    return results


def cmd_produce(args):
    items = []
    for n, line in enumerate(sys.stdin, 1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            die(f"stdin line {n}: not JSON: {e}")
        headers = []
        for h in obj.get("headers") or []:
            if not (isinstance(h, list) and len(h) == 2 and isinstance(h[0], str)):
                die(f"stdin line {n}: a header must be [name, base64|null], got {h!r}")
            headers.append((h[0], unb64(h[1], f"line {n} header {h[0]!r}")))
        partition = obj.get("partition")
        if partition is None:
            partition = args.partition
        items.append(
            {
                "key": unb64(obj.get("key"), f"line {n} key"),
                "value": unb64(obj.get("value"), f"line {n} value"),
                "headers": headers,
                "partition": partition,
                "timestamp": obj.get("timestamp_ms"),
            }
        )
    producer = make_producer(args, args.partitioner)
    interval = args.interval_ms / 1000.0 if args.interval_ms is not None else None
    for partition, offset in produce_all(producer, args.topic, items, interval):
        print(json.dumps({"partition": partition, "offset": offset}))


def make_consumer(args):
    conf = base_config(args)
    conf.update(
        {
            # confluent-kafka wants a group.id; with assign() and no commits it is never joined.
            "group.id": f"kclient-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "fetch.wait.max.ms": 100,
        }
    )
    return Consumer(conf)


def cmd_consume(args):
    consumer = make_consumer(args)
    deadline = time.monotonic() + args.timeout
    n = None
    while n is None:
        try:
            n = topic_partitions(consumer, args.topic, timeout=5)
        except KafkaException as e:
            die(f"metadata for {args.topic!r}: {e}")
        if n is None:
            if time.monotonic() >= deadline:
                die(f"topic {args.topic!r} does not exist", 2)
            time.sleep(0.2)
    consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in range(n)])

    records = []
    extra_deadline = None
    while True:
        now = time.monotonic()
        if extra_deadline is None and len(records) >= args.count:
            extra_deadline = now + args.extra_wait
        end = extra_deadline if extra_deadline is not None else deadline
        if now >= end:
            break
        for msg in consumer.consume(num_messages=1000, timeout=min(0.2, max(0.0, end - now))):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    die(f"consume: fatal error: {err}")
                print(f"kclient: consume: {err}", file=sys.stderr)
                continue
            _, ts = msg.timestamp()
            records.append(
                {
                    "topic": msg.topic(),
                    "partition": msg.partition(),
                    "offset": msg.offset(),
                    "timestamp_ms": ts,
                    "key": b64(msg.key()),
                    "value": b64(msg.value()),
                    "headers": [[k, b64(v)] for k, v in (msg.headers() or [])],
                }
            )
    consumer.close()
    records.sort(key=lambda r: (r["partition"], r["offset"]))
    for r in records:
        print(json.dumps(r))


def cmd_partitions_for_keys(args):
    topic = args.topic or f"kclient-murmur2-p{args.partitions}"
    ensure_topic(args, topic, args.partitions)
    keys = [line.rstrip("\r\n") for line in sys.stdin]
    items = [
        {"key": k.encode("utf-8"), "value": b"", "headers": [], "partition": None} for k in keys
    ]
    producer = make_producer(args, "murmur2_random")
    for partition, _ in produce_all(producer, topic, items):
        print(partition)


def cmd_topic_info(args):
    consumer = make_consumer(args)
    try:
        n = topic_partitions(consumer, args.topic, timeout=10)
    except KafkaException as e:
        die(f"metadata for {args.topic!r}: {e}")
    if n is None:
        die(f"topic {args.topic!r} does not exist", 2)
    lows, highs = [], []
    for p in range(n):
        low, high = consumer.get_watermark_offsets(TopicPartition(args.topic, p), timeout=10)
        lows.append(low)
        highs.append(high)
    consumer.close()
    print(json.dumps({"partitions": n, "high_watermarks": highs, "low_watermarks": lows}))


def registry_client(args):
    # Imported here: the other subcommands need only confluent-kafka itself.
    from confluent_kafka.schema_registry import SchemaRegistryClient

    conf = {"url": args.registry}
    if args.registry_auth:
        conf["basic.auth.user.info"] = args.registry_auth
    return SchemaRegistryClient(conf)


def bare_writer(path):
    """A function writing bare Avro datums (no frame) of the schema in `path`, with fastavro."""
    import io

    import fastavro

    with open(path) as f:
        schema = fastavro.parse_schema(json.load(f))

    def write(record, _ctx):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, record)
        return buf.getvalue()

    return write


def cmd_produce_avro(args):
    """Values serialized by confluent-kafka's AvroSerializer (Confluent wire format), which
    registers each --schema under <topic>-value (TopicNameStrategy) in --registry."""
    from confluent_kafka.serialization import MessageField, SerializationContext
    from confluent_kafka.schema_registry.avro import AvroSerializer

    serializers = []
    client = None if args.bare else registry_client(args)
    for path in args.schema:
        if args.bare:
            serializers.append(bare_writer(path))
            continue
        with open(path) as f:
            text = f.read()
        serializers.append(AvroSerializer(client, text, conf={"auto.register.schemas": True}))
    ctx = SerializationContext(args.topic, MessageField.VALUE)
    items = []
    for n, line in enumerate(sys.stdin, 1):
        line = line.strip()
        if not line:
            continue
        obj = json.loads(line)
        if "raw" in obj:  # bytes sent as they are (bad input)
            value = unb64(obj["raw"], f"line {n} raw")
        else:
            value = serializers[obj.get("schema", 0)](obj["value"], ctx)
        items.append(
            {
                "key": unb64(obj.get("key"), f"line {n} key"),
                "value": value,
                "headers": [],
                "partition": obj.get("partition", args.partition),
            }
        )
    producer = make_producer(args, "murmur2_random")
    for (partition, offset), it in zip(produce_all(producer, args.topic, items), items):
        v = it["value"] or b""
        sid = int.from_bytes(v[1:5], "big") if len(v) >= 5 and v[0] == 0 else None
        print(json.dumps({"partition": partition, "offset": offset, "schema_id": sid}))


def cmd_consume_avro(args):
    """Reads a topic of Confluent-framed Avro values with confluent-kafka's AvroDeserializer
    (writer schema fetched from --registry by id) and prints them as JSON lines."""
    from confluent_kafka.serialization import MessageField, SerializationContext
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    deserializer = AvroDeserializer(registry_client(args))
    ctx = SerializationContext(args.topic, MessageField.VALUE)
    args.extra_wait = 0.0
    out = []
    consumer = make_consumer(args)
    n = topic_partitions(consumer, args.topic, timeout=10)
    if n is None:
        die(f"topic {args.topic!r} does not exist", 2)
    consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in range(n)])
    deadline = time.monotonic() + args.timeout
    while len(out) < args.count and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=1000, timeout=0.2):
            if msg.error() is not None:
                continue
            v = msg.value()
            record = deserializer(v, ctx)
            out.append(
                {
                    "partition": msg.partition(),
                    "offset": msg.offset(),
                    "key": b64(msg.key()),
                    "schema_id": int.from_bytes(v[1:5], "big"),
                    "value": record,
                }
            )
    consumer.close()
    out.sort(key=lambda r: (r["partition"], r["offset"]))
    for r in out:
        print(json.dumps(r, default=lambda b: b64(bytes(b))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def add(name, func, help_text):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--brokers", required=True, help="HOST:PORT[,HOST:PORT...]")
        p.set_defaults(func=func)
        return p

    p = add("ping", cmd_ping, "succeed once the broker answers a metadata request")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--cluster-id", default=None, help="fail unless the broker reports this id")

    p = add("create-topic", cmd_create_topic, "create a topic (exists is OK) and wait for it")
    p.add_argument("--topic", required=True)
    p.add_argument("--partitions", type=int, required=True)
    p.add_argument("--timeout", type=float, default=30.0)

    p = add("produce", cmd_produce, "produce JSON-line records from stdin")
    p.add_argument("--topic", required=True)
    p.add_argument("--partition", type=int, default=None, help="default partition for records")
    p.add_argument(
        "--partitioner",
        default="murmur2_random",
        help="librdkafka partitioner for records without a partition (default murmur2_random, "
        "the Java client's keyed partitioning)",
    )
    p.add_argument(
        "--interval-ms",
        type=float,
        default=None,
        help="send records one at a time: await each one's delivery, then sleep this long",
    )

    p = add("consume", cmd_consume, "read a topic from the beginning of every partition")
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--extra-wait", type=float, default=0.0)

    p = add(
        "partitions-for-keys",
        cmd_partitions_for_keys,
        "partition murmur2_random picks for each stdin key (produced to a scratch topic)",
    )
    p.add_argument("--partitions", type=int, required=True)
    p.add_argument("--topic", default=None, help="scratch topic (default kclient-murmur2-pN)")

    p = add("topic-info", cmd_topic_info, "partition count and high watermarks")
    p.add_argument("--topic", required=True)

    p = add("produce-avro", cmd_produce_avro, "produce Avro records (AvroSerializer) from stdin")
    p.add_argument("--topic", required=True)
    p.add_argument("--registry", default=None, help="schema registry URL")
    p.add_argument("--registry-auth", default=None, help="USER:PASSWORD for the registry")
    p.add_argument(
        "--schema", action="append", required=True, help=".avsc file; repeat, lines pick one by index"
    )
    p.add_argument("--bare", action="store_true", help="bare datums (fastavro), no registry")
    p.add_argument("--partition", type=int, default=None)

    p = add("consume-avro", cmd_consume_avro, "read Confluent Avro records (AvroDeserializer)")
    p.add_argument("--topic", required=True)
    p.add_argument("--registry", required=True, help="schema registry URL")
    p.add_argument("--registry-auth", default=None, help="USER:PASSWORD for the registry")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--timeout", type=float, default=30.0)

    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
