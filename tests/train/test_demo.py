"""`evl-ecg demo --quick`: every stage runs end to end on a tiny corpus and leaves its table, figures and cards."""

from __future__ import annotations

import json

from typer.testing import CliRunner


def test_quick_demo_runs_every_stage_and_writes_its_results(tmp_path):
    from evl_ecg.cli import app

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["timings_s"]) >= {"synth", "teacher", "sft", "control", "kd", "eval teacher", "figures"}
    rows = summary["table"]["rows"] if isinstance(summary["table"], dict) else summary["table"]
    methods = {(r["method"], r["scorer"]) for r in rows}
    assert methods == {(m, s) for m in ("teacher", "control-student", "evl-ecg-student") for s in ("pulse", "strict")}
    markdown = (out / "results.md").read_text()
    assert "| evl-ecg-student | strict |" in markdown and "Stage times" in markdown
    for name in ("transport_plan", "singular_values", "loss_curves"):
        path = out / "figures" / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    card = (out / "kd" / "student" / "README.md").read_text()
    assert "not a medical device" in card and "| ptb-test | strict |" in card  # scored by the demo's evaluation
    # a second run reuses every finished stage
    again = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "results.json").read_text())["timings_s"].get("kd", 0) < 1.0
