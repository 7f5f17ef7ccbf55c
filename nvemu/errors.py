"""The exceptions nvemu raises. Every one is an :class:`NvemuError`."""

from __future__ import annotations


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

    ``reason`` is Intel's basic exit reason (48 EPT violation, 49 EPT misconfiguration, 18 VMCALL);
    ``qualification`` is the SDM's (Vol. 3C 27.2.1): for an EPT violation bit 0 read, 1 write, 2 fetch,
    bits 3-5 the entry's R/W/X, bit 7 guest linear address valid, bit 8 access to the final translation
    (a guest store to a read-only leaf: 0x18a); an EPT misconfiguration saves none (0), so there the
    access is told by ``op``.
    """

    def __init__(self, reason: int, qualification: int, gpa: int, op_index: int,
                 vm: int = 0, vcpu: int = 0, op: int = 0) -> None:
        self.reason = reason
        self.qualification = qualification
        self.gpa = gpa
        self.op_index = op_index
        self.vm = vm
        self.vcpu = vcpu
        self.op = op
        if reason == 48:
            access = "write" if qualification & 2 else "fetch" if qualification & 4 else "read"
        else:
            access = "write" if op in (1, 2) else "read"     # Op.STORE, Op.NT_STORE
        perms = "".join(c if qualification >> (3 + i) & 1 else "-" for i, c in enumerate("rwx"))
        name = {48: "EPT violation", 49: "EPT misconfiguration", 18: "VMCALL"}.get(reason, "exit")
        super().__init__(f"{name} (reason {reason}) on {access} of GPA {gpa:#x} by vm{vm} cpu{vcpu} "
                         f"at op {op_index}" + (f"; entry permissions {perms}" if reason == 48 else ""))

    @property
    def read(self) -> bool:
        """Exit qualification bit 0: the access was a data read."""
        return bool(self.qualification & 1)

    @property
    def write(self) -> bool:
        """Exit qualification bit 1: the access was a data write."""
        return bool(self.qualification & 2)

    @property
    def fetch(self) -> bool:
        """Exit qualification bit 2: the access was an instruction fetch."""
        return bool(self.qualification & 4)

    @property
    def readable(self) -> bool:
        """Exit qualification bit 3: the EPT entry allowed reads."""
        return bool(self.qualification & 8)

    @property
    def writable(self) -> bool:
        """Exit qualification bit 4: the EPT entry allowed writes."""
        return bool(self.qualification & 16)

    @property
    def executable(self) -> bool:
        """Exit qualification bit 5: the EPT entry allowed execution."""
        return bool(self.qualification & 32)
