#!/usr/bin/env python3
"""kclient.py with extra librdkafka settings, for brokers behind TLS and/or SASL.

    ksecure.py [--set KEY=VALUE]... [--set-env KEY=ENVVAR]... SUBCOMMAND --brokers ... [ARGS]

Every subcommand and argument of kclient.py works unchanged; the options before the subcommand
add librdkafka properties to every client it makes, for example:

    --set security.protocol=SASL_SSL --set ssl.ca.location=ca.pem
    --set sasl.mechanisms=SCRAM-SHA-512 --set sasl.username=alice --set-env sasl.password=PW

--set-env takes the value from an environment variable, so a password never appears on a
command line (which other users of the machine can read in the process list). Run it with the
interpreter of the virtualenv made by scripts/setup-test-env.sh (target/pyenv/bin/python).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kclient  # noqa: E402  (after the path tweak above)


def usage(msg):
    print(f"ksecure: {msg}\n\n{__doc__.strip()}", file=sys.stderr)
    sys.exit(64)


def split_setting(option, text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        usage(f"{option} wants KEY=VALUE, got {text!r}")
    return key, value


def parse_front(argv):
    """Consumes the --set/--set-env options before the subcommand; returns (extra, rest)."""
    extra = {}
    i = 0
    while i < len(argv) and argv[i] in ("--set", "--set-env"):
        option = argv[i]
        if i + 1 >= len(argv):
            usage(f"{option} needs an argument")
        key, value = split_setting(option, argv[i + 1])
        if option == "--set-env":
            if value not in os.environ:
                usage(f"--set-env {key}: environment variable {value!r} is not set")
            value = os.environ[value]
        extra[key] = value
        i += 2
    return extra, argv[i:]


def main():
    extra, rest = parse_front(sys.argv[1:])
    plain_config = kclient.base_config

    def base_config(args):
        conf = plain_config(args)
        conf.update(extra)
        return conf

    kclient.base_config = base_config
    sys.argv = [sys.argv[0]] + rest
    kclient.main()


if __name__ == "__main__":
    main()
