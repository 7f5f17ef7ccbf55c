"""The ``nvemu nfit`` subcommands: inspect a binary NFIT, write a preset's host NFIT, write a VM's.

The main CLI calls :func:`add_commands` with its subparsers and later ``args.func(args)``; each
handler returns the exit code (0 ok, 1 file not readable/writable, 2 malformed table or arguments
nvemu cannot build a table from).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..formats import nfit
from ..machine.config import DOMAINS, PRESETS, preset
from ..errors import NvemuError
from .common import fail, format_size, parse_number, parse_range

def _hex_list(values: list[int]) -> str:
    return ", ".join(f"{v:#x}" for v in values) if values else "none"


def format_info(info: dict[str, Any]) -> str:
    """The human-readable form of :func:`nvemu.formats.nfit.discover`'s summary."""
    lines = [f"NFIT: {info['length']} bytes, revision {info['revision']}, OEM {info['oem_id']!r} "
             f"{info['oem_table_id']!r} rev {info['oem_revision']}"]
    caps = info["capabilities"]
    how = ("no platform capabilities structure" if caps is None else
           f"capabilities {caps['raw']:#x}, highest valid bit {caps['highest_valid']}, "
           f"effective {caps['effective']:#x}")
    lines.append(f"persistence domain: {info['persistence_domain']} ({how})")
    sets = info["interleave_sets"]
    flushing = sum(s["wpq_flush"] for s in sets)
    lines.append(f"WPQ flushing: {flushing} of {len(sets)} interleave sets (a set supports it when one of "
                 f"its NVDIMMs lists a flush hint, as Linux's nvdimm_has_flush decides)")
    lines.append(f"SPA ranges: {len(info['spa_ranges'])}")
    for s in info["spa_ranges"]:
        lines.append(f"  {s['index']:>3}  {s['base']:#014x}  {format_size(s['length']):>9}  {s['type']}")
    lines.append(f"memory controllers: {len(info['controllers'])}")
    for c in info["controllers"]:
        lines.append(f"  node {c['node']} socket {c['socket']} imc {c['imc']}: "
                     f"flush hints {_hex_list(c['flush_hints'])}")
    lines.append(f"NVDIMMs: {len(info['nvdimms'])}")
    for d in info["nvdimms"]:
        lines.append(f"  handle {d['handle']:#06x} (node {d['node']} socket {d['socket']} imc {d['imc']} "
                     f"channel {d['channel']} dimm {d['dimm']}): {format_size(d['size'])}, "
                     f"flush hints {_hex_list(d['flush_hints'])}"
                     + ("" if d["armed"] else "; flush failed or not armed: no ADR guarantee"))
    lines.append(f"interleave sets: {len(info['interleave_sets'])}")
    for s in info["interleave_sets"]:
        lines.append(f"  range {s['spa_index']} at {s['base']:#x}: {len(s['nvdimms'])}-way, "
                     f"granularity {format_size(s['granularity'])}, NVDIMMs {_hex_list(s['nvdimms'])}, "
                     f"WPQ flush {'yes' if s['wpq_flush'] else 'no'}")
    if not info["modelable"]:
        lines.append(f"nvemu cannot model this platform: {info['model_error']}")
    for w in info["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    """``nfit info FILE [--json]``: what capability discovery finds in a binary NFIT."""
    try:
        with open(args.file, "rb") as f:
            data = f.read()
    except OSError as e:
        return fail(e, 1)
    try:
        info = nfit.discover(data)
    except NvemuError as e:
        return fail(e, 2)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _write(path: str, table: nfit.Nfit) -> int:
    data = table.to_bytes()
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        return fail(e, 1)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """``nfit build --preset NAME -o FILE``: the host NFIT of a built-in platform preset."""
    try:
        table = nfit.nfit_from_platform_config(preset(args.preset))
    except NvemuError as e:
        return fail(e, 2)
    return _write(args.output, table)


def cmd_vm(args: argparse.Namespace) -> int:
    """``nfit vm --nvdimm BASE:SIZE ... [--vfha GPA] [--domain D] -o FILE``: a VM's virtual NFIT."""
    try:
        table = nfit.virtual_nfit(args.nvdimm, args.vfha, args.domain)
    except NvemuError as e:
        return fail(e, 2)
    return _write(args.output, table)


def add_commands(subparsers: Any) -> None:
    """Add the ``nfit`` command (with ``info``, ``build`` and ``vm``) to an argparse subparsers object."""
    p = subparsers.add_parser("nfit", help="inspect or write ACPI NFIT tables",
                              description="Inspect a binary ACPI NFIT or write the NFIT of a platform or VM.")
    sub = p.add_subparsers(dest="nfit_command", metavar="COMMAND", required=True)

    info = sub.add_parser("info", help="show what capability discovery finds in a binary NFIT")
    info.add_argument("file", metavar="FILE", help="binary NFIT, e.g. /sys/firmware/acpi/tables/NFIT")
    info.add_argument("--json", action="store_true", help="print a JSON object")
    info.set_defaults(func=cmd_info)

    bld = sub.add_parser("build", help="write the host NFIT of a built-in platform preset")
    bld.add_argument("--preset", metavar="NAME", default="default", choices=list(PRESETS),
                     help=f"platform preset ({', '.join(PRESETS)}; default: default)")
    bld.add_argument("-o", "--output", metavar="FILE", required=True, help="where to write the table")
    bld.set_defaults(func=cmd_build)

    vm = sub.add_parser("vm", help="write the virtual NFIT a VM sees")
    vm.add_argument("--nvdimm", metavar="BASE:SIZE", type=parse_range, action="append", required=True,
                    help="a vNVDIMM's guest-physical base and size (0x hex, K/M/G suffixes); repeatable")
    vm.add_argument("--vfha", metavar="GPA", type=parse_number, default=None,
                    help="guest-physical address of the virtual flush hint (default: none, a VM without "
                         "flush hints)")
    vm.add_argument("--domain", choices=DOMAINS, default="adr",
                    help="persistence domain to advertise (default adr)")
    vm.add_argument("-o", "--output", metavar="FILE", required=True, help="where to write the table")
    vm.set_defaults(func=cmd_vm)
