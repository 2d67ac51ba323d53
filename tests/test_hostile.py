"""The hostile-input campaign's fast part (issue 15): the cases of benchmarks/hostile.py that take seconds.

Each case runs in this process through typer's CliRunner where it can (bounded inputs), otherwise in a subprocess
(unbounded sizes under a memory limit, a file-size limit, a read-only or full disk, a SIGKILL), and must reach its
expected outcome: a clear error, handled, or exact after a kill and a rerun. The whole campaign, the slow cases
included, is ``python benchmarks/hostile.py`` (docs/hostile.md).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "hostile.py"
_SPEC = importlib.util.spec_from_file_location("evl_ecg_hostile_campaign", _PATH)
hostile = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = hostile
_SPEC.loader.exec_module(hostile)

QUICK = hostile.select(hostile.CASES, quick=True)
TB = hostile.TRACEBACK


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """The campaign's fixtures (tiny corpus, two tiny students, the shipped teacher, a WFDB record), in-process."""
    root = tmp_path_factory.mktemp("hostile")
    base = hostile.Fixtures(root / "_fixtures", hostile.run_inprocess)
    base.root.mkdir()
    return base, root


@pytest.mark.hostile
@pytest.mark.parametrize("case", QUICK, ids=lambda c: f"{c.group}/{c.name}")
def test_hostile_case(case, campaign):
    base, root = campaign
    result = hostile.run_case(case, base, root / "cases", hostile.run_inprocess, inprocess=True)
    if result.outcome == hostile.SKIPPED:
        pytest.skip(f"{case.name}: {result.detail}")
    assert result.outcome in case.expect, (
        f"{case.name} [{case.group}]: {result.outcome}, expected {' or '.join(case.expect)}\n"
        f"  {result.command}\n  {result.detail}" + (f"\n  issue: {case.note}" if case.note else "")
    )


# ------------------------------------------------------------------ the classifier itself (no command run)


def _ctx(tmp_path):
    return hostile.Ctx(hostile.Fixtures(tmp_path, hostile.run_inprocess), tmp_path, hostile.run_inprocess)


def _case(**kw):
    return hostile.Case(name="x", group="config", **{"expect": (hostile.CLEAR,), "names": ("max_steps",), **kw})


@pytest.mark.hostile
@pytest.mark.parametrize(
    ("run", "outcome"),
    [
        (hostile.Run(1, "", "error: cfg.yaml: max_steps: expected an integer\n", 0.1), hostile.CLEAR),
        (hostile.Run(1, "", "error: expected an integer\n", 0.1), hostile.UNCLEAR),
        (hostile.Run(1, "", "", 0.1), hostile.UNCLEAR),
        (hostile.Run(-9, "", "", 0.1), hostile.UNCLEAR),
        (hostile.Run(1, "", "Traceback (most recent call last):\n  ...\nValueError: max_steps\n", 0.1), TB),
        (hostile.Run(0, "{}", "", 0.1), hostile.WRONG),
        (hostile.Run(None, "", "", 30.0, timed_out=True), hostile.HANG),
    ],
)
def test_classify_error_outcomes(tmp_path, run, outcome):
    assert hostile.classify(_case(), _ctx(tmp_path), run)[0] == outcome


@pytest.mark.hostile
def test_classify_handled_false_error_and_checks(tmp_path):
    ctx = _ctx(tmp_path)
    handled = _case(expect=(hostile.HANDLED,), names=())
    assert hostile.classify(handled, ctx, hostile.Run(0, "", "", 0.1))[0] == hostile.HANDLED
    assert hostile.classify(handled, ctx, hostile.Run(1, "", "error: no\n", 0.1))[0] == hostile.FALSE
    wrong = _case(expect=(hostile.HANDLED,), names=(), check=lambda c, r: "records missing")
    assert hostile.classify(wrong, ctx, hostile.Run(0, "", "", 0.1)) == (hostile.WRONG, "records missing")
    # a rich panel wraps a long path: the name is found across the wrap
    panel = "╭─ Error ─╮\n│ Invalid value: /a/very/long/\n│ path/cfg.yaml: bad │\n╰────╯\n"
    assert hostile.classify(_case(names=("/a/very/long/path/cfg.yaml",)), ctx, hostile.Run(2, "", panel, 0.1))[0] == (
        hostile.CLEAR
    )


@pytest.mark.hostile
def test_every_case_is_well_formed():
    names = [c.name for c in hostile.CASES]
    assert len(names) == len(set(names))
    for case in hostile.CASES:
        assert case.group in hostile.GROUPS, case.name
        assert case.expect and set(case.expect) <= set(hostile.OUTCOMES), case.name
        assert (case.scenario is None) != (not case.argv), case.name
        if hostile.CLEAR in case.expect and case.scenario is None:
            assert case.names, f"{case.name}: a clear error must name something"


# ------------------------------------------------------------------ the checks find the wrong results they look for


@pytest.mark.hostile
def test_checks_find_wrong_results(campaign, tmp_path):
    """Each check, on a hand-made wrong result: records missing, images of another seed, a user's file overwritten,
    NaN weights, files mode 0600, stdout cut, an error inside scores.json."""
    import json
    import os
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    base, _ = campaign
    ctx = hostile.Ctx(base, tmp_path, hostile.run_inprocess)
    ok = hostile.Run(0, "", "", 0.1)
    corpus = ctx.copy("corpus", "c")
    assert hostile.corpus_complete("{d}/c", 8, 2)(ctx, ok) is None
    records = json.loads((corpus / "train.json").read_text())
    (corpus / "train.json").write_text(json.dumps(records[:-1]))
    assert "7 of 8" in hostile.corpus_complete("{d}/c", 8)(ctx, ok)

    ctx.copy("corpus", "ref")
    assert hostile.same_as("{d}/ref", "{d}/ref")(ctx, ok) is None
    image = sorted((tmp_path / "ref" / "images" / "train").glob("*.png"))[0]
    shutil.copyfile(sorted(image.parent.glob("*.png"))[1], image)
    assert "labels do not match" in hostile.same_as("{d}/ref", "{d}/c")(ctx, ok)

    hostile.snapshot("{d}/c")(ctx)
    assert hostile.untouched()(ctx, ok) is None
    (corpus / "manifest.json").write_text("{}")
    assert "overwrote manifest.json" in hostile.untouched()(ctx, ok)

    student = ctx.copy("student", "s")
    assert hostile.finite_student("{d}/s")(ctx, ok) is None
    tensors = load_file(str(student / "model.safetensors"))
    name = next(iter(tensors))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(student / "model.safetensors"), metadata={"format": "pt"})
    assert "non-finite" in hostile.finite_student("{d}/s")(ctx, ok)

    os.chmod(student / "config.json", 0o600)
    assert "0o600" in hostile.readable_by_others("{d}/s")(ctx, ok)

    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "scores.json").write_text(json.dumps({"errors": []}))
    assert hostile.eval_ok()(ctx, hostile.Run(0, '{"a": 1}', "", 0.1)) is None
    assert "not a JSON document" in hostile.eval_ok()(ctx, hostile.Run(0, '{"a": 1', "", 0.1))
    (tmp_path / "ev" / "scores.json").write_text(json.dumps({"errors": ["ptb-test.json: duplicate id"]}))
    assert "inside scores.json" in hostile.eval_ok()(ctx, hostile.Run(0, "{}", "", 0.1))
