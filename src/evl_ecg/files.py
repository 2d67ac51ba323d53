"""Writing files safely, for every stage: through a temporary file beside the target and ``os.replace`` (a crash
never leaves half a file), with the modes ``open()`` would give, and byte counts for people."""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
from pathlib import Path


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB blocks (a table or a training file of any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def read_text_file(
    path: str | os.PathLike[str],
    error: type[Exception] = ValueError,
    *,
    what: str = "file",
    missing: type[Exception] | None = None,
) -> str:
    """The UTF-8 text of ``path``; any failure raises ``error`` with one line naming the file, ``what`` it should be
    and the reason (``missing``, when given, for a file that is not there: ``FileNotFoundError`` where callers expect
    it).

    A missing file says "<what> not found", a folder "is a folder, not a <what>", a file that cannot be read the OS's
    reason ("Permission denied"), never "not found" for a file that exists; bytes that are not UTF-8 say so.
    """
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise (missing or error)(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a {what}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text, so not a {what} ({exc.reason})") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or type(exc).__name__})") from None


__all__ = ["atomic_write_bytes", "chmod_as_umask", "human_bytes", "read_text_file", "temp_file_beside"]
