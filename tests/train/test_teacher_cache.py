"""The teacher-output cache: the losses see from it what they see from the live teacher, it is keyed and refused
with a reason, it checks the disk first, and a KD run with it loads no teacher weights."""

from __future__ import annotations

import json
import shutil
from itertools import chain
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from evl_ecg.distill.presets import get_preset, list_presets
from evl_ecg.train.teacher_cache import (
    BUILD_FILE,
    CACHE_FILE,
    TeacherCache,
    TeacherCacheError,
    build_teacher_cache,
    cache_key,
    open_or_build,
    spec_fields,
)
from evl_ecg.train.teacher_cache import build as cache_build

TEACHER_METHODS = [m for m in list_presets() if spec_fields(get_preset(m)) is not None]


@pytest.fixture(scope="module")
def adapters(tiny_checkpoints):
    from evl_ecg.models import load_adapter

    return SimpleNamespace(
        student=load_adapter(tiny_checkpoints["student"]), teacher=load_adapter(tiny_checkpoints["teacher"])
    )


def _config(tiny_config, tiny_corpus, tiny_checkpoints, tmp: Path, **kwargs):
    base = dict(
        phase="kd",
        student=str(tiny_checkpoints["student"]),
        teacher=str(tiny_checkpoints["teacher"]),
        teacher_cache=str(tmp / "cache"),
        max_train_samples=8,
        per_device_train_batch_size=4,
    )
    return tiny_config(tmp / "run", tiny_corpus, **{**base, **kwargs})


def _open(cfg, **kwargs) -> TeacherCache:
    from evl_ecg.train.pipeline import image_loader, load_training_records

    return open_or_build(cfg, load_training_records(cfg), image_loader(cfg), log=None, **kwargs)


def _label_sets(cfg, records):
    """The candidates of each label-set question, where the method's loss reads them (as pipeline.run passes)."""
    from evl_ecg.data.label_sets import training_candidates

    return training_candidates(records) if "label_logliks" in (spec_fields(get_preset(cfg.method)) or ()) else None


def _batches(cfg, adapters, cache: TeacherCache, indices: list[int]):
    from evl_ecg.train.paired import PairedCollator, PairedDataset
    from evl_ecg.train.pipeline import image_loader, load_training_records

    records, loader = load_training_records(cfg), image_loader(cfg)
    student, teacher = adapters.student, adapters.teacher
    sets = _label_sets(cfg, records)
    live_ds = PairedDataset(records, loader, teacher, student, label_sets=sets)
    cached_ds = PairedDataset(records, loader, cache, student, label_sets=sets)
    assert cached_ds.teacher is None  # the cache encodes nothing of the teacher
    live = PairedCollator(student, teacher)([live_ds[i] for i in indices])
    cached = PairedCollator(student, cache)([cached_ds[i] for i in indices])
    return live, cached


def _grads(*modules: torch.nn.Module) -> dict[str, torch.Tensor]:
    named = chain.from_iterable(m.named_parameters(prefix=str(k)) for k, m in enumerate(modules))
    return {n: p.grad.detach().clone() for n, p in named if p.grad is not None}


def _assert_same_step(a, b, grads_a, grads_b, rel: float = 1e-5, rtol: float = 1e-4) -> None:
    if "loss/label_kd" in a.logs:  # the batch asks label-set questions: the comparison is not of two zeros
        assert float(a.logs["label_kd/samples"]) > 0 and float(a.logs["loss/label_kd"]) > 0
    for key, value in a.logs.items():
        if key.startswith("loss/"):
            assert float(b.logs[key]) == pytest.approx(float(value), rel=rel, abs=1e-6), key
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=rtol, atol=1e-6, msg=name)


#: MHCA keyed on the teacher's text positions, its queries on the student's response positions (the label study's
#: ``seq-kd+evl-ecg-keys-text``): the cache must hold more of the teacher than the queries' positions
KEYS_TEXT = ("hidden_positions=response", "objective={terms: {mhca: {teacher_positions: text}}}")


