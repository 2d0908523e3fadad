"""Audit logs: one tamper-evident record per guarded call, and the tools to review them.

A guarded call's record is derived as its JSON dict (:func:`guardrail.flow.audit_record`)
and handed to a sink::

    data = record_dict(policy=..., stages=[prompt_decision, response_decision], ...)
    sink.write_json(data)  # raises AuditError if it was not written

or, for sinks that take models, the same dict validated::

    record = AuditRecord.build(policy=..., stages=[prompt_decision, response_decision], ...)
    sink.write(record)  # record.to_json_dict() == data

- :mod:`~guardrail.audit.params`: :class:`RecordParams`, the parameters of a record;
- :mod:`~guardrail.audit.build`: the write side, :func:`record_dict` and :func:`content_view`;
- :mod:`~guardrail.audit.record`: the read side, :class:`AuditRecord` and its parts;
- :mod:`~guardrail.audit.chain`: the hash chain and :func:`verify_chain`;
- :mod:`~guardrail.audit.sinks`: JSONL file, stdout, app logger and null sinks;
- :mod:`~guardrail.audit.reader`: reading, searching, summarising and verifying files.
"""

from __future__ import annotations

from guardrail.audit.build import SCHEMA_VERSION, content_view, record_dict, stage_dict
from guardrail.audit.chain import (
    GENESIS_HASH,
    ChainProblem,
    HashChain,
    SealedRecord,
    VerifyResult,
    canonical_json,
    record_hash,
    record_line,
    verify_chain,
)
from guardrail.audit.params import CONTENT_MODES, ContentMode, RecordParams
from guardrail.audit.reader import (
    AuditFileError,
    Percentiles,
    RecordFilter,
    Summary,
    filter_records,
    read_records,
    summarize,
    verify_file,
)
from guardrail.audit.record import (
    AuditRecord,
    ContentRecord,
    DecisionSummary,
    ErrorEntry,
    ErrorInfo,
    Latency,
    PolicyRef,
    RewardEntry,
    StageRecord,
    VerdictSummary,
)
from guardrail.audit.sinks import (
    AUDIT_EVENT,
    AuditSink,
    JsonlSink,
    LoggerSink,
    NullSink,
    StdoutSink,
    StreamSink,
    json_writer,
    sink_from_settings,
)

__all__ = [
    "AUDIT_EVENT",
    "CONTENT_MODES",
    "GENESIS_HASH",
    "SCHEMA_VERSION",
    "AuditFileError",
    "AuditRecord",
    "AuditSink",
    "ChainProblem",
    "ContentMode",
    "ContentRecord",
    "DecisionSummary",
    "ErrorEntry",
    "ErrorInfo",
    "HashChain",
    "JsonlSink",
    "Latency",
    "LoggerSink",
    "NullSink",
    "Percentiles",
    "PolicyRef",
    "RecordFilter",
    "RecordParams",
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
    "filter_records",
    "json_writer",
    "read_records",
    "record_dict",
    "record_hash",
    "record_line",
    "sink_from_settings",
    "stage_dict",
    "summarize",
    "verify_chain",
    "verify_file",
]
