"""The model fingerprint: what makes two checkpoint folders "the same model", and eval resumes keyed on it."""

from __future__ import annotations

import inspect
import json
import os
import shutil
from importlib import resources
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from evl_ecg.models.fingerprint import (
    describe_differences,
    model_fingerprint,
    safetensors_header,
    template_signature,
)

SHIPPED = Path(str(resources.files("evl_ecg") / "assets" / "tiny-teacher"))


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A copy of the shipped tiny teacher (4 MB): config, tokenizer, processor, card and safetensors weights."""
    return Path(shutil.copytree(SHIPPED, tmp_path / "model"))


def _rewrite_weights(directory: Path, change) -> str:
    weights = directory / "model.safetensors"
    state = load_file(str(weights))
    name = sorted(k for k, v in state.items() if v.ndim == 2)[0]
    state[name] = change(state[name])
    save_file(state, str(weights), metadata={"format": "pt"})
    return name


def test_fingerprint_does_not_change_with_mtimes_copies_or_the_scores_an_evaluation_adds(model_dir, tmp_path):
    before = model_fingerprint(model_dir)
    for path in model_dir.iterdir():
        os.utime(path, (1_000_000_000, 1_000_000_000))
    card = json.loads((model_dir / "card.json").read_text())
    card["scores"] = {"results": [{"subset": "ptb-test", "metrics": {"AUC": 1.0}}]}
    (model_dir / "card.json").write_text(json.dumps(card))
    (model_dir / "README.md").write_text("another rendering of the card")
    moved = Path(shutil.copytree(model_dir, tmp_path / "elsewhere" / "renamed"))
    after, copy = model_fingerprint(model_dir), model_fingerprint(moved)
    assert after["digest"] == before["digest"] == copy["digest"]
    assert copy["path"] != before["path"]  # the path is recorded, but is not part of the digest
    assert describe_differences(before, copy) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t: t.to(torch.float32), "F32"),  # the shipped weights are float16
        (lambda t: t[:-1].clone(), "F16["),
    ],
    ids=["dtype", "shape"],
)
def test_fingerprint_changes_with_a_weight_dtype_or_shape_and_names_the_tensor(model_dir, change, expected):
    before = model_fingerprint(model_dir)
    name = _rewrite_weights(model_dir, change)
    after = model_fingerprint(model_dir)
    assert after["digest"] != before["digest"]
    differences = describe_differences(before, after)
    assert any(name in d and expected in d for d in differences), differences


@pytest.mark.parametrize("file", ["config.json", "tokenizer_config.json", "preprocessor_config.json"])
def test_fingerprint_changes_with_the_config_tokenizer_or_processor_files(model_dir, file):
    before = model_fingerprint(model_dir)
    data = json.loads((model_dir / file).read_text())
    data["evl_ecg_test_key"] = 1
    (model_dir / file).write_text(json.dumps(data))
    after = model_fingerprint(model_dir)
    assert after["digest"] != before["digest"]
    assert f"{file} differs" in describe_differences(before, after)


def test_fingerprint_changes_with_the_training_facts_of_the_card(model_dir):
    before = model_fingerprint(model_dir)
    card = json.loads((model_dir / "card.json").read_text())
    trained = card["facts"]["max_steps"]
    card["facts"]["max_steps"] = trained + 1
    (model_dir / "card.json").write_text(json.dumps(card))
    differences = describe_differences(before, model_fingerprint(model_dir))
    assert differences == [f"card fact max_steps: {trained} vs {trained + 1}"]


def test_fingerprint_reads_the_safetensors_header_not_the_weights(model_dir):
    """Headers, not a hash of the weights: weight values are not read (documented limitation: a card tells apart two
    trainings of one architecture)."""
    before = model_fingerprint(model_dir)
    weights = model_dir / "model.safetensors"
    header = safetensors_header(weights)
    assert before["weights"]["model.safetensors"]["tensors"] == {
        k: [v["dtype"], v["shape"]] for k, v in sorted(header.items()) if k != "__metadata__"
    }
    data = bytearray(weights.read_bytes())
    data[-16:] = bytes(16)  # other values in the last tensor, same header and size
    weights.write_bytes(bytes(data))
    assert model_fingerprint(model_dir)["digest"] == before["digest"]


def test_template_signature_names_the_family_without_loading_the_model(model_dir):
    signature = template_signature(model_dir)
    assert signature["family"] == "llava" and signature["adapter"].endswith("LlavaAdapter")
    assert len(signature["render_sha256"]) == 64


def _bench(root: Path) -> Path:
    from PIL import Image

    bench = root / "bench"
    (bench / "images").mkdir(parents=True)
    question = "<image>\nWhich classes? Options: NORM, MI, STTC, CD, HYP."
    records = [
        {
            "id": f"ptb-{i}",
            "image": f"ptb-{i}.png",
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": "NORM"}],
        }
        for i in range(2)
    ]
    (bench / "ptb-test.json").write_text(json.dumps(records))
    for i in range(2):
        Image.new("RGB", (512, 384), "white").save(bench / "images" / f"ptb-{i}.png")
    return bench


def test_eval_resume_is_refused_for_another_model_in_a_folder_of_the_same_name(tmp_path):
    """The bug it fixes: resume checked the model folder's name only, so ``runs/b/student`` resumed the predictions of
    ``runs/a/student`` and the rows of two models were mixed. A resume with the same model still works, after the
    evaluation has added its scores to the model's card."""
    from evl_ecg.eval.run import FINGERPRINT_FILE, evaluate_model

    bench, out = _bench(tmp_path), tmp_path / "eval"
    first = Path(shutil.copytree(SHIPPED, tmp_path / "a" / "student"))
    other = Path(shutil.copytree(SHIPPED, tmp_path / "b" / "student"))
    config = json.loads((other / "generation_config.json").read_text())
    config["max_length"] = 77
    (other / "generation_config.json").write_text(json.dumps(config))
    kwargs = dict(scorer="strict", max_new_tokens=2, likelihood=False, progress=False)
    if "update_card" in inspect.signature(evaluate_model).parameters:  # the card update is opt-in there
        kwargs["update_card"] = True
    card_before = (first / "card.json").read_text()
    doc = evaluate_model(first, bench, out, **kwargs)
    assert doc["generation"]["ptb-test"]["written"] == 2 and (out / FINGERPRINT_FILE).is_file()
    assert (first / "card.json").read_text() != card_before  # the scores went into the card ...
    again = evaluate_model(first, bench, out, **kwargs)  # ... and the same model still resumes
    assert again["generation"]["ptb-test"]["resumed"] == 2
    rows = (out / "ptb-test" / "predictions.jsonl").read_text()
    with pytest.raises(ValueError, match=rf"{out} holds the evaluation of model .*a/student.*generation_config.json"):
        evaluate_model(other, bench, out, **kwargs)
    assert (out / "ptb-test" / "predictions.jsonl").read_text() == rows  # nothing appended
