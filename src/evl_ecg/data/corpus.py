"""A synthetic ECGInstruct/ECGBench corpus: labelled synthetic ECGs, rendered images, conversation records.

Layout of ``out_dir`` (image paths in records are relative to ``out_dir/images``, as ECGBench's are to
``data/ECGBench/images``)::

    train.json                    ECGInstruct-format records, a mix of all task types
    bench/<subset>.json           ptb-test, code15-test, cpsc-test, csn-test-no-cot, g12-test-no-cot, ecgqa-test
    val/<subset>.json             (``n_val > 0``) a validation split in the benchmark's format, from the training
                                  distribution, disjoint from train and bench (its own seed streams): settings are
                                  chosen on it, never on bench/
    images/<split>/<id>.png       split = train, a bench subset, or val-<subset>
    manifest.json                 counts, label frequencies, settings, seed, versions, skipped items

Determinism: record ``i`` of split ``s`` draws everything (findings, signal, noise, augmentation, wording) from
``numpy.random.SeedSequence(seed, spawn_key=(SPLIT_KEYS[s], i))``, so the same arguments give the same bytes
whatever the worker count, and train and bench never share a signal (different seed streams).

Resumability: work is done in fixed chunks of :data:`CHUNK` records; images are written atomically and kept when
present and decodable; each finished chunk's records are saved atomically under ``.parts/``; the final JSON files
and the manifest are written atomically at the end and ``.parts/`` is removed. A killed run rerun with the same
arguments picks up where it stopped; a rerun with different settings into the same folder is refused.

Safety: ``out_dir`` must be empty, absent, or a (partial) corpus this module wrote. A folder holding any other file
(:func:`foreign_files`) is refused before anything is written, naming the files, and only the build's own temporary
files (``.<name>.<8 characters>.tmp`` beside a file it writes) are ever deleted. The settings of an existing corpus
are read from ``.build.json`` and from ``manifest.json``; both must match the request, and corpus files with neither
(a copy made without its dotfiles, before the build finished) are refused: their seed is unknown, and images of
another seed would carry the wrong labels. A file that cannot be written (read-only folder, full disk) stops the
build with a :class:`CorpusError` naming the file and the OS error; it is never counted as a skipped item, so a
rerun after the fault is fixed completes every record. Counts are bounded (:data:`MAX_RECORDS`) and the free disk
space is checked against a rough estimate of the output (:func:`estimate_bytes`) before any work.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evl_ecg.data import resumable
from evl_ecg.data.questions import BENCH_SUBSETS, build_record
from evl_ecg.data.records import (
    image_is_valid,
    write_png,
)
from evl_ecg.ecg.labels import FINDINGS, VOCABULARIES
from evl_ecg.files import atomic_write_bytes

#: Validation splits: one per benchmark subset, in its format (``val/<subset>.json``).
VAL_SPLITS: tuple[str, ...] = tuple(f"val-{name}" for name in BENCH_SUBSETS)
#: Splits in a fixed order; the position is the split's seed-stream key (never reorder, only append).
SPLITS: tuple[str, ...] = ("train", *BENCH_SUBSETS, *VAL_SPLITS)
#: ECGBench's subset sizes (ecgbench-scoring.md section 2.1): ``bench_proportions="ecgbench"`` keeps their ratios.
ECGBENCH_SIZES: dict[str, int] = {
    "ptb-test": 2082,
    "code15-test": 1400,
    "cpsc-test": 2061,
    "csn-test-no-cot": 1611,
    "g12-test-no-cot": 2026,
    "ecgqa-test": 1317,
}
SPLIT_KEYS: dict[str, int] = {name: i for i, name in enumerate(SPLITS)}
CHUNK = 16

#: Most records one corpus may hold, all splits together (ECGInstruct has about 1.2 M): larger counts are refused
#: before any work, as a typo (``--train 1000000000000`` would otherwise loop and fill the memory).
MAX_RECORDS = 10_000_000
#: Rough size on disk, for the free-space check: bytes per image pixel (PNG pages measure 0.3-0.4 on average with
#: half of them augmented, noisy ones up to 1.9) and bytes per record (its JSON in a chunk file and a split file).
BYTES_PER_PIXEL = 0.5
BYTES_PER_RECORD = 4096
MANIFEST_FORMAT = "evl-ecg synthetic corpus v1 (ECGInstruct / ECGBench record format)"

#: Training mix: task -> (weight, ``sample_spec`` vocabulary). ECG-QA and PTB-XL items use PTB-XL-like ECGs.
TRAIN_MIX: dict[str, tuple[float, str | None]] = {
    "code15": (0.14, "code15"),
    "ptbxl": (0.14, "ptbxl"),
    "cpsc": (0.10, "cpsc"),
    "mcq": (0.16, None),
    "fill": (0.10, None),
    "report": (0.16, None),
    "ecgqa": (0.20, "ptbxl"),
}

SYNTHETIC_NOTE = (
    "Synthetic ECGs made by a dipole model with encoded criteria; they are not clinical ECGs and must not be used "
    "to make or support clinical decisions."
)


class CorpusError(RuntimeError):
    """A corpus build that cannot proceed (the message names the folder/file and the reason)."""


@dataclass(frozen=True)
class CorpusSettings:
    """Everything that determines the corpus bytes (the worker count does not).

    Attributes:
        n_train: training records.
        n_bench: records per ECGBench subset.
        seed: run seed.
        size: image (width, height) in px.
        dpi: render dpi (``None``: the renderer's default).
        augment: apply random paper-image augmentations to ``augment_fraction`` of the images (ECGInstruct: ~1:1).
        layout: 12-lead layout of the renderer.
        fs: sampling rate of the synthetic signals (Hz).
        duration: signal length (s).
        augment_fraction: share of augmented images when ``augment``.
        n_val: records per validation subset (``val/<subset>.json``; 0: none).
        bench_proportions: ``"equal"`` (``n_bench`` per subset) or ``"ecgbench"`` (``n_bench`` PTB-XL records and
            the other subsets in ECGBench's proportions to it).
        generator: synthetic-ECG generator version (``evl_ecg.ecg.synth.GENERATORS``): 2, the default, is closer to
            real ECGs (docs/signals.md 2.1); 1 is frozen so that earlier corpora rebuild byte for byte (a manifest
            without the field was made with 1).
    """

    n_train: int
    n_bench: int
    seed: int
    size: tuple[int, int] = (512, 384)
    dpi: int | None = None
    augment: bool = True
    layout: str = "3x4"
    fs: int = 500
    duration: float = 10.0
    augment_fraction: float = 0.5
    n_val: int = 0
    bench_proportions: str = "equal"
    generator: int = 2

    def __post_init__(self) -> None:
        from evl_ecg.ecg.render import check_image_size
        from evl_ecg.ecg.synth import check_generator

        check_generator(self.generator)

        if self.n_train < 0 or self.n_bench < 0 or self.n_val < 0:
            raise ValueError(
                f"n_train, n_bench and n_val must be >= 0, got {self.n_train}, {self.n_bench}, {self.n_val}"
            )
        for name in ("n_train", "n_bench", "n_val"):
            if getattr(self, name) > MAX_RECORDS:
                raise ValueError(f"{name} {getattr(self, name)} is beyond the limit of {MAX_RECORDS:,} records")
        if self.bench_proportions not in ("equal", "ecgbench"):
            raise ValueError(f"bench_proportions must be 'equal' or 'ecgbench', got {self.bench_proportions!r}")
        if len(self.size) != 2 or min(self.size) < 16:
            raise ValueError(f"size must be (width, height) with both >= 16 px, got {self.size}")
        check_image_size(*self.size)
        total = self.total()
        if total > MAX_RECORDS:
            raise ValueError(f"{total} records in all is beyond the limit of {MAX_RECORDS:,} records per corpus")
        if self.dpi is not None and self.dpi <= 0:
            raise ValueError(f"dpi must be positive, got {self.dpi}")
        if not 0 <= self.augment_fraction <= 1:
            raise ValueError(f"augment_fraction must lie in [0, 1], got {self.augment_fraction}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        return d

    def splits(self) -> tuple[str, ...]:
        """The splits this corpus has: train, the bench subsets, and the validation subsets when ``n_val > 0``."""
        return tuple(s for s in SPLITS if s not in VAL_SPLITS or self.n_val > 0)

    def total(self) -> int:
        """Records of every split together."""
        return sum(self.count(s) for s in self.splits())

    def count(self, split: str) -> int:
        if split == "train":
            return self.n_train
        if split in VAL_SPLITS:
            return self.n_val
        if self.bench_proportions == "ecgbench":
            return int(round(self.n_bench * ECGBENCH_SIZES[split] / ECGBENCH_SIZES["ptb-test"]))
        return self.n_bench


@dataclass
class CorpusResult(resumable.BuildOutcome):
    """What :func:`build_corpus` did: records per split, skipped items, images rendered now, images found valid
    and kept, records taken from chunks finished by an earlier (interrupted) run, wall time."""


def split_file(split: str) -> str:
    """Where a split's records go in the corpus folder: ``train.json``, ``bench/<s>.json`` or ``val/<s>.json``."""
    if split == "train":
        return "train.json"
    if split in VAL_SPLITS:
        return f"val/{split.removeprefix('val-')}.json"
    return f"bench/{split}.json"


def synth_record_id(split: str, index: int) -> str:
    """``synth-train-000042``, ``synth-ptb-test-00007``."""
    return f"synth-{split}-{index:06d}" if split == "train" else f"synth-{split}-{index:05d}"


def record_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The seed sequence of record ``index`` of ``split`` (independent of every other record)."""
    return np.random.SeedSequence(int(seed), spawn_key=(SPLIT_KEYS[split], int(index)))


_SYNTH_ID = re.compile(r"synth-(.+)-(\d{5,})")


def parse_synth_record_id(record_id: str) -> tuple[str, int]:
    """``"synth-ptb-test-00007"`` -> ``("ptb-test", 7)``: the inverse of :func:`synth_record_id`; a ``ValueError``
    naming the id for anything this module does not name so."""
    m = _SYNTH_ID.fullmatch(str(record_id))
    if m is None or m.group(1) not in SPLIT_KEYS or synth_record_id(m.group(1), int(m.group(2))) != record_id:
        raise ValueError(f"record {record_id!r}: not the id of a synthetic corpus record (synth-<split>-<index>)")
    return m.group(1), int(m.group(2))


@dataclass(frozen=True)
class SynthRecord:
    """One record of a synthetic corpus regenerated from the corpus settings and its split and index: every draw
    :func:`make_item` makes before writing (the same code path, so the same values).

    Attributes:
        id, split, index: the record (:func:`synth_record_id`).
        task, task_kwargs, vocabulary: its question task (training mix or bench subset) and the label vocabulary
            its findings were drawn for.
        ecg: the signal (``12 x n`` mV), regenerated by the corpus's generator with ``signal_seed``.
        signal_seed: the generator's seed (also in the record's ``meta``).
        base_spec: the :class:`~evl_ecg.ecg.render.RenderSpec` the corpus drew the page with (layout, size, dpi):
            ``render(ecg, base_spec)`` is the clean page, the stored image when ``augment`` is ``None``.
        augment: the paper-image augmentation of the stored image (``None``: not augmented); with ``render_seed``,
            ``render(ecg, base_spec, augment=augment, seed=render_seed)`` is the stored image.
        render_seed: the augmentation's seed.
        text_seed: the seed sequence of the question's wording.
    """

    id: str
    split: str
    index: int
    task: str
    task_kwargs: dict[str, Any]
    vocabulary: str | None
    ecg: Any
    signal_seed: int
    base_spec: Any
    augment: Any
    render_seed: int
    text_seed: np.random.SeedSequence = field(repr=False)

    @property
    def augmented(self) -> bool:
        return self.augment is not None


def synth_record(settings: CorpusSettings, split: str, index: int) -> SynthRecord:
    """Regenerate record ``index`` of ``split`` of the corpus ``settings`` describe (its ``manifest.json``'s
    ``settings``: :func:`read_corpus_settings`) from ``record_seed(settings.seed, split, index)`` alone.

    The signal and the base page come out as the build made them (:func:`make_item` calls this). An item the
    generator cannot make raises what the generator raises (``ValueError``, ``KeyError``, ``RuntimeError``); a split
    the corpus does not have, or an index beyond its count, a ``ValueError`` naming it.
    """
    from evl_ecg.ecg.render import Augment, RenderSpec
    from evl_ecg.ecg.synth import generate, sample_spec

    if split not in settings.splits():
        raise ValueError(f"split {split!r}: not a split of this corpus ({', '.join(settings.splits())})")
    if not 0 <= int(index) < settings.count(split):
        n = settings.count(split)
        raise ValueError(f"{synth_record_id(split, index)}: index beyond the {n} records of {split}")
    rid = synth_record_id(split, index)
    ss_spec, ss_signal, ss_render, ss_text = record_seed(settings.seed, split, index).spawn(4)
    rng_spec = np.random.default_rng(ss_spec)
    if split == "train":
        tasks = sorted(TRAIN_MIX)
        weights = np.array([TRAIN_MIX[t][0] for t in tasks])
        task = tasks[int(rng_spec.choice(len(tasks), p=weights / weights.sum()))]
        vocabulary = TRAIN_MIX[task][1]
        kwargs: dict[str, Any] = {"style": "csn" if rng_spec.random() < 0.5 else "g12"} if task == "mcq" else {}
    else:
        task, kwargs, vocabulary = BENCH_SUBSETS[split.removeprefix("val-")]
    signal_seed = int(ss_signal.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
    rng_render = np.random.default_rng(ss_render)
    augmented = bool(settings.augment and rng_render.random() < settings.augment_fraction)
    strength = float(rng_render.uniform(0.2, 1.0))
    render_seed = int(rng_render.integers(2**31))
    augment = Augment.random(rng_render, strength) if augmented else None
    spec = sample_spec(rng_spec, vocabulary=vocabulary, generator=settings.generator)
    ecg = generate(spec, seed=signal_seed, fs=settings.fs, duration=settings.duration, generator=settings.generator)
    base_spec = RenderSpec(layout=settings.layout, size=tuple(settings.size), dpi=settings.dpi)
    return SynthRecord(
        id=rid,
        split=split,
        index=int(index),
        task=task,
        task_kwargs=dict(kwargs),
        vocabulary=vocabulary,
        ecg=ecg,
        signal_seed=signal_seed,
        base_spec=base_spec,
        augment=augment,
        render_seed=render_seed,
        text_seed=ss_text,
    )


def read_corpus_settings(manifest: str | os.PathLike[str]) -> CorpusSettings:
    """The :class:`CorpusSettings` a synthetic corpus's ``manifest.json`` records (defaults for settings added
    since it was written); a :class:`CorpusError` naming the file when it is not such a manifest."""
    path = Path(manifest)
    found = _read_settings(path, manifest=True)
    try:
        return CorpusSettings(**{**found, "size": tuple(found["size"])})
    except (TypeError, ValueError, KeyError) as exc:
        raise CorpusError(f"{path}: settings that describe no corpus ({str(exc).splitlines()[0]})") from None


def make_item(settings: CorpusSettings, out_dir: Path, split: str, index: int) -> dict[str, Any]:
    """Generate (:func:`synth_record`), render (unless a valid image is present) and question one record.

    Returns ``{"record": dict, "rendered": bool}`` or ``{"skip": {split, index, id, reason}}`` for an item the
    generator cannot make (``ValueError``, ``KeyError``, ``RuntimeError``: the same every run). An image that cannot
    be written raises :class:`CorpusError` naming the file and the OS error: a fault of the disk, not of the item.
    """
    from evl_ecg.ecg.render import render

    rid = synth_record_id(split, index)
    image_rel = f"{split}/{rid}.png"
    image_path = out_dir / "images" / image_rel
    image = None
    try:
        item = synth_record(settings, split, index)
        if not (image_path.is_file() and image_is_valid(image_path)):
            image = render(item.ecg, item.base_spec, augment=item.augment, seed=item.render_seed)
        rng_text = np.random.default_rng(item.text_seed)
        record = build_record(item.task, item.ecg, image_rel, rid, rng_text, **item.task_kwargs)
    except (ValueError, KeyError, RuntimeError) as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return {"skip": {"split": split, "index": index, "id": rid, "reason": reason}}
    rendered = image is not None
    if image is not None:
        try:
            write_png(image_path, image)
        except OSError as exc:
            raise _write_error(image_path, exc) from None
    record.meta.update({"split": split, "signal_seed": item.signal_seed, "augmented": item.augmented})
    return {"record": record.to_dict(), "rendered": rendered}


def _make_chunk(settings: CorpusSettings, out_dir: Path, split: str, chunk: int) -> list[dict[str, Any]]:
    n = settings.count(split)
    return [make_item(settings, out_dir, split, i) for i in range(chunk * CHUNK, min(n, (chunk + 1) * CHUNK))]


def _part_path(out_dir: Path, split: str, chunk: int) -> Path:
    return out_dir / ".parts" / f"{split}-{chunk:05d}.json"


def _write_error(path: Path, exc: OSError) -> CorpusError:
    """The one-line :class:`CorpusError` of a file that cannot be written (:func:`resumable.write_error`)."""
    return resumable.write_error(path, exc, CorpusError)


def _write(path: Path, data: bytes) -> None:
    """:func:`atomic_write_bytes`; an ``OSError`` (read-only folder, full disk) becomes a :class:`CorpusError`."""
    resumable.write_file(path, data, error=CorpusError, write=atomic_write_bytes)


def _run_chunk(
    settings: CorpusSettings, out_dir: Path, split: str, chunk: int
) -> tuple[str, int, list[dict[str, Any]], int, int]:
    """Process one chunk and save its results atomically; returns (split, chunk, results, rendered, reused)."""
    results = _make_chunk(settings, out_dir, split, chunk)
    rendered = sum(1 for r in results if r.get("rendered") is True)
    reused = sum(1 for r in results if r.get("rendered") is False)
    for r in results:
        r.pop("rendered", None)
    resumable.save_part(_part_path(out_dir, split, chunk), results, _write)
    return split, chunk, results, rendered, reused


#: Skip reasons that name an OS error: written by builds before write errors stopped the build; redone on resume.
_OS_ERROR_REASON = re.compile(
    r"(OSError|IOError|PermissionError|FileNotFoundError|FileExistsError|IsADirectoryError|NotADirectoryError"
    r"|BlockingIOError|InterruptedError|TimeoutError|ConnectionError):"
)


def _images_intact(out_dir: Path, saved: list[dict[str, Any]]) -> bool:
    """Whether every record of a saved chunk still has a decodable image and no item was skipped for an OS error
    (else the chunk is redone)."""
    return all(
        _OS_ERROR_REASON.match(item["skip"].get("reason", "")) is None
        if "skip" in item
        else image_is_valid(out_dir / "images" / item["record"]["image"])
        for item in saved
    )


def _own_folder(parts: tuple[str, ...]) -> bool:
    """Whether the folder ``out_dir/<parts>`` is one a build makes."""
    if len(parts) == 1:
        return parts[0] in ("bench", "val", "images", ".parts")
    return len(parts) == 2 and parts[0] == "images" and parts[1] in SPLITS


_IMAGE_NAME = re.compile(r"synth-(.+)-\d{5,}\.png")
_PART_NAME = re.compile(r"(.+)-\d{5,}\.json")


def _own_file(parts: tuple[str, ...]) -> bool:
    """Whether the file ``out_dir/<parts>`` is one a build writes (records, manifest, marker, chunk, image)."""
    if len(parts) == 1:
        return parts[0] in ("train.json", "manifest.json", ".build.json")
    if len(parts) == 2:
        folder, name = parts
        if folder in ("bench", "val"):
            return name.endswith(".json") and name[: -len(".json")] in BENCH_SUBSETS
        m = _PART_NAME.fullmatch(name)
        return folder == ".parts" and m is not None and m.group(1) in SPLITS
    m = _IMAGE_NAME.fullmatch(parts[-1])
    return len(parts) == 3 and parts[0] == "images" and parts[1] in SPLITS and m is not None and m.group(1) == parts[1]


def _scan(out_dir: Path) -> resumable.FolderScan:
    """Every entry of ``out_dir``: the build's own files, its own temporary files, and the rest (foreign)."""
    return resumable.scan_folder(out_dir, _own_file, _own_folder)


