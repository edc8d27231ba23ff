"""The ``peftatlas`` command line. Subcommands live in :mod:`peftatlas.commands`, one module each.

A subcommand module defines ``add_parser(subparsers) -> None`` that registers its parser and sets
``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys
import threading

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peftatlas",
        description="Parameter-efficient fine-tuning methods as measured hypotheses about weight geometry.",
    )
    parser.add_argument("--version", action="version", version=f"peftatlas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    stop_on_sigterm = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if stop_on_sigterm else None
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted; finished work is kept (rerun the same command to resume)", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as e:  # user errors: one clear line, no traceback
        print(f"peftatlas: error: {e}", file=sys.stderr)
        return 2
    finally:
        if stop_on_sigterm:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (``kill``, a scheduler, the end of a working window) stops a command the way Ctrl-C does:
    runs in flight finish, ``--ship`` exports once more, the store stays consistent. A shell starts
    background jobs with SIGINT ignored, so for a command started with ``&`` this is the way to stop it
    cleanly; SIGKILL still loses only the runs in flight."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
