"""Label budgets (evl_ecg.data.budget): parsing, nesting, strata, uniformity, and a pool that carries no label.

The records are built by hand here (ECGInstruct's record layout), not by the corpus builder, and every property is
checked against a count made in the test, never against the module's own earlier output.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from evl_ecg.data import budget as b
from evl_ecg.data.records import GPT, HUMAN, Record, Turn, load_records, save_records

TASKS = {"ptbxl": 140, "code15": 140, "cpsc": 100, "mcq": 160, "fill": 100, "report": 160, "ecgqa": 200}


def _records(answer: str = "NORM", findings: tuple[str, ...] = ("SR",)) -> list[Record]:
    out = []
    k = 0
    for task, n in TASKS.items():
        for _ in range(n):
            out.append(
                Record(
                    id=f"r{k:05d}",
                    image=f"train/r{k:05d}.png",
                    conversations=[Turn(HUMAN, "<image>\nWhat does this ECG show?"), Turn(GPT, f"{answer} {k}")],
                    meta={"task": task, "signal_seed": k},
                    labels={"findings": list(findings), "ptbxl": ["NORM"]},
                )
            )
            k += 1
    return out


@pytest.mark.parametrize(
    ("text", "count", "fraction"),
    [("10%", None, 0.1), ("0.25", None, 0.25), ("200", 200, None), ("all", None, 1.0), ("100%", None, 1.0)],
)
def test_parse(text, count, fraction):
    budget = b.Budget.parse(text)
    assert budget.count == count
    assert budget.fraction == pytest.approx(fraction) if fraction is not None else budget.fraction is None


@pytest.mark.parametrize("text", ["ten", "0", "-5%", "150%", "0.0", "", "1e9x"])
def test_parse_refuses_with_the_option_named(text):
    with pytest.raises(b.BudgetError, match="--labels"):
        b.Budget.parse(text)


def test_sizes():
    assert b.Budget.parse("10%").size(2000) == 200
    assert b.Budget.parse("5%").size(2000) == 100
    assert b.Budget.parse("0.01%").size(2000) == 1  # never zero labelled records
    assert b.Budget.parse("all").size(2000) == 2000
    assert b.Budget.parse("2000").size(2000) == 2000
    with pytest.raises(b.BudgetError, match="only 1000 training records"):
        b.Budget.parse("2000").size(1000)
    assert str(b.Budget.parse("10%")) == "10%" and str(b.Budget.parse("200")) == "200"


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_budgets_nest(seed):
    records = _records()
    ids = [{r.id for r in b.split(records, budget, seed)[0]} for budget in ("5%", "10%", "25%", "50%", "all")]
    for small, large in zip(ids, ids[1:], strict=False):
        assert small < large
    assert len(ids[-1]) == len(records)


@pytest.mark.parametrize("budget", ["5%", "10%", "25%", "137"])
def test_every_task_within_one_record_of_its_share(budget):
    records = _records()
    n = len(records)
    labelled, pool = b.split(records, budget, 3)
    size = b.Budget.parse(budget).size(n)
    assert len(labelled) == size and len(pool) == n - size
    counts = Counter(r.meta["task"] for r in labelled)
    for task, n_task in TASKS.items():
        assert abs(counts[task] - size * n_task / n) <= 1.0, (task, counts[task], size * n_task / n)


def test_draw_is_uniform_within_a_task():
    # over 300 seeds each record of a task is labelled about 10 % of the time: a chi-square over the 140 ptbxl
    # records stays below its 99.9 % quantile (df = 139: 203)
    records = _records()
    hits = Counter()
    seeds = 300
    for seed in range(seeds):
        hits.update(r.id for r in b.split(records, "10%", seed)[0] if r.meta["task"] == "ptbxl")
    ptb = [r.id for r in records if r.meta["task"] == "ptbxl"]
    observed = np.array([hits[i] for i in ptb], dtype=float)
    expected = observed.sum() / len(ptb)
    assert abs(observed.sum() / seeds - 14.0) <= 1.0
    assert ((observed - expected) ** 2 / expected).sum() < 203


def test_seeds_differ_and_repeat():
    records = _records()
    first = [r.id for r in b.split(records, "10%", 0)[0]]
    assert first == [r.id for r in b.split(records, "10%", 0)[0]]
    assert first != [r.id for r in b.split(records, "10%", 1)[0]]


def test_pool_reads_no_label(tmp_path):
    # two corpora that differ in every answer, every label and every meta field but the task: identical pools,
    # identical labelled ids; the pool holds id, image and question only
    one, two = _records("NORM", ("SR",)), _records("MI; STTC", ("MI", "STD"))
    for r in two:
        r.meta = {"task": r.meta["task"], "signal_seed": -1, "source_record": "other"}
    save_records(tmp_path / "one.json", one)
    save_records(tmp_path / "two.json", two)
    b.write_split(tmp_path / "one.json", tmp_path / "a", "10%", 5)
    b.write_split(tmp_path / "two.json", tmp_path / "b", "10%", 5)
    assert (tmp_path / "a" / b.POOL_FILE).read_bytes() == (tmp_path / "b" / b.POOL_FILE).read_bytes()
    rows = json.loads((tmp_path / "a" / b.POOL_FILE).read_text())
    assert len(rows) == len(one) - 100 and all(set(row) == {"id", "image", "question"} for row in rows)
    assert [r.id for r in load_records(tmp_path / "a" / b.LABELLED_FILE)] == [
        r.id for r in load_records(tmp_path / "b" / b.LABELLED_FILE)
    ]
    info = json.loads((tmp_path / "a" / b.BUDGET_FILE).read_text())
    assert (info["budget"], info["seed"], info["labelled"], info["pool"]) == ("10%", 5, 100, 900)
    # the labelled records are kept whole
    kept = load_records(tmp_path / "a" / b.LABELLED_FILE)
    assert all(r.answer.startswith("NORM") and r.labels["findings"] == ["SR"] for r in kept)


def test_pool_questions_follow_the_task():
    records = {r.meta["task"]: r for r in _records()}
    ptb_option = "NORM(normal ECG)"
    code_option = "1dAVb(1st degree av block)"
    cpsc_name = "right bundle branch block"
    assert ptb_option in b.pool_question(records["ptbxl"])
    assert ptb_option in b.pool_question(records["ecgqa"])
    assert code_option in b.pool_question(records["code15"])
    q = b.pool_question(records["cpsc"])
    assert cpsc_name in q and "(" not in q
    for r in records.values():
        assert b.pool_question(r).startswith("<image>\n")
    # tasks without a vocabulary draw all three label sets
    drawn = Counter()
    for r in _records():
        if r.meta["task"] in ("mcq", "fill", "report"):
            text = b.pool_question(r)
            drawn["code15" if code_option in text else "ptbxl" if ptb_option in text else "cpsc"] += 1
    assert set(drawn) == {"ptbxl", "code15", "cpsc"}
    # the vocabulary the question asks is the one its text names
    for r in _records():
        text = b.pool_question(r)
        named = "code15" if code_option in text else "ptbxl" if ptb_option in text else "cpsc"
        assert b.pool_vocabulary(r) == named


def test_shuffled_answers_give_no_record_its_own_within_its_vocabulary():
    answers = {f"p{i}": f"answer {i}" for i in range(30)}
    groups = {f"p{i}": ("ptbxl", "code15", "cpsc")[i % 3] for i in range(29)}
    groups["p29"] = "alone"  # a group of one keeps its answer
    shuffled = b.shuffled_answers(answers, groups, seed=3)
    assert sorted(shuffled) == sorted(answers) and shuffled["p29"] == "answer 29"
    for rid, text in shuffled.items():
        if rid != "p29":
            assert text != answers[rid]
            source = "p" + text.split()[1]
            assert groups[source] == groups[rid]  # an answer to the same kind of question
    assert sorted(shuffled.values()) == sorted(answers.values())  # a permutation: every answer used once
    assert b.shuffled_answers(answers, groups, seed=3) == shuffled != b.shuffled_answers(answers, groups, seed=4)


def test_pool_item_becomes_a_training_record():
    item = b.PoolItem("p1", "train/p1.png", "<image>\nWhich diagnostic superclasses describe this ECG?")
    record = item.with_answer("MI(myocardial infarction)")
    assert record.answer == "MI(myocardial infarction)" and not record.labels and not record.meta


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({"id": "x"}, "expected a list"),
        ([{"id": "p", "image": "a.png"}], "field 'question'"),
        ([{"id": "p", "image": "a.png", "question": "<image>\nq", "answer": "NORM"}], "do not belong in a pool"),
        ([{"id": "p", "image": "a.png", "question": "no image token"}], "row 0"),
        ([3], "row 0 is a int"),
    ],
)
def test_load_pool_names_the_fault(tmp_path, rows, message):
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(b.BudgetError, match=message):
        b.load_pool(path)


def test_load_answers_reads_prediction_rows_and_names_a_bad_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"question_id": "a", "text": "NORM"}\n\n{"question_id": "b", "text": ""}\n')
    assert b.load_answers(path) == {"a": "NORM", "b": ""}
    path.write_text('{"question_id": "a", "text": "NORM"}\n{"question_id": 3, "text": "x"}\n')
    with pytest.raises(b.BudgetError, match=r"answers.jsonl:2: expected an object with a string 'question_id'"):
        b.load_answers(path)
    path.write_text("not json\n")
    with pytest.raises(b.BudgetError, match=r"answers.jsonl:1: not JSON"):
        b.load_answers(path)
