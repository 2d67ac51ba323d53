"""``evl-ecg predict``, ``evl-ecg export`` and ``evl-ecg serve``: thin layers over :mod:`evl_ecg.infer`.

Errors are one line on stderr (``error: <file>: <what is wrong>``) with exit status 1; every output names the model
card and says that the model is a research artefact, not a medical device.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from evl_ecg.console import fail as _fail
from evl_ecg.ecg.readers import formats_help
from evl_ecg.infer.inputs import IMAGE_FORMAT  # noqa: F401  (registers the image format: the help lists it)

__all__ = ["embed", "export", "predict", "serve"]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _load_interpreter(model: Path, render_spec: str | None) -> Any:
    from evl_ecg.infer.interpreter import Interpreter
    from evl_ecg.models.checkpoints import ModelLoadError

    try:
        return Interpreter.from_pretrained(model, render_spec=render_spec)
    except (FileNotFoundError, ModelLoadError, ValueError, OSError) as exc:
        _fail(f"--model {model}: {_one_line(exc)}" if str(model) not in str(exc) else _one_line(exc))


def predict(
    inputs: list[str] = typer.Argument(..., help=f"ECGs: {formats_help()}; or folders of them."),
    model: Path = typer.Option(..., "--model", help="Model folder (a trained or exported evl-ecg checkpoint)."),
    question: str = typer.Option("ptbxl", "--question", help="ptbxl, cpsc, code15 or report (a free interpretation)."),
    out: Path | None = typer.Option(
        None, "--out", help="JSONL output (resumable); several inputs without it need --json (lines on stdout)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print JSON instead of text; several inputs: one JSON line per ECG on stdout."
    ),
    render_spec: str | None = typer.Option(
        None, "--render-spec", help="Override the card's render settings: 'layout=3x4,size=512x384', 'dpi=200' or JSON."
    ),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="ECGs per generation batch."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1, help="Default: the question's."),
    probabilities: bool = typer.Option(True, "--probabilities/--no-probabilities", help="Label likelihoods."),
    save_image: Path | None = typer.Option(None, "--save-image", help="Write the page the model read (one input)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar for several inputs."),
    fresh: bool = typer.Option(
        False,
        "--fresh",
        help="Start --out again (its rows are removed; default: resume it if it was written with the same model and "
        "settings, refuse it otherwise).",
    ),
) -> None:
    """Read ECGs with a model and print the answer, its labels and their probabilities.

    --out FILE.jsonl resumes: a rerun writes only the inputs not in it yet. The resume is keyed on the model's
    fingerprint and every setting that changes an answer (--max-new-tokens, --batch-size, --render-spec,
    --probabilities), recorded in FILE.jsonl.resume-key.json; a rerun with another value is refused, or starts again
    with --fresh.
    """
    from evl_ecg.infer.inputs import expand_inputs, is_input_error, read_input
    from evl_ecg.infer.interpreter import DISCLAIMER
    from evl_ecg.infer.questions import QUESTIONS

    if question not in QUESTIONS:
        _fail(f"--question: unknown {question!r}; expected one of {', '.join(QUESTIONS)}")
    specs, notes = expand_inputs(inputs)
    for note in notes:
        typer.echo(f"warning: {note}", err=True)
    if not specs:
        _fail(f"{', '.join(inputs)}: no ECG file found (expected {formats_help()})")
    if len(specs) > 1 and out is None and not as_json:
        _fail(
            f"{len(specs)} inputs: give --out FILE.jsonl (one JSON line per ECG, resumable) or --json (one JSON line "
            "per ECG on standard output)"
        )
    if save_image is not None and len(specs) > 1:
        _fail("--save-image takes one input")
    interp = _load_interpreter(model, render_spec)
    if out is None and len(specs) > 1:  # --json: one line per ECG on stdout, as command-line tools do
        model_id = f"{interp.model_dir.resolve()}@{interp.dtype}"
        keys = [f"{spec}::{question}" for spec in specs]
        failed = 0
        for key, pred in _predictions(interp, list(zip(specs, keys, strict=True)), question, batch_size,
                                      max_new_tokens, probabilities, progress=False):  # fmt: skip
            if pred is None:
                failed += 1
                continue
            row = {"question_id": key, "model_id": model_id, **pred.to_dict()}
            typer.echo(json.dumps(row, ensure_ascii=False))
        typer.echo(f"{len(specs) - failed} of {len(specs)} ECGs read. {DISCLAIMER}", err=True)
        if failed:
            raise typer.Exit(1)
        return
    if out is None:
        try:
            item = read_input(specs[0])
            pred = interp.predict(item, question, max_new_tokens=max_new_tokens, probabilities=probabilities)
        except Exception as exc:
            if is_input_error(exc):
                _fail(_one_line(exc))
            raise
        if save_image is not None:
            pred.image.save(save_image)
        typer.echo(json.dumps(pred.to_dict(), indent=1, ensure_ascii=False) if as_json else pred.text())
        return
    summary = _predict_many(interp, specs, question, out, batch_size, max_new_tokens, probabilities, progress, fresh)
    summary.update(model_card=interp.card.path, disclaimer=DISCLAIMER)
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
    else:
        typer.echo(
            f"{out}: {summary['written']} written, {summary['resumed']} already there, {summary['failed']} failed "
            f"({summary['inputs']} inputs, question {question})"
        )
        typer.echo(f"model: {interp.model_dir} ({interp.dtype}); model card: {interp.card.path}")
        typer.echo(DISCLAIMER)
    if summary["failed"]:
        raise typer.Exit(1)


def _predictions(
    interp: Any,
    todo: list[tuple[str, str]],
    question: str,
    batch_size: int,
    max_new_tokens: int | None,
    probabilities: bool,
    progress: bool,
    initial: int = 0,
    total: int | None = None,
) -> Any:
    """``(key, prediction)`` for each ``(input, key)`` of ``todo`` in batches, in order; ``(key, None)`` for an input
    that cannot be read (its one-line error on stderr)."""
    from tqdm.auto import tqdm

    from evl_ecg.infer.inputs import is_input_error, read_input

    bar = tqdm(total=total or len(todo), initial=initial, disable=not progress, unit="ecg", desc="predict")
    try:
        for start in range(0, len(todo), batch_size):
            items, good = [], []
            for spec, key in todo[start : start + batch_size]:
                try:
                    items.append(read_input(spec))
                    good.append(key)
                except Exception as exc:
                    if not is_input_error(exc):
                        raise
                    typer.echo(f"error: {_one_line(exc)}", err=True)
                    bar.update(1)
                    yield key, None
            if not items:
                continue
            preds = interp.predict_batch(items, question, max_new_tokens=max_new_tokens, probabilities=probabilities)
            yield from zip(good, preds, strict=True)
            bar.update(len(items))
    finally:
        bar.close()


def _predict_many(
    interp: Any,
    specs: list[str],
    question: str,
    out: Path,
    batch_size: int,
    max_new_tokens: int | None,
    probabilities: bool,
    progress: bool,
    fresh: bool = False,
) -> dict[str, Any]:
    """Batches of inputs into a resumable JSONL (keyed on ``input::question``; rows of another model, or of other
    settings (:func:`predict_key`), are refused)."""
    from evl_ecg.eval.generate import read_done

    model_id = f"{interp.model_dir.resolve()}@{interp.dtype}"
    if out.is_dir():
        _fail(f"--out {out}: is a folder; give a file (FILE.jsonl, one JSON line per ECG)")
    try:
        key = predict_key(interp, out, batch_size, max_new_tokens, probabilities)
        key.check(
            has_output=out.is_file() and out.stat().st_size > 0, fresh=fresh, clear=lambda: out.unlink(missing_ok=True)
        )
        done = read_done(out, model_id)
        key.write()
    except (ValueError, OSError) as exc:
        _fail(_one_line(exc))
    keys = [f"{spec}::{question}" for spec in specs]
    todo = [(s, k) for s, k in zip(specs, keys, strict=True) if k not in done]
    failed = written = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as fh:
        rows = _predictions(interp, todo, question, batch_size, max_new_tokens, probabilities, progress,
                            initial=len(specs) - len(todo), total=len(specs))  # fmt: skip
        for key, pred in rows:
            if pred is None:
                failed += 1
                continue
            row = {"question_id": key, "model_id": model_id, **pred.to_dict()}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            written += 1
    return {
        "out": str(out),
        "inputs": len(specs),
        "written": written,
        "resumed": len(specs) - len(todo),
        "failed": failed,
        "model": str(interp.model_dir),
    }


def predict_key(interp: Any, out: Path, batch_size: int, max_new_tokens: int | None, probabilities: bool) -> Any:
    """The :class:`~evl_ecg.resume.ResumeKey` of ``predict --out``: the model's fingerprint and dtype, the render
    settings signals are drawn with, the generation length, the batch size (left padding changes a batch's numerics)
    and whether probabilities are computed. The question is not: it is part of each row's key."""
    import dataclasses

    from evl_ecg.models.fingerprint import model_fingerprint
    from evl_ecg.resume import ResumeKey

    settings = {
        "model": model_fingerprint(interp.model_dir)["digest"][:16],
        "dtype": interp.dtype,
        "render": dataclasses.asdict(interp.render_spec),  # every setting the pages are drawn with
        "max_new_tokens": max_new_tokens if max_new_tokens is not None else "the question's",
        "batch_size": batch_size,
        "probabilities": probabilities,
        "decoding": "greedy",
    }
    return ResumeKey(out, "predict", settings, info={"model_dir": str(interp.model_dir)}, folder=False)


def export(
    model: Path = typer.Option(..., "--model", help="Model folder to export (read only)."),
    out: Path = typer.Option(..., "--out", help="New folder for the exported model."),
    dtype: str = typer.Option("int8", "--dtype", help="bf16, int8 (language-model linears, torchao) or fp32."),
    bench: Path | None = typer.Option(
        None, "--bench", help="ECGBench-style folder with ptb-test.json (default: the model's training benchmark)."
    ),
    measure: bool = typer.Option(True, "--measure/--no-measure", help="Measure the strict PTB-XL AUC after export."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier export in --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Export a model in bf16 or with int8 language-model weights; the card records the dtype and the AUC after it."""
    from evl_ecg.infer.export import ExportError, MissingExtraError, export_model
    from evl_ecg.infer.interpreter import DISCLAIMER
    from evl_ecg.models.checkpoints import ModelLoadError

    try:
        result = export_model(model, out, dtype, bench=bench, measure=measure, overwrite=overwrite)
    except (ExportError, MissingExtraError, ModelLoadError, FileNotFoundError) as exc:
        _fail(_one_line(exc))
    card = os.path.join(result.out_dir, "README.md")
    if as_json:
        typer.echo(json.dumps({**result.to_dict(), "model_card": card, "disclaimer": DISCLAIMER}, indent=1))
        return
    auc = (
        f"strict PTB-XL AUC {result.strict_ptb_auc} after export, {result.source_strict_ptb_auc} before "
        f"({result.n_records} records of {result.bench})"
        if result.strict_ptb_auc is not None
        else f"AUC {result.note}"
    )
    typer.echo(
        f"{result.out_dir}: {result.dtype} export of {result.source} ({result.library}; "
        f"{result.quantised_modules} linears quantised); weights {result.size_bytes:,} bytes "
        f"(source {result.source_size_bytes:,}); {auc}"
    )
    typer.echo(f"model card: {card}")
    typer.echo(DISCLAIMER)


def serve(
    model: Path = typer.Option(..., "--model", help="Model folder."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (default: this machine only)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.01, help="Largest request body accepted."),
    render_spec: str | None = typer.Option(None, "--render-spec", help="Override the card's render settings."),
) -> None:
    """Serve a local page and HTTP API (POST /predict, GET /health) for one model."""
    from evl_ecg.infer.export import MissingExtraError
    from evl_ecg.infer.serve import serve as run_server
    from evl_ecg.models.checkpoints import ModelLoadError

    try:
        run_server(
            str(model),
            host=host,
            port=port,
            max_upload_bytes=int(max_upload_mb * 1024 * 1024),
            render_spec=render_spec,
            echo=typer.echo,
        )
    except (MissingExtraError, FileNotFoundError, ModelLoadError, ValueError) as exc:
        _fail(_one_line(exc))


def embed(
    model: Path = typer.Option(..., "--model", help="A student folder with its embedding head (matryoshka / mic)."),
    data: Path = typer.Option(..., "--data", help="Records to embed (ECGInstruct / ECGBench JSON or JSONL)."),
    dims: str = typer.Option(..., "--dims", help="Comma-separated prefix lengths, e.g. 16,32,64."),
    out: Path = typer.Option(..., "--out", help="The embeddings file (.safetensors: one d<N> tensor per length)."),
    image_root: Path | None = typer.Option(None, "--image-root", help="Default: images/ beside --data."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Records per forward pass."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    fresh: bool = typer.Option(
        False, "--fresh", help="Replace an embeddings file --out holds that was written with other settings."
    ),
) -> None:
    """Elastic embeddings of every record: the student's pooled states through its head, cut to each length.

    The file records the model's fingerprint, the records file's content, --dims and --batch-size; an existing --out
    written with other values is refused (or replaced with --fresh), and a file that is not an embeddings file is
    never overwritten.
    """
    from evl_ecg.data.records import RecordError, load_records, open_image
    from evl_ecg.infer.embed import check_existing, embed_records, embeddings_key, write_embeddings
    from evl_ecg.infer.interpreter import DISCLAIMER
    from evl_ecg.models.checkpoints import ModelLoadError

    root = image_root
    if root is None:
        root = data.parent / "images" if (data.parent / "images").is_dir() else data.parent
    try:
        records = load_records(data)
        key = embeddings_key(model, data, dims, batch_size, out)
        check_existing(key, fresh=fresh)  # before the model is loaded
        result = embed_records(
            model, records, lambda r: open_image(r, root), dims, batch_size=batch_size, progress=progress
        )
        if not result.ids:
            _fail(f"--data {data}: no record could be embedded ({len(result.failed)} failed)")
        path = write_embeddings(result, out, key)
    except (FileNotFoundError, ModelLoadError, RecordError, ValueError, OSError) as exc:
        _fail(_one_line(exc))
    for rid, reason in result.failed:
        typer.echo(f"warning: record {rid!r} not embedded: {reason}", err=True)
    shapes = ", ".join(f"d{d}: {t.shape[0]} x {t.shape[1]}" for d, t in result.by_dim.items())
    typer.echo(f"{path}: {shapes} (L2-normalised; ids in the file's metadata)")
    typer.echo(DISCLAIMER)
    if result.failed:
        raise typer.Exit(1)
