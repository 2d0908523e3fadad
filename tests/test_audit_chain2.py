"""Chain version 2: any byte changed in a line fails verification, at that line.

The log is written by real guarded calls (``test_audit_review.write_log``: a
wrapped openai client, direct checks, breaker events) through the JSONL sink.
Every byte of a call's line and of an event's line is flipped in turn; each
flip must fail the chain at that line, through ``verify_chain`` (the line
rules) and through ``verify_file`` / ``verify_log`` (the file verifier's fast
path), with the same verdict. Lines deleted, moved, copied, cut, and logs of
the previous layout (version 1) and of both layouts mixed are checked too.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from test_audit_review import write_log

from guardrail.audit import JsonlSink, read_entries, verify_chain, verify_file, verify_log
from guardrail.audit.chain import HashChain, record_hash, record_line
from guardrail.audit.chainscan import find_committed, scan_chain
from guardrail.audit.index import index_path
from guardrail.audit.linefmt import PREV_END, PREV_START, V2_PREFIX, v2_index
from guardrail.errors import AuditError


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("chain2") / "audit.jsonl"
    write_log(path, "hash")
    return path


@pytest.fixture
def lines(log: Path) -> list[bytes]:
    return log.read_bytes().splitlines(keepends=True)


def _as_text_reader_reads(path: Path) -> object:
    """verify_chain over the file's lines as a text reader splits them (the reference)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        return verify_chain(list(fh))


def _first(lines: list[bytes], *, event: bool) -> int:
    return next(i for i, line in enumerate(lines) if ('"kind":' in line.decode()[:200]) == event)


def test_the_log_is_version_2_with_an_index(lines: list[bytes], log: Path) -> None:
    assert all(line.startswith(V2_PREFIX) for line in lines)
    assert all(v2_index(line.rstrip(b"\n")) is not None for line in lines)
    for line in lines:  # every line is the record's own layout, hash over its bytes
        data = json.loads(line)
        assert data["chain"] == 2
        assert record_hash(data) == data["hash"]
        assert record_line(data).encode() + b"\n" == line
    # prev_hash sits at its fixed offsets
    heads = [json.loads(line)["hash"] for line in lines]
    assert [line[PREV_START:PREV_END].decode() for line in lines[1:]] == heads[:-1]
    result = verify_log(log)
    assert result.ok
    assert result.index is not None
    assert result.index.state == "ok"
    assert result.kinds["event"] == 2


@pytest.mark.parametrize("event", [False, True], ids=["call", "event"])
def test_every_byte_flipped_fails_at_its_line(
    lines: list[bytes], tmp_path: Path, event: bool
) -> None:
    i = _first(lines, event=event)
    line = lines[i]
    path = tmp_path / "flipped.jsonl"
    for pos in range(len(line) - 1):  # every byte but the newline
        for mask in (0x01, 0x20):
            flipped = bytearray(line)
            flipped[pos] ^= mask
            tampered = [*lines[:i], bytes(flipped), *lines[i + 1 :]]
            result = verify_chain(tampered)
            assert not result.ok, (pos, mask)
            assert result.problem is not None
            assert result.problem.line == i + 1, (pos, mask, result.problem)
            assert result.count == i
            if pos % 53 == 0 or pos >= len(line) - 80:  # the file verifier agrees
                path.write_bytes(b"".join(tampered))
                assert verify_file(path) == _as_text_reader_reads(path), (pos, mask)


def test_the_hash_member_and_layout_are_checked(lines: list[bytes]) -> None:
    i = _first(lines, event=False)
    line = lines[i]
    data = json.loads(line)
    cases = {
        # the same record, laid out otherwise: not the bytes hashed
        "json.dumps": json.dumps(data).encode() + b"\n",
        "spaces": line.replace(b'"chain":2,', b'"chain": 2,', 1),
        "hash upper-case": line.replace(data["hash"].encode(), data["hash"].upper().encode()),
        "no hash": line.replace(f',"hash":"{data["hash"]}"'.encode(), b""),
        "hash moved first": line.replace(
            b'{"chain"', f'{{"hash":"{data["hash"]}","chain"'.encode()
        ),
        "chain version 3": line.replace(b'"chain":2', b'"chain":3', 1),
        "extra member after hash": line[:-2] + b',"x":1}\n',
    }
    for name, bad in cases.items():
        result = verify_chain([*lines[:i], bad, *lines[i + 1 :]])
        assert result.problem is not None, name
        assert (result.problem.line, result.problem.kind) == (i + 1, "hash_mismatch"), name
        assert "edited" in result.problem.message, name


def test_lines_deleted_moved_copied_cut(lines: list[bytes], tmp_path: Path) -> None:
    n = len(lines)
    cases = {
        "delete": ([*lines[:3], *lines[4:]], 4, "prev_hash_mismatch"),
        "delete the first": (lines[1:], 1, "prev_hash_mismatch"),
        "swap": ([*lines[:3], lines[4], lines[3], *lines[5:]], 4, "prev_hash_mismatch"),
        "copy": ([*lines[:5], lines[1], *lines[5:]], 6, "prev_hash_mismatch"),
        "cut short": ([*lines[:3], lines[3][:300] + b"\n", *lines[4:]], 4, "bad_json"),
        "last cut": ([*lines[:-1], lines[-1][:-40]], n, "bad_json"),
        "blank line": ([*lines[:2], b"\n", *lines[2:]], 3, "bad_json"),
        "carriage return": (
            [*lines[:2], lines[2][:90] + b"\r" + lines[2][90:], *lines[3:]],
            3,
            "hash_mismatch",  # in a file, split there as a text reader splits it
        ),
    }
    path = tmp_path / "t.jsonl"
    for name, (tampered, line, kind) in cases.items():
        result = verify_chain(tampered)
        assert result.problem is not None, name
        assert (result.problem.line, result.problem.kind) == (line, kind), name
        assert result.count == line - 1
        path.write_bytes(b"".join(tampered))
        assert verify_file(path) == _as_text_reader_reads(path), name
    assert "incomplete last line" in verify_chain(cases["last cut"][0]).problem.message  # type: ignore[union-attr]


