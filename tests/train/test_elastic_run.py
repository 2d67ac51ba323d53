"""The elastic-embedding losses in a real phase-2 run: the records' findings reach them through the batch, and the
head they train is saved beside the exported student (issue 18)."""

from __future__ import annotations

import json
import math

import torch


def test_a_kd_run_with_mic_trains_and_keeps_the_embedding_head(tmp_path, tiny_corpus, tiny_checkpoints, tiny_config):
    from evl_ecg.data.records import load_records
    from evl_ecg.models.embedding_head import HEAD_CONFIG, HEAD_WEIGHTS, EmbeddingHead
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
    _embed_command(student, head, tiny_corpus, tmp_path, tiny_checkpoints)
    from evl_ecg.infer.export import export_model

    exported = tmp_path / "bf16"
    export_model(student, exported, "bf16", measure=False)
    assert EmbeddingHead.load(exported).state_dict().keys() == head.state_dict().keys()  # the head goes along


def _embed_command(student, head, corpus, tmp_path, checkpoints):
    """``evl-ecg embed`` on the trained student: the vectors equal the head applied by hand to the mean of the
    student's last hidden states over the image positions, cut and L2-normalised; bad calls are one line, exit 1."""
    from typer.testing import CliRunner

    from evl_ecg.cli import app
    from evl_ecg.data.records import load_records, open_image
    from evl_ecg.infer.embed import read_embeddings
    from evl_ecg.models import load_adapter

    bench = corpus / "bench" / "ptb-test.json"
    out = tmp_path / "emb.safetensors"
    runner = CliRunner()
    args = ["embed", "--model", str(student), "--data", str(bench), "--dims", "16,8", "--out", str(out)]
    result = runner.invoke(app, [*args, "--image-root", str(corpus / "images"), "--no-progress"])
    assert result.exit_code == 0, result.output
    got = read_embeddings(out)
    records = load_records(bench)
    assert got.ids == [r.id for r in records] and sorted(got.by_dim) == [8, 16]
    adapter = load_adapter(student)
    weight = head.state_dict()["proj.weight"] if "proj.weight" in head.state_dict() else next(iter(head.parameters()))
    for i, record in enumerate(records):
        sample = adapter.prompt_inputs(record, open_image(record, corpus / "images"))
        with torch.no_grad():
            side = adapter.forward(adapter.collate([sample]))
        image = side.attention_mask[0] & ~side.text_mask[0]
        pooled = side.hidden[0][image].double().mean(0)
        full = pooled @ weight.double().T
        for d in (8, 16):
            want = full[:d] / full[:d].norm()
            assert torch.allclose(got.by_dim[d][i].double(), want, atol=1e-5), (record.id, d)
    bad = runner.invoke(app, ["embed", "--model", str(checkpoints["student"]), "--data", str(bench), "--dims", "8",
                              "--out", str(tmp_path / "x.safetensors")])  # fmt: skip
    assert bad.exit_code == 1 and "no embedding head" in bad.output and "Traceback" not in bad.output
    too_long = runner.invoke(app, [*args[:5], "--dims", "0,999", "--out", str(tmp_path / "y.safetensors")])
    assert too_long.exit_code == 1 and "--dims" in too_long.output


def test_the_collator_puts_the_findings_in_the_student_batch(tiny_corpus, tiny_checkpoints):
    from evl_ecg.data.records import load_records, open_image
    from evl_ecg.ecg.labels import FINDINGS
    from evl_ecg.models import load_adapter
    from evl_ecg.train.paired import PairedCollator, PairedDataset

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
