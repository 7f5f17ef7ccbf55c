"""The Optane studies' memory microbenchmarks, run through the emulator (``nvemu timing``).

Each pattern generates a trace of guest records and replays it through the engine (the compiled
core or the reference model) on a bare-metal guest: strategy ``native`` and no second-level walk
cost, as the studies measured on a host. Times come from the vCPU's clock, so latency growing
with size, and bandwidth saturating as fences grow apart, follow from the timing model's mechanism
(write-back travel, the WPQ, each controller's drain rate, the fence), not from a formula.

Patterns (Yang et al., FAST 2020, section 3 and Fig. 2; Izraelevitz et al. 2019, section 3):

``load-seq`` / ``load-rand``
    one repetition reads ``size`` bytes as 64 B loads, then one ``mfence``: the next ``size``
    bytes of one stream (sequential) or a random ``size``-aligned block (random). For 64 B, the
    latency of one load. A trace does not say which op uses a load's data, so the loads of one
    repetition are independent: they overlap up to the vCPU's ``fill_buffers``, and the
    ``mfence`` waits for all of them (as a dependent op would).
``store-clwb``
    one repetition persists ``size`` bytes at a random ``size``-aligned address: eight 8-byte
    stores and a ``clwb`` per line, then one ``sfence``.
``ntstore``
    the same with non-temporal 8-byte stores and no ``clwb``, then one ``sfence``.

With a fence interval ``M`` every pattern runs one sequential stream instead, in accesses of
``size`` bytes, with a fence (``sfence`` for stores, ``mfence`` for loads) after every ``M``
bytes (and at the end), and reports the bandwidth. With ``vcpus`` K > 1, K vCPUs of one VM run
the pattern at once, each on its own part of the vNVDIMM, their records interleaved in turn
(Izraelevitz et al. measure bandwidth with many threads); vCPU k starts k interleave granules
into a stripe, so that the vCPUs do not walk the NVDIMMs in step. ``ns`` is always the mean time of
one repetition (one ``size``-byte access) of one vCPU and ``gb_per_s`` all vCPUs' bytes over
the longest vCPU time (bytes per ns is GB/s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._constants import LINE_BYTES, TRACE_DTYPE, Op
from ..errors import ConfigError
from ..machine.config import PRESETS, TimingModel
from ..machine.config import preset as platform_preset
from ..machine.hypervisor import Hypervisor

PATTERNS = ("load-seq", "load-rand", "store-clwb", "ntstore")
STORE_PATTERNS = ("store-clwb", "ntstore")
JSON_KEYS = ("pattern", "size", "fence_interval", "preset", "ns", "gb_per_s")
DEFAULT_PRESET = "optane-3t"
MAX_BYTES = 4 << 20                  # the largest size or fence interval (a run then writes 16 MiB)
MAX_VCPUS = 32                       # the most vCPUs one run may use
REGION_BYTES = 64 << 20              # the guest's vNVDIMM (less on a smaller platform)
PAGE = 4096
LATENCY_BYTES = 256 << 10            # a latency run reads or persists about this much ...
MIN_REPS, MAX_REPS = 8, 512          # ... in this many repetitions
STREAM_BYTES = 256 << 10             # a bandwidth run writes at least this much (and 4 fence intervals)
STORE_BYTES = 8                      # the studies' stores are 8-byte (movq / movntiq)


@dataclass(frozen=True)
class TimingResult:
    """One ``nvemu timing`` run: the JSON keys, plus what the text report adds."""

    pattern: str
    size: int
    fence_interval: int | None
    preset: str
    ns: float
    gb_per_s: float
    repetitions: int
    write_limit_gb_per_s: float
    vcpus: int = 1
    read_limit_gb_per_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Exactly the documented keys: pattern, size, fence_interval, preset, ns, gb_per_s."""
        return {k: getattr(self, k) for k in JSON_KEYS}


def check(pattern: str, size: int, fence_interval: int | None, preset: str, vcpus: int = 1) -> None:
    """Refuse a request the benchmark cannot run, with one ConfigError."""
    if isinstance(vcpus, bool) or not isinstance(vcpus, int) or not 1 <= vcpus <= MAX_VCPUS:
        raise ConfigError(f"vcpus {vcpus!r}: must be a whole number from 1 to {MAX_VCPUS}")
    if pattern not in PATTERNS:
        raise ConfigError(f"unknown pattern {pattern!r}; known: {', '.join(PATTERNS)}")
    if preset not in PRESETS:
        raise ConfigError(f"unknown platform preset {preset!r}; known: {', '.join(PRESETS)}")
    for name, v in (("size", size), ("fence interval", fence_interval)):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < LINE_BYTES or v % LINE_BYTES or v > MAX_BYTES:
            raise ConfigError(f"{name} {v!r}: must be a multiple of {LINE_BYTES} bytes from {LINE_BYTES} "
                              f"to {MAX_BYTES >> 20} MiB")
    if fence_interval is not None and pattern == "load-rand":
        raise ConfigError("--fence-interval runs a sequential stream: use load-seq, store-clwb or ntstore")


