"""The ``guardrail`` command line.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``,
which registers the subcommand and sets ``func(args) -> int`` on its parser.

Every command follows one exit-status rule (:data:`EXIT_OK`, :data:`EXIT_FINDINGS`,
:data:`EXIT_ERROR`): 0 when it did its work and found nothing wrong, 1 when it
found what it looks for (invalid policies, a broken audit chain, unsafe text
with ``check --exit-code``), 2 for a usage or I/O error (bad flags, an
unreadable file, a missing extra, no model). Errors print one line on stderr,
never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence

from guardrail.errors import GuardrailError

__all__ = ["EXIT_ERROR", "EXIT_FINDINGS", "EXIT_OK", "build_parser", "entrypoint", "main"]

EXIT_OK = 0
"""The command did its work and found nothing wrong."""
EXIT_FINDINGS = 1
"""The command found what it looks for: invalid policies, tampering, unsafe text."""
EXIT_ERROR = 2
"""Usage or I/O error: bad flags, an unreadable file, a missing extra, no model."""

EXIT_STATUS_HELP = (
    "exit status: 0 ok; 1 findings (invalid policies, a broken audit chain, unsafe text "
    "with check --exit-code); 2 usage or I/O error (bad flags, unreadable file, missing "
    "extra, no model)"
)

_SUBCOMMANDS = ("check", "eval", "policy", "audit", "serve")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="guardrail",
        description="Qwen3Guard-Gen safety checks, policies and audit logs.",
        epilog=EXIT_STATUS_HELP,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _SUBCOMMANDS:
        module = importlib.import_module(f"guardrail.cli.{name}_cmd")
        module.add_parser(sub)
    return parser


def error(message: str) -> int:
    """Print ``guardrail: error: message`` on stderr; returns :data:`EXIT_ERROR`."""
    print(f"guardrail: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 findings, 2 usage or I/O error).

    Bad flags make argparse exit with 2 itself; Ctrl-C returns 130.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except GuardrailError as exc:
        return error(str(exc))
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from failing
        # again when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:  # e.g. writing to a full disk
        where = f"{exc.filename}: " if exc.filename else ""
        return error(f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        print("guardrail: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, naming what failed
        return error(f"unexpected {type(exc).__name__}: {exc}")
    return code


def entrypoint() -> None:
    """Console-script entry point."""
    # Text that is not valid Unicode (file names, log content) prints escaped rather
    # than failing the command.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if callable(reconfigure):
            reconfigure(errors="backslashreplace")
    sys.exit(main())
