"""``evl-ecg eval robustness``: the shipped teacher on a tiny bench, 2 views x 2 severities.

The clean condition is checked against ``eval run`` on the same records (its own path: the stored pages, which a
corpus without augmentation draws as the clean page), every view page against the view recomputed from the record
written beside it, a rerun against the first run (nothing redone, a removed page drawn again byte for byte), and bad
options against their one-line errors.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from evl_ecg.eval.commands import app

runner = CliRunner()
RUN = dict(records=4, max_new_tokens=16, batch_size=2, n_boot=50, progress=False)


@pytest.fixture(scope="module")
def teacher() -> Path:
    from evl_ecg.models.tiny import shipped_teacher

    path = shipped_teacher()
    if path is None:
        pytest.skip("no shipped tiny teacher")
    return path


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory) -> Path:
    """A 4-record synthetic ptb-test without augmentation: its stored pages are the clean pages."""
    from evl_ecg.data.corpus import build_corpus

    root = tmp_path_factory.mktemp("robust-bench")
    build_corpus(root, n_train=0, n_bench=4, seed=2, size=(128, 96), augment=False, progress=False)
    return root


@pytest.fixture(scope="module")
def robust(teacher, bench_root, tmp_path_factory):
    from evl_ecg.eval.robustness import evaluate_robustness

    out = tmp_path_factory.mktemp("robust") / "out"
    lines: list[str] = []
    doc = evaluate_robustness([teacher], bench_root / "bench", out, views=["rotation", "gain"], severities=[0, 1],
                              log=lines.append, **RUN)  # fmt: skip
    return out, doc, lines


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.*"))}


def test_severity_zero_is_the_clean_score_of_eval_run_on_the_same_records(robust, teacher, bench_root, tmp_path):
    from evl_ecg.eval.run import evaluate_model

    out, doc, lines = robust
    ref = evaluate_model(teacher, bench_root / "bench", tmp_path / "run", subsets=["ptb-test"], max_new_tokens=16,
                         batch_size=2, progress=False)  # fmt: skip
    strict = next(r for r in ref["results"] if r["subset"] == "ptb-test" and r["scorer"] == "strict")
    name = next(iter(doc["models"]))
    rows = doc["results"]["ptb-test"][name]
    assert set(rows) == {"rotation", "gain"}
    for unit in rows.values():
        clean = unit["0"]
        assert clean["n"] == 4
        want = strict["metrics"]["AUC"]
        assert (clean["auc"] is None and math.isnan(want)) or clean["auc"] == pytest.approx(want, abs=1e-9)
        assert clean["likelihood_auc"] == pytest.approx(100 * ref["likelihood"]["ptb-test"]["auc"], abs=1e-6)

    def texts(path: Path) -> dict[str, str]:
        return {(row := json.loads(ln))["question_id"]: row["text"] for ln in path.read_text().splitlines()}

    ours = texts(out / "models" / name / "clean" / "ptb-test" / "predictions.jsonl")
    assert ours == texts(tmp_path / "run" / "ptb-test" / "predictions.jsonl")  # the same answers, record by record
    assert any(line.startswith("estimate: about") for line in lines)


def test_each_view_page_is_its_view_recomputed_from_the_record_beside_it(robust, bench_root):
    from evl_ecg.data.records import load_records
    from evl_ecg.data.sources import open_record_source
    from evl_ecg.ecg.render import RenderSpec
    from evl_ecg.ecg.views import apply_view

    out, _, _ = robust
    source = open_record_source(bench_root)
    pages = 0
    for record in load_records(bench_root / "bench" / "ptb-test.json"):
        ecg, spec = source.clean(record)
        clean = out / "images" / "clean" / "ptb-test" / f"{record.id}.png"
        with Image.open(clean) as img, Image.open(bench_root / "images" / record.image) as stored:
            assert np.array_equal(np.asarray(img), np.asarray(stored.convert("RGB")))  # augment=False: the same page
        for view in ("rotation", "gain"):
            path = out / "images" / view / "1" / "ptb-test" / f"{record.id}.png"
            written = json.loads(path.with_suffix(".json").read_text())
            assert (written["view"], written["severity"], written["record"]) == (view, 1.0, record.id)
            assert (
                RenderSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in written["base_spec"].items()})
                == spec
            )
            image, params = apply_view(ecg, view, 1.0, written["seed"], spec)
            assert json.loads(json.dumps(params)) == written["params"]
            with Image.open(path) as img:
                assert np.array_equal(np.asarray(img), np.asarray(image))
                assert not np.array_equal(np.asarray(img), np.asarray(Image.open(clean)))
            pages += 1
    assert pages == 8


def test_a_resumed_run_redoes_nothing_and_a_lost_page_comes_back_the_same(robust, teacher, bench_root):
    from evl_ecg.eval.robustness import evaluate_robustness

    out, doc, _ = robust
    before = digests(out / "models")
    again = evaluate_robustness([teacher], bench_root / "bench", out, views=["rotation", "gain"], severities=[1],
                                log=lambda _: None, **RUN)  # fmt: skip
    assert again["this_run"] == {**again["this_run"], "pages_drawn": 0, "answered": 0, "likelihood": 0}
    assert digests(out / "models") == before
    assert again["results"] == doc["results"]
    lost = out / "images" / "rotation" / "1" / "ptb-test" / "synth-ptb-test-00002.png"
    kept = lost.read_bytes()
    lost.unlink()
    third = evaluate_robustness([teacher], bench_root / "bench", out, views=["rotation", "gain"], severities=[1],
                                log=lambda _: None, **RUN)  # fmt: skip
    assert third["this_run"]["pages_drawn"] == 1 and third["this_run"]["answered"] == 0
    assert lost.read_bytes() == kept


def one_error(result, *needles: str) -> str:
    assert result.exit_code == 1, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--views", "rotation,wobble"], ["--views wobble", "not a view or a family"]),
        (["--severities", "0.5,1.5"], ["--severities 1.5", "[0, 1]"]),
        (["--severities", "-0.1"], ["--severities -0.1"]),
        (["--subset", "csn-test-no-cot"], ["--subset csn-test-no-cot", "multi-label"]),
    ],
)
def test_bad_options_fail_in_one_line_before_any_work(extra, needles, teacher, bench_root, tmp_path):
    args = ["robustness", "--model", str(teacher), "--bench", str(bench_root / "bench"), "--out", str(tmp_path / "o")]
    one_error(runner.invoke(app, [*args, *extra]), *needles)
    assert not (tmp_path / "o").exists()


def test_a_folder_that_is_no_model_fails_in_one_line(bench_root, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("not a model\n")
    args = ["robustness", "--model", str(tmp_path / "notes"), "--bench", str(bench_root / "bench")]
    one_error(runner.invoke(app, [*args, "--out", str(tmp_path / "o")]), f"--model {tmp_path / 'notes'}", "not a model")
    assert not (tmp_path / "o").exists()


def test_a_bench_of_images_gets_image_views_only_and_says_so(teacher, bench_root, tmp_path):
    from evl_ecg.data.sources import open_record_source
    from evl_ecg.eval.robustness import parse_units

    images_only = tmp_path / "ecgbench"
    shutil.copytree(bench_root / "bench", images_only / "bench")
    shutil.copytree(bench_root / "images", images_only / "images")
    source = open_record_source(images_only / "bench")
    assert [u.name for u in parse_units(None, source)] == ["image"]
    assert [u.name for u in parse_units(None, open_record_source(bench_root))] == ["signal", "rendering", "image"]
    args = ["robustness", "--model", str(teacher), "--bench", str(images_only / "bench"), "--out", str(tmp_path / "o")]
    one_error(runner.invoke(app, [*args, "--views", "mains"]), "--views mains", "image views only")