@pytest.mark.parametrize(
    "method, sets", [(m, ()) for m in TEACHER_METHODS] + [("evl-ecg", KEYS_TEXT)], ids=[*TEACHER_METHODS, "keys-text"]
)
def test_every_method_reads_from_the_cache_what_it_reads_from_the_live_teacher(
    method, sets, tmp_path, tiny_corpus, tiny_checkpoints, tiny_config, adapters
):
    """Each preset with a cache of only its own fields: same loss terms and same gradients (student and objective)
    as with the live teacher. The batch holds the records of one build batch in another order (same padded length,
    so the live forward is the build's, bit for bit): what is left to differ is the cache itself (its storage of
    valid positions and response rows, the rebuilt padding, masks, image positions and shared tensors). Batches of
    other compositions: the trainer test below."""
    from evl_ecg.train.pipeline import build_objective

    cfg = _config(tiny_config, tiny_corpus, tiny_checkpoints, tmp_path, method=method, sets=list(sets))
    cache = _open(cfg)
    assert cache.fields == spec_fields(get_preset(method))
    from evl_ecg.train.teacher_side import TeacherSide

    assert isinstance(cache, TeacherSide) and cache.encodes is None  # one of the teacher's sides: nothing to encode
    student, teacher = adapters.student, adapters.teacher
    torch.manual_seed(0)
    objective = build_objective(cfg, student, teacher)
    torch.manual_seed(0)
    from_cache = build_objective(cfg, student, cache)  # the cache stands in for the teacher's sizes and vocabulary
    assert all(torch.equal(p, q) for p, q in zip(objective.parameters(), from_cache.parameters(), strict=True))
    live_batch, cached_batch = _batches(cfg, adapters, cache, [6, 4, 7, 5])
    assert "teacher" not in cached_batch and cached_batch["indices"] == [6, 4, 7, 5]
    assert torch.equal(live_batch["teacher"]["input_ids"], cached_batch["teacher_cache"]["input_ids"])

    def step(teacher_outputs):
        objective.zero_grad(set_to_none=True)
        student.model.zero_grad(set_to_none=True)
        out = objective(student.forward(cached_batch["student"], requires=objective.requires), teacher_outputs)
        out.loss.backward()
        return out, _grads(student.model, objective)

    with torch.no_grad():
        live = teacher.forward(live_batch["teacher"], requires=objective.requires).detached()
    a, grads_a = step(live)
    b, grads_b = step(cache.side_outputs(cached_batch["teacher_cache"]))
    _assert_same_step(a, b, grads_a, grads_b, rel=1e-6, rtol=1e-6)


@pytest.mark.parametrize("method", ["evl-ecg", "vanilla-kl", "label-kd"])
def test_a_kd_step_of_the_trainer_from_the_cache_equals_one_with_the_live_teacher(
    method, tmp_path, tiny_corpus, tiny_checkpoints, tiny_config, adapters
):
    """Through EvlTrainer: its data loader (collator with the cache, no teacher encoding), input preparation, global
    denominators and compute_loss; same loss and gradients."""
    from evl_ecg.train.paired import PairedCollator, PairedDataset
    from evl_ecg.train.pipeline import build_objective, image_loader, load_training_records
    from evl_ecg.train.trainer import DistillModule, EvlTrainer

    cfg = _config(tiny_config, tiny_corpus, tiny_checkpoints, tmp_path, method=method, per_device_train_batch_size=3)
    cache = _open(cfg)
    records, loader = load_training_records(cfg), image_loader(cfg)
    student, teacher = adapters.student, adapters.teacher

    def one_step(live: bool):
        torch.manual_seed(0)
        side = teacher if live else cache
        objective = build_objective(cfg, student, side)
        module = DistillModule(student, objective, requires=objective.requires)
        trainer = EvlTrainer(
            model=module,
            args=cfg,
            train_dataset=PairedDataset(records, loader, side, student, label_sets=_label_sets(cfg, records)),
            data_collator=PairedCollator(student, side),
            teacher=side,
        )
        batch = next(iter(trainer.get_train_dataloader()))
        assert ("teacher" in batch) is live and ("teacher_cache" in batch) is not live
        inputs = trainer._prepare_inputs(batch)
        module.zero_grad(set_to_none=True)
        loss, out = trainer.compute_loss(
            module,
            inputs,
            return_outputs=True,
            num_items_in_batch=trainer._get_num_items_in_batch([inputs], trainer.args.device),
        )
        loss.backward()
        return batch["ids"], out, _grads(module)

    ids_a, a, grads_a = one_step(live=True)
    ids_b, b, grads_b = one_step(live=False)
    assert ids_a == ids_b
    _assert_same_step(a, b, grads_a, grads_b)


