"""Workload generators: deterministic (per seed) TRACE_DTYPE arrays of guest behaviour.

Each workload is a stream of *units* (one fsync, one transaction, one put, ...) that a guest issues,
built from the guest driver models of :mod:`nvemu.guest`:

==============  ==============================================================================================
persist-loop    the core benchmark: per random line 8 stores, a load, a clwb; sfence every 8 lines; vFHA
                write every 64 lines (:func:`~nvemu.guest.persist_loop.persist_loop`)
linux-fsync     a file write of 1-8 4 KiB blocks by the pmem driver (8-byte non-temporal stores), then
                fsync's commit block (REQ_PREFLUSH|REQ_FUA): ``nvdimm_flush()`` before and after it
pmdk-tx         an undo-log transaction on a 64/128/256-byte object: read it, log it + persist, write it +
                persist, commit record + persist
kv-put          a put into a hash-indexed store: read the bucket, write a 64-256-byte value + persist,
                point the bucket at it + persist
random-rw       8-byte loads and persisted stores (store, clwb, sfence) at random addresses
seq-log         appends of 64-256-byte records to a circular log + persist, then the tail pointer + persist
==============  ==============================================================================================

"persist" is PMDK's ``pmem_persist`` (a clwb per line, sfence). A *deep* persist is PMDK's
``pmem_deep_persist`` on Device DAX: the write-backs, a fence, then the region's ``deep_flush`` write,
which is Linux's ``nvdimm_flush()`` (fence, vFHA write, fence); ``deep_flush_every``
sets how often (every N-th unit; 0 never). Defaults: every transaction (pmdk-tx) and every put
(kv-put), whose callers ask for durability whatever the persistence domain; every 16th append
(seq-log, a group commit); never for random-rw. linux-fsync flushes on every unit (that is fsync).

With ``vms`` x ``vcpus`` streams, each vCPU works in its own equal slice of the footprint (random-rw and
persist-loop: the whole footprint) and the trace interleaves the streams unit by unit. Units are made
in fixed batches, each from its own seed ``(seed, batch)``, so the trace does not depend on how it
is cut into chunks, and :func:`iter_generate` can write traces far larger than memory. Store
values are random (masked to the store's size) except for commit records and vFHA writes (1).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .._constants import DEFAULT_CHUNK, LINE_BYTES, PAGE_BYTES, TRACE_DTYPE, Op
from ..errors import ConfigError
from ..machine.config import MiB
from .drivers import NvdimmRegion, TraceWriter, pmem_persist, pmem_submit_bio, write_persist
from .persist_loop import LINES_PER_FENCE, LINES_PER_VFHA, persist_loop_chunks

if TYPE_CHECKING:
    from ..machine.vm import VM

BLOCK = PAGE_BYTES         # a file-system block
_BATCH_OPS = 1 << 18        # records a batch of units aims at (all streams together)


# ---- where a VM's memory sits ---------------------------------------------------------------------

@dataclass(frozen=True)
class VmLayout:
    """A VM's guest-physical layout as far as a generator needs it (``nvemu layout --json``)."""

    nvdimm_gpa: int = 1 << 32
    nvdimm_size: int = 256 * MiB
    fha_gpa: int = (1 << 32) + 256 * MiB
    dram_size: int = 256 * MiB

    @classmethod
    def of(cls, vm: VM) -> VmLayout:
        """The layout of a VM's first vNVDIMM and its vFHA."""
        nv = vm.nvdimms[0]
        return cls(nv.gpa, nv.size, vm.vfha_gpa, sum(r.size for r in vm.dram))

    def to_dict(self) -> dict[str, int]:
        """The layout's fields by name."""
        return asdict(self)


DEFAULT_LAYOUT = VmLayout()
"""The default VM (SPEC 5): 256 MiB DRAM at 0, the vNVDIMM at 4 GiB, the vFHA right above it."""


# ---- unit templates ---------------------------------------------------------------------------------
#
# A unit is written once with the guest models against synthetic addresses: region r of the unit
# starts at (r + 2) << 40, the vFHA is 1 << 40, fences sit at 0. Expanding a batch of units replaces
# each region by that unit's address and fills the stores written with value 0 with random values.

_SHIFT = 40
FHA = 1 << _SHIFT


def region(r: int) -> int:
    """Synthetic base address of a template's region ``r``."""
    return (r + 2) << _SHIFT


