"""The model card (``README.md``) of an exported checkpoint: what it is, how it was trained, its scores, its limits.

:func:`write_model_card` is called when a run exports its ``student/`` folder (training facts from the run's
``provenance.json``) and again after an evaluation (:func:`evl_ecg.eval.run.evaluate_model` through the demo and
``evl-ecg eval run``) to add the scores. The card is a Hugging Face model card (YAML front matter, Markdown body); the
training facts live in ``card.json`` beside it so that a later update keeps them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from evl_ecg.files import atomic_write_bytes
from evl_ecg.models.fingerprint import count_parameters

CARD_FILE = "README.md"
FACTS_FILE = "card.json"
MARKER = "<!-- evl-ecg model card -->"

#: what every model card, prediction, command output and page says (one sentence, one place)
DISCLAIMER = (
    "Research artefact, not a medical device: not validated clinically and not cleared or approved by any regulator; "
    "never use it to diagnose, treat or triage a patient or to support any clinical decision."
)
NOT_A_DEVICE = f"**{DISCLAIMER}**"


def render_settings(corpus_settings: Any) -> dict[str, Any] | None:
    """How the training images were drawn (``evl-ecg predict`` renders signals the same way, augmentation off), from
    a corpus manifest's ``settings``; ``None`` when they are not known."""
    if not isinstance(corpus_settings, dict) or not corpus_settings.get("size"):
        return None
    return {
        "layout": corpus_settings.get("layout", "3x4"),
        "size": list(corpus_settings["size"]),
        "dpi": corpus_settings.get("dpi"),
        "augment": False,
        "train_augmented": corpus_settings.get("augment"),
    }


