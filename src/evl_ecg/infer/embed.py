"""Elastic embeddings of ECG records from a student trained with ``matryoshka`` or ``mic`` (issue 18).

:func:`embed_records` runs the student over each record's image and first question (the generation prompt: the
head's ``visual`` positions have seen the image only, under causal attention), pools its last hidden states through
the :class:`~evl_ecg.models.embedding_head.EmbeddingHead` saved beside it, and keeps the first ``d`` dimensions of each
requested prefix length, L2-normalised. :func:`write_embeddings` stores them as one safetensors file: a tensor
``d<d>`` (``N x d`` float32) per length, and in its metadata the record ids (JSON), the model folder and the format
(:data:`EMBEDDINGS_FORMAT`). ``evl-ecg embed`` is the thin command over both.

The file is written whole and atomically (a killed run leaves no file, and a rerun writes the same bytes), and its
metadata holds its resume key (:func:`embeddings_key`: the model's fingerprint, the records file's content, the
prefix lengths and the batch size). A rerun into an existing file of other settings is refused in one line naming the
setting and both values (:func:`check_existing`), unless ``--fresh``; a file that is not an evl-ecg embeddings file is
never overwritten.
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

    from evl_ecg.eval.generate import _to_device, question_id
    from evl_ecg.models import load_adapter
    from evl_ecg.models.embedding_head import EmbeddingHead

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


def embeddings_key(
    model_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    dims: Sequence[int] | str,
    batch_size: int,
    out: str | os.PathLike[str],
) -> Any:
    """The :class:`~evl_ecg.resume.ResumeKey` of an embeddings file: the model's fingerprint (its embedding head's
    weights included), the records file's content, the prefix lengths and the batch size (padding changes a batch's
    numerics). A model folder that cannot be fingerprinted raises ``FileNotFoundError`` / ``ValueError``."""
    from evl_ecg.models.fingerprint import model_fingerprint
    from evl_ecg.resume import ResumeKey, file_digest

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no such model folder")
    settings = {
        "model": model_fingerprint(model_dir)["digest"][:16],
        "data": file_digest(data),
        "dims": parse_dims(dims, 1 << 30),
        "batch_size": batch_size,
    }
    info = {"model_dir": str(model_dir), "data": str(data)}
    return ResumeKey(Path(out), "embed", settings, info=info, folder=False, path=Path(out))  # kept in its metadata


def check_existing(key: Any, *, fresh: bool = False) -> None:
    """Apply the resume rule to an existing ``key.out``: a file of other settings (or of an older evl-ecg, without a
    key) is refused unless ``fresh``; a file that is not an evl-ecg embeddings file is refused always."""
    from safetensors import safe_open

    out = Path(key.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: the embeddings are written as safetensors; name a .safetensors file")
    if not out.exists():
        return
    if not out.is_file():
        raise ValueError(f"--out {out}: is not a file; name a .safetensors file")
    try:
        with safe_open(str(out), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception:  # noqa: BLE001 - safetensors raises several types for a file that is not one
        meta = {}
    if meta.get("format") != EMBEDDINGS_FORMAT:
        raise ValueError(f"{out}: exists and is not an evl-ecg embeddings file; not overwritten, use another --out")
    stored = json.loads(meta["resume_key"]) if meta.get("resume_key") else None
    key.check(has_output=True, fresh=fresh, stored=stored)


def write_embeddings(result: Embeddings, out: str | os.PathLike[str], key: Any = None) -> Path:
    """``out`` (``.safetensors``): one ``d<d>`` tensor per length; ids, model, format and the resume ``key``
    (:func:`embeddings_key`) in the metadata; atomic."""
    from safetensors.torch import save

    from evl_ecg.files import atomic_write_bytes

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: the embeddings are written as safetensors; name a .safetensors file")
    tensors = {f"d{d}": t for d, t in result.by_dim.items()}
    meta = {"format": EMBEDDINGS_FORMAT, "ids": json.dumps(result.ids), "model": result.model}
    if key is not None:
        meta["resume_key"] = json.dumps(key.document(), sort_keys=True)
    atomic_write_bytes(out, _sorted_header(save(tensors, metadata=meta)))
    return out


def _sorted_header(data: bytes) -> bytes:
    """safetensors bytes with the metadata's keys in sorted order: safetensors writes them in hash order, which
    changes from one call to the next, so the same embeddings would not give the same bytes. The tensors' entries
    and offsets (relative to the data after the header) are kept; the header is padded to 8 bytes as safetensors
    pads it."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def read_embeddings(path: str | os.PathLike[str]) -> Embeddings:
    """The :class:`Embeddings` written by :func:`write_embeddings`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        if meta.get("format") != EMBEDDINGS_FORMAT:
            raise ValueError(f"{path}: not an evl-ecg embeddings file (format {meta.get('format')!r})")
        by_dim = {int(k[1:]): fh.get_tensor(k) for k in fh.keys()}
    return Embeddings(json.loads(meta["ids"]), dict(sorted(by_dim.items())), meta.get("model", ""))
