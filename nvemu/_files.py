"""Writing user files safely: every output goes to a temporary file in the same directory and is
renamed into place only when complete, so an interrupted or failing writer leaves either nothing
or the file that was there before (never a half-written one); and an output that is one of the
command's inputs is refused before anything runs.

``os.replace`` within one directory is atomic on POSIX and Windows, which is why the temporary
file lives beside the target rather than in ``/tmp`` (another file system would make the rename
a copy). On Linux the temporary file has no name at all while it is written (``O_TMPFILE``,
open(2)): it is given one only when complete, just before the rename, so even a process killed
outright (SIGKILL, the out-of-memory killer) leaves nothing behind; where the file system cannot
make unnamed files it is a hidden ``.NAME.*.tmp`` beside the target, removed on any error or
interrupt Python sees.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from .errors import ConfigError

PathLike = str | os.PathLike


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unnamed(directory: Path) -> int | None:
    """A descriptor of a new file without a name in ``directory`` (Linux ``O_TMPFILE``), or None
    where that cannot be had (another system, a file system without it, no ``/proc`` to link it
    through later)."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(directory, flag | os.O_WRONLY, 0o666)      # open() applies the umask
    except OSError:                   # EOPNOTSUPP, EISDIR (kernels before 3.11): fall back to a name
        return None


def _link_unnamed(fd: int, path: Path) -> Path:
    """Give the unnamed file ``fd`` a temporary name beside ``path`` (linkat through /proc, as
    open(2) shows for O_TMPFILE) and return it."""
    proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(100):
            tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
            try:        # a src_dir_fd makes Python call linkat(AT_SYMLINK_FOLLOW), not link()
                os.link(str(fd), tmp, src_dir_fd=proc, follow_symlinks=True)
                return tmp
            except FileExistsError:
                continue
            except OSError:                 # linking refused (a restricted /proc...): copy it out
                return _copy_out(fd, path)
    finally:
        os.close(proc)
    raise FileExistsError(f"no free temporary name beside {path}")


def _copy_out(fd: int, path: Path) -> Path:
    """The unnamed file ``fd``'s bytes in a new named temporary file beside ``path`` (the rare way
    out when it cannot be linked)."""
    out, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(out, os.fstat(fd).st_mode & 0o777)
        with open(f"/proc/self/fd/{fd}", "rb") as src, os.fdopen(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Path(tmp)


class AtomicFile:
    """A file written under a temporary name (or none, see the module) beside ``path``;
    :meth:`commit` renames it into place, :meth:`discard` removes it. Used as a context manager it
    commits on success and discards on any exception (KeyboardInterrupt included).

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "out.txt")
    >>> with AtomicFile(path, "w") as f:
    ...     _ = f.write("done")
    >>> open(path).read(), os.listdir(os.path.dirname(path))
    ('done', ['out.txt'])
    """

    def __init__(self, path: PathLike, mode: str = "w", **open_kwargs: Any) -> None:
        if not any(c in mode for c in "wx"):
            raise ValueError(f"AtomicFile mode {mode!r}: only writing modes ('w', 'wb')")
        self.path = Path(os.fspath(path))
        directory = self.path.parent
        fd = _unnamed(directory)
        self.tmp: Path | None = None                   # the temporary name, while it has one
        if fd is None:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".tmp")
            self.tmp = Path(tmp)
            try:
                os.fchmod(fd, 0o666 & ~_umask())       # what open() would have given, not mkstemp's 0600
            except (AttributeError, OSError):       # pragma: no cover - platforms without fchmod
                pass
        self.file: IO[Any] = os.fdopen(fd, mode.replace("x", "w"), **open_kwargs)
        self._done = False

    def commit(self) -> None:
        """Flush, close and rename the temporary file onto ``path`` (an unnamed one is first
        linked under a temporary name beside it)."""
        if self._done:
            return
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            if self.tmp is None:
                self.tmp = _link_unnamed(self.file.fileno(), self.path)
            self.file.close()
            os.replace(self.tmp, self.path)
            self._done = True
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Close and remove the temporary file; ``path`` is left as it was."""
        self._done = True
        with contextlib.suppress(OSError):
            self.file.close()
        if self.tmp is not None:
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
