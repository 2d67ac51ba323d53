"""``evl-ecg eval robustness``: what each view of an ECG costs each model, on the same records, against the clean page.

For one or more models and a bench (a corpus folder's ``bench/``), every *condition* is a view unit at a severity:
a unit is a view family (``signal``, ``rendering``, ``image``: each record gets one view of the family, drawn from
``(seed, record id, family)``, the same at every severity, so that a larger severity is a larger version of the same
disturbance) or one named view (:mod:`evl_ecg.ecg.views`). Severity 0 is the **clean** condition, shared by every
unit: the record's page re-rendered from its signal without augmentation where the corpus gives signals
(:mod:`evl_ecg.data.sources`), the stored page where it gives images only (then image views only, and the run says
so). Every condition is drawn on the same first ``records`` records of each subset, and each model answers every
condition (greedy, as ``eval run``), scored with the strict scorer's macro AUC (:func:`evl_ecg.eval.stats.macro_auc`
of :func:`~evl_ecg.eval.stats.label_matrices`) and, unless ``likelihood=False``, the label-likelihood macro AUC.
Each drop against clean gets its 95 % paired bootstrap interval (:func:`evl_ecg.eval.stats.paired_bootstrap`: the
same resampled records for the view and the clean page).

Layout written under ``out_dir``::

    resume-key.json                                the settings the cells were made with (:mod:`evl_ecg.resume`)
    images/clean/<subset>/<id>.png, <id>.json      the clean page and what it is
    images/<unit>/<severity>/<subset>/<id>.png     a view's page, with <id>.json beside it: the view's record
                                                   (:func:`evl_ecg.ecg.views.view_record`: view, family, severity,
                                                   seed, params, base spec) plus the record id and the unit
    models/<model>/model_fingerprint.json          the model of the folder (a rerun with another model is refused)
    models/<model>/<condition>/<subset>/predictions.jsonl, likelihood.json
    robustness.json, robustness.md, robustness.png the numbers, the table, the figure

Resuming: a page whose image and record are both there is not drawn again; a cell (model x condition x subset)
resumes its predictions by id as ``eval run`` does, and its likelihoods by id; a model whose cells are complete is
not loaded. The resume key holds every setting that changes a page or an answer (the seed, ``max_new_tokens``,
``batch_size``, the likelihood's normalization, each bench file's content); another value is refused in one line
unless ``fresh``. ``records``, units and severities may grow between runs (new pages and cells are added).

Cost: before the work, each model that has work answers one batch of its first unfinished cell (its pages drawn
first; the answers are kept, not redone); the measured cost of a page, an answer and a likelihood of each model give
the estimate printed before the rest of the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evl_ecg.data.records import Record, image_is_valid, write_png
from evl_ecg.data.sources import RecordSource, open_record_source
from evl_ecg.ecg.views import FAMILIES, VIEWS, apply_view, check_severity, image_view, view_names, view_record
from evl_ecg.eval.generate import read_done
from evl_ecg.eval.likelihood import MULTI_LABEL_SUBSETS, NORMALIZATIONS
from evl_ecg.eval.predictions import EvalInputError, load_bench
from evl_ecg.files import atomic_write_bytes
from evl_ecg.resume import FOLDER_KEY, ResumeKey, file_digest

logger = logging.getLogger(__name__)

#: Records per condition and subset (the first of each bench file). Chosen so that the default table (3 families x
#: severities 0.5 and 1, plus clean: 7 conditions) of the shipped teacher and a tiny student, with likelihoods, on
#: ptb-test takes about 22 min on 2 CPU cores (measured: 0.38 s per record and condition for both models together,
#: pages and likelihoods included, with the cores shared by another job; docs/eval.md "Robustness"): under the hour
#: with room for a slower machine, a second student or longer answers.
DEFAULT_RECORDS = 500
DEFAULT_SEVERITIES = (0.0, 0.5, 1.0)
DEFAULT_SUBSETS = ("ptb-test",)
#: The tiny models answer in under 40 characters; a paper-size model may pass ``max_new_tokens`` as ``eval run`` does.
DEFAULT_MAX_NEW_TOKENS = 64
CLEAN = "clean"
TOP_FILES = ("robustness.json", "robustness.md", "robustness.png", FOLDER_KEY)


@dataclass(frozen=True)
class Unit:
    """A view unit: a family (each record gets one of its views) or one view.

    Attributes:
        name: the family's or the view's name (the table's row, the figure's panel).
        views: the views it draws from (one for a named view).
    """

    name: str
    views: tuple[str, ...]

    @property
    def is_family(self) -> bool:
        return self.name in FAMILIES


def parse_units(names: Sequence[str] | None, source: RecordSource) -> list[Unit]:
    """The units ``names`` asks for (view names, family names, or ``all``: every view the source allows, each on
    its own); default: the families the source allows. An unknown name, or a signal or rendering view of a source
    without signals, is a ``ValueError`` naming it."""
    allowed = FAMILIES if source.signals else ("image",)
    if not names:
        return [Unit(f, view_names(f)) for f in allowed]
    units: list[Unit] = []
    for raw in names:
        for name in (n.strip() for n in str(raw).split(",")):
            if not name:
                continue
            if name == "all":
                picked = [Unit(v, (v,)) for f in allowed for v in view_names(f)]
            elif name in FAMILIES:
                picked = [Unit(name, view_names(name))]
            elif name in VIEWS:
                picked = [Unit(name, (name,))]
            else:
                known = ", ".join([*FAMILIES, "all", *VIEWS])
                raise ValueError(f"--views {name}: not a view or a family; known: {known}")
            for unit in picked:
                family = unit.name if unit.is_family else VIEWS[unit.name].family
                if family not in allowed:
                    raise ValueError(
                        f"--views {name}: a {family} view needs the record's signal, but {source.describe()}"
                    )
                if unit not in units:
                    units.append(unit)
    if not units:
        raise ValueError("--views: no view named")
    return units


def parse_severities(values: Sequence[float | str]) -> tuple[float, ...]:
    """Severities in [0, 1], sorted, 0 (clean) included; a ``ValueError`` naming a bad one."""
    out = {0.0}
    for raw in values:
        for text in str(raw).split(","):
            if not text.strip():
                continue
            try:
                out.add(check_severity(float(text)))
            except ValueError:
                raise ValueError(f"--severities {text.strip()}: a severity is a number in [0, 1]") from None
    return tuple(sorted(out))


def _condition(unit: str | None, severity: float) -> str:
    """``clean`` or ``<unit>/<severity>`` (the folder of a condition's pages and cells)."""
    return CLEAN if severity == 0 or unit is None else f"{unit}/{severity:g}"


_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,150}")


