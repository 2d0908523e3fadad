"""Audit logs: one tamper-evident record per guarded call, and the tools to review them.

A guarded call's record is derived as its JSON dict (:func:`guardrail.flow.audit_record`)
and handed to a sink::

    data = record_dict(policy=..., stages=[prompt_decision, response_decision], ...)
    sink.write_json(data)  # raises AuditError if it was not written

or, for sinks that take models, the same dict validated::

    record = AuditRecord.build(policy=..., stages=[prompt_decision, response_decision], ...)
    sink.write(record)  # record.to_json_dict() == data

- :mod:`~guardrail.audit.params`: :class:`RecordParams`, the parameters of a record;
- :mod:`~guardrail.audit.build`: the write side, :func:`record_dict`, with its parts:
  :mod:`~guardrail.audit.content` (content modes, :func:`content_view`),
  :mod:`~guardrail.audit.summaries` (:func:`stage_dict`, a check's JSON form) and
  :mod:`~guardrail.audit.kinds` (record kinds, times, :func:`event_dict`);
- :mod:`~guardrail.audit.record`: the read side, :class:`AuditRecord` and its parts;
- :mod:`~guardrail.audit.chain`: the hash chain and :func:`verify_chain`, with each chain
  version's line layout (:mod:`~guardrail.audit.linefmt`) and the fast file verifier
  (:mod:`~guardrail.audit.chainscan`);
- :mod:`~guardrail.audit.sinkbase`: the :class:`AuditSink` protocol, the null sink,
  and :func:`write_event` for records that are not guarded calls;
- :mod:`~guardrail.audit.jsonl`: :class:`JsonlSink`, the JSON-lines file sink;
- :mod:`~guardrail.audit.sinks`: stdout and app logger sinks, and the sink a
  policy's ``audit`` section names (:func:`sink_from_config`);
- :mod:`~guardrail.audit.logfile`: a JSONL log's bytes: its tail, and torn tails
  moved aside after a crash (crash recovery);
- :mod:`~guardrail.audit.keys`: :class:`AuditKey`, keyed content hashes and signatures;
- :mod:`~guardrail.audit.checkpoints`: a log's count and head kept outside it;
- :mod:`~guardrail.audit.index`: ``LOG.index``, the facts ``audit stats`` reads, one short
  row per record, bound to the log by its chain; kept by the JSONL sink
  (:mod:`~guardrail.audit.indexwriter`), read by :mod:`~guardrail.audit.indexstats` and
  checked by :mod:`~guardrail.audit.indexcheck`;
- :mod:`~guardrail.audit.reader`: reading, searching, summarising and verifying files;
- :mod:`~guardrail.audit.scan`: the fast scan the review commands use: records as
  dicts (orjson), filtered without models; :mod:`~guardrail.audit.stats`
  (:func:`~guardrail.audit.stats.compute_stats`, ``guardrail audit stats``) with its
  engines' counts (:mod:`~guardrail.audit.tally`), the Python engine
  (:mod:`~guardrail.audit.pyengine`) and the DuckDB engine
  (:mod:`~guardrail.audit.duck`); :mod:`~guardrail.audit.export`, the CSV columns;
- :mod:`~guardrail.audit.replay`: :func:`replay_logs`, what another policy would
  have decided for the calls of a log (``guardrail audit replay``);
- :mod:`~guardrail.audit.verify`: :func:`verify_log`, the chain with its anchors
  and recoveries, as ``guardrail audit verify`` reports it;
- :mod:`~guardrail.audit.workers`: a log per gateway worker process (its file, its
  slot) and :func:`expand_logs`, the files a configured log path stands for.

A log holds one record per guarded call and, apart from those, records with a
``kind`` field: ``recovery`` (written after a crash) and ``event`` (e.g. a
circuit breaker's transition)::

    write_event(sink, "breaker.open", {"backend": "guard", "failures": 5})
"""

from __future__ import annotations

from guardrail.audit.build import (
    CALL_KIND,
    EVENT_KIND,
    RECORD_KINDS,
    RECOVERY_KIND,
    SCHEMA_VERSION,
    content_view,
    event_dict,
    new_request_id,
    record_dict,
    stage_dict,
)
from guardrail.audit.canonical import canonical_json
from guardrail.audit.chain import (
    GENESIS_HASH,
    ChainProblem,
    HashChain,
    SealedRecord,
    VerifyResult,
    record_hash,
    record_line,
    verify_chain,
)
from guardrail.audit.checkpoints import (
    BadCheckpoint,
    Checkpoint,
    default_checkpoint_path,
    read_checkpoints,
)
from guardrail.audit.keys import AuditKey
from guardrail.audit.logfile import QUARANTINE_INFIX
from guardrail.audit.params import CONTENT_MODES, ContentMode, RecordParams
from guardrail.audit.reader import (
    AuditFileError,
    Percentiles,
    RecordFilter,
    Summary,
    filter_records,
    read_entries,
    read_records,
    summarize,
    verify_file,
)
from guardrail.audit.record import (
    AuditEntry,
    AuditRecord,
    ContentRecord,
    DecisionSummary,
    ErrorEntry,
    ErrorInfo,
    EventRecord,
    Latency,
    PolicyRef,
    RewardEntry,
    StageRecord,
    VerdictSummary,
    parse_entry,
)
from guardrail.audit.replay import CallReplay, ReplayReport, replay_logs, replay_record
from guardrail.audit.sinks import (
    AUDIT_EVENT,
    AuditSink,
    JsonlSink,
    LoggerSink,
    NullSink,
    StdoutSink,
    StreamSink,
    json_writer,
    sink_from_config,
    sink_from_settings,
    write_event,
    write_record,
)
from guardrail.audit.verify import AnchorCheck, LogVerification, RecoveryNote, verify_log
from guardrail.audit.workers import expand_logs, worker_logs

__all__ = [
    "AUDIT_EVENT",
    "CALL_KIND",
    "CONTENT_MODES",
    "EVENT_KIND",
    "GENESIS_HASH",
    "QUARANTINE_INFIX",
    "RECORD_KINDS",
    "RECOVERY_KIND",
    "SCHEMA_VERSION",
    "AnchorCheck",
    "AuditEntry",
    "AuditFileError",
    "AuditKey",
    "AuditRecord",
    "AuditSink",
    "BadCheckpoint",
    "CallReplay",
    "ChainProblem",
    "Checkpoint",
    "ContentMode",
    "ContentRecord",
    "DecisionSummary",
    "ErrorEntry",
    "ErrorInfo",
    "EventRecord",
    "HashChain",
    "JsonlSink",
    "Latency",
    "LogVerification",
    "LoggerSink",
    "NullSink",
    "Percentiles",
    "PolicyRef",
    "RecordFilter",
    "RecordParams",
    "RecoveryNote",
    "ReplayReport",
    "RewardEntry",
    "SealedRecord",
    "StageRecord",
    "StdoutSink",
    "StreamSink",
    "Summary",
    "VerdictSummary",
    "VerifyResult",
    "canonical_json",
    "content_view",
    "default_checkpoint_path",
    "event_dict",
    "expand_logs",
    "filter_records",
    "json_writer",
    "parse_entry",
    "read_checkpoints",
    "read_entries",
    "read_records",
    "new_request_id",
    "record_dict",
    "record_hash",
    "record_line",
    "replay_logs",
    "replay_record",
    "sink_from_config",
    "sink_from_settings",
    "stage_dict",
    "summarize",
    "verify_chain",
    "verify_file",
    "verify_log",
    "worker_logs",
    "write_event",
    "write_record",
]
