"""Before and after on one harness: ``python -m benchmarks.against REF [--rounds N] [--full]``.

Runs this checkout's benchmarks (b) overhead over HTTP, (c) latency hiding and
(d) streaming against two builds of the library: the ``guardrail`` package of
the git commit ``REF`` (extracted with ``git archive``) and this checkout's
(uncommitted changes included). Only the library differs: the harness, the fake
upstream and the interpreter are this checkout's, so a difference in a row is
the library's, not the benchmark's. Each build runs in its own subprocess, the
two alternating round by round (the first in each round alternating too), and
each row's value is reported per round and as the median over the rounds,
with the median of the rounds' paired after / before ratios and an interval
for it (:func:`compare`); the report ends with the rows measurably slower or
faster after (judged where a row has 6 or more paired rounds, so that its
interval covers at least 95 %; each row on its own, so about one row in twenty
may be named by chance).

The build a worker measures is put first on ``PYTHONPATH`` and checked: the
worker refuses to run when ``import guardrail`` resolves anywhere else (a
script's ``sys.path`` does not hold the working directory, so an editable install
of this checkout would otherwise answer for both).

``--without index,breaker`` compares like for like with a build from before
those features existed: each side turns them off where it has them (the JSONL
sink's log index, the guard backend's circuit breaker), and the report says,
for each side, which it turned off and which its build lacks.

``REF``'s library must accept what the harness uses: ``Guard(policy,
classifier=..., sink=...)``, ``wrap``, ``JsonlSink``/``NullSink``,
``load_policy_text`` and ``guardrail.testing.ScriptedClassifier``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCHES = ("b", "c", "d")
"""The benchmarks that run on any build with the harness's API (see the module notes)."""
FEATURES = ("index", "breaker")
"""What ``--without`` may turn off (``bench_middleware.FEATURES``, which says how)."""


class AgainstError(Exception):
    """A comparison that cannot run: an unknown commit, a worker that failed."""


def extract(ref: str, dest: Path, repo: Path = ROOT) -> str:
    """Write the ``guardrail`` package of commit ``ref`` under ``dest``; its full hash."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise AgainstError(f"{ref!r} is not a commit of {repo}") from exc
    archive = dest / "guardrail.tar"
    try:
        subprocess.run(
            ["git", "-C", str(repo), "archive", "--output", str(archive), commit, "guardrail"],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        raise AgainstError(f"{commit} has no guardrail package: {exc.stderr.decode()}") from exc
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(dest, filter="data")
        except TypeError:  # Python before 3.10.12 / 3.11.4: no extraction filters
            tar.extractall(dest)  # our own repository's archive
    archive.unlink()
    return commit


def _run_worker(root: Path, args: Sequence[str], seed: int | None = None) -> Any:
    """Run a worker that imports the library under ``root``; the JSON it prints last.

    ``seed`` is the worker's ``PYTHONHASHSEED`` (random when ``None``).
    """
    env = dict(os.environ)
    if seed is not None:
        env["PYTHONHASHSEED"] = str(seed)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(root), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AgainstError(f"the worker for {root} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(
    root: Path,
    benches: Sequence[str],
    quick: bool,
    without: Sequence[str] = (),
    seed: int | None = None,
) -> list[dict[str, Any]]:
    """Run the benchmarks in a subprocess that imports the library under ``root``; its rows.

    ``without`` names features (``bench_middleware.FEATURES``) to turn off where
    the library has them; ``seed`` is the subprocess's ``PYTHONHASHSEED``.
    """
    args = ["--only", ",".join(benches), "--without", ",".join(without)]
    rows: list[dict[str, Any]] = _run_worker(root, args + ([] if quick else ["--full"]), seed)
    return rows


def features(root: Path) -> list[str]:
    """Which of ``bench_middleware.FEATURES`` the library under ``root`` has."""
    found: list[str] = _run_worker(root, ["--features"])
    return found


def _worker(root: Path, benches: Sequence[str], quick: bool, without: Sequence[str]) -> int:
    """Measure in this process, which must import the library under ``root``."""
    import guardrail

    found = Path(guardrail.__file__).resolve().parent.parent
    if found != root.resolve():
        print(f"guardrail was imported from {found}, not {root}", file=sys.stderr)
        return 3
    import bench_middleware as bm

    bm.features_off = frozenset(without)
    if not benches:  # --features: what this build has
        print(json.dumps(bm.present_features()))
        return 0
    runs: dict[str, Callable[[bool], list[Any]]] = {
        "b": bm.overhead,
        "c": bm.latency_hiding,
        "d": bm.streaming,
    }
    rows = [r for b in benches for r in runs[b](quick)]
    strays = _strays(found)
    if strays:  # an editable install answered an import this build could not
        print(f"modules not from {found}: {', '.join(strays)}", file=sys.stderr)
        return 3
    print(json.dumps(rows))
    return 0


def _strays(root: Path) -> list[str]:
    """The ``guardrail`` modules loaded in this process from anywhere but ``root``."""
    home = root / "guardrail"
    return sorted(
        name
        for name, module in list(sys.modules.items())
        if (name == "guardrail" or name.startswith("guardrail."))
        and getattr(module, "__file__", None) is not None
        and home not in Path(module.__file__).resolve().parents
    )


LEVEL = 0.95
"""The confidence wanted of each row's interval for its paired after / before ratio."""


