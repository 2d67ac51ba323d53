"""Synthetic corpus: layout, validity, determinism across worker counts, resumption, split independence."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

pytest.importorskip("evl_ecg.ecg.render")
pytest.importorskip("evl_ecg.ecg.synth")

from evl_ecg.data import corpus  # noqa: E402
from evl_ecg.data.records import load_records, open_image  # noqa: E402
from evl_ecg.ecg.labels import CODE15_LABELS, CPSC_LABELS, PTBXL_SUPERCLASSES  # noqa: E402

N_TRAIN, N_BENCH, SIZE = 6, 2, (160, 120)
SUBSETS = ("ptb-test", "code15-test", "cpsc-test", "csn-test-no-cot", "g12-test-no-cot", "ecgqa-test")


def build(out: Path, **kw) -> corpus.CorpusResult:
    args = dict(n_train=N_TRAIN, n_bench=N_BENCH, seed=3, workers=1, size=SIZE, progress=False)
    return corpus.build_corpus(out, **(args | kw))


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, corpus.CorpusResult]:
    out = tmp_path_factory.mktemp("corpus") / "a"
    return out, build(out)


def test_layout_records_and_images_are_valid(built):
    out, result = built
    assert result.skipped == []
    assert (out / "train.json").is_file() and not (out / ".parts").exists()
    train = load_records(out / "train.json")
    assert [r.id for r in train] == [f"synth-train-{i:06d}" for i in range(N_TRAIN)]
    for subset in SUBSETS:
        recs = load_records(out / "bench" / f"{subset}.json")
        assert len(recs) == N_BENCH
        for rec in recs:
            assert rec.image.startswith(f"{subset}/") and rec.meta["split"] == subset
            assert open_image(rec, out / "images").size == SIZE
    for rec in train:
        assert open_image(rec, out / "images").size == SIZE


def test_bench_golds_follow_each_subsets_format(built):
    out, _ = built
    vocab = {"ptb-test": PTBXL_SUPERCLASSES, "cpsc-test": CPSC_LABELS}
    for subset, labels in vocab.items():
        key = "ptbxl" if subset == "ptb-test" else "cpsc"
        for rec in load_records(out / "bench" / f"{subset}.json"):
            assert [label for label in labels if label in rec.answer] == rec.labels[key]
            assert rec.labels[key], "sample_spec(vocabulary=...) never draws an empty label set"
    for rec in load_records(out / "bench" / "code15-test.json"):
        expected = [label for label in CODE15_LABELS if label in rec.answer]
        assert expected == rec.labels["code15"] or (rec.answer in {"NORM", "ABNORMAL"} and not rec.labels["code15"])
    for subset in ("csn-test-no-cot", "g12-test-no-cot"):
        for rec in load_records(out / "bench" / f"{subset}.json"):
            assert rec.answer[0] == rec.meta["answer_letter"] and rec.prompt.count("\nH. ") == 1
    for rec in load_records(out / "bench" / "ecgqa-test.json"):
        assert isinstance(rec.answer, list) and set(rec.answer) <= set(rec.meta["options"])


def test_manifest_counts_match_the_files(built):
    out, _ = built
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"train": N_TRAIN, **dict.fromkeys(SUBSETS, N_BENCH)}
    assert manifest["seed"] == 3 and manifest["settings"]["size"] == list(SIZE) and manifest["skipped"] == []
    assert "not clinical" in manifest["note"]
    freq = manifest["label_frequencies"]["ptb-test"]["ptbxl"]
    recs = load_records(out / "bench" / "ptb-test.json")
    assert freq["MI"] == sum("MI" in r.labels["ptbxl"] for r in recs)
    assert sum(manifest["tasks"]["train"].values()) == N_TRAIN
    assert set(manifest["versions"]) >= {"evl_ecg", "numpy", "pillow", "python"}


def test_train_and_bench_never_share_signals(tmp_path):
    seeds = {
        split: {corpus.record_seed(0, split, i).generate_state(2).tobytes() for i in range(500)}
        for split in corpus.SPLITS
    }
    for a in corpus.SPLITS:
        for b in corpus.SPLITS:
            if a < b:
                assert not seeds[a] & seeds[b], (a, b)


def test_same_arguments_give_the_same_bytes_with_two_workers(built, tmp_path):
    out, _ = built
    build(tmp_path / "b", workers=2)
    assert tree_digest(tmp_path / "b") == tree_digest(out)


def test_interrupted_build_resumes_to_the_same_bytes(built, tmp_path, monkeypatch):
    out, _ = built
    real, calls = corpus.make_item, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == N_TRAIN + N_BENCH + 2:  # train and ptb-test chunks saved, code15-test half done
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(corpus, "make_item", dying)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "c")
    assert not (tmp_path / "c" / "manifest.json").exists()
    monkeypatch.setattr(corpus, "make_item", real)
    (tmp_path / "c" / "images" / "train" / "synth-train-000001.png").write_bytes(b"truncated")  # a corrupt image
    result = build(tmp_path / "c")
    # ptb-test comes from its saved chunk; train is redone (one bad image) keeping its 5 good images; the one
    # code15-test image written before the kill is kept
    assert (result.resumed, result.reused, result.rendered) == (N_BENCH, N_TRAIN, 1 + 5 * N_BENCH - 1)
    assert tree_digest(tmp_path / "c") == tree_digest(out)


def test_rebuild_with_other_settings_is_refused(built):
    out, _ = built
    with pytest.raises(corpus.CorpusError, match="seed differ"):
        build(out, seed=4)


def test_failed_items_are_listed_as_skipped(tmp_path, monkeypatch):
    from evl_ecg.ecg import synth

    real = synth.generate

    def flaky(spec, *, seed, **kw):
        if "AF" in spec.findings:
            raise ValueError("cannot make this one")
        return real(spec, seed=seed, **kw)

    monkeypatch.setattr(synth, "generate", flaky)
    result = build(tmp_path / "d", n_train=0, n_bench=6)
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert result.skipped and manifest["skipped"] == result.skipped
    item = result.skipped[0]
    assert item["reason"] == "ValueError: cannot make this one" and item["id"].startswith("synth-")
    listed = {r.id for s in SUBSETS for r in load_records(tmp_path / "d" / "bench" / f"{s}.json")}
    assert item["id"] not in listed and sum(manifest["counts"].values()) == 36 - len(result.skipped)


def test_validation_split_is_in_the_bench_format_and_disjoint_from_train_and_bench(tmp_path):
    out = tmp_path / "v"
    result = build(out, n_val=3)
    bench_seeds, val_seeds, train_seeds = set(), set(), set()
    for rec in load_records(out / "train.json"):
        train_seeds.add(rec.meta["signal_seed"])
    for subset in SUBSETS:
        bench = load_records(out / "bench" / f"{subset}.json")
        val = load_records(out / "val" / f"{subset}.json")
        assert len(val) == 3 and result.counts[f"val-{subset}"] == 3
        for rec in val:  # same task, same question format, an image of its own
            assert rec.meta["split"] == f"val-{subset}" and rec.image.startswith(f"val-{subset}/")
            assert rec.meta["task"] == bench[0].meta["task"]
            assert open_image(rec, out / "images").size == SIZE
        bench_seeds |= {r.meta["signal_seed"] for r in bench}
        val_seeds |= {r.meta["signal_seed"] for r in val}
    assert not val_seeds & bench_seeds and not val_seeds & train_seeds
    # the bench and train bytes do not depend on whether a validation split is drawn
    plain = tmp_path / "plain"
    build(plain)
    for rel in ("train.json", *(f"bench/{s}.json" for s in SUBSETS)):
        assert (plain / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_ecgbench_proportions_scale_the_other_subsets_to_ptb(tmp_path):
    settings = corpus.CorpusSettings(n_train=0, n_bench=500, seed=0, bench_proportions="ecgbench")
    counts = {s: settings.count(s) for s in SUBSETS}
    assert counts["ptb-test"] == 500
    for subset in SUBSETS:
        assert counts[subset] == round(500 * corpus.ECGBENCH_SIZES[subset] / 2082)
    assert "val-ptb-test" not in settings.splits()
