"""The ``nvemu`` command line: one module per command group, this one puts them together.

Every error ends the command with one line on stderr and a non-zero status, whatever raised it:
2 for bad input (argument errors and :class:`~nvemu.errors.NvemuError`), 1 for a file that cannot
be read or written, 1 for anything unexpected (``--debug`` shows its traceback), 130 for an
interrupt. A closed stdout pipe (``nvemu demo | head -1``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import traceback
from typing import Any, NoReturn, Sequence

from .._backend import BACKEND
from .._version import __version__
from ..errors import NvemuError
from . import bench, check, demo, nfit, timing, trace


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``nvemu gen: error: ... (nvemu gen --help)``; no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole ``nvemu`` parser, one subcommand per command (also what the docs' CLI reference
    is generated from)."""
    parser = Parser(prog="nvemu", description="Emulates hypervisor virtualization of NVDIMM WPQ flushing.")
    parser.add_argument("--version", action="version", version=f"nvemu {__version__} ({BACKEND})")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo.add_commands(sub)
    nfit.add_commands(sub)
    trace.add_commands(sub)
    bench.add_commands(sub)
    check.add_commands(sub)
    timing.add_commands(sub)
    for command in sub.choices.values():          # --debug also after the command's name
        _add_debug(command)
    return parser


def _add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the Python traceback of an error instead of one line")
    for action in p._actions:                     # nested commands (nvemu nfit info ...)
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_debug(child)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _quiet_broken_pipe() -> int:
    """stdout's reader went away: point stdout at /dev/null so the interpreter's final flush does
    not raise again, and end as ``head`` expects (status 141 = 128 + SIGPIPE, as a shell reports)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return 128 + getattr(signal, "SIGPIPE", 13)


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM ends the command like Ctrl-C, so half-written outputs are discarded on the way out."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``nvemu`` command; returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = " ".join(["nvemu", *(shlex.quote(a) for a in argv)])
    debug = args.debug or os.environ.get("NVEMU_DEBUG") == "1"
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:                         # not the main thread: leave signals alone
        pass
    try:
        status = args.func(args)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        print("nvemu: interrupted (no partial output files left)", file=sys.stderr)
        return 130
    except NvemuError as e:
        if debug:
            traceback.print_exc()
        print(f"nvemu: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        if debug:
            traceback.print_exc()
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"nvemu: error: {where}{e.strerror or _one_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the CLI's promise: one line, whatever raised
        if debug:
            traceback.print_exc()
        print(f"nvemu: error: unexpected {type(e).__name__}: {_one_line(e)} (nvemu --debug "
              f"{args.command} ... shows the traceback)", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
