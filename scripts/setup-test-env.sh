#!/usr/bin/env bash
# Installs what the integration tests and demos need, and nothing else:
#   - tansu 0.6.0 (a Kafka-compatible broker) into ~/.cargo/bin, with its SQLite storage engine;
#   - a Python virtualenv at target/pyenv holding the confluent-kafka client (scripts/kclient.py).
# Idempotent: each step is skipped when its result is already present.
set -euo pipefail

TANSU_VERSION="0.6.0"
CONFLUENT_KAFKA_VERSION="2.16.1"
# onnxruntime scores the models `streamtract train` writes (tests/train.rs): an ONNX runtime we
# did not write, as confluent-kafka is a Kafka client we did not write.
ONNXRUNTIME_VERSION="1.32.0"
# confluent-kafka's schema-registry client, AvroSerializer and AvroDeserializer (tests/avro.rs)
# need these; pinned to the versions the tests were written against.
AVRO_PACKAGES=(
    "fastavro==1.13.1" "avro==1.12.2" "httpx2==2.17.0" "httpcore2==2.17.0" "attrs==26.1.0"
    "cachetools==8.0.2" "certifi==2026.10.19.post1" "authlib==1.9.10" "requests==2.34.2"
)
NUMPY_VERSION="1.26.4"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
PYENV="$REPO_ROOT/target/pyenv"

say() { printf '[setup-test-env] %s\n' "$*"; }

find_tansu() {
    if command -v tansu >/dev/null 2>&1; then
        command -v tansu
    elif [ -x "$HOME/.cargo/bin/tansu" ]; then
        echo "$HOME/.cargo/bin/tansu"
    fi
}

# --- tansu -----------------------------------------------------------------------------------
tansu_bin="$(find_tansu || true)"
installed_version=""
if [ -n "$tansu_bin" ]; then
    # `tansu --version` prints "tansu X.Y.Z".
    installed_version="$("$tansu_bin" --version 2>/dev/null | awk '{print $2}' || true)"
fi
if [ "$installed_version" = "$TANSU_VERSION" ]; then
    say "tansu $TANSU_VERSION already installed: $tansu_bin"
else
    if [ -n "$tansu_bin" ]; then
        say "tansu at $tansu_bin is version '${installed_version:-unknown}', want $TANSU_VERSION"
    else
        say "tansu not found on PATH or in ~/.cargo/bin"
    fi
    say "running: cargo install tansu --version $TANSU_VERSION --features libsql --locked (takes ~20 min on 2 cores)"
    cargo install tansu --version "$TANSU_VERSION" --features libsql --locked
    say "tansu installed: $(find_tansu)"
fi

# --- Python client -----------------------------------------------------------------------------
if [ ! -x "$PYENV/bin/python" ]; then
    say "creating Python virtualenv at $PYENV"
    mkdir -p "$REPO_ROOT/target"
    python3 -m venv "$PYENV"
else
    say "Python virtualenv present: $PYENV"
fi

have_ck="$("$PYENV/bin/python" -c 'import importlib.metadata as m; print(m.version("confluent-kafka"))' 2>/dev/null || true)"
if [ "$have_ck" = "$CONFLUENT_KAFKA_VERSION" ]; then
    say "confluent-kafka $CONFLUENT_KAFKA_VERSION already installed (librdkafka $("$PYENV/bin/python" -c 'import confluent_kafka; print(confluent_kafka.libversion()[0])'))"
else
    say "installing confluent-kafka==$CONFLUENT_KAFKA_VERSION into $PYENV (found: '${have_ck:-none}')"
    "$PYENV/bin/python" -m pip install --quiet --disable-pip-version-check "confluent-kafka==$CONFLUENT_KAFKA_VERSION"
    say "installed: confluent-kafka $("$PYENV/bin/python" -c 'import confluent_kafka; print(confluent_kafka.__version__, "librdkafka", confluent_kafka.libversion()[0])')"
fi

have_ort="$("$PYENV/bin/python" -c 'import importlib.metadata as m; print(m.version("onnxruntime"))' 2>/dev/null || true)"
if [ "$have_ort" = "$ONNXRUNTIME_VERSION" ]; then
    say "onnxruntime $ONNXRUNTIME_VERSION already installed"
else
    say "installing onnxruntime==$ONNXRUNTIME_VERSION numpy==$NUMPY_VERSION into $PYENV (found: '${have_ort:-none}')"
    "$PYENV/bin/python" -m pip install --quiet --disable-pip-version-check "onnxruntime==$ONNXRUNTIME_VERSION" "numpy==$NUMPY_VERSION"
fi

if "$PYENV/bin/python" -c 'import fastavro, confluent_kafka.schema_registry.avro' 2>/dev/null; then
    say "confluent-kafka's Avro serializers already importable"
else
    say "installing the Avro and schema-registry dependencies of confluent-kafka into $PYENV"
    "$PYENV/bin/python" -m pip install --quiet --disable-pip-version-check "${AVRO_PACKAGES[@]}"
fi

say "done"
