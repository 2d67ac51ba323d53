"""``evl-ecg data build``: corpora from the PTB-XL, Challenge and CODE-15% fixtures (tests/data/fixtures, written in the
published layouts by make_database_fixtures.py).

The labels and splits of every fixture record are checked against expectations worked out by hand from the fixture
tables (PTB-XL's scp_statements.csv rows, the Challenge's SNOMED codes, CODE-15%'s exams.csv) and the documented
rules; the layout against what ``build_corpus`` writes; resuming, the folder checks, one-line errors and, once, a
short distillation and evaluation on a built corpus.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evl_ecg.data import build as build_module
from evl_ecg.data.build import BuildError, build_from_database
from evl_ecg.data.commands import app

FIXTURES = Path(__file__).resolve().parent / "fixtures"
runner = CliRunner()


def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [ln for ln in result.output.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def build(kind: str, out: Path, source: Path | None = None, **kwargs):
    kwargs.setdefault("progress", False)
    return build_from_database(source or FIXTURES / kind, kind, out, **kwargs)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Each fixture database built once (default settings, one worker)."""
    root = tmp_path_factory.mktemp("built")
    for kind in ("ptbxl", "challenge", "code15"):
        build(kind, root / kind)
    return {kind: root / kind for kind in ("ptbxl", "challenge", "code15")}


def corpus(out: Path) -> dict[str, dict]:
    """Every record of a built corpus by id, with its split file, and the manifest."""
    manifest = json.loads((out / "manifest.json").read_text())
    records = {}
    for split, rel in manifest["files"].items():
        for rec in json.loads((out / rel).read_text()):
            records[rec["id"]] = {**rec, "file": rel, "split_name": split}
    return {"records": records, "manifest": manifest}


def answer(rec: dict) -> str:
    return rec["conversations"][1]["value"]


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of every file below ``root``."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------------------------------
# Labels and splits, as the published tables and the documented rules give them (worked out by hand)
# --------------------------------------------------------------------------------------------------

#: PTB-XL fixture: id -> (split, superclasses, gold). From ptbxl_database.csv's scp_codes and strat_fold and the
#: scp_statements.csv rows: NORM -> NORM; IMI -> MI, LVH -> HYP (ABQRS, SR: not diagnostic); CRBBB, 1AVB -> CD;
#: ISCAL, NDT -> STTC; ASMI (likelihood 0, kept as example_physionet.py keeps it) -> MI, IRBBB -> CD; SBRAD and
#: LVOLT are not diagnostic -> none. Folds 1 -> train, 9 -> validation, 10 -> test.
PTBXL_EXPECTED = {
    "ptbxl-00001": ("train", ["NORM"], "NORM(normal ECG)"),
    "ptbxl-00002": ("train", ["MI", "HYP"], "MI(myocardial infarction); HYP(hypertrophy)"),
    "ptbxl-00008": ("train", [], "None of the listed superclasses apply."),
    "ptbxl-00003": ("val-ptb-test", ["CD"], "CD(conduction disturbance)"),
    "ptbxl-00004": ("ptb-test", ["STTC"], "STTC(ST/T change)"),
    "ptbxl-00005": ("ptb-test", ["MI", "CD"], "MI(myocardial infarction); CD(conduction disturbance)"),
}

#: Challenge fixture: the record name's fold (sha256 of the name mod 10, worked out once and written here) and the
#: CPSC-2018 classes of its '# Dx:' codes: 164889003 AF; 59118001 RBBB + 164884008 PVC; 270492004 I-AVB +
#: 429622005 STD; 713427006 (complete RBBB, a CPSC RBBB code) + 164931005 STE; 426783006 NORM. Q0112: 426783006
#: NORM + 164867002 (old MI, outside our SNOMED table: unmapped); E00215: 426783006 NORM + 251146004 (low QRS
#: voltages, in our table but of no CPSC class: unmapped). E00108 (164890007, atrial flutter) and JS00117 (426177001
#: sinus bradycardia, 251198002 clockwise rotation) have no code of a CPSC class: skipped.
CHALLENGE_EXPECTED = {
    "challenge-A0101": (7, "train", ["AF"], "AF"),
    "challenge-A0103": (7, "train", ["RBBB", "PVC"], "RBBB; PVC"),
    "challenge-Q0112": (6, "train", ["NORM"], "NORM"),
    "challenge-E00215": (0, "train", ["NORM"], "NORM"),
    "challenge-A0104": (8, "val-cpsc-test", ["I-AVB", "STD"], "I-AVB; STD"),
    "challenge-A0114": (9, "cpsc-test", ["RBBB", "STE"], "RBBB; STE"),
    "challenge-A0128": (9, "cpsc-test", ["NORM"], "NORM"),
}