def median_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """A distribution-free interval for the median of ``values``: ``(low, high, coverage)``.

    The narrowest pair of order statistics ``x(k+1)``, ``x(n-k)`` that covers the
    median with probability at least ``level`` (the sign test's interval: the
    chance that ``k`` or fewer values fall below the median is binomial); with
    too few values for ``level``, the whole range and the coverage it has.
    """
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("no values")

    def outside(k: int) -> float:  # P(at most k of n values below the median), twice
        return 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n

    k = 0
    while k + 1 < n / 2 and 1 - outside(k + 1) >= level:
        k += 1
    return xs[k], xs[n - 1 - k], 1 - outside(k)


def pairs_needed(level: float = LEVEL) -> int:
    """The fewest values whose whole range covers their median with ``level`` (6 at 95 %)."""
    n = 1
    while 1 - 2 / 2**n < level:
        n += 1
    return n


def paired_ratios(before: Mapping[int, float], after: Mapping[int, float]) -> list[float]:
    """``after / before`` round by round (keys: round numbers), for the rounds both measured.

    A pair counts only when before is positive and after not negative: a ratio
    of a negative cost (an "added" time that came out below zero) would read
    backwards.
    """
    return [
        after[i] / old
        for i, old in sorted(before.items())
        if i in after and old > 0 and after[i] >= 0
    ]


def _paired_column(ratios: Sequence[float]) -> tuple[str, str | None]:
    """A row's paired column and its verdict: ``slower``, ``faster``, ``same``, or
    ``None`` when its interval covers less than :data:`LEVEL`."""
    if not ratios:
        return "", None
    mid = statistics.median(ratios)
    if len(ratios) == 1:
        return f"{mid:.3f}", None
    low, high, coverage = median_interval(ratios)
    text = f"{mid:.3f} [{low:.3f}, {high:.3f}] ({coverage:.0%})"
    if coverage < LEVEL:
        return text, None
    return text, "slower" if low > 1 else "faster" if high < 1 else "same"


def compare(before: Sequence[Sequence[Any]], after: Sequence[Sequence[Any]]) -> list[str]:
    """Markdown table lines: each row's median over the rounds, before and after.

    ``before`` and ``after`` hold one list of rows per round, round ``i`` of the
    two sides measured one after the other. Besides the ratio of the two
    medians, each row has the median of the ratios of its rounds (round ``i``
    after over round ``i`` before, so a drift of the machine during the run
    cancels out) and that median's interval (:func:`median_interval`). Every
    row is a cost (lower is better); the lines after the table name the rows
    whose interval lies wholly above or below 1, among those whose interval
    covers at least :data:`LEVEL` (:func:`pairs_needed` pairs or more), and
    list the rows with too few pairs to judge. Each row is judged on its own:
    with some twenty rows, about one per run may be named by chance, so a row
    named once is worth a second run. A row measured on one side only is left
    out; a ratio is empty where before is not positive.
    """

    def by_key(rounds: Sequence[Sequence[Any]]) -> dict[tuple[str, str, str], dict[int, Any]]:
        out: dict[tuple[str, str, str], dict[int, Any]] = {}
        for i, rows in enumerate(rounds):
            for r in rows:
                out.setdefault((r["bench"], r["case"], r["metric"]), {})[i] = r
        return out

    old, new = by_key(before), by_key(after)
    lines = [
        "| bench | case | metric | before | after | after / before | paired: median "
        "[interval] (coverage) | rounds before | rounds after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    named: dict[str | None, list[str]] = {"slower": [], "faster": [], "same": [], None: []}
    for key, olds in old.items():
        news = new.get(key)
        if not news:
            continue
        unit = next(iter(olds.values()))["unit"]
        med_before = statistics.median(r["value"] for r in olds.values())
        med_after = statistics.median(r["value"] for r in news.values())
        ratio = f"{med_after / med_before:.3f}" if med_before > 0 and med_after >= 0 else ""
        ratios = paired_ratios(
            {i: r["value"] for i, r in olds.items()}, {i: r["value"] for i, r in news.items()}
        )
        paired, verdict = _paired_column(ratios)
        name = f"{key[0]} {key[1]}: {key[2]}"
        named[verdict].append(f"{name} ({statistics.median(ratios):.3f})" if verdict else name)
        each_a = " ".join(f"{r['value']:.3g}" for r in olds.values())
        each_b = " ".join(f"{r['value']:.3g}" for r in news.values())
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {med_before:.3g} {unit} | "
            f"{med_after:.3g} {unit} | {ratio} | {paired} | {each_a} | {each_b} |"
        )
    need = pairs_needed()
    if not (named["slower"] or named["faster"] or named["same"]):
        return [
            *lines,
            "",
            f"Slower or faster after: not judged (no row's interval covers {LEVEL:.0%}; "
            f"that takes {need} or more paired rounds).",
        ]
    lines += [
        "",
        f"Slower after (paired interval above 1, covering {LEVEL:.0%} or more): "
        + ("; ".join(named["slower"]) or "none")
        + ".",
        f"Faster after (paired interval below 1, covering {LEVEL:.0%} or more): "
        + ("; ".join(named["faster"]) or "none")
        + ".",
    ]
    if named[None]:
        lines.append(
            f"Not judged (fewer than {need} paired rounds): " + "; ".join(named[None]) + "."
        )
    return lines


