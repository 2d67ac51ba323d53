"""One ECG in: a WFDB record, a DICOM waveform, a CODE-15% HDF5 exam (``file.hdf5:exam_id``) or an image of an ECG.

:func:`read_input` reads what a user names and returns an :class:`EcgInput`: a signal (``Ecg``, to be rendered as the
model's training images were) or an image (used as it is). Anything that cannot be used raises :class:`InputError`
with one line naming the file and what is wrong; readers' own one-line errors (``EcgError``) pass through as they are.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evl_ecg.ecg.readers import Format, format_of, formats, formats_help, register_format
from evl_ecg.ecg.signal import Ecg, EcgError

__all__ = [
    "IMAGE_FORMAT",
    "MAX_IMAGE_SIDE",
    "MAX_NAMED",
    "MIN_IMAGE_SIDE",
    "EcgInput",
    "InputError",
    "expand_inputs",
    "image_warnings",
    "parse_spec",
    "read_input",
]

#: An image of an ECG (a rendered page, a scan or a photograph), used as it is: a format of the readers' registry
#: (:func:`evl_ecg.ecg.readers.formats`) that this stage reads itself.
IMAGE_FORMAT = register_format(
    Format("image", "an image (.png, .jpg)", (".png", ".jpg", ".jpeg"), (".png", ".jpg", ".jpeg"))
)
#: An image whose shorter side is below this cannot hold a legible 12-lead page.
MIN_IMAGE_SIDE: int = 64
#: Larger images are refused (a 600 DPI letter page is 6600 px wide).
MAX_IMAGE_SIDE: int = 12_000
#: Width/height ratios outside this range are no ECG page (a strip of pixels, a tall screenshot).
ASPECT_RANGE: tuple[float, float] = (0.5, 4.0)


class InputError(ValueError):
    """An input that cannot be interpreted; the message is one line naming the file and the problem."""


@dataclass(frozen=True)
class EcgInput:
    """One ECG as read: ``kind`` ``wfdb``, ``dicom``, ``code15`` (``ecg`` set) or ``image`` (``image`` set).

    ``source`` is what the user named (``"exams.hdf5:1234"``), used as the key of batch outputs.
    """

    source: str
    kind: str
    ecg: Ecg | None = None
    image: Any = None  # PIL.Image.Image (RGB) for kind "image"

    @property
    def is_image(self) -> bool:
        return self.kind == "image"


def parse_spec(spec: str | os.PathLike[str]) -> tuple[Path, int | None]:
    """``"exams.hdf5:1234"`` -> ``(Path("exams.hdf5"), 1234)``; any other path -> ``(path, None)``."""
    text = os.fspath(spec)
    head, sep, tail = text.rpartition(":")
    fmt = format_of(Path(head)) if sep else None
    if fmt is not None and fmt.needs_index:
        try:
            return Path(head), int(tail)
        except ValueError:
            raise InputError(f"{head}: exam_id {tail!r} is not a whole number (give file.hdf5:exam_id)") from None
    return Path(text), None


def _code15_index(path: Path, exam_id: int) -> int:
    import h5py
    import numpy as np

    try:
        with h5py.File(path, "r") as h5:
            if "exam_id" not in h5:
                raise InputError(f"{path}: no 'exam_id' dataset; a CODE-15% file holds 'tracings' and 'exam_id'")
            ids = np.asarray(h5["exam_id"][:])
    except InputError:
        raise
    except Exception as exc:  # h5py raises OSError for broken files
        raise InputError(f"{path}: cannot read HDF5 ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    hits = np.nonzero(ids == exam_id)[0]
    if hits.size == 0:
        raise InputError(f"{path}: exam_id {exam_id} not found ({ids.size} exams in the file)")
    if hits.size > 1:
        raise InputError(f"{path}: exam_id {exam_id} occurs {hits.size} times")
    return int(hits[0])


def _open_image(path: Path, source: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            w, h = img.size
            _check_image_shape(w, h, source)
            img.load()
            return img.convert("RGB")
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(f"{source}: image is too large to decode safely (decompression bomb check)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{source}: not a readable PNG/JPEG image ({reason})") from None


def _check_image_shape(width: int, height: int, source: str) -> None:
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InputError(
            f"{source}: image is {width}x{height} px; an ECG page needs at least {MIN_IMAGE_SIDE} px a side"
        )
    if max(width, height) > MAX_IMAGE_SIDE:
        raise InputError(f"{source}: image is {width}x{height} px; at most {MAX_IMAGE_SIDE} px a side is read")
    lo, hi = ASPECT_RANGE
    if not lo <= width / height <= hi:
        raise InputError(
            f"{source}: image is {width}x{height} px (aspect {width / height:.2f}); an ECG page is between "
            f"{lo:g} and {hi:g} times as wide as it is tall"
        )


def image_warnings(size: tuple[int, int], expected: tuple[int, int] | None) -> list[str]:
    """Warnings for an image of ``size`` (w, h) far from the training images' ``expected`` size.

    Far: an aspect ratio more than 25% away, or more than 4x (or under a quarter of) the pixels.
    """
    if expected is None:
        return []
    (w, h), (ew, eh) = size, expected
    out = []
    aspect, e_aspect = w / h, ew / eh
    if abs(aspect / e_aspect - 1.0) > 0.25:
        out.append(
            f"image aspect {aspect:.2f} ({w}x{h}) is far from the training images' {e_aspect:.2f} ({ew}x{eh}); "
            "the answer may be unreliable"
        )
    ratio = (w * h) / (ew * eh)
    if ratio > 4 or ratio < 0.25:
        out.append(
            f"image has {ratio:.1f}x the pixels of the training images ({w}x{h} against {ew}x{eh}); "
            "the answer may be unreliable"
        )
    return out


def read_input(spec: str | os.PathLike[str], *, source: str | None = None) -> EcgInput:
    """Read one ECG named by ``spec`` (see the module docstring); ``source`` overrides the name used in messages.

    Raises:
        InputError: a missing file, an unknown format, an image that is not ECG-sized, a bad exam id.
        EcgError: a record its reader refuses (one line, from :mod:`evl_ecg.ecg.readers`).
    """
    path, exam_id = parse_spec(spec)
    name = source or os.fspath(spec)
    suffix = path.suffix.lower()
    is_wfdb_base = not suffix and Path(f"{path}.hea").is_file()
    if not path.exists() and not is_wfdb_base:
        raise InputError(f"{name}: no such file")
    if path.is_dir():
        raise InputError(f"{name}: is a folder; give a record or an image (or use expand_inputs for a folder)")
    fmt = format_of(path)
    if fmt is None:
        raise InputError(f"{name}: unknown ECG file type {suffix or '(no suffix)'!r}; expected {formats_help()}")
    if fmt.needs_index:
        if exam_id is None:
            raise InputError(f"{name}: an HDF5 file holds many exams; name one as {path.name}:EXAM_ID")
        index = _code15_index(path, exam_id) if fmt.kind == "code15" else exam_id
        return EcgInput(name, fmt.kind, ecg=fmt.read(path, index))
    if fmt.read is None:  # an image: used as it is
        return EcgInput(name, fmt.kind, image=_open_image(path, name))
    if suffix in fmt.companions and not any(path.with_suffix(e).is_file() for e in fmt.entries):
        raise InputError(f"{name}: {fmt.label} needs its header {path.with_suffix(fmt.entries[0]).name} beside it")
    return EcgInput(name, fmt.kind, ecg=fmt.read(path, None))


#: How many names of files that are not ECGs a folder scan's note lists.
MAX_NAMED = 10


def expand_inputs(items: Iterable[str | os.PathLike[str]]) -> tuple[list[str], list[str]]:
    """Input specs from files and folders: a folder gives its files that are an entry of a registered format (WFDB
    headers, DICOM files, exports, images; sorted, not recursive) and that the format's content check, where it has
    one, takes for an ECG (:func:`_is_ecg`: a CSV table of leads, an XML file of one of the ECG exports). A file named
    as it is is always taken: its reader says what is wrong with it.

    Returns ``(specs, notes)``: ``notes`` says what in a folder was not taken: an HDF5 file (it needs an exam id) and,
    in one line a folder, the files of an ECG suffix that are no ECG (CODE-15%'s ``exams.csv``): they are not
    failures."""
    specs: list[str] = []
    notes: list[str] = []
    for item in items:
        path = Path(os.fspath(item))
        if not path.is_dir():
            specs.append(os.fspath(item))
            continue
        not_ecg: list[str] = []
        for child in sorted(path.iterdir()):
            suffix = child.suffix.lower()
            claims = [f for f in formats() if suffix in f.entries]
            fmt = next((f for f in claims if _is_ecg(f, child)), None)
            if fmt is None:
                if claims:
                    not_ecg.append(child.name)
            elif not fmt.needs_index:
                specs.append(str(child))
            else:
                notes.append(f"{child}: not taken from the folder; name its exams as {child}:EXAM_ID")
        if not_ecg:
            n = len(not_ecg)
            shown = ", ".join(not_ecg[:MAX_NAMED]) + (f" and {n - MAX_NAMED} more" if n > MAX_NAMED else "")
            files = "1 file that is" if n == 1 else f"{n} files that are"
            notes.append(f"{path}: skipped {files} not an ECG: {shown}")
    return specs, notes


def _is_ecg(fmt: Format, path: Path) -> bool:
    """Whether a folder scan takes ``path`` as an ECG of ``fmt``: by its content check where it has one."""
    return fmt.sniff is None or (path.is_file() and fmt.sniff(path))


def is_input_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a bad-input error (one line naming the file) rather than a bug."""
    from evl_ecg.ecg.labels import UnknownCodeError

    return isinstance(exc, InputError | EcgError | UnknownCodeError)
