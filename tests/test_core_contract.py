"""The core's C enums (nvemu/_core.pxd) agree with the Python constants; CI can't pass on the
pure-Python fallback by accident."""

import importlib
import os
import re
from pathlib import Path

import pytest

import nvemu
from nvemu import _constants as c

from conftest import needs_compiled

PXD = Path(nvemu.__file__).with_name("_core.pxd").read_text()


def enum_block(first: str) -> list[str]:
    """Names of the enum whose first member is ``first``, in order."""
    start = PXD.index(first)
    block = PXD[start:PXD.index("\n\n", start)]
    return re.findall(r"^\s+([A-Z_]+)", "    " + block, re.M)


def test_stat_enum_matches_stat_names():
    names = enum_block("ST_LOADS = 0")
    assert names[-1] == "ST_COUNT"
    assert [n[3:].lower() for n in names[:-1]] == list(c.STAT_NAMES)


def test_clock_enum_and_timing_struct_match():
    names = enum_block("CK_NOW = 0")
    first_buffer = c.CLOCK["fill0"]                 # CK_FILL names the first of MAX_FILL_BUFFERS words
    assert [n[3:].lower() for n in names[:-1]] == [*c.CLOCK_FIELDS[:first_buffer], "fill"]
    assert len(c.CLOCK_FIELDS) == first_buffer + c.MAX_FILL_BUFFERS
    assert f"MAX_FILL_BUFFERS = {c.MAX_FILL_BUFFERS}" in PXD
    start = PXD.index("cdef struct timing_t:")
    fields = re.findall(r"^    uint64_t (\w+)", PXD[start:PXD.index("\n\n", start)], re.M)
    assert fields == list(c.TIMING_FIELDS)


def test_ctrl_stat_enum_matches():
    names = enum_block("CT_ENQUEUED = 0")
    assert [n[3:].lower() for n in names[:-1]] == list(c.CTRL_STAT_NAMES)


@pytest.mark.parametrize("prefix, enum", [("OP_", c.Op), ("LINE_", c.LineState), ("DOMAIN_", c.Domain),
                                          ("FHA_", c.FhaMode), ("EXIT_", c.ExitReason),
                                          ("RUN_", c.RunStatus), ("BAD_", c.BadRecord)])
def test_enum_values(prefix, enum):
    found = dict(re.findall(rf"^\s+{prefix}([A-Z_]+) = (\d+)", PXD, re.M))
    assert {k: int(v) for k, v in found.items()} == {m.name: int(m) for m in enum}


def test_trace_dtype_is_24_packed_bytes():
    assert nvemu.TRACE_DTYPE.itemsize == 24
    assert [nvemu.TRACE_DTYPE.fields[n][1] for n in ("op", "vcpu", "vm", "size", "gpa", "value")] == \
        [0, 1, 2, 4, 8, 16]


def test_backend_is_compiled():
    if os.environ.get("NVEMU_REQUIRE_COMPILED") == "1":
        assert nvemu.COMPILED, "CI asked for the compiled core but nvemu runs on the reference model"
        from nvemu.tools.checker import COMPILED_MODEL
        assert COMPILED_MODEL, "CI asked for the compiled core but the checker runs its plain-Python model"
    if os.environ.get("NVEMU_REQUIRE_PURE") == "1":             # CI's pure install: no extension at all
        assert not nvemu.COMPILED and nvemu.BACKEND == "reference"
        for name in ("_core", "_checkcore"):
            assert not list(Path(nvemu.__file__).parent.glob(f"{name}*.so")), f"the pure install built {name}"
            with pytest.raises(ImportError):
                importlib.import_module(f"nvemu.{name}")
    if nvemu.COMPILED:
        from nvemu import _core
        assert _core.STAT_COUNT == len(c.STAT_NAMES) and _core.CAPI_VERSION == 5


@needs_compiled("compares the compiled Engine with the reference one")
def test_both_engines_offer_the_same_methods_and_the_stub_lists_them():
    from nvemu import _core, _reference
    stub = Path(nvemu.__file__).with_name("_core.pyi").read_text()
    properties = set(re.findall(r"@property\n    def (\w+)\(", stub))
    listed = set(re.findall(r"def (\w+)\(", stub)) - {"__init__"} - properties

    def methods(cls):
        return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}
    assert methods(_core.Engine) == methods(_reference.Engine) == listed
    assert properties == {"tables_in_use", "last_exit", "chunk_bytes"}
    assert all(hasattr(_core.Engine, p) and hasattr(_reference.Engine, p) for p in properties)
