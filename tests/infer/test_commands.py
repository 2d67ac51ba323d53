"""`evl-ecg predict` and `evl-ecg export` through the real CLI (typer's runner, in process)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from evl_ecg.cli import app
from evl_ecg.infer.interpreter import DISCLAIMER

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _errors(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]


@pytest.mark.parametrize("kind", ["wfdb", "dicom", "png"])
def test_predict_prints_answer_labels_card_and_disclaimer(kind, records, teacher_dir):
    result = _run("predict", records[kind], "--model", teacher_dir)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "answer: " in out and "labels (ptbxl, strict scorer rules)" in out and "(uncalibrated)" in out
    assert DISCLAIMER in out and f"model card: {teacher_dir / 'README.md'}" in out


def test_predict_json_is_the_prediction(records, student_dir):
    result = _run("predict", records["wfdb"], "--model", student_dir, "--json", "--question", "cpsc")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["question"] == "cpsc" and doc["kind"] == "wfdb"
    assert set(doc["probabilities"]) == {"NORM", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE"}
    assert doc["disclaimer"] == DISCLAIMER and doc["model_card"].endswith("README.md")
    assert doc["probabilities_note"].startswith("uncalibrated")


def test_predict_errors_are_one_line(tmp_path, teacher_dir, records):
    (tmp_path / "x.txt").write_text("no ecg")
    cases = [
        (["predict", tmp_path / "x.txt", "--model", teacher_dir], "x.txt: unknown ECG file type"),
        (["predict", records["wfdb"], "--model", tmp_path / "nope"], "no such model folder"),
        (["predict", records["wfdb"], "--model", teacher_dir, "--question", "mood"], "unknown 'mood'"),
        (["predict", records["wfdb"], records["png"], "--model", teacher_dir], "give --out FILE.jsonl (one JSON"),
        (["predict", records["wfdb"], "--model", teacher_dir, "--render-spec", "size=3"], "size must be"),
    ]
    for args, needle in cases:
        result = _run(*args)
        assert result.exit_code == 1, (args, result.stdout)
        errors = _errors(result)
        assert len(errors) == 1 and needle in errors[0], result.stderr
        assert "Traceback" not in result.stderr + result.stdout


def test_predict_several_inputs_with_json_and_no_out_are_json_lines_on_stdout(tmp_path, records, student_dir):
    """As command-line tools do: one JSON object per ECG on standard output, errors and the summary on stderr."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    result = _run("predict", records["wfdb"], broken, records["dicom"], "--model", student_dir, "--json")
    assert result.exit_code == 1  # one input failed, and said so on stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["kind"] for r in rows] == ["wfdb", "dicom"]  # in the order given, the broken one left out
    assert rows[0]["question_id"] == f"{records['wfdb']}::ptbxl" and all(r["disclaimer"] == DISCLAIMER for r in rows)
    assert _errors(result) == [
        f"error: {broken}: not a readable PNG/JPEG image (cannot identify image file '{broken}')"
    ]
    assert "2 of 3 ECGs read" in result.stderr
    fine = _run("predict", records["wfdb"], records["png"], "--model", student_dir, "--json", "--batch-size", "1")
    assert fine.exit_code == 0 and len(fine.stdout.splitlines()) == 2


