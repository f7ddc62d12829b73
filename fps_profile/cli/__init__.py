"""The ``fps-profile`` command line: thin subcommands over the library.

Every user error ends as one line on stderr (``fps-profile: error: ...``) and
exit status 2; ``--debug`` shows the traceback instead. Ctrl-C (exit 130) and
SIGTERM (exit 143) both unwind normally, so a sweep stops the measurements it
started before it exits.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading

from fps_profile import __version__
from fps_profile.errors import SelectorError, UserError

# Subcommands are the modules ``fps_profile/cli/<name>_cmd.py``; this is their help order.
ORDER = ("sweep", "select", "scope", "overlap", "plot", "report", "frontier", "explain", "gate", "list")


def subcommands() -> list[str]:
    import pkgutil

    found = [m.name[:-4] for m in pkgutil.iter_modules(__path__) if m.name.endswith("_cmd")]
    return sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def _load(name: str):
    import importlib

    return importlib.import_module(f"fps_profile.cli.{name}_cmd")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line too (no usage dump), exit status 2.

    A value that starts with a minus and a digit (``--memory-budget -8GiB``, ``--timeout -5``) is
    taken as the option's value, so its own check says what is wrong with it, instead of argparse's
    "expected one argument" (no option of fps-profile looks like a negative number).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?[0-9]")

    def error(self, message: str):
        where = self.prog.removeprefix("fps-profile").strip()
        print(f"fps-profile: error: {where + ': ' if where else ''}{message} (see 'fps-profile "
              f"{where + ' ' if where else ''}--help')", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fps-profile",
        description="Measure what parameter selection for fine-tuning really costs "
        "(peak memory and wall time of FPS, GPS and other selectors).",
        epilog="Run 'fps-profile COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"fps-profile {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in subcommands():
        _load(name).add_parser(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that clean-up runs as it does for Ctrl-C."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fps-profile`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        status = int(args.run(args) or 0)
        sys.stdout.flush()  # a closed pipe fails here, not in the interpreter's exit
        return status
    except UserError as exc:
        if args.debug:
            raise
        hint = " (fps-profile --debug ... shows its traceback)" if isinstance(exc, SelectorError) else ""
        print(f"fps-profile: error: {exc}{hint}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (``fps-profile ... | head``): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"fps-profile: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