def test_distill_builds_the_cache_then_reuses_it_without_loading_the_teacher(
    tmp_path, tiny_corpus, tiny_checkpoints, tiny_config, monkeypatch
):
    """pipeline.run: the first run builds the cache (random state untouched: it trains as a live run does), the
    second reuses it without loading the teacher, and all three runs log the same losses."""
    import evl_ecg.models
    from evl_ecg.train import pipeline

    def cfg(name: str, **kwargs):
        return _config(tiny_config, tiny_corpus, tiny_checkpoints, tmp_path / name, method="evl-ecg", **kwargs)

    cache_dir = str(tmp_path / "cache")
    live = pipeline.run(cfg("live", teacher_cache=None))
    built = pipeline.run(cfg("built", teacher_cache=cache_dir))
    stamp = (Path(cache_dir) / CACHE_FILE).stat().st_mtime_ns
    loaded: list[Path] = []
    real = evl_ecg.models.load_adapter

    def recording(path, **kwargs):
        loaded.append(Path(path).resolve())
        return real(path, **kwargs)

    monkeypatch.setattr(pipeline, "load_adapter", recording)
    monkeypatch.setattr(evl_ecg.models, "load_adapter", recording)
    reused = pipeline.run(cfg("reused", teacher_cache=cache_dir))
    assert loaded == [Path(tiny_checkpoints["student"]).resolve()]  # the student only: no teacher weights
    assert (Path(cache_dir) / CACHE_FILE).stat().st_mtime_ns == stamp

    def totals(result):
        return [h["loss/total"] for h in result.log_history if "loss/total" in h]

    assert len(totals(live)) == 2 and totals(built) == totals(reused)
    assert totals(built) == pytest.approx(totals(live), rel=1e-5)
    provenance = json.loads((tmp_path / "reused" / "run" / "provenance.json").read_text())
    assert provenance["teacher_cache"]["fields"] == ["hidden", "visual"]
    assert provenance["teacher_cache"]["records"] == 8


def _copy_corpus(corpus: Path, to: Path) -> Path:
    to.mkdir(parents=True)
    for name in ("train.json", "manifest.json"):
        shutil.copy(corpus / name, to / name)
    (to / "images").symlink_to(corpus / "images", target_is_directory=True)
    return to


def test_a_cache_is_refused_for_another_max_length_data_teacher_or_objective(
    tmp_path, tiny_corpus, tiny_checkpoints, tiny_config
):
    cache_dir = tmp_path / "cache"

    def cfg(**kwargs):
        kwargs = {"method": "vanilla-kl", "max_train_samples": 4, **kwargs}
        return _config(tiny_config, tiny_corpus, tiny_checkpoints, tmp_path, **kwargs)

    cache = _open(cfg())
    assert _open(cfg()).key == cache.key  # the same key: reused
    assert len(_open(cfg(max_train_samples=3))) == 4  # the first records of the same data: served
    built_for = rf"^teacher cache {cache_dir} was built for "
    with pytest.raises(TeacherCacheError, match=built_for + r"max_length 4096, this run's is 512: use another"):
        _open(cfg(max_length=512))

    other = _copy_corpus(tiny_corpus, tmp_path / "other-data")
    records = json.loads((other / "train.json").read_text())
    records[0]["conversations"][1]["value"] += " (edited)"
    (other / "train.json").write_text(json.dumps(records))
    with pytest.raises(TeacherCacheError, match=built_for + r"training file sha [0-9a-f]{12}, this run's is [0-9a-f]"):
        _open(cfg(train_file=str(other / "train.json")))
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "seed": -1}))
    with pytest.raises(TeacherCacheError, match=built_for + r"data manifest sha [0-9a-f]{12}, this run's is [0-9a-f]"):
        _open(cfg(train_file=str(other / "train.json")))

    teacher = Path(shutil.copytree(tiny_checkpoints["teacher"], tmp_path / "other-teacher"))
    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**config, "evl_ecg_test_key": 1}))
    with pytest.raises(TeacherCacheError, match=built_for + r"teacher fingerprint .*\(config.json differs\)"):
        _open(cfg(teacher=str(teacher)))

    with pytest.raises(TeacherCacheError, match=r"this run's objective also reads \['hidden', 'visual'\]"):
        _open(cfg(method="evl-ecg"))
    with pytest.raises(TeacherCacheError, match=rf"{cache_dir} holds 4 records of this data, this run uses 6"):
        _open(cfg(max_train_samples=6))
    with pytest.raises(TeacherCacheError, match="record 1 is .* in the cache, 'x' in this batch"):
        cache.collate([0, 1], [cache.ids[0], "x"])

    (tmp_path / "not-a-cache").mkdir()
    (tmp_path / "not-a-cache" / "notes.txt").write_text("mine")
    with pytest.raises(TeacherCacheError, match="is not empty and holds no cache"):
        _open(cfg(teacher_cache=str(tmp_path / "not-a-cache")))


