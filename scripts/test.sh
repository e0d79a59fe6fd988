#!/usr/bin/env bash
# The whole test suite: installs the real parts the tests use (tansu broker, confluent-kafka
# client; skipped when present), then runs every unit, integration and doc test. Each
# integration test starts its own broker on a free loopback port and stops it at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup-test-env.sh
cargo test --all-targets --no-fail-fast "$@"
cargo test --doc