def test_predict_folder_into_a_resumable_jsonl(tmp_path, records, student_dir, teacher_dir):
    import shutil

    folder = tmp_path / "in"
    folder.mkdir()
    for key in ("wfdb", "dicom", "png"):
        shutil.copy(records[key], folder)
    shutil.copy(records["wfdb"].with_suffix(".dat"), folder)
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "preds.jsonl"
    first = _run("predict", folder, "--model", student_dir, "--out", out, "--no-progress", "--batch-size", "2")
    assert first.exit_code == 1  # one input failed, and said so
    broken = folder / "broken.png"
    assert _errors(first) == [f"error: {broken}: not a readable PNG/JPEG image (cannot identify image file '{broken}')"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["kind"] for r in rows) == ["dicom", "image", "wfdb"]
    assert all(r["disclaimer"] == DISCLAIMER for r in rows)
    # a torn last line (a killed run) is cut off and that input is done again; the others are not redone
    text = out.read_text().splitlines(keepends=True)
    out.write_text("".join(text[:-1]) + text[-1][:20])
    again = _run("predict", folder, "--model", student_dir, "--out", out, "--no-progress", "--json", "--batch-size", 2)
    summary = json.loads(again.stdout)
    assert (summary["written"], summary["resumed"], summary["failed"]) == (1, 2, 1)
    assert len(out.read_text().splitlines()) == 3
    # another model's rows are refused, the model named first (its resume key: docs/hostile.md, "The resume rule")
    other = _run("predict", folder, "--model", teacher_dir, "--out", out, "--no-progress")
    (line,) = _errors(other)
    assert other.exit_code == 1 and line.startswith(f"error: {out}: was written with model=") and "--fresh" in line


def _lead_csv(path, ecg) -> None:
    """``ecg`` as a CSV export: a time column and the 12 leads in mV."""
    import numpy as np

    from evl_ecg.ecg.leads import LEADS

    t = np.arange(ecg.signal.shape[1]) / ecg.fs
    np.savetxt(path, np.column_stack([t, ecg.signal.T]), delimiter=",", fmt="%.4f",
               header=",".join(("time", *LEADS)), comments="")  # fmt: skip


#: CODE-15%'s exams.csv: a table of exams, not an ECG (its columns as published; two rows).
EXAMS_CSV = (
    "exam_id,age,is_male,nn_predicted_age,1dAVb,RBBB,LBBB,SB,ST,AF,patient_id,death,timey,normal_ecg,trace_file\n"
    "1001,50,True,52.5,False,True,False,False,False,True,2003,False,3.5,False,exams_part0.hdf5\n"
    "1002,51,False,53.5,False,False,False,False,False,False,2003,False,3.5,True,exams_part0.hdf5\n"
)


def test_a_folder_scan_takes_the_files_its_formats_content_checks_call_ecgs(tmp_path, records, ecg):
    import shutil

    from evl_ecg.infer.inputs import expand_inputs

    _lead_csv(tmp_path / "ecg.csv", ecg)
    (tmp_path / "exams.csv").write_text(EXAMS_CSV)
    (tmp_path / "notes.xml").write_text("<?xml version='1.0'?><notes>not an ECG</notes>")
    (tmp_path / "uv.csv").write_text("# fs: 500\nI (uV);II (uV);V1_uV;label\n1;2;3;x\n")  # leads with a stray column
    (tmp_path / "readme.txt").write_text("a file of no ECG suffix: not looked at")
    shutil.copy(records["wfdb"], tmp_path)
    shutil.copy(records["wfdb"].with_suffix(".dat"), tmp_path)
    specs, notes = expand_inputs([tmp_path])
    assert specs == [str(tmp_path / name) for name in ("ecg.csv", "rbbb.hea", "uv.csv")]
    assert notes == [f"{tmp_path}: skipped 2 files that are not an ECG: exams.csv, notes.xml"]
    assert expand_inputs([tmp_path / "exams.csv"]) == ([str(tmp_path / "exams.csv")], [])  # named: always taken


def test_predict_on_a_folder_leaves_files_that_are_not_ecgs_aside_without_failing(tmp_path, records, ecg, student_dir):
    """A CODE-15% folder's exams.csv is a table, not a broken ECG: named once on stderr, no error, exit 0; the same
    file named on the command line is read, and its error is an error as before."""
    import shutil

    folder = tmp_path / "code15"
    folder.mkdir()
    (folder / "exams.csv").write_text(EXAMS_CSV)
    shutil.copy(records["hdf5"], folder / "exams_part0.hdf5")
    _lead_csv(folder / "ecg.csv", ecg)
    shutil.copy(records["png"], folder)
    result = _run("predict", folder, "--model", student_dir, "--json", "--no-progress")
    assert result.exit_code == 0, result.stderr
    assert _errors(result) == []
    skipped = [ln for ln in result.stderr.splitlines() if "not an ECG" in ln]
    assert skipped == [f"warning: {folder}: skipped 1 file that is not an ECG: exams.csv"]
    assert sorted(json.loads(line)["kind"] for line in result.stdout.splitlines()) == ["csv", "image"]
    assert "2 of 2 ECGs read" in result.stderr
    named = _run("predict", folder / "exams.csv", "--model", student_dir)
    assert named.exit_code == 1
    (line,) = _errors(named)
    assert line.startswith(f"error: {folder / 'exams.csv'}: unknown column 'exam_id'")