#: CODE-15% fixture: (patient fold, split, labels, gold) from exams.csv; patient 2003 has two exams (one split).
CODE15_EXPECTED = {
    "code15-1001": (0, "train", ["RBBB", "AF"], "RBBB(right bundle branch block); AF(atrial fibrillation)"),
    "code15-1002": (0, "train", [], "NORM"),
    "code15-1006": (1, "train", ["LBBB", "ST"], "LBBB(left bundle branch block); ST(sinus tachycardia)"),
    "code15-1003": (8, "val-code15-test", ["1dAVb"], "1dAVb(1st degree av block)"),
    "code15-1004": (9, "code15-test", [], "ABNORMAL"),
    "code15-1005": (9, "code15-test", ["SB"], "SB(sinus bradycardia)"),
}


def test_ptbxl_superclasses_and_folds_are_the_published_tables(built):
    found = corpus(built["ptbxl"])
    records, manifest = found["records"], found["manifest"]
    assert {rid: (r["split_name"], r["labels"]["ptbxl"], answer(r)) for rid, r in records.items()} == PTBXL_EXPECTED
    assert manifest["counts"] == {"train": 3, "ptb-test": 2, "val-ptb-test": 1}
    assert manifest["settings"]["rate"] == 100  # records100/ only in the fixture
    skipped = {s["id"]: s["reason"] for s in manifest["skipped"]}
    assert skipped == {
        "ptbxl-00006": "ptb-test record without a PTB-XL diagnostic superclass: ptb-test asks for one",
        "ptbxl-00007": "not found (a record the table lists but the folder lacks)",
    }
    entries = {e["id"]: e for e in manifest["records"]}
    assert entries["ptbxl-00005"]["provenance"]["diagnostic_statements"] == [
        {"code": "ASMI", "likelihood": 0.0, "diagnostic_class": "MI"},
        {"code": "IRBBB", "likelihood": 100.0, "diagnostic_class": "CD"},
    ]
    assert entries["ptbxl-00004"]["source"] == "records100/00000/00004_lr.hea"
    assert entries["ptbxl-00003"]["fold"] == 9 and entries["ptbxl-00003"]["provenance"]["strat_fold"] == 9
    # the same aggregation written as PTB-XL's example_physionet.py writes it, on the fixture's own tables
    import pandas as pd

    db = pd.read_csv(FIXTURES / "ptbxl" / "ptbxl_database.csv", index_col="ecg_id")
    agg = pd.read_csv(FIXTURES / "ptbxl" / "scp_statements.csv", index_col=0)
    agg = agg[agg.diagnostic == 1]
    for rid, (_, classes, _) in PTBXL_EXPECTED.items():
        scp = ast.literal_eval(db.loc[int(rid.split("-")[1]), "scp_codes"])
        assert sorted({agg.loc[k].diagnostic_class for k in scp if k in agg.index}) == sorted(classes), rid


def test_challenge_cpsc_classes_and_record_hash_split(built):
    found = corpus(built["challenge"])
    records, manifest = found["records"], found["manifest"]
    got = {rid: (r["split_name"], r["labels"]["cpsc"], answer(r)) for rid, r in records.items()}
    assert got == {rid: exp[1:] for rid, exp in CHALLENGE_EXPECTED.items()}
    for rid, (fold, *_rest) in CHALLENGE_EXPECTED.items():
        name = rid.removeprefix("challenge-")
        assert int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10 == fold == build_module.fold(name)
    entries = {e["id"]: e for e in manifest["records"]}
    assert entries["challenge-A0114"]["provenance"]["dx"] == ["713427006", "164931005"]
    assert entries["challenge-A0114"]["provenance"]["cpsc_from"] == {"RBBB": ["713427006"], "STE": ["164931005"]}
    assert entries["challenge-A0114"]["provenance"]["unmapped"] == []
    assert entries["challenge-A0104"]["source"] == "training/cpsc_2018/g1/A0104.hea"
    assert "sha256(record name)" in manifest["split_rule"]