def _records(ops: list[np.ndarray], gpas: list[np.ndarray]) -> np.ndarray:
    out = np.zeros(sum(len(o) for o in ops), dtype=TRACE_DTYPE)
    out["op"] = np.concatenate(ops)
    out["gpa"] = np.concatenate(gpas)
    data = np.isin(out["op"], (Op.LOAD, Op.STORE, Op.NT_STORE))
    out["size"][data] = STORE_BYTES
    out["value"] = np.arange(len(out), dtype=np.uint64)
    return out


def _writes(pattern: str, base: int, nbytes: int, fence_every: int) -> np.ndarray:
    """Stores (and a clwb per line for store-clwb) over ``[base, base + nbytes)``, an sfence
    after every ``fence_every`` bytes and at the end."""
    lines = base + LINE_BYTES * np.arange(nbytes // LINE_BYTES, dtype=np.uint64)
    per_line = LINE_BYTES // STORE_BYTES
    stores = (lines[:, None] + STORE_BYTES * np.arange(per_line, dtype=np.uint64)[None, :])
    kind = Op.STORE if pattern == "store-clwb" else Op.NT_STORE
    ops = np.full(stores.shape, kind, dtype=np.uint8)
    if pattern == "store-clwb":
        stores = np.concatenate([stores, lines[:, None]], axis=1)
        ops = np.concatenate([ops, np.full((len(lines), 1), Op.CLWB, dtype=np.uint8)], axis=1)
    fenced = ((np.arange(len(lines)) + 1) * LINE_BYTES) % fence_every == 0
    fenced[-1] = True
    width = ops.shape[1] + 1
    op = np.full((len(lines), width), 255, dtype=np.uint8)
    gpa = np.zeros((len(lines), width), dtype=np.uint64)
    op[:, :-1], gpa[:, :-1] = ops, stores
    op[fenced, -1] = Op.SFENCE
    keep = op.ravel() != 255
    return _records([op.ravel()[keep]], [gpa.ravel()[keep]])


def _loads(base: int, nbytes: int, fence_every: int) -> np.ndarray:
    """64 B loads over ``[base, base + nbytes)``, an mfence after every ``fence_every`` bytes and
    at the end."""
    lines = base + LINE_BYTES * np.arange(nbytes // LINE_BYTES, dtype=np.uint64)
    fenced = ((np.arange(len(lines)) + 1) * LINE_BYTES) % fence_every == 0
    fenced[-1] = True
    op = np.full((len(lines), 2), 255, dtype=np.uint8)
    gpa = np.zeros((len(lines), 2), dtype=np.uint64)
    op[:, 0], gpa[:, 0] = Op.LOAD, lines
    op[fenced, 1] = Op.MFENCE
    keep = op.ravel() != 255
    return _records([op.ravel()[keep]], [gpa.ravel()[keep]])


def _stream(pattern: str, base: int, nbytes: int, fence_every: int) -> np.ndarray:
    return _loads(base, nbytes, fence_every) if pattern == "load-seq" else _writes(pattern, base, nbytes,
                                                                                   fence_every)


def _trace(pattern: str, size: int, fence_interval: int | None, region: int, region_bytes: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """(warm-up records, measured records, repetitions) within ``region_bytes`` at ``region``."""
    if fence_interval is not None:                      # one sequential stream, bandwidth
        total = max(STREAM_BYTES, 4 * fence_interval, 4 * size)
        total = -(-total // size) * size
        if total + size > region_bytes:
            raise ConfigError(f"a stream of {total:,} bytes does not fit the platform's "
                              f"{region_bytes:,}-byte interleave set (per vCPU); use a larger preset "
                              f"or fewer vCPUs")
        warm = _stream(pattern, region, size, size)
        return warm, _stream(pattern, region + size, total, fence_interval), total // size
    slots = region_bytes // size - 1                   # slot 0 is the warm-up's for sequential loads
    reps = min(max(MIN_REPS, min(MAX_REPS, LATENCY_BYTES // size)), slots - 1)
    if reps < MIN_REPS:
        raise ConfigError(f"size {size:,}: {MIN_REPS + 1} blocks of it do not fit the platform's "
                          f"{region_bytes:,}-byte interleave set (per vCPU); use a larger preset, a smaller "
                          f"size or fewer vCPUs")
    if pattern == "load-seq":
        return (_loads(region, size, size),
                np.concatenate([_loads(region + k * size, size, size) for k in range(1, reps + 1)]), reps)
    bases = region + size * (1 + rng.choice(slots, size=reps + 1, replace=False)).astype(np.uint64)
    chunks = [_stream("load-seq" if pattern == "load-rand" else pattern, int(b), size, size) for b in bases]
    return chunks[0], np.concatenate(chunks[1:]), reps


def _interleave(parts: list[np.ndarray]) -> np.ndarray:
    """The vCPUs' record arrays (equal lengths), vCPU k's in field ``vcpu``, taken in turn."""
    for k, part in enumerate(parts):
        part["vcpu"] = k
    return np.stack(parts, axis=1).ravel()


def write_limit(preset: str = DEFAULT_PRESET, timing: TimingModel | None = None) -> float:
    """The write bandwidth (GB/s) of one interleave set of the preset: its NVDIMMs times the
    per-DIMM media write bandwidth (``media_write_gbps``, Izraelevitz et al. 2019)."""
    timing = timing or TimingModel()
    cfg = platform_preset(preset)
    return max(len(s.dimms) for s in cfg.interleave_sets) * timing.media_write_gbps


def read_limit(preset: str = DEFAULT_PRESET, timing: TimingModel | None = None) -> float:
    """The read bandwidth (GB/s) of one interleave set of the preset: its NVDIMMs times the
    per-DIMM media read bandwidth (``media_read_gbps``, Izraelevitz et al. 2019)."""
    timing = timing or TimingModel()
    cfg = platform_preset(preset)
    return max(len(s.dimms) for s in cfg.interleave_sets) * timing.media_read_gbps


def run_timing(pattern: str, size: int = 64, fence_interval: int | None = None, preset: str = DEFAULT_PRESET,
               timing: TimingModel | None = None, seed: int = 0, backend: str | None = None,
               memory: str = "nvdimm", vcpus: int = 1) -> TimingResult:
    """Run one microbenchmark through the engine and return its mean latency and bandwidth.

    ``timing`` defaults to the calibrated :class:`TimingModel` with ``walk_ref_cycles = 0`` (a
    bare-metal run: no second-level page walk). ``backend`` picks the engine (default: the
    compiled core when built). ``memory="dram"`` runs the pattern on the guest's DRAM instead
    of its vNVDIMM (the studies' DRAM baseline). ``vcpus`` vCPUs run it at once, each on its
    own part of the memory. Raises ConfigError for a request it cannot run.

    Examples
    --------
    >>> r = run_timing("store-clwb", 64)
    >>> r.ns                                  # Yang et al. 2020: 116.4 ns to persist 64 B
    116.4
    >>> sorted(r.to_json())
    ['fence_interval', 'gb_per_s', 'ns', 'pattern', 'preset', 'size']
    """
    check(pattern, size, fence_interval, preset, vcpus)
    if memory not in ("nvdimm", "dram"):
        raise ConfigError(f"memory {memory!r}: 'nvdimm' or 'dram'")
    timing = timing or TimingModel(walk_ref_cycles=0)
    hv = Hypervisor(preset, timing, backend=backend)
    cfg = hv.platform.config
    region_bytes = min(REGION_BYTES, max(cfg.set_bytes(s) for s in cfg.interleave_sets) // PAGE * PAGE)
    vm = hv.create_vm(dram=min(16 << 20, cfg.dram_bytes // 2 // PAGE * PAGE), nvdimms=[region_bytes],
                      vcpus=vcpus, strategy="native").start()
    target = vm.nvdimms[0] if memory == "nvdimm" else vm.dram[0]
    # vCPU k gets whole stripes of the set and starts k granules into one, so the vCPUs do not
    # march through the NVDIMMs in step (the studies' threads are not synchronised)
    iset = max(cfg.interleave_sets, key=lambda st: cfg.set_bytes(st))
    granule, stripe = iset.granularity, iset.granularity * len(iset.dimms)
    share = (min(region_bytes, target.size) - vcpus * granule) // vcpus // stripe * stripe
    if share < PAGE:
        raise ConfigError(f"{vcpus} vCPUs: the {region_bytes:,}-byte vNVDIMM leaves less than a page each; "
                          f"use fewer vCPUs or a larger preset")
    rng = np.random.default_rng(seed)
    parts = [_trace(pattern, size, fence_interval, target.gpa + k * (share + granule), share, rng)
             for k in range(vcpus)]
    reps = parts[0][2]
    hv.run(_interleave([p[0] for p in parts]))
    before = vm.stats()
    hv.run(_interleave([p[1] for p in parts]))
    ps = (vm.stats() - before).elapsed_ps
    ns = ps / 1000 / reps
    return TimingResult(pattern, size, fence_interval, preset, round(ns, 3),
                        round(vcpus * size * reps / (ps / 1000), 4) if ps else 0.0, reps,
                        round(write_limit(preset, timing), 4), vcpus, round(read_limit(preset, timing), 4))


__all__ = ["DEFAULT_PRESET", "JSON_KEYS", "MAX_VCPUS", "PATTERNS", "TimingResult", "read_limit", "run_timing",
           "write_limit"]