@pytest.fixture(scope="module")
def exports(student_dir, corpus, tmp_path_factory) -> dict:
    pytest.importorskip("torchao")
    root = tmp_path_factory.mktemp("exports")
    done = {}
    for dtype in ("bf16", "int8"):
        result = _run("export", "--model", student_dir, "--out", root / dtype, "--dtype", dtype, "--json")
        assert result.exit_code == 0, result.stderr
        done[dtype] = (root / dtype, json.loads(result.stdout))
    return done


def test_export_records_dtype_and_auc_after_export(exports, corpus):
    for dtype, (folder, doc) in exports.items():
        card = json.loads((folder / "card.json").read_text())
        export = card["facts"]["export"]
        assert export["dtype"] == dtype == doc["dtype"]
        assert export["bench"] == str(corpus / "bench")  # the benchmark it was trained with, found from the card
        assert export["n_records"] == 4 and "strict_ptb_auc" in export
        assert card["facts"]["render"]["size"] == [448, 336]  # carried over: predict renders the same way
        assert f"Exported as `{dtype}`" in (folder / "README.md").read_text()
        assert doc["disclaimer"] == DISCLAIMER


def test_exported_models_load_with_the_same_loader_and_predict(exports, records):
    import torch

    from evl_ecg.infer.interpreter import Interpreter
    from evl_ecg.models import load_adapter

    bf16 = load_adapter(exports["bf16"][0])
    assert bf16.model.dtype == torch.bfloat16
    int8 = load_adapter(exports["int8"][0])
    kinds = {name: type(m.weight).__name__ for name, m in int8.model.named_modules() if isinstance(m, torch.nn.Linear)}
    lm = {k: v for k, v in kinds.items() if k.startswith("model.language_model.")}
    assert lm and set(lm.values()) == {"Int8Tensor"}
    assert {v for k, v in kinds.items() if k not in lm} == {"Parameter"}  # vision tower and head stay fp32
    assert exports["int8"][1]["quantised_modules"] == len(lm)
    for dtype in ("bf16", "int8"):
        pred = Interpreter.from_pretrained(exports[dtype][0]).predict(records["wfdb"])
        assert pred.dtype == dtype and pred.image_size == (448, 336)
        assert sum(pred.probabilities.values()) + pred.none_probability == pytest.approx(1.0, abs=1e-4)


def test_export_refuses_a_used_folder_and_an_unknown_dtype(tmp_path, student_dir):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    for args, needle in [
        (["--out", tmp_path / "used", "--dtype", "bf16"], "exists and is not empty"),
        (["--out", tmp_path / "new", "--dtype", "fp8"], "unknown dtype 'fp8'"),
    ]:
        result = _run("export", "--model", student_dir, *args)
        assert result.exit_code == 1 and len(_errors(result)) == 1 and needle in _errors(result)[0], result.stderr


def test_missing_extras_are_named(monkeypatch):
    import builtins

    from evl_ecg.infer import export, serve

    real = builtins.__import__

    def no_extras(name, *args, **kwargs):
        if name.split(".")[0] in {"torchao", "fastapi", "uvicorn", "multipart"}:
            raise ImportError(f"No module named {name!r}", name=name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_extras)
    with pytest.raises(export.MissingExtraError, match=r"pip install 'evl-ecg\[edge\]'"):
        export.import_torchao()
    with pytest.raises(export.MissingExtraError, match=r"pip install 'evl-ecg\[serve\]'"):
        serve._require_serve()
