#!/usr/bin/env python3
"""Independent consumer-group client for streamtract's group tests (tests/group.rs).

Uses only confluent-kafka (librdkafka), so group membership, assignments and committed offsets
are checked against a client we did not write. Run it with the interpreter of the virtualenv
made by scripts/setup-test-env.sh (target/pyenv/bin/python).

Subcommands (all take --brokers HOST:PORT and --group G):

  member --topic T [--topic T2 ...] [--strategy range] [--session-timeout-ms N]
         [--heartbeat-interval-ms N]
      Joins the group subscribed to the topics (auto commit off) and reports on stdout, one JSON
      object per line:
        {"event": "assign", "partitions": [[topic, partition], ...], "member_id": "..."}
        {"event": "revoke", "partitions": [...]}                       on every revocation
        {"event": "committed", "offsets": [[topic, partition, offset|null], ...]}
        {"event": "error", "message": "..."}
        {"event": "closed"}                                             after leaving the group
      Commands on stdin, one per line:
        commit T P OFFSET [T P OFFSET ...]   synchronous commit (with the member's generation)
        committed T P [T P ...]              reads committed offsets, reported as "committed"
        stop                                 closes the consumer (LeaveGroup) and exits 0
      End of stdin acts as "stop".

  committed --topic T --partitions N
      Reads the group's committed offsets of partitions 0..N-1 of T without joining the group;
      prints {"P": offset|null, ...} (null: nothing committed).

  commit --topic T --offsets P=OFFSET[,P=OFFSET...]
      Commits without joining the group (generation -1, empty member id); prints {"ok": true}.
"""

import argparse
import json
import queue
import sys
import threading

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaException, TopicPartition


def die(msg, code=1):
    print(f"kgroup: {msg}", file=sys.stderr)
    sys.exit(code)


def emit(obj):
    print(json.dumps(obj), flush=True)


def consumer_config(args, extra=None):
    conf = {
        "bootstrap.servers": args.brokers,
        # tansu listens on IPv4 only; never try an IPv6 resolution of "localhost".
        "broker.address.family": "v4",
        "client.id": "kgroup",
        "group.id": args.group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }
    conf.update(extra or {})
    return Consumer(conf)


def offset_or_none(offset):
    return None if offset == OFFSET_INVALID or offset < 0 else offset


def parts_json(partitions):
    return sorted([p.topic, p.partition] for p in partitions)


def cmd_member(args):
    consumer = consumer_config(
        args,
        {
            "partition.assignment.strategy": args.strategy,
            "session.timeout.ms": args.session_timeout_ms,
            "heartbeat.interval.ms": args.heartbeat_interval_ms,
        },
    )

    def on_assign(c, partitions):
        emit({"event": "assign", "partitions": parts_json(partitions), "member_id": c.memberid()})

    def on_revoke(c, partitions):
        emit({"event": "revoke", "partitions": parts_json(partitions)})

    consumer.subscribe(args.topic, on_assign=on_assign, on_revoke=on_revoke)

    commands = queue.Queue()

    def read_stdin():
        for line in sys.stdin:
            line = line.strip()
            if line:
                commands.put(line)
        commands.put("stop")

    threading.Thread(target=read_stdin, daemon=True).start()

    while True:
        msg = consumer.poll(0.1)
        if msg is not None and msg.error() is not None:
            emit({"event": "error", "message": str(msg.error())})
        try:
            line = commands.get_nowait()
        except queue.Empty:
            continue
        words = line.split()
        try:
            if words[0] == "stop":
                consumer.close()
                emit({"event": "closed"})
                return
            if words[0] == "commit":
                triples = words[1:]
                if len(triples) % 3 != 0:
                    raise ValueError("commit wants TOPIC PARTITION OFFSET triples")
                offsets = [
                    TopicPartition(triples[i], int(triples[i + 1]), int(triples[i + 2]))
                    for i in range(0, len(triples), 3)
                ]
                result = consumer.commit(offsets=offsets, asynchronous=False)
                emit(
                    {
                        "event": "committed",
                        "offsets": sorted(
                            [p.topic, p.partition, offset_or_none(p.offset)] for p in result
                        ),
                    }
                )
            elif words[0] == "committed":
                pairs = words[1:]
                if len(pairs) % 2 != 0:
                    raise ValueError("committed wants TOPIC PARTITION pairs")
                wanted = [TopicPartition(pairs[i], int(pairs[i + 1])) for i in range(0, len(pairs), 2)]
                result = consumer.committed(wanted, timeout=10)
                emit(
                    {
                        "event": "committed",
                        "offsets": sorted(
                            [p.topic, p.partition, offset_or_none(p.offset)] for p in result
                        ),
                    }
                )
            else:
                raise ValueError(f"unknown command {words[0]!r}")
        except (KafkaException, ValueError) as e:
            emit({"event": "error", "message": f"{line}: {e}"})


def cmd_committed(args):
    consumer = consumer_config(args)
    try:
        wanted = [TopicPartition(args.topic, p) for p in range(args.partitions)]
        result = consumer.committed(wanted, timeout=args.timeout)
    except KafkaException as e:
        die(f"committed offsets of group {args.group!r}: {e}")
    finally:
        consumer.close()
    emit({str(p.partition): offset_or_none(p.offset) for p in result})


def cmd_commit(args):
    offsets = []
    for item in args.offsets.split(","):
        p, _, o = item.partition("=")
        try:
            offsets.append(TopicPartition(args.topic, int(p), int(o)))
        except ValueError:
            die(f"--offsets: expected P=OFFSET items, got {item!r}")
    consumer = consumer_config(args)
    try:
        for p in consumer.commit(offsets=offsets, asynchronous=False):
            if p.error is not None:
                die(f"commit {p.topic}/{p.partition}: {p.error}")
    except KafkaException as e:
        die(f"commit for group {args.group!r}: {e}")
    finally:
        consumer.close()
    emit({"ok": True})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--brokers", required=True)
        p.add_argument("--group", required=True)

    p = sub.add_parser("member")
    common(p)
    p.add_argument("--topic", action="append", required=True)
    p.add_argument("--strategy", default="range")
    p.add_argument("--session-timeout-ms", type=int, default=10000)
    p.add_argument("--heartbeat-interval-ms", type=int, default=1000)
    p.set_defaults(func=cmd_member)

    p = sub.add_parser("committed")
    common(p)
    p.add_argument("--topic", required=True)
    p.add_argument("--partitions", type=int, required=True)
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=cmd_committed)

    p = sub.add_parser("commit")
    common(p)
    p.add_argument("--topic", required=True)
    p.add_argument("--offsets", required=True)
    p.set_defaults(func=cmd_commit)

    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
