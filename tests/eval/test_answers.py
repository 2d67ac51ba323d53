"""A model's answers to the pool questions (evl_ecg.eval.answers): one row per training record, each the model's
greedy answer to the record's pool question, keyed and resumable; composed with a budget into training records."""

from __future__ import annotations

import json

import pytest

from evl_ecg.data import budget as b


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from evl_ecg.data.corpus import build_corpus

    out = tmp_path_factory.mktemp("answers-corpus")
    build_corpus(out, n_train=6, n_bench=0, seed=11, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def teacher():
    from evl_ecg.models.tiny import shipped_teacher

    return shipped_teacher()


def test_answers_cover_every_record_resume_and_compose(corpus, teacher, tmp_path):
    from evl_ecg.data.records import load_records
    from evl_ecg.eval.answers import answer_pool
    from evl_ecg.models import load_adapter
    from evl_ecg.models.fingerprint import model_fingerprint

    train = corpus / "train.json"
    out = answer_pool(teacher, train, tmp_path / "answers", max_new_tokens=8, batch_size=4, progress=False)
    assert out.name == f"answers-{model_fingerprint(teacher)['digest'][:16]}.jsonl"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    records = load_records(train)
    assert sorted(r["question_id"] for r in rows) == sorted(r.id for r in records)
    # each row asks the record's pool question (never its own question, which may be built from its findings)
    by_id = {r.id: r for r in records}
    for row in rows:
        assert row["prompt"] == b.pool_question(by_id[row["question_id"]]).split("\n", 1)[1]
    # the answer is the model's greedy answer to that question, one record at a time
    adapter = load_adapter(teacher)
    from evl_ecg.data.records import open_image

    record = b.PoolItem(records[0].id, records[0].image, b.pool_question(records[0])).with_answer("-")
    sample = adapter.prompt_inputs(record, open_image(record, corpus / "images"))
    alone = adapter.generate(adapter.collate([sample], padding_side="left"), max_new_tokens=8)[0].strip()
    assert b.load_answers(out)[records[0].id] == alone
    # a rerun resumes (nothing rewritten); other settings are refused in one line naming the setting
    before = out.read_bytes()
    answer_pool(teacher, train, tmp_path / "answers", max_new_tokens=8, batch_size=4, progress=False)
    assert out.read_bytes() == before
    with pytest.raises(ValueError, match="max_new_tokens=8, now 9"):
        answer_pool(teacher, train, tmp_path / "answers", max_new_tokens=9, batch_size=4, progress=False)
    # composed with a budget: labelled records whole, then the pool with the model's answers as targets
    labelled, pool = b.split(records, "2", seed=0)
    composed, empty = b.compose(labelled, pool, b.load_answers(out))
    answers = b.load_answers(out)
    assert [r.id for r in composed[:2]] == [r.id for r in labelled]
    for item, record in zip(pool, composed[2:], strict=True):
        if answers[item.id].strip():
            assert record.id == item.id and record.answer == answers[item.id].strip() and not record.labels
    assert len(composed) + len(empty) == len(records)
    with pytest.raises(b.BudgetError, match="have no answer"):
        b.compose(labelled, pool, {})


def test_the_commands_split_answer_and_compose(corpus, teacher, tmp_path):
    from typer.testing import CliRunner

    from evl_ecg.cli import app

    runner = CliRunner()
    train = str(corpus / "train.json")
    result = runner.invoke(app, ["eval", "answers", "--model", str(teacher), "--data", train, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (answers,) = [str(p) for p in tmp_path.glob("answers-*.jsonl")]
    assert answers in result.output
    split = tmp_path / "b"
    args = ["data", "budget", "--data", train, "--labels", "50%", "--seed", "1", "--out", str(split)]
    result = runner.invoke(app, [*args, "--answers", answers])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output[result.output.index("{") :])
    assert (info["labelled"], info["pool"], info["records"]) == (3, 3, 6)
    assert info["train"] + info["empty_answers"] == 6
    bad = runner.invoke(app, ["data", "budget", "--data", train, "--labels", "ten", "--out", str(split)])
    assert bad.exit_code == 1 and "--labels 'ten'" in bad.output
