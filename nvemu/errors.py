"""The exceptions nvemu raises. Every one is an :class:`NvemuError`."""

from __future__ import annotations

from typing import Callable

from ._constants import QUAL_ENTRY_RWX, QUAL_ENTRY_SHIFT, QUAL_FETCH, QUAL_READ, QUAL_WRITE, ExitReason, Op


class NvemuError(Exception):
    """Base of every nvemu exception. Errors about one trace record also carry ``index`` (the
    record), ``field`` (the field refused, when one is) and ``detail`` (the text after
    "record N: "), so callers can re-word them for a larger trace without parsing the message."""

    index: int | None = None
    field: str | None = None
    detail: str | None = None

    @classmethod
    def at_record(cls, index: int, detail: str, field: str | None = None) -> "NvemuError":
        """``cls("record {index}: {detail}")`` with the structured fields set."""
        e = cls(f"record {index}: {detail}")
        e.index, e.field, e.detail = index, field, detail
        return e

    def shifted(self, offset: int, where: Callable[[int], str] | None = None) -> "NvemuError":
        """This error about record ``index`` of a slice, re-told for a trace in which the slice
        starts at record ``offset``: ``"record {index + offset}: {detail}"``, or with ``where``
        (how the trace names a record, e.g. ``"record 7 (line 9)"``) ``"{where(i)}, field F: ..."``.
        An error about no record comes back as it is.

        >>> TraceError.at_record(2, "size 3 is not valid", "size").shifted(100)
        TraceError('record 102: size 3 is not valid')
        """
        if self.index is None or self.detail is None:
            return self
        index = self.index + offset
        if where is None:
            return type(self).at_record(index, self.detail, self.field)
        e = type(self)(f"{where(index)}{f', field {self.field}' if self.field else ''}: {self.detail}")
        e.index, e.field, e.detail = index, self.field, self.detail
        return e


class ConfigError(NvemuError, ValueError):
    """A platform, VM or cost description that cannot be built."""


class LifecycleError(NvemuError, RuntimeError):
    """An operation the VM's lifecycle state does not allow (or a destroyed VM)."""


class ResourceError(NvemuError, RuntimeError):
    """The host cannot satisfy a request: out of DRAM, NVDIMM space or page-table pages, or overlap."""


class TraceError(NvemuError, ValueError):
    """A malformed trace record or file: names the record index and the field."""


class NfitError(NvemuError, ValueError):
    """A malformed ACPI NFIT: names the byte offset and the field."""


class SnapshotError(NvemuError, ValueError):
    """A snapshot file that cannot be restored: unreadable, truncated, corrupted or of another format."""


class GuestFault(NvemuError):
    """An exit the hypervisor does not handle, delivered as an exception carrying the exit's fields.

    ``reason`` is Intel's basic exit reason (an :class:`~nvemu.ExitReason` when it is one of them);
    ``qualification`` is the SDM's (Vol. 3C 27.2.1): for an EPT violation bit 0 read, 1 write, 2 fetch,
    bits 3-5 the entry's R/W/X, bit 7 guest linear address valid, bit 8 access to the final translation
    (a guest store to a read-only leaf: 0x18a); an EPT misconfiguration saves none (0), so there the
    access is told by ``op``.
    """

    def __init__(self, reason: int, qualification: int, gpa: int, op_index: int,
                 vm: int = 0, vcpu: int = 0, op: int = 0) -> None:
        self.reason = ExitReason(reason) if reason in ExitReason._value2member_map_ else reason
        self.qualification = qualification
        self.gpa = gpa
        self.op_index = op_index
        self.vm = vm
        self.vcpu = vcpu
        self.op = op
        if reason == ExitReason.EPT_VIOLATION:
            access = "write" if qualification & QUAL_WRITE else "fetch" if qualification & QUAL_FETCH else "read"
        else:
            access = "write" if op in (Op.STORE, Op.NT_STORE) else "read"
        perms = "".join(c if qualification >> (QUAL_ENTRY_SHIFT + i) & 1 else "-" for i, c in enumerate("rwx"))
        name = ExitReason(reason).label if reason in ExitReason._value2member_map_ else "exit"
        violation = reason == ExitReason.EPT_VIOLATION
        super().__init__(f"{name} (reason {reason}) on {access} of GPA {gpa:#x} by vm{vm} cpu{vcpu} "
                         f"at op {op_index}" + (f"; entry permissions {perms}" if violation else ""))

    def shifted(self, offset: int, where: Callable[[int], str] | None = None) -> "GuestFault":
        """The same exit with ``op_index`` counted in a trace whose slice starts at ``offset``."""
        return GuestFault(self.reason, self.qualification, self.gpa, self.op_index + offset, self.vm, self.vcpu,
                          self.op)

    @property
    def read(self) -> bool:
        """Exit qualification bit 0: the access was a data read."""
        return bool(self.qualification & QUAL_READ)

    @property
    def write(self) -> bool:
        """Exit qualification bit 1: the access was a data write."""
        return bool(self.qualification & QUAL_WRITE)

    @property
    def fetch(self) -> bool:
        """Exit qualification bit 2: the access was an instruction fetch."""
        return bool(self.qualification & QUAL_FETCH)

    @property
    def readable(self) -> bool:
        """Exit qualification bit 3: the EPT entry allowed reads."""
        return bool(self.qualification >> QUAL_ENTRY_SHIFT & 1)

    @property
    def writable(self) -> bool:
        """Exit qualification bit 4: the EPT entry allowed writes."""
        return bool(self.qualification >> (QUAL_ENTRY_SHIFT + 1) & 1)

    @property
    def executable(self) -> bool:
        """Exit qualification bit 5: the EPT entry allowed execution."""
        return bool(self.qualification >> (QUAL_ENTRY_SHIFT + 2) & 1)

    @property
    def unmapped(self) -> bool:
        """An EPT violation on a GPA no entry maps (the entry's R/W/X all clear)."""
        return self.reason == ExitReason.EPT_VIOLATION and not self.qualification & QUAL_ENTRY_RWX
