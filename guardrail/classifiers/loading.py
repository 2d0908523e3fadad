"""Loading helpers shared by every local model (guards and reward scorers).

Nothing here imports torch or transformers at import time: :func:`import_backend`
does, when a model is built. Every load failure becomes a one-line
:class:`~guardrail.errors.ModelLoadError` that says where the checkpoint was looked
for and how to fix it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from guardrail.errors import ConfigurationError, MissingDependencyError, ModelLoadError

__all__ = [
    "ModelSource",
    "default_dtype",
    "import_backend",
    "offline_env",
    "one_line",
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

    @classmethod
    def resolve(
        cls,
        name: str,
        revision: str | None,
        local_files_only: bool,
        *,
        what: str = "a checkpoint",
        hint: str = "Point model= at a local directory holding the checkpoint",
    ) -> ModelSource:
        """Classify ``name`` as a local directory or a Hub id (a missing path fails here)."""
        path = os.path.expanduser(name)
        is_dir = os.path.isdir(path)
        if not is_dir and (os.path.isabs(path) or name.startswith((".", "~"))):
            raise ModelLoadError(f"model directory {name!r} does not exist")
        return cls(name, path, is_dir, local_files_only or offline_env(), revision, what, hint)

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
        why = "offline mode is on and it is not cached locally" if self.offline else None
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