def training_facts(provenance: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    """The card's training section from a run's ``provenance.json``."""
    cfg = provenance.get("config", {})
    config_json = model_dir / "config.json"
    model_config = json.loads(config_json.read_text()) if config_json.exists() else {}
    architectures = model_config.get("architectures") or []
    manifest = Path(cfg["train_file"]).parent / "manifest.json" if cfg.get("train_file") else None
    data_format = None
    render = None
    data_seed = None
    if manifest is not None and manifest.is_file():
        try:
            manifest_doc = json.loads(manifest.read_text())
            data_format = manifest_doc.get("format")
            render = render_settings(manifest_doc.get("settings"))
            data_seed = manifest_doc.get("seed")
        except (OSError, ValueError, AttributeError):
            data_format = None
    from evl_ecg.data.corpus import corpus_generator

    generator = corpus_generator(cfg.get("train_file"))  # None without a manifest; one without the field: 1
    return {
        "architecture": architectures[0] if architectures else None,
        "data_format": data_format,
        "generator": generator,
        "data_seed": data_seed,
        "render": render,
        "parameters": count_parameters(model_dir),
        "phase": provenance.get("phase", cfg.get("phase")),
        "objective": provenance.get("objective"),
        "method": cfg.get("method") if cfg.get("phase") == "kd" else None,
        "teacher": cfg.get("teacher") if cfg.get("phase") == "kd" else None,
        "initialised_from": cfg.get("student") or "random weights (tiny preset)",
        "train_file": cfg.get("train_file"),
        "train_records": provenance.get("records"),
        "data_manifest_sha256": provenance.get("data_manifest_sha256"),
        "max_steps": cfg.get("max_steps"),
        "num_train_epochs": cfg.get("num_train_epochs") if (cfg.get("max_steps") or -1) <= 0 else None,
        "batch_size": cfg.get("per_device_train_batch_size"),
        "gradient_accumulation_steps": cfg.get("gradient_accumulation_steps"),
        "learning_rate": cfg.get("learning_rate"),
        "seed": cfg.get("seed"),
        "label_budget": provenance.get("label_budget"),
        "vision_pretraining": (provenance.get("vision_pretraining") or {}).get("eval_macro_auc"),
        "git_commit": provenance.get("git_commit"),
        "packages": provenance.get("packages"),
    }


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "n/a"


def _scores_table(scores: dict[str, Any]) -> str:
    rows = ["| subset | scorer | metrics | scored / gold |", "|---|---|---|---|"]
    for result in scores.get("results", []):
        metrics = ", ".join(f"{k} {v}" for k, v in result.get("metrics", {}).items())
        rows.append(
            f"| {result.get('subset')} | {result.get('scorer')} | {metrics} | "
            f"{result.get('n_scored', '?')} / {result.get('n_gold', '?')} |"
        )
    likelihood = scores.get("likelihood") or {}
    if likelihood:
        rows += ["", "Label probabilities from the teacher-forced likelihood of each label's answer:", ""]
        rows += ["| subset | ROC-AUC | ECE |", "|---|---|---|"]
        for subset, doc in likelihood.items():
            auc, ece = doc.get("auc"), doc.get("ece")
            rows.append(f"| {subset} | {_fmt(auc)} | {_fmt(ece)} |")
    bench = scores.get("bench")
    return "\n".join(rows) + (f"\n\nBenchmark files: `{bench}`." if bench else "")


def render_card(name: str, facts: dict[str, Any], scores: dict[str, Any] | None) -> str:
    synthetic = "synthetic" in str(facts.get("data_format") or "") or "synthetic" in str(facts.get("train_file") or "")
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: image-text-to-text",
        "tags: [ecg, electrocardiogram, knowledge-distillation, evl-ecg, research-only]",
        "---",
        MARKER,
        f"# {name}",
        "",
        NOT_A_DEVICE,
        "",
        "## What it is",
        "",
        f"- Model class: `{facts.get('architecture')}` (plain transformers checkpoint, safetensors; load with "
        "`evl_ecg.models.load_adapter(path)` or the transformers class directly).",
        f"- Parameters: {facts['parameters']:,}" if facts.get("parameters") else "- Parameters: unknown",
        f"- Made by the `{facts.get('phase')}` phase of evl-ecg"
        + (f" with method `{facts['method']}` from teacher `{facts['teacher']}`" if facts.get("method") else "")
        + ".",
        f"- Objective: `{facts.get('objective')}`",
    ]
    render = facts.get("render")
    if isinstance(render, dict) and render.get("size"):
        size = "x".join(str(v) for v in render["size"])
        lines.append(
            f"- Training images: `{render.get('layout')}` pages of {size} px; `evl-ecg predict` renders signals the "
            "same way (settings in `card.json`, `facts.render`)."
        )
    export = facts.get("export")
    if isinstance(export, dict) and export.get("dtype"):
        auc = export.get("strict_ptb_auc")
        lines.append(
            f"- Exported as `{export['dtype']}` from `{export.get('source')}` by `evl-ecg export`"
            + (f"; strict PTB-XL AUC after export {auc} on `{export.get('bench')}`" if auc is not None else "")
            + "."
        )
    lines += [
        "",
        "## How it was trained",
        "",
        f"- Initialised from: {facts.get('initialised_from')}",
        f"- Training data: `{facts.get('train_file')}` ({facts.get('train_records')} conversations"
        + (f", synthetic-ECG generator {facts['generator']}" if facts.get("generator") is not None else "")
        + f"; data manifest sha256 `{facts.get('data_manifest_sha256')}`)",
        f"- Steps: {facts.get('max_steps')}; batch {facts.get('batch_size')} x accumulation "
        f"{facts.get('gradient_accumulation_steps')}; learning rate {facts.get('learning_rate')}; seed "
        f"{facts.get('seed')}",
    ]
    budget = facts.get("label_budget")
    if budget:
        lines.append(
            f"- Label budget: {budget.get('budget')} (seed {budget.get('seed')}): {budget.get('labelled')} labelled "
            f"records of {budget.get('records')}, {budget.get('pool')} in the pool without labels; trained on "
            f"`{budget.get('file')}`"
        )
    if facts.get("vision_pretraining") is not None:
        lines.append(
            f"- Vision tower pretrained on synthetic ECG findings first (held-out macro AUC "
            f"{facts['vision_pretraining']:.3f})"
        )
    lines += [f"- {note}" for note in facts.get("notes") or []]
    lines += [
        f"- Code: evl-ecg, git commit `{facts.get('git_commit')}`; the run folder's `provenance.json` has the resolved "
        "configuration and package versions.",
        "",
        "## Scores",
        "",
        _scores_table(scores) if scores else "Not evaluated yet: run `evl-ecg eval run --model THIS_DIR ...`.",
        "",
        "## Intended use and limitations",
        "",
        "- For research on distilling ECG vision-language models: reproducing and extending EVL-ECG "
        "(arXiv 2605.29977), comparing distillation methods, testing deployment pipelines.",
    ]
    if synthetic:
        lines.append(
            "- Trained and scored on **synthetic** ECGs (a dipole model with encoded criteria, rendered as images): "
            "its scores say how well it learned that toy task, nothing about real ECGs."
        )
    lines += [
        "- ECGBench-style scores measure agreement with benchmark labels under a text-matching scorer; they are not "
        "sensitivity or specificity on a clinical population.",
        "- Outputs can be wrong, incomplete or confidently stated; never act on them for a patient.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(
    model_dir: str | os.PathLike[str],
    *,
    provenance: dict[str, Any] | None = None,
    scores: dict[str, Any] | None = None,
    name: str | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write (or refresh) ``model_dir/README.md``.

    ``provenance``: a run's ``provenance.json`` content (stored as ``card.json``; a later call without it reuses the
    stored facts). ``scores``: an evaluation's ``scores.json`` content (kept in ``card.json`` too). ``notes``: lines
    added to "How it was trained" (how the checkpoint was chosen, how long it took, the command that made it); they
    replace earlier notes and are kept by a later call without them.
    """
    model_dir = Path(model_dir)
    facts_path = model_dir / FACTS_FILE
    stored = json.loads(facts_path.read_text()) if facts_path.exists() else {}
    facts = training_facts(provenance, model_dir) if provenance is not None else stored.get("facts", {})
    if notes is not None:
        facts["notes"] = list(notes)
    elif provenance is not None and stored.get("facts", {}).get("notes"):
        facts["notes"] = stored["facts"]["notes"]
    scores = scores if scores is not None else stored.get("scores")
    name = name or stored.get("name") or model_dir.parent.name or model_dir.name
    facts_doc = {"name": name, "facts": facts, "scores": scores}
    atomic_write_bytes(facts_path, json.dumps(facts_doc, indent=1, default=str).encode("utf-8"))
    path = model_dir / CARD_FILE
    atomic_write_bytes(path, render_card(name, facts, scores).encode("utf-8"))
    return path


def has_model_card(model_dir: str | os.PathLike[str]) -> bool:
    """Whether ``model_dir`` holds a card this module wrote (never overwrite someone else's README)."""
    path = Path(model_dir) / CARD_FILE
    return path.is_file() and MARKER in path.read_text(errors="replace")


__all__ = [
    "DISCLAIMER",
    "NOT_A_DEVICE",
    "has_model_card",
    "render_card",
    "render_settings",
    "training_facts",
    "write_model_card",
]
