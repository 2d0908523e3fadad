"""The audit record of a request the gateway refuses before its guarded call.

Every request to a guarded endpoint leaves exactly one audit record. Once its
guarded call has started, the call writes it (its flow audits every outcome,
an abandoned call included). Before that, the gateway may refuse the request:
an unknown key (401), a shutdown under way (503), too many requests in flight
(429), a body too large (413), a client gone while sending its body (499), a
body OpenAI would refuse (400), a gateway bug (500). :func:`audit_refusal`
writes that request's record: the record a refused call gets in the library
(final action ``block``, no check run, nothing sent upstream), whose error is a
:class:`~guardrail.errors.RequestRefusedError` naming the status, the code and
the message the client got.

Which log: the route's policy's. A 401 has no route (no key chose one) and goes
to the log of ``audit.unauthenticated_policy`` in the gateway config (default:
the first policy listed). The key a client presented is never written: a 401
record names at most the first 8 hex digits of its sha256
(:func:`~guardrail.gateway.keys.key_hint`).
"""

from __future__ import annotations

import contextlib

from guardrail.errors import RequestRefusedError
from guardrail.flow import Trace, refuse
from guardrail.gateway.shapes import ApiError
from guardrail.guard import Guard
from guardrail.secrets import Masker

__all__ = ["audit_refusal"]


async def audit_refusal(
    guard: Guard, mask: Masker, refused: ApiError, *, key: str | None = None
) -> str:
    """Write the one record of a request refused with ``refused``; returns its request id.

    ``key`` is what the record may say of the presented key (a hash prefix, never
    the key). The refusal's headers gain ``x-guardrail-request-id`` and
    ``x-guardrail-action: block``. Raises :class:`~guardrail.errors.AuditError`
    when the record could not be written.
    """
    trace = Trace.begin(guard.policy.execution.mode, mask=mask)
    message = refused.message if key is None else f"{refused.message} (key {key})"
    error = RequestRefusedError(message, status=refused.status, code=refused.code)
    with contextlib.suppress(RequestRefusedError):  # refuse() raises what it audited
        await guard.async_driver().run(refuse(trace, error))
    refused.headers = (
        *refused.headers,
        ("x-guardrail-request-id", trace.request_id),
        ("x-guardrail-action", "block"),
    )
    return trace.request_id
