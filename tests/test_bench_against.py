"""``python -m benchmarks.against``: this checkout's harness over two builds of the library."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_against", ROOT / "benchmarks" / "against.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


against = _load()

NOT_JUDGED = (
    "Slower or faster after: not judged (no row's interval covers 95%; "
    "that takes 6 or more paired rounds)."
)


def _head() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the comparison reads commits")


def _row(bench: str, case: str, metric: str, value: float, unit: str = "us") -> dict[str, Any]:
    return {
        "bench": bench,
        "case": case,
        "metric": metric,
        "value": value,
        "unit": unit,
        "spread": "",
        "note": "",
    }


def test_extract_writes_the_commits_package(tmp_path: Path) -> None:
    head = _head()
    assert against.extract("HEAD", tmp_path) == head
    shown = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{head}:guardrail/__init__.py"],
        check=True,
        capture_output=True,
    ).stdout
    assert (tmp_path / "guardrail" / "__init__.py").read_bytes() == shown
    assert not (tmp_path / "guardrail.tar").exists()
    assert not (tmp_path / "tests").exists()  # the library only


def test_extract_refuses_an_unknown_commit(tmp_path: Path) -> None:
    _head()
    with pytest.raises(against.AgainstError, match="'no-such-ref' is not a commit"):
        against.extract("no-such-ref", tmp_path)


def test_a_worker_refuses_a_library_imported_from_elsewhere(tmp_path: Path) -> None:
    # tmp_path holds no guardrail package: the worker's import finds another one
    # (this checkout's), which is exactly the mix-up it must refuse.
    with pytest.raises(against.AgainstError, match="failed") as caught:
        against.measure(tmp_path, ["c"], quick=True)
    assert f"not {tmp_path}" in str(caught.value)


@pytest.mark.parametrize("seed", [None, 0, 12345])
def test_a_workers_hash_seed_is_the_one_given(
    seed: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONHASHSEED", "random")
    envs: list[dict[str, str]] = []

    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        envs.append(kwargs["env"])
        return subprocess.CompletedProcess(command, 0, stdout='noise\n[{"x": 1}]\n', stderr="")

    monkeypatch.setattr(against.subprocess, "run", fake_run)
    assert against._run_worker(ROOT, ["--features"], seed) == [{"x": 1}]
    assert envs[0]["PYTHONHASHSEED"] == ("random" if seed is None else str(seed))
    assert envs[0]["PYTHONPATH"].split(":")[0] == str(ROOT)


def test_compare_reports_medians_ratios_and_each_round() -> None:
    before = [
        [_row("b", "sync", "added", 100.0), _row("c", "sync", "ratio", 0.0, "x")],
        [_row("b", "sync", "added", 300.0), _row("c", "sync", "ratio", 0.0, "x")],
        [_row("b", "sync", "added", 200.0), _row("c", "sync", "ratio", 0.0, "x")],
    ]
    after = [
        [_row("b", "sync", "added", 150.0), _row("c", "sync", "ratio", 1.0, "x")],
        [_row("b", "sync", "added", 250.0), _row("c", "sync", "ratio", 1.0, "x")],
        [_row("b", "sync", "added", 350.0), _row("c", "sync", "ratio", 1.0, "x")],
        [_row("b", "only after", "added", 1.0)],
    ]
    lines = against.compare(before, after)
    assert lines[0].startswith("| bench | case | metric | before | after | after / before")
    body = lines[2:]
    # Paired: 150/100, 250/300, 350/200 -> 1.5, 0.833, 1.75; three rounds cover 75 %.
    assert body == [
        "| b | sync | added | 200 us | 250 us | 1.250 | 1.500 [0.833, 1.750] (75%) | "
        "100 300 200 | 150 250 350 |",
        "| c | sync | ratio | 0 x | 1 x |  |  | 0 0 0 | 1 1 1 |",
        "",
        NOT_JUDGED,
    ]


def test_compare_takes_the_middle_pair_for_an_even_count() -> None:
    lines = against.compare(
        [[_row("b", "s", "m", 1.0)], [_row("b", "s", "m", 3.0)]],
        [[_row("b", "s", "m", 2.0)], [_row("b", "s", "m", 6.0)]],
    )
    assert (
        lines[2] == "| b | s | m | 2 us | 4 us | 2.000 | 2.000 [2.000, 2.000] (50%) | 1 3 | 2 6 |"
    )


def test_compare_pairs_each_round_with_its_own_round() -> None:
    # The machine slows down round by round; each round's after is 10 % above its before.
    values = [100.0 * (i + 1) for i in range(8)]
    before = [[_row("b", "s", "m", v)] for v in values]
    after = [[_row("b", "s", "m", v * 1.1)] for v in values]
    after[2] = []  # a round that did not measure the row is left out of the pairs
    before[7] = []  # on either side
    # t: twice as slow, but in 4 rounds only: its interval covers too little to judge.
    for i in range(4):
        before[i].append(_row("b", "t", "m", 10.0))
        after[i].append(_row("b", "t", "m", 20.0))
    lines = against.compare(before, after)
    assert lines[2].startswith(
        "| b | s | m | 400 us | 550 us | 1.375 | 1.100 [1.100, 1.100] (97%) |"
    )
    assert lines[3].startswith("| b | t | m | 10 us | 20 us | 2.000 | 2.000 [2.000, 2.000] (88%) |")
    assert lines[-3:] == [
        "Slower after (paired interval above 1, covering 95% or more): b s: m (1.100).",
        "Faster after (paired interval below 1, covering 95% or more): none.",
        "Not judged (fewer than 6 paired rounds): b t: m.",
    ]


def test_a_cost_below_zero_gives_no_ratio() -> None:
    # "added" rows are differences and can come out negative: -10 -> -20 is cheaper,
    # and its ratio (2.0) would read as twice as slow. Such pairs count for nothing.
    # u: from below zero to above it, no ratio either.
    before = [
        [_row("b", "s", "m", -10.0), _row("b", "t", "m", 10.0), _row("b", "u", "m", -5.0)]
        for _ in range(6)
    ]
    after = [
        [_row("b", "s", "m", -20.0), _row("b", "t", "m", v), _row("b", "u", "m", 5.0)]
        for v in (-1, 9, 9, 9, 9, 9)
    ]
    lines = against.compare(before, after)
    assert lines[4] == "| b | u | m | -5 us | 5 us |  |  | -5 -5 -5 -5 -5 -5 | 5 5 5 5 5 5 |"
    assert lines[2] == (
        "| b | s | m | -10 us | -20 us |  |  | -10 -10 -10 -10 -10 -10 | -20 -20 -20 -20 -20 -20 |"
    )
    assert "| 0.900 [0.900, 0.900] (94%) |" in lines[3]  # 5 pairs: round 1's after is < 0
    assert lines[-1] == NOT_JUDGED


def test_measure_hands_its_seed_to_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Path, list[str], int | None]] = []

    def fake_worker(root: Path, args: list[str], seed: int | None = None) -> list[Any]:
        seen.append((root, list(args), seed))
        return []

    monkeypatch.setattr(against, "_run_worker", fake_worker)
    assert against.measure(ROOT, ["b", "c"], False, ["index"], 77) == []
    assert seen == [(ROOT, ["--only", "b,c", "--without", "index", "--full"], 77)]


def test_one_round_has_a_paired_ratio_but_no_interval() -> None:
    lines = against.compare([[_row("b", "s", "m", 2.0)]], [[_row("b", "s", "m", 3.0)]])
    assert lines[2] == "| b | s | m | 2 us | 3 us | 1.500 | 1.500 | 2 | 3 |"
    assert lines[-1] == NOT_JUDGED


def test_rows_judged_unchanged_give_a_verdict_of_none() -> None:
    before = [[_row("b", "s", "m", 10.0)] for _ in range(6)]
    after = [[_row("b", "s", "m", (9.0, 11.0)[i % 2])] for i in range(6)]
    lines = against.compare(before, after)
    assert lines[-2:] == [
        "Slower after (paired interval above 1, covering 95% or more): none.",
        "Faster after (paired interval below 1, covering 95% or more): none.",
    ]


def test_compare_names_rows_measurably_faster() -> None:
    # s: every round faster; t: as often faster as slower; u: unchanged (an interval of
    # exactly 1 is neither above nor below it).
    rows = ("s", "t", "u")
    before = [[_row("b", r, "m", 10.0) for r in rows] for _ in range(6)]
    after = [
        [
            _row("b", "s", "m", 9.0 + i / 100),
            _row("b", "t", "m", (9.0, 11.0)[i % 2]),
            _row("b", "u", "m", 10.0),
        ]
        for i in range(6)
    ]
    lines = against.compare(before, after)
    assert "| 1.000 [1.000, 1.000] (97%) |" in lines[4]
    assert lines[-2] == "Slower after (paired interval above 1, covering 95% or more): none."
    assert (
        lines[-1] == "Faster after (paired interval below 1, covering 95% or more): b s: m (0.902)."
    )


@pytest.mark.parametrize(
    ("n", "low", "high", "coverage"),
    [
        (1, 0, 0, 0.0),
        (2, 0, 1, 0.5),
        (5, 0, 4, 0.9375),
        (6, 0, 5, 0.96875),
        (8, 0, 7, 0.9921875),
        (9, 1, 7, 0.9609375),
        (12, 2, 9, 0.96142578125),
        (15, 3, 11, 0.96484375),
    ],
)
def test_median_interval_takes_the_sign_tests_order_statistics(
    n: int, low: int, high: int, coverage: float
) -> None:
    values = [float(v) for v in reversed(range(n))]  # given in any order
    assert against.median_interval(values) == (low, high, pytest.approx(coverage))


@pytest.mark.parametrize(("level", "pairs"), [(0.0, 1), (0.5, 2), (0.95, 6), (0.99, 8)])
def test_pairs_needed_is_the_fewest_whose_range_covers_the_level(level: float, pairs: int) -> None:
    assert against.pairs_needed(level) == pairs
    if pairs == 1:
        return
    assert against.median_interval(range(pairs), level)[2] >= level
    assert against.median_interval(range(pairs - 1), level)[2] < level


def test_median_interval_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        against.median_interval([])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["HEAD", "--only", "a"], "--only: choose among b,c,d"),
        (["HEAD", "--only", ","], "--only: choose among b,c,d"),
        ([], "give the commit to compare against"),
        (["HEAD", "--rounds", "0"], "--rounds must be at least 1"),
        (["HEAD", "--without", "index,speed"], "--without: choose among index,breaker"),
    ],
)
def test_bad_arguments_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        against.main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_an_unknown_commit_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    _head()
    assert against.main(["no-such-ref", "--rounds", "1"]) == 2
    assert capsys.readouterr().err == f"error: 'no-such-ref' is not a commit of {ROOT}\n"


@pytest.mark.slow
def test_both_builds_run_and_are_compared(tmp_path: Path) -> None:
    head = _head()
    out = tmp_path / "against.md"
    command = ["benchmarks.against", "HEAD", "--rounds", "1", "--only", "c", "--output", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"Before: guardrail at {head[:12]} (HEAD)" in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith("| c |")]
    # Benchmark (c): sync and async, each a guarded / ideal ratio measured on both sides.
    assert [line.split(" | ")[1:3] for line in rows] == [
        ["sync", "guarded / ideal"],
        ["async", "guarded / ideal"],
    ]
    assert "round 1/1: before done" in done.stderr
    assert "round 1/1: after done" in done.stderr
    assert out.read_text() == done.stdout


def test_rounds_alternate_which_build_goes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    _head()
    calls: list[Path] = []
    seeds: list[int | None] = []

    def fake_measure(
        root: Path, benches: list[str], quick: bool, without: list[str], seed: int | None
    ) -> list[dict[str, Any]]:
        calls.append(root)
        seeds.append(seed)
        assert list(without) == []
        assert (benches, quick) == (["b"], True)
        assert (root / "guardrail" / "__init__.py").is_file()
        value = 2.0 if root == against.ROOT else 1.0  # the extracted commit is elsewhere
        return [_row("b", "sync", "added", value * len(calls))]

    monkeypatch.setattr(against, "measure", fake_measure)
    lines = against.run("HEAD", ["b"], 3, quick=True)
    after = [root == against.ROOT for root in calls]
    assert after == [False, True, True, False, False, True]
    assert len({root for root in calls if root != against.ROOT}) == 1
    # The two halves of a round share a hash seed; each round has its own.
    assert seeds[0::2] == seeds[1::2]
    assert len({seeds[0], seeds[2], seeds[4]}) == 3
    assert all(isinstance(seed, int) and 0 < seed < 2**32 for seed in seeds)
    # Each side's rounds in round order: before measured 1st, 4th and 5th, after 2nd, 3rd, 6th.
    # Paired by round: 4/1, 6/4, 12/5.
    assert lines[-3] == (
        "| b | sync | added | 4 us | 6 us | 1.500 | 2.400 [1.500, 4.000] (75%) | 1 4 5 | 4 6 12 |"
    )
    assert "3 alternating rounds" in lines[0]


def _bench_middleware() -> ModuleType:
    # Its sibling modules import as top-level names, which other tests' folders
    # (examples/common.py) may hold already: those are set aside meanwhile.
    siblings = ("common", "upstream", "bench_middleware")
    held = {name: sys.modules.pop(name) for name in siblings if name in sys.modules}
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_middleware
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
        for name in siblings:
            sys.modules.pop(name, None)
        sys.modules.update(held)
    return bench_middleware


def test_the_two_feature_lists_agree() -> None:
    assert against.FEATURES == _bench_middleware().FEATURES


def test_without_turns_the_features_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bm = _bench_middleware()
    assert bm.present_features() == ["index", "breaker"]
    assert bm._policy().guard.breaker.enabled
    with bm._jsonl(tmp_path / "on.jsonl") as sink:
        assert sink._index is not None
    monkeypatch.setattr(bm, "features_off", frozenset({"index"}))
    assert bm._policy().guard.breaker.enabled
    with bm._jsonl(tmp_path / "no-index.jsonl") as sink:
        assert sink._index is None
    monkeypatch.setattr(bm, "features_off", frozenset({"breaker"}))
    assert not bm._policy().guard.breaker.enabled
    assert not bm._policy("streaming: {chunk_chars: 120}\n").guard.breaker.enabled


def test_features_are_looked_for_in_the_build_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An older build: its package has no breaker folder (though an import of
    # guardrail.breaker would still succeed here, from this checkout), and its
    # JsonlSink takes no index.
    bm = _bench_middleware()
    (tmp_path / "guardrail").mkdir()
    old = ModuleType("guardrail")
    old.__file__ = str(tmp_path / "guardrail" / "__init__.py")

    class OldJsonlSink:
        def __init__(self, path: Path) -> None:
            self.path = path

    monkeypatch.setattr(bm, "guardrail", old)
    monkeypatch.setattr(bm, "JsonlSink", OldJsonlSink)
    assert bm.present_features() == []
    monkeypatch.setattr(bm, "features_off", frozenset({"index", "breaker"}))
    assert isinstance(bm._jsonl(tmp_path / "a.jsonl"), OldJsonlSink)  # no index= passed
    assert bm._policy().guard.breaker.enabled  # not asked of a build without one
    # Builds between the breaker's arrival and its split into a package had it as a module.
    (tmp_path / "guardrail" / "breaker.py").write_text("")
    assert bm.present_features() == ["breaker"]


def test_strays_are_the_modules_loaded_from_another_build(tmp_path: Path) -> None:
    import guardrail.audit  # noqa: F401  (loaded: the test reads sys.modules)

    assert against._strays(ROOT) == []
    strays = against._strays(tmp_path)
    assert "guardrail" in strays
    assert "guardrail.audit" in strays


def test_the_report_says_what_was_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    _head()
    seen: list[list[str]] = []

    def fake_measure(
        root: Path, benches: list[str], quick: bool, without: list[str], seed: int | None
    ) -> list[dict[str, Any]]:
        seen.append(list(without))
        return [_row("b", "sync", "added", 1.0)]

    def fake_features(root: Path) -> list[str]:
        return ["index", "breaker"] if root == against.ROOT else []

    monkeypatch.setattr(against, "measure", fake_measure)
    monkeypatch.setattr(against, "features", fake_features)
    lines = against.run("HEAD", ["b"], 1, quick=True, without=["index", "breaker"])
    assert seen == [["index", "breaker"]] * 2
    assert lines[1] == (
        "Turned off: index, breaker. Before: index, breaker absent from this build; "
        "after: index, breaker turned off."
    )
    plain = against.run("HEAD", ["b"], 1, quick=True)
    assert not any(line.startswith("Turned off") for line in plain)
