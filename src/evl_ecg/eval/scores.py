"""Scoring prediction files against a benchmark: the score document of ``evl-ecg eval score`` and of every
evaluation (:func:`score_paths`), and the seed a benchmark was drawn with (:func:`bench_seed`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from evl_ecg.eval.predictions import (
    SUBSETS,
    EvalInputError,
    load_bench,
    load_predictions,
    resolve_subset,
    run_from_path,
    subset_from_path,
)
from evl_ecg.eval.scoring import SCORERS, ScoreOptions, new_pulse_rng, score_file

#: the score document's format
SCORE_FORMAT = 1


def _bench_files(bench: Path, subset: str | None) -> dict[str, Path]:
    """Gold file per subset: one file (its subset from ``subset`` or its name), or every ``*.json``/``*.jsonl`` of a
    folder whose name names a subset (other files are ignored: a gold folder may hold images and more)."""
    if bench.is_file():
        return {resolve_subset(bench, subset, what="gold"): bench}
    if not bench.is_dir():
        raise EvalInputError(f"{bench}: no such file or folder")
    found: dict[str, Path] = {}
    for path in sorted(bench.iterdir()):
        if path.suffix not in (".json", ".jsonl") or not path.is_file():
            continue
        name = subset_from_path(path.name)
        if name is None or (subset is not None and name != subset):
            continue
        if name in found:
            raise EvalInputError(f"{bench}: two gold files for {name}: {found[name].name} and {path.name}")
        found[name] = path
    if not found:
        raise EvalInputError(f"{bench}: no gold file named after a subset ({', '.join(SUBSETS)})")
    return found


def _pred_files(pred: Path, subset: str | None) -> tuple[list[tuple[str, Path]], list[str]]:
    """(subset, file) pairs to score, in PULSE's order (subset order of its ``__main__``, then path), and the
    ``*.jsonl`` files of a folder whose subset cannot be told (reported, not scored)."""
    if pred.is_file():
        return [(resolve_subset(pred, subset, what="prediction"), pred)], []
    if not pred.is_dir():
        raise EvalInputError(f"{pred}: no such file or folder")
    pairs: list[tuple[str, Path]] = []
    unpaired: list[str] = []
    for path in sorted(pred.rglob("*.jsonl")):
        try:
            named = subset_from_path(path.relative_to(pred)) or subset_from_path(path)
        except EvalInputError as exc:
            unpaired.append(f"{exc}; not scored")
            continue
        if subset is not None and named is not None and named != subset:
            unpaired.append(f"{path}: names subset {named!r}, not {subset!r}; not scored")
            continue
        name = subset or named
        if name is None:
            unpaired.append(f"{path}: names no ECGBench subset; not scored")
            continue
        pairs.append((name, path))
    pairs.sort(key=lambda sp: (SUBSETS.index(sp[0]), str(sp[1])))
    return pairs, unpaired


def bench_seed(bench: str | os.PathLike[str]) -> int | None:
    """The seed of the corpus a benchmark was drawn from (``seed`` of the ``manifest.json`` beside or above its
    folder or file), or ``None`` for a benchmark without one (a real ECGBench)."""
    path = Path(bench)
    for folder in (path if path.is_dir() else path.parent, (path if path.is_dir() else path.parent).parent):
        manifest = folder / "manifest.json"
        if manifest.is_file():
            try:
                seed = json.loads(manifest.read_text()).get("seed")
            except (OSError, ValueError, AttributeError):
                return None
            return seed if isinstance(seed, int) else None
    return None


def score_paths(
    bench: str | os.PathLike[str],
    pred: str | os.PathLike[str],
    *,
    scorer: str = "both",
    subset: str | None = None,
    options: ScoreOptions | None = None,
    method: str | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Score a prediction file or folder against a gold file or folder; the score document (see module doc).

    One ``random.Random(42)`` serves the whole run (pulse MCQ fallback), consumed in PULSE's file order.
    """
    scorers = list(SCORERS) if scorer == "both" else [scorer]
    if any(s not in SCORERS for s in scorers):
        raise EvalInputError(f"unknown scorer {scorer!r}; known: pulse, strict, both")
    options = options or ScoreOptions()
    bench, pred = Path(bench), Path(pred)
    gold_files = _bench_files(bench, subset)
    pred_files, unpaired = _pred_files(pred, subset)
    if pred.is_dir() and not pred_files:
        raise EvalInputError(f"{pred}: no *.jsonl prediction file named after a subset")
    path_method, path_seed = run_from_path(pred.resolve())
    rng = new_pulse_rng()
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    gold_cache: dict[str, Any] = {}
    for name, path in pred_files:
        if name not in gold_files:
            errors.append(f"{path}: no gold file for {name} under {bench}")
            continue
        try:
            if name not in gold_cache:
                gold_cache[name] = load_bench(gold_files[name])
            rows, read_issues = load_predictions(path)
            for s in scorers:
                result = score_file(
                    gold_cache[name],
                    rows,
                    subset=name,
                    scorer=s,
                    read_issues=read_issues,
                    rng=rng if s == "pulse" else None,
                    options=options,
                    source=str(path),
                )
                result["bench"] = str(gold_files[name])
                results.append(result)
        except EvalInputError as exc:
            errors.append(str(exc))
    return {
        "format": SCORE_FORMAT,
        "method": method if method is not None else path_method,
        "seed": seed if seed is not None else path_seed,
        "bench": str(bench),
        "bench_seed": bench_seed(bench),
        "pred": str(pred),
        "results": results,
        "errors": errors,
        "unpaired": unpaired,
    }


__all__ = ["SCORE_FORMAT", "bench_seed", "score_paths"]
