"""Writing user files safely: every output goes to a temporary file in the same directory and is
renamed into place only when complete, so an interrupted or failing writer leaves either nothing
or the file that was there before (never a half-written one); and an output that is one of the
command's inputs is refused before anything runs.

``os.replace`` within one directory is atomic on POSIX and Windows, which is why the temporary
file lives beside the target rather than in ``/tmp`` (another file system would make the rename
a copy).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from .errors import ConfigError

PathLike = str | os.PathLike


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicFile:
    """A file written under a temporary name beside ``path``; :meth:`commit` renames it into
    place, :meth:`discard` removes it. Used as a context manager it commits on success and
    discards on any exception (KeyboardInterrupt included).

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "out.txt")
    >>> with AtomicFile(path, "w") as f:
    ...     _ = f.write("done")
    >>> open(path).read()
    'done'
    """

    def __init__(self, path: PathLike, mode: str = "w", **open_kwargs: Any) -> None:
        if not any(c in mode for c in "wx"):
            raise ValueError(f"AtomicFile mode {mode!r}: only writing modes ('w', 'wb')")
        self.path = Path(os.fspath(path))
        directory = self.path.parent
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".tmp")
        self.tmp = Path(tmp)
        try:
            os.fchmod(fd, 0o666 & ~_umask())       # what open() would have given, not mkstemp's 0600
        except (AttributeError, OSError):       # pragma: no cover - platforms without fchmod
            pass
        self.file: IO[Any] = os.fdopen(fd, mode.replace("x", "w"), **open_kwargs)

    def commit(self) -> None:
        """Flush, close and rename the temporary file onto ``path``."""
        if self.file.closed and not self.tmp.exists():
            return
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Close and remove the temporary file; ``path`` is left as it was."""
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()

    def __enter__(self) -> IO[Any]:
        return self.file

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """``with atomic_write(path) as f:`` writes ``path`` whole or not at all."""
    af = AtomicFile(path, mode, **open_kwargs)
    try:
        yield af.file
    except BaseException:
        af.discard()
        raise
    af.commit()


def same_path(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file (through links, ``..`` or a different spelling)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(os.fspath(a)).resolve() == Path(os.fspath(b)).resolve()


def check_output_file(path: PathLike, inputs: Iterable[PathLike | None] = ()) -> None:
    """Refuse, before any work, an output file that cannot be written or that is one of ``inputs``.

    Raises
    ------
    ConfigError
        ``path`` is an input, a directory, or in a directory that is missing or not writable.
    """
    p = Path(os.fspath(path))
    for source in inputs:
        if source is not None and str(source) != "-" and same_path(p, source):
            raise ConfigError(f"refusing to write {p}: it is an input of this command ({source})")
    if p.is_dir():
        raise ConfigError(f"cannot write {p}: it is a directory")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"cannot write {p}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {p}: directory {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK) and not os.access(parent, os.W_OK):
        raise ConfigError(f"cannot write {p}: permission denied")


def check_output_dir(path: PathLike, inputs: Iterable[PathLike | None] = ()) -> None:
    """Refuse, before any work, an output directory that cannot be made or written: an existing
    file of that name, or a nearest existing ancestor that is not a writable directory."""
    p = Path(os.fspath(path))
    for source in inputs:
        if source is not None and same_path(p, source):
            raise ConfigError(f"refusing to write into {p}: it is an input of this command")
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"cannot use {p} as the output directory: it is an existing file")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot write into {p}: directory not writable")
        return
    ancestor = p.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"cannot create {p}: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create {p}: {ancestor} is not writable")


__all__ = ["AtomicFile", "atomic_write", "check_output_dir", "check_output_file", "same_path"]
