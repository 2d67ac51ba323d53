"""Writing files safely, for every stage: through a temporary file beside the target and ``os.replace`` (a crash
never leaves half a file), with the modes ``open()`` would give, and byte counts for people."""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path


def human_bytes(n: float) -> str:
    """A byte count for people, in powers of 1000: ``50688`` -> ``"50.7 kB"``."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def temp_file_beside(path: str | os.PathLike[str], suffix: str = ".tmp") -> tuple[int, str]:
    """Create a new, empty temporary file ``.<name>.<random><suffix>`` in the folder of ``path``; ``(fd, name)``.

    Unlike ``tempfile.mkstemp`` (always mode 0600), the file is created with mode ``0o666`` less the process
    umask, as ``open(path, "w")`` would create ``path`` itself: files written through it are as readable by others
    as any other file the user writes.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(tmp, flags, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary file name for {path.name}")


def chmod_as_umask(folder: str | os.PathLike[str]) -> None:
    """Give every file under ``folder`` mode ``0o666`` less the process umask, as ``open()`` would have: libraries that
    write through ``mkstemp``-like calls (safetensors' writer creates 0600 files) leave them unreadable to others."""
    mask = os.umask(0)
    os.umask(mask)
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, 0o666 & ~mask)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    The file gets mode ``0o666`` less the umask (:func:`temp_file_beside`), like a file written with ``open``. On
    any failure the temporary file is removed and the exception (``OSError`` for a full disk or a read-only
    folder) propagates; ``path`` is then untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where the folder should be: say so, not "File exists"
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path.parent)) from None
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


__all__ = ["atomic_write_bytes", "chmod_as_umask", "human_bytes", "temp_file_beside"]
