"""What every ``nvemu`` command shares: number parsing, tables, sizes, the platform options."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from typing import IO, Any, Iterable, Iterator, Sequence

from tabulate import tabulate

from .._files import atomic_write, check_output_dir, check_output_file
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


def _int(text: str, lo: int, what: str) -> int:
    try:
        value = int(text.replace("_", ""), 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < lo:
        raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    return _int(text, 1, "at least 1")


def non_negative_int(text: str) -> int:
    """An integer >= 0 (argparse type)."""
    return _int(text, 0, "0 or more")


def format_size(n: int) -> str:
    """Bytes in the largest binary unit that divides them: "256 MiB", "4 KiB", "1,000 B"."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n:,} B"


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Rows as an aligned text table (tabulate's ``simple`` style); ``columns`` are (key, header,
    format spec). The first column is left-aligned, the others right-aligned; a missing or None
    cell prints empty."""
    def cell(v: object, f: str) -> str:
        if v is None or v == "":
            return ""
        try:
            return format(v, f)
        except (TypeError, ValueError):
            return str(v)
    body = [[cell(r.get(k), f) for k, _, f in columns] for r in rows]
    return tabulate(body, headers=[h for _, h, _ in columns], tablefmt="simple", disable_numparse=True,
                    colalign=["left"] + ["right"] * (len(columns) - 1))


def fail(err: BaseException, code: int = 1) -> int:
    """Print ``err`` as the one-line error every command gives and return ``code``."""
    if isinstance(err, OSError) and err.filename:
        text = f"{err.filename}: {err.strerror or err}"
    else:
        text = str(err)
    print(f"nvemu: error: {' '.join(text.split())}", file=sys.stderr)
    return code


def check_outputs(outputs: Iterable[str | None], inputs: Iterable[str | None] = ()) -> None:
    """Refuse, before any work, output files that cannot be written or would overwrite an input
    (``-`` is stdout and always fine). Raises ConfigError, which the CLI prints as one line."""
    inputs = [i for i in inputs if i]
    for path in outputs:
        if path and path != "-":
            check_output_file(path, inputs)


def check_output_directory(path: str, inputs: Iterable[str | None] = ()) -> None:
    """Refuse, before any work, an output directory that cannot be created or written."""
    check_output_dir(path, [i for i in inputs if i])


def write_output(path: str, text: str) -> None:
    """``text`` to ``path`` (written whole under a temporary name, then renamed), or to stdout for ``-``."""
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


@contextlib.contextmanager
def progress_bar(total: int | None, enabled: bool | None, desc: str, unit: str = "op") -> Iterator[Any]:
    """A tqdm bar on stderr (``enabled`` None: only when stderr is a terminal); a disabled bar
    still takes ``update()`` calls, so callers need no branches."""
    from tqdm import tqdm
    if enabled is None:
        enabled = sys.stderr.isatty()
    bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr, disable=not enabled,
               mininterval=0.5, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def add_progress_option(p: argparse.ArgumentParser) -> None:
    """``--progress/--no-progress``: the same switch on every long-running command."""
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar on stderr (default: only when stderr is a terminal)")


def add_pmemcheck_options(p: argparse.ArgumentParser) -> None:
    """``--skip-unregistered`` and ``--deep-flush``: how a pmemcheck log becomes a trace, the same
    wherever one is read (import, replay, check)."""
    p.add_argument("--skip-unregistered", action="store_true",
                   help="pmemcheck only (an error on other traces): drop records outside every registered file "
                        "instead of failing (default: off)")
    p.add_argument("--deep-flush", action="store_true",
                   help="pmemcheck only (an error on other traces): write the vFHA (and fence) after every fence "
                        "that closes a flush (default: off)")


def add_quiet_option(p: argparse.ArgumentParser, verbose: str | None = None) -> None:
    """``-q/--quiet`` (no report, only errors and requested files) and, where there is more to
    say, ``-v/--verbose``."""
    p.add_argument("-q", "--quiet", action="store_true", help="print no report, only errors (default: off)")
    if verbose:
        p.add_argument("-v", "--verbose", action="store_true", help=f"{verbose} (default: off)")


def report_stream(*outputs: str | None) -> IO[str]:
    """Where a command's human-readable report goes: stderr when any output is ``-`` (stdout then
    carries only the machine-readable data), else stdout."""
    return sys.stderr if "-" in outputs else sys.stdout


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
    which.add_argument("--nfit", metavar="FILE.aml",
                       help="build the platform a binary ACPI NFIT describes (default: none, the --preset platform)")
    p.add_argument("--dram", metavar="SIZE", type=parse_number,
                   help=f"DRAM of each VM{' ' + what if what else ''}, bytes with K/M/G suffixes (default 256M, "
                        f"less on a small platform)")
    p.add_argument("--nvdimm", metavar="SIZE", type=parse_number,
                   help=f"vNVDIMM of each VM{' ' + what if what else ''}, bytes with K/M/G suffixes (default 256M, "
                        f"less on a small platform)")


def platform_of(args: argparse.Namespace) -> str | Platform:
    """The platform ``--preset`` names, or the one ``--nfit`` describes."""
    if getattr(args, "nfit", None):
        return platform_from_nfit(read_nfit(args.nfit))
    return args.preset


__all__ = ["non_negative_int", "positive_int", "add_platform_options", "add_pmemcheck_options",
           "add_progress_option", "add_quiet_option",
           "progress_bar", "check_output_directory", "check_outputs", "fail", "report_stream", "write_output",
           "format_size", "format_table", "parse_count", "parse_number", "parse_range", "platform_of", "read_nfit"]
