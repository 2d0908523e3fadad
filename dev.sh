#!/usr/bin/env bash
# One entry point for a fresh machine: sets up .venv on first use, then
#   ./dev.sh demo    run the quickstart: a wrapped OpenAI client, guarded end to end
#   ./dev.sh test    lint (ruff), type-check (mypy --strict) and run the test suite
#   ./dev.sh bench   run the benchmark suite (quick mode; FULL=1 for the full run)
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
    python -m pip install -q --upgrade pip
    # torch first and pinned: it resolves to the CPU build; an unpinned torch pulls CUDA.
    python -m pip install -q torch==2.13.0
    python -m pip install -q -e ".[dev]"
    touch .venv/.installed
fi

case "${1:-test}" in
    test)
        ruff check .
        ruff format --check .
        mypy
        pytest -q
        ;;
    demo)
        python examples/demo.py
        ;;
    bench)
        python -m benchmarks ${FULL:+--full}
        ;;
    *)
        echo "usage: ./dev.sh [test|demo|bench]" >&2
        exit 2
        ;;
esac
