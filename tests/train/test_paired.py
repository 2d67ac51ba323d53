"""Paired batches: one record tokenised by both models, each side padded on its own."""

import pytest
import torch
from PIL import Image

from evl_ecg.models import build_tiny_student, build_tiny_teacher
from evl_ecg.outputs import IGNORE_INDEX
from evl_ecg.train.paired import PairedCollator, PairedDataset, encode_pair, load_record_image

RECORDS = [
    {
        "id": "a",
        "image": "a.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is the rhythm?"},
            {"from": "gpt", "value": "Sinus rhythm."},
        ],
    },
    {
        "id": "b",
        "image": "b.png",
        "conversations": [
            {"from": "human", "value": "<image>\nDiagnosis? Options: NORM, MI, STTC, CD, HYP."},
            {"from": "gpt", "value": "MI; STTC. Inferior infarction with ST-T changes."},
            {"from": "human", "value": "Heart rate?"},
            {"from": "gpt", "value": "About 72 bpm."},
        ],
    },
]
TEXTS = [t["value"].replace("<image>", "") for r in RECORDS for t in r["conversations"]] * 5
IMAGES = {"a": Image.new("RGB", (512, 384), "white"), "b": Image.new("RGB", (400, 300), (250, 240, 240))}


@pytest.fixture(scope="module")
def pair():
    return build_tiny_teacher(TEXTS, seed=1), build_tiny_student(TEXTS, seed=1)


def test_collator_pads_each_side_independently(pair):
    teacher, student = pair
    ds = PairedDataset(RECORDS, lambda r: IMAGES[r["id"]], teacher, student)
    batch = PairedCollator(student, teacher)([ds[0], ds[1]])
    assert batch["ids"] == ["a", "b"]
    for side, adapter in (("teacher", teacher), ("student", student)):
        b = batch[side]
        singles = [adapter.encode(r, IMAGES[r["id"]]) for r in RECORDS]
        lengths = [len(s["input_ids"]) for s in singles]
        assert b["input_ids"].shape == (2, max(lengths))
        assert b["attention_mask"].sum(1).tolist() == lengths
        for i, s in enumerate(singles):
            n = lengths[i]
            assert torch.equal(b["input_ids"][i, :n], s["input_ids"])
            assert torch.equal(b["labels"][i, :n], s["labels"])
            assert (b["input_ids"][i, n:] == adapter.pad_token_id).all()
            assert (b["labels"][i, n:] == IGNORE_INDEX).all()
            assert (b["token_offsets"][i, n:] == -1).all()
    assert batch["teacher"]["input_ids"].shape[1] != batch["student"]["input_ids"].shape[1]
    assert batch["teacher"]["pixel_values"].shape == (2, 3, 448, 448)
    assert batch["student"]["image_grid_thw"].shape == (2, 3)


def test_labels_per_side_decode_to_the_answers(pair):
    teacher, student = pair
    sample = encode_pair(RECORDS[1], IMAGES["b"], student, teacher)
    answers = [t["value"] for t in RECORDS[1]["conversations"] if t["from"] == "gpt"]
    for side, adapter, end in (("teacher", teacher, "</s>"), ("student", student, "<|im_end|>")):
        enc = sample[side]
        ids = enc["input_ids"][enc["labels"] != IGNORE_INDEX]
        text = adapter.tokenizer.decode(ids)
        assert text.replace(" ", "") == "".join(a + end for a in answers).replace(" ", "")
        assert all(text.count(a) == 1 for a in answers)


def test_student_only_mode(pair):
    _, student = pair
    ds = PairedDataset(RECORDS, IMAGES, None, student)
    sample = ds[1]
    assert sample["teacher"] is None
    batch = PairedCollator(student)([ds[0], sample])
    assert set(batch) == {"ids", "student"}


def test_generation_mode_left_pads(pair):
    teacher, student = pair
    ds = PairedDataset(RECORDS, IMAGES, teacher, student, train=False)
    batch = PairedCollator(student, teacher, padding_side="left")([ds[0], ds[1]])
    for side in ("teacher", "student"):
        assert batch[side]["attention_mask"][:, -1].all()
        assert (batch[side]["labels"] == IGNORE_INDEX).all()


def test_image_loaders():
    rec = {**RECORDS[0], "image": Image.new("L", (64, 32))}
    assert load_record_image(rec).mode == "RGB"
    assert load_record_image(RECORDS[0], IMAGES) is IMAGES["a"]
    assert load_record_image(RECORDS[0], lambda r: IMAGES["b"]) is IMAGES["b"]
    with pytest.raises(TypeError, match="image_loader"):
        load_record_image(RECORDS[0])


def test_collator_refuses_a_missing_teacher_side(pair):
    teacher, student = pair
    sample = encode_pair(RECORDS[0], IMAGES["a"], student, None)
    with pytest.raises(ValueError, match="without one"):
        PairedCollator(student, teacher)([sample])


def test_a_live_teacher_side_serves_what_the_teacher_adapter_computes(pair):
    """The teacher side (data.teacher_side): an adapter becomes a LiveTeacher; its outputs for a collated batch are
    the adapter's own forward on the same padded tensors, frozen and detached."""
    from evl_ecg.train.teacher_side import LiveTeacher, TeacherSide, teacher_side

    teacher, student = pair
    side = teacher_side(teacher)
    assert isinstance(side, LiveTeacher) and isinstance(side, TeacherSide) and side.encodes is teacher
    assert teacher_side(side) is side and teacher_side(None) is None
    with pytest.raises(TypeError, match="Adapter or a TeacherSide"):
        teacher_side("teacher")
    ds = PairedDataset(RECORDS, IMAGES, side, student)
    batch = PairedCollator(student, side)([ds[0], ds[1]])
    side.prepare(torch.device("cpu"))
    assert not any(p.requires_grad for p in teacher.model.parameters())
    got = side.outputs(batch, {"hidden"})
    padded = teacher.collate([ds[0]["teacher"], ds[1]["teacher"]], padding_side="right")
    with torch.no_grad():
        want = teacher.forward(padded, requires={"hidden"})
    assert torch.equal(got.hidden, want.hidden) and not got.hidden.requires_grad
    assert side.outputs({"student": batch["student"]}, {"hidden"}) is None  # a batch without the teacher's entries
