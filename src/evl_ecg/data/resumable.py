"""What the two corpus builders share: :mod:`.corpus` (synthetic ECGs) and :mod:`.build` (a public database):
resumable builds of the corpus layout.

Both write the same layout (``train.json``, ``bench/``, ``val/``, ``images/``, ``manifest.json``) in the same way:

* the output folder is scanned first (:func:`scan_folder`): an entry no build writes is refused
  (:func:`refuse_foreign`), so is a build of other settings (:func:`refuse_other_settings`) or one the disk cannot
  hold (:func:`check_free_space`); then the settings are recorded in ``.build.json`` and the build's own temporary
  files, left by a killed run, are deleted (:func:`begin`);
* the records are made in chunks, each saved atomically under ``.parts/`` once finished (:func:`save_part`), in this
  process or in worker processes, with a progress bar (:func:`run_chunks`), so that a killed run resumes;
* at the end the split files (:func:`write_splits`) and the manifest are written and ``.parts/`` removed
  (:func:`finish`, which returns the builder's :class:`BuildOutcome`).

Every write is atomic (:func:`write_file`); one that fails (read-only folder, full disk) stops the build with the
builder's own error class, one line naming the file and the OS error (:func:`write_error`): it is never a skipped
record. Each builder keeps its rules: which files and folders are its own, how a record is made, its manifest.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from evl_ecg.data.records import TEMP_NAME, Record, dumps_records
from evl_ecg.files import atomic_write_bytes, human_bytes

__all__ = [
    "BuildOutcome",
    "FolderScan",
    "Tally",
    "begin",
    "check_free_space",
    "finish",
    "refuse_foreign",
    "refuse_other_settings",
    "run_chunks",
    "save_part",
    "scan_folder",
    "versions",
    "write_error",
    "write_file",
    "write_splits",
]

#: A write: ``write(path, data)`` (a builder's ``write_file`` with its error class bound).
Write = Callable[[Path, bytes], Any]


@dataclass
class BuildOutcome:
    """What a build did: records per split, skipped items, images rendered now, images found valid and kept,
    records taken from an earlier (interrupted or finished) run, wall time, and the manifest written."""

    out_dir: Path
    counts: dict[str, int]
    skipped: list[dict[str, Any]]
    rendered: int
    reused: int
    resumed: int
    seconds: float
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)


Outcome = TypeVar("Outcome", bound=BuildOutcome)


@dataclass
class Tally:
    """A run's counts as it goes (the :class:`BuildOutcome` fields of the same names) and its start time."""

    rendered: int = 0
    reused: int = 0
    resumed: int = 0
    started: float = field(default_factory=time.perf_counter)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


E = TypeVar("E", bound=Exception)


def write_error(path: Path, exc: OSError, error: type[E]) -> E:
    """The one-line error of a file that cannot be written, as ``error`` (the builder's class)."""
    why = exc.strerror or str(exc) or type(exc).__name__
    return error(f"{path}: cannot write ({why}); no record was skipped: fix it and rerun to resume")


def write_file(
    path: Path,
    data: bytes,
    *,
    error: type[Exception],
    write: Callable[[Path, bytes], Any] = atomic_write_bytes,
    keep_same: bool = False,
) -> bool:
    """Write ``data`` atomically (``write``: :func:`~evl_ecg.files.atomic_write_bytes`); whether it was written.

    With ``keep_same`` a file that already holds exactly ``data`` is left alone (its mtime too). An ``OSError``
    (read-only folder, full disk) becomes :func:`write_error` as ``error``.
    """
    try:
        if keep_same and path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
        write(path, data)
    except OSError as exc:
        raise write_error(path, exc, error) from None
    return True


def save_part(path: Path, results: list[dict[str, Any]], write: Write) -> None:
    """Save a finished chunk's results (a JSON list) under ``.parts/``."""
    write(path, json.dumps(results, ensure_ascii=False).encode("utf-8"))


# --------------------------------------------------------------------------------------------------
# The output folder
# --------------------------------------------------------------------------------------------------


@dataclass
class FolderScan:
    """What :func:`scan_folder` found in an output folder."""

    foreign: list[str] = field(default_factory=list)  # relative paths, folders with a trailing "/"
    temporary: list[Path] = field(default_factory=list)  # the build's own temporary files
    own: list[str] = field(default_factory=list)  # relative paths of the build's own files
    images: int = 0  # own files under images/


def scan_folder(
    out_dir: Path, own_file: Callable[[tuple[str, ...]], bool], own_folder: Callable[[tuple[str, ...]], bool]
) -> FolderScan:
    """Every entry of ``out_dir``: the build's own files (``own_file(parts)``), its own temporary files
    (``.<name>.<8 characters>.tmp`` beside one of them), and the rest (foreign). Symlinks are foreign (a build
    writes none), and only the build's own folders (``own_folder(parts)``) are entered."""
    scan = FolderScan()

    def walk(folder: Path, rel: tuple[str, ...]) -> None:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            parts = (*rel, entry.name)
            shown = "/".join(parts)
            if entry.is_symlink():
                scan.foreign.append(shown)
            elif entry.is_dir():
                if own_folder(parts):
                    walk(Path(entry.path), parts)
                else:
                    scan.foreign.append(shown + "/")
            elif own_file(parts):
                scan.own.append(shown)
                scan.images += parts[0] == "images"
            elif (m := TEMP_NAME.fullmatch(entry.name)) and own_file((*rel, m.group(1))):
                scan.temporary.append(Path(entry.path))
            else:
                scan.foreign.append(shown)

    walk(out_dir, ())
    return scan


