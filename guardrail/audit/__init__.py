"""Audit logs: one tamper-evident record per guarded call, and the tools to review them.

The engine builds a record and hands it to a sink::

    record = AuditRecord.build(policy=..., stages=[prompt_decision, response_decision], ...)
    sink.write(record)  # raises AuditError if it was not written

or, skipping the model (what the engine does for the built-in sinks)::

    data = record_dict(policy=..., stages=[prompt_decision, response_decision], ...)
    sink.write_json(data)  # data == AuditRecord.build(...).to_json_dict()

- :mod:`~guardrail.audit.record`: the record model and :func:`content_view`;
- :mod:`~guardrail.audit.chain`: the hash chain and :func:`verify_chain`;
- :mod:`~guardrail.audit.sinks`: JSONL file, stdout, app logger and null sinks;
- :mod:`~guardrail.audit.reader`: reading, searching, summarising and verifying files.
"""

from __future__ import annotations

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
    CONTENT_MODES,
    SCHEMA_VERSION,
    AuditRecord,
    ContentMode,
    ContentRecord,
    DecisionSummary,
    ErrorEntry,
    ErrorInfo,
    Latency,
    PolicyRef,
    RewardEntry,
    StageRecord,
    VerdictSummary,
    content_view,
    record_dict,
    stage_dict,
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
