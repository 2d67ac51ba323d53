"""``evl-ecg data``: synthesise a corpus, render a record to a paper-ECG image, inspect a record.

Errors are one line on stderr naming the file/record and the reason, with exit status 1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from evl_ecg.console import fail as _fail
from evl_ecg.ecg.readers import formats_help

app = typer.Typer(
    name="data",
    help="Synthesise, render and inspect ECGs and conversation records.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

DEFAULT_SIZE = "512x384"


def parse_size(text: str) -> tuple[int, int]:
    """``"512x384"`` -> ``(512, 384)``; raises ``typer.BadParameter`` naming ``--size`` otherwise, and for a size
    outside 16 px to :data:`evl_ecg.ecg.render.MAX_IMAGE_SIDE` a side and :data:`~evl_ecg.ecg.render.MAX_IMAGE_PIXELS`
    in all (a 60000x60000 page would end in a MemoryError)."""
    from evl_ecg.ecg.render import check_image_size

    parts = text.lower().replace("×", "x").split("x")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise typer.BadParameter(
            f"size must be WIDTHxHEIGHT in pixels (e.g. {DEFAULT_SIZE}), got {text!r}", param_hint="'--size'"
        ) from None
    if w < 16 or h < 16:
        raise typer.BadParameter(f"size must be at least 16x16 px, got {text!r}", param_hint="'--size'")
    try:
        check_image_size(w, h)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--size'") from None
    return w, h


def _size_or_dpi(size: str | None, dpi: int | None, where: str) -> tuple[tuple[int, int] | None, int | None]:
    """``--size`` and ``--dpi`` resolved: either alone, neither (the default size), never both."""
    if size is not None and dpi is not None:
        _fail(f"{where}: give --size or --dpi, not both (--dpi D draws the letter page at D DPI)")
    if dpi is not None:
        return None, dpi
    return parse_size(size or DEFAULT_SIZE), None


def _jsonable(value: Any) -> Any:
    """Meta values as JSON (numpy scalars/arrays, tuples, sets, dataclasses)."""
    import dataclasses

    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _read(path: Path, index: int | None) -> Any:
    where = f"{path}" + (f"[{index}]" if index is not None else "")
    try:
        found = path.exists()
    except OSError as exc:  # a folder on the way that cannot be searched: not "not found"
        _fail(f"{where}: cannot read ({exc.strerror or type(exc).__name__})")
    if not found:
        _fail(f"{where}: file not found")
    from evl_ecg.ecg.readers import read_record

    try:
        return read_record(path, index=index)
    except Exception as exc:  # readers raise EcgError, KeyError, OSError, library errors: all end as one line
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _fail(message if str(path) in message else f"{where}: {message}")


def _echo_skipped(skipped: list[dict[str, Any]], what: str, name: Any) -> None:
    """On stderr: how many ``what`` a build skipped, the first 20 by ``name(item)`` with their reasons."""
    typer.echo(f"skipped {len(skipped)} {what} (listed in manifest.json):", err=True)
    for item in skipped[:20]:
        typer.echo(f"  {name(item)}: {item['reason']}", err=True)
    if len(skipped) > 20:
        typer.echo(f"  ... and {len(skipped) - 20} more", err=True)


def _workers_option() -> Any:
    return typer.Option(
        min(2, os.cpu_count() or 1), "--workers", min=1, help="Worker processes (does not change the output)."
    )


def _size_option() -> Any:
    return typer.Option(
        None, "--size", help=f"Image WIDTHxHEIGHT in px (default {DEFAULT_SIZE}; ECGInstruct: 2200x1700)."
    )


def _dpi_option() -> Any:
    return typer.Option(
        None, "--dpi", min=1, help="Draw the letter page at this DPI instead of --size (ECGInstruct: 200)."
    )


def _augment_option() -> Any:
    return typer.Option(True, "--augment/--no-augment", help="Paper-image augmentations on ~half.")


@app.command()
def synth(
    out: Path = typer.Option(
        ...,
        "--out",
        help="Output folder: created, or resumed if it holds a partial build with the same settings; a folder "
        "holding other files, or a corpus of other settings, is refused.",
    ),
    train: int = typer.Option(2000, "--train", min=0, help="Training records (train.json)."),
    bench: int = typer.Option(100, "--bench", min=0, help="Records per ECGBench subset (bench/<subset>.json)."),
    val: int = typer.Option(
        0,
        "--val",
        min=0,
        help="Records per validation subset (val/<subset>.json): the benchmark's format, drawn from the training "
        "distribution, disjoint from train and bench. Choose settings on it, report on bench/.",
    ),
    bench_proportions: str = typer.Option(
        "equal",
        "--bench-proportions",
        help="'equal' (--bench records per subset) or 'ecgbench' (--bench PTB-XL records, the other subsets in "
        "ECGBench's proportions).",
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Run seed (>= 0); the same arguments give the same bytes."),
    generator: int = typer.Option(
        2,
        "--generator",
        min=1,
        max=2,
        help="Synthetic-ECG generator: 2 (default: closer to real ECGs, docs/signals.md 2.1) or 1 (frozen: the "
        "corpora of earlier releases and of the v1 teacher rebuild identically). Recorded in manifest.json.",
    ),
    workers: int = _workers_option(),
    size: str | None = _size_option(),
    dpi: int | None = _dpi_option(),
    augment: bool = _augment_option(),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Build a synthetic ECGInstruct training set and the six ECGBench-style test subsets.

    Refused before any work: a folder holding files no build writes, a corpus made with other settings (or whose
    settings are unknown), counts beyond 10 million records, and an output the disk's free space cannot hold. A file
    that cannot be written stops the build with one line naming it (exit 1); rerun the command once it is fixed.
    """
    from evl_ecg.data.corpus import CorpusError, build_corpus

    wh, dpi = _size_or_dpi(size, dpi, str(out))
    if wh is None:
        # The corpus takes a pixel size: the letter page at ``dpi`` (2200 x 1700 at 200 DPI), which the renderer
        # fits at ``dpi / 25.4`` px/mm (the size is what the manifest records).
        from evl_ecg.ecg.render import RenderSpec, geometry

        try:
            page = geometry(RenderSpec.at_dpi(dpi))
        except ValueError as exc:  # a page too large (or too small) at this DPI
            _fail(f"{out}: --dpi {dpi}: {str(exc).splitlines()[0]}")
        wh, dpi = (page.width, page.height), None
    try:
        result = build_corpus(
            out, n_train=train, n_bench=bench, seed=seed, workers=workers, size=wh, dpi=dpi, augment=augment,
            progress=progress, n_val=val, bench_proportions=bench_proportions, generator=generator,
        )  # fmt: skip
    except (CorpusError, ValueError, OSError) as exc:
        _fail(str(exc).splitlines()[0])
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    typer.echo(f"wrote {out}: {counts}")
    typer.echo(
        f"images rendered {result.rendered}, kept {result.reused}, records resumed {result.resumed}; "
        f"{result.seconds:.1f} s with {workers} worker(s)"
    )
    if result.skipped:
        _echo_skipped(result.skipped, "item(s)", lambda item: item["id"])
        empty = [s for s, n in result.manifest["requested"].items() if n and not result.counts[s]]
        if empty:
            _fail(f"{out}: every item of {', '.join(empty)} was skipped")


