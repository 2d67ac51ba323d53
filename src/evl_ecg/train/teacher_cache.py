r"""The teacher-output cache: the frozen teacher's outputs computed once per record and reused by every KD run.

The teacher is frozen and the training images are fixed, so what it gives the losses for a record is the same in
every KD run (the offline teacher outputs of TRL, DSKD and DistillKit). ``evl-ecg distill --teacher-cache DIR``
builds the cache when ``DIR`` is empty or absent, reuses it when its key matches the run, and refuses it otherwise;
``evl-ecg train cache`` only builds it. A run with a cache loads no teacher weights and does not encode the teacher's
side of the records (its image processing is most of the data loading).

**What is stored** is exactly what the objective's losses read of the teacher's
:class:`~evl_ecg.outputs.SideOutputs`, as each registered loss declares them for its options
(:meth:`~evl_ecg.distill.registry.DistillLoss.teacher_reads`), per record and over its valid positions only, in
safetensors shards:

* always: ``input_ids``, ``labels``, ``token_offsets`` (``L``, ``L``, ``L x 2``); the masks and image positions
  (``attention_mask``, ``text_mask``, ``visual_mask``, ``image_positions``) are derived from them at load time exactly
  as :meth:`~evl_ecg.models.base.Adapter.forward` derives them;
* ``hidden``: ``L x D_t`` last hidden states (MHCA, DSKD, EM-KD, RKD);
* ``logits``: ``R x V_t``, only the ``R`` rows whose next token is supervised (the rows every logit loss reads:
  :func:`~evl_ecg.distill.registry.next_token_targets`); the other rows are rebuilt as zeros (ULD, MultiLevelOT,
  Vanilla KL, DSKD, TinyBERT's prediction layer, EM-KD's RLD);
* ``visual``: ``N_t x D_t'`` visual tokens (OT);
* ``all_hidden`` / ``attentions``: every layer's states and attention maps (TinyBERT);
* once per cache: ``embedding_weight`` / ``lm_head_weight`` (DSKD, EM-KD), and the teacher's vocabulary strings and
  sizes (:meth:`TeacherCache.loss_context`), so that no tokenizer is needed either.

At load time (:meth:`TeacherCache.collate`, in the data loader) the records of a batch are padded exactly as the
teacher's own collate pads them (right padding; ``pad_token_id``, ``-100``, ``-1``, zeros), and
:meth:`TeacherCache.side_outputs` turns that into the ``SideOutputs`` the live teacher would give: identical on every
valid position a loss reads (tested against the live teacher for every preset). A field the objective does not read
is absent: ``None`` where optional, a NaN tensor of the right shape (a stride-0 view, no memory) for ``hidden`` and
``logits``, so that a loss reading what was not stored fails loudly instead of training on zeros.

**The key** (``cache.json``): the teacher's :func:`~evl_ecg.models.fingerprint.model_fingerprint` digest, its
template (:func:`~evl_ecg.models.fingerprint.template_signature`) and image-processor settings, the data (sha256 of
the training file and of ``manifest.json`` beside it), ``max_length``, and the fields stored. A cache serves a run when
all agree, its fields include the run's, and it holds the run's records (the first ``n`` of the same file, ids
checked per record and per batch); otherwise the run is refused with an error naming what differs.

Before anything is written the build prints its size (record 0's tensors times the record count, plus the shared
tensors) and refuses when the disk has less free space. Shards are written atomically; a killed build run again with
the same key continues from its last complete shard; runs started at once on one directory build it once (a lock
beside it, :func:`build_lock`), the others wait and reuse it.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from evl_ecg.data.paired import encode_truncated, load_record_image
from evl_ecg.data.records import atomic_write_bytes
from evl_ecg.models.base import image_positions, record_id
from evl_ecg.models.fingerprint import (
    canonical_json,
    describe_differences,
    image_processor_settings,
    model_fingerprint,
    short,
    template_signature,
)
from evl_ecg.outputs import IGNORE_INDEX, SideOutputs

FORMAT = 1
CACHE_FILE = "cache.json"
BUILD_FILE = "build.json"
VOCAB_FILE = "vocab.json"
CONSTANTS_FILE = "constants.safetensors"
SHARD_PATTERN = "shard-{:05d}.safetensors"
#: target bytes per shard (the record count per shard follows from record 0's size)
SHARD_BYTES = 512 * 1024**2
MAX_SHARD_RECORDS = 4096

#: per-record integer tensors, always stored (the masks and image positions are derived from them)
BASE_FIELDS = ("input_ids", "labels", "token_offsets")
#: what can be stored of the teacher's outputs
PER_RECORD_FIELDS = ("hidden", "logits", "visual", "all_hidden", "attentions")
CONSTANT_FIELDS = ("embedding_weight", "lm_head_weight")
FIELDS = PER_RECORD_FIELDS + CONSTANT_FIELDS


class TeacherCacheError(ValueError):
    """A teacher cache that cannot serve this run (mismatched key, missing records, no room on disk, ...)."""


# ---- which fields an objective needs ---------------------------------------------------------------------------
def spec_fields(spec: dict[str, Any]) -> frozenset[str] | None:
    """The fields an objective spec (an :class:`~evl_ecg.distill.objective.ObjectiveConfig` dict) reads of the
    teacher; ``None`` when it needs no teacher at all (SFT, ``alpha = 0``)."""
    from evl_ecg.distill.registry import registered

    terms = spec.get("terms") or {}
    if not float(spec.get("alpha", 0.0)) > 0 or not terms:
        return None
    fields: set[str] = set()
    needed = False
    for name, options in terms.items():
        cls = registered().get(name)
        if cls is None:
            raise KeyError(f"no loss registered as {name!r}")
        if not getattr(cls, "needs_teacher", True):
            continue
        needed = True
        reads = cls.teacher_reads({**cls.defaults(), **{k: v for k, v in options.items() if k != "weight"}})
        if reads is None:
            raise TeacherCacheError(
                f"teacher cache: loss {name!r} does not declare what it reads of the teacher (its class's "
                "teacher_fields, or teacher_reads); run it with the live teacher (no teacher_cache) or declare them"
            )
        unknown = sorted(set(reads) - set(FIELDS))
        if unknown:
            raise TeacherCacheError(f"teacher cache: loss {name!r} reads {unknown}, which a cache cannot hold")
        fields |= reads
    return frozenset(fields) if needed else None


def method_fields(methods: Iterable[str], overrides: dict[str, Any] | None = None) -> frozenset[str] | None:
    """The union of :func:`spec_fields` over presets (``overrides``: the config's ``objective``, applied to each)."""
    from evl_ecg.distill.presets import get_preset

    out: set[str] | None = None
    for method in methods:
        fields = spec_fields(get_preset(method, **dict(overrides or {})))
        if fields is not None:
            out = set(fields) | (out or set())
    return None if out is None else frozenset(out)


# ---- the key ---------------------------------------------------------------------------------------------------
def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_signature(train_file: str | os.PathLike[str]) -> dict[str, Any]:
    """sha256 of the training file and of the ``manifest.json`` beside it (``None`` when there is none)."""
    path = Path(train_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training file")
    manifest = path.parent / "manifest.json"
    return {
        "train_file_sha256": _file_sha256(path),
        "manifest_sha256": _file_sha256(manifest) if manifest.is_file() else None,
    }


def cache_key(
    teacher_dir: str | os.PathLike[str],
    train_file: str | os.PathLike[str],
    max_length: int,
    fields: Iterable[str],
    *,
    fingerprint: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The key a cache is built under and checked against (see the module docstring)."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ValueError(f"teacher cache: unknown field(s) {unknown}; known: {list(FIELDS)}")
    fingerprint = fingerprint or model_fingerprint(teacher_dir)
    return {
        "format": FORMAT,
        "teacher": {"digest": fingerprint["digest"], "path": fingerprint["path"]},
        "template": template_signature(teacher_dir),
        "image_processor": image_processor_settings(teacher_dir),
        "data": data_signature(train_file),
        "max_length": int(max_length),
        "fields": sorted(set(fields)),
    }


def key_digest(key: dict[str, Any]) -> str:
    """The digest of a key without the teacher's path (moving the teacher keeps its caches)."""
    stripped = {**key, "teacher": {"digest": key["teacher"]["digest"]}}
    return hashlib.sha256(canonical_json(stripped)).hexdigest()


def key_mismatches(
    built: dict[str, Any],
    wanted: dict[str, Any],
    *,
    built_fingerprint: dict[str, Any] | None = None,
    wanted_fingerprint: dict[str, Any] | None = None,
) -> list[str]:
    """What keeps a cache built under ``built`` from serving a run whose key is ``wanted``, one phrase each
    (``"data manifest sha X, this run's is Y"``); ``[]`` when it can serve it (its fields may be a superset)."""
    out = []
    if built.get("format") != wanted.get("format"):
        out.append(f"cache format {built.get('format')}, this code's is {wanted.get('format')}")
    bt, wt = built.get("teacher", {}), wanted.get("teacher", {})
    if bt.get("digest") != wt.get("digest"):
        why = ""
        if built_fingerprint and wanted_fingerprint:
            why = " (" + ", ".join(describe_differences(built_fingerprint, wanted_fingerprint, limit=3)) + ")"
        out.append(
            f"teacher fingerprint {short(bt.get('digest'))} ({bt.get('path')}), this run's teacher is "
            f"{short(wt.get('digest'))} ({wt.get('path')}){why}"
        )
    if built.get("template") != wanted.get("template"):
        b, w = built.get("template") or {}, wanted.get("template") or {}
        out.append(
            f"teacher template {b.get('family')}/{short(b.get('render_sha256'))}, this run's is "
            f"{w.get('family')}/{short(w.get('render_sha256'))}"
        )
    if built.get("image_processor") != wanted.get("image_processor"):
        b, w = built.get("image_processor") or {}, wanted.get("image_processor") or {}
        names = sorted(k for k in set(b) | set(w) if b.get(k) != w.get(k))
        out.append(f"other teacher image processor settings ({', '.join(names)})")
    bd, wd = built.get("data", {}), wanted.get("data", {})
    if bd.get("manifest_sha256") != wd.get("manifest_sha256"):
        out.append(
            f"data manifest sha {short(bd.get('manifest_sha256'))}, this run's is {short(wd.get('manifest_sha256'))}"
        )
    if bd.get("train_file_sha256") != wd.get("train_file_sha256"):
        out.append(
            f"training file sha {short(bd.get('train_file_sha256'))}, this run's is "
            f"{short(wd.get('train_file_sha256'))}"
        )
    if built.get("max_length") != wanted.get("max_length"):
        out.append(f"max_length {built.get('max_length')}, this run's is {wanted.get('max_length')}")
    missing = sorted(set(wanted.get("fields", [])) - set(built.get("fields", [])))
    if missing:
        out.append(
            f"fields {built.get('fields')}, this run's objective also reads {missing} (build a cache with "
            "`evl-ecg train cache --method ...` for every method it should serve)"
        )
    return out


def _refusal(directory: Path, problems: list[str]) -> TeacherCacheError:
    return TeacherCacheError(
        f"teacher cache {directory} was built for {'; '.join(problems)}: use another directory for this run, or empty "
        "this one to rebuild it"
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
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in rec.items()}


def _nbytes(tensors: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def human_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _existing_ancestor(path: Path) -> Path:
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
            raise _refusal(self.directory, [f"cache format {self.meta.get('format')}, this code's is {FORMAT}"])
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
            raise _refusal(self.directory, [f"fields {sorted(self.stored)}, not {sorted(fields - self.stored)}"])
        self.fields = fields
        return self

    # ---- checks ------------------------------------------------------------------------------------------------
    def verify(self, key: dict[str, Any], fingerprint: dict[str, Any] | None = None) -> None:
        """Refuse (naming what differs) unless this cache can serve a run with ``key``."""
        problems = key_mismatches(
            self.key, key, built_fingerprint=self.meta.get("fingerprint"), wanted_fingerprint=fingerprint
        )
        if problems:
            raise _refusal(self.directory, problems)

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
        ``all_hidden`` ``B x K x L x D``, ``attentions`` ``B x K x H x L x L``).
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
        return batch

    # ---- the teacher side of a batch (:class:`~evl_ecg.data.teacher_side.TeacherSide`) ------------------------
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

    def outputs(self, batch: Mapping[str, Any], needs: Iterable[str] = ()) -> SideOutputs | None:
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
        )


# ---- building --------------------------------------------------------------------------------------------------
class _TeacherSide(torch.utils.data.Dataset):
    """``(index, the teacher's encoding of record index)`` for the records to build."""

    def __init__(
        self,
        records: Sequence[Any],
        indices: Sequence[int],
        image_loader: Any,
        teacher: Any,
        max_length: int | None = None,
    ) -> None:
        self.records, self.indices, self.image_loader, self.teacher = records, list(indices), image_loader, teacher
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, dict[str, Tensor]]:
        index = self.indices[k]
        record = self.records[index]
        image = load_record_image(record, self.image_loader)
        # cut to max_length as a live run cuts the teacher's sample (the key holds max_length)
        return index, encode_truncated(self.teacher, record, image, self.max_length, side="teacher")[0]


class _Collate:
    def __init__(self, teacher: Any) -> None:
        self.teacher = teacher

    def __call__(self, samples: list[tuple[int, dict[str, Tensor]]]) -> tuple[list[int], dict[str, Tensor]]:
        return [i for i, _ in samples], self.teacher.collate([s for _, s in samples], padding_side="right")


@contextmanager
def _rng_untouched() -> Any:
    """Run a block without moving any random state (a data loader draws its base seed from torch's generator):
    a run that builds its cache first then trains exactly as a later run that reuses it."""
    state = random.getstate()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(state)


@contextmanager
def build_lock(directory: Path) -> Any:
    """An exclusive lock on building ``directory`` (``flock`` on a file beside it, released when the process ends):
    runs started at once with the same cache directory build it once, the others wait and reuse it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    directory = directory.resolve()
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _shard_ranges(n: int, per_shard: int) -> list[range]:
    return [range(s, min(s + per_shard, n)) for s in range(0, n, per_shard)]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_teacher_cache(
    directory: str | os.PathLike[str],
    teacher: Any,
    records: Sequence[Any],
    image_loader: Any,
    key: dict[str, Any],
    *,
    fingerprint: dict[str, Any] | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    shard_records: int | None = None,
    log: Callable[[str], None] | None = _stderr,
) -> TeacherCache:
    """Run ``teacher`` (an adapter) over ``records`` and write what ``key["fields"]`` names into ``directory``.

    ``directory`` must be absent, empty, or a partial build under the same key (continued from its last complete
    shard). Prints the expected size first and refuses (:class:`TeacherCacheError`) when the disk lacks the room.
    ``shard_records``: records per shard (default: about :data:`SHARD_BYTES` per shard, from record 0's size).
    """
    directory = Path(directory)
    log = log or (lambda _message: None)
    fields = set(key["fields"])
    if not records:
        raise TeacherCacheError("teacher cache: no records to build it from")
    build_file = directory / BUILD_FILE
    previous = json.loads(build_file.read_text()) if build_file.is_file() else None
    if previous is not None:
        problems = key_mismatches(previous["key"], key)
        if problems or previous["ids"] != [record_id(r) for r in records] or set(previous["key"]["fields"]) != fields:
            problems = problems or ["other records or fields"]
            raise TeacherCacheError(
                f"teacher cache {directory} holds a partial build for {'; '.join(problems)}: empty it to rebuild"
            )
        shard_records = int(previous["shard_records"])
    elif directory.exists() and any(directory.iterdir()):
        raise TeacherCacheError(
            f"teacher cache {directory} is not empty and holds no cache: give an empty or absent directory"
        )

    model = teacher.model
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).eval()
    needs = frozenset(f for f in ("all_hidden", "attentions") if f in fields)
    t0 = time.perf_counter()
    with _rng_untouched(), torch.no_grad():
        # record 0 (or the first record still to build) gives the size of one record, before anything is written
        done_shards: set[int] = set()
        if shard_records is not None:
            done_shards = {
                k
                for k in range(len(_shard_ranges(len(records), shard_records)))
                if (directory / SHARD_PATTERN.format(k)).is_file()
            }
        todo = [
            i
            for k, r in enumerate(_shard_ranges(len(records), shard_records or len(records)))
            if k not in done_shards
            for i in r
        ]
        loader = torch.utils.data.DataLoader(
            _TeacherSide(records, todo, image_loader, teacher, key.get("max_length")),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_Collate(teacher),
        )
        pending: dict[int, dict[str, Tensor]] = {}
        written = 0
        first = True
        for indices, batch in loader:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            out = teacher.forward(batch, needs=needs)
            for j, index in enumerate(indices):
                pending[index] = record_tensors(batch, out, j, fields)
            if first:
                first = False
                shard_records = _start(
                    directory,
                    teacher,
                    records,
                    key,
                    fingerprint,
                    fields,
                    out,
                    pending[indices[0]],
                    todo,
                    shard_records,
                    previous is not None,
                    log,
                )
            written += _flush(directory, records, pending, shard_records, log, t0, written, len(todo))
            del out, batch
        if pending:
            raise RuntimeError(f"teacher cache {directory}: records {sorted(pending)[:5]} were not written")
    nbytes = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    build = json.loads(build_file.read_text())
    meta = {
        **build,
        "shards": [SHARD_PATTERN.format(k) for k in range(len(_shard_ranges(len(records), shard_records)))],
        "bytes": nbytes,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_bytes(directory / CACHE_FILE, json.dumps(meta, indent=1).encode("utf-8"))
    build_file.unlink()
    log(f"teacher cache: {len(records)} records in {directory} ({human_bytes(nbytes)}, {meta['seconds']:.1f} s)")
    return TeacherCache(directory)


def _start(
    directory: Path,
    teacher: Any,
    records: Sequence[Any],
    key: dict[str, Any],
    fingerprint: dict[str, Any] | None,
    fields: set[str],
    out: SideOutputs,
    one: dict[str, Tensor],
    todo: list[int],
    shard_records: int | None,
    resumed: bool,
    log: Callable[[str], None],
) -> int:
    """Size check, then the shared files and ``build.json``, once the first batch is known. Returns the records per
    shard."""
    per_record = _nbytes(one)
    constants = {}
    if "embedding_weight" in fields:
        constants["embedding_weight"] = out.embedding_weight.detach().to("cpu").contiguous().clone()
    if "lm_head_weight" in fields:
        constants["lm_head_weight"] = out.lm_head_weight.detach().to("cpu").contiguous().clone()
    vocab_bytes = json.dumps(teacher.vocab).encode("utf-8")
    shared = 0 if resumed else _nbytes(constants) + len(vocab_bytes)
    total = per_record * len(todo) + shared
    free = shutil.disk_usage(_existing_ancestor(directory)).free
    stored = ", ".join(sorted(fields)) or "token ids only"
    log(
        f"teacher cache: {len(todo)} records x {human_bytes(per_record)} (record {todo[0]}: "
        f"{one['input_ids'].shape[0]} positions; {stored}) + {human_bytes(shared)} shared = about "
        f"{human_bytes(total)} in {directory} ({human_bytes(free)} free)"
    )
    if total > free:
        raise TeacherCacheError(
            f"teacher cache {directory} needs about {human_bytes(total)} ({len(todo)} records x "
            f"{human_bytes(per_record)}, from record {todo[0]}) but only {human_bytes(free)} are free there"
        )
    if shard_records is None:
        shard_records = max(1, min(MAX_SHARD_RECORDS, SHARD_BYTES // max(per_record, 1)))
    if not resumed:
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(directory / VOCAB_FILE, vocab_bytes)
        if constants:
            save_file(constants, str(directory / CONSTANTS_FILE))
        model = teacher.model
        context = teacher.loss_context()
        build = {
            "format": FORMAT,
            "key": key,
            "fingerprint": fingerprint,
            "ids": [record_id(r) for r in records],
            "shard_records": shard_records,
            "teacher": {
                "family": teacher.family,
                "hidden": int(context["hidden"]),
                "visual": int(context["visual"]),
                "layers": int(context["layers"]),
                "heads": int(context["heads"]),
                "vocab_size": int(model.get_output_embeddings().weight.shape[0]),
                "image_token_id": int(teacher.image_token_id),
                "pad_token_id": int(teacher.pad_token_id),
                "dtype": str(out.hidden.dtype).removeprefix("torch."),
                "device": str(out.hidden.device),
                "attn_implementation": getattr(model.config, "_attn_implementation", None),
            },
            "versions": _versions(),
        }
        atomic_write_bytes(directory / BUILD_FILE, json.dumps(build, indent=1).encode("utf-8"))
    return shard_records


def _flush(
    directory: Path,
    records: Sequence[Any],
    pending: dict[int, dict[str, Tensor]],
    shard_records: int,
    log: Callable[[str], None],
    t0: float,
    written: int,
    todo: int,
) -> int:
    """Write every shard whose records are all in ``pending`` (atomically); returns how many records it wrote."""
    ranges = _shard_ranges(len(records), shard_records)
    count = 0
    for k in sorted({i // shard_records for i in pending}):
        rng = ranges[k]
        if not all(i in pending for i in rng):
            continue
        tensors = {f"{i}.{name}": t for i in rng for name, t in pending.pop(i).items()}
        path = directory / SHARD_PATTERN.format(k)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"first": str(rng.start), "records": str(len(rng))})
        os.replace(tmp, path)
        count += len(rng)
        rate = (written + count) / max(time.perf_counter() - t0, 1e-9)
        log(f"teacher cache: shard {k + 1}/{len(ranges)} written ({written + count}/{todo} records, {rate:.1f}/s)")
    return count


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for name in ("evl-ecg", "torch", "transformers", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# ---- from a run configuration ----------------------------------------------------------------------------------
def open_or_build(
    config: Any,
    records: Sequence[Any],
    image_loader: Any,
    *,
    fields: Iterable[str] | None = None,
    log: Callable[[str], None] | None = _stderr,
) -> TeacherCache:
    """The cache ``config.teacher_cache`` for a KD run of ``config`` (an :class:`~evl_ecg.train.config.EvlConfig`)
    over ``records``: reused when its key matches, built when the directory is empty or absent (the teacher is
    loaded for that and freed after), refused otherwise.

    ``fields`` defaults to what ``config.method`` / ``config.objective`` read (:func:`method_fields`). The main process
    builds first; the others wait for it and open the result.
    """
    if not config.teacher_cache:
        raise ValueError("open_or_build needs config.teacher_cache (a directory)")
    if not config.teacher:
        raise ValueError("a teacher cache needs the teacher checkpoint too (teacher=DIR): its fingerprint is the key")
    if fields is None:
        fields = method_fields([config.method], config.objective) or frozenset()
    directory = Path(config.teacher_cache)
    fingerprint = model_fingerprint(config.teacher)
    key = cache_key(config.teacher, config.train_file, config.max_length, fields, fingerprint=fingerprint)
    with config.main_process_first(local=False, desc="teacher cache"):
        if not (directory / CACHE_FILE).is_file():
            if config.process_index != 0:
                raise TeacherCacheError(f"teacher cache {directory}: the main process did not build it")
            with build_lock(directory):
                if not (directory / CACHE_FILE).is_file():  # another process may have built it while we waited
                    _build_from_config(config, directory, records, image_loader, key, fingerprint, log)
        cache = TeacherCache(directory)
        cache.verify(key, fingerprint)
        cache.check_records(records)
        cache.serve(fields)  # read only what this run's objective needs
    if log is not None and config.process_index == 0:
        log(f"teacher cache: {directory} ({len(cache)} records; {', '.join(sorted(cache.fields)) or 'ids only'})")
    return cache


def _build_from_config(
    config: Any,
    directory: Path,
    records: Sequence[Any],
    image_loader: Any,
    key: dict[str, Any],
    fingerprint: dict[str, Any],
    log: Callable[[str], None] | None,
) -> None:
    """Load the teacher, build the cache on the run's device and batch size, free the teacher."""
    from evl_ecg.models import load_adapter

    with config.unsharded_loading():
        teacher = load_adapter(config.teacher, family=config.teacher_family, dtype=config.teacher_torch_dtype)
    try:
        build_teacher_cache(
            directory,
            teacher,
            records,
            image_loader,
            key,
            fingerprint=fingerprint,
            batch_size=config.per_device_train_batch_size,
            device=config.device,
            num_workers=config.dataloader_num_workers,
            log=log,
        )
    finally:
        del teacher
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
