"""Vision pretraining of the tiny models: only the vision tower moves, a seed fixes the result, no head is saved."""

import numpy as np
import pytest
import torch

from evl_ecg.models import build_tiny_student, build_tiny_teacher, load_adapter
from evl_ecg.models.pretrain import FINDING_CODES, make_example, make_pool, pretrain_vision, vision_module

from .conftest import corpus

BUILDERS = {"teacher": build_tiny_teacher, "student": build_tiny_student}
TOWER_PREFIX = {"teacher": "model.vision_tower.", "student": "model.visual."}
#: the one layer outside the tower that absorbs the head's standardisation (``fold_standardization``)
FOLDED = {"teacher": "model.multi_modal_projector.linear_1.", "student": "model.visual.merger.linear_fc2."}


@pytest.fixture(scope="module")
def texts():
    return corpus()


def _state(adapter):
    return {k: v.detach().clone() for k, v in adapter.model.state_dict().items()}


def _pretrain(adapter, seed=0):
    return pretrain_vision(adapter, n_records=6, seed=seed, steps=2, batch_size=3, lr=1e-2, n_eval=0, log=None)


@pytest.mark.parametrize("side", ["teacher", "student"])
def test_pretraining_moves_only_the_vision_tower(side, texts):
    adapter = BUILDERS[side](texts, seed=0)
    before = _state(adapter)
    grads_before = {n: p.requires_grad for n, p in adapter.model.named_parameters()}
    metrics = _pretrain(adapter)
    after = _state(adapter)
    assert set(after) == set(before)  # no head, nothing added
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "pretraining changed nothing"
    assert all(k.startswith((TOWER_PREFIX[side], FOLDED[side])) for k in changed), sorted(changed)[:5]
    assert {FOLDED[side] + "weight", FOLDED[side] + "bias"} <= changed
    assert {n: p.requires_grad for n, p in adapter.model.named_parameters()} == grads_before
    assert not adapter.model.training
    assert all(p.grad is None for p in adapter.model.parameters())
    assert metrics["steps"] == 2 and metrics["records"] == 6 and metrics["seconds"] >= 0
    expected = adapter.model.model.vision_tower if side == "teacher" else adapter.model.model.visual
    assert vision_module(adapter) is expected


def test_pretraining_is_deterministic_for_a_seed(texts):
    a, b, c = (build_tiny_teacher(texts, seed=0) for _ in range(3))
    _pretrain(a, seed=1)
    _pretrain(b, seed=1)
    _pretrain(c, seed=2)
    sa, sb, sc = _state(a), _state(b), _state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_records_are_seeded_and_labelled():
    png, target = make_example(0, 7, 3)
    assert make_example(0, 7, 3)[0] == png
    assert target.shape == (len(FINDING_CODES),) and target.sum() >= 1  # a rhythm at least
    assert sum(target[FINDING_CODES.index(r)] for r in ("SR", "SB", "STACH", "AF")) == 1
    images, targets = make_pool(0, 7, 4, workers=1)
    assert images[3] == png and np.array_equal(targets[3], target)


def test_saved_model_has_no_head(texts, tmp_path):
    adapter = build_tiny_student(texts, seed=0)
    _pretrain(adapter)
    adapter.save_pretrained(tmp_path)
    loaded = load_adapter(tmp_path)
    state = loaded.model.state_dict()
    assert not any("head" in k and "lm_head" not in k for k in state)
    ref = adapter.model.state_dict()
    assert all(torch.equal(ref[k], state[k]) for k in ref)


def test_save_compact_halves_the_weights_and_loads_float32(texts, tmp_path):
    from evl_ecg.models.tiny import save_compact

    adapter = build_tiny_teacher(texts, seed=0)
    before = _state(adapter)
    save_compact(adapter, tmp_path / "half")
    adapter.save_pretrained(tmp_path / "full")
    assert all(torch.equal(before[k], v) for k, v in adapter.model.state_dict().items())  # model unchanged
    half, full = (tmp_path / d / "model.safetensors" for d in ("half", "full"))
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_adapter(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    state = loaded.model.state_dict()
    assert all(torch.allclose(before[k], state[k], atol=1e-3, rtol=1e-3) for k in before)


def _images(n, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)) for _ in range(n)]


