"""Paired samples: one record, tokenised by both models, each side padded on its own.

A distillation batch holds the same conversations twice: in the teacher's template, tokenizer and image processor
(llava_v1, ~1,000 to 3,400 positions for PULSE) and in the student's (ChatML, ~200 to 600). The sides never share
positions; cross-tokenizer losses align them through ``token_offsets`` (UTF-8 byte offsets of each response token
inside its turn's response text) or through attention.

Records are ECGInstruct-style dicts ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}, ...]}``
(or objects with ``.id``/``.conversations``). Images come from ``image_loader``: a callable ``record -> PIL image``,
a mapping ``id -> PIL image``, or ``None`` when ``record["image"]`` already is a PIL image.

Batch layout from :class:`PairedCollator`::

    {"ids": [record ids], "student": {input_ids, labels, attention_mask, token_offsets, pixel_values, ...},
     "teacher": {... the same keys for the teacher ...}}      # no "teacher" key in student-only mode (SFT)

The teacher's side is one object (:class:`~evl_ecg.train.teacher_side.TeacherSide`), live or cached: the dataset
encodes the teacher's conversation only where the side has an adapter to encode it with (``side.encodes``), and the
collator adds what the side returns (:meth:`~evl_ecg.train.teacher_side.TeacherSide.batch`). With a teacher-output
cache (:mod:`evl_ecg.train.teacher_cache`) nothing of the teacher is encoded (none of its image processing): each
sample carries its ``index`` in the dataset, and the batch holds ``"indices"`` and ``"teacher_cache"`` (the cached
teacher tensors of those records, padded as the teacher's own collate pads them) instead of ``"teacher"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from evl_ecg.data.records import answer_is_target
from evl_ecg.ecg.labels import findings_multi_hot
from evl_ecg.models.base import Adapter
from evl_ecg.models.conversation import record_id
from evl_ecg.train.teacher_side import TeacherSide, teacher_side

ImageLoader = Callable[[Any], Image.Image] | Mapping[str, Image.Image] | None


def load_record_image(record: Any, image_loader: ImageLoader = None) -> Image.Image:
    """The record's image as RGB PIL, from ``image_loader`` (callable or mapping) or the record itself."""
    if image_loader is None:
        image = record.get("image") if isinstance(record, Mapping) else getattr(record, "image", None)
    elif isinstance(image_loader, Mapping):
        image = image_loader[record_id(record)]
    else:
        image = image_loader(record)
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"record {record_id(record)!r}: expected a PIL image, got {type(image).__name__} "
            "(pass image_loader=callable(record) -> PIL.Image)"
        )
    return image.convert("RGB") if image.mode != "RGB" else image


def encode_pair(
    record: Any,
    image: Image.Image,
    student: Adapter,
    teacher: Adapter | None = None,
    *,
    train: bool = True,
    max_length: int | None = None,
) -> dict[str, Any]:
    """``{"id", "student": encoded, "teacher": encoded or None, "truncated": [student, teacher]}`` for one record
    (see :meth:`Adapter.encode`); with ``max_length`` each side is cut to that many tokens
    (:func:`encode_truncated`), and ``truncated`` says which were."""
    rid = record_id(record)
    s, s_cut = encode_truncated(student, record, image, max_length, train=train, side="student")
    t, t_cut = (None, False)
    if teacher is not None:
        t, t_cut = encode_truncated(teacher, record, image, max_length, train=train, side="teacher")
    out = {"id": rid, "student": s, "teacher": t, "truncated": [int(s_cut), int(t_cut)]}
    out["findings"] = record_findings(record)
    out["ce"] = answer_is_target(record)
    return out


def record_findings(record: Any) -> list[str] | None:
    """The record's canonical findings (``labels["findings"]``), or ``None`` when it does not carry them (real
    ECGInstruct records; a loss over labels then says it needs them)."""
    labels = record.get("labels") if isinstance(record, Mapping) else getattr(record, "labels", None)
    found = (labels or {}).get("findings")
    return None if found is None else [str(code) for code in found]


def encode_truncated(
    adapter: Adapter, record: Any, image: Image.Image, max_length: int | None, *, train: bool = True, side: str = ""
) -> tuple[dict[str, Tensor], bool]:
    """``(encoded, cut)``: :meth:`Adapter.encode`, then :meth:`Adapter.truncate` to ``max_length`` tokens (``None``:
    no limit). The live teacher, the teacher-output cache and the student all cut through here, so a cached teacher
    sample is the live one."""
    sample = adapter.encode(record, image, train=train)
    if max_length is None:
        return sample, False
    what = f"record {record_id(record)!r}" + (f" ({side})" if side else "")
    return sample, adapter.truncate(sample, max_length, what=what)