_MASKS = np.array([0, 0xFF, 0xFFFF, 0, 0xFFFF_FFFF, 0, 0, 0, 0xFFFF_FFFF_FFFF_FFFF], np.uint64)


class _Templates:
    """The variants of a unit, flattened for vectorised expansion."""

    def __init__(self, builders: Sequence[Callable[[TraceWriter], None]]) -> None:
        arrays = []
        for build in builders:
            t = TraceWriter()
            build(t)
            arrays.append(t.to_array())
        rec = np.concatenate(arrays)
        self.region = (rec["gpa"] >> np.uint64(_SHIFT)).astype(np.int64)
        rec["gpa"] &= np.uint64((1 << _SHIFT) - 1)
        self.records = rec
        self.random = np.isin(rec["op"], (Op.STORE, Op.NT_STORE)) & (self.region >= 2) & (rec["value"] == 0)
        self.length = np.array([len(a) for a in arrays], np.int64)
        self.start = np.cumsum(self.length) - self.length

    def expand(self, variant: np.ndarray, bases: np.ndarray, vm: np.ndarray, vcpu: np.ndarray,
               fha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Records of units ``variant[u]`` with region ``r`` at ``bases[u, r]``, issued by
        ``vm[u]``/``vcpu[u]`` whose vFHA is ``fha[u]``."""
        lengths = self.length[variant]
        unit = np.repeat(np.arange(len(variant)), lengths)
        first = np.cumsum(lengths) - lengths
        src = self.start[variant][unit] + np.arange(len(unit)) - first[unit]
        out = self.records[src]
        reg = self.region[src]
        gpa = out["gpa"]
        own = reg >= 2
        gpa[own] += bases[unit[own], reg[own] - 2]
        hint = reg == 1
        gpa[hint] += fha[unit[hint]]
        out["vm"] = vm[unit]
        out["vcpu"] = vcpu[unit]
        rnd = self.random[src]
        draws = rng.integers(0, np.iinfo(np.uint64).max, size=int(rnd.sum()), dtype=np.uint64, endpoint=True)
        out["value"][rnd] = draws & _MASKS[out["size"][rnd]]
        return out


@dataclass(frozen=True)
class _Streams:
    """The (vm, vcpu) streams of a generation and the memory each works in."""

    vm: np.ndarray          # per stream
    vcpu: np.ndarray
    fha: np.ndarray         # vFHA GPA of the stream's VM
    base: np.ndarray        # start of the stream's slice of the footprint
    size: int               # bytes of each slice
    vm_base: np.ndarray     # start of the stream's VM's footprint
    footprint: int          # bytes of each VM's footprint

    def __len__(self) -> int:
        return len(self.vm)


class Workload:
    """A unit-stream generator. Subclasses give the unit's variants (:meth:`builders`) and, per
    batch, which variant each unit is and where its regions lie (:meth:`units`)."""

    name = ""
    help = ""
    unit_ops = 1                # records per unit, roughly (sizes the batches)
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ConfigError(f"workload {self.name} takes no parameter {min(unknown)!r} "
                              f"(it takes: {', '.join(self.defaults) or 'none'})")
        self.params = {**self.defaults, **params}
        for key, value in params.items():
            _check_param(key, value)
        self.templates = _Templates(self.builders())

    def builders(self) -> list[Callable[[TraceWriter], None]]:
        """The unit variants: functions that write one unit's records to a TraceWriter (subclasses give them)."""
        raise NotImplementedError

    def min_slice(self) -> int:
        """The smallest per-vCPU slice of the footprint the workload fits in."""
        return BLOCK

    def units(self, rng: np.random.Generator, streams: _Streams, n: int, state: dict[str, Any]
              ) -> tuple[np.ndarray, np.ndarray]:
        """``(variant[n, S], bases[n, S, R])`` for the next ``n`` units of every stream."""
        raise NotImplementedError

    def _deep(self, state: dict[str, Any], n: int) -> np.ndarray:
        """Which of the next ``n`` units end with a deep persist (every ``deep_flush_every``-th)."""
        every = int(self.params.get("deep_flush_every", 0))
        counter = state.get("unit", 0) + np.arange(n)
        state["unit"] = state.get("unit", 0) + n
        if every < 0:
            raise ConfigError(f"deep_flush_every={every}: must be >= 0")
        return (counter % every == every - 1) if every else np.zeros(n, bool)


# What each workload parameter may be: (type, lowest, highest or None); checked when a workload is
# built, before any record is generated, so a bad value is one clear ConfigError.
PARAM_RANGES: dict[str, tuple[type, float, float | None]] = {
    "max_blocks": (int, 1, 4096), "deep_flush_every": (int, 0, None), "read_fraction": (float, 0.0, 1.0),
}


def _check_param(key: str, value: Any) -> None:
    kind, lo, hi = PARAM_RANGES.get(key, (object, None, None))
    if kind is object:
        return
    ok_type = (isinstance(value, (int, np.integer)) and not isinstance(value, bool) if kind is int
               else isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool))
    if not ok_type:
        raise ConfigError(f"{key}={value!r}: must be {'an integer' if kind is int else 'a number'}")
    if value < lo or (hi is not None and value > hi):
        raise ConfigError(f"{key}={value!r}: must be {lo}..{hi}" if hi is not None
                          else f"{key}={value!r}: must be >= {lo}")