def test_challenge_codes_outside_the_mapping_are_kept_unmapped_and_counted(built):
    """A code of no CPSC class (unknown to our SNOMED table or not) does not stop the record: the mapped codes give
    its labels, the others stay in its provenance and the manifest's count; a record with no mapped code is
    skipped, with its codes."""
    manifest = corpus(built["challenge"])["manifest"]
    entries = {e["id"]: e for e in manifest["records"]}
    low_voltage = entries["challenge-E00215"]["provenance"]
    assert low_voltage["dx"] == ["426783006", "251146004"]
    assert low_voltage["cpsc_from"] == {"NORM": ["426783006"]} and low_voltage["unmapped"] == ["251146004"]
    assert entries["challenge-Q0112"]["provenance"]["unmapped"] == ["164867002"]
    assert manifest["skipped"] == [
        {
            "id": "challenge-JS00117",
            "source": "training/chapman_shaoxing/g1/JS00117.hea",
            "reason": "no code maps to a label",
            "unmapped": ["426177001", "251198002"],
        },
        {
            "id": "challenge-E00108",
            "source": "training/georgia/g1/E00108.hea",
            "reason": "no code maps to a label",
            "unmapped": ["164890007"],
        },
    ]
    assert manifest["unmapped_codes"] == {
        "records": 4,
        "codes": {"164867002": 1, "164890007": 1, "251146004": 1, "251198002": 1, "426177001": 1},
    }
    assert "kept in the record's provenance as unmapped" in manifest["label_rule"]
    assert "unmapped_codes" not in corpus(built["ptbxl"])["manifest"]


def test_the_command_counts_codes_outside_the_mapping(tmp_path):
    result = cli("build", "--source", FIXTURES / "challenge", "--kind", "challenge", "--out", tmp_path / "o",
                 "--no-progress", "--workers", 1)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (
        "4 record(s) carry codes outside the mapping: 164867002 (x1), 164890007 (x1), 251146004 (x1), "
        "251198002 (x1), 426177001 (x1)"
    ) in result.output
    assert "records listed 9, built 7, skipped 2" in result.output
    assert "  challenge-E00108: no code maps to a label" in result.output


def test_a_malformed_dx_field_skips_the_record_naming_the_field(tmp_path):
    source = _copy(tmp_path, "challenge")
    header = source / "training" / "georgia" / "g1" / "E00215.hea"
    _edit_csv(header, "# Dx: 426783006,251146004", "# Dx: 426783006,low voltage")
    result = build("challenge", tmp_path / "out", source=source)
    reasons = {s["id"]: s["reason"] for s in result.skipped}
    assert reasons["challenge-E00215"] == (
        "field Dx: 'low voltage' is not a SNOMED CT code (the field holds comma-separated digits)"
    )
    assert "challenge-E00215" not in {e["id"] for e in result.manifest["records"]}


def test_code15_labels_normal_ecg_and_patient_split(built):
    found = corpus(built["code15"])
    records, manifest = found["records"], found["manifest"]
    got = {rid: (r["split_name"], r["labels"]["code15"], answer(r)) for rid, r in records.items()}
    assert got == {rid: exp[1:] for rid, exp in CODE15_EXPECTED.items()}
    entries = {e["id"]: e for e in manifest["records"]}
    import pandas as pd

    exams = pd.read_csv(FIXTURES / "code15" / "exams.csv", index_col="exam_id")
    for rid, (fold, *_rest) in CODE15_EXPECTED.items():
        patient = int(exams.loc[int(rid.removeprefix("code15-")), "patient_id"])
        assert int(hashlib.sha256(str(patient).encode()).hexdigest(), 16) % 10 == fold == entries[rid]["fold"]
    assert entries["code15-1005"]["provenance"]["trace_file"] == "exams_part1.hdf5"
    assert entries["code15-1004"]["provenance"]["normal_ecg"] is False
    assert manifest["absent_trace_files"] == {"exams_part2.hdf5": 1} and manifest["skipped"] == []
    assert manifest["label_frequencies"]["code15-test"]["ABNORMAL"] == 1


def test_records_hold_the_generators_questions_and_only_their_vocabulary(built):
    from evl_ecg.data.questions import LABEL_SET_PROMPTS

    for kind, task in (("ptbxl", "ptbxl"), ("challenge", "cpsc"), ("code15", "code15")):
        records = corpus(built[kind])["records"]
        for rid, rec in records.items():
            assert set(rec["labels"]) == {task}, rid  # no findings, no derived vocabulary
            assert rec["meta"]["task"] == task and rec["meta"]["database"] == kind
            _, wording = build_module._record_rngs(0, rid)  # the record's own stream of the run seed (0)
            assert rec["conversations"][0]["value"] == "<image>\n" + LABEL_SET_PROMPTS[task](wording), rid


