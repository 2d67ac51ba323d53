"""Evaluate one model on ECGBench-style subsets: generate (resumable), score with both scorers, likelihood AUC/ECE.

Layout written under ``out_dir``::

    model_fingerprint.json        the evaluated model's :func:`evl_ecg.models.fingerprint.model_fingerprint`
    resume-key.json               the settings the predictions were generated with (:mod:`evl_ecg.resume`)
    <subset>/predictions.jsonl    PULSE-format generations (:func:`evl_ecg.eval.generate.generate_predictions`)
    <subset>/likelihood.json      label probabilities of a multi-label subset (:mod:`evl_ecg.eval.likelihood`)
    scores.json                   the score document of ``evl-ecg eval score`` plus ``model``, ``generation``
                                  and ``likelihood`` sections (``evl-ecg report`` reads it like any score file)

Bench files are ``bench_dir/<subset>.json`` (or ``.jsonl``), named as ECGBench's configs; images are looked up under
``image_root`` (default: ``bench_dir/images`` if it exists, else ``bench_dir/../images``: the layouts of ECGBench's
``data/ECGBench`` and of ``evl-ecg data corpus``). Everything resumes: generation skips ids already written, and
a subset's ``likelihood.json`` is reused when it covers the same ids, classes and normalization (and is redone whole
otherwise). A resume is keyed on the model's fingerprint, not on its folder's name: an ``out_dir`` written for one
model is refused to another (a folder of the same name holding other weights would otherwise mix the rows of two
models). It is keyed as well on every other setting that changes an answer (:mod:`evl_ecg.resume`, ``resume-key.json``):
the decoding mode, ``max_new_tokens``, ``batch_size`` and each bench file's content; a rerun with another value is
refused in one line naming the setting and both values, unless ``fresh`` (``--fresh``) removes the earlier output
first. A folder holding files an evaluation does not write (a model, a corpus) is refused too.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evl_ecg.auc import roc_auc_macro, roc_auc_per_class
from evl_ecg.data.records import Record, RecordError, open_image
from evl_ecg.ecg.labels import VOCABULARIES
from evl_ecg.eval.generate import PULSE_MAX_NEW_TOKENS, generate_predictions
from evl_ecg.eval.likelihood import (
    METHODS,
    MULTI_LABEL_SUBSETS,
    degeneracy,
    expected_calibration_error,
    label_scores,
)
from evl_ecg.eval.predictions import TASKS, EvalInputError, load_bench, read_json_rows
from evl_ecg.files import atomic_write_bytes, read_text_file
from evl_ecg.resume import FOLDER_KEY, ResumeKey, file_digest

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
LIKELIHOOD_FILE = "likelihood.json"
SCORES_FILE = "scores.json"
FINGERPRINT_FILE = "model_fingerprint.json"
#: What an evaluation writes at the top of ``out_dir`` and in each ``<subset>/`` folder; anything else is not its own.
TOP_FILES = (FINGERPRINT_FILE, SCORES_FILE, FOLDER_KEY)
SUBSET_FILES = (PREDICTIONS_FILE, LIKELIHOOD_FILE)


def check_model_fingerprint(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Record the fingerprint of ``model_dir`` in ``out_dir`` or, when one is there, refuse another model's.

    Raises ``ValueError`` naming ``out_dir``, both models and what differs, or naming a ``model_fingerprint.json``
    that cannot be read. An ``out_dir`` written before fingerprints were recorded (outputs but no
    ``model_fingerprint.json``) cannot be checked: it is adopted with a warning.
    """
    from evl_ecg.models.fingerprint import describe_differences, model_fingerprint, short

    out_dir = Path(out_dir)
    fingerprint = model_fingerprint(model_dir)
    path = out_dir / FINGERPRINT_FILE
    if path.is_file():
        try:
            stored = json.loads(read_text_file(path, ValueError))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: unreadable model fingerprint ({exc.msg}); use another --out") from None
        if not isinstance(stored, dict) or not isinstance(stored.get("digest"), str):
            raise ValueError(f"{path}: not a model fingerprint (no 'digest'); use another --out")
        if stored.get("digest") != fingerprint["digest"]:
            why = "; ".join(describe_differences(stored, fingerprint, limit=4))
            raise ValueError(
                f"{out_dir} holds the evaluation of model {stored.get('path')} (fingerprint "
                f"{short(stored.get('digest'))}), not of {fingerprint['path']} ({short(fingerprint['digest'])}): "
                f"{why}; use another --out"
            )
        return fingerprint
    if out_dir.is_dir() and any(out_dir.glob(f"*/{PREDICTIONS_FILE}")):
        logger.warning("%s: outputs without %s; cannot check they are this model's, adopting them", out_dir, path.name)
    atomic_write_bytes(path, (json.dumps(fingerprint, indent=1) + "\n").encode("utf-8"))
    return fingerprint


