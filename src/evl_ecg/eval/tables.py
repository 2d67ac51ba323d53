"""Result tables in the layout of the paper's Table 1, from score files of any number of runs.

Columns (paper Table 1): PTB-XL-Super AUC / F1 / HL, CODE-15% AUC / F1 / HL, ECG-QA Acc, CPSC-2018 AUC / F1 / HL,
CSN Acc, G12EC Acc, MMMU-ECG Acc. Rows: one per (method, scorer); a cell is the mean over the method's seeds,
with the sample standard deviation (``ddof=1``) when there are two or more. Each row carries its scorer
(``pulse``, ``strict``, or ``paper`` for the published reference rows), so every number says how it was scored.

A score file (written by ``evl-ecg eval score --out``) is ``{"method", "seed", "results": [...]}``; a missing
method/seed is taken from its path ``.../<method>/seed<k>/...`` (:func:`evl_ecg.eval.predictions.run_from_path`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evl_ecg.eval.predictions import EvalInputError, run_from_path


@dataclass(frozen=True)
class Column:
    subset: str
    metric: str
    dataset: str

    @property
    def key(self) -> str:
        return f"{self.subset}/{self.metric}"

    @property
    def lower_is_better(self) -> bool:
        return self.metric == "HL"

    @property
    def title(self) -> str:
        return f"{self.dataset} {self.metric}{' ↓' if self.lower_is_better else ''}"


COLUMNS: tuple[Column, ...] = (
    Column("ptb-test", "AUC", "PTB-XL-Super"),
    Column("ptb-test", "F1", "PTB-XL-Super"),
    Column("ptb-test", "HL", "PTB-XL-Super"),
    Column("code15-test", "AUC", "CODE-15%"),
    Column("code15-test", "F1", "CODE-15%"),
    Column("code15-test", "HL", "CODE-15%"),
    Column("ecgqa-test", "Acc", "ECG-QA"),
    Column("cpsc-test", "AUC", "CPSC-2018"),
    Column("cpsc-test", "F1", "CPSC-2018"),
    Column("cpsc-test", "HL", "CPSC-2018"),
    Column("csn-test-no-cot", "Acc", "CSN"),
    Column("g12-test-no-cot", "Acc", "G12EC"),
    Column("mmmu-ecg", "Acc", "MMMU-ECG"),
)

#: The paper's published rows (Table 1 of arXiv 2605.29977; PULSE-7B teacher from the paper's text, SPEC §4),
#: in column order.
PAPER_ROWS: dict[str, tuple[float, ...]] = {
    "PULSE-7B (teacher)": (82.4, 74.8, 11.0, 90.7, 85.4, 5.0, 73.8, 76.9, 57.6, 8.6, 85.2, 78.2, 58.0),
    "SFT": (74.6, 62.8, 16.3, 85.0, 76.7, 7.0, 63.7, 66.4, 32.7, 10.8, 89.3, 76.4, 47.7),
    "ULD": (73.4, 61.7, 16.9, 84.3, 76.4, 7.2, 62.5, 65.5, 28.2, 11.6, 86.3, 75.6, 46.5),
    "MultiLevelOT": (72.3, 59.4, 17.1, 85.6, 74.7, 7.4, 63.1, 66.6, 29.1, 12.1, 87.9, 76.1, 44.5),
    "DSKD": (73.0, 60.3, 18.8, 80.8, 75.4, 8.0, 60.5, 65.3, 31.3, 12.1, 88.4, 75.8, 46.5),
    "EM-KD": (74.3, 62.9, 16.4, 84.9, 77.4, 6.8, 63.9, 66.3, 32.9, 11.2, 89.2, 76.0, 47.4),
    "EVL-ECG": (75.2, 63.3, 16.0, 86.4, 78.4, 6.5, 64.8, 66.8, 33.6, 12.3, 89.7, 77.1, 48.5),
}
PAPER_SCORER = "paper"


@dataclass
class ScoreDoc:
    """One score file: its run (method, seed) and its per-subset results."""

    path: str
    method: str
    seed: int | None
    results: list[dict[str, Any]]


def load_score_doc(path: str | os.PathLike[str]) -> ScoreDoc:
    """Read a score JSON file; the run's method/seed come from its fields, else from its path, else the method is
    the file's folder name and the seed is unknown (``None``)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalInputError(f"{p}: file not found") from None
    except json.JSONDecodeError as exc:
        raise EvalInputError(f"{p}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise EvalInputError(f"{p}: not a score file (expected an object with a 'results' list)")
    method, seed = data.get("method"), data.get("seed")
    path_method, path_seed = run_from_path(p.resolve())
    method = method or path_method or p.resolve().parent.name
    seed = seed if seed is not None else path_seed
    return ScoreDoc(path=str(p), method=str(method), seed=None if seed is None else int(seed), results=data["results"])


def _value(result: Mapping[str, Any], metric: str) -> float:
    v = result.get("metrics", {}).get(metric)
    return float("nan") if v is None else float(v)


@dataclass
class Cell:
    mean: float
    std: float | None
    n: int
    scorer: str

    def to_dict(self) -> dict[str, Any]:
        def clean(x: float | None) -> float | None:
            return None if x is None or math.isnan(x) else round(x, 2)

        return {"mean": clean(self.mean), "std": clean(self.std), "n": self.n, "scorer": self.scorer}

    def text(self) -> str:
        if math.isnan(self.mean):
            return "NaN"
        if self.std is None or math.isnan(self.std):
            return f"{self.mean:.1f}"
        return f"{self.mean:.1f} ± {self.std:.1f}"


@dataclass
class Row:
    method: str
    scorer: str
    source: str  # "run" or "paper"
    seeds: list[int | None]
    cells: dict[str, Cell]


def aggregate(docs: Sequence[ScoreDoc]) -> list[Row]:
    """Rows (method, scorer) with mean ± std over seeds per column; a (method, seed, scorer, subset) seen twice is an
    error (two files claim the same number)."""
    values: dict[tuple[str, str], dict[str, list[float]]] = {}
    seeds: dict[tuple[str, str], list[int | None]] = {}
    seen: dict[tuple[str, int | None, str, str], str] = {}
    by_key = {c.key: c for c in COLUMNS}
    for doc in docs:
        for result in doc.results:
            subset, scorer = result.get("subset"), result.get("scorer")
            if subset is None or scorer is None:
                raise EvalInputError(f"{doc.path}: a result lacks 'subset' or 'scorer'")
            ident = (doc.method, doc.seed, scorer, subset)
            if ident in seen:
                raise EvalInputError(
                    f"{doc.path}: method {doc.method!r} seed {doc.seed} {scorer} {subset} is also in {seen[ident]}; "
                    "give each run its own method/seed (fields 'method'/'seed' or a runs/<method>/seed<k>/ path)"
                )
            seen[ident] = doc.path
            key = (doc.method, scorer)
            seeds.setdefault(key, [])
            if doc.seed not in seeds[key]:
                seeds[key].append(doc.seed)
            for metric in ("AUC", "F1", "HL", "Acc"):
                ck = f"{subset}/{metric}"
                if ck in by_key and metric in result.get("metrics", {}):
                    values.setdefault(key, {}).setdefault(ck, []).append(_value(result, metric))
    rows = []
    for (method, scorer), cols in sorted(values.items()):
        cells = {}
        for ck, vs in cols.items():
            arr = np.asarray(vs, dtype=float)
            std = float(np.std(arr, ddof=1)) if len(arr) > 1 else None
            cells[ck] = Cell(mean=float(np.mean(arr)), std=std, n=len(arr), scorer=scorer)
        rows.append(Row(method, scorer, "run", sorted(seeds[(method, scorer)], key=lambda s: (s is None, s)), cells))
    return rows


def reference_rows() -> list[Row]:
    """The paper's published rows (scorer ``paper``)."""
    return [
        Row(
            method=name,
            scorer=PAPER_SCORER,
            source="paper",
            seeds=[],
            cells={c.key: Cell(mean=v, std=None, n=1, scorer=PAPER_SCORER) for c, v in zip(COLUMNS, vals, strict=True)},
        )
        for name, vals in PAPER_ROWS.items()
    ]


def build_table(docs: Sequence[ScoreDoc], *, with_reference: bool = True) -> list[Row]:
    """Reference rows (when asked) followed by the runs' rows."""
    return (reference_rows() if with_reference else []) + aggregate(docs)


def to_markdown(rows: Iterable[Row]) -> str:
    """A Markdown table: Method | Scorer | Seeds | the 13 columns; ``–`` where a run has no number."""
    head = ["Method", "Scorer", "Seeds", *[c.title for c in COLUMNS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * len(COLUMNS)]
    for row in rows:
        seeds = "paper" if row.source == "paper" else ",".join("?" if s is None else str(s) for s in row.seeds)
        cells = [row.cells[c.key].text() if c.key in row.cells else "–" for c in COLUMNS]
        lines.append("| " + " | ".join([row.method, row.scorer, seeds, *cells]) + " |")
    notes = [
        "",
        "Scorer: `pulse` = the published ECGBench scorer's rules (substring labels, AUC on 0/1 predictions); "
        "`strict` = whole-word labels and full vocabulary; `paper` = numbers published in the paper. "
        "Mean ± sample std over seeds; HL: lower is better.",
    ]
    return "\n".join(lines + notes) + "\n"


def to_json(rows: Iterable[Row]) -> dict[str, Any]:
    """The table as JSON: the columns, then each row's cells (``mean``, ``std``, ``n``, ``scorer``; NaN as null)."""
    return {
        "columns": [
            {
                "key": c.key,
                "subset": c.subset,
                "metric": c.metric,
                "dataset": c.dataset,
                "lower_is_better": c.lower_is_better,
            }
            for c in COLUMNS
        ],
        "rows": [
            {
                "method": r.method,
                "scorer": r.scorer,
                "source": r.source,
                "seeds": r.seeds,
                "cells": {k: v.to_dict() for k, v in r.cells.items()},
            }
            for r in rows
        ],
    }


def write_report(
    score_paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *, with_reference: bool = True
) -> tuple[Path, Path]:
    """Write ``out_dir/results.md`` and ``out_dir/results.json`` from score files; returns both paths."""
    docs = [load_score_doc(p) for p in score_paths]
    rows = build_table(docs, with_reference=with_reference)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "results.md", out / "results.json"
    md.write_text(to_markdown(rows), encoding="utf-8")
    js.write_text(json.dumps(to_json(rows), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return md, js