# --------------------------------------------------------------------------------------------------
# The layout is build_corpus's: every stage reads it unchanged
# --------------------------------------------------------------------------------------------------


def test_layout_is_the_synthetic_corpus_layout(built, tmp_path):
    from evl_ecg.data.corpus import build_corpus, corpus_generator
    from evl_ecg.data.records import load_records, open_image
    from evl_ecg.eval.predictions import load_bench
    from evl_ecg.eval.scores import bench_seed
    from evl_ecg.models.card import render_settings

    synth = tmp_path / "synth"
    build_corpus(synth, n_train=1, n_bench=1, n_val=1, seed=0, progress=False, augment=False)

    def shape(root: Path) -> set[str]:
        out = set()
        for rel in tree(root):
            parts = rel.split("/")
            if parts[0] == "images":
                out.add(f"images/{parts[1]}/*.png")
            elif not parts[0].startswith("."):
                out.add(rel)
        return out

    synth_shape = shape(synth)
    for kind, out in built.items():
        assert shape(out) <= synth_shape, kind
        manifest = json.loads((out / "manifest.json").read_text())
        for split, rel in manifest["files"].items():
            records = load_records(out / rel, normalize_image_token=True)
            assert records
            for rec in records:
                assert rec.image == f"{split}/{rec.id}.png"
                assert open_image(rec, out / "images").size == (512, 384)
            if rel != "train.json":
                assert [item.id for item in load_bench(out / rel)] == [r.id for r in records]
        synth_train = json.loads((synth / "train.json").read_text())[0]
        assert list(json.loads((out / "train.json").read_text())[0]) == list(synth_train)  # the same keys, in order
        assert render_settings(manifest["settings"]) == {
            "layout": "3x4",
            "size": [512, 384],
            "dpi": None,
            "augment": False,
            "train_augmented": True,
        }
        assert corpus_generator(out / "train.json") is None  # real signals: no synthetic generator
        assert bench_seed(out / "bench") == 0
    assert not (built["ptbxl"] / ".parts").exists()


def test_limit_takes_the_first_records_and_writes_no_empty_benchmark(tmp_path):
    result = build("ptbxl", tmp_path / "out", limit=3)
    assert result.counts == {"train": 2, "ptb-test": 0, "val-ptb-test": 1}
    assert not (tmp_path / "out" / "bench").exists()
    assert result.manifest["files"] == {"train": "train.json", "val-ptb-test": "val/ptb-test.json"}


# --------------------------------------------------------------------------------------------------
# Resuming, determinism, the output folder
# --------------------------------------------------------------------------------------------------


def test_a_rerun_resumes_without_rewriting_and_a_killed_run_finishes_identically(tmp_path, monkeypatch):
    out = tmp_path / "whole"
    first = build("ptbxl", out)
    assert (first.rendered, first.resumed) == (6, 0)
    before = tree(out)
    again = build("ptbxl", out)
    assert (again.rendered, again.reused, again.resumed) == (0, 0, 6)
    assert tree(out) == before  # not a byte, not an mtime changed

    # a run killed after its first chunk of 2 records, then resumed; 2 workers
    monkeypatch.setattr(build_module, "CHUNK", 2)
    calls = {"n": 0}
    real = build_module._run_chunk

    def dying(*args):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(build_module, "_run_chunk", dying)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        build("ptbxl", cut)
    assert len(list((cut / ".parts").glob("*.json"))) == 1 and not (cut / "manifest.json").exists()
    monkeypatch.setattr(build_module, "_run_chunk", real)
    resumed = build("ptbxl", cut, workers=2)
    assert resumed.resumed == 2 and resumed.rendered == 4
    whole, parts = tree(out), tree(cut)
    assert set(whole) == set(parts)
    for rel in whole:
        if rel != "manifest.json":
            assert (out / rel).read_bytes() == (cut / rel).read_bytes(), rel
    strip = ("source", "settings", "versions")
    left, right = (json.loads((d / "manifest.json").read_text()) for d in (out, cut))
    assert {k: v for k, v in left.items() if k not in strip} == {k: v for k, v in right.items() if k not in strip}