def test_token_features_are_what_the_projector_reads(texts):
    from evl_ecg.models.pretrain import token_features

    adapter = build_tiny_teacher(texts, seed=0)
    images = _images(2)
    with torch.no_grad():
        tokens = token_features(adapter, images)
        pixel_values = adapter.collate_images([adapter.process_image(i)[0] for i in images])["pixel_values"]
        projected = adapter.model.model.get_image_features(
            pixel_values=pixel_values, vision_feature_layer=-2, vision_feature_select_strategy="default"
        ).pooler_output
    assert [tuple(t.shape) for t in tokens] == [(196, 64), (196, 64)]  # 14 x 14 patches, CLS dropped
    for k in range(2):
        torch.testing.assert_close(adapter.model.model.multi_modal_projector(tokens[k]), projected[k])


def test_token_head_pools_token_logits_as_mean_plus_max_over_two():
    from evl_ecg.models.pretrain import TokenHead

    torch.manual_seed(0)
    head = TokenHead(3, 2).eval()
    head.norm.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
    head.norm.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
    tokens = [torch.randn(5, 3), torch.randn(2, 3)]
    with torch.no_grad():
        out = head(tokens)
        for k, t in enumerate(tokens):
            z = (
                (t - head.norm.running_mean) / torch.sqrt(head.norm.running_var + head.norm.eps)
            ) @ head.linear.weight.T
            z = z + head.linear.bias
            torch.testing.assert_close(out[k], 0.5 * (z.mean(0) + z.max(0).values))


@pytest.mark.parametrize("side", ["teacher", "student"])
def test_fold_standardization_is_exact(side, texts):
    """After the fold, the model reads (h - mean) / sqrt(var + eps) where it read h: checked on the projector (LLaVA)
    and on the merger output (Qwen3-VL) against the standardisation written out by hand."""
    from evl_ecg.models.pretrain import fold_standardization, token_features

    adapter = BUILDERS[side](texts, seed=0)
    images = _images(2, seed=1)
    with torch.no_grad():
        tokens = token_features(adapter, images)
    dim = tokens[0].shape[-1]
    mean, var = torch.linspace(-1.0, 1.0, dim), torch.linspace(0.5, 3.0, dim)
    standardised = [(t - mean) / torch.sqrt(var + 1e-5) for t in tokens]
    if side == "teacher":
        projector = adapter.model.model.multi_modal_projector
        with torch.no_grad():
            expected = [projector(t) for t in standardised]
        fold_standardization(adapter, mean, var)
        with torch.no_grad():
            got = [projector(t) for t in tokens]
    else:
        expected = standardised
        fold_standardization(adapter, mean, var)
        with torch.no_grad():
            got = token_features(adapter, images)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)


