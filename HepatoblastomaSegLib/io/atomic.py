"""Atomic file writes: a crash or a kill never leaves a half-written output behind.

Every writer in the library goes through :func:`atomic_path`: it hands out a temporary name in the destination's own
folder (so the final ``os.replace`` is a rename on the same file system, which POSIX and Windows make atomic) and only
renames it to the real name once the writer returned without error.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError

#: Suffixes whose meaning depends on more than the last dot; the temporary file keeps them so that ITK picks the
#: right writer from the name.
_COMPOUND_SUFFIXES = (".nii.gz", ".seg.nrrd", ".tar.gz")


def full_suffix(path: str | Path) -> str:
    """The file-type suffix of ``path``, compound ones (``.nii.gz``, ``.seg.nrrd``) included, lower case."""
    name = Path(path).name.lower()
    for suffix in _COMPOUND_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, on failure delete it.

    >>> with atomic_path("out/mask.nii.gz") as tmp:   # doctest: +SKIP
    ...     sitk.WriteImage(image, str(tmp))
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder ({exc.strerror or exc})", folder) from exc
    if not os.access(folder, os.W_OK):
        raise InputError("output folder is not writable", folder)
    suffix = full_suffix(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name[: -len(suffix) or None]}.", suffix=f".partial{suffix}",
                                    dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates the file readable by its owner only; give it the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a text file (JSON, CSV, Markdown) atomically, UTF-8, and return its path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write a binary file atomically and return its path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


#: Temporary names :func:`atomic_path` hands out (``.<name>.<random>.partial<suffix>``); a kill -9 leaves them.
_PARTIAL_PATTERN = ".*.partial*"


def remove_stale_partials(folder: str | Path) -> int:
    """Delete the temporary files a killed writer left in ``folder``; returns how many.

    Call it only while holding :func:`folder_lock` on ``folder``: then no other run of ours is writing there, so
    every partial file is stale.
    """
    removed = 0
    for path in Path(folder).glob(_PARTIAL_PATTERN):
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed


@contextlib.contextmanager
def folder_lock(folder: str | Path, *, wait: bool = True) -> Iterator[Path]:
    """Hold an exclusive lock on the output folder ``folder`` (created if needed) while writing into it.

    Two runs given the same output folder then cannot interleave their files: with ``wait`` the second waits for
    the first to finish writing; without, it is refused at once (:class:`InputError`). The lock is the operating
    system's (``flock`` on the folder itself; on Windows ``msvcrt.locking`` on a hidden ``.hbseg.lock`` file in it),
    so a killed run never leaves a stale lock behind.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder ({exc.strerror or exc})", folder) from exc
    busy = InputError("another hbseg run is writing into this output folder; wait for it to finish or choose "
                      "another output folder", folder)
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        with open(folder / ".hbseg.lock", "a+b") as handle:
            try:
                msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)
            except OSError as exc:
                raise busy from exc
            try:
                yield folder
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError as exc:
            raise busy from exc
        yield folder
    finally:
        os.close(fd)  # closing the descriptor releases the lock
