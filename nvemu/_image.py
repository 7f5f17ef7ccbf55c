"""The durable image of NVDIMM space, sparse: what a power failure leaves, chunk by chunk.

Both engines return one from ``power_fail()``. Only chunks that were ever written are held; every
other byte is zero. Index it like the dense array it replaces (``image[off:off + n]`` by offset
from ``pmem_base``), or read it by host address, list what it holds, compare two images, or ask for
a dense copy when the host is small.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .errors import ResourceError

DENSE_LIMIT = 4 << 30
"""Largest NVDIMM space :meth:`DurableImage.to_array` copies out densely (bytes)."""


class DurableImage:
    """NVDIMM space ``[pmem_base, pmem_base + pmem_bytes)`` as a power failure left it.

    ``chunks`` maps the offset (from ``pmem_base``) of each touched chunk of ``chunk_bytes`` to
    its bytes; absent chunks are zero.

    Examples
    --------
    >>> img = DurableImage(1 << 32, 1 << 22, 1 << 21, {0: bytes(2 << 20)[:-1] + b"\\x07"})
    >>> img.read((1 << 32) + (2 << 20) - 1, 2), img.ranges(), len(img)
    (b'\\x07\\x00', [(4294967296, 2097152)], 4194304)
    """

    def __init__(self, pmem_base: int, pmem_bytes: int, chunk_bytes: int, chunks: dict[int, bytes]) -> None:
        self.pmem_base = pmem_base
        self.pmem_bytes = pmem_bytes
        self.chunk_bytes = chunk_bytes
        self._chunks = {int(off): bytes(data[:min(chunk_bytes, pmem_bytes - off)])
                        for off, data in sorted(chunks.items())}

    def __len__(self) -> int:
        return self.pmem_bytes

    def _read_offset(self, off: int, n: int) -> bytes:
        if off < 0 or n < 0 or off + n > self.pmem_bytes:
            raise IndexError(f"range [{off:#x}, {off + n:#x}) lies outside NVDIMM space of {self.pmem_bytes:#x} bytes")
        out = bytearray(n)
        pos = off
        while pos < off + n:
            base = pos - pos % self.chunk_bytes
            piece = min(off + n, base + self.chunk_bytes) - pos
            data = self._chunks.get(base)
            if data is not None:
                out[pos - off:pos - off + piece] = data[pos - base:pos - base + piece]
            pos += piece
        return bytes(out)

    def read(self, hpa: int, n: int) -> bytes:
        """``n`` bytes of the image at host address ``hpa``."""
        return self._read_offset(hpa - self.pmem_base, n)

    def __getitem__(self, key: slice | int) -> np.ndarray | int:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.pmem_bytes)
            if step != 1:
                raise IndexError("a durable image is sliced with step 1 only")
            return np.frombuffer(self._read_offset(start, max(0, stop - start)), np.uint8)
        k = int(key) + (self.pmem_bytes if int(key) < 0 else 0)
        return self._read_offset(k, 1)[0]

    def ranges(self) -> list[tuple[int, int]]:
        """``(hpa, bytes)`` of every touched chunk, in address order, adjacent chunks merged."""
        out: list[tuple[int, int]] = []
        for off, data in self._chunks.items():
            hpa = self.pmem_base + off
            if out and out[-1][0] + out[-1][1] == hpa:
                out[-1] = (out[-1][0], out[-1][1] + len(data))
            else:
                out.append((hpa, len(data)))
        return out

    def chunks(self) -> Iterator[tuple[int, bytes]]:
        """``(hpa, bytes)`` of each touched chunk."""
        for off, data in self._chunks.items():
            yield self.pmem_base + off, data

    @property
    def touched_bytes(self) -> int:
        return sum(len(d) for d in self._chunks.values())

    def diff(self, other: "DurableImage") -> list[tuple[int, int]]:
        """``(hpa, bytes)`` runs where the two images differ (an absent chunk counts as zeros)."""
        if (self.pmem_base, self.pmem_bytes) != (other.pmem_base, other.pmem_bytes):
            raise ValueError("images of different NVDIMM spaces cannot be compared")
        out: list[tuple[int, int]] = []
        for off in sorted(set(self._chunks) | set(other._chunks)) if self.chunk_bytes == other.chunk_bytes \
                else self._offsets_in_common_chunks(other):
            n = min(self.chunk_bytes, self.pmem_bytes - off)
            a = np.frombuffer(self._read_offset(off, n), np.uint8)
            b = np.frombuffer(other._read_offset(off, n), np.uint8)
            bad = np.flatnonzero(a != b)
            if not len(bad):
                continue
            starts = bad[np.r_[True, np.diff(bad) > 1]]
            ends = bad[np.r_[np.diff(bad) > 1, True]] + 1
            for s, e in zip(starts.tolist(), ends.tolist()):
                hpa = self.pmem_base + off + s
                if out and out[-1][0] + out[-1][1] == hpa:
                    out[-1] = (out[-1][0], out[-1][1] + e - s)
                else:
                    out.append((hpa, e - s))
        return out

    def _offsets_in_common_chunks(self, other: "DurableImage") -> list[int]:
        size = min(self.chunk_bytes, other.chunk_bytes)
        offs = set()
        for img in (self, other):
            for off, data in img._chunks.items():
                offs.update(range(off, off + len(data), size))
        return sorted(offs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DurableImage):
            return NotImplemented
        return (self.pmem_base, self.pmem_bytes) == (other.pmem_base, other.pmem_bytes) and not self.diff(other)

    __hash__ = None  # type: ignore[assignment]

    def to_array(self, limit: int = DENSE_LIMIT) -> np.ndarray:
        """A dense ``uint8[pmem_bytes]`` copy; ResourceError for NVDIMM space above ``limit`` bytes."""
        if self.pmem_bytes > limit:
            raise ResourceError(f"a dense copy of {self.pmem_bytes:#x} bytes of NVDIMM space exceeds the "
                                f"{limit:#x}-byte limit of to_array(limit=...); read ranges instead")
        out = np.zeros(self.pmem_bytes, np.uint8)
        for off, data in self._chunks.items():
            out[off:off + len(data)] = np.frombuffer(data, np.uint8)
        return out

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        a = self.to_array()
        return a if dtype is None else a.astype(dtype)

    def __bytes__(self) -> bytes:
        return self.to_array().tobytes()

    def __repr__(self) -> str:
        return (f"DurableImage({len(self._chunks)} touched chunks of {self.chunk_bytes:#x} bytes in "
                f"{self.pmem_bytes:#x} bytes of NVDIMM space at {self.pmem_base:#x})")


__all__ = ["DurableImage", "DENSE_LIMIT"]
