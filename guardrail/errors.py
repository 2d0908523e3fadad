"""Every error guardrail raises derives from :class:`GuardrailError`.

The hierarchy::

    GuardrailError
    ├── ConfigurationError            bad arguments or settings given to the SDK
    │   ├── MissingDependencyError    an optional extra is not installed
    │   ├── UnguardedAccessError      a client method that would bypass the guard
    │   └── GatewayConfigError        a gateway config file is invalid (file:line:col)
    ├── InputError                    a conversation the guard cannot judge
    │   └── RequestRefusedError       the gateway refused a request before its guarded call
    ├── ClassifierError               the guard could not produce a verdict
    │   ├── ModelLoadError            a checkpoint could not be found or loaded
    │   ├── VerdictParseError         the guard's output is not a verdict
    │   ├── GuardTimeoutError         no verdict (or reward score) within its deadline
    │   ├── CircuitOpenError          the backend's circuit breaker is open: failed fast
    │   └── RemoteGuardError          a guard server failed
    │       ├── RemoteGuardTimeoutError  the server did not answer in time
    │       │                            (also a GuardTimeoutError)
    │       ├── GuardConnectionError  the server could not be reached
    │       └── GuardHTTPError        the server answered with an error status
    ├── PolicyError                   a policy file or object is invalid
    │   └── CaseFileError             a policy test case file is invalid
    ├── DatasetError                  a labelled evaluation data set is invalid or unreadable
    ├── BlockedError                  the policy blocked a call (carries the decision)
    └── AuditError                    an audit record could not be written or verified

A safety layer never swallows its own failures: a ``ClassifierError`` reaches the
policy, which decides (fail closed by default) and audits the failure.
"""

from __future__ import annotations

from typing import Any


class GuardrailError(Exception):
    """Root of every error raised by guardrail."""


class ConfigurationError(GuardrailError, ValueError):
    """Invalid arguments or settings were given to the SDK."""


class MissingDependencyError(ConfigurationError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{package} is required for this feature: pip install 'guardrail[{extra}]'"
        )


class UnguardedAccessError(ConfigurationError, AttributeError):
    """A wrapped client's method that would return model output without the guard.

    Also an ``AttributeError``, so ``hasattr()`` answers False for such methods.
    """


def _located(
    message: str, where: str, line: int | None, column: int | None, field: str | None
) -> str:
    """``WHERE:LINE:COL: FIELD: message``, with the parts that are known."""
    if line is not None:
        where += f":{line}"
        if column is not None:
            where += f":{column}"
    return f"{where}: {field}: {message}" if field else f"{where}: {message}"


class _LocatedError(Exception):
    """An error in a file, read as ``FILE:LINE:COL: FIELD: problem``.

    ``source`` is the file, ``line``/``column`` are 1-based when known, ``field`` is
    the dotted path of the offending field; ``reason`` is the problem alone.
    """

    _unnamed = "<file>"
    """What ``source`` reads as when the text came from no file."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = message
        self.source = source
        self.line = line
        self.column = column
        self.field = field
        super().__init__(_located(message, source or self._unnamed, line, column, field))


class GatewayConfigError(_LocatedError, ConfigurationError):
    """A gateway config file is invalid.

    ``source`` is the file, ``line``/``column`` are 1-based when known, ``field`` is
    the dotted path of the offending field (``keys[1].policy``).
    """

    _unnamed = "<gateway config>"


class InputError(GuardrailError, ValueError):
    """A conversation cannot be judged (empty, wrong shape, unknown role...).

    ``where`` points at the offending element, e.g. ``messages[2].content[1]``.
    """

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class RequestRefusedError(InputError):
    """The gateway refused a request before its guarded call (bad key, overload, oversize...).

    ``status`` is the HTTP status answered and ``code`` OpenAI's error code, when
    there is one; the message says both. It is what the refusal's audit record
    names: nothing was judged or sent upstream.
    """

    def __init__(self, message: str, *, status: int, code: str | None = None) -> None:
        self.status = status
        self.code = code
        super().__init__(f"HTTP {status}{f' {code}' if code else ''}: {message}")


class ClassifierError(GuardrailError):
    """The guard model could not produce a verdict."""


class ModelLoadError(ClassifierError):
    """A guard or reward checkpoint could not be found or loaded."""


class VerdictParseError(ClassifierError):
    """The guard's output is not a well-formed verdict.

    ``text`` holds the offending output so it can be audited.
    """

    def __init__(self, message: str, *, text: str) -> None:
        self.text = text
        shown = text if len(text) <= 200 else text[:200] + "..."
        super().__init__(f"{message}; guard output was {shown!r}")


class RemoteGuardError(ClassifierError):
    """A guard server failed to answer with a verdict."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        self.url = url
        super().__init__(message)


