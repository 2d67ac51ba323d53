"""The elastic-embedding losses in a real phase-2 run: the records' findings reach them through the batch, and the
head they train is saved beside the exported student (issue 18)."""

from __future__ import annotations

import json
import math

import torch


def test_a_kd_run_with_mic_trains_and_keeps_the_embedding_head(tmp_path, tiny_corpus, tiny_checkpoints, tiny_config):
    from evl_ecg.data.records import load_records
    from evl_ecg.distill.elastic import HEAD_CONFIG, HEAD_WEIGHTS, EmbeddingHead
    from evl_ecg.train.pipeline import run

    records = load_records(tiny_corpus / "train.json")
    assert all("findings" in r.labels for r in records)  # the synthetic corpus carries them
    cfg = tiny_config(
        tmp_path / "mic",
        tiny_corpus,
        phase="kd",
        method="evl-ecg",
        max_steps=2,
        per_device_train_batch_size=4,
        objective={"terms": {"mic": {"weight": 0.1}}},
        student=str(tiny_checkpoints["student"]),
        teacher=str(tiny_checkpoints["teacher"]),
    )
    result = run(cfg)
    logged = [h for h in result.log_history if "loss/mic" in h]
    assert logged and all(math.isfinite(h["loss/mic"]) for h in logged)
    student = result.student_dir
    assert (student / HEAD_WEIGHTS).is_file() and (student / HEAD_CONFIG).is_file()
    head = EmbeddingHead.load(student)
    assert json.loads((student / HEAD_CONFIG).read_text())["prefixes"][-1] == head.config.prefixes[-1]
    assert all(torch.isfinite(t).all() for t in head.state_dict().values())


def test_the_collator_puts_the_findings_in_the_student_batch(tiny_corpus, tiny_checkpoints):
    from evl_ecg.data.paired import PairedCollator, PairedDataset
    from evl_ecg.data.records import load_records, open_image
    from evl_ecg.ecg.labels import FINDINGS
    from evl_ecg.models import load_adapter

    records = load_records(tiny_corpus / "train.json")[:3]
    student = load_adapter(tiny_checkpoints["student"])
    ds = PairedDataset(records, lambda r: open_image(r, tiny_corpus / "images"), None, student)
    batch = PairedCollator(student)([ds[0], ds[1], ds[2]])
    got = batch["student"]["findings"]
    codes = list(FINDINGS)
    want = torch.zeros(3, len(codes))
    for b, r in enumerate(records):  # by hand from the records' labels
        for code in r.labels["findings"]:
            want[b, codes.index(code)] = 1.0
    assert torch.equal(got, want)
    side = student.forward(batch["student"])
    assert torch.equal(side.findings, want)