def test_other_settings_or_foreign_files_are_refused_before_any_work(built, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(built["ptbxl"], out)
    with pytest.raises(BuildError, match=r"other settings \(seed differ"):
        build("ptbxl", out, seed=1)
    with pytest.raises(BuildError, match="that no challenge build writes"):
        build("challenge", out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match=r"holds 1 entry that no ptbxl build writes \(notes.txt\)"):
        build("ptbxl", out)
    assert (out / "notes.txt").read_text() == "mine"


def test_nothing_is_written_outside_out(tmp_path, monkeypatch):
    source = tmp_path / "databases"
    shutil.copytree(FIXTURES, source, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before, fixtures_before = tree(tmp_path), tree(FIXTURES)
    outs = []
    for kind in ("ptbxl", "challenge", "code15"):
        out = tmp_path / "outs" / kind
        result = cli("build", "--source", source / kind, "--kind", kind, "--out", out, "--workers", 1, "--no-progress")
        assert result.exit_code == 0, result.output
        outs.append(out)
    assert "wrote" in result.output and "code15-test 2" in result.output
    assert "not in --source (named by exams.csv, not read): exams_part2.hdf5 (1 exams)" in result.output
    after = {rel: v for rel, v in tree(tmp_path).items() if not rel.startswith("outs/")}
    assert after == before and tree(FIXTURES) == fixtures_before and not any(cwd.iterdir())
    # --out inside the database folder is refused, and nothing is created there
    line = one_line_error(cli("build", "--source", source / "ptbxl", "--kind", "ptbxl", "--out", source / "ptbxl/c"))
    assert "lies inside the database folder" in line and not (source / "ptbxl" / "c").exists()


def test_the_command_prints_counts_split_rule_and_skipped_records(tmp_path):
    result = cli("build", "--source", FIXTURES / "ptbxl", "--kind", "ptbxl", "--out", tmp_path / "o", "--no-progress")
    assert result.exit_code == 0, result.output
    text = result.output
    assert "(100 Hz records): train 3, ptb-test 2, val-ptb-test 1" in text
    assert "split: strat_fold of ptbxl_database.csv: 1-8 train, 9 validation, 10 test" in text
    assert "records listed 8, built 6, skipped 2; images rendered 6" in text
    assert "skipped 2 record(s) (listed in manifest.json):" in text
    assert "  ptbxl-00007: not found (a record the table lists but the folder lacks)" in text


# --------------------------------------------------------------------------------------------------
# Bad inputs: one line naming the file and the field; bad rows: skipped with their reason
# --------------------------------------------------------------------------------------------------


def _copy(tmp_path: Path, kind: str) -> Path:
    dst = tmp_path / "src" / kind
    shutil.copytree(FIXTURES / kind, dst)
    return dst


def _edit_csv(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


BAD_INPUTS = {
    "no source": (lambda src: src.parent / "absent", "ptbxl", "absent: no such folder"),
    "unknown kind": (lambda src: src, "mitbih", "--kind 'mitbih': unknown database; choose ptbxl, challenge, code15"),
    "no scp table": (
        lambda src: (src / "scp_statements.csv").unlink() or src,
        "ptbxl",
        "scp_statements.csv: not found; a ptbxl folder holds ptbxl_database.csv and scp_statements.csv",
    ),
    "no strat_fold": (
        lambda src: _edit_csv(src / "ptbxl_database.csv", ",strat_fold,", ",fold,") or src,
        "ptbxl",
        "ptbxl_database.csv: missing column(s) strat_fold",
    ),
    "no diagnostic_class": (
        lambda src: _edit_csv(src / "scp_statements.csv", ",diagnostic_class,", ",class,") or src,
        "ptbxl",
        "scp_statements.csv: missing column(s) diagnostic_class",
    ),
    "no records folder": (
        lambda src: shutil.rmtree(src / "records100") or src,
        "ptbxl",
        "no records500/ or records100/ folder (the PTB-XL WFDB records)",
    ),
    "no headers": (
        lambda src: [p.unlink() for p in src.rglob("*.hea")] and src,
        "challenge",
        "no WFDB header (.hea) in the folder or below it",
    ),
    "no normal_ecg": (
        lambda src: _edit_csv(src / "exams.csv", ",normal_ecg,", ",normal,") or src,
        "code15",
        "exams.csv: missing column(s) normal_ecg",
    ),
    "no trace file": (
        lambda src: [p.unlink() for p in src.glob("*.hdf5")] and src,
        "code15",
        "none of the trace files exams.csv names is in the folder",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_end_in_one_line_naming_the_file_and_field(case, tmp_path):
    spoil, kind, expected = BAD_INPUTS[case]
    source = spoil(_copy(tmp_path, kind if kind in ("ptbxl", "challenge", "code15") else "ptbxl"))
    out = tmp_path / "out"
    line = one_line_error(cli("build", "--source", source, "--kind", kind, "--out", out, "--no-progress"))
    assert expected in line, line
    assert not out.exists()  # refused before anything is written


def test_a_layout_is_recorded_for_predict_and_checked(tmp_path):
    from evl_ecg.models.card import render_settings

    result = build("code15", tmp_path / "six", layout="6x2", augment=False)
    assert render_settings(result.manifest["settings"])["layout"] == "6x2"
    line = one_line_error(cli("build", "--source", FIXTURES / "code15", "--kind", "code15", "--out", tmp_path / "x",
                              "--layout", "4x3"))  # fmt: skip
    assert "--layout '4x3': unknown layout; use 3x4, 6x2, 12x1" in line


def test_bad_out_folders_end_in_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    line = one_line_error(cli("build", "--source", FIXTURES / "ptbxl", "--kind", "ptbxl", "--out", tmp_path / "file"))
    assert line.endswith("file: exists and is not a folder")
    line = one_line_error(
        cli("build", "--source", FIXTURES / "ptbxl", "--kind", "ptbxl", "--out", tmp_path / "d", "--dpi", 1)
    )
    assert "--dpi 1" in line


def test_hostile_rows_are_skipped_with_their_reason(tmp_path):
    source = _copy(tmp_path, "ptbxl")
    _edit_csv(source / "ptbxl_database.csv", "records100/00000/00001_lr", "../../../etc/passwd")
    _edit_csv(source / "ptbxl_database.csv", "\"{'IMI': 50.0, 'LVH': 100.0, 'ABQRS': 0.0, 'SR': 0.0}\"", "IMI")
    _edit_csv(source / "ptbxl_database.csv", "{'CRBBB': 100.0", "{'XYZ': 1.0, 'CRBBB': 100.0")
    _edit_csv(source / "ptbxl_database.csv", "{'ASMI': 0.0,", "{'ASMI': {0},")
    result = build("ptbxl", tmp_path / "out", source=source)
    reasons = {s["id"]: s["reason"] for s in result.skipped}
    assert reasons["ptbxl-00001"] == "filename_lr '../../../etc/passwd' is not a path inside the database folder"
    assert reasons["ptbxl-00002"] == "scp_codes 'IMI' is not a Python dict literal"
    assert reasons["ptbxl-00003"] == "scp_codes names 'XYZ', which scp_statements.csv does not list"
    assert reasons["ptbxl-00005"] == "scp_codes entry 'ASMI' is not a statement code with a likelihood number"
    assert result.counts == {"train": 1, "ptb-test": 1, "val-ptb-test": 0}


# --------------------------------------------------------------------------------------------------
# End to end: distillation and evaluation read a built corpus unchanged
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "subset"), [("ptbxl", "ptb-test"), ("challenge", "cpsc-test")])
def test_distill_and_eval_run_on_a_built_corpus(tmp_path, kind, subset, tiny_config):
    from evl_ecg.data.records import load_records
    from evl_ecg.eval.run import evaluate_model
    from evl_ecg.models.tiny import build_tiny_student, build_tiny_teacher
    from evl_ecg.models.tokenizers import corpus_from_records
    from evl_ecg.train.pipeline import run

    data = tmp_path / "corpus"
    build(kind, data)
    texts = corpus_from_records(load_records(data / "train.json"))
    models = tmp_path / "models"
    build_tiny_teacher(texts, seed=0).save_pretrained(models / "teacher")
    build_tiny_student(texts, seed=0).save_pretrained(models / "student")
    config = tiny_config(
        tmp_path / "kd", data, phase="kd", student=str(models / "student"), teacher=str(models / "teacher")
    )
    result = run(config)
    totals = [h["loss/total"] for h in result.log_history if "loss/total" in h]
    assert len(totals) == 2 and all(math.isfinite(x) for x in totals)
    assert (result.student_dir / "config.json").exists()
    prov = json.loads((tmp_path / "kd" / "provenance.json").read_text())
    assert prov["data_manifest_sha256"] == hashlib.sha256((data / "manifest.json").read_bytes()).hexdigest()

    doc = evaluate_model(result.student_dir, data / "bench", tmp_path / "eval", max_new_tokens=4, batch_size=2,
                         progress=False)  # fmt: skip
    assert not doc["errors"] and {r["subset"] for r in doc["results"]} == {subset}
    assert doc["likelihood"][subset]["n"] == 2
    assert os.path.isfile(tmp_path / "eval" / "scores.json")