def refuse_foreign(out_dir: Path, foreign: list[str], *, who: str, filler: str, error: type[Exception]) -> None:
    """Refuse a folder holding entries no ``who`` build writes, naming the first five."""
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise error(
            f"{out_dir}: holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} that no {who} build writes "
            f"({shown}); {filler} fills only an empty folder or its own partial build: use another --out"
        )


def refuse_other_settings(
    out_dir: Path, path: Path, found: Mapping[str, Any], wanted: Mapping[str, Any], error: type[Exception]
) -> None:
    """Refuse a folder whose ``path`` (``.build.json`` or the manifest) records other settings than ``wanted``."""
    diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
    if diff:
        first = diff[0]
        raise error(
            f"{out_dir}: already holds a corpus built with other settings ({', '.join(diff)} differ: {path.name} "
            f"has {first} {found.get(first)!r}, asked {wanted.get(first)!r}); use another --out or delete the folder"
        )


def check_free_space(
    out_dir: Path, need: int, records: int, size: tuple[int, int], *, hint: str, error: type[Exception]
) -> None:
    """Refuse a build of about ``need`` bytes (``records`` records, images of ``size``) that its disk cannot hold."""
    free = shutil.disk_usage(out_dir).free
    if need > free:
        width, height = size
        raise error(
            f"{out_dir}: the corpus needs about {human_bytes(need)} ({records} records, images of {width}x{height} px) "
            f"but its disk has {human_bytes(free)} free; free some space, or {hint}"
        )


def begin(
    out_dir: Path, settings: Mapping[str, Any], *, new_marker: bool, temporary: Iterable[Path], write: Write
) -> None:
    """Record the settings in ``.build.json`` (when ``new_marker``) and delete the build's own temporary files (left
    by a killed run; never any other file)."""
    if new_marker:
        write(out_dir / ".build.json", (json.dumps(dict(settings), indent=1, sort_keys=True) + "\n").encode())
    for path in temporary:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# Running the chunks, finishing
# --------------------------------------------------------------------------------------------------


def run_chunks(
    work: Callable[..., Any],
    jobs: list[tuple[Any, ...]],
    take: Callable[[tuple[Any, ...], Any], int],
    *,
    workers: int,
    total: int,
    done: int,
    progress: bool,
    desc: str,
) -> None:
    """Run ``work(*job)`` for every job (a chunk, which saves its own part), in this process (``workers <= 1`` or one
    job) or in ``workers`` processes, in completion order; ``take(job, result)`` keeps a result and returns how many
    records it holds, which moves the progress bar (of ``total``, ``done`` already). An error in a chunk (a write
    error, Ctrl-C) stops the build: no further chunk starts."""
    from tqdm import tqdm

    bar = tqdm(total=total, disable=not progress, unit="rec", desc=desc, dynamic_ncols=True, leave=False)
    bar.update(done)
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                bar.update(take(job, work(*job)))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(work, *job): job for job in jobs}
                try:
                    for fut in as_completed(futures):
                        bar.update(take(futures[fut], fut.result()))
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    finally:
        bar.close()


def write_splits(
    out_dir: Path, by_split: Mapping[str, list[dict[str, Any]]], file_of: Callable[[str], str], write: Write
) -> dict[str, str]:
    """Write each split's records (checked by :meth:`Record.from_dict`) to its file ``file_of(split)``; returns
    ``{split: relative path}``, the manifest's ``files``."""
    files: dict[str, str] = {}
    for split, found in by_split.items():
        rel = file_of(split)
        records = [Record.from_dict(r, source=f"{out_dir / rel}") for r in found]
        write(out_dir / rel, dumps_records(records))
        files[split] = rel
    return files


def versions(*libraries: str) -> dict[str, str]:
    """evl_ecg's and Python's versions, then each library's in the order given (``pillow``: the ``PIL`` module)."""
    from evl_ecg import __version__

    found = {"evl_ecg": __version__, "python": platform.python_version()}
    for name in libraries:
        found[name] = importlib.import_module("PIL" if name == "pillow" else name).__version__
    return found


def finish(
    out_dir: Path,
    manifest: dict[str, Any],
    outcome: type[Outcome],
    *,
    skipped: list[dict[str, Any]],
    tally: Tally,
    write: Write,
    ensure_ascii: bool = True,
    **extra: Any,
) -> Outcome:
    """Write the manifest (last: a folder with a manifest is a finished build), remove ``.parts/`` and return the
    ``outcome`` (its counts are the manifest's; ``extra``: the builder's own fields)."""
    text = json.dumps(manifest, indent=1, ensure_ascii=ensure_ascii) + "\n"
    write(out_dir / "manifest.json", text.encode("utf-8"))
    shutil.rmtree(out_dir / ".parts", ignore_errors=True)
    return outcome(
        out_dir=out_dir,
        counts=manifest["counts"],
        skipped=skipped,
        rendered=tally.rendered,
        reused=tally.reused,
        resumed=tally.resumed,
        seconds=time.perf_counter() - tally.started,
        manifest=manifest,
        **extra,
    )
