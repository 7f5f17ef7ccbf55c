"""The snapshot container: an uncompressed ``.npz`` (a zip of ``.npy`` members), read without
trusting it, and the digest that seals it.

Every member's header is read and its size checked (against the bytes the file really holds, and
against limits the caller derives from the snapshot's description) before a byte of its data is
allocated, so a crafted file that claims a terabyte array is refused, not obeyed. Every refusal is
:class:`~nvemu.errors.SnapshotError` naming the file and the member.

The seal is SHA-256 over the description and every array: it detects a truncated or damaged file,
but anyone can recompute it after editing one, so it is no proof of origin. A snapshot saved with a
``key`` is sealed with HMAC-SHA-256 instead (RFC 2104), which only a holder of the key can produce.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import SnapshotError

MEMBER = re.compile(r"(meta|digest|engine_[a-z0-9_]{1,64})\.npy")
MAX_MEMBERS = 1 << 16
MAX_META_BYTES = 64 << 20       # a description of 65,536 VMs with 64 vNVDIMMs each stays well below
KEYED = "hmac-sha256:"           # the prefix of a keyed seal; a plain seal is 64 hex digits
_CHUNK = 16 << 20


@dataclass(frozen=True)
class Member:
    """One ``.npy`` member as its header describes it (nothing of its data read yet)."""

    name: str                   # without ".npy"
    info: zipfile.ZipInfo
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int                 # bytes of magic and header before the data

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


def check_key(key: bytes | None) -> bytes | None:
    """``key`` as bytes: a non-empty bytes-like object, or None for an unkeyed seal."""
    if key is None:
        return None
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"a snapshot key must be bytes, not {type(key).__name__}")
    key = bytes(key)
    if not key:
        raise ValueError("a snapshot key must not be empty")
    return key


def seal(arrays: dict[str, np.ndarray], meta: str, key: bytes | None = None) -> str:
    """The digest stored with a snapshot: SHA-256 hex, or ``hmac-sha256:`` and the HMAC hex under ``key``."""
    h = hmac.new(key, digestmod=hashlib.sha256) if key is not None else hashlib.sha256()
    h.update(meta.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return (KEYED if key is not None else "") + h.hexdigest()


def verify(path: str | Path, arrays: dict[str, np.ndarray], meta: str, stored: str, key: bytes | None) -> None:
    """SnapshotError unless ``stored`` is the seal of ``arrays`` and ``meta`` (under ``key`` when given)."""
    keyed = stored.startswith(KEYED)
    if key is None and keyed:
        raise SnapshotError(f"{path}: the snapshot is sealed with a key; pass the key to restore it")
    if key is not None and not keyed:
        raise SnapshotError(f"{path}: the snapshot is not sealed with a key, so its origin cannot be verified")
    if not hmac.compare_digest(seal(arrays, meta, key).encode(), stored.encode()):
        raise SnapshotError(f"{path}: contents do not match their digest: the file is corrupted"
                            + (" or was not sealed with this key" if key is not None else ""))


def open_members(path: str | Path) -> tuple[zipfile.ZipFile, dict[str, Member]]:
    """The open zip and its members by name, every header read and checked; SnapshotError otherwise."""
    try:
        size = Path(path).stat().st_size
        z = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as e:
        raise SnapshotError(f"{path}: not a readable nvemu snapshot ({type(e).__name__}: {e})") from None
    try:
        infos = z.infolist()
        if len(infos) > MAX_MEMBERS:
            raise SnapshotError(f"{path}: {len(infos)} members is more than a snapshot has")
        members: dict[str, Member] = {}
        for info in infos:
            m = _header(path, z, info, size)
            if m.name in members:
                raise SnapshotError(f"{path}: member {m.name} appears twice")
            members[m.name] = m
    except BaseException:
        z.close()
        raise
    return z, members


def _header(path: str | Path, z: zipfile.ZipFile, info: zipfile.ZipInfo, file_size: int) -> Member:
    match = MEMBER.fullmatch(info.filename)
    if not match:
        raise SnapshotError(f"{path}: member {info.filename!r} is not part of an nvemu snapshot")
    where = f"{path}: member {match.group(1)}"
    if info.compress_type != zipfile.ZIP_STORED:
        raise SnapshotError(f"{where} is compressed; nvemu writes snapshot members stored, so its size cannot "
                            "be trusted")
    if info.file_size != info.compress_size or info.header_offset + info.file_size > file_size:
        raise SnapshotError(f"{where} claims {info.file_size} bytes, more than the file holds")
    try:
        with z.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=4096)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=4096)
            else:
                raise ValueError(f"npy format version {version} is not one nvemu writes")
            offset = f.tell()
    except (OSError, ValueError, SyntaxError, TypeError, EOFError, zipfile.BadZipFile, RuntimeError) as e:
        raise SnapshotError(f"{where}: unreadable array header ({type(e).__name__}: {e})") from None
    if dtype.kind not in "ui" or dtype.fields is not None or dtype.subdtype is not None or fortran:
        raise SnapshotError(f"{where} holds {dtype}{' in Fortran order' if fortran else ''}, not plain integers")
    m = Member(match.group(1), info, dtype, tuple(shape), offset)
    if m.offset + m.nbytes != info.file_size:
        raise SnapshotError(f"{where} claims a {dtype} array of shape {m.shape} ({m.nbytes} bytes) but holds "
                            f"{info.file_size - m.offset} bytes")
    return m


def check_shape(path: str | Path, m: Member, max_rows: int, tail: tuple[int, ...] | None = None,
                rows: int | None = None) -> None:
    """SnapshotError unless ``m`` has at most ``max_rows`` rows (exactly ``rows`` when given) of shape
    ``tail`` each (one-dimensional when ``tail`` is None)."""
    want_tail = () if tail is None else tail
    ok = len(m.shape) == 1 + len(want_tail) and m.shape[1:] == want_tail and m.shape[0] <= max_rows
    if ok and rows is not None:
        ok = m.shape[0] == rows
    if not ok:
        want = f"{rows if rows is not None else f'at most {max_rows}'} rows" + (f" of {tail}" if tail else "")
        raise SnapshotError(f"{path}: member {m.name} claims shape {m.shape} ({m.nbytes} bytes), where its "
                            f"description allows {want}")


def read(path: str | Path, z: zipfile.ZipFile, m: Member) -> np.ndarray:
    """The array of member ``m`` (its header already checked), read in chunks into one buffer."""
    out = np.empty(m.shape, m.dtype)
    view = memoryview(out.reshape(-1).view(np.uint8))
    try:
        with z.open(m.info) as f:
            f.read(m.offset)
            done = 0
            while done < m.nbytes:
                n = f.readinto(view[done:done + _CHUNK])
                if not n:
                    raise EOFError(f"{m.nbytes - done} bytes missing")
                done += n
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, RuntimeError) as e:
        raise SnapshotError(f"{path}: member {m.name} is corrupted ({type(e).__name__}: {e})") from None
    return out


def read_all(path: str | Path, z: zipfile.ZipFile, members: Iterable[Member],
             check: Callable[[Member], None]) -> dict[str, np.ndarray]:
    """Every member, after ``check`` accepted all their headers (nothing is read before)."""
    members = list(members)
    for m in members:
        check(m)
    return {m.name: read(path, z, m) for m in members}