class GuardTimeoutError(ClassifierError):
    """No verdict (or reward score) arrived within its deadline, local or remote."""


class CircuitOpenError(ClassifierError):
    """A guard or reward backend's circuit breaker is open: the call failed fast, unsent.

    After repeated failures the backend is not called until its cool-down has
    passed (``retry_after_s``, ``None`` while trial calls are under way); the
    policy's failure mode decides the check, as for any guard failure.
    ``backend`` names the breaker (``guard``, ``reward:<model id>``) and ``state``
    is ``open`` or ``half_open``.
    """

    def __init__(
        self, message: str, *, backend: str, state: str, retry_after_s: float | None = None
    ) -> None:
        self.backend = backend
        self.state = state
        self.retry_after_s = retry_after_s
        super().__init__(message)


class RemoteGuardTimeoutError(GuardTimeoutError, RemoteGuardError):
    """A guard or reward server did not answer within the request timeout."""


class GuardConnectionError(RemoteGuardError):
    """The guard server could not be reached."""


class GuardHTTPError(RemoteGuardError):
    """The guard server answered with an error status."""

    def __init__(self, message: str, *, url: str | None = None, status_code: int) -> None:
        self.status_code = status_code
        super().__init__(message, url=url)


class PolicyError(_LocatedError, GuardrailError, ValueError):
    """A policy is invalid.

    ``source`` is the file (or ``<string>``), ``line``/``column`` are 1-based when
    known, ``field`` is the dotted path of the offending field (``rules[2].when.levels``).
    """

    _unnamed = "<policy>"


class CaseFileError(PolicyError):
    """A policy test case file (``guardrail policy test``) is invalid or unreadable.

    Located like :class:`PolicyError`: ``source``, 1-based ``line`` and ``column``,
    and ``field``, the dotted path in the case file (``cases[3].expect.action``).
    """


class DatasetError(GuardrailError, ValueError):
    """A labelled data set (``guardrail eval``) is invalid or cannot be read.

    ``source`` is the file, ``line`` the 1-based line where the offending record
    starts, ``row`` its 1-based data row in a CSV file (the header is not a row),
    ``field`` the offending field or column. The message reads
    ``FILE:LINE: FIELD: problem``, with ``(row N)`` after the line for CSV.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str,
        line: int | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = message
        self.source = source
        self.line = line
        self.row = row
        self.field = field
        where = source if line is None else f"{source}:{line}"
        if row is not None:
            where += f" (row {row})"
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


class BlockedError(GuardrailError):
    """The policy blocked the call.

    ``decision`` says which rule, stage and verdict; ``report`` (a
    :class:`~guardrail.report.GuardReport`, when raised by a guarded call) holds
    every check and the ``request_id`` of the call's audit record.
    """

    def __init__(self, message: str, *, decision: Any, report: Any = None) -> None:
        self.decision = decision
        self.report = report
        super().__init__(message)


class AuditError(GuardrailError):
    """An audit record could not be written, read or verified."""
