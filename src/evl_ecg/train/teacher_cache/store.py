"""The teacher-output cache's storage: one record's tensors, and reading a built cache back as the teacher's side of
a batch (see the package docstring)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from evl_ecg.models.base import image_positions
from evl_ecg.models.conversation import record_id
from evl_ecg.outputs import IGNORE_INDEX, SideOutputs
from evl_ecg.train.teacher_cache.key import (
    BASE_FIELDS,
    CACHE_FILE,
    CONSTANT_FIELDS,
    CONSTANTS_FILE,
    FORMAT,
    PER_RECORD_FIELDS,
    SHARD_PATTERN,
    VOCAB_FILE,
    TeacherCacheError,
    key_digest,
    key_mismatches,
    refusal,
)


# ---- one record's tensors --------------------------------------------------------------------------------------
def response_rows(labels: Tensor) -> Tensor:
    """Rows ``l`` (long, ascending) of one unpadded record whose next token is supervised: ``labels[l + 1] != -100``.

    The rows every logit loss reads (:func:`~evl_ecg.distill.registry.next_token_targets` on an unpadded record).
    """
    return (labels[1:] != IGNORE_INDEX).nonzero().flatten()


def record_tensors(batch: dict[str, Tensor], out: SideOutputs, j: int, fields: Iterable[str]) -> dict[str, Tensor]:
    """The tensors stored for sample ``j`` of a right-padded teacher batch and its outputs (valid positions only)."""
    fields = set(fields)
    n = int(batch["attention_mask"][j].sum())
    rec = {name: batch[name][j, :n] for name in BASE_FIELDS}
    if "hidden" in fields:
        rec["hidden"] = out.hidden[j, :n]
    if "logits" in fields:
        rec["logits"] = out.logits[j, response_rows(rec["labels"]).to(out.logits.device)]
    if "visual" in fields:
        rec["visual"] = out.visual[j, : int(out.visual_mask[j].sum())]
    if "all_hidden" in fields:
        rec["all_hidden"] = torch.stack([h[j, :n] for h in out.all_hidden])  # K x L x D
    if "attentions" in fields:
        rec["attentions"] = torch.stack([a[j, :, :n, :n] for a in out.attentions])  # K x H x L x L
    if "label_logliks" in fields:  # the record's candidates (none: an empty vector)
        rec["label_logliks"] = out.label_logliks[j][out.label_mask[j]]
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in rec.items()}


def tensor_bytes(tensors: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def existing_ancestor(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


# ---- reading ---------------------------------------------------------------------------------------------------
def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))


def _pad(seqs: Sequence[Tensor], value: float, length: int) -> Tensor:
    out = seqs[0].new_full((len(seqs), length, *seqs[0].shape[1:]), value)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
    return out


class TeacherCache:
    """A built teacher cache (``DIR/cache.json`` and its shards), read record by record.

    ``fields``: the stored fields to serve (default: all); the others are not read, as if not stored.

    Used in two places: :meth:`collate` in the data loader (the padded CPU batch of the cached tensors, under the
    batch key ``"teacher_cache"``), :meth:`side_outputs` in the trainer (that batch, on the device, as the teacher's
    :class:`~evl_ecg.outputs.SideOutputs`). :meth:`loss_context` stands in for the teacher adapter's when the
    objective is built.
    """

    def __init__(self, directory: str | os.PathLike[str], fields: Iterable[str] | None = None) -> None:
        self.directory = Path(directory)
        path = self.directory / CACHE_FILE
        if not path.is_file():
            raise TeacherCacheError(
                f"teacher cache {self.directory}: no {CACHE_FILE} (not a cache, or its build did not finish)"
            )
        self.meta = json.loads(path.read_text())
        if self.meta.get("format") != FORMAT:
            raise refusal(self.directory, [f"cache format {self.meta.get('format')}, this code's is {FORMAT}"])
        self.key: dict[str, Any] = self.meta["key"]
        #: the fields stored; :attr:`fields` those served (read per batch), by default all of them
        self.stored = frozenset(self.key["fields"])
        self.fields = self.stored
        if fields is not None:
            self.serve(fields)
        self.ids: list[str] = self.meta["ids"]
        self.shard_records = int(self.meta["shard_records"])
        self.teacher: dict[str, Any] = self.meta["teacher"]
        self.image_token_id = int(self.teacher["image_token_id"])
        self.pad_token_id = int(self.teacher["pad_token_id"])
        self.vocab: list[str] = json.loads((self.directory / VOCAB_FILE).read_text())
        self._handles: dict[int, Any] = {}
        self._constants: dict[str, dict[str, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict[str, Any]:  # data-loader workers open their own files
        state = dict(self.__dict__)
        state["_handles"], state["_constants"] = {}, {}
        return state

    def serve(self, fields: Iterable[str]) -> TeacherCache:
        """Read only ``fields`` (a subset of the stored ones) from now on; returns ``self``."""
        fields = frozenset(fields)
        if not fields <= self.stored:
            raise refusal(self.directory, [f"fields {sorted(self.stored)}, not {sorted(fields - self.stored)}"])
        self.fields = fields
        return self

    # ---- checks ------------------------------------------------------------------------------------------------
    def verify(self, key: dict[str, Any], fingerprint: dict[str, Any] | None = None) -> None:
        """Refuse (naming what differs) unless this cache can serve a run with ``key``."""
        problems = key_mismatches(
            self.key, key, built_fingerprint=self.meta.get("fingerprint"), wanted_fingerprint=fingerprint
        )
        if problems:
            raise refusal(self.directory, problems)

    def check_records(self, records: Sequence[Any]) -> None:
        """Refuse unless the cache holds ``records`` as its first ``len(records)`` records (same ids, same order)."""
        if len(records) > len(self.ids):
            raise TeacherCacheError(
                f"teacher cache {self.directory} holds {len(self.ids)} records of this data, this run uses "
                f"{len(records)} (max_train_samples): use another directory for this run"
            )
        for i, record in enumerate(records):
            if record_id(record) != self.ids[i]:
                raise TeacherCacheError(
                    f"teacher cache {self.directory}: record {i} is {self.ids[i]!r} in the cache and "
                    f"{record_id(record)!r} in this run's data"
                )

    # ---- what the objective is built from ------------------------------------------------------------------------
    def loss_context(self) -> dict[str, Any]:
        """The teacher adapter's :meth:`~evl_ecg.models.base.Adapter.loss_context`, as it was when the cache was
        built (sizes and vocabulary)."""
        t = self.teacher
        return {
            "hidden": t["hidden"],
            "visual": t["visual"],
            "vocab": self.vocab,
            "layers": t["layers"],
            "heads": t["heads"],
        }

    def describe(self) -> dict[str, Any]:
        """For ``provenance.json``: where, which key, which fields, how many records."""
        return {
            "dir": str(self.directory.resolve()),
            "key_sha256": key_digest(self.key),
            "teacher_fingerprint": self.key["teacher"]["digest"],
            "fields": sorted(self.stored),
            "served": sorted(self.fields),
            "records": len(self.ids),
            "bytes": self.meta.get("bytes"),
        }

    # ---- reading -------------------------------------------------------------------------------------------------
    def _handle(self, shard: int) -> Any:
        handle = self._handles.get(shard)
        if handle is None:
            path = self.directory / SHARD_PATTERN.format(shard)
            if not path.is_file():
                raise TeacherCacheError(f"teacher cache {self.directory}: shard {path.name} is missing")
            handle = self._handles[shard] = safe_open(str(path), framework="pt")
        return handle

    def record(self, index: int) -> dict[str, Tensor]:
        """The stored tensors of record ``index`` (``input_ids``, ``labels``, ``token_offsets`` and the fields)."""
        if not 0 <= index < len(self.ids):
            raise TeacherCacheError(f"teacher cache {self.directory}: no record {index} (it holds {len(self.ids)})")
        handle = self._handle(index // self.shard_records)
        names = [*BASE_FIELDS, *(f for f in PER_RECORD_FIELDS if f in self.fields)]
        return {name: handle.get_tensor(f"{index}.{name}") for name in names}

    def collate(self, indices: Sequence[int], ids: Sequence[str] | None = None) -> dict[str, Tensor]:
        """The records ``indices`` padded as the teacher's collate pads a training batch (right padding).

        ``ids``: the batch's record ids, checked against the cache's. Returns ``input_ids``, ``labels``,
        ``attention_mask``, ``token_offsets`` (``B x L``, ``B x L x 2``) and the stored fields (``hidden``
        ``B x L x D``, ``logits`` ``B x L x V`` with zeros off the response rows, ``visual`` ``B x N x D'``,
        ``all_hidden`` ``B x K x L x D``, ``attentions`` ``B x K x H x L x L``, ``label_logliks`` ``B x K`` with
        ``label_mask``).
        """
        if ids is not None:
            for index, rid in zip(indices, ids, strict=True):
                if self.ids[index] != rid:
                    raise TeacherCacheError(
                        f"teacher cache {self.directory}: record {index} is {self.ids[index]!r} in the cache, "
                        f"{rid!r} in this batch"
                    )
        recs = [self.record(int(i)) for i in indices]
        length = max(r["input_ids"].shape[0] for r in recs)
        batch = {
            "input_ids": _pad([r["input_ids"] for r in recs], self.pad_token_id, length),
            "labels": _pad([r["labels"] for r in recs], IGNORE_INDEX, length),
            "attention_mask": _pad([torch.ones_like(r["input_ids"]) for r in recs], 0, length),
            "token_offsets": _pad([r["token_offsets"] for r in recs], -1, length),
        }
        if "hidden" in self.fields:
            batch["hidden"] = _pad([r["hidden"] for r in recs], 0, length)
        if "logits" in self.fields:
            first = recs[0]["logits"]
            logits = first.new_zeros(len(recs), length, first.shape[-1])
            for b, r in enumerate(recs):
                logits[b, response_rows(r["labels"])] = r["logits"]
            batch["logits"] = logits
        if "visual" in self.fields:
            n_max = max(r["visual"].shape[0] for r in recs)
            batch["visual"] = _pad([r["visual"] for r in recs], 0, n_max)
        if "all_hidden" in self.fields:
            states = [r["all_hidden"].transpose(0, 1) for r in recs]  # L x K x D
            batch["all_hidden"] = _pad(states, 0, length).transpose(1, 2).contiguous()  # B x K x L x D
        if "attentions" in self.fields:
            maps = recs[0]["attentions"].new_zeros(len(recs), *recs[0]["attentions"].shape[:2], length, length)
            for b, r in enumerate(recs):
                n = r["attentions"].shape[-1]
                maps[b, :, :, :n, :n] = r["attentions"]
            batch["attentions"] = maps
        if "label_logliks" in self.fields:
            sizes = [int(r["label_logliks"].shape[0]) for r in recs]
            width = max(sizes)
            batch["label_logliks"] = _pad([r["label_logliks"] for r in recs], 0, width)
            batch["label_mask"] = torch.arange(width).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)
        return batch

    # ---- the teacher side of a batch (:class:`~evl_ecg.train.teacher_side.TeacherSide`) ------------------------
    kind = "cache"
    encodes = None  # nothing of the teacher is encoded per sample: the batch is read by record index

    def prepare(self, device: torch.device) -> None:
        """Nothing to ready: the cached tensors move with the batch."""

    def batch(
        self, samples: Sequence[Mapping[str, Any]], ids: Sequence[str], *, padding_side: str = "right"
    ) -> dict[str, Any]:
        """``{"indices", "teacher_cache"}`` of a training batch: the samples' dataset indices and :meth:`collate`."""
        if padding_side != "right":
            raise ValueError("a teacher cache serves training batches (padding_side='right') only")
        if any("index" not in s for s in samples):
            raise ValueError("PairedCollator has a teacher cache but a sample carries no dataset 'index'")
        indices = [int(s["index"]) for s in samples]
        return {"indices": indices, "teacher_cache": self.collate(indices, ids)}

    def outputs(self, batch: Mapping[str, Any], requires: Iterable[str] = ()) -> SideOutputs | None:
        """:meth:`side_outputs` of the batch's ``"teacher_cache"`` (``None`` if it has none)."""
        cached = batch.get("teacher_cache")
        return None if cached is None else self.side_outputs(cached)

    def _constants_on(self, device: torch.device) -> dict[str, Tensor]:
        key = str(device)
        if key not in self._constants:
            names = [f for f in CONSTANT_FIELDS if f in self.fields]
            loaded: dict[str, Tensor] = {}
            if names:
                with safe_open(str(self.directory / CONSTANTS_FILE), framework="pt") as fh:
                    loaded = {name: fh.get_tensor(name).to(device) for name in names}
            self._constants[key] = loaded
        return self._constants[key]

    def side_outputs(self, batch: dict[str, Tensor]) -> SideOutputs:
        """The teacher's :class:`~evl_ecg.outputs.SideOutputs` for a :meth:`collate` batch (on any device).

        Masks and image positions are derived as :meth:`Adapter.forward` derives them; fields not stored are
        ``None``, or NaN of the right shape for the required ``hidden`` / ``logits``.
        """
        input_ids = batch["input_ids"]
        device = input_ids.device
        b, length = input_ids.shape
        attention_mask = batch["attention_mask"].bool()
        image_mask = (input_ids == self.image_token_id) & attention_mask
        positions = image_positions(image_mask)
        dtype = _dtype(self.teacher["dtype"])

        def absent(width: int) -> Tensor:
            return torch.full((), float("nan"), dtype=dtype, device=device).expand(b, length, width)

        constants = self._constants_on(device)
        all_hidden = batch.get("all_hidden")
        attentions = batch.get("attentions")
        return SideOutputs(
            logits=batch["logits"] if "logits" in batch else absent(int(self.teacher["vocab_size"])),
            hidden=batch["hidden"] if "hidden" in batch else absent(int(self.teacher["hidden"])),
            attention_mask=attention_mask,
            labels=batch["labels"],
            input_ids=input_ids,
            text_mask=attention_mask & ~image_mask,
            visual=batch.get("visual"),
            visual_mask=positions >= 0,
            image_positions=positions,
            embedding_weight=constants.get("embedding_weight"),
            lm_head_weight=constants.get("lm_head_weight"),
            all_hidden=tuple(all_hidden.unbind(1)) if all_hidden is not None else None,
            attentions=tuple(attentions.unbind(1)) if attentions is not None else None,
            attention_kind="probs",
            token_offsets=batch["token_offsets"],
            vocab=self.vocab,
            label_logliks=batch.get("label_logliks"),
            label_mask=batch.get("label_mask"),
        )
