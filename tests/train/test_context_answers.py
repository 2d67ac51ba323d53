"""Records whose answer is context only (``meta`` ``"ce": false``): the collator marks them, CE skips them."""

from __future__ import annotations

import torch

from evl_ecg.data.records import answer_is_target, load_records


def test_the_collator_marks_answers_that_are_context_only(tiny_corpus, tiny_checkpoints):
    from evl_ecg.models import load_adapter
    from evl_ecg.train.config import load_config
    from evl_ecg.train.paired import PairedCollator, PairedDataset
    from evl_ecg.train.pipeline import image_loader

    records = load_records(tiny_corpus / "train.json")[:3]
    records[1].meta = {**records[1].meta, "ce": False}
    assert [answer_is_target(r) for r in records] == [True, False, True]
    assert answer_is_target({"meta": {"ce": True}}) and answer_is_target({"id": "x"})
    student = load_adapter(tiny_checkpoints["student"])
    cfg = load_config(None, train_file=str(tiny_corpus / "train.json"), use_cpu=True, report_to="none")
    dataset = PairedDataset(records, image_loader(cfg), None, student)
    batch = PairedCollator(student)([dataset[i] for i in range(3)])
    assert batch["student"]["ce_mask"].tolist() == [True, False, True]
    plain = PairedCollator(student)([dataset[0], dataset[2]])
    assert "ce_mask" not in plain["student"]  # no such record: the batch is today's
    out = student.forward(batch["student"])
    assert torch.equal(out.ce_mask, batch["student"]["ce_mask"])
