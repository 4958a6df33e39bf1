r"""Writing files inside a directory without ever writing outside it.

Every file jaxflow writes into a scan store (`out/`) or a report directory goes through
`write_bytes` (whole files, atomically) or `append_bytes` (the journal). Both refuse to
follow symbolic links: a store is something people copy and send each other, and a
symlink planted in it (`report/report.md -> ~/.bashrc`) must not turn a write into an
overwrite of a file elsewhere.

**Containment.** A path is given as a `root` (the directory the caller chose, which may
itself be a symlink: the user named it) and a relative path below it. Every component
between the root and the file is opened with `O_NOFOLLOW | O_DIRECTORY` relative to its
parent's descriptor, so a symlinked directory anywhere below the root is refused, and the
file itself is refused when it is a symlink. `..`, absolute parts and empty parts are
refused before anything is opened.

**Atomicity.** A whole file is written to a dot-prefixed temporary name created with
`O_CREAT | O_EXCL | O_NOFOLLOW` in the target's directory, flushed and `fsync`ed, then
renamed over the target (`os.replace`, atomic on POSIX; a rename replaces a directory
entry and never writes through a link), and the directory is `fsync`ed. Readers see the
old file or the whole new one, never a mix; a crash leaves at most a `.*.tmp` orphan.

Refusals raise `UnsafePathError` (a `StoreError`), naming the offending path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from ._errors import UnsafePathError

__all__ = ["write_bytes", "append_bytes", "truncate", "check_relative", "check_no_symlink",
           "make_dirs", "read_bytes", "UnsafePathError"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def check_relative(rel) -> tuple[str, ...]:
    """The parts of a relative path below a root; refuses absolute paths, `..`, `.`."""
    text = str(rel)
    p = PurePosixPath(text.replace(os.sep, "/"))
    parts = p.parts
    if not parts or p.is_absolute() or any(x in ("", ".", "..") for x in parts) or "\0" in text:
        raise UnsafePathError(
            f"{text!r} is not a plain relative path inside the directory (no '..', no "
            "absolute paths)."
        )
    return parts


def check_no_symlink(path) -> None:
    """Refuses `path` if it is a symbolic link (dangling or not)."""
    if Path(path).is_symlink():
        raise UnsafePathError(
            f"{path} is a symbolic link; jaxflow does not follow links inside a store or "
            "report directory. Remove the link (or copy the store without links) and retry."
        )


@contextlib.contextmanager
def _open_dir(root, parts: tuple[str, ...], *, create: bool) -> Iterator[int]:
    """A descriptor of `root/parts...`, reached without following links below `root`."""
    root = Path(root)
    if create:
        root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    where = root
    try:
        for part in parts:
            where = where / part
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
            try:
                nfd = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(where):
                    check_no_symlink(where)
                if e.errno == errno.ENOTDIR:
                    raise UnsafePathError(f"{where} is not a directory.") from None
                raise
            os.close(fd)
            fd = nfd
        yield fd
    finally:
        os.close(fd)


def _refuse_link(name: str, dir_fd: int, shown: Path) -> bool:
    """Raises if `name` is a symlink (or not a regular file); returns whether it exists."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        check_no_symlink(shown)
        raise UnsafePathError(f"{shown} is a symbolic link; refusing to write through it.")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{shown} exists and is not a regular file; refusing to replace it.")
    return True


def _split(root, rel) -> tuple[Path, tuple[str, ...], str]:
    parts = check_relative(rel)
    return Path(root), parts[:-1], parts[-1]


def make_dirs(root, rel) -> Path:
    """Creates `root/rel` (and `root`) without following links below `root`."""
    parts = check_relative(rel)
    with _open_dir(root, parts, create=True):
        pass
    return Path(root).joinpath(*parts)


def write_bytes(root, rel, data: bytes) -> Path:
    """Atomically writes `data` to `root/rel`, creating directories; never follows links
    below `root`. Returns the path written."""
    root, dirs, name = _split(root, rel)
    target = root.joinpath(*dirs, name)
    with _open_dir(root, dirs, create=True) as dfd:
        _refuse_link(name, dfd, target)
        tmp = f".{name}.{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644,
                     dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            # Paths, not descriptors, so that the rename is the plain POSIX one; the
            # directories were checked above and a rename never follows the target link.
            os.replace(target.parent / tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        with contextlib.suppress(OSError):  # not every platform can fsync a directory
            os.fsync(dfd)
    return target


def append_bytes(root, rel, data: bytes) -> Path:
    """Appends `data` to `root/rel` (created if missing) and `fsync`s it; never follows
    links below `root`."""
    root, dirs, name = _split(root, rel)
    target = root.joinpath(*dirs, name)
    with _open_dir(root, dirs, create=True) as dfd:
        existed = _refuse_link(name, dfd, target)
        fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC,
                     0o644, dir_fd=dfd)
        with os.fdopen(fd, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if not existed:
            with contextlib.suppress(OSError):
                os.fsync(dfd)
    return target


def truncate(root, rel, size: int) -> None:
    """Truncates the regular file `root/rel` to `size` bytes (not through a link)."""
    root, dirs, name = _split(root, rel)
    with _open_dir(root, dirs, create=False) as dfd:
        _refuse_link(name, dfd, root.joinpath(*dirs, name))
        fd = os.open(name, os.O_WRONLY | _NOFOLLOW | _CLOEXEC, dir_fd=dfd)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)


def read_bytes(root, rel) -> bytes:
    """The bytes of the regular file `root/rel`, reached without following links."""
    root, dirs, name = _split(root, rel)
    with _open_dir(root, dirs, create=False) as dfd:
        _refuse_link(name, dfd, root.joinpath(*dirs, name))
        fd = os.open(name, os.O_RDONLY | _NOFOLLOW | _CLOEXEC, dir_fd=dfd)
        with os.fdopen(fd, "rb") as fh:
            return fh.read()