def run(
    ref: str, benches: Sequence[str], rounds: int, quick: bool, without: Sequence[str] = ()
) -> list[str]:
    """The comparison's report lines: ``ref``'s library before, this checkout's after.

    ``without`` names features to turn off on each side that has them.
    """
    with tempfile.TemporaryDirectory(prefix="guardrail-against-") as tmp:
        commit = extract(ref, Path(tmp))
        sides = {"before": Path(tmp), "after": ROOT}
        results: dict[str, list[list[Any]]] = {"before": [], "after": []}
        off = {side: _turned_off(root, without) for side, root in sides.items()}
        # Both sides of a round share a hash seed, a new one each round: how a
        # process's strings hash (dict probes, set order) moves timings by a few
        # percent, and then moves both halves of a pair alike.
        base = random.randrange(1, 2**31)
        for i in range(rounds):
            order = ("before", "after") if i % 2 == 0 else ("after", "before")
            for side in order:
                results[side].append(measure(sides[side], benches, quick, without, base + i))
                print(f"round {i + 1}/{rounds}: {side} done", file=sys.stderr)
    head = [
        f"Before: guardrail at {commit[:12]} ({ref}); after: this checkout ({ROOT}). "
        f"Benchmarks {','.join(benches)}, {'quick' if quick else 'full'} mode, "
        f"{rounds} alternating rounds; values are medians over the rounds.",
        "",
    ]
    if without:
        head[-1:-1] = [
            f"Turned off: {', '.join(without)}. Before: {off['before']}; after: {off['after']}."
        ]
    return head + compare(results["before"], results["after"])


def _turned_off(root: Path, without: Sequence[str]) -> str:
    """What ``--without`` does to the library under ``root``, in words."""
    if not without:
        return ""
    has = features(root)
    off = [f for f in without if f in has]
    absent = [f for f in without if f not in has]
    parts = ([f"{', '.join(off)} turned off"] if off else []) + (
        [f"{', '.join(absent)} absent from this build"] if absent else []
    )
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module notes)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.against", description=__doc__)
    parser.add_argument("ref", nargs="?", help="the git commit whose library is 'before'")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--only", default=",".join(BENCHES), help="benchmarks among b,c,d")
    parser.add_argument("--full", action="store_true", help="the benchmarks' full mode")
    parser.add_argument(
        "--without",
        default="",
        metavar="FEATURES",
        help="turn these features off in each build that has them, to compare like for "
        f"like with a build from before they existed (among {','.join(FEATURES)})",
    )
    parser.add_argument("--output", default="-", help="also write the report here")
    parser.add_argument("--worker", metavar="ROOT", help=argparse.SUPPRESS)
    parser.add_argument("--features", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    benches = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in benches if b not in BENCHES]
    if unknown or not benches:
        parser.error(f"--only: choose among {','.join(BENCHES)}, got {args.only!r}")
    without = [f.strip() for f in args.without.split(",") if f.strip()]
    if any(f not in FEATURES for f in without):
        parser.error(f"--without: choose among {','.join(FEATURES)}, got {args.without!r}")
    if args.worker is not None:
        work = [] if args.features else benches
        return _worker(Path(args.worker), work, not args.full, without)
    if args.ref is None:
        parser.error("give the commit to compare against, e.g. HEAD~1")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        lines = run(args.ref, benches, args.rounds, not args.full, without)
    except AgainstError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    if args.output != "-":
        Path(args.output).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