def test_generator_two_draws_with_generator_two_spec_and_signal():
    """The pool follows the corpus' generator: generator 2's findings draw and the signal of ``synth_v2.generate``
    (called here directly, not through ``synth.generate``'s dispatch), so another example than generator 1's."""
    import io

    from PIL import Image

    from evl_ecg.ecg import synth_v2
    from evl_ecg.ecg.render import Augment, RenderSpec, render
    from evl_ecg.ecg.synth import sample_spec
    from evl_ecg.models.pretrain import PRETRAIN_KEY, _vocabularies

    png1, target1 = make_example(0, PRETRAIN_KEY, 5)
    png2, target2 = make_example(0, PRETRAIN_KEY, 5, generator=2)
    assert png1 != png2
    ss_spec, ss_signal, ss_render = np.random.SeedSequence(0, spawn_key=(PRETRAIN_KEY, 5)).spawn(3)
    rng_spec = np.random.default_rng(ss_spec)
    vocabularies, weights = _vocabularies()
    vocabulary = vocabularies[int(rng_spec.choice(len(vocabularies), p=weights))]
    spec = sample_spec(rng_spec, vocabulary=vocabulary, generator=2)
    assert target2.tolist() == [float(code in spec.findings) for code in FINDING_CODES]
    ecg = synth_v2.generate(spec, seed=int(ss_signal.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
    rng_render = np.random.default_rng(ss_render)
    augmented, strength = rng_render.random() < 0.5, rng_render.uniform(0.2, 1.0)
    seed = int(rng_render.integers(2**31))
    image = render(ecg, RenderSpec(), augment=Augment.random(rng_render, strength) if augmented else None, seed=seed)
    got = Image.open(io.BytesIO(png2)).convert("RGB")
    assert np.array_equal(np.asarray(got), np.asarray(image.convert("RGB")))
    assert make_pool(0, PRETRAIN_KEY, 6, workers=2, generator=2)[0][5] == png2


def test_training_pipeline_pretrains_on_the_corpus_generator(tmp_path, monkeypatch):
    import json

    import evl_ecg.models.pretrain as pretrain
    from evl_ecg.data.corpus import corpus_generator
    from evl_ecg.train.config import EvlConfig
    from evl_ecg.train.pipeline import pretrain_tiny_vision

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.json").write_text("[]")
    manifest = {"format": "evl-ecg synthetic corpus v1", "settings": {"generator": 2, "seed": 3}}
    (corpus / "manifest.json").write_text(json.dumps(manifest))
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "train.json").write_text("[]")
    assert corpus_generator(corpus / "train.json") == 2 and corpus_generator(bare / "train.json") is None
    seen = []
    monkeypatch.setattr(pretrain, "pretrain_vision", lambda adapter, **kw: seen.append(kw["generator"]) or {})
    for folder, override, want in ((corpus, None, 2), (bare, None, 1), (corpus, 1, 1)):
        config = EvlConfig(
            phase="teacher",
            train_file=str(folder / "train.json"),
            output_dir=str(tmp_path / "out"),
            pretrain_vision_steps=1,
            pretrain_vision_generator=override,
            use_cpu=True,
        )
        pretrain_tiny_vision(config, adapter=None)
        assert seen[-1] == want


def test_exact_fold_standardises_the_final_towers_tokens(texts):
    """``fold="exact"``: after pretraining, the first linear layer of the projector reads the final tower's tokens
    standardised by their own mean and variance over the first training images (computed here independently, in
    numpy, from the trained tower): standardised tokens of those images have mean 0 and variance 1 per dimension."""
    from evl_ecg.models.pretrain import PRETRAIN_KEY, _open, token_features

    adapter = build_tiny_teacher(texts, seed=0)
    fresh = build_tiny_teacher(texts, seed=0).model.model.multi_modal_projector.linear_1
    pretrain_vision(adapter, n_records=6, seed=0, steps=2, batch_size=3, lr=1e-2, n_eval=0, log=None, fold="exact")
    images, _ = make_pool(0, PRETRAIN_KEY, 6)
    with torch.no_grad():
        tokens = torch.cat(token_features(adapter, [_open(b) for b in images])).double().numpy()
    mean, std = tokens.mean(0), np.sqrt(tokens.var(0) + 1e-5)
    linear = adapter.model.model.multi_modal_projector.linear_1
    # W' = W / s, b' = b - W' m with the freshly built W, b: recover them and compare with numpy's m and s
    w0, b0 = fresh.weight.detach().double().numpy(), fresh.bias.detach().double().numpy()
    w1, b1 = linear.weight.detach().double().numpy(), linear.bias.detach().double().numpy()
    np.testing.assert_allclose(w0 / std[None, :], w1, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(b0 - (w0 / std[None, :]) @ mean, b1, rtol=2e-4, atol=2e-4)


def test_records_pool_uses_only_records_with_findings(texts, tmp_path):
    """``pool_from_records``: labelled records give their image and findings; pool records (no labels) give
    nothing, so changing them changes no weight."""
    from PIL import Image

    from evl_ecg.models.pretrain import pool_from_records

    images = {f"r{i}": img for i, img in enumerate(_images(4, seed=3))}
    labelled = [
        {"id": "r0", "labels": {"findings": ["SR", "AF"]}},
        {"id": "r1", "labels": {"findings": ["MI"]}},
    ]
    pool_a = [{"id": "r2"}, {"id": "r3", "labels": {}}]
    pool_b = [{"id": "r2", "labels": {}}, {"id": "r3"}]
    pngs, targets = pool_from_records(labelled + pool_a, lambda r: images[r["id"]])
    assert len(pngs) == 2 and targets.shape == (2, len(FINDING_CODES))
    assert {FINDING_CODES[k] for k in np.flatnonzero(targets[0])} == {"SR", "AF"}
    assert {FINDING_CODES[k] for k in np.flatnonzero(targets[1])} == {"MI"}
    import io

    assert np.array_equal(np.asarray(Image.open(io.BytesIO(pngs[0])).convert("RGB")), np.asarray(images["r0"]))
    states = []
    for pool in (pool_a, pool_b):
        adapter = build_tiny_student(texts, seed=0)
        pool_data = pool_from_records(labelled + pool, lambda r: images[r["id"]])
        metrics = pretrain_vision(
            adapter, n_records=10, seed=0, steps=2, batch_size=2, lr=1e-2, n_eval=0, log=None, pool=pool_data
        )
        assert metrics["records"] == 2 and metrics["data"] == "records"
        states.append(_state(adapter))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