def encode_label_set(
    adapter: Adapter, record: Any, image: Image.Image, label_sets: Mapping[str, Sequence[str]]
) -> list[dict[str, Tensor]] | None:
    """The record's label-set question with each candidate answer of ``label_sets`` (its vocabulary's), encoded by
    ``adapter`` (:meth:`~evl_ecg.models.base.Adapter.encode_candidates`); ``None`` where the question has none."""
    from evl_ecg.data.label_sets import candidate_conversation, record_label_set

    answers = label_sets.get(record_label_set(record) or "")
    if not answers:
        return None
    return adapter.encode_candidates([candidate_conversation(record, a) for a in answers], image)


class PairedDataset(Dataset):
    """Records encoded for both models on access (student only for SFT, or for KD from a teacher-output cache: a
    teacher side with nothing to encode). Each sample also carries ``"index"``, its position in ``records`` (the
    cache's key).

    Args:
        records: a sequence of records.
        image_loader: see the module docstring.
        teacher_adapter: the teacher's adapter or :class:`~evl_ecg.train.teacher_side.TeacherSide`, or ``None``.
        student_adapter: the student's adapter.
        train: full conversations with labels (``True``) or generation prompts (``False``).
        label_sets: the candidate answers of each label vocabulary
            (:func:`evl_ecg.data.label_sets.training_candidates`) when a loss reads ``label_logliks``: a sample whose
            question is a label-set question then carries ``"label_sets"``, its candidates encoded by each side
            (:meth:`~evl_ecg.models.base.Adapter.encode_candidates`); other samples carry ``None`` there.
    """

    def __init__(
        self,
        records: Sequence[Any],
        image_loader: ImageLoader,
        teacher_adapter: Adapter | TeacherSide | None,
        student_adapter: Adapter,
        *,
        train: bool = True,
        max_length: int | None = None,
        label_sets: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if student_adapter is None:
            raise ValueError("PairedDataset needs a student adapter")
        self.records = records
        self.image_loader = image_loader
        side = teacher_side(teacher_adapter)
        self.teacher = side.encodes if side is not None else None
        self.student = student_adapter
        self.train = train
        self.max_length = max_length
        self.label_sets = label_sets

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = load_record_image(record, self.image_loader)
        sample = encode_pair(record, image, self.student, self.teacher, train=self.train, max_length=self.max_length)
        sample["index"] = int(index)
        if self.label_sets is not None:
            sample["label_sets"] = self._label_sets(record, image)
        return sample

    def _label_sets(self, record: Any, image: Image.Image) -> dict[str, Any] | None:
        sides = {"student": encode_label_set(self.student, record, image, self.label_sets)}
        if sides["student"] is None:
            return None
        if self.teacher is not None:
            sides["teacher"] = encode_label_set(self.teacher, record, image, self.label_sets)
        return sides


class PairedCollator:
    """Pads each side on its own: ``{"ids", "student": batch, "teacher": batch}`` (no teacher in student-only mode).

    ``padding_side="right"`` for training, ``"left"`` for generation. ``teacher``: the teacher's adapter or
    :class:`~evl_ecg.train.teacher_side.TeacherSide` (live, or a teacher-output cache, which adds ``"indices"`` and
    ``"teacher_cache"`` instead of ``"teacher"`` and serves training batches, right padding, only).
    """

    def __init__(
        self,
        student: Adapter,
        teacher: Adapter | TeacherSide | None = None,
        *,
        padding_side: str = "right",
    ) -> None:
        self.student = student
        self.teacher = teacher_side(teacher)
        if self.teacher is not None and self.teacher.encodes is None and padding_side != "right":
            raise ValueError(f"a {self.teacher.kind} teacher serves training batches (padding_side='right') only")
        self.padding_side = padding_side

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("PairedCollator got an empty batch")
        batch: dict[str, Any] = {
            "ids": [s["id"] for s in samples],
            "student": self.student.collate([s["student"] for s in samples], padding_side=self.padding_side),
        }
        if not all(s.get("ce", True) for s in samples):  # answers that are context only: CE skips them
            batch["student"]["ce_mask"] = torch.tensor([bool(s.get("ce", True)) for s in samples])
        findings = [s.get("findings") for s in samples]
        if all(f is not None for f in findings):  # the label losses' targets (matryoshka, mic), student side
            batch["student"]["findings"] = findings_multi_hot(findings)
        if any(any(s.get("truncated", ())) for s in samples):  # samples cut to max_length: [student, teacher]
            batch["truncated"] = torch.tensor([s.get("truncated", [0, 0]) for s in samples], dtype=torch.long).sum(0)
        if self.teacher is not None:
            batch.update(self.teacher.batch(samples, batch["ids"], padding_side=self.padding_side))
        if any("label_sets" in s for s in samples):  # each side's candidates, one entry per sample (None: no set)
            for side in ("student", "teacher"):
                if isinstance(batch.get(side), dict):
                    batch[side]["label_sets"] = [(s.get("label_sets") or {}).get(side) for s in samples]
        return batch