def test_crlf_line_ends_still_verify(lines: list[bytes], tmp_path: Path) -> None:
    # A text reader reads CRLF as LF: the lines' bytes, which the hashes cover, are kept.
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b"".join(line[:-1] + b"\r\n" for line in lines))
    assert verify_file(path).ok
    assert verify_file(path) == verify_chain(lines)


def test_gzip_log_verifies_and_a_damaged_one_is_named(log: Path, tmp_path: Path) -> None:
    gz = tmp_path / "audit.jsonl.1"
    gz.write_bytes(gzip.compress(log.read_bytes()))
    assert verify_file(gz) == verify_file(log)
    assert verify_log(gz).ok
    damaged = tmp_path / "damaged.gz"
    data = gz.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    from guardrail.audit import AuditFileError

    with pytest.raises(AuditFileError, match="read failed"):
        verify_file(damaged)


def test_a_version_1_log_verifies_and_a_sink_continues_it(tmp_path: Path, log: Path) -> None:
    # Records of a real log re-sealed as releases before version 2 wrote them.
    records = [e.to_json_dict() for e in read_entries(log)]
    chain = HashChain(version=1)
    old = tmp_path / "old.jsonl"
    with open(old, "wb") as fh:
        for data in records:
            sealed = chain.seal(data)
            fh.write(sealed.payload)
            chain.advance(sealed)
    before = verify_log(old)
    assert before.ok
    assert before.count == len(records)
    assert before.index is None
    # A sink of this release continues it in version 2, without an index (none can
    # cover the records before), and the mixed log verifies.
    with JsonlSink(old) as sink:
        sink.write_json(records[0])
    assert not index_path(old).exists()
    after = verify_log(old)
    assert after.ok
    assert after.count == len(records) + 1
    last = old.read_bytes().splitlines()[-1]
    assert last.startswith(V2_PREFIX)
    assert v2_index(last) is None
    # An edit in the version-1 part is still found, at its line.
    lines = old.read_bytes().splitlines(keepends=True)
    data = json.loads(lines[2])
    data["final_action"] = "allow"
    lines[2] = json.dumps(data).encode() + b"\n"
    problem = verify_chain(lines).problem
    assert problem is not None
    assert (problem.line, problem.kind) == (3, "hash_mismatch")


def test_positions_head_and_index_digest_are_noted(log: Path, lines: list[bytes]) -> None:
    heads = [json.loads(line)["hash"] for line in lines]
    digests = [v2_index(line.rstrip(b"\n")) for line in lines]
    scan = scan_chain(log, positions=frozenset({1, 4, len(lines)}), expect_head=heads[5])
    assert scan.chain.ok
    assert scan.hashes == {1: heads[0], 4: heads[3], len(lines): heads[-1]}
    assert scan.head_at == 6
    assert find_committed(log, digests[7].decode()) == 8  # type: ignore[union-attr]
    assert find_committed(log, "0" * 64) is None
    assert scan.last_index == digests[-1].decode()  # type: ignore[union-attr]
    # a slice of a log that starts mid-chain
    tail = log.parent / "tail.jsonl"
    tail.write_bytes(b"".join(lines[4:]))
    assert not verify_file(tail).ok
    assert verify_file(tail, genesis=None).ok
    assert verify_file(tail, genesis=None).count == len(lines) - 4


@pytest.mark.parametrize(
    "record",
    [
        {"time": "t", "a": [1, 2.5, None], "z": {"y": "é\udc80", "b": True}},
        {"kind": "event", "type": "breaker.open", "details": {}},
        {"kind": "event"},
        {},
        {"chain": 1, "prev_hash": "x", "index": "y", "hash": "z", "only": 1},
    ],
)
@pytest.mark.parametrize("index", [None, "ab" * 32])
def test_seal_payload_is_the_line_every_reader_recomputes(
    record: dict[str, object], index: str | None
) -> None:
    # seal_payload (a sink's hot path) joins the line in place: the bytes must be
    # exactly the layout that record_line / record_hash rebuild from the parsed line.
    chain = HashChain("cd" * 32)
    payload, digest = chain.seal_payload(record, index=index)
    sealed = chain.seal(record, index=index)
    assert (sealed.payload, sealed.hash, sealed.prev_hash) == (payload, digest, "cd" * 32)
    assert sealed.line.encode() + b"\n" == payload
    parsed = json.loads(payload)
    assert record_line(parsed).encode() + b"\n" == payload
    assert record_hash(parsed) == digest == parsed["hash"]
    assert parsed["prev_hash"] == "cd" * 32
    assert parsed.get("index") == index
    assert verify_chain([sealed.line], genesis="cd" * 32).ok
    chain.advance_from("cd" * 32, digest)
    assert chain.head == digest
    with pytest.raises(
        AuditError, match=r"^audit chain advanced out of order \(a sink wrote without its lock\)$"
    ):
        chain.advance_from("cd" * 32, digest)
    assert chain.head == digest


def test_a_version_1_chain_has_no_index() -> None:
    chain = HashChain(version=1)
    with pytest.raises(ValueError, match=r"^chain version 1 has no index field$"):
        chain.seal_payload({"a": 1}, index="ab" * 32)
    payload, digest = chain.seal_payload({"a": 1})
    assert json.loads(payload) == {"a": 1, "prev_hash": "0" * 64, "hash": digest}
    assert record_hash(json.loads(payload)) == digest