def foreign_files(out_dir: str | os.PathLike[str]) -> list[str]:
    """Paths (relative to ``out_dir``; folders end in ``/``) of the entries that no corpus build writes: a folder
    holding any is refused by :func:`build_corpus`."""
    out = Path(out_dir)
    return _scan(out).foreign if out.is_dir() else []


def _read_settings(path: Path, *, manifest: bool) -> dict[str, Any]:
    """The settings recorded in ``.build.json`` or ``manifest.json`` (defaults for keys added since)."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise CorpusError(f"{path}: unreadable ({why}); use another --out or delete the folder") from None
    if manifest:
        fmt = found.get("format") if isinstance(found, dict) else None
        if not (isinstance(fmt, str) and fmt.startswith("evl-ecg synthetic corpus")) or not isinstance(
            found.get("settings"), dict
        ):
            raise CorpusError(f"{path}: not the manifest of an evl-ecg corpus; use another --out")
        found = found["settings"]
    elif not isinstance(found, dict):
        raise CorpusError(f"{path}: not a build marker (a JSON object of settings); delete it to start over")
    return {"n_val": 0, "bench_proportions": "equal", "generator": 1, **found}  # written before these settings existed


def corpus_generator(train_file: str | os.PathLike[str] | None) -> int | None:
    """The synthetic-ECG generator that made the corpus holding ``train_file`` (its ``manifest.json``), ``None``
    when the file has no evl-ecg corpus manifest beside it (a real or hand-made corpus)."""
    if not train_file:
        return None
    manifest = Path(train_file).parent / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        return int(_read_settings(manifest, manifest=True)["generator"])
    except (CorpusError, TypeError, ValueError):
        return None


def _check_settings(out_dir: Path, settings: CorpusSettings, scan: resumable.FolderScan) -> bool:
    """Refuse a corpus made with other settings, or corpus files whose settings are unknown; return whether the
    build marker ``.build.json`` is still to be written."""
    marker, manifest = out_dir / ".build.json", out_dir / "manifest.json"
    wanted = settings.to_dict()
    recorded = [(p, _read_settings(p, manifest=p == manifest)) for p in (marker, manifest) if p.is_file()]
    for path, found in recorded:
        resumable.refuse_other_settings(out_dir, path, found, wanted, CorpusError)
    if not recorded and scan.own:
        raise CorpusError(
            f"{out_dir}: holds corpus files ({', '.join(scan.own[:3])}{', ...' if len(scan.own) > 3 else ''}) but no "
            ".build.json or manifest.json, so the settings they were made with are unknown (a copy without its "
            "dotfiles?); use another --out or delete the folder"
        )
    return not marker.is_file()


def estimate_bytes(settings: CorpusSettings, images_present: int = 0) -> int:
    """A rough size on disk of the corpus still to be written: :data:`BYTES_PER_PIXEL` per pixel of each image
    not yet present, :data:`BYTES_PER_RECORD` per record."""
    width, height = settings.size
    total = settings.total()
    missing = max(0, total - images_present)
    return int(missing * width * height * BYTES_PER_PIXEL + total * BYTES_PER_RECORD)


def label_frequencies(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Counts of canonical findings and of each vocabulary's labels over records (from their ``labels``)."""
    out: dict[str, dict[str, int]] = {}
    for key, order in (("findings", tuple(FINDINGS)), *VOCABULARIES.items()):
        counts = Counter(label for r in records for label in r.get("labels", {}).get(key, []))
        out[key] = {label: counts.get(label, 0) for label in order}
        if key in ("ptbxl", "code15", "cpsc"):
            out[key]["(none)"] = sum(1 for r in records if not r.get("labels", {}).get(key))
    return out


