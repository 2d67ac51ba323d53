"""Smaller and faster: a model folder exported in ``bf16``, or with ``int8`` weights in its language model's linears.

:func:`export_model` writes a checkpoint that the same loader (:func:`evl_ecg.models.load_adapter`), and so
``evl-ecg predict`` / ``serve`` / ``eval run``, reads again:

* ``fp32`` / ``bf16``: the weights cast, saved as safetensors.
* ``int8``: weight-only int8 quantisation (per output row, symmetric; activations stay in floating point) of every
  ``nn.Linear`` of the **language model** by torchao (``Int8WeightOnlyConfig``) through transformers' own
  ``TorchAoConfig``, so the quantisation is recorded in ``config.json`` and transformers restores it on load. The
  vision tower, the projector / merger, the embeddings and the output head stay in fp32 (a tied head shares the
  embedding matrix). torchao is the optional extra ``[edge]``.

The exported card (``card.json`` / ``README.md``) keeps the source's training facts and records ``facts.export``:
the dtype, the library, the source, the quantised modules, the size on disk and the strict PTB-XL AUC measured after
export (and the source's, on the same records) on the benchmark the model was trained with (``bench/`` beside the
card's training file) or the one given.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DTYPES",
    "ExportError",
    "ExportResult",
    "MissingExtraError",
    "export_model",
    "folder_bytes",
    "strict_ptb_auc",
]

DTYPES: tuple[str, ...] = ("fp32", "bf16", "int8")


class ExportError(ValueError):
    """An export that cannot be done (one line: the folder and the reason)."""


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message names the extra to install."""


@contextmanager
def _quiet_torchao():
    """torchao logs a warning per CUDA kernel library it cannot load on a CPU build; silence them while importing."""
    names = ("torchao", "torch.utils._pytree")
    levels = [logging.getLogger(n).level for n in names]
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in zip(names, levels, strict=True):
            logging.getLogger(n).setLevel(level)


def preimport_torchao_quietly() -> None:
    """transformers imports torchao (the ``[edge]`` extra) whenever it is installed, and torchao then logs a warning per
    CUDA kernel library it cannot load on a CPU build of torch (and torch one per enum it registers); import both first
    with those warnings silenced. Nothing happens when torchao is not installed. The commands do not call it (the
    ``evl-ecg`` process drops that noise: :mod:`evl_ecg.quiet`); a script that will quantise may."""
    import importlib.util

    if "torchao" in sys.modules or importlib.util.find_spec("torchao") is None:
        return
    try:
        import_torchao()
    except ImportError:
        pass


def import_torchao() -> Any:
    """``torchao`` (imported quietly), or :class:`MissingExtraError` naming the ``[edge]`` extra."""
    try:
        with _quiet_torchao():
            import torchao
            import torchao.quantization  # noqa: F401
            import transformers.quantizers.quantizer_torchao  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(f"int8 export needs torchao ({exc.name or exc}): pip install 'evl-ecg[edge]'") from None
    return torchao


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote."""

    out_dir: str
    source: str
    dtype: str
    library: str
    quantised_modules: int
    size_bytes: int
    source_size_bytes: int
    bench: str | None
    strict_ptb_auc: float | None
    source_strict_ptb_auc: float | None
    n_records: int | None
    note: str | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def folder_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of the weight files (``*.safetensors``, ``*.bin``) in a model folder."""
    root = Path(path)
    return sum(f.stat().st_size for f in root.iterdir() if f.suffix in {".safetensors", ".bin"} and f.is_file())


def _language_model_prefix(adapter: Any) -> str:
    lm = adapter.language_model
    for name, module in adapter.model.named_modules():
        if module is lm:
            return name + "."
    raise ExportError(f"{type(adapter.model).__name__}: cannot find the language model's modules")


def _linear_names(adapter: Any) -> tuple[list[str], list[str]]:
    """``(language-model linears, other linears)`` by module name."""
    from torch import nn

    prefix = _language_model_prefix(adapter)
    lm, other = [], []
    for name, module in adapter.model.named_modules():
        if isinstance(module, nn.Linear):
            (lm if name.startswith(prefix) else other).append(name)
    return lm, other


