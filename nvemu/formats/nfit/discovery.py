"""Capability discovery: what a physical NFIT says the host has (controllers, NVDIMMs, interleave
sets, flush hints, persistence domain), as a :class:`~nvemu.machine.config.PlatformConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import ConfigError, NfitError
from ...machine.config import (
    DEFAULT_TIMING,
    PAGE_BYTES,
    ControllerConfig,
    GiB,
    InterleaveSetConfig,
    NvdimmConfig,
    PlatformConfig,
    TimingModel,
    decode_handle,
)
from ...machine.platform import Platform
from .codec import Nfit, parse
from .tables import (
    DEFAULT_GRANULARITY,
    MEM_NO_ADR,
    FlushHintAddress,
    Interleave,
    MemoryMap,
    PlatformCapabilities,
    SpaRange,
    _err,
)

# ---------------------------------------------------------------------------------------------
# Capability discovery


def _as_nfit(data: bytes | bytearray | memoryview | Nfit) -> Nfit:
    return data if isinstance(data, Nfit) else parse(data)


def persistence_domain(data: bytes | Nfit) -> str:
    """The persistence domain the first Platform Capabilities structure gives ("none" without one)."""
    caps = _as_nfit(data).select(PlatformCapabilities)
    return caps[0].domain if caps else "none"


@dataclass
class _Dimm:
    handle: int
    maps: list[tuple[int, MemoryMap]] = field(default_factory=list)
    hints: list[int] = field(default_factory=list)
    pm_maps: list[tuple[int, MemoryMap]] = field(default_factory=list)

    @property
    def key(self) -> tuple[int, int, int]:
        d = decode_handle(self.handle)
        return (d["node"], d["socket"], d["imc"])

    @property
    def armed(self) -> bool:
        """ADR guarantees this device: no map of it says "platform flush failed" or "not armed"."""
        return not any(m.flags & MEM_NO_ADR for _, m in self.maps)

    @property
    def size(self) -> int:
        """Bytes in persistent-memory ranges; for a DIMM mapped into none, all its mapped bytes."""
        return sum(m.region_size for _, m in (self.pm_maps or self.maps))


@dataclass
class _Set:
    offset: int
    spa: SpaRange
    members: list[tuple[int, MemoryMap]]
    granularity: int | None
    problems: list[str]


@dataclass
class _Survey:
    """What the table says, before asking whether PlatformConfig can model it."""

    nfit: Nfit
    dimms: list[_Dimm]
    keys: list[tuple[int, int, int]]
    spa: list[tuple[int, SpaRange]]
    sets: list[_Set]
    domain: str
    caps: PlatformCapabilities | None
    warnings: list[str]


def _layout_problems(s: SpaRange, members: list[tuple[int, MemoryMap]],
                     interleaves: dict[int, tuple[int, Interleave]], gran: int) -> list[str]:
    """Where the table puts each member's lines against nvemu's rule (members in region-offset
    order ``k = 0, 1, ...``, one ``gran``-byte line from each in turn). Linux reads a DIMM's line
    ``L`` at SPA base + region offset + ``(L // line_count) * line_count * ways * line_size +
    line_offsets[L % line_count] * line_size``; that equals nvemu's ``(L * ways + k) * gran`` for
    every ``L`` exactly when the region offset is ``k * gran`` and ``line_offsets[j] == j * ways``. A
    table that says otherwise is refused, never silently remapped."""
    ways = len(members)
    out = []
    for k, (o, m) in enumerate(members):
        if ways > 1 and m.region_offset != k * gran:
            out.append(f"NVDIMM {m.device_handle:#x} (map at offset {o:#x}) starts at region offset "
                       f"{m.region_offset:#x}; nvemu's interleave (members in region-offset order, one "
                       f"{gran:#x}-byte line each) needs {k * gran:#x}: refused rather than remapped")
            break
        if m.interleave_index in interleaves:
            io, il = interleaves[m.interleave_index]
            want = [j * ways for j in range(il.line_count)]
            if list(il.line_offsets) != want:
                out.append(f"interleave structure {il.interleave_index} (offset {io:#x}) gives line offsets "
                           f"{list(il.line_offsets)} for a {ways}-way set; nvemu's interleave puts a "
                           f"member's lines at {want} (in lines of {il.line_size:#x} bytes): refused rather "
                           f"than remapped")
                break
    return out


def _survey(nfit: Nfit) -> _Survey:
    warnings = list(nfit.warnings)
    spa = nfit.located(SpaRange)
    spa_by_index: dict[int, tuple[int, SpaRange]] = {}
    for off, s in spa:
        if s.range_index in spa_by_index:
            warnings.append(f"SPA range at offset {off:#x} reuses range index {s.range_index}")
        else:
            spa_by_index[s.range_index] = (off, s)
    pm_indices = {s.range_index for _, s in spa if s.range_type == "pm"}
    interleaves: dict[int, tuple[int, Interleave]] = {}
    for off, il in nfit.located(Interleave):
        interleaves.setdefault(il.interleave_index, (off, il))
    maps = nfit.located(MemoryMap)
    dimms: dict[int, _Dimm] = {}
    for off, m in maps:
        d = dimms.setdefault(m.device_handle, _Dimm(m.device_handle))
        d.maps.append((off, m))
        if m.range_index in pm_indices:
            d.pm_maps.append((off, m))
        elif m.range_index and m.range_index not in spa_by_index:
            warnings.append(f"memory device map at offset {off:#x} names SPA range index {m.range_index}, "
                            f"which the table does not have")
    seen_hint_handles: set[int] = set()
    for off, fh in nfit.located(FlushHintAddress):
        if fh.device_handle not in dimms:
            warnings.append(f"flush hint structure at offset {off:#x} names device handle "
                            f"{fh.device_handle:#x}, which no memory device map names: ignored")
            continue
        if fh.device_handle in seen_hint_handles:
            warnings.append(f"flush hint structure at offset {off:#x}: a second one for device handle "
                            f"{fh.device_handle:#x}; its hints are appended")
        seen_hint_handles.add(fh.device_handle)
        dimms[fh.device_handle].hints.extend(fh.hint_addresses)
    caps_all = nfit.select(PlatformCapabilities)
    if len(caps_all) > 1:
        warnings.append(f"{len(caps_all)} platform capabilities structures: the first one is used")
    caps = caps_all[0] if caps_all else None
    sets = []
    for off, s in spa:
        if s.range_type != "pm" or spa_by_index.get(s.range_index, (None,))[0] != off:
            continue
        members = [(o, m) for o, m in maps if m.range_index == s.range_index]
        members.sort(key=lambda om: (om[1].region_offset, om[0]))
        problems: list[str] = []
        sizes = set()
        for o, m in members:
            if m.interleave_index:
                if m.interleave_index in interleaves:
                    sizes.add(interleaves[m.interleave_index][1].line_size)
                else:
                    problems.append(f"memory device map at offset {o:#x} names interleave structure "
                                    f"{m.interleave_index}, which the table does not have")
        if len(sizes) > 1:
            problems.append(f"the maps of SPA range {s.range_index} name interleave structures with "
                            f"different line sizes {sorted(sizes)}")
        elif not problems:
            problems += _layout_problems(s, members, interleaves, min(sizes) if sizes else DEFAULT_GRANULARITY)
        sets.append(_Set(off, s, members, min(sizes) if sizes else None, problems))
    ordered = sorted(dimms.values(), key=lambda d: d.handle)
    return _Survey(nfit=nfit, dimms=ordered, keys=sorted({d.key for d in ordered}), spa=spa, sets=sets,
                   domain=caps.domain if caps else "none", caps=caps, warnings=warnings)


def platform_config_from_nfit(data: bytes | Nfit, *, wpq_depth: int = 64, dram_bytes: int = 2 * GiB,
                              name: str = "nfit") -> PlatformConfig:
    """Capability discovery: the :class:`~nvemu.machine.config.PlatformConfig` a physical NFIT describes.

    - one controller per distinct (node, socket, imc) of the memory device maps' handles, sorted;
    - one NVDIMM per distinct device handle, sorted by handle: its size is the ``region_size`` of
      its map into a persistent-memory SPA range (for a DIMM mapped into none, the sum of its maps'
      sizes), its flush hints those of the flush hint structures naming its handle, in table order;
      it is not ``armed`` when a map's flags say "platform flush failed" (bit 2) or "not armed"
      (bit 3): no ADR guarantee, its WPQ contents are lost at a power failure;
    - one interleave set per persistent-memory ("pm") SPA range, in table order, its members the
      DIMMs mapped into it ordered by ``region_offset``; the granularity is the ``line_size`` of the
      Interleave structure the maps name, else :data:`DEFAULT_GRANULARITY` (4 KiB);
    - the persistence domain from the platform capabilities (masked as Linux does; "none" if absent).

    WPQ flushing is decided per interleave set, as Linux's ``nvdimm_has_flush()`` does: a set
    supports it when one of its NVDIMMs has a hint (``PlatformConfig.set_wpq_flush``).
    A table nvemu cannot model (a DIMM in two pm ranges, members of unequal sizes or not adding up
    to the range, a set without DIMMs, ...) raises :class:`~nvemu.errors.NfitError`.
    """
    sv = _survey(_as_nfit(data))
    if not sv.dimms:
        raise NfitError("the NFIT has no memory device to SPA range map structures (type 1), so no NVDIMMs")
    index_of = {d.handle: i for i, d in enumerate(sv.dimms)}
    nvdimms = []
    for d in sv.dimms:
        if len(d.pm_maps) > 1:
            offs = ", ".join(f"{o:#x}" for o, _ in d.pm_maps)
            raise _err(d.pm_maps[1][0] + 12, "range_index",
                       f"NVDIMM {d.handle:#x} is mapped into {len(d.pm_maps)} persistent-memory ranges "
                       f"(maps at {offs}); nvemu models one interleave set per NVDIMM")
        size = d.size
        if size <= 0 or size % PAGE_BYTES:
            off, _ = (d.pm_maps or d.maps)[0]
            raise _err(off + 16, "region_size", f"NVDIMM {d.handle:#x} has {size:#x} mapped bytes; nvemu "
                                                f"needs a positive multiple of 4 KiB")
        loc = decode_handle(d.handle)
        nvdimms.append(NvdimmConfig(controller=sv.keys.index(d.key), size=size, channel=loc["channel"],
                                    dimm=loc["dimm"], flush_hints=tuple(d.hints), armed=d.armed))
    isets = []
    for st in sv.sets:
        s = st.spa
        if st.problems:
            raise _err(st.offset, "range_index", f"SPA range {s.range_index}: {st.problems[0]}")
        if not st.members:
            raise _err(st.offset + 4, "range_index",
                       f"persistent-memory SPA range {s.range_index} ({s.address:#x}+{s.length:#x}) has no "
                       f"NVDIMM mapped into it")
        handles = [m.device_handle for _, m in st.members]
        if len(set(handles)) != len(handles):
            raise _err(st.offset + 4, "range_index", f"SPA range {s.range_index}: an NVDIMM is mapped into "
                                                     f"it twice; nvemu models each member once")
        ways = len(st.members)
        for o, m in st.members:
            if m.interleave_ways != ways and not (ways == 1 and m.interleave_ways == 0):
                raise _err(o + 42, "interleave_ways",
                           f"memory device map of NVDIMM {m.device_handle:#x} says {m.interleave_ways} ways "
                           f"but SPA range {s.range_index} has {ways} maps")
        sizes = {m.region_size for _, m in st.members}
        if len(sizes) != 1 or ways * next(iter(sizes)) != s.length:
            raise _err(st.offset + 40, "length",
                       f"SPA range {s.range_index} is {s.length:#x} bytes but its {ways} NVDIMMs map "
                       f"{sorted(sizes)} bytes each; nvemu needs equal shares that add up to the range")
        gran = st.granularity if st.granularity is not None else DEFAULT_GRANULARITY
        isets.append(InterleaveSetConfig(spa_base=s.address, dimms=tuple(index_of[h] for h in handles),
                                         granularity=gran))
    try:
        return PlatformConfig(controllers=tuple(ControllerConfig(*k) for k in sv.keys),
                              nvdimms=tuple(nvdimms), interleave_sets=tuple(isets), wpq_depth=wpq_depth,
                              domain=sv.domain, dram_bytes=dram_bytes, name=name)
    except ConfigError as e:
        raise NfitError(f"the NFIT describes a platform nvemu cannot model: {e}") from None


def discover(data: bytes | Nfit) -> dict[str, Any]:
    """A JSON-ready summary of what the table says (lenient: works for tables nvemu cannot model).

    Keys: ``controllers`` [{node, socket, imc, flush_hints}], ``nvdimms`` [{handle, node, socket,
    imc, channel, dimm, size, flush_hints, spa_ranges, armed}], ``wpq_flush`` (does some NVDIMM list a
    flush hint), ``persistence_domain``, ``capabilities`` (raw, highest valid, effective,
    or None), ``spa_ranges`` [{index, base, length, type}], ``interleave_sets`` [{spa_index, base,
    length, granularity, nvdimms, wpq_flush}] (a set's ``wpq_flush``: one of its NVDIMMs lists a
    flush hint, Linux ``nvdimm_has_flush``),
    ``modelable`` and ``model_error`` (whether :func:`platform_config_from_nfit` accepts the
    topology, probed with 4 KiB of DRAM), ``warnings`` and the header fields.
    """
    nfit = _as_nfit(data)
    sv = _survey(nfit)
    controllers = []
    for key in sv.keys:
        hints: list[int] = []
        for d in sv.dimms:
            if d.key == key:
                hints.extend(h for h in d.hints if h not in hints)
        controllers.append({"node": key[0], "socket": key[1], "imc": key[2], "flush_hints": hints})
    try:
        platform_config_from_nfit(nfit, dram_bytes=PAGE_BYTES)
        model_error = None
    except NfitError as e:
        model_error = str(e)
    caps = sv.caps
    hints_of = {d.handle: d.hints for d in sv.dimms}
    set_flush = [any(hints_of.get(m.device_handle) for _, m in st.members) for st in sv.sets]
    return {
        "signature": "NFIT", "length": len(nfit.to_bytes()), "revision": nfit.revision,
        "oem_id": nfit.oem_id, "oem_table_id": nfit.oem_table_id, "oem_revision": nfit.oem_revision,
        "creator_id": nfit.creator_id, "creator_revision": nfit.creator_revision,
        "controllers": controllers,
        "nvdimms": [{"handle": d.handle, **decode_handle(d.handle), "size": d.size,
                     "flush_hints": list(d.hints), "spa_ranges": [m.range_index for _, m in d.maps],
                     "armed": d.armed}
                    for d in sv.dimms],
        "wpq_flush": any(d.hints for d in sv.dimms),
        "persistence_domain": sv.domain,
        "capabilities": None if caps is None else {
            "raw": caps.capabilities, "highest_valid": caps.highest_capability,
            "effective": caps.effective_capabilities},
        "spa_ranges": [{"index": s.range_index, "base": s.address, "length": s.length, "type": s.range_type}
                       for _, s in sv.spa],
        "interleave_sets": [{"spa_index": st.spa.range_index, "base": st.spa.address, "length": st.spa.length,
                             "granularity": DEFAULT_GRANULARITY if st.granularity is None else st.granularity,
                             "nvdimms": [m.device_handle for _, m in st.members], "wpq_flush": flush}
                            for st, flush in zip(sv.sets, set_flush)],
        "modelable": model_error is None,
        "model_error": model_error,
        "warnings": sv.warnings,
    }


def platform_from_nfit(data: bytes | Nfit, *, wpq_depth: int = 64, dram_bytes: int = 2 * GiB,
                       timing: TimingModel = DEFAULT_TIMING, **kwargs: Any) -> Platform:
    """Capability discovery: the :class:`~nvemu.machine.platform.Platform` a physical NFIT describes
    (controllers, NVDIMMs, interleave, flush hints, persistence domain). The NFIT does not say the
    WPQ depth or how much DRAM the host has: those are parameters."""
    return Platform(platform_config_from_nfit(data, wpq_depth=wpq_depth, dram_bytes=dram_bytes), timing, **kwargs)

