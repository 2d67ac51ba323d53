"""Greedy, batched, resumable generation of benchmark answers in PULSE's output format.

PULSE's ``model_ecg_resume.py`` (``reference/ecgbench-scoring.md`` §2.2) feeds the first human turn (``<image>\\n``
removed, then put back at the start inside the model's template) with one image, decodes greedily
(``do_sample=False``, ``num_beams=1``) and writes one JSON line per question::

    {"question_id": id, "prompt": <question text>, "text": <generation>, "answer_id": ..., "model_id": ...,
     "metadata": {}}

:func:`generate_predictions` does the same through any :class:`~evl_ecg.models.base.Adapter`: prompts are encoded
with :meth:`Adapter.prompt_inputs`, left-padded with :meth:`Adapter.collate` and decoded with
:meth:`Adapter.generate`. Differences from PULSE: batches (left padding; PULSE runs one question at a time),
``answer_id`` is a deterministic UUID-5 of ``(model_id, question_id)`` (PULSE: a random ``shortuuid``), and
records that cannot be used are reported, never silently dropped.

Resumability: an existing output file is read first and every id already in it is skipped; each finished row is
appended and flushed at once, so a killed run rerun with the same arguments writes every id exactly once. A torn
last line (a run killed mid-write) is cut off before appending.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evl_ecg.data.records import strip_image_token

logger = logging.getLogger(__name__)

#: PULSE's ``max_new_tokens`` (ECGBench runs).
PULSE_MAX_NEW_TOKENS = 1024

ImageLoader = Callable[[Any], Any]


@dataclass
class GenerationResult:
    """What :func:`generate_predictions` did. Path-like (``os.fspath(result)`` is the output file).

    Attributes:
        path: the JSONL file.
        written: rows appended by this call.
        resumed: ids that were already in the file (skipped).
        failed: ``(id, reason)`` for every record that could not be used (missing image, bad conversation, ...);
            they are not written, so a rerun tries them again.
    """

    path: Path
    written: int = 0
    resumed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def __fspath__(self) -> str:
        return os.fspath(self.path)


def _get(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)


def question_id(record: Any) -> str:
    """The record's id as a string (``""`` when it has none)."""
    rid = _get(record, "id")
    return "" if rid is None else str(rid)


def prompt_text(record: Any) -> str:
    """The first human turn's text without ``<image>`` (PULSE's ``prompt`` field); list values are joined."""
    convs = _get(record, "conversations") or _get(record, "conversation")
    if not convs:
        raise ValueError("record has no conversations")
    first = convs[0]
    value = first.get("value") if isinstance(first, Mapping) else getattr(first, "value", None)
    if isinstance(value, (list, tuple)):
        value = "".join(str(v) for v in value)
    if not isinstance(value, str):
        raise ValueError("the first turn's value is not a string")
    return strip_image_token(value)


