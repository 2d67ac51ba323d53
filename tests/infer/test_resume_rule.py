"""`predict --out FILE.jsonl` and `embed` resume only what the same settings wrote (issue 30): another --batch-size,
--max-new-tokens or --dims is refused in one line naming the setting and both values, --fresh starts again, and a
file that is not an evl-ecg embeddings file is never overwritten."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evl_ecg.cli import app

runner = CliRunner()
ADVICE = "use --fresh to start again, or another --out"


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _errors(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# predict --out FILE.jsonl
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def inputs(tmp_path, records) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for f in (records["wfdb"], records["wfdb"].with_suffix(".dat"), records["png"]):
        shutil.copy(f, folder)
    return folder


def _predict(inputs: Path, model: Path, out: Path, *extra, batch="2", tokens="4"):
    return _run("predict", inputs, "--model", model, "--out", out, "--no-progress", "--json",
                "--batch-size", batch, "--max-new-tokens", tokens, *extra)  # fmt: skip


def _killed_after_one_row(inputs: Path, model: Path, out: Path) -> str:
    first = _predict(inputs, model, out)
    assert first.exit_code == 0, first.output
    row = out.read_text().splitlines(keepends=True)[0]
    out.write_text(row)
    return row


@pytest.mark.parametrize(
    ("option", "value", "setting", "recorded"),
    [("batch", "1", "batch_size", "2"), ("tokens", "9", "max_new_tokens", "4")],
    ids=["--batch-size", "--max-new-tokens"],
)
def test_predict_into_a_jsonl_of_other_settings_is_refused_naming_the_setting(
    tmp_path, inputs, student_dir, option, value, setting, recorded
):
    out = tmp_path / "preds.jsonl"
    row = _killed_after_one_row(inputs, student_dir, out)
    result = _predict(inputs, student_dir, out, **{option: value})
    assert result.exit_code == 1, result.output
    assert _errors(result) == [f"error: {out}: was written with {setting}={recorded}, now {value}; {ADVICE}"]
    assert out.read_text() == row  # nothing appended: no row of the new settings beside one of the old


def test_predict_fresh_starts_the_file_again_and_the_same_settings_resume(tmp_path, inputs, student_dir):
    out = tmp_path / "preds.jsonl"
    _killed_after_one_row(inputs, student_dir, out)
    same = _predict(inputs, student_dir, out)
    assert same.exit_code == 0, same.output
    assert (json.loads(same.stdout)["written"], json.loads(same.stdout)["resumed"]) == (1, 1)
    fresh = _predict(inputs, student_dir, out, "--fresh", batch="1")
    assert fresh.exit_code == 0, fresh.output
    assert (json.loads(fresh.stdout)["written"], json.loads(fresh.stdout)["resumed"]) == (2, 0)
    assert len(out.read_text().splitlines()) == 2
    key = json.loads(Path(f"{out}.resume-key.json").read_text())
    assert key["command"] == "predict" and key["settings"]["batch_size"] == 1
    assert key["settings"]["max_new_tokens"] == 4 and key["settings"]["decoding"] == "greedy"


def test_predict_into_a_jsonl_without_a_key_is_refused_unless_fresh(tmp_path, inputs, student_dir):
    out = tmp_path / "preds.jsonl"
    _killed_after_one_row(inputs, student_dir, out)
    Path(f"{out}.resume-key.json").unlink()  # as an evl-ecg before keys wrote it
    result = _predict(inputs, student_dir, out)
    assert result.exit_code == 1
    (line,) = _errors(result)
    assert line.startswith(f"error: {out}: holds output without a resume key (preds.jsonl.resume-key.json)")
    assert _predict(inputs, student_dir, out, "--fresh").exit_code == 0


def test_predict_out_that_is_a_folder_is_one_line(tmp_path, inputs, student_dir):
    (tmp_path / "folder").mkdir()
    result = _predict(inputs, student_dir, tmp_path / "folder")
    assert result.exit_code == 1
    assert _errors(result) == [
        f"error: --out {tmp_path / 'folder'}: is a folder; give a file (FILE.jsonl, one JSON line per ECG)"
    ]


# ---------------------------------------------------------------------------------------------------------------
# embed
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder(student_dir, tmp_path_factory) -> Path:
    """The tiny student with an (untrained) embedding head of prefixes 8 and 16 saved beside it."""
    import torch

    from evl_ecg.models.embedding_head import EmbeddingHead

    root = Path(shutil.copytree(student_dir, tmp_path_factory.mktemp("embedder") / "student"))
    hidden = json.loads((root / "config.json").read_text())["text_config"]["hidden_size"]
    torch.manual_seed(0)
    EmbeddingHead(hidden, prefixes=(8, 16)).save(root)
    return root


def _embed(model: Path, corpus: Path, out: Path, *extra, dims="8,16"):
    return _run("embed", "--model", model, "--data", corpus / "bench" / "ptb-test.json", "--dims", dims,
                "--out", out, "--image-root", corpus / "images", "--no-progress", "--batch-size", "2",
                *extra)  # fmt: skip


def test_embed_into_a_file_of_other_dims_is_refused_and_fresh_replaces_it(tmp_path, embedder, corpus):
    from evl_ecg.infer.embed import read_embeddings

    out = tmp_path / "e.safetensors"
    first = _embed(embedder, corpus, out)
    assert first.exit_code == 0, first.output
    before = _digest(out)
    again = _embed(embedder, corpus, out)
    assert again.exit_code == 0, again.output
    assert _digest(out) == before  # the same settings: the same bytes
    other = _embed(embedder, corpus, out, dims="8")
    assert other.exit_code == 1, other.output
    assert _errors(other) == [f"error: {out}: was written with dims=[8,16], now [8]; {ADVICE}"]
    batch = _embed(embedder, corpus, out, "--batch-size", "1")
    assert batch.exit_code == 1 and "was written with batch_size=2, now 1;" in _errors(batch)[0]
    assert _digest(out) == before
    fresh = _embed(embedder, corpus, out, "--fresh", dims="8")
    assert fresh.exit_code == 0, fresh.output
    assert sorted(read_embeddings(out).by_dim) == [8]


@pytest.mark.parametrize("kind", ["random-bytes", "other-safetensors"])
def test_embed_never_overwrites_a_file_that_is_not_an_embeddings_file(tmp_path, embedder, corpus, kind):
    import torch
    from safetensors.torch import save_file

    out = tmp_path / "mine.safetensors"
    if kind == "random-bytes":
        out.write_bytes(b"\x00\x01 my own data" * 10)
    else:
        save_file({"w": torch.ones(2, 2)}, str(out), metadata={"format": "pt"})
    before = _digest(out)
    for fresh in ((), ("--fresh",)):
        result = _embed(embedder, corpus, out, *fresh)
        assert result.exit_code == 1, result.output
        assert _errors(result) == [
            f"error: {out}: exists and is not an evl-ecg embeddings file; not overwritten, use another --out"
        ]
    assert _digest(out) == before


def test_embeddings_written_without_a_key_are_refused_unless_fresh(tmp_path, embedder, corpus):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    out = tmp_path / "e.safetensors"
    assert _embed(embedder, corpus, out).exit_code == 0
    with safe_open(str(out), framework="pt") as fh:
        meta = fh.metadata()
    save_file(load_file(str(out)), str(out), metadata={k: v for k, v in meta.items() if k != "resume_key"})
    result = _embed(embedder, corpus, out)
    assert result.exit_code == 1
    (line,) = _errors(result)
    assert line.startswith(f"error: {out}: holds output without a resume key, so the settings it was written with")
    assert _embed(embedder, corpus, out, "--fresh").exit_code == 0