def _read_card(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "card.json"
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: the model card's facts are not readable JSON ({exc})") from None
    return doc if isinstance(doc, dict) else {}


def default_bench(card: dict[str, Any]) -> Path | None:
    """The benchmark the model was trained with: ``bench/ptb-test.json`` beside the card's training file."""
    train_file = (card.get("facts") or {}).get("train_file")
    if not isinstance(train_file, str):
        return None
    bench = Path(train_file).parent / "bench"
    return bench if (bench / "ptb-test.json").is_file() else None


def strict_ptb_auc(
    model: Any, bench: str | os.PathLike[str], *, max_new_tokens: int = 64, batch_size: int = 8, progress: bool = False
) -> tuple[float | None, int]:
    """``(strict-scorer AUC x 100 on ptb-test, records scored)`` of a model folder or adapter on ``bench``.

    Runs :func:`evl_ecg.eval.run.evaluate_model` (greedy generation, strict scorer, no likelihood) into a temporary
    folder; nothing is written elsewhere.
    """
    from evl_ecg.eval.run import evaluate_model

    with tempfile.TemporaryDirectory(prefix="evl-ecg-export-") as tmp:
        doc = evaluate_model(
            model,
            bench,
            tmp,
            scorer="strict",
            subsets=["ptb-test"],
            likelihood=False,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress,
            model_id="export-check",
        )
    for result in doc.get("results", []):
        if result.get("subset") == "ptb-test" and result.get("scorer") == "strict":
            return result["metrics"].get("AUC"), int(result.get("n_scored") or 0)
    return None, 0


def _load(source: Path, dtype: str, skip: list[str]) -> Any:
    import torch

    from evl_ecg.models import load_adapter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dtype == "fp32":
            return load_adapter(source, dtype=torch.float32)
        if dtype == "bf16":
            return load_adapter(source, dtype=torch.bfloat16)
        import_torchao()
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        config = TorchAoConfig(Int8WeightOnlyConfig(), modules_to_not_convert=skip)
        with _quiet_torchao():
            return load_adapter(source, dtype=torch.float32, quantization_config=config)


def export_model(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    dtype: str = "int8",
    *,
    bench: str | os.PathLike[str] | None = None,
    measure: bool = True,
    overwrite: bool = False,
    max_new_tokens: int = 64,
    progress: bool = False,
) -> ExportResult:
    """Export ``model_dir`` to ``out_dir`` in ``dtype`` (module docstring) and record it in the exported card.

    Args:
        model_dir: a local model folder (read only).
        out_dir: a new or empty folder (``overwrite`` replaces an earlier export).
        dtype: ``fp32``, ``bf16`` or ``int8``.
        bench: an ECGBench-style folder holding ``ptb-test.json`` (default: the one the model was trained with).
        measure: measure the strict PTB-XL AUC of the export and of the source on ``bench``.
        max_new_tokens: generation length of the measurement.
    """
    t0 = time.perf_counter()
    from evl_ecg.quiet import library_noise_quieted

    with library_noise_quieted():
        from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:  # torchao is imported for int8 only; transformers imports it on any load when it is installed: quietly
        with library_noise_quieted():
            return _export(model_dir, out_dir, dtype, bench, measure, overwrite, max_new_tokens, progress, t0)
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def _export(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    dtype: str,
    bench: str | os.PathLike[str] | None,
    measure: bool,
    overwrite: bool,
    max_new_tokens: int,
    progress: bool,
    t0: float,
) -> ExportResult:
    source, out = Path(model_dir), Path(out_dir)
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if not source.is_dir():
        raise ExportError(f"{source}: no such model folder")
    if out.resolve() == source.resolve():
        raise ExportError(f"{out}: the export must go to another folder than the model")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"{out}: exists and is not empty; choose a new folder or pass --overwrite")
        shutil.rmtree(out)
    from evl_ecg.infer.interpreter import ModelCard, resolve_render_spec, spec_dict
    from evl_ecg.models import load_adapter

    card = _read_card(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = load_adapter(source)
    lm, other = _linear_names(reference)
    family = reference.family
    del reference
    adapter = _load(source, dtype, other)
    out.mkdir(parents=True, exist_ok=True)
    adapter.save_pretrained(out)
    del adapter
    from evl_ecg.models.embedding_head import HEAD_CONFIG, HEAD_WEIGHTS

    for name in (HEAD_WEIGHTS, HEAD_CONFIG):  # the elastic-embedding head, when trained: kept, in float32
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    bench_dir = Path(bench) if bench is not None else default_bench(card)
    auc = source_auc = None
    n = None
    note = None
    if measure and bench_dir is not None:
        if not (bench_dir / "ptb-test.json").is_file():
            raise ExportError(f"{bench_dir}: no ptb-test.json; --bench must be an ECGBench-style folder")
        auc, n = strict_ptb_auc(out, bench_dir, max_new_tokens=max_new_tokens, progress=progress)
        source_auc, _ = strict_ptb_auc(source, bench_dir, max_new_tokens=max_new_tokens, progress=progress)
    elif measure:
        note = "not measured: the card names no training benchmark that exists here; pass --bench"
    elif not measure:
        note = "not measured (--no-measure)"
    spec, spec_source, _ = resolve_render_spec(ModelCard.read(source))
    facts = dict(card.get("facts") or {})
    facts.setdefault("architecture", json.loads((out / "config.json").read_text()).get("architectures", [None])[0])
    if not isinstance(facts.get("render"), dict):
        facts["render"] = {**spec_dict(spec), "source": spec_source}
    library = "torchao Int8WeightOnlyConfig via transformers TorchAoConfig" if dtype == "int8" else "torch"
    if dtype == "int8":
        torchao = import_torchao()
        library += f" (torchao {torchao.__version__})"
    export = {
        "dtype": dtype,
        "library": library,
        "source": str(source),
        "family": family,
        "quantised_modules": len(lm) if dtype == "int8" else 0,
        "kept_fp32": "vision tower, projector/merger, embeddings, output head" if dtype == "int8" else None,
        "size_bytes": folder_bytes(out),
        "source_size_bytes": folder_bytes(source),
        "bench": str(bench_dir) if bench_dir is not None else None,
        "strict_ptb_auc": auc,
        "source_strict_ptb_auc": source_auc,
        "n_records": n,
        "note": note,
    }
    facts["export"] = export
    name = f"{card.get('name') or source.name} ({dtype} export)"
    doc = {"name": name, "facts": facts, "scores": None}
    (out / "card.json").write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    from evl_ecg.models.card import write_model_card

    write_model_card(out, name=name)
    return ExportResult(
        out_dir=str(out),
        source=str(source),
        dtype=dtype,
        library=library,
        quantised_modules=export["quantised_modules"],
        size_bytes=export["size_bytes"],
        source_size_bytes=export["source_size_bytes"],
        bench=export["bench"],
        strict_ptb_auc=auc,
        source_strict_ptb_auc=source_auc,
        n_records=n,
        note=note,
        seconds=time.perf_counter() - t0,
    )