def test_the_build_prints_its_size_first_and_refuses_a_disk_without_room(
    tmp_path, tiny_corpus, tiny_checkpoints, tiny_config, monkeypatch
):
    from evl_ecg.train.pipeline import image_loader, load_training_records

    cfg = _config(tiny_config, tiny_corpus, tiny_checkpoints, tmp_path, method="evl-ecg", max_train_samples=4)
    records = load_training_records(cfg)
    lines: list[str] = []
    full = SimpleNamespace(total=10**9, used=10**9 - 1000, free=1000)
    monkeypatch.setattr(cache_build.shutil, "disk_usage", lambda path: full)
    with pytest.raises(
        TeacherCacheError, match=r"needs about .* \(4 records x .*\) but only 1.0 kB are free there$"
    ) as e:
        open_or_build(cfg, records, image_loader(cfg), log=lines.append)
    assert "\n" not in str(e.value)
    assert len(lines) == 1 and lines[0].startswith("teacher cache: 4 records x ") and "1.0 kB free" in lines[0]
    assert not (tmp_path / "cache").exists()  # nothing was written
    monkeypatch.undo()
    lines.clear()
    cache = open_or_build(cfg, records, image_loader(cfg), log=lines.append)
    estimate = float(lines[0].split("= about ")[1].split()[0])
    unit = lines[0].split("= about ")[1].split()[1]
    written = cache.meta["bytes"] / {"kB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
    assert 0.5 < written / estimate < 2  # record 0 times the count: the right size within a factor of two


def test_a_killed_build_continues_from_its_last_complete_shard(
    tmp_path, tiny_corpus, tiny_checkpoints, tiny_config, adapters
):
    from evl_ecg.train.pipeline import image_loader, load_training_records

    cfg = _config(tiny_config, tiny_corpus, tiny_checkpoints, tmp_path, max_train_samples=6)
    records, loader = load_training_records(cfg), image_loader(cfg)
    key = cache_key(cfg.teacher, cfg.train_file, cfg.max_length, ["hidden", "logits"])
    directory = tmp_path / "cache"

    class Killed(Exception):
        pass

    def kill_after_the_first_shard(message: str) -> None:
        if "shard 1/3 written" in message:
            raise Killed

    build = dict(batch_size=2, log=kill_after_the_first_shard)
    with pytest.raises(Killed):
        build_teacher_cache(directory, adapters.teacher, records, loader, key, shard_records=2, **build)
    assert (directory / BUILD_FILE).is_file() and not (directory / CACHE_FILE).exists()
    first = (directory / "shard-00000.safetensors").read_bytes()
    with pytest.raises(TeacherCacheError, match="no cache.json"):
        TeacherCache(directory)
    lines: list[str] = []
    cache = build_teacher_cache(directory, adapters.teacher, records, loader, key, batch_size=2, log=lines.append)
    assert lines[0].startswith("teacher cache: 4 records x ")  # the two records of shard 1 were not redone
    assert (directory / "shard-00000.safetensors").read_bytes() == first and not (directory / BUILD_FILE).exists()
    fresh = build_teacher_cache(tmp_path / "fresh", adapters.teacher, records, loader, key, batch_size=3, log=None)
    for i in range(len(records)):
        a, b = cache.record(i), fresh.record(i)
        assert a.keys() == b.keys() == {"input_ids", "labels", "token_offsets", "hidden", "logits"}
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-5)


def test_the_cache_command_builds_for_several_methods_and_distill_reuses_or_refuses_it(
    tmp_path, tiny_corpus, tiny_checkpoints
):
    """`evl-ecg train cache --method A --method B` stores the union of what they read; `evl-ecg distill
    --teacher-cache` reuses it for either, and refuses it with one line for a third that reads more."""
    from typer.testing import CliRunner

    from evl_ecg.cli import app

    cache, data = tmp_path / "cache", str(tiny_corpus / "train.json")
    common = ["--data", data, "--teacher", str(tiny_checkpoints["teacher"]), "--set", "max_train_samples=4"]
    built = CliRunner().invoke(
        app, ["train", "cache", "--out", str(cache), "--method", "evl-ecg", "--method", "uld", *common]
    )
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout[built.stdout.index("{") :])["fields"] == ["hidden", "logits", "visual"]
    assert "teacher cache: 4 records x " in built.stderr

    def distill(method: str):
        args = ["distill", "--method", method, "--teacher-cache", str(cache), "--out", str(tmp_path / method)]
        args += ["--student", str(tiny_checkpoints["student"]), *common]
        args += ["--set", "max_steps=1", "--set", "save_strategy=no", "--set", "disable_tqdm=true"]
        return CliRunner().invoke(app, args)

    assert distill("uld").exit_code == 0
    served = json.loads((tmp_path / "uld" / "provenance.json").read_text())["teacher_cache"]
    assert served["fields"] == ["hidden", "logits", "visual"] and served["served"] == ["logits"]  # reads no more
    refused = distill("dskd")
    assert refused.exit_code == 1
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: teacher cache {cache} was built for fields ['hidden', 'logits', 'visual'], ")
    assert "also reads ['embedding_weight', 'lm_head_weight']" in line
