"""Loading helpers shared by every local model (guards and reward scorers).

Nothing here imports torch or transformers at import time: :func:`import_backend`
does, when a model is built. Every load failure becomes a one-line
:class:`~guardrail.errors.ModelLoadError` that says where the checkpoint was looked
for and how to fix it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import threading
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from guardrail.errors import ConfigurationError, MissingDependencyError, ModelLoadError

__all__ = [
    "ModelSource",
    "default_dtype",
    "hub_endpoint",
    "hub_reachable",
    "import_backend",
    "offline_env",
    "one_line",
    "quiet_backend",
    "require_pinned_revision",
    "resolve_device",
]

_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


def import_backend() -> tuple[Any, Any]:
    """Import and return ``(torch, transformers)``; a missing one names the ``local`` extra."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        name = exc.name if exc.name in ("transformers", "tokenizers") else "torch"
        raise MissingDependencyError(name, "local") from exc
    return torch, transformers


def offline_env() -> bool:
    """Whether ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set, read at each load."""
    # huggingface_hub reads these once at import; read them per load so a later
    # setting still keeps the load off the network.
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


_PROBE_TIMEOUT_S = 1.0
"""How long the Hub probe waits for a connection before calling the Hub unreachable."""


def hub_endpoint() -> str:
    """The Hub's base URL as huggingface_hub uses it (``HF_ENDPOINT``, else huggingface.co)."""
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except ImportError:  # no huggingface_hub: only local directories can load anyway
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(endpoint: str | None = None, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub (or the proxy in front of it) opens in ``timeout`` s.

    One sub-second probe instead of huggingface_hub's retries, which spend close to a
    minute on a machine without network before failing. Name resolution has no
    timeout of its own, so the probe runs on a daemon thread that is not waited for
    past ``timeout``.
    """
    parts = urllib.parse.urlsplit(endpoint or hub_endpoint())
    host = parts.hostname
    if not host:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        via = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        if via.hostname:
            host, port = via.hostname, via.port or 8080
    answer: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answer.append(True)
        except OSError:
            answer.append(False)

    probe = threading.Thread(target=attempt, name="guardrail-hub-probe", daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(answer and answer[0])


@contextlib.contextmanager
def quiet_backend() -> Iterator[None]:
    """Keep third-party chatter out of the output while the block runs (the CLI, the demo).

    Warnings (transformers' FutureWarnings and the like), transformers and
    huggingface_hub logs below errors, and progress bars ("Loading weights") are
    switched off, then restored on exit. A ``TRANSFORMERS_VERBOSITY`` or
    ``HF_HUB_DISABLE_PROGRESS_BARS`` the user set is kept. Library code never uses it.
    """
    env = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    saved_env = {name: os.environ.get(name) for name in env}
    hub_logger = logging.getLogger("huggingface_hub")
    saved_level = hub_logger.level
    before = _backend_output_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, value in env.items():  # read by the libraries when they are imported...
            os.environ.setdefault(name, value)
        hub_logger.setLevel(logging.ERROR)
        _set_backend_output(None, quiet=True)  # ...and set directly where imported
        try:
            yield
        finally:
            for name, old in saved_env.items():
                if old is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = old
            hub_logger.setLevel(saved_level)
            _set_backend_output(before)


_OutputState = tuple[int, bool] | None
"""transformers' verbosity and whether its progress bars show; None: not imported."""


def _transformers_logging() -> Any:
    """The logging module of transformers where it is imported, else None."""
    if "transformers" not in sys.modules:
        return None
    from transformers.utils import logging as transformers_logging

    return transformers_logging


def _backend_output_state() -> _OutputState:
    tl = _transformers_logging()
    return None if tl is None else (tl.get_verbosity(), bool(tl.is_progress_bar_enabled()))


def _set_backend_output(state: _OutputState, quiet: bool = False) -> None:
    """Quiet transformers or restore ``state`` (its defaults when it was not imported yet).

    Its progress-bar switch also switches huggingface_hub's.
    """
    tl = _transformers_logging()
    if tl is None:
        return
    verbosity, bars = (logging.ERROR, False) if quiet else (state or (logging.WARNING, True))
    tl.set_verbosity(verbosity)
    if bars:
        tl.enable_progress_bar()
    else:
        tl.disable_progress_bar()


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, shortened to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def default_dtype(torch: Any, device: Any) -> str:
    """fp32 on CPU, bf16 on GPUs that support it, else fp16."""
    if device.type != "cuda":
        return "float32"  # CPUs without native bf16 run bf16 far slower than fp32
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def resolve_device(torch: Any, device: str | None) -> tuple[str, Any]:
    """``(name, torch.device)``: the given device, else ``cuda`` when available, else ``cpu``."""
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return name, torch.device(name)
    except RuntimeError as exc:
        raise ConfigurationError(f"invalid device {device!r}: {one_line(exc)}") from exc


def require_pinned_revision(trust_remote_code: bool, revision: str | None) -> None:
    """Refuse ``trust_remote_code`` unless ``revision`` is a full 40-hex commit sha.

    Running a model repository's code is a security decision: it must be the code
    that was reviewed, not whatever the branch points at today.
    """
    if trust_remote_code and not (revision and _COMMIT_SHA.fullmatch(revision)):
        raise ConfigurationError(
            "trust_remote_code=True needs revision= pinned to a 40-character commit sha "
            f"(got {revision!r}): remote code must be the code that was reviewed"
        )


@dataclass(frozen=True)
class ModelSource:
    """Where a checkpoint is loaded from, and how to explain a failure in one line.

    ``what`` names the checkpoint in messages (``a Qwen3Guard-Gen checkpoint``);
    ``hint`` is the advice appended when the Hub cannot provide it.
    """

    name: str
    path: str
    is_dir: bool
    offline: bool
    revision: str | None
    what: str = "a checkpoint"
    hint: str = "Point model= at a local directory holding the checkpoint"
    unreachable: bool = False
    """The Hub did not answer the probe: the checkpoint is loaded from the cache only."""

    @classmethod
    def resolve(
        cls,
        name: str,
        revision: str | None,
        local_files_only: bool,
        *,
        what: str = "a checkpoint",
        hint: str = "Point model= at a local directory holding the checkpoint",
        probe: Callable[[], bool] = hub_reachable,
    ) -> ModelSource:
        """Classify ``name`` as a local directory or a Hub id (a missing path fails here).

        For a Hub id, unless offline mode is on, ``probe`` checks once that the Hub
        can be reached; when it cannot, the load is offline (the local cache only)
        rather than a minute of connection retries.
        """
        path = os.path.expanduser(name)
        is_dir = os.path.isdir(path)
        if not is_dir and (os.path.isabs(path) or name.startswith((".", "~"))):
            raise ModelLoadError(f"model directory {name!r} does not exist")
        offline = local_files_only or offline_env()
        unreachable = not is_dir and not offline and not probe()
        return cls(name, path, is_dir, offline or unreachable, revision, what, hint, unreachable)

    def load(self, auto_class: Any, **options: Any) -> Any:
        """``auto_class.from_pretrained`` with any failure turned into a ModelLoadError."""
        try:
            return auto_class.from_pretrained(
                self.path, revision=self.revision, local_files_only=self.offline, **options
            )
        except Exception as exc:  # transformers and the hub raise many types; all mean "not loaded"
            raise self.error(exc) from exc

    def error(self, exc: BaseException) -> ModelLoadError:
        """The one-line ModelLoadError for a failed load of this source."""
        if self.is_dir:
            return ModelLoadError(
                f"could not load {self.what} from directory {self.name!r} "
                f"(it needs config.json, the weights and the tokenizer files): {one_line(exc)}"
            )
        why = None
        if self.unreachable:
            host = urllib.parse.urlsplit(hub_endpoint()).netloc
            why = f"{host} cannot be reached and it is not cached locally"
        elif self.offline:
            why = "offline mode is on and it is not cached locally"
        return ModelLoadError(
            f"could not fetch {self.name!r} from the Hugging Face Hub "
            f"({why or one_line(exc)}). {self.hint}"
        )

    def file(self, filename: str) -> str | None:
        """Local path of one file of the checkpoint (downloaded if allowed), ``None`` if absent."""
        if self.is_dir:
            candidate = os.path.join(self.path, filename)
            return candidate if os.path.isfile(candidate) else None
        from transformers.utils.hub import cached_file

        try:
            found = cached_file(
                self.path,
                filename,
                revision=self.revision,
                local_files_only=self.offline,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        except Exception as exc:  # hub errors of every kind: the file cannot be read
            raise self.error(exc) from exc
        return str(found) if found else None
