#!/usr/bin/env bash
# One entry point for a fresh machine: sets up .venv on first use, then
#   ./dev.sh demo    run the quickstart: a wrapped OpenAI client, guarded end to end
#   ./dev.sh test    lint (ruff), type-check (mypy --strict) and run the test suite
#   ./dev.sh bench   run the benchmark suite (quick mode; FULL=1 for the full run)
#   ./dev.sh mutation  mutation-test the core with mutmut ([tool.mutmut] in pyproject.toml)
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
        # The HTML report test renders its page in headless Chromium.
        if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
                || echo "chromium could not be installed: its report test will skip" >&2
        fi
        pytest -q
        ;;
    demo)
        python examples/demo.py
        ;;
    bench)
        python -m benchmarks ${FULL:+--full}
        ;;
    mutation)
        # A fresh run each time: mutants/ holds mutmut's copies, results and cache.
        rm -rf mutants
        mutmut run --max-children "${JOBS:-2}"
        # Per module: mutants, killed, survived, timeouts, no covering test, not run.
        mutmut results --all true \
            | sed -E 's/^ *([A-Za-z0-9_.]+)\.x[^:]*: (.*)$/\1 \2/' \
            | awk '{n[$1]++; c[$1 " " $2]++}
                END {for (m in n) printf "%-28s %4d mutants %4d killed %3d survived %2d timeout %2d untested %2d unrun %5.1f%%\n",
                     m, n[m], c[m " killed"], c[m " survived"], c[m " timeout"], c[m " no"], c[m " not"],
                     100 * c[m " killed"] / n[m]}' \
            | sort
        echo "survivors: mutmut results; a mutant's diff: mutmut show NAME"
        ;;
    *)
        echo "usage: ./dev.sh [test|demo|bench|mutation]" >&2
        exit 2
        ;;
esac