def _sized(sizes: Sequence[int], unit: Callable[[TraceWriter, int, bool], None]
           ) -> list[Callable[[TraceWriter], None]]:
    """Builders for every (size, deep) pair, in the order variant = 2 * size index + deep."""
    def bind(size: int, deep: bool) -> Callable[[TraceWriter], None]:
        return lambda t: unit(t, size, deep)
    return [bind(s, d) for s in sizes for d in (False, True)]


def _pick(rng: np.random.Generator, count: np.ndarray | int, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform integers in ``[0, count)`` (count broadcast over ``shape``)."""
    return (rng.random(shape) * count).astype(np.int64)


class PersistLoop(Workload):
    name = "persist-loop"
    help = "per random line 8 stores, a load, a clwb; sfence every 8 lines; vFHA write every 64 lines"
    unit_ops = 650

    def builders(self) -> list[Callable[[TraceWriter], None]]:
        def block(t: TraceWriter) -> None:
            for line in range(LINES_PER_VFHA):
                for k in range(8):
                    t.store(region(line) + 8 * k, 0)
                t.load(region(line))
                t.clwb(region(line))
                if line % LINES_PER_FENCE == LINES_PER_FENCE - 1:
                    t.sfence()
            t.store(FHA, 1)
            t.sfence()
        return [block]

    def units(self, rng, streams, n, state):
        lines = _pick(rng, streams.footprint // LINE_BYTES, (n, len(streams), LINES_PER_VFHA))
        return np.zeros((n, len(streams)), np.int64), streams.vm_base[None, :, None] + lines * LINE_BYTES


class LinuxFsync(Workload):
    """A journalled fsync on a pmem block device: the data blocks go down as plain write bios,
    then jbd2 submits the commit block with REQ_PREFLUSH | REQ_FUA (fs/jbd2/commit.c), which
    ``pmem_submit_bio`` turns into two ``nvdimm_flush()`` calls: one before the block, one after."""

    name = "linux-fsync"
    help = ("write 1-8 4 KiB blocks with non-temporal stores, then fsync: a commit block with "
            "REQ_PREFLUSH|REQ_FUA, so nvdimm_flush() before and after it (two vFHA writes)")
    unit_ops = 2822
    defaults: ClassVar[dict[str, Any]] = {"max_blocks": 8}

    def builders(self):
        def write_fsync(t: TraceWriter, k: int) -> None:
            journal = NvdimmRegion([[FHA]])
            pmem_submit_bio(t, journal, region(0), k * BLOCK)                  # the data blocks
            pmem_submit_bio(t, journal, region(0) + k * BLOCK, BLOCK, preflush=True, fua=True)   # commit
        return [functools.partial(write_fsync, k=k) for k in range(1, int(self.params["max_blocks"]) + 1)]

    def min_slice(self) -> int:
        return (int(self.params["max_blocks"]) + 1) * BLOCK

    def units(self, rng, streams, n, state):
        shape = (n, len(streams))
        k = 1 + _pick(rng, int(self.params["max_blocks"]), shape)
        first = _pick(rng, streams.size // BLOCK - k, shape)
        return k - 1, (streams.base[None, :] + first * BLOCK)[..., None]


class _RecordWorkload(Workload):
    """A workload whose units each write one record of one of :attr:`SIZES` bytes, drawn uniformly
    (64, 128, 192 or 256 unless a subclass says otherwise)."""

    SIZES = (64, 128, 192, 256)

    def record_sizes(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Which of :attr:`SIZES` each unit writes (indices)."""
        return _pick(rng, len(self.SIZES), shape)


class PmdkTx(_RecordWorkload):
    name = "pmdk-tx"
    help = "undo-log transaction: read the object, log it + persist, write it + persist, commit + persist"
    unit_ops = 60
    defaults: ClassVar[dict[str, Any]] = {"deep_flush_every": 1}
    SIZES = (64, 128, 256)
    SLOT = 512                  # bytes of one undo-log slot: commit word, then entry header + old data

    def min_slice(self) -> int:
        return 16 * 1024        # a log of 8 slots and 48 objects

    def builders(self):
        def tx(t: TraceWriter, size: int, deep: bool) -> None:
            log, obj = region(0), region(1)
            for off in range(0, size, 8):
                t.load(obj + off)
            write_persist(t, log + LINE_BYTES, bytes(16 + size))
            write_persist(t, obj, bytes(size))
            t.store(log, 1)
            pmem_persist(t, log, 8, FHA if deep else None)
        return _sized(self.SIZES, tx)

    def units(self, rng, streams, n, state):
        shape = (n, len(streams))
        log_bytes = min(max(streams.size // 8 // self.SLOT * self.SLOT, 8 * self.SLOT), 1 * MiB)
        slots = log_bytes // self.SLOT
        slot = (state.get("unit", 0) + np.arange(n))[:, None] % slots
        obj = _pick(rng, (streams.size - log_bytes) // 256, shape)
        variant = 2 * self.record_sizes(rng, shape) + self._deep(state, n)[:, None]
        base = streams.base[None, :]
        return variant, np.stack([base + slot * self.SLOT, base + log_bytes + obj * 256], axis=-1)


class KvPut(_RecordWorkload):
    name = "kv-put"
    help = "hash-indexed put: read the bucket, write a 64-256 B value + persist, set the bucket + persist"
    unit_ops = 25
    defaults: ClassVar[dict[str, Any]] = {"deep_flush_every": 1}

    def min_slice(self) -> int:
        return 16 * 1024        # a page of buckets and 48 value slots

    def builders(self):
        def put(t: TraceWriter, size: int, deep: bool) -> None:
            bucket, slot = region(0), region(1)
            t.load(bucket)
            write_persist(t, slot, bytes(size))
            t.store(bucket, 0)
            pmem_persist(t, bucket, 8, FHA if deep else None)
        return _sized(self.SIZES, put)

    def units(self, rng, streams, n, state):
        shape = (n, len(streams))
        index = max(streams.size // 8 // BLOCK * BLOCK, BLOCK)
        bucket = _pick(rng, index // 8, shape)
        slot = _pick(rng, (streams.size - index) // 256, shape)
        variant = 2 * self.record_sizes(rng, shape) + self._deep(state, n)[:, None]
        base = streams.base[None, :]
        return variant, np.stack([base + bucket * 8, base + index + slot * 256], axis=-1)


class RandomRw(Workload):
    name = "random-rw"
    help = "8-byte loads and persisted stores (store, clwb, sfence) at random addresses of the footprint"
    unit_ops = 2
    defaults: ClassVar[dict[str, Any]] = {"read_fraction": 0.5, "deep_flush_every": 0}

    def builders(self):
        def read(t: TraceWriter) -> None:
            t.load(region(0))

        def write(t: TraceWriter, deep: bool) -> None:
            t.store(region(0), 0)
            pmem_persist(t, region(0), 8, FHA if deep else None)
        return [read, functools.partial(write, deep=False), functools.partial(write, deep=True)]

    def units(self, rng, streams, n, state):
        shape = (n, len(streams))
        fraction = float(self.params["read_fraction"])
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"read_fraction={fraction}: must be in [0, 1]")
        where = _pick(rng, streams.footprint // 8, shape)
        writes = rng.random(shape) >= fraction
        variant = np.where(writes, 1 + self._deep(state, n)[:, None], 0)
        return variant, (streams.vm_base[None, :] + where * 8)[..., None]


class SeqLog(_RecordWorkload):
    name = "seq-log"
    help = "append 64-256 B records to a circular log + persist, then the tail pointer + persist"
    unit_ops = 20
    defaults: ClassVar[dict[str, Any]] = {"deep_flush_every": 16}

    def builders(self):
        def append(t: TraceWriter, size: int, deep: bool) -> None:
            record, header = region(0), region(1)
            write_persist(t, record, bytes(size))
            t.store(header, 0)
            pmem_persist(t, header, 8, FHA if deep else None)
        return _sized(self.SIZES, append)

    def units(self, rng, streams, n, state):
        shape = (n, len(streams))
        pick = self.record_sizes(rng, shape)
        sizes = np.array(self.SIZES)[pick]
        area = streams.size - LINE_BYTES            # the header line, then the log
        tails = state.setdefault("tail", np.zeros(len(streams), np.int64))
        offset = np.empty(shape, np.int64)
        for s in range(len(streams)):         # the tail wraps when a record no longer fits
            tail = int(tails[s])
            for j, size in enumerate(sizes[:, s].tolist()):
                if tail + size > area:
                    tail = 0
                offset[j, s] = tail
                tail += size
            tails[s] = tail
        variant = 2 * pick + self._deep(state, n)[:, None]
        base = streams.base[None, :]
        return variant, np.stack([base + LINE_BYTES + offset, np.broadcast_to(base, shape)], axis=-1)


class FhaReadback(_RecordWorkload):
    name = "fha-readback"
    help = "persist a 64-256 B record, then write the flush hint and read it back (a driver that polls its FHA)"
    unit_ops = 14
    defaults: ClassVar[dict[str, Any]] = {"reads": 1}

    def builders(self):
        def flush_and_poll(t: TraceWriter, size: int, reads: int) -> None:
            write_persist(t, region(0), bytes(size))
            t.store(FHA, 1)
            for _ in range(reads):
                t.load(FHA)               # the read-back: exits under mmio, free when write-protected
            t.sfence()
        reads = int(self.params["reads"])
        if reads < 0:
            raise ConfigError(f"reads={reads}: must be >= 0")
        return [functools.partial(flush_and_poll, size=size, reads=reads) for size in self.SIZES]

    def units(self, rng, streams, n, state):
        shape = (n, len(streams))
        slot = _pick(rng, streams.size // 256, shape)
        return self.record_sizes(rng, shape), (streams.base[None, :] + slot * 256)[..., None]


WORKLOADS: dict[str, type[Workload]] = {w.name: w for w in (PersistLoop, LinuxFsync, PmdkTx, KvPut, SeqLog,
                                                             RandomRw, FhaReadback)}
"""The registry: workload name -> class."""


def _streams(layouts: VmLayout | Sequence[VmLayout] | None, vms: int, vcpus: int, footprint: int | None,
             min_slice: int) -> _Streams:
    if not isinstance(vms, int) or not 1 <= vms <= 65536:
        raise ConfigError(f"vms={vms!r}: must be 1..65536")
    if not isinstance(vcpus, int) or not 1 <= vcpus <= 256:
        raise ConfigError(f"vcpus={vcpus!r}: must be 1..256")
    if layouts is None:
        layouts = DEFAULT_LAYOUT
    if isinstance(layouts, VmLayout):
        layouts = [layouts]
    if len(layouts) == 1:
        layouts = list(layouts) * vms
    if len(layouts) < vms:
        raise ConfigError(f"{vms} VMs but only {len(layouts)} layouts")
    smallest = min(lay.nvdimm_size for lay in layouts[:vms])
    fp = smallest if footprint is None else footprint
    if not isinstance(fp, int) or fp <= 0 or fp > smallest:
        raise ConfigError(f"footprint={fp!r}: must be 1..{smallest} bytes (the vNVDIMM)")
    fp -= fp % BLOCK
    size = fp // vcpus // BLOCK * BLOCK
    if size < min_slice:
        raise ConfigError(f"a footprint of {fp:#x} bytes gives each of {vcpus} vCPUs {size:#x} bytes; this "
                          f"workload needs at least {min_slice:#x}")
    vm = np.repeat(np.arange(vms), vcpus)
    vcpu = np.tile(np.arange(vcpus), vms)
    vm_base = np.array([layouts[v].nvdimm_gpa for v in vm.tolist()], np.int64)
    for lay in layouts[:vms]:
        if lay.nvdimm_gpa % BLOCK:
            raise ConfigError(f"vNVDIMM GPA {lay.nvdimm_gpa:#x} is not 4 KiB aligned")
    return _Streams(vm=vm.astype(np.uint16), vcpu=vcpu.astype(np.uint8),
                    fha=np.array([layouts[v].fha_gpa for v in vm.tolist()], np.uint64), base=vm_base + vcpu * size,
                    size=size, vm_base=vm_base, footprint=fp)


def _rechunk(arrays: Iterator[np.ndarray], n_ops: int, chunk_ops: int) -> Iterator[np.ndarray]:
    """Exactly ``n_ops`` records from ``arrays``, as chunks of ``chunk_ops`` (the last shorter)."""
    pending: list[np.ndarray] = []
    have = done = 0
    for arr in arrays:
        arr = arr[:n_ops - done - have]
        pending.append(arr)
        have += len(arr)
        while have >= chunk_ops or (have and done + have == n_ops):
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            take = min(chunk_ops, have)
            yield joined[:take]
            pending, have, done = [joined[take:]], have - take, done + take
        if done == n_ops:
            return


def iter_generate(name: str, n_ops: int, layouts: VmLayout | Sequence[VmLayout] | None = None, *,
                  seed: int = 0, vms: int = 1, vcpus: int = 1, footprint: int | None = None,
                  chunk_ops: int = DEFAULT_CHUNK, **params: Any) -> Iterator[np.ndarray]:
    """:func:`generate`'s trace in chunks of ``chunk_ops`` records (the last shorter): the same
    records however it is chunked, in memory for one chunk at a time."""
    if name not in WORKLOADS:
        raise ConfigError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    if not isinstance(n_ops, int) or n_ops < 0:
        raise ConfigError(f"n_ops={n_ops!r}: must be a non-negative integer")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed!r}: must be a non-negative integer")
    if chunk_ops <= 0:
        raise ConfigError(f"chunk_ops={chunk_ops!r}: must be positive")
    workload = WORKLOADS[name](**params)
    streams = _streams(layouts, vms, vcpus, footprint, workload.min_slice())
    if name == "persist-loop" and len(streams) == 1:
        lay = layouts if isinstance(layouts, VmLayout) else (layouts or [DEFAULT_LAYOUT])[0]
        chunks = persist_loop_chunks(n_ops, lay.nvdimm_gpa, streams.footprint, lay.fha_gpa, seed)
    else:
        chunks = _batches(workload, streams, seed)
    return _rechunk(chunks, n_ops, chunk_ops) if n_ops else iter(())


def _batches(workload: Workload, streams: _Streams, seed: int) -> Iterator[np.ndarray]:
    """Endless batches of ``n`` units of every stream, unit ``j`` of stream ``s`` at ``j * S + s``."""
    s = len(streams)
    n = max(1, _BATCH_OPS // (workload.unit_ops * s))
    vm, vcpu, fha = (np.broadcast_to(a, (n, s)).reshape(-1) for a in (streams.vm, streams.vcpu, streams.fha))
    state: dict[str, Any] = {}
    for batch in itertools.count():
        rng = np.random.default_rng([seed, batch])
        variant, bases = workload.units(rng, streams, n, state)
        yield workload.templates.expand(variant.reshape(-1), bases.reshape(n * s, -1).astype(np.uint64), vm, vcpu,
                                        fha, rng)


def generate(name: str, n_ops: int, layouts: VmLayout | Sequence[VmLayout] | None = None, *,
             seed: int = 0, vms: int = 1, vcpus: int = 1, footprint: int | None = None,
             **params: Any) -> np.ndarray:
    """``n_ops`` records of workload ``name`` (see :data:`WORKLOADS`), deterministic per seed.

    ``layouts``: the VMs' layouts (one, or a list of one, for all; or one per VM; default
    :data:`DEFAULT_LAYOUT`);
    ``vms`` x ``vcpus`` streams, interleaved unit by unit; ``footprint``: bytes of each vNVDIMM the
    workload touches (default: all of the smallest); ``params``: the workload's own
    (``deep_flush_every``, ``read_fraction``, ``max_blocks``). With one stream, ``persist-loop``
    is exactly :func:`~nvemu.guest.persist_loop.persist_loop`.

    Examples
    --------
    >>> t = generate("pmdk-tx", 1000, seed=1)
    >>> len(t), int((t["gpa"] == DEFAULT_LAYOUT.fha_gpa).sum()) > 0
    (1000, True)
    """
    chunks = list(iter_generate(name, n_ops, layouts, seed=seed, vms=vms, vcpus=vcpus, footprint=footprint,
                                chunk_ops=max(n_ops, 1), **params))
    return chunks[0] if chunks else np.zeros(0, TRACE_DTYPE)


__all__ = ["DEFAULT_LAYOUT", "WORKLOADS", "VmLayout", "Workload", "generate", "iter_generate"]