@app.command()
def build(
    source: Path = typer.Option(
        ...,
        "--source",
        help="The database's folder as published: PTB-XL (ptbxl_database.csv, scp_statements.csv, records500/ or "
        "records100/), a PhysioNet/CinC Challenge 2020/2021 folder (.hea/.mat records anywhere below it) or "
        "CODE-15% (exams.csv, exams_part*.hdf5). Only read.",
    ),
    kind: str = typer.Option(..., "--kind", help="The database: ptbxl, challenge or code15."),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Output folder (the layout of `data synth`): created, or resumed if it holds a build with the same "
        "settings; a folder holding other files, a build of other settings or a folder inside --source is refused.",
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="Only the first N records of the database (by id; the Challenge by path)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seeds the wording and the augmentations (same bytes again)."),
    workers: int = _workers_option(),
    size: str | None = _size_option(),
    dpi: int | None = _dpi_option(),
    augment: bool = _augment_option(),
    layout: str = typer.Option(
        "3x4",
        "--layout",
        help="3x4 (default), 6x2 or 12x1. The page shows the first 10 s: a 7 s CODE-15% exam leaves 3x4's V4-V6 "
        "column blank, which 6x2 avoids.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Build a corpus from a local public ECG database: its records rendered as images, its labels as the answers of
    the generator's questions; train.json, bench/<subset>.json (the test split) and val/<subset>.json (validation).

    The splits are PTB-XL's strat_fold (1-8 train, 9 validation, 10 test) or, where the database has none, a hash of
    the patient (CODE-15%) or record (Challenge) into ten folds, 8 for training; the manifest records the rule, every
    record's source and labels, and each skipped record with its reason. A rerun resumes: finished records are not
    read again (docs/data.md "Real databases").
    """
    from evl_ecg.data.build import BuildError, build_from_database

    wh, dpi = _size_or_dpi(size, dpi, str(out))
    if wh is None:  # the letter page at --dpi, recorded as its pixel size (as `data synth` does)
        from evl_ecg.ecg.render import RenderSpec, geometry

        try:
            page = geometry(RenderSpec.at_dpi(dpi))
        except ValueError as exc:
            _fail(f"{out}: --dpi {dpi}: {str(exc).splitlines()[0]}")
        wh, dpi = (page.width, page.height), None
    try:
        result = build_from_database(
            source, kind, out, limit=limit, seed=seed, size=wh, dpi=dpi, augment=augment, workers=workers,
            progress=progress, layout=layout,
        )  # fmt: skip
    except (BuildError, ValueError, OSError) as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    manifest = result.manifest
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    rate = f" ({manifest['settings']['rate']} Hz records)" if manifest["settings"].get("rate") else ""
    typer.echo(f"wrote {out} from {kind} {source}{rate}: {counts}")
    typer.echo(f"split: {manifest['split_rule']}")
    typer.echo(
        f"records listed {manifest['listed']}, built {sum(result.counts.values())}, skipped {len(result.skipped)}; "
        f"images rendered {result.rendered}, kept {result.reused}; records resumed {result.resumed}; "
        f"{result.seconds:.1f} s with {workers} worker(s)"
    )
    if result.absent:
        shown = ", ".join(f"{name} ({n} exams)" for name, n in list(result.absent.items())[:5])
        more = f" and {len(result.absent) - 5} more" if len(result.absent) > 5 else ""
        typer.echo(f"not in --source (named by exams.csv, not read): {shown}{more}", err=True)
    unmapped = manifest.get("unmapped_codes") or {}
    if unmapped.get("records"):
        codes = list(unmapped["codes"].items())
        shown = ", ".join(f"{code} (x{n})" for code, n in codes[:10])
        more = f" and {len(codes) - 10} more" if len(codes) > 10 else ""
        typer.echo(
            f"{unmapped['records']} record(s) carry codes outside the mapping: {shown}{more} (each record's "
            "provenance lists them as unmapped in manifest.json)",
            err=True,
        )
    if result.skipped:
        _echo_skipped(result.skipped, "record(s)", lambda item: item["id"] or item["source"])
    if not sum(result.counts.values()):
        _fail(f"{out}: every record was skipped; nothing to train or test on")


@app.command()
def render(
    record: Path = typer.Argument(..., help=f"An ECG: {formats_help(signals=True)}."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    layout: str = typer.Option("3x4", "--layout", help="3x4 (ECG-Image-Kit default), 6x2 or 12x1."),
    index: int | None = typer.Option(None, "--index", min=0, help="Exam index inside an HDF5 file."),
    size: str | None = typer.Option(None, "--size", help=f"Image WIDTHxHEIGHT in px (default {DEFAULT_SIZE})."),
    dpi: int | None = typer.Option(None, "--dpi", min=1, help="Draw the letter page at this DPI instead of --size."),
    start: float = typer.Option(
        0.0, "--start", min=0.0, help="First second of the record drawn; the page shows 10 s from it."
    ),
    gain: float = typer.Option(
        10.0, "--gain", min=0.1, help="Vertical gain in mm/mV; 5 = half gain, for tall QRS (e.g. --layout 12x1)."
    ),
) -> None:
    """Render one ECG record as a 12-lead paper image (10 s from --start; the window drawn is noted on stderr)."""
    from evl_ecg.data.records import write_png
    from evl_ecg.ecg.render import RenderSpec, geometry
    from evl_ecg.ecg.render import render as render_ecg

    if layout not in {"3x4", "6x2", "12x1"}:
        _fail(f"{record}: unknown layout {layout!r}; use 3x4, 6x2 or 12x1")
    wh, dpi = _size_or_dpi(size, dpi, str(record))
    ecg = _read(record, index)
    try:
        spec = RenderSpec(layout=layout, size=wh, dpi=dpi, gain_mm_mv=gain)
        t0, t1 = geometry(spec, ecg, start=start).window
        image = render_ecg(ecg, spec, start=start)
    except (ValueError, OSError) as exc:
        _fail(f"{record}: {str(exc).splitlines()[0]}")
    try:
        write_png(out, image)
    except OSError as exc:  # read-only folder, a file where a folder should be, full disk
        _fail(f"{out}: cannot write ({exc.strerror or type(exc).__name__})")
    more = "; --start SECONDS draws another window" if t1 - t0 < ecg.duration else ""
    typer.echo(f"{record}: window: [{t0:g}, {t1:g}] s of {ecg.duration:g} s{more}", err=True)
    typer.echo(f"wrote {out} ({image.size[0]}x{image.size[1]} px, layout {layout})")


def describe(ecg: Any, path: Path, index: int | None, *, start: float = 0.0) -> dict[str, Any]:
    """The JSON ``inspect`` prints: leads, fs, duration, the window ``render`` draws from ``start``
    (``[start, end]`` s of ``duration_s``), labels per vocabulary, findings, meta."""
    from evl_ecg.ecg.labels import FINDINGS, VOCABULARIES
    from evl_ecg.ecg.render import RenderSpec, geometry

    t0, t1 = geometry(RenderSpec(), ecg, start=start).window

    labels = {v: list(ecg.labels_in(v)) for v in VOCABULARIES}
    labels.update({k: list(v) for k, v in ecg.labels.items() if k not in labels})
    return {
        "file": str(path),
        "index": index,
        "record_id": ecg.record_id,
        "leads": list(ecg.leads),
        "fs": float(ecg.fs),
        "n_samples": int(ecg.signal.shape[1]),
        "duration_s": round(float(ecg.duration), 6),
        "window_s": [round(float(t0), 6), round(float(t1), 6)],
        "findings": {code: FINDINGS[code].name for code in sorted(ecg.findings) if code in FINDINGS},
        "labels": labels,
        "meta": _jsonable(ecg.meta),
    }


@app.command()
def inspect(
    record: Path = typer.Argument(..., help=f"An ECG: {formats_help(signals=True)}."),
    index: int | None = typer.Option(None, "--index", min=0, help="Exam index inside an HDF5 file."),
    start: float = typer.Option(0.0, "--start", min=0.0, help="Report the window `render --start` would draw."),
) -> None:
    """Print a record's leads, sampling rate, duration, the window `render` draws (window_s: its start and end in s,
    of duration_s), labels in each vocabulary and findings as JSON."""
    ecg = _read(record, index)
    try:
        info = describe(ecg, record, index, start=start)
    except ValueError as exc:
        _fail(f"{record}: {str(exc).splitlines()[0]}")
    typer.echo(json.dumps(info, indent=2))


@app.command()
def budget(
    data: Path = typer.Option(..., "--data", help="Training records (ECGInstruct JSON, e.g. a corpus' train.json)."),
    labels: str = typer.Option(..., "--labels", help="Label budget: a share ('10%', '0.1'), a count ('200') or 'all'."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seeds the draw of the labelled records."),
    out: Path = typer.Option(..., "--out", help="Folder for labelled.json, pool.json and budget.json."),
    answers: Path | None = typer.Option(
        None,
        "--answers",
        help="A model's answers to the pool questions (`evl-ecg eval answers`): also write train.json, the labelled "
        "records then the pool with those answers as targets.",
    ),
) -> None:
    """Split training records under a label budget: the labelled records keep their answers, the others (the pool)
    keep their image and a label-set question only. Budgets nest under one seed (5 % within 10 % within 25 %), and
    each task keeps its share. Prints budget.json."""
    from evl_ecg.data.budget import (
        LABELLED_FILE,
        POOL_FILE,
        BudgetError,
        compose,
        load_answers,
        load_pool,
        write_split,
    )
    from evl_ecg.data.records import RecordError, load_records, save_records

    try:
        info = write_split(data, out, labels, seed)
        if answers is not None:
            records, empty = compose(
                load_records(out / LABELLED_FILE), load_pool(out / POOL_FILE), load_answers(answers)
            )
            if empty:
                typer.echo(f"warning: {len(empty)} pool record(s) have an empty answer and are left out", err=True)
            save_records(out / "train.json", records)
            info = {**info, "answers": str(answers), "train": len(records), "empty_answers": len(empty)}
    except (BudgetError, RecordError, FileNotFoundError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"--out {out}: cannot write there ({exc.strerror or type(exc).__name__})")
    typer.echo(json.dumps(info, indent=2))
