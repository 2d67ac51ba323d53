"""``evl-ecg eval score`` (score ECGBench predictions) and ``evl-ecg report`` (Table-1 style result tables).

``score`` prints one JSON document on stdout (also written to ``--out``); warnings and errors go to stderr as
``warning: ...`` / ``error: ...`` lines. The exit status is 1 when a file could not be scored (its error is in the
document's ``errors`` too), 0 otherwise; bad rows inside a scored file are counted in its ``input`` section.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from evl_ecg.console import fail as _fail
from evl_ecg.eval.parsing import ECGQA_RULES
from evl_ecg.eval.predictions import (
    EvalInputError,
)
from evl_ecg.eval.scores import score_paths
from evl_ecg.eval.scoring import SCORERS, ScoreOptions

app = typer.Typer(
    name="eval",
    help="Score predictions on ECGBench; generate and evaluate models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _eval() -> None:
    """Score predictions on ECGBench; generate and evaluate models."""


@app.command()
def score(
    bench: Path = typer.Option(..., "--bench", help="Gold ECGBench file (<subset>.json) or a folder of them."),
    pred: Path = typer.Option(..., "--pred", help="Prediction JSONL file, or a folder searched for *.jsonl."),
    scorer: str = typer.Option("both", "--scorer", help="pulse | strict | both."),
    subset: str | None = typer.Option(None, "--subset", help="Subset name when the paths do not name it."),
    official_counts: bool = typer.Option(
        False, "--official-counts", help="Refuse MCQ files without PULSE's line counts (1611 / 2026 / 200)."
    ),
    ecgqa_rule: str = typer.Option("pulse", "--ecgqa-rule", help="pulse | gem (ECG-QA rule of the pulse scorer)."),
    out: Path | None = typer.Option(None, "--out", help="Also write the JSON document here."),
    method: str | None = typer.Option(None, "--method", help="Method name recorded for `evl-ecg report`."),
    seed: int | None = typer.Option(None, "--seed", help="Seed recorded for `evl-ecg report`."),
) -> None:
    """Score predictions with the pulse and/or strict scorer and print the metrics as JSON."""
    if scorer not in (*SCORERS, "both"):
        raise typer.BadParameter(f"--scorer must be pulse, strict or both, got {scorer!r}")
    if ecgqa_rule not in ECGQA_RULES:
        raise typer.BadParameter(f"--ecgqa-rule must be pulse or gem, got {ecgqa_rule!r}")
    try:
        doc = score_paths(
            bench,
            pred,
            scorer=scorer,
            subset=subset,
            options=ScoreOptions(official_counts=official_counts, ecgqa_rule=ecgqa_rule),
            method=method,
            seed=seed,
        )
    except EvalInputError as exc:
        _fail(str(exc))
        return
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    typer.echo(text)
    for result in doc["results"]:
        for w in result["warnings"]:
            typer.echo(f"warning: [{result['subset']} {result['scorer']}] {w}", err=True)
    for u in doc["unpaired"]:
        typer.echo(f"warning: {u}", err=True)
    for e in doc["errors"]:
        typer.echo(f"error: {e}", err=True)
    if doc["errors"]:
        raise typer.Exit(1)


def report(
    scores: list[Path] = typer.Argument(..., help="Score JSON files written by `evl-ecg eval score --out`."),
    out: Path = typer.Option(..., "--out", help="Folder for results.md and results.json."),
    reference_rows: bool = typer.Option(
        True, "--reference-rows/--no-reference-rows", help="Include the paper's published rows."
    ),
) -> None:
    """Write Table-1 style result tables (Markdown and JSON) from score files: mean ± std over seeds per method."""
    from evl_ecg.eval.tables import write_report

    try:
        md, js = write_report(scores, out, with_reference=reference_rows)
    except EvalInputError as exc:
        _fail(str(exc))
        return
    typer.echo(str(md))
    typer.echo(str(js))


@app.command("run")
def run_model(
    model: Path = typer.Option(..., "--model", help="Local model checkpoint folder (student or teacher)."),
    bench: Path = typer.Option(..., "--bench", help="Folder of <subset>.json bench files (images in bench/images)."),
    out: Path = typer.Option(..., "--out", help="Folder for predictions, likelihoods and scores.json."),
    scorer: str = typer.Option("both", "--scorer", help="pulse | strict | both."),
    max_new_tokens: int = typer.Option(1024, "--max-new-tokens", min=1, help="Greedy decoding length (PULSE: 1024)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Generation batch size."),
    likelihood: bool = typer.Option(True, "--likelihood/--no-likelihood", help="Label-probability AUC and ECE."),
    subset: list[str] | None = typer.Option(None, "--subset", help="Only these subsets (repeat)."),
    likelihood_normalization: str = typer.Option(
        "null",
        "--likelihood-normalization",
        help="null: each label against the null answer (default); softmax: over the candidate answers.",
    ),
    update_card: bool = typer.Option(
        False, "--update-card", help="Also add the scores to the model card in --model (default: --model is only read)."
    ),
    fresh: bool = typer.Option(
        False,
        "--fresh",
        help="Remove the evaluation --out holds and start again (default: resume it if it was written with the same "
        "model and settings, refuse it otherwise).",
    ),
) -> None:
    """Generate answers with a model on the benchmark (resumable), then score them with both scorers.

    Everything is written under --out; the model folder is only read, unless --update-card is given. A resume is
    keyed on the model's fingerprint and on every setting that changes an answer (--max-new-tokens, --batch-size,
    the bench files' content): an --out written otherwise is refused in one line, or started again with --fresh.
    Prints a JSON summary (in full); exits 1 with one line per problem when a bench file cannot be scored (also
    recorded in scores.json).
    """
    from evl_ecg.eval.likelihood import NORMALIZATIONS, likelihood_table
    from evl_ecg.eval.run import CardUpdateError, evaluate_model

    if scorer not in (*SCORERS, "both"):
        raise typer.BadParameter(f"--scorer must be pulse, strict or both, got {scorer!r}")
    if likelihood_normalization not in NORMALIZATIONS:
        raise typer.BadParameter(
            f"--likelihood-normalization must be {' or '.join(NORMALIZATIONS)}, got {likelihood_normalization!r}"
        )
    try:
        doc = evaluate_model(
            model,
            bench,
            out,
            scorer=scorer,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            subsets=subset or None,
            likelihood=likelihood,
            update_card=update_card,
            likelihood_normalization=likelihood_normalization,
            fresh=fresh,
        )
    except (EvalInputError, FileNotFoundError, ValueError, CardUpdateError) as exc:
        _fail(str(exc))
        return
    lik = doc.get("likelihood") or {}
    summary = {
        "scores": str(out / "scores.json"),
        "results": doc.get("results", []),
        "errors": doc.get("errors", []),
        "likelihood": {
            s: {k: v.get(k) for k in ("n", "auc", "ece", "normalization", "degenerate", "degenerate_reason")}
            for s, v in lik.items()
        },
    }
    typer.echo(json.dumps(summary, indent=2))  # whole: a cut JSON document is no document
    if lik:  # a degenerate subset was also logged as a warning by evaluate_model; the table marks its numbers
        typer.echo(likelihood_table(lik), err=True)
    for e in doc.get("errors", []):
        typer.echo(f"error: {e}", err=True)
    if doc.get("errors"):
        raise typer.Exit(1)


@app.command("robustness")
def robustness(
    model: list[Path] = typer.Option(..., "--model", help="Local model checkpoint folder (repeat for several)."),
    bench: Path = typer.Option(..., "--bench", help="Folder of <subset>.json bench files (a corpus's bench/)."),
    out: Path = typer.Option(..., "--out", help="Folder for the view pages, the answers and the report."),
    views: list[str] | None = typer.Option(
        None,
        "--views",
        help="view units: family names (signal, rendering, image), view names, or 'all' (every view on its own); "
        "comma-separated or repeated. Default: every family the bench allows (a bench of images: image only).",
    ),
    severities: str = typer.Option(
        "0,0.5,1", "--severities", help="comma-separated severities in [0, 1]; 0 (the clean page) is always in."
    ),
    records: int = typer.Option(
        500,
        "--records",
        min=1,
        help="the first N records of each subset, every condition on the same records (500: the default table of "
        "the shipped teacher and a tiny student in about 20 min on 2 cores).",
    ),
    subset: list[str] | None = typer.Option(
        None,
        "--subset",
        help="multi-label subsets to run (repeat; default ptb-test): ptb-test, code15-test, cpsc-test.",
    ),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Greedy decoding length."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Generation batch size."),
    likelihood: bool = typer.Option(
        True, "--likelihood/--no-likelihood", help="Also the label-likelihood macro AUC (about doubles the cost)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seeds the view drawn per record and the bootstrap."),
    n_boot: int = typer.Option(2000, "--n-boot", min=1, help="Bootstrap replicates of each change's interval."),
    fresh: bool = typer.Option(
        False, "--fresh", help="Remove what this command wrote in --out and start again (default: resume it)."
    ),
) -> None:
    """How much each view of an ECG costs each model: every view family (or --views) at each severity, on the same
    records, strict macro AUC (and label-likelihood AUC) against the clean page with a paired bootstrap interval for
    each change; a Markdown table and one figure in --out.

    Signal and rendering views need the records' signals: a synthetic corpus regenerates them from its manifest, a
    corpus built with `evl-ecg data build` reads its database files again; a bench of images alone gets image views
    only, and says so. Prints the estimated time before the work (measured on a first batch) and resumes per cell
    (model x view x severity) like `eval run`.
    """
    from evl_ecg.data.records import RecordError
    from evl_ecg.eval.robustness import evaluate_robustness

    try:
        doc = evaluate_robustness(
            model,
            bench,
            out,
            views=views or None,
            severities=[severities],
            records=records,
            subsets=subset or ("ptb-test",),
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            likelihood=likelihood,
            seed=seed,
            n_boot=n_boot,
            fresh=fresh,
            log=lambda line: typer.echo(line, err=True),
        )
    except (EvalInputError, FileNotFoundError, ValueError, RecordError) as exc:
        _fail(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return
    typer.echo(str(out / "robustness.md"))
    typer.echo(str(out / "robustness.png"))
    typer.echo(json.dumps(doc["this_run"]))


@app.command("answers")
def answers(
    model: Path = typer.Option(..., "--model", help="Local model checkpoint folder (the teacher, or a student)."),
    data: Path = typer.Option(..., "--data", help="Training records whose pool questions the model answers."),
    out: Path = typer.Option(..., "--out", help="Folder for answers-<model digest>.jsonl."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Greedy decoding length."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Generation batch size."),
    fresh: bool = typer.Option(False, "--fresh", help="Remove this model's earlier answers in --out and start again."),
    image_root: Path | None = typer.Option(
        None, "--image-root", help="Root of the records' image paths (default: images/ beside --data, or its folder)."
    ),
) -> None:
    """Answer the pool question of every training record once (greedy, the model's own template): one file serves
    every label budget and seed (`evl-ecg data budget --answers`). Resumable; keyed on the model's fingerprint, the
    training file and the settings. Prints the file's path."""
    from evl_ecg.data.records import RecordError
    from evl_ecg.eval.answers import answer_pool

    try:
        path = answer_pool(
            model,
            data,
            out,
            image_root=image_root,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            fresh=fresh,
        )
    except (RecordError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
        return
    typer.echo(str(path))