def answer_id(model_id: str, qid: str) -> str:
    """Deterministic answer id: UUID-5 of ``model_id/question_id`` (PULSE uses a random shortuuid)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"evl-ecg:{model_id}/{qid}").hex


def read_done(path: Path, model_id: str | None = None) -> set[str]:
    """Ids already in a prediction file; repairs the tail a killed run may leave.

    Every row is written as one line ending in ``\\n``, so only the last line can be torn: a last line without its
    newline is completed if it is valid JSON and cut off otherwise. Raises ``ValueError`` if any complete line is
    not JSON, if an id occurs twice, or if a row's ``model_id`` differs from ``model_id`` (predictions of another
    model must not be mixed in).
    """
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:])
            data += b"\n"
            with open(path, "ab") as fh:
                fh.write(b"\n")
        except json.JSONDecodeError:
            logger.warning("%s: cutting a torn last line (%d bytes) left by an interrupted run", path, len(data) - cut)
            with open(path, "r+b") as fh:
                fh.truncate(cut)
            data = data[:cut]
    done: set[str] = set()
    for n, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{n}: not a JSON line; refusing to append to a corrupt file") from None
        qid = str(row.get("question_id", row.get("id")))
        if qid in done:
            raise ValueError(f"{path}:{n}: question_id {qid!r} occurs twice")
        if model_id is not None and row.get("model_id", model_id) != model_id:
            raise ValueError(
                f"{path}:{n}: written by model_id {row.get('model_id')!r}, not {model_id!r}; use another output file"
            )
        done.add(qid)
    return done


def _progress(total: int, initial: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="q", dynamic_ncols=True)


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _encode_one(adapter: Any, record: Any, image_loader: ImageLoader) -> tuple[Any, str]:
    """``(prompt inputs, "")`` or ``(None, reason)``: the image is loaded and the first human turn encoded."""
    qid = question_id(record)
    try:
        image = image_loader(record)
    except Exception as exc:  # a missing / unreadable image: report, never skip silently
        return None, f"image: {exc}"
    try:
        sample = adapter.prompt_inputs(record, image)
    except Exception as exc:
        return None, f"encode: {exc}"
    if not qid:
        return None, "record has no id"
    return sample, ""


def generate_predictions(
    adapter: Any,
    records: Sequence[Any],
    image_loader: ImageLoader,
    out_path: str | os.PathLike[str],
    *,
    model_id: str,
    max_new_tokens: int = PULSE_MAX_NEW_TOKENS,
    batch_size: int = 8,
    progress: bool = True,
) -> GenerationResult:
    """Generate greedy answers for ``records`` into ``out_path`` (JSONL, PULSE's format), resuming if it exists.

    Args:
        adapter: a model :class:`~evl_ecg.models.base.Adapter` (its model is put in ``eval()`` mode).
        records: ECGBench-style records (:class:`~evl_ecg.data.records.Record` or dicts); ids must be unique.
        image_loader: ``record -> PIL image`` (e.g. ``lambda r: open_image(r, image_root)``); an exception is
            reported as a failure of that record.
        out_path: the JSONL file; rows are appended.
        model_id: written into every row; an existing file written under another ``model_id`` is refused.
        max_new_tokens: generation length cap (PULSE: 1024).
        batch_size: prompts per ``generate`` call (left padding).
        progress: show a tqdm bar.

    Returns:
        :class:`GenerationResult` (path-like). Failures are also logged as warnings.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be >= 1")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ids = [question_id(r) for r in records]
    seen: set[str] = set()
    for qid in ids:
        if qid in seen:
            raise ValueError(f"record id {qid!r} occurs twice in the records; predictions are keyed by id")
        seen.add(qid)
    done = read_done(out_path, model_id)
    todo = [r for r, qid in zip(records, ids, strict=True) if qid not in done]
    result = GenerationResult(path=out_path, resumed=sum(qid in done for qid in ids))
    adapter.model.eval()
    device = next(adapter.model.parameters()).device
    bar = _progress(len(records), result.resumed, progress, f"generate {out_path.parent.name or out_path.stem}")
    try:
        with open(out_path, "a", encoding="utf-8") as fh:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                good: list[tuple[Any, dict[str, Any], str]] = []
                for record in chunk:
                    sample, reason = _encode_one(adapter, record, image_loader)
                    if sample is None:
                        qid = question_id(record)
                        logger.warning("record %r not generated: %s", qid, reason)
                        result.failed.append((qid, reason))
                        bar.update(1)
                        continue
                    try:
                        prompt = prompt_text(record)
                    except ValueError as exc:
                        result.failed.append((question_id(record), f"prompt: {exc}"))
                        bar.update(1)
                        continue
                    good.append((record, sample, prompt))
                if not good:
                    continue
                batch = adapter.collate([s for _, s, _ in good], padding_side="left")
                texts = adapter.generate(_to_device(batch, device), max_new_tokens=max_new_tokens)
                for (record, _, prompt), text in zip(good, texts, strict=True):
                    qid = question_id(record)
                    row = {
                        "question_id": qid,
                        "prompt": prompt,
                        "text": text.strip(),
                        "answer_id": answer_id(model_id, qid),
                        "model_id": model_id,
                        "metadata": {},
                    }
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                    fh.flush()
                    result.written += 1
                bar.update(len(good))
    finally:
        bar.close()
    if result.failed:
        logger.warning("%s: %d record(s) could not be generated: %s", out_path, len(result.failed), result.failed[:5])
    return result


def read_predictions(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Rows of a prediction file by ``question_id``."""
    rows = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows[str(row.get("question_id", row.get("id")))] = row
    return rows
