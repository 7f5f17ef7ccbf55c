"""The ``nvemu`` command line: one module per command group, this one puts them together."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .._backend import BACKEND
from .._version import __version__
from ..errors import NvemuError
from . import bench, check, demo, nfit, trace


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nvemu", description="Emulates hypervisor virtualization of NVDIMM WPQ flushing.")
    parser.add_argument("--version", action="version", version=f"nvemu {__version__} ({BACKEND})")
    sub = parser.add_subparsers(dest="command", required=True)

    demo.add_commands(sub)
    nfit.add_commands(sub)
    trace.add_commands(sub)
    bench.add_commands(sub)
    check.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except NvemuError as e:
        print(f"nvemu: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