def _chunks(settings: CorpusSettings) -> Iterator[tuple[str, int]]:
    for split in settings.splits():
        for chunk in range(math.ceil(settings.count(split) / CHUNK)):
            yield split, chunk


def build_corpus(
    out_dir: str | os.PathLike[str],
    *,
    n_train: int,
    n_bench: int,
    seed: int,
    workers: int = 1,
    size: tuple[int, int] = (512, 384),
    dpi: int | None = None,
    augment: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    n_val: int = 0,
    bench_proportions: str = "equal",
    generator: int = 2,
) -> CorpusResult:
    """Build (or resume) a synthetic corpus in ``out_dir``; see the module docstring for layout and guarantees.

    Args:
        out_dir: output folder (created).
        n_train: training records (``train.json``).
        n_bench: records per ECGBench subset (``bench/<subset>.json``).
        seed: run seed.
        workers: worker processes (1: in this process). Does not change the output.
        size: image (width, height) in px; ``(2200, 1700)`` with ``dpi=200`` gives ECGInstruct's page size.
        dpi: render dpi.
        augment: paper-image augmentations on about half the images.
        progress: show a progress bar (stderr).
        log: where to report skipped items as they happen (``None``: silent; they are in the result and manifest).
        n_val: records per validation subset (``val/<subset>.json``, the benchmark's format, own seed streams).
        bench_proportions: ``"equal"`` or ``"ecgbench"`` (``n_bench`` PTB-XL records, the rest in ECGBench's ratios).
        generator: synthetic-ECG generator version, 2 (default) or 1 (frozen) (recorded in the manifest's settings).
    """
    tally = resumable.Tally()
    settings = CorpusSettings(
        n_train=n_train,
        n_bench=n_bench,
        seed=seed,
        size=(int(size[0]), int(size[1])),
        dpi=dpi,
        augment=augment,
        n_val=n_val,
        bench_proportions=bench_proportions,
        generator=generator,
    )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CorpusError(f"{out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CorpusError(f"{out}: cannot create the folder ({exc.strerror or exc})") from None
    scan = _scan(out)
    resumable.refuse_foreign(out, scan.foreign, who="corpus", filler="synth", error=CorpusError)
    new_marker = _check_settings(out, settings, scan)
    resumable.check_free_space(
        out,
        estimate_bytes(settings, scan.images),
        settings.total(),
        settings.size,
        hint="ask for fewer records or a smaller size",
        error=CorpusError,
    )
    resumable.begin(out, settings.to_dict(), new_marker=new_marker, temporary=scan.temporary, write=_write)

    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    todo: list[tuple[str, int]] = []
    for split, chunk in _chunks(settings):
        part = _part_path(out, split, chunk)
        if part.is_file():
            try:
                saved = json.loads(part.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                saved = None
            if saved is not None and _images_intact(out, saved):
                results[(split, chunk)] = saved
                continue
            part.unlink(missing_ok=True)
        todo.append((split, chunk))
    tally.resumed = sum(len(v) for v in results.values())

    def take(job: tuple[Any, ...], done: tuple[str, int, list[dict[str, Any]], int, int]) -> int:
        split, chunk, res, n_rendered, n_reused = done
        results[(split, chunk)] = res
        tally.rendered += n_rendered
        tally.reused += n_reused
        return len(res)

    resumable.run_chunks(
        _run_chunk,
        [(settings, out, split, chunk) for split, chunk in todo],
        take,
        workers=workers,
        total=settings.total(),
        done=tally.resumed,
        progress=progress,
        desc="synth",
    )

    splits = settings.splits()
    by_split: dict[str, list[dict[str, Any]]] = {s: [] for s in splits}
    skipped: list[dict[str, Any]] = []
    for split, chunk in _chunks(settings):
        for item in results[(split, chunk)]:
            if "skip" in item:
                skipped.append(item["skip"])
                if log is not None:
                    log(f"skipped {item['skip']['id']}: {item['skip']['reason']}")
            else:
                by_split[split].append(item["record"])

    manifest = {
        "format": MANIFEST_FORMAT,
        "note": SYNTHETIC_NOTE,
        "seed": seed,
        "settings": settings.to_dict(),
        "image_root": "images",
        "files": resumable.write_splits(out, by_split, split_file, _write),
        "requested": {s: settings.count(s) for s in splits},
        "counts": {s: len(by_split[s]) for s in splits},
        "tasks": {s: dict(sorted(Counter(r["meta"]["task"] for r in by_split[s]).items())) for s in splits},
        "augmented": {s: sum(1 for r in by_split[s] if r["meta"]["augmented"]) for s in splits},
        "label_frequencies": {s: label_frequencies(by_split[s]) for s in splits},
        "versions": resumable.versions("numpy", "scipy", "pillow"),
        "skipped": skipped,
    }
    return resumable.finish(out, manifest, CorpusResult, skipped=skipped, tally=tally, write=_write)


__all__ = [
    "BYTES_PER_PIXEL",
    "BYTES_PER_RECORD",
    "CHUNK",
    "MAX_RECORDS",
    "SPLITS",
    "SPLIT_KEYS",
    "VAL_SPLITS",
    "ECGBENCH_SIZES",
    "split_file",
    "SYNTHETIC_NOTE",
    "TRAIN_MIX",
    "CorpusError",
    "CorpusResult",
    "CorpusSettings",
    "build_corpus",
    "estimate_bytes",
    "foreign_files",
    "label_frequencies",
    "make_item",
    "parse_synth_record_id",
    "read_corpus_settings",
    "record_seed",
    "synth_record",
    "synth_record_id",
    "SynthRecord",
]
