"""What every ``nvemu`` command shares: number parsing, tables, sizes, the platform options."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Sequence

from ..errors import ConfigError
from ..formats.nfit import platform_from_nfit
from ..machine.config import PRESETS
from ..machine.platform import Platform

_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_NUMBER = re.compile(r"(0x[0-9a-f]+|[0-9]+)\s*(?:([kmgt])(?:i?b)?)?", re.IGNORECASE)
_COUNT = re.compile(r"([0-9][0-9_]*)\s*([kKmMgG]?)")
_DECIMAL = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_number(text: str) -> int:
    """An address or size: decimal or 0x hex, with an optional K/M/G/T (binary) suffix: "0x1000", "256M"."""
    m = _NUMBER.fullmatch(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (decimal or 0x hex, optional K/M/G/T "
                                         f"suffix)")
    digits = m.group(1)
    value = int(digits[2:], 16) if digits[:2].lower() == "0x" else int(digits, 10)
    return value * _SUFFIX[(m.group(2) or "").lower()]


def parse_range(text: str) -> tuple[int, int]:
    """A vNVDIMM as ``BASE:SIZE``, e.g. "0x100000000:256M"."""
    base, sep, size = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not BASE:SIZE")
    return parse_number(base), parse_number(size)


def parse_count(text: str) -> int:
    """A count with an optional decimal suffix: "10M" is 10,000,000, "500k" 500,000."""
    m = _COUNT.fullmatch(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (digits, optional k/M/G = 10^3/10^6/10^9)")
    return int(m.group(1)) * _DECIMAL[m.group(2).lower()]


def format_size(n: int) -> str:
    """Bytes in the largest binary unit that divides them: "256 MiB", "4 KiB", "1,000 B"."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n:,} B"


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Rows as an aligned text table; ``columns`` are (key, header, format)."""
    cells = [[h for _, h, _ in columns]] + [[format(r[k], f) for k, _, f in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fail(err: BaseException, code: int = 1) -> int:
    """Print ``err`` as the one-line error every command gives and return ``code``."""
    print(f"nvemu: error: {err}", file=sys.stderr)
    return code


def read_nfit(path: str) -> bytes:
    """The bytes of the NFIT file ``--nfit`` names; ConfigError when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"cannot read NFIT {path}: {e.strerror or e}") from None


def add_platform_options(p: argparse.ArgumentParser, what: str = "") -> None:
    """``--preset``/``--nfit`` and the VM size options, the same on every command that builds a host."""
    which = p.add_mutually_exclusive_group()
    which.add_argument("--preset", metavar="NAME", default="default", choices=list(PRESETS),
                       help=f"platform preset ({', '.join(PRESETS)}; default: default)")
    which.add_argument("--nfit", metavar="FILE.aml", help="build the platform a binary ACPI NFIT describes")
    p.add_argument("--dram", metavar="SIZE", type=parse_number,
                   help=f"DRAM of each VM{' ' + what if what else ''} (default 256M, less on a small platform)")
    p.add_argument("--nvdimm", metavar="SIZE", type=parse_number,
                   help=f"vNVDIMM of each VM{' ' + what if what else ''} (default 256M, less on a small platform)")


def platform_of(args: argparse.Namespace) -> str | Platform:
    """The platform ``--preset`` names, or the one ``--nfit`` describes."""
    if getattr(args, "nfit", None):
        return platform_from_nfit(read_nfit(args.nfit))
    return args.preset


__all__ = ["add_platform_options", "fail", "format_size", "format_table", "parse_count", "parse_number",
           "parse_range", "platform_of", "read_nfit"]
