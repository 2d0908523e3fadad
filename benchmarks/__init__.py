"""The benchmark suite: ratios measured side by side in one run (``python -m benchmarks``).

Each ``bench_*`` module exposes ``run(quick: bool) -> list[Row]``; ``__main__`` runs
them, prints a table and writes ``BENCHMARKS.md`` with the machine description and
each figure against its target.
"""
