"""Elastic embeddings of ECG records from a student trained with ``matryoshka`` or ``mic`` (issue 18).

:func:`embed_records` runs the student over each record's image and first question (the generation prompt: the
head's ``visual`` positions have seen the image only, under causal attention), pools its last hidden states through
the :class:`~evl_ecg.distill.elastic.EmbeddingHead` saved beside it, and keeps the first ``d`` dimensions of each
requested prefix length, L2-normalised. :func:`write_embeddings` stores them as one safetensors file: a tensor
``d<d>`` (``N x d`` float32) per length, and in its metadata the record ids (JSON), the model folder and the format
(:data:`EMBEDDINGS_FORMAT`). ``evl-ecg embed`` is the thin command over both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

EMBEDDINGS_FORMAT = "evl-ecg/embeddings"


@dataclass
class Embeddings:
    """Embeddings of ``ids`` at each prefix length: ``by_dim[d]`` is ``N x d`` (float32, rows L2-normalised)."""

    ids: list[str]
    by_dim: dict[int, torch.Tensor]
    model: str
    failed: list[tuple[str, str]] = field(default_factory=list)


def parse_dims(text: str | Sequence[int] | None, dim: int) -> list[int]:
    """The prefix lengths of ``"16,32"`` (or a sequence), sorted, each in ``[1, dim]``; a malformed or out-of-range
    entry raises ``ValueError`` naming it."""
    if text is None:
        raise ValueError("give the prefix lengths (--dims 16,32,...)")
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    out: list[int] = []
    for part in parts:
        try:
            d = int(part)
        except (TypeError, ValueError):
            raise ValueError(f"--dims: {part!r} is not an integer") from None
        if not 1 <= d <= dim:
            raise ValueError(f"--dims: {d} is outside 1..{dim} (the embedding has {dim} dimensions)")
        if d not in out:
            out.append(d)
    if not out:
        raise ValueError("--dims: no prefix length given")
    return sorted(out)


def embed_records(
    model_dir: str | os.PathLike[str],
    records: Sequence[Any],
    image_loader: Callable[[Any], Any],
    dims: Sequence[int] | str | None,
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> Embeddings:
    """Embed ``records`` (any :class:`~evl_ecg.data.records.Record`-like objects with an image and a first human turn)
    with the student in ``model_dir`` and its saved head, at each of ``dims``.

    A record whose image cannot be read or encoded is reported in ``failed`` (id, reason) and left out.
    """
    from tqdm.auto import tqdm

    from evl_ecg.distill.elastic import EmbeddingHead
    from evl_ecg.eval.generate import _to_device, question_id
    from evl_ecg.models import load_adapter

    if batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    model_dir = Path(model_dir)
    try:
        head = EmbeddingHead.load(model_dir)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{model_dir}: no embedding head beside the model (train it with the matryoshka or mic objective term; "
            "docs/elastic.md)"
        ) from None
    wanted = parse_dims(dims, head.dim)
    adapter = load_adapter(model_dir)
    adapter.model.eval()
    head.eval()
    device = next(adapter.model.parameters()).device
    ids: list[str] = []
    rows: list[torch.Tensor] = []
    failed: list[tuple[str, str]] = []
    bar = tqdm(total=len(records), disable=not progress, unit="ecg", desc="embed")
    for start in range(0, len(records), batch_size):
        samples, names = [], []
        for record in records[start : start + batch_size]:
            rid = question_id(record)
            try:
                samples.append(adapter.prompt_inputs(record, image_loader(record)))
                names.append(rid)
            except Exception as exc:  # a missing / unreadable image: reported, never silently dropped
                failed.append((rid, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
        if samples:
            with torch.inference_mode():
                side = adapter.forward(_to_device(adapter.collate(samples), device))
                rows.append(head.embed(side).float().cpu())
            ids += names
        bar.update(min(batch_size, len(records) - start))
    bar.close()
    full = torch.cat(rows) if rows else torch.zeros(0, head.dim)
    by_dim = {d: EmbeddingHead.truncate(full, d).contiguous() for d in wanted}
    return Embeddings(ids, by_dim, str(model_dir), failed)


def write_embeddings(result: Embeddings, out: str | os.PathLike[str]) -> Path:
    """``out`` (``.safetensors``): one ``d<d>`` tensor per length; ids, model and format in the metadata; atomic."""
    from safetensors.torch import save

    from evl_ecg.data.records import atomic_write_bytes

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: the embeddings are written as safetensors; name a .safetensors file")
    tensors = {f"d{d}": t for d, t in result.by_dim.items()}
    meta = {"format": EMBEDDINGS_FORMAT, "ids": json.dumps(result.ids), "model": result.model}
    atomic_write_bytes(out, save(tensors, metadata=meta))
    return out


def read_embeddings(path: str | os.PathLike[str]) -> Embeddings:
    """The :class:`Embeddings` written by :func:`write_embeddings`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        if meta.get("format") != EMBEDDINGS_FORMAT:
            raise ValueError(f"{path}: not an evl-ecg embeddings file (format {meta.get('format')!r})")
        by_dim = {int(k[1:]): fh.get_tensor(k) for k in fh.keys()}
    return Embeddings(json.loads(meta["ids"]), dict(sorted(by_dim.items())), meta.get("model", ""))