def foreign_files(out_dir: Path) -> list[str]:
    """Files under ``out_dir`` that an evaluation does not write (dotfiles aside: temporary files), sorted."""
    if not out_dir.is_dir():
        return []
    found: list[str] = []
    for path in sorted(out_dir.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir() and path.name in TASKS:
            found += [f"{path.name}/{p.name}" for p in sorted(path.iterdir()) if not _own(p, SUBSET_FILES)]
        elif not _own(path, TOP_FILES):
            found.append(path.name + ("/" if path.is_dir() else ""))
    return found


def _own(path: Path, names: Sequence[str]) -> bool:
    return path.name.startswith(".") or (path.name in names and path.is_file())


def _has_output(out_dir: Path) -> bool:
    return (out_dir / SCORES_FILE).is_file() or any((out_dir / s / f).is_file() for s in TASKS for f in SUBSET_FILES)


def _clear_output(out_dir: Path) -> None:
    """Remove what an evaluation wrote into ``out_dir`` (``--fresh``); nothing else is there (:func:`foreign_files`)."""
    for subset in TASKS:
        for name in SUBSET_FILES:
            (out_dir / subset / name).unlink(missing_ok=True)
        if (out_dir / subset).is_dir() and not any((out_dir / subset).iterdir()):
            (out_dir / subset).rmdir()
    for name in TOP_FILES:
        (out_dir / name).unlink(missing_ok=True)


def resume_key(
    out_dir: Path, files: dict[str, Path], *, max_new_tokens: int, batch_size: int, model_id: str | None
) -> ResumeKey:
    """The settings an evaluation's predictions depend on (the model itself: :func:`check_model_fingerprint`).

    ``batch_size`` is in: left padding changes a batch's numerics, so a greedy answer may differ at another size.
    Each bench file's content is a part (one per subset: a subset added later is not a mismatch). The scorer and the
    likelihood normalization are not: ``scores.json`` is scored again whole on every run, and ``likelihood.json``
    carries its own normalization and is redone whole when it differs.
    """
    settings: dict[str, Any] = {"decoding": "greedy", "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    if model_id is not None:  # an adapter object: no folder to fingerprint, its id stands for it
        settings["model_id"] = model_id
    parts = {f"bench:{name}": file_digest(path) for name, path in files.items()}
    return ResumeKey(out_dir, "eval run", settings, parts, folder=True)


def read_bench_records(path: str | os.PathLike[str]) -> tuple[list[Record], list[tuple[str, str]]]:
    """Records of a bench file (JSON list or JSONL, as :func:`~evl_ecg.eval.predictions.read_json_rows` tells them
    apart), each validated on its own: ``(records, [(id, reason)])``.

    LLaVA's image-token treatment is applied (``<image>`` moved to the start of the first human turn as PULSE's
    inference does); a bad or duplicate record is reported and left out, never dropped silently. Items of a JSON
    list are taken as they are (a string item is a bad record, not a JSON line to parse). A file that cannot be read
    or is not JSON raises :class:`~evl_ecg.eval.predictions.EvalInputError` naming it.
    """
    path = Path(path)
    rows, json_lines = read_json_rows(path)
    records: list[Record] = []
    failed: list[tuple[str, str]] = []
    seen: set[str] = set()
    for n, row, error in rows:
        where = f"{path}: line {n}" if json_lines else f"{path}: item {n}"
        if error is not None:
            failed.append((f"{path.name}:{n}", error))
            continue
        rid = str(row.get("id")) if isinstance(row, dict) else f"{path.name}:{n}"
        try:
            record = Record.from_dict(row, source=where, normalize_image_token=True)
        except (RecordError, TypeError, AttributeError) as exc:
            failed.append((rid, str(exc)))
            continue
        if record.id in seen:
            failed.append((rid, f"{where}: duplicate id"))
            continue
        seen.add(record.id)
        records.append(record)
    return records, failed


def _bench_files(bench_dir: Path, subsets: Sequence[str] | None) -> tuple[dict[str, Path], list[str]]:
    from evl_ecg.eval.predictions import TASKS, subset_from_path

    if not bench_dir.is_dir():
        raise EvalInputError(f"{bench_dir}: no such folder (--bench takes a folder of <subset>.json bench files)")
    found: dict[str, Path] = {}
    skipped: list[str] = []
    for path in sorted(bench_dir.iterdir()):
        if path.suffix not in (".json", ".jsonl") or not path.is_file():
            continue
        name = subset_from_path(path.name)
        if name is None or name not in TASKS:
            skipped.append(f"{path.name}: not a scored ECGBench subset")
            continue
        if subsets is not None and name not in subsets:
            continue
        if name in found:
            raise ValueError(f"{bench_dir}: two bench files for {name}: {found[name].name} and {path.name}")
        found[name] = path
    if subsets is not None:
        missing = sorted(set(subsets) - set(found))
        if missing:
            raise FileNotFoundError(f"{bench_dir}: no bench file for {', '.join(missing)}")
    if not found:
        raise FileNotFoundError(f"{bench_dir}: no bench file named after an ECGBench subset")
    return found, skipped


def _default_image_root(bench_dir: Path) -> Path:
    return bench_dir / "images" if (bench_dir / "images").is_dir() else bench_dir.parent / "images"


def _score(bench_dir: Path, out_dir: Path, scorer: str, subsets: Sequence[str], model_id: str) -> dict[str, Any]:
    """Score ``out_dir/<subset>/predictions.jsonl`` with the scoring helper's API (``evl-ecg eval score``)."""
    from evl_ecg.eval.scores import score_paths

    doc = score_paths(bench_dir, out_dir, scorer=scorer, method=model_id)
    doc["results"] = [r for r in doc["results"] if r["subset"] in subsets]
    return doc


def _likelihood(
    adapter: Any,
    records: list[Record],
    loader: Any,
    subset: str,
    path: Path,
    batch_size: int,
    progress: bool,
    normalization: str = "null",
) -> dict[str, Any]:
    vocabulary = MULTI_LABEL_SUBSETS[subset]
    classes = list(VOCABULARIES[vocabulary])
    cached = json.loads(path.read_text()) if path.exists() else None
    failed: list[tuple[str, str]] = []
    if (
        cached
        and cached.get("classes") == classes
        and cached.get("normalization", "null") == normalization
        and set(cached["ids"]) | {f[0] for f in cached["failed"]} == {r.id for r in records}
    ):
        ids, probs, gold = cached["ids"], np.asarray(cached["probs"]), np.asarray(cached["gold"])
        failed = [tuple(f) for f in cached["failed"]]
    else:
        ids, probs, gold = label_scores(
            adapter,
            records,
            loader,
            vocabulary,
            batch_size=batch_size,
            progress=progress,
            failed=failed,
            normalization=normalization,
        )
        data = {"classes": classes, "ids": ids, "probs": probs.tolist(), "gold": gold.tolist(), "failed": failed}
        data["normalization"] = normalization
        atomic_write_bytes(path, json.dumps(data).encode("utf-8"))
    per_class = roc_auc_per_class(gold, probs) if len(ids) else [math.nan] * len(classes)
    auc = roc_auc_macro(gold, probs) if len(ids) else math.nan
    ece = expected_calibration_error(gold, probs) if len(ids) else math.nan
    flags = degeneracy(np.asarray(probs, dtype=np.float64).reshape(len(ids), len(classes)), classes)
    if flags["degenerate"]:
        logger.warning("%s likelihood: %s", subset, flags["degenerate_reason"])
    return {
        "vocabulary": vocabulary,
        "n": len(ids),
        "auc": _json_float(auc),
        "ece": _json_float(ece),
        "per_class_auc": {c: _json_float(a) for c, a in zip(classes, per_class, strict=True)},
        "failed": [list(f) for f in failed],
        "method": METHODS[normalization],
        "normalization": normalization,
        **flags,
        "file": str(path),
    }


def _json_float(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def evaluate_model(
    model_dir_or_adapter: Any,
    bench_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    scorer: str | None = "both",
    max_new_tokens: int = PULSE_MAX_NEW_TOKENS,
    batch_size: int = 8,
    subsets: Sequence[str] | None = None,
    likelihood: bool = True,
    image_root: str | os.PathLike[str] | None = None,
    model_id: str | None = None,
    device: str | None = None,
    progress: bool = True,
    seed: int | None = None,
    update_card: bool = False,
    likelihood_normalization: str = "null",
    fresh: bool = False,
) -> dict[str, Any]:
    """Generate, score and (multi-label subsets) likelihood-score one model; write ``out_dir/scores.json``.

    Nothing is written outside ``out_dir`` unless ``update_card`` asks for it.

    Args:
        model_dir_or_adapter: a local checkpoint folder (loaded with :func:`evl_ecg.models.load_adapter`) or an
            :class:`~evl_ecg.models.base.Adapter`.
        bench_dir: folder of ``<subset>.json`` bench files.
        out_dir: where predictions, likelihoods and ``scores.json`` go.
        scorer: ``pulse``, ``strict``, ``both`` (the ``evl-ecg eval score`` scorers), or ``None`` to only generate.
        max_new_tokens, batch_size: generation settings (greedy; PULSE: 1024 new tokens).
        subsets: subset names to run (default: every bench file named after a scored subset).
        likelihood: compute label-probability AUC and ECE for ``ptb-test``, ``code15-test``, ``cpsc-test``.
        image_root: image folder (default: see the module docstring).
        model_id: the predictions' ``model_id`` and the score document's ``method`` (default: the folder name,
            or the adapter's family). A folder's resume is checked against its model fingerprint
            (:func:`check_model_fingerprint`), whatever the ``model_id``.
        device: move the model there first (``"cuda"``); default: leave it where it is.
        progress: tqdm bars.
        seed: the training seed of the model, recorded in the document (result tables group runs by method x seed).
        update_card: also add the scores to the model card (``README.md``, ``card.json``) of the model folder, after
            ``scores.json`` is written; the folder must hold a card evl-ecg wrote (otherwise a warning). A folder that
            cannot be written raises :class:`CardUpdateError`. Default: the model folder is only read.
        likelihood_normalization: ``"null"`` or ``"softmax"`` (:func:`evl_ecg.eval.likelihood.label_probabilities`).
        fresh: remove the evaluation ``out_dir`` holds before starting (default: resume it when its resume key
            matches these settings, refuse it otherwise: :func:`resume_key`).

    Returns:
        The document written to ``scores.json``: the scorer's ``format``/``method``/``results``/``errors``, plus
        ``model``, ``generation`` (per subset: written, resumed, failed records) and ``likelihood`` (per multi-label
        subset: ``auc``, ``ece``, per-class AUC, ``n``, failures, ``normalization``, ``degenerate`` with
        ``degenerate_reason`` / ``degenerate_classes``: :func:`evl_ecg.eval.likelihood.degeneracy`).
    """
    bench_dir, out_dir = Path(bench_dir), Path(out_dir)
    if update_card and not isinstance(model_dir_or_adapter, (str, os.PathLike)):
        raise ValueError("update_card=True needs a model folder, not an adapter object")
    if likelihood_normalization not in METHODS:
        raise ValueError(
            f"unknown likelihood normalization {likelihood_normalization!r}; expected one of {', '.join(METHODS)}"
        )
    files, skipped = _bench_files(bench_dir, subsets)
    for path in files.values():  # what the scorer reads, checked before the model is loaded: a file it cannot
        load_bench(path)  # score (duplicate ids, items that are not objects, no items, gpt turn first) is refused
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: is a file, not a folder; --out takes a folder")
    foreign = foreign_files(out_dir)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ValueError(f"{out_dir}: holds files `evl-ecg eval run` does not write ({shown}); use another --out")
    is_folder = isinstance(model_dir_or_adapter, (str, os.PathLike))
    adapter_id = (  # an adapter object has no folder to fingerprint: its id stands for it
        None if is_folder else model_id or model_dir_or_adapter.family or type(model_dir_or_adapter).__name__
    )
    key = resume_key(out_dir, files, max_new_tokens=max_new_tokens, batch_size=batch_size, model_id=adapter_id)
    key.check(has_output=_has_output(out_dir), fresh=fresh, clear=lambda: _clear_output(out_dir))
    if is_folder:
        from evl_ecg.models import load_adapter

        check_model_fingerprint(model_dir_or_adapter, out_dir)  # before anything is appended to out_dir
        key.write()
        adapter = load_adapter(model_dir_or_adapter)
        model_id = model_id or Path(model_dir_or_adapter).resolve().name
        model_desc = str(model_dir_or_adapter)
    else:
        key.write()
        adapter = model_dir_or_adapter
        model_id = model_desc = adapter_id
    if device is not None:
        adapter.model.to(device)
    root = Path(image_root) if image_root is not None else _default_image_root(bench_dir)

    def loader(record: Record) -> Any:
        return open_image(record, root)

    generation: dict[str, Any] = {}
    likelihoods: dict[str, Any] = {}
    for subset, path in files.items():
        records, bad = read_bench_records(path)
        for rid, reason in bad:
            logger.warning("%s: record %r not evaluated: %s", subset, rid, reason)
        result = generate_predictions(
            adapter,
            records,
            loader,
            out_dir / subset / PREDICTIONS_FILE,
            model_id=model_id,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress,
        )
        generation[subset] = {
            "bench": str(path),
            "records": len(records) + len(bad),
            "written": result.written,
            "resumed": result.resumed,
            "failed": [list(f) for f in bad + result.failed],
        }
        if likelihood and subset in MULTI_LABEL_SUBSETS:
            likelihoods[subset] = _likelihood(
                adapter,
                records,
                loader,
                subset,
                out_dir / subset / LIKELIHOOD_FILE,
                batch_size,
                progress,
                likelihood_normalization,
            )
    if scorer is not None:
        doc = _score(bench_dir, out_dir, scorer, list(files), model_id)
    else:
        doc = {"format": 1, "method": model_id, "seed": None, "results": [], "errors": [], "unpaired": []}
    if seed is not None:
        doc["seed"] = seed
    doc.update(
        {
            "model": model_desc,
            "image_root": str(root),
            "settings": {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "greedy": True},
            "generation": generation,
            "likelihood": likelihoods,
            "skipped_bench_files": skipped,
        }
    )
    atomic_write_bytes(out_dir / SCORES_FILE, (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    if update_card:  # only when asked: an evaluation reads the model folder, it writes into out_dir
        update_model_card(model_dir_or_adapter, doc, out_dir / SCORES_FILE)
    return doc


class CardUpdateError(RuntimeError):
    """The model card could not be updated; the scores are already in ``scores.json``."""


def update_model_card(
    model_dir: str | os.PathLike[str], scores: dict[str, Any], scores_path: str | os.PathLike[str]
) -> Path | None:
    """Add ``scores`` to the card evl-ecg wrote in ``model_dir`` (:func:`evl_ecg.models.card.write_model_card`).

    A folder without such a card is left alone (a warning: never overwrite someone else's README). A folder that
    cannot be read or written raises :class:`CardUpdateError`, one line naming it and ``scores_path``.
    """
    from evl_ecg.models.card import has_model_card, write_model_card

    model_dir = Path(model_dir)
    try:
        if not has_model_card(model_dir):
            logger.warning("%s: no model card written by evl-ecg (README.md); not updated", model_dir)
            return None
        return write_model_card(model_dir, scores=scores)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise CardUpdateError(
            f"cannot update the model card in {model_dir}: {why}; the scores are in {scores_path}"
        ) from exc
