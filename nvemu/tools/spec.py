"""What a sweep or fleet file may say, checked whole before any task runs.

The sweep and fleet files are TOML; :mod:`pydantic` models state every key's type, range and
allowed names, so a file with ``wpq_depth = "sixteen"`` or ``workloads = ["nosuch"]`` fails at
once with one line naming the key, instead of deep inside a worker. (pydantic, rather than
hand-written checks: the declarations are the documentation, and its messages name the key, the
expected type and the value given.) Sweep keys are the names of the ``nvemu bench`` options:
``strategies``, ``fanout``, ``domains``, ``controllers``, ``wpq_depth``, ``hints``, ... (the
singular ``strategy`` and ``domain`` of older files are accepted too).

:func:`check_cells` then builds, for every distinct platform of a grid, its configuration, and
opens every trace and NFIT file, so what only a task would have found fails before the first one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from .._constants import PAGE_BYTES, TIMING_PARAMETERS
from ..errors import ConfigError
from ..guest.workloads import WORKLOADS
from ..machine.config import DOMAINS, PRESETS
from ..machine.flush_hints import FANOUTS, STRATEGIES

Workload = Literal[tuple(WORKLOADS)]                                        # type: ignore[valid-type]
Strategy = Literal[("auto", *STRATEGIES)]                                    # type: ignore[valid-type]
Fanout = Literal[FANOUTS]                                                    # type: ignore[valid-type]
Domain = Literal[DOMAINS]                                                    # type: ignore[valid-type]
Interleave = Literal["all", "socket"]
Positive = Annotated[int, Field(strict=True, ge=1)]
NonNegative = Annotated[int, Field(strict=True, ge=0)]
Depth = Annotated[int, Field(strict=True, ge=1, le=4096)]
Bytes = Annotated[int, Field(strict=True, ge=PAGE_BYTES)]
Timing = Literal[TIMING_PARAMETERS]                                          # type: ignore[valid-type]
NonNegativeNumber = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _as_list(v: Any) -> Any:
    return v if isinstance(v, list) else [v]


def Axis(t: Any) -> Any:  # noqa: N802 - a type constructor
    """A sweep axis: one value or a non-empty list of them."""
    return Annotated[list[t], BeforeValidator(_as_list), Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class SweepSpec(_Strict):
    """A sweep file: every list is an axis of the grid, every scalar applies to all cells."""

    ops: Axis(Positive) = [100_000]
    seed: Axis(NonNegative) = [0]
    workloads: Axis(Workload) | None = None
    traces: Axis(str) | None = None
    platforms: Axis(str) | None = None
    strategies: Axis(Strategy) = Field(["auto"], validation_alias=AliasChoices("strategies", "strategy"))
    fanout: Axis(Fanout) = Field(["broadcast"], validation_alias=AliasChoices("fanout", "fanouts"))
    domains: Axis(Domain) | None = Field(None, validation_alias=AliasChoices("domains", "domain"))
    controllers: Axis(Positive) | None = None
    wpq_depth: Axis(Depth) | None = None
    hints: Axis(NonNegative) | None = None
    vms: Axis(Positive) | None = None
    vcpus: Axis(Annotated[int, Field(strict=True, ge=1, le=256)]) | None = None
    dram: Axis(Bytes) | None = None
    nvdimm: Axis(Bytes) | None = None
    interleave: Axis(Interleave) | None = None
    timing: dict[Timing, Axis(NonNegativeNumber)] = {}
    params: dict[Workload, dict[str, Any]] = {}


# sweep key -> cell field
SWEEP_FIELDS = {"ops": "ops", "seed": "seed", "platforms": "platform", "strategies": "strategy", "fanout": "fanout",
                "domains": "domain", "controllers": "controllers", "wpq_depth": "wpq_depth", "hints": "hints",
                "vms": "vms", "vcpus": "vcpus", "dram": "dram", "nvdimm": "nvdimm", "interleave": "interleave"}


class VmSpec(_Strict):
    """One VM of a fleet host."""

    workload: Workload = "persist-loop"
    trace: str | None = None
    ops: Positive = 100_000
    seed: NonNegative = 0
    strategy: Strategy = "auto"
    fanout: Fanout = "broadcast"
    vcpus: Annotated[int, Field(strict=True, ge=1, le=256)] = 1
    dram: Bytes | None = None
    nvdimm: Bytes | None = None
    params: dict[str, Any] = {}


class HostSpec(_Strict):
    """One fleet host: its platform, defaults for its VMs, and the VMs."""

    name: str | None = None
    platform: str | None = None
    controllers: Positive | None = None
    domain: Domain | None = None
    wpq_depth: Depth | None = None
    hints: NonNegative | None = None
    interleave: Interleave | None = None
    strategy: Strategy | None = None
    fanout: Fanout | None = None
    workload: Workload | None = None
    ops: Positive | None = None
    seed: NonNegative | None = None
    vcpus: Annotated[int, Field(strict=True, ge=1, le=256)] | None = None
    dram: Bytes | None = None
    nvdimm: Bytes | None = None
    timing: dict[Timing, NonNegativeNumber] = {}
    vm: list[VmSpec] = Field([VmSpec()], min_length=1, validation_alias=AliasChoices("vm", "vms"))


class FleetSpec(_Strict):
    """A fleet file: ``[[host]]`` tables."""

    host: list[HostSpec] = Field(min_length=1)


def _one_line(what: str, e: ValidationError) -> ConfigError:
    problems = []
    for err in e.errors()[:3]:
        where = ""
        for x in err["loc"]:
            if isinstance(x, int):
                where += f"[{x}]"
            elif x != "[key]" and not str(x).startswith("function-"):
                where += f".{x}" if where else str(x)
        where = where or "file"
        given = err.get("input")
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key {where!r}")
        elif err["type"] == "too_short":
            problems.append(f"{where!r} is empty")
        else:
            shown = f" (given {given!r})" if err["type"] != "missing" and not isinstance(given, dict) else ""
            problems.append(f"{where}: {err['msg']}{shown}")
    more = f"; and {e.error_count() - 3} more" if e.error_count() > 3 else ""
    return ConfigError(f"{what}: " + "; ".join(problems) + more)


def parse_sweep_spec(spec: dict[str, Any], what: str = "sweep") -> SweepSpec:
    """``spec`` (a parsed sweep file) checked whole; ConfigError naming the key otherwise."""
    try:
        return SweepSpec.model_validate(spec)
    except ValidationError as e:
        raise _one_line(what, e) from None


def parse_fleet_spec(spec: dict[str, Any], what: str = "fleet") -> FleetSpec:
    """``spec`` (a parsed fleet file) checked whole; ConfigError naming the key otherwise."""
    try:
        return FleetSpec.model_validate(spec)
    except ValidationError as e:
        raise _one_line(what, e) from None


def check_platform_name(name: str) -> None:
    """A preset name or ``nfit:PATH`` of a readable file."""
    if name.startswith("nfit:"):
        path = Path(name[5:])
        if not path.is_file():
            raise ConfigError(f"platform {name!r}: no such NFIT file {path}")
    elif name not in PRESETS:
        raise ConfigError(f"platform {name!r}: not a preset ({', '.join(PRESETS)}) nor nfit:FILE")


def check_cells(cells: Sequence[dict[str, Any]]) -> None:
    """Fail before any work on what a task would only find later: each distinct platform of the
    grid is built (its configuration: controllers, WPQ depth, domain, flush hints, NFIT), each
    trace file is opened and each workload is built with its parameters."""
    from ..formats.trace import detect_format
    from .cells import platform_of
    seen: set[tuple] = set()
    for c in cells:
        key = tuple(str(c[k]) for k in ("platform", "controllers", "domain", "wpq_depth", "hints", "interleave",
                                         "dimm_bytes", "dram_bytes"))
        if key not in seen:
            seen.add(key)
            if c["platform"]:
                check_platform_name(str(c["platform"]))
            try:
                platform_of(c)
            except ConfigError as e:
                raise ConfigError(f"platform of cell {_describe(c)}: {e}") from None
        if c["trace"]:
            detect_format(c["trace"])                  # TraceError naming the file it cannot read
        elif c["workload"] not in WORKLOADS:
            raise ConfigError(f"unknown workload {c['workload']!r}; known: {', '.join(WORKLOADS)}")
        else:
            WORKLOADS[c["workload"]](**c["params"])


def _describe(c: dict[str, Any]) -> str:
    keys = ("platform", "controllers", "domain", "wpq_depth", "hints", "interleave")
    return ", ".join(f"{k}={c[k]}" for k in keys if c[k] is not None)


__all__ = ["FleetSpec", "HostSpec", "SweepSpec", "VmSpec", "check_cells", "check_platform_name",
           "parse_fleet_spec", "parse_sweep_spec"]