def _file_stem(rid: str) -> str:
    """A record id as a file name: itself where safe, else a digest of it."""
    return rid if _SAFE.fullmatch(rid) else "id-" + hashlib.sha256(rid.encode()).hexdigest()[:24]


def model_names(models: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Short unique names of model folders: the folder name, with as many parents as it takes to tell them apart
    (``seed-0-student``)."""
    parts = [Path(m).resolve().parts for m in models]
    depth = 1
    while True:
        names = ["-".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(len(p) for p in parts):
            break
        depth += 1
    if len(set(names)) != len(names):
        raise ValueError(f"--model: the same model folder twice ({', '.join(str(m) for m in models)})")
    return names


def check_model_folder(path: str | os.PathLike[str]) -> None:
    """A model folder evl-ecg can load (its family from its files, nothing loaded), else a one-line ``ValueError``."""
    from evl_ecg.models import FAMILIES as MODEL_FAMILIES
    from evl_ecg.models.checkpoints import checkpoint_family

    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"--model {p}: not a folder")
    try:
        family = checkpoint_family(p)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--model {p}: not a model folder ({str(exc).splitlines()[0]})") from None
    if family not in MODEL_FAMILIES:
        raise ValueError(f"--model {p}: model family {family!r} is not one evl-ecg loads ({', '.join(MODEL_FAMILIES)})")


def _draw(unit: Unit, rid: str, seed: int) -> tuple[list[str], int]:
    """The order a record tries its unit's views in (the first that applies is taken) and the view's seed, from
    ``(seed, record id, unit)`` alone: the same at every severity and in every run."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(rid.encode()), zlib.crc32(unit.name.encode())])
    order = [unit.views[int(k)] for k in rng.permutation(len(unit.views))]
    return order, int(rng.integers(2**31))


@dataclass
class _Bench:
    subset: str
    path: Path
    records: list[Record]


def _bench(bench_dir: Path, subsets: Sequence[str], n: int) -> list[_Bench]:
    from evl_ecg.eval.run import read_bench_records

    if not bench_dir.is_dir():
        raise EvalInputError(f"{bench_dir}: no such folder (--bench takes a folder of <subset>.json bench files)")
    out = []
    for subset in subsets:
        if subset not in MULTI_LABEL_SUBSETS:
            raise ValueError(
                f"--subset {subset}: robustness is scored by the strict macro AUC of a multi-label subset "
                f"({', '.join(MULTI_LABEL_SUBSETS)})"
            )
        found = [
            bench_dir / f"{subset}{ext}" for ext in (".json", ".jsonl") if (bench_dir / f"{subset}{ext}").is_file()
        ]
        if not found:
            raise FileNotFoundError(f"{bench_dir}: no bench file for {subset} ({subset}.json)")
        load_bench(found[0])  # what the scorer reads, checked before any work
        records, bad = read_bench_records(found[0])
        for rid, reason in bad:
            logger.warning("%s: record %r left out: %s", subset, rid, reason)
        if not records:
            raise EvalInputError(f"{found[0]}: no record to evaluate")
        out.append(_Bench(subset, found[0], records[:n]))
    return out


def _default_image_root(bench_dir: Path) -> Path:
    return bench_dir / "images" if (bench_dir / "images").is_dir() else bench_dir.parent / "images"


def _open(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


class _Pages:
    """Draws and finds the condition pages (``out/images``)."""

    def __init__(self, out: Path, source: RecordSource, image_root: Path, seed: int) -> None:
        self.root = out / "images"
        self.source = source
        self.image_root = image_root
        self.seed = seed
        self.drawn = 0

    def path(self, condition: str, subset: str, rid: str) -> Path:
        return self.root / condition / subset / f"{_file_stem(rid)}.png"

    def done(self, path: Path) -> bool:
        return path.with_suffix(".json").is_file() and path.is_file() and image_is_valid(path)

    def draw(self, record: Record, subset: str, units: Sequence[Unit], severities: Sequence[float]) -> None:
        """Every missing page of ``record``: clean, then each unit at each severity above 0."""
        todo = [
            (u, s)
            for u in units
            for s in severities
            if s > 0 and not self.done(self.path(_condition(u.name, s), subset, record.id))
        ]
        clean_path = self.path(CLEAN, subset, record.id)
        if not todo and self.done(clean_path):
            return
        from evl_ecg.data.records import open_image
        from evl_ecg.ecg.render import render

        ecg = spec = None
        if self.source.signals:
            ecg, spec = self.source.clean(record)
            clean = render(ecg, spec)
            what = "re-rendered from the record's signal without augmentation"
        else:
            clean = open_image(record, self.image_root)
            what = "the stored page (a bench of images: image views only)"
        if not self.done(clean_path):
            doc = {"view": CLEAN, "family": None, "severity": 0.0, "seed": None, "params": {"page": what}}
            doc["base_spec"] = None if spec is None else json.loads(json.dumps(dataclasses.asdict(spec)))
            self._write(clean_path, clean, {**doc, "record": record.id, "unit": None})
        for unit, severity in todo:
            order, vseed = _draw(unit, record.id, self.seed)
            errors = []
            for name in order:
                try:
                    if ecg is None:
                        image, params = image_view(clean, name, severity, vseed)
                    else:
                        image, params = apply_view(ecg, name, severity, vseed, spec)
                except ValueError as exc:  # a view this record cannot take (mains above its Nyquist rate)
                    errors.append(f"{name}: {exc}")
                    continue
                doc = view_record(name, severity, vseed, params, spec)
                self._write(self.path(_condition(unit.name, severity), subset, record.id), image,
                            {**doc, "record": record.id, "unit": unit.name})  # fmt: skip
                break
            else:
                raise ValueError(f"record {record.id!r}: no view of {unit.name} applies ({'; '.join(errors)})")

    def _write(self, path: Path, image: Any, doc: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_png(path, image)
        atomic_write_bytes(path.with_suffix(".json"), (json.dumps(doc, indent=1) + "\n").encode("utf-8"))
        self.drawn += 1


@dataclass
class _Cell:
    model: str
    condition: str
    bench: _Bench

    def folder(self, out: Path) -> Path:
        return out / "models" / self.model / self.condition / self.bench.subset


def _likelihood_path(folder: Path) -> Path:
    return folder / "likelihood.json"


def _read_likelihood(path: Path, normalization: str) -> dict[str, Any]:
    if not path.is_file():
        return {"ids": [], "probs": [], "gold": [], "failed": [], "normalization": normalization}
    doc = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("normalization") != normalization:
        return {"ids": [], "probs": [], "gold": [], "failed": [], "normalization": normalization}
    return doc


def _missing(cell: _Cell, out: Path, likelihood: bool, normalization: str) -> tuple[list[Record], list[Record]]:
    """The records a cell still has to answer and to score by likelihood."""
    folder = cell.folder(out)
    pred = folder / "predictions.jsonl"
    done = read_done(pred, cell.model) if pred.is_file() else set()
    answers = [r for r in cell.bench.records if r.id not in done]
    lik: list[Record] = []
    if likelihood:
        have = set(_read_likelihood(_likelihood_path(folder), normalization)["ids"])
        lik = [r for r in cell.bench.records if r.id not in have]
    return answers, lik


def _run_cell(
    adapter: Any,
    cell: _Cell,
    out: Path,
    pages: _Pages,
    records: list[Record],
    lik_records: list[Record],
    *,
    max_new_tokens: int,
    batch_size: int,
    normalization: str,
    progress: bool,
) -> tuple[int, int]:
    """Answer (and likelihood-score) ``records`` / ``lik_records`` of a cell; returns how many of each."""
    from evl_ecg.eval.generate import generate_predictions
    from evl_ecg.eval.likelihood import label_scores

    folder = cell.folder(out)

    def loader(record: Any) -> Any:
        return _open(pages.path(cell.condition, cell.bench.subset, record.id))

    written = 0
    if records:
        result = generate_predictions(
            adapter,
            records,
            loader,
            folder / "predictions.jsonl",
            model_id=cell.model,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress,
        )
        if result.failed:
            rid, why = result.failed[0]
            raise ValueError(f"{folder}: record {rid!r} could not be answered ({why})")
        written = result.written
    if lik_records:
        path = _likelihood_path(folder)
        doc = _read_likelihood(path, normalization)
        failed: list[tuple[str, str]] = []
        ids, probs, gold = label_scores(
            adapter,
            lik_records,
            loader,
            MULTI_LABEL_SUBSETS[cell.bench.subset],
            batch_size=batch_size,
            failed=failed,
            normalization=normalization,
        )
        if failed:
            raise ValueError(f"{folder}: record {failed[0][0]!r} could not be scored by likelihood ({failed[0][1]})")
        doc["ids"] += list(ids)
        doc["probs"] += np.asarray(probs).tolist()
        doc["gold"] += np.asarray(gold).tolist()
        atomic_write_bytes(path, json.dumps(doc).encode("utf-8"))
    return written, len(lik_records)


def _fmt_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def evaluate_robustness(
    models: Sequence[str | os.PathLike[str]],
    bench_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    views: Sequence[str] | None = None,
    severities: Sequence[float | str] = DEFAULT_SEVERITIES,
    records: int = DEFAULT_RECORDS,
    subsets: Sequence[str] = DEFAULT_SUBSETS,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 8,
    likelihood: bool = True,
    likelihood_normalization: str = "null",
    seed: int = 0,
    n_boot: int = 2000,
    image_root: str | os.PathLike[str] | None = None,
    progress: bool = True,
    fresh: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate ``models`` on every view condition of ``bench_dir``'s records; write ``out_dir`` (module docstring).

    Args:
        models: local model folders (each checked before any work: :func:`check_model_folder`).
        bench_dir: a folder of ``<subset>.json`` bench files (a corpus's ``bench/``; its ``manifest.json`` beside
            says where the signals come from: :func:`evl_ecg.data.sources.open_record_source`).
        out_dir: where the pages, the cells and the report go.
        views: view names, family names or ``all`` (:func:`parse_units`); default: the families the bench allows.
        severities: severities in [0, 1]; 0, the clean condition, is always in.
        records: the first ``records`` records of each subset (every condition on the same records).
        subsets: multi-label subsets (strict macro AUC); default ``ptb-test``.
        max_new_tokens, batch_size: greedy generation, as ``eval run``.
        likelihood: also the label-likelihood macro AUC of every cell (about as costly as the answers).
        likelihood_normalization: ``null`` or ``softmax`` (:mod:`evl_ecg.eval.likelihood`).
        seed: seeds the views drawn per record (and the bootstrap).
        n_boot: bootstrap replicates of each drop's interval.
        image_root: the stored pages (default: ``bench_dir/images`` or ``bench_dir/../images``).
        progress: tqdm bars.
        fresh: remove this command's earlier output in ``out_dir`` first.
        log: where the lines about the source, the estimate and the stages go.

    Returns:
        The document written to ``robustness.json``.
    """
    t_start = time.perf_counter()
    bench_dir, out = Path(bench_dir), Path(out_dir)
    if not models:
        raise ValueError("--model: give one model folder or more")
    for m in models:
        check_model_folder(m)
    names = model_names(models)
    if records < 1 or batch_size < 1 or max_new_tokens < 1 or n_boot < 1:
        raise ValueError("--records, --batch-size, --max-new-tokens and --n-boot must be >= 1")
    if likelihood_normalization not in NORMALIZATIONS:
        raise ValueError(f"--likelihood-normalization must be {' or '.join(NORMALIZATIONS)}")
    grid = parse_severities(severities)
    source = open_record_source(bench_dir)
    units = parse_units(views, source)
    benches = _bench(bench_dir, list(subsets) or list(DEFAULT_SUBSETS), records)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file, not a folder; --out takes a folder")
    foreign = (
        [p.name for p in sorted(out.iterdir()) if p.name not in (*TOP_FILES, "images", "models")]
        if out.is_dir()
        else []
    )
    if foreign:
        raise ValueError(
            f"{out}: holds files `evl-ecg eval robustness` does not write ({', '.join(foreign[:3])}); use another --out"
        )
    key = ResumeKey(
        out,
        "eval robustness",
        {
            "decoding": "greedy",
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "seed": seed,
            "likelihood_normalization": likelihood_normalization,
            "source": source.kind,
        },
        {f"bench:{b.subset}": file_digest(b.path) for b in benches},
    )

    def clear() -> None:
        for name in ("images", "models"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in TOP_FILES:
            (out / name).unlink(missing_ok=True)

    has_output = (out / "images").is_dir() or (out / "models").is_dir()
    key.check(has_output=has_output, fresh=fresh, clear=clear)
    out.mkdir(parents=True, exist_ok=True)
    from evl_ecg.eval.run import check_model_fingerprint

    for m, name in zip(models, names, strict=True):
        check_model_fingerprint(m, out / "models" / name)
    key.write()

    log(f"source: {source.describe()}")
    if source.signals:
        augmented = sum(bool((r.meta or {}).get("augmented")) for b in benches for r in b.records)
        if augmented:
            log(f"clean: pages re-rendered without augmentation ({augmented} of the stored pages were augmented, so "
                "the clean score is not `eval run`'s on the stored pages)")  # fmt: skip
    conditions = [CLEAN] + [_condition(u.name, s) for u in units for s in grid if s > 0]
    root = Path(image_root) if image_root is not None else _default_image_root(bench_dir)
    pages = _Pages(out, source, root, seed)
    cells = [_Cell(name, c, b) for name in names for c in conditions for b in benches]

    # ---- the probe: each model with work answers one batch of its first unfinished cell (pages drawn for it) ----
    costs: dict[str, tuple[float, float, float]] = {}
    stats = {"answered": 0, "likelihood": 0}
    page_time = 0.0
    from evl_ecg.models import load_adapter

    def draw(batch: Sequence[Record], subset: str) -> None:
        nonlocal page_time
        t0 = time.perf_counter()
        for r in batch:
            pages.draw(r, subset, units, grid)
        page_time += time.perf_counter() - t0

    for m, name in zip(models, names, strict=True):
        todo = [(c, *_missing(c, out, likelihood, likelihood_normalization)) for c in cells if c.model == name]
        todo = [t for t in todo if t[1] or t[2]]
        if not todo:
            continue
        cell, answers, liks = todo[0]
        draw(answers[:batch_size] + liks[:batch_size], cell.bench.subset)
        t0 = time.perf_counter()
        adapter = load_adapter(m)
        load_s = time.perf_counter() - t0
        run = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, normalization=likelihood_normalization)
        t0 = time.perf_counter()
        n_a, _ = _run_cell(adapter, cell, out, pages, answers[:batch_size], [], progress=False, **run)
        ans_s = (time.perf_counter() - t0) / max(1, n_a)
        t0 = time.perf_counter()
        _, n_l = _run_cell(adapter, cell, out, pages, [], liks[:batch_size], progress=False, **run)
        lik_s = (time.perf_counter() - t0) / max(1, n_l)
        stats["answered"] += n_a
        stats["likelihood"] += n_l
        costs[name] = (load_s, ans_s if n_a else 0.0, lik_s if n_l else 0.0)
        del adapter
    missing = [
        (b, r)
        for b in benches
        for r in b.records
        if not all(pages.done(pages.path(c, b.subset, r.id)) for c in conditions)
    ]
    if missing and not pages.drawn:
        draw([missing[0][1]], missing[0][0].subset)
    page_cost = page_time / pages.drawn if pages.drawn else 0.0
    missing_pages = sum(
        not pages.done(pages.path(c, b.subset, r.id)) for c in conditions for b in benches for r in b.records
    )
    left = {
        name: [_missing(c, out, likelihood, likelihood_normalization) for c in cells if c.model == name]
        for name in names
    }
    estimate = missing_pages * page_cost
    lines = [f"{missing_pages} pages at {page_cost:.3f} s"]
    for name, (load_s, ans_s, lik_s) in costs.items():
        n_a = sum(len(a) for a, _ in left[name])
        n_l = sum(len(lk) for _, lk in left[name])
        estimate += load_s + n_a * ans_s + n_l * lik_s
        lines.append(
            f"{name}: {n_a} answers at {ans_s:.3f} s" + (f" + {n_l} likelihoods at {lik_s:.3f} s" if likelihood else "")
        )
    n_rec = ", ".join(f"{len(b.records)} {b.subset}" for b in benches)
    log(f"conditions: {len(conditions)} ({', '.join(conditions)}) x {len(names)} model(s) on {n_rec} record(s)")
    if missing_pages or any(a or lk for todo in left.values() for a, lk in todo):
        log(f"estimate: about {_fmt_minutes(estimate)} left ({'; '.join(lines)}; measured on a first batch)")
    else:
        log("estimate: nothing left to do (every page and cell is done); scoring")

    # ---- the pages, then each model's cells ------------------------------------------------------------------
    from tqdm.auto import tqdm

    with tqdm(total=sum(len(b.records) for b in benches), disable=not progress, desc="views", unit="rec") as bar:
        for b in benches:
            for r in b.records:
                pages.draw(r, b.subset, units, grid)
                bar.update(1)
    for m, name in zip(models, names, strict=True):
        todo = [(c, *_missing(c, out, likelihood, likelihood_normalization)) for c in cells if c.model == name]
        todo = [t for t in todo if t[1] or t[2]]
        if not todo:
            continue
        log(f"{name}: {len(todo)} cell(s) to answer")
        adapter = load_adapter(m)
        run = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, normalization=likelihood_normalization)
        for cell, answers, liks in todo:
            log(f"{name}: {cell.condition} {cell.bench.subset}: {len(answers)} answers, {len(liks)} likelihoods")
            n_a, n_l = _run_cell(adapter, cell, out, pages, answers, liks, progress=progress, **run)
            stats["answered"] += n_a
            stats["likelihood"] += n_l
        del adapter

    doc = score_robustness(
        out,
        names,
        benches,
        units,
        grid,
        likelihood=likelihood,
        likelihood_normalization=likelihood_normalization,
        n_boot=n_boot,
        seed=seed,
    )
    doc["source"] = {"kind": source.kind, "line": source.describe()}
    doc["settings"] = {**key.settings, "records": records, "n_boot": n_boot, "likelihood": likelihood}
    doc["models"] = {name: str(m) for m, name in zip(models, names, strict=True)}
    doc["this_run"] = {"pages_drawn": pages.drawn, **stats, "seconds": round(time.perf_counter() - t_start, 1)}
    atomic_write_bytes(out / "robustness.json", (json.dumps(doc, indent=1) + "\n").encode("utf-8"))
    atomic_write_bytes(out / "robustness.md", robustness_table(doc).encode("utf-8"))
    from evl_ecg.eval.figures import plot_robustness

    plot_robustness(doc, out / "robustness.png")
    return doc


def _nan_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _matrices(folder: Path, bench: _Bench) -> tuple[np.ndarray, np.ndarray]:
    """``(Y, P)`` of a cell: gold and strict-parsed predictions, ``n x C`` 0/1, in the bench's record order."""
    from evl_ecg.eval.stats import label_matrices

    _, Y, P = label_matrices(bench.path, folder / "predictions.jsonl", bench.records)
    return Y, P


def _likelihood_auc(folder: Path, bench: _Bench, normalization: str) -> float | None:
    """The label-likelihood macro AUC of a cell (percent), ``None`` where it does not cover every record."""
    from evl_ecg.auc import roc_auc_macro

    doc = _read_likelihood(_likelihood_path(folder), normalization)
    rows = {rid: k for k, rid in enumerate(doc["ids"])}
    idx = [rows[r.id] for r in bench.records if r.id in rows]
    if len(idx) != len(bench.records):
        return None
    return _nan_none(100.0 * roc_auc_macro(np.asarray(doc["gold"])[idx], np.asarray(doc["probs"])[idx]))


def score_robustness(
    out: Path,
    names: Sequence[str],
    benches: Sequence[_Bench],
    units: Sequence[Unit],
    grid: Sequence[float],
    *,
    likelihood: bool,
    likelihood_normalization: str,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """The scores of every cell: ``{"results": {subset: {model: {unit: {severity: row}}}}}``, each row the strict
    macro AUC, its change against clean with the paired bootstrap interval, and the likelihood AUC."""
    from evl_ecg.eval.stats import macro_auc, paired_bootstrap

    results: dict[str, Any] = {}
    for b in benches:
        by_model: dict[str, Any] = {}
        for name in names:
            base = out / "models" / name
            lik = {c: _likelihood_auc(base / c / b.subset, b, likelihood_normalization) if likelihood else None
                   for c in [CLEAN] + [_condition(u.name, x) for u in units for x in grid if x > 0]}  # fmt: skip
            clean = _matrices(base / CLEAN / b.subset, b)
            clean_row = {"auc": _nan_none(macro_auc(*clean)), "likelihood_auc": lik[CLEAN], "n": len(b.records)}
            rows: dict[str, Any] = {}
            for unit in units:
                rows[unit.name] = {"0": clean_row}
                for s in grid:
                    if s == 0:
                        continue
                    condition = _condition(unit.name, s)
                    Y, P = _matrices(base / condition / b.subset, b)
                    boot = paired_bootstrap({0: (Y, P)}, {0: clean}, n_boot=n_boot, seed=seed)
                    rows[unit.name][f"{s:g}"] = {
                        "auc": _nan_none(macro_auc(Y, P)),
                        "change": _nan_none(boot["diff"]),
                        "lo": _nan_none(boot["lo"]),
                        "hi": _nan_none(boot["hi"]),
                        "likelihood_auc": lik[condition],
                        "n": len(b.records),
                    }
            by_model[name] = rows
        results[b.subset] = by_model
    return {
        "format": "evl-ecg robustness v1",
        "metric": "strict macro AUC (percent); change: the view's minus the clean page's on the same records, 95 % "
        "paired bootstrap interval over the records",
        "units": {u.name: list(u.views) for u in units},
        "severities": [float(s) for s in grid],
        "subsets": {b.subset: {"bench": str(b.path), "records": len(b.records)} for b in benches},
        "results": results,
    }


def _f(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def robustness_table(doc: dict[str, Any]) -> str:
    """The Markdown report of :func:`evaluate_robustness`'s document: per subset, a row per model and unit, a
    column per severity (clean first), each view cell ``AUC (change [lo, hi])``; then the likelihood AUCs; then,
    per model, the unit that costs most at the largest severity."""
    sev = [f"{s:g}" for s in doc["severities"]]
    lines = ["# Robustness: strict macro AUC under views of the ECG", ""]
    lines.append(f"Source: {doc.get('source', {}).get('line', '?')}.")
    lines.append(
        "Each cell: the strict macro AUC on the view's pages (percent) and, in brackets, its change against the clean "
        "page on the same records with the 95 % paired bootstrap interval (records resampled). Severity 0 is the clean "
        "page. A family row draws one of its views per record (the same view at every severity)."
    )
    for subset, by_model in doc["results"].items():
        n = doc["subsets"][subset]["records"]
        lines += ["", f"## {subset} ({n} records per condition)", ""]
        lines.append("| model | view | " + " | ".join("clean" if s == "0" else s for s in sev) + " |")
        lines.append("|---|---|" + "---:|" * len(sev))
        for model, rows in by_model.items():
            for unit, by_sev in rows.items():
                cells = []
                for s in sev:
                    r = by_sev.get(s)
                    if r is None:
                        cells.append("-")
                    elif s == "0":
                        cells.append(_f(r["auc"]))
                    else:
                        cells.append(
                            f"{_f(r['auc'])} ({_f(r['change'], '+.1f')} [{_f(r['lo'], '+.1f')}, {_f(r['hi'], '+.1f')}])"
                        )
                lines.append(f"| {model} | {unit} | " + " | ".join(cells) + " |")
        if any(
            r.get("likelihood_auc") is not None
            for rows in by_model.values()
            for bs in rows.values()
            for r in bs.values()
        ):
            lines += ["", f"Label-likelihood macro AUC ({subset}):", ""]
            lines.append("| model | view | " + " | ".join("clean" if s == "0" else s for s in sev) + " |")
            lines.append("|---|---|" + "---:|" * len(sev))
            for model, rows in by_model.items():
                for unit, by_sev in rows.items():
                    cells = [_f((by_sev.get(s) or {}).get("likelihood_auc")) for s in sev]
                    lines.append(f"| {model} | {unit} | " + " | ".join(cells) + " |")
        top = sev[-1]
        if top != "0":
            lines += [""]
            for model, rows in by_model.items():
                ranked = sorted(
                    ((r[top]["change"], unit) for unit, r in rows.items() if r.get(top, {}).get("change") is not None),
                )
                if ranked:
                    change, unit = ranked[0]
                    lines.append(f"- {model}: costs most at severity {top}: {unit} ({change:+.1f})")
    return "\n".join(lines) + "\n"


__all__ = [
    "DEFAULT_RECORDS",
    "DEFAULT_SEVERITIES",
    "Unit",
    "check_model_folder",
    "evaluate_robustness",
    "model_names",
    "parse_severities",
    "parse_units",
    "robustness_table",
    "score_robustness",
]
