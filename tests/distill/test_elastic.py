"""The elastic ECG embedding: the head, ``matryoshka`` and ``mic`` against references worked out with numpy loops."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import evl_ecg.distill.elastic as elastic
from evl_ecg.distill import Denominators, LossContext, Objective, build_loss, list_presets, registered
from evl_ecg.distill.elastic import (
    embedding_head_of,
    findings_multi_hot,
    scr_penalty,
    self_distillation,
    spectral_gap,
    supcon_sums,
    uniformity,
)
from evl_ecg.models.embedding_head import HEAD_CONFIG, HEAD_WEIGHTS, EmbeddingHead
from evl_ecg.outputs import IGNORE_INDEX, SideOutputs

D_S = 6
PREFIXES = (2, 4, 8)
CTX = LossContext(student_hidden=D_S)
# six records' findings over 4 classes: {0}, {0}, {1, 2}, {1, 2}, {1}, {} -> exact positives for 0-3 only
FINDINGS = torch.tensor(
    [[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float32
)


def _side(b: int = 6, seed: int = 0, dtype: torch.dtype = torch.float32) -> SideOutputs:
    """``b`` samples of ``[prompt 1][visual n_b][prompt 1][response 2][padding]`` with random hidden states."""
    g = torch.Generator().manual_seed(seed)
    visual = [2 + (i % 3) for i in range(b)]
    length = max(visual) + 4 + 1
    mask = torch.zeros(b, length, dtype=torch.bool)
    text = torch.zeros(b, length, dtype=torch.bool)
    labels = torch.full((b, length), IGNORE_INDEX)
    for i, n in enumerate(visual):
        valid = n + 4
        mask[i, :valid] = True
        text[i, :valid] = True
        text[i, 1 : 1 + n] = False  # the image positions
        labels[i, n + 2 : n + 4] = 3
    hidden = torch.randn(b, length, D_S, generator=g, dtype=torch.float64).to(dtype)
    hidden[~mask] = float("nan")  # padding must never take part
    return SideOutputs(
        logits=torch.zeros(b, length, 5, dtype=dtype),
        hidden=hidden.requires_grad_(True),
        attention_mask=mask,
        labels=labels,
        text_mask=text,
    )


def _take(side: SideOutputs, idx: slice) -> SideOutputs:
    return SideOutputs(
        logits=side.logits[idx],
        hidden=side.hidden[idx],
        attention_mask=side.attention_mask[idx],
        labels=side.labels[idx],
        text_mask=side.text_mask[idx],
    )


# ---- numpy references ------------------------------------------------------------------------------------------
def _np_embedding(side: SideOutputs, weight: np.ndarray, positions: str = "visual") -> np.ndarray:
    hidden = side.hidden.detach().double().numpy()
    out = []
    for b in range(hidden.shape[0]):
        rows = []
        for pos in range(hidden.shape[1]):
            valid = bool(side.attention_mask[b, pos])
            is_text = bool(side.text_mask[b, pos])
            is_resp = int(side.labels[b, pos]) != IGNORE_INDEX
            keep = {"visual": valid and not is_text, "prompt": valid and not is_resp, "all": valid}[positions]
            if keep:
                rows.append(hidden[b, pos])
        mean = np.sum(rows, axis=0) / len(rows)
        out.append(weight @ mean)
    return np.array(out)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / math.sqrt(float(np.dot(v, v)))


def _np_supcon(z: np.ndarray, y: np.ndarray, tau: float, how: str) -> tuple[float, int]:
    b = z.shape[0]
    u = [_unit(z[i]) for i in range(b)]
    total, anchors = 0.0, 0
    for i in range(b):
        weights = []
        for j in range(b):
            if j == i:
                weights.append(0.0)
            elif how == "exact":
                weights.append(1.0 if np.array_equal(y[i], y[j]) else 0.0)
            else:
                inter = sum(1 for c in range(y.shape[1]) if y[i, c] and y[j, c])
                union = sum(1 for c in range(y.shape[1]) if y[i, c] or y[j, c])
                weights.append(1.0 if union == 0 else inter / union)
        if sum(weights) == 0:
            continue
        denom = sum(math.exp(np.dot(u[i], u[a]) / tau) for a in range(b) if a != i)
        li = 0.0
        for j in range(b):
            if weights[j]:
                li -= weights[j] * (np.dot(u[i], u[j]) / tau - math.log(denom))
        total += li / sum(weights)
        anchors += 1
    return total, anchors


def _np_scr(z: np.ndarray, prefixes: tuple[int, ...], eps: float = 1e-5) -> float:
    b, d_full = z.shape
    std = np.zeros_like(z)
    for d in range(d_full):
        mean = sum(z[i, d] for i in range(b)) / b
        var = sum((z[i, d] - mean) ** 2 for i in range(b)) / b
        for i in range(b):
            std[i, d] = (z[i, d] - mean) / math.sqrt(var + eps)
    blocks = []
    for m in prefixes[:-1]:
        acc = 0.0
        for p in range(m):
            for r in range(m, d_full):
                c = sum(std[i, p] * std[i, r] for i in range(b)) / b
                acc += c * c
        blocks.append(acc / (m * (d_full - m)))
    return sum(blocks) / len(blocks)


def _np_uniformity(z: np.ndarray, t: float = 2.0) -> float:
    u = [_unit(row) for row in z]
    b = len(u)
    acc = sum(math.exp(-t * float(np.sum((u[i] - u[j]) ** 2))) for i in range(b) for j in range(b) if i != j)
    return math.log(acc / (b * (b - 1)))


def _np_spectral(z: np.ndarray) -> float:
    u = np.array([_unit(row) for row in z])
    c = u - u.mean(axis=0)
    lam = np.linalg.eigvalsh(c.T @ c / u.shape[0])
    p = lam / lam.sum()
    return float(np.sum((p - 1.0 / u.shape[1]) ** 2))


def _np_softmax_rows(u: list[np.ndarray], tau: float) -> list[list[float]]:
    b = len(u)
    rows = []
    for i in range(b):
        e = [math.exp(np.dot(u[i], u[j]) / tau) if j != i else 0.0 for j in range(b)]
        rows.append([x / sum(e) for x in e])
    return rows


def _np_sd(prefix: np.ndarray, full: np.ndarray, tau: float = 0.1) -> float:
    p = _np_softmax_rows([_unit(r) for r in prefix], tau)
    q = _np_softmax_rows([_unit(r) for r in full], tau)
    b = len(p)
    return sum(q[i][j] * math.log(q[i][j] / p[i][j]) for i in range(b) for j in range(b) if j != i) / b


def _np_bce(logits: np.ndarray, y: np.ndarray) -> float:
    total = 0.0
    for b in range(logits.shape[0]):
        acc = 0.0
        for c in range(logits.shape[1]):
            s = 1.0 / (1.0 + math.exp(-logits[b, c]))
            acc -= y[b, c] * math.log(s) + (1 - y[b, c]) * math.log(1 - s)
        total += acc / logits.shape[1]
    return total


def _weight(loss: torch.nn.Module) -> np.ndarray:
    return loss.head.proj.weight.detach().double().numpy()


def _z(n: int = 6, d: int = 8, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- the head --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("positions", ["visual", "prompt", "all"])
def test_head_pools_the_stated_positions_and_maps_linearly(positions: str) -> None:
    torch.manual_seed(0)
    head = EmbeddingHead(D_S, prefixes=PREFIXES, positions=positions)
    side = _side()
    out = head.embed(side).detach().double().numpy()
    ref = _np_embedding(side, head.proj.weight.detach().double().numpy(), positions)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert out.shape == (6, PREFIXES[-1])


def test_head_refuses_a_sample_without_positions_to_pool() -> None:
    side = _side()
    side.text_mask[2] = side.attention_mask[2]  # sample 2 has no image position
    with pytest.raises(ValueError, match=r"sample\(s\) \[2\]"):
        EmbeddingHead(D_S, prefixes=PREFIXES).embed(side)


def test_head_truncate_takes_the_prefix_and_normalises() -> None:
    z = _z()
    out = EmbeddingHead.truncate(z, 4).numpy()
    for i in range(z.shape[0]):
        np.testing.assert_allclose(out[i], _unit(z[i, :4].numpy()), rtol=1e-12)


def test_head_save_load_round_trip(tmp_path) -> None:
    torch.manual_seed(1)
    head = EmbeddingHead(D_S, prefixes=PREFIXES, positions="prompt", bias=True)
    weights, config = head.save(tmp_path)
    assert weights.name == HEAD_WEIGHTS and config.name == HEAD_CONFIG
    data = json.loads(config.read_text())
    assert data["hidden_size"] == D_S and data["prefixes"] == list(PREFIXES) and data["dim"] == 8
    assert data["positions"] == "prompt" and data["bias"] is True and data["pooling"] == "mean"
    loaded = EmbeddingHead.load(tmp_path)
    assert loaded.config == head.config
    side = _side()
    torch.testing.assert_close(loaded.embed(side), head.embed(side), rtol=0, atol=0)


def test_head_save_writes_gathered_weights_in_place_of_its_own(tmp_path) -> None:
    """Under ZeRO-3 / FSDP the module holds shards: the gathered tensors are what is written."""
    from evl_ecg.train.trainer import submodule_state

    torch.manual_seed(2)
    head = EmbeddingHead(D_S, prefixes=PREFIXES, bias=True)
    outer = torch.nn.Module()
    outer.objective = torch.nn.Module()
    outer.objective.head = head
    gathered = {f"objective.head.{k}": torch.full_like(v, 0.25) for k, v in head.state_dict().items()}
    gathered["student.w"] = torch.zeros(3)
    part = submodule_state(gathered, outer, head)
    assert sorted(part) == ["proj.bias", "proj.weight"]
    assert submodule_state(None, outer, head) is None
    head.save(tmp_path, state_dict=part)
    loaded = EmbeddingHead.load(tmp_path)
    assert all(torch.equal(v, torch.full_like(v, 0.25)) for v in loaded.state_dict().values())
    with pytest.raises(ValueError, match="not the head's"):
        head.save(tmp_path, state_dict={"proj.weight": part["proj.weight"]})


def test_head_load_refuses_missing_or_mismatched_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=HEAD_WEIGHTS):
        EmbeddingHead.load(tmp_path)
    EmbeddingHead(D_S, prefixes=PREFIXES).save(tmp_path)
    config = tmp_path / HEAD_CONFIG
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, "prefixes": [2, 4, 16], "dim": 16}))
    with pytest.raises(ValueError, match="shape"):
        EmbeddingHead.load(tmp_path)
    config.write_text(json.dumps({**data, "format": "something-else"}))
    with pytest.raises(ValueError, match="not an embedding head"):
        EmbeddingHead.load(tmp_path)


def test_bad_prefixes_are_refused() -> None:
    for bad in [(), (4, 4), (8, 4), (0, 4), "48", (2.5, 4), (True, 4)]:
        with pytest.raises(ValueError, match="strictly increasing"):
            EmbeddingHead(D_S, prefixes=bad)


# ---- the pieces, against loops ---------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["exact", "jaccard"])
def test_supcon_matches_a_loop(how: str) -> None:
    z = _z()
    total, anchors = supcon_sums(z, FINDINGS, 0.5, how)
    ref_total, ref_anchors = _np_supcon(z.numpy(), FINDINGS.numpy(), 0.5, how)
    assert int(anchors) == ref_anchors == (4 if how == "exact" else 5)  # the empty set has no partner
    assert float(total) == pytest.approx(ref_total, rel=1e-10)


def test_scr_matches_a_loop() -> None:
    z = _z()
    assert float(scr_penalty(z, PREFIXES)) == pytest.approx(_np_scr(z.numpy(), PREFIXES), rel=1e-9)


def test_uniformity_matches_a_loop_and_spectral_gap_matches_the_eigenvalues() -> None:
    z = _z(n=10, d=4)
    assert float(uniformity(torch.nn.functional.normalize(z, dim=-1))) == pytest.approx(
        _np_uniformity(z.numpy()), rel=1e-10
    )
    assert float(spectral_gap(torch.nn.functional.normalize(z, dim=-1))) == pytest.approx(
        _np_spectral(z.numpy()), rel=1e-9
    )


def test_spectral_gap_is_zero_for_a_flat_spectrum() -> None:
    u = torch.cat([torch.eye(3), -torch.eye(3)]).double()  # covariance I/3
    assert float(spectral_gap(u)) == pytest.approx(0.0, abs=1e-14)


def test_self_distillation_matches_a_loop() -> None:
    z = _z()
    value = self_distillation(z[:, :2], z, 0.1)
    assert float(value) == pytest.approx(_np_sd(z[:, :2].numpy(), z.numpy(), 0.1), rel=1e-9)
    assert float(self_distillation(z, z, 0.1)) == pytest.approx(0.0, abs=1e-12)


def test_self_distillation_target_is_detached() -> None:
    prefix = _z()[:, :2].clone().requires_grad_(True)
    full = _z().clone().requires_grad_(True)
    self_distillation(prefix, full).backward()
    assert full.grad is None
    assert prefix.grad is not None and float(prefix.grad.abs().sum()) > 0


def test_self_distillation_term_sends_no_gradient_into_the_dimensions_only_the_target_has() -> None:
    # mic with SD alone: the dimensions after the largest non-full prefix (4:8) appear only in the target
    torch.manual_seed(0)
    loss = build_loss("mic", CTX, prefixes=PREFIXES, prefix_weights=[0, 0, 0], scr_weight=0, sir_weight=0)
    side = _side()
    out = loss(side, findings=FINDINGS)
    z = out.extras["elastic_embedding"]
    (grad,) = torch.autograd.grad(out.loss, z)
    assert float(grad[:, 4:].abs().max()) == 0.0
    assert float(grad[:, :4].abs().max()) > 0.0


# ---- the registered losses against a hand-composed reference ----------------------------------------------------
def test_matryoshka_supcon_is_the_weighted_sum_over_prefixes() -> None:
    torch.manual_seed(0)
    weights = [0.5, 1.0, 2.0]
    loss = build_loss("matryoshka", CTX, prefixes=PREFIXES, temperature=0.2, prefix_weights=weights)
    side = _side()
    out = loss(side, findings=FINDINGS)
    z = _np_embedding(side, _weight(loss))
    ref = 0.0
    for w, d in zip(weights, PREFIXES, strict=True):
        total, anchors = _np_supcon(z[:, :d], FINDINGS.numpy(), 0.2, "exact")
        ref += w * total / anchors
    assert out.loss.item() == pytest.approx(ref, rel=1e-5)
    assert int(out.logs["anchors"]) == 4


def test_matryoshka_bce_matches_a_loop_with_the_prefix_classifiers() -> None:
    torch.manual_seed(0)
    loss = build_loss("matryoshka", CTX, prefixes=PREFIXES, task="bce", num_labels=4)
    side = _side()
    out = loss(side, findings=FINDINGS)
    z = _np_embedding(side, _weight(loss))
    ref = 0.0
    for k, d in enumerate(PREFIXES):
        a = loss.classifiers[k].weight.detach().double().numpy()
        c = loss.classifiers[k].bias.detach().double().numpy()
        logits = np.array([a @ z[b, :d] + c for b in range(z.shape[0])])
        ref += _np_bce(logits, FINDINGS.numpy()) / z.shape[0]
    assert out.loss.item() == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("sir", ["uniformity", "spectral"])
def test_mic_is_matryoshka_plus_its_weighted_parts(sir: str) -> None:
    torch.manual_seed(0)
    options = {"prefixes": PREFIXES, "temperature": 0.2, "sir_max_dim": 4, "sir": sir}
    loss = build_loss("mic", CTX, scr_weight=0.7, sir_weight=0.3, sd_weight=2.0, sd_temperature=0.5, **options)
    side = _side()
    out = loss(side, findings=FINDINGS)
    z = _np_embedding(side, _weight(loss))
    task = sum(
        total / anchors for total, anchors in (_np_supcon(z[:, :d], FINDINGS.numpy(), 0.2, "exact") for d in PREFIXES)
    )
    scr = _np_scr(z, PREFIXES)
    sir_fn = _np_uniformity if sir == "uniformity" else _np_spectral
    sir_value = (sir_fn(z[:, :2]) + sir_fn(z[:, :4])) / 2  # prefixes 2 and 4 are <= sir_max_dim
    sd = (_np_sd(z[:, :2], z, 0.5) + _np_sd(z[:, :4], z, 0.5)) / 2
    assert float(out.logs["scr"]) == pytest.approx(scr, rel=1e-4)
    assert float(out.logs["sir"]) == pytest.approx(sir_value, rel=1e-4)
    assert float(out.logs["sd"]) == pytest.approx(sd, rel=1e-4)
    assert out.loss.item() == pytest.approx(task + 0.7 * scr + 0.3 * sir_value + 2.0 * sd, rel=1e-5)


def test_mic_parts_switch_off_and_mic_without_them_is_matryoshka() -> None:
    torch.manual_seed(0)
    mic = build_loss("mic", CTX, prefixes=PREFIXES, scr_weight=0, sir_weight=0, sd_weight=0)
    plain = build_loss("matryoshka", CTX, prefixes=PREFIXES)
    plain.load_state_dict(mic.state_dict())
    side = _side()
    a, b = mic(side, findings=FINDINGS), plain(side, findings=FINDINGS)
    assert a.loss.item() == b.loss.item()
    assert not {"scr", "sir", "sd"} & set(a.logs)
    only_sir = build_loss("mic", CTX, prefixes=PREFIXES, scr_weight=0, sd_weight=0)
    assert {"sir"} == {"scr", "sir", "sd"} & set(only_sir(side, findings=FINDINGS).logs)


def test_gradients_reach_the_student_and_the_head() -> None:
    torch.manual_seed(0)
    loss = build_loss("mic", CTX, prefixes=PREFIXES)
    side = _side()
    loss(side, findings=FINDINGS).loss.backward()
    assert torch.isfinite(side.hidden.grad[side.attention_mask]).all()
    assert float(side.hidden.grad[side.attention_mask].abs().sum()) > 0
    assert float(side.hidden.grad[~side.attention_mask].abs().sum()) == 0  # padding takes no part
    assert float(loss.head.proj.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("sir", ["uniformity", "spectral"])
def test_mic_gradcheck_float64(sir: str) -> None:
    # SD is off here: its target is detached by design, so finite differences (which move the target too) differ
    torch.manual_seed(0)
    loss = build_loss("mic", CTX, prefixes=PREFIXES, positives="jaccard", sir=sir, sd_weight=0).double()
    side = _side(dtype=torch.float64)
    mask = side.attention_mask[..., None]
    start = torch.where(mask, side.hidden.detach(), torch.zeros(())).requires_grad_(True)

    def f(hidden: torch.Tensor) -> torch.Tensor:
        s = SideOutputs(
            logits=side.logits,
            hidden=hidden,
            attention_mask=side.attention_mask,
            labels=side.labels,
            text_mask=side.text_mask,
        )
        return loss(s, findings=FINDINGS).loss

    assert torch.autograd.gradcheck(f, (start,), eps=1e-6, atol=1e-5)


def test_self_distillation_gradcheck_float64_with_the_target_held_constant() -> None:
    full = _z()
    prefix = full[:, :4].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: self_distillation(p, full, 0.5), (prefix,), eps=1e-6, atol=1e-6)


def test_finite_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    loss = build_loss("mic", CTX, prefixes=PREFIXES)
    side = _side()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(side, findings=FINDINGS)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


# ---- batch splitting -----------------------------------------------------------------------------------------
def test_bce_task_micro_batches_with_the_global_count_sum_to_the_full_batch() -> None:
    torch.manual_seed(0)
    loss = build_loss("matryoshka", CTX, prefixes=PREFIXES, task="bce", num_labels=4)
    side = _side()
    full = loss(side, findings=FINDINGS).loss
    inputs = (loss.head.proj.weight, side.hidden)
    g_full = torch.autograd.grad(full, inputs)
    den = Denominators(samples=6.0)
    parts = [loss(_take(side, s), None, den, findings=FINDINGS[s]).loss for s in (slice(0, 2), slice(2, 6))]
    grads = [torch.autograd.grad(p, inputs) for p in parts]
    assert sum(p.item() for p in parts) == pytest.approx(full.item(), rel=1e-6)
    for k in range(2):
        torch.testing.assert_close(grads[0][k] + grads[1][k], g_full[k], rtol=1e-5, atol=1e-7)


def test_batch_level_parts_are_micro_batch_values_weighted_by_their_share_of_the_samples() -> None:
    torch.manual_seed(0)
    loss = build_loss("mic", CTX, prefixes=PREFIXES, positives="jaccard", min_batch=2)
    side = _side()
    halves = [slice(0, 2), slice(2, 6)]
    alone = [loss(_take(side, s), findings=FINDINGS[s]).loss.item() for s in halves]
    den = Denominators(samples=torch.tensor(6.0))
    shared = [loss(_take(side, s), None, den, findings=FINDINGS[s]).loss.item() for s in halves]
    assert shared == pytest.approx([2 / 6 * alone[0], 4 / 6 * alone[1]], rel=1e-6)
    # documented: the value depends on the split (each part compares the samples of one micro-batch)
    assert sum(shared) != pytest.approx(loss(side, findings=FINDINGS).loss.item(), rel=1e-3)


@pytest.mark.parametrize("name, options", [("matryoshka", {}), ("mic", {"task": "bce", "num_labels": 4})])
def test_batch_level_losses_refuse_a_micro_batch_below_min_batch(name: str, options: dict) -> None:
    loss = build_loss(name, CTX, prefixes=PREFIXES, **options)
    with pytest.raises(ValueError, match="at least 4"):
        loss(_take(_side(), slice(0, 3)), findings=FINDINGS[:3])
    with pytest.raises(ValueError, match="min_batch"):
        build_loss(name, CTX, prefixes=PREFIXES, min_batch=1, **options)


def test_bce_matryoshka_has_no_batch_level_part_and_runs_on_one_sample() -> None:
    loss = build_loss("matryoshka", CTX, prefixes=PREFIXES, task="bce", num_labels=4)
    assert not loss.batch_level
    assert torch.isfinite(loss(_take(_side(), slice(0, 1)), findings=FINDINGS[:1]).loss)


# ---- the findings ----------------------------------------------------------------------------------------------
def test_findings_multi_hot_and_refusals() -> None:
    y = findings_multi_hot([["SR", "MI"], [], ["AF"]])
    assert y.shape == (3, len(elastic.FINDING_CODES))
    assert y[0, elastic.FINDING_CODES.index("MI")] == 1 and y.sum().item() == 3
    with pytest.raises(ValueError, match="not in the vocabulary"):
        findings_multi_hot([["XYZ"]])
    loss = build_loss("matryoshka", CTX, prefixes=PREFIXES)
    with pytest.raises(ValueError, match="needs the records' findings"):
        loss(_side())
    with pytest.raises(ValueError, match="multi-hot"):
        loss(_side(), findings=FINDINGS * 0.5)


# ---- registry, presets, objective ------------------------------------------------------------------------------
def test_registered_needs_no_teacher_and_off_in_every_preset() -> None:
    table = registered()
    assert table["matryoshka"] is elastic.MatryoshkaLoss and table["mic"] is elastic.MICLoss
    assert not table["mic"].needs_teacher and table["mic"].unit == "samples"
    for preset, config in list_presets().items():
        assert not {"matryoshka", "mic"} & set(config["terms"]), preset


def test_objective_with_mic_reads_the_findings_the_side_carries_and_exposes_its_head() -> None:
    torch.manual_seed(0)
    objective = Objective({"alpha": 0.5, "terms": {"mic": {"weight": 0.1, "prefixes": list(PREFIXES)}}}, CTX)
    assert not objective.needs_teacher
    side = _side()
    side.findings = FINDINGS  # what the collator and adapter are to fill (SideOutputs has no such field yet)
    side.logits.requires_grad_(True)
    out = objective(side)
    assert float(out.logs["loss/mic"]) == pytest.approx(objective.terms["mic"](side).loss.item())
    head = embedding_head_of(objective)
    assert head is objective.terms["mic"].head
    both = Objective({"alpha": 0.5, "terms": {"mic": {"weight": 1.0}, "matryoshka": {"weight": 1.0}}}, CTX)
    with pytest.raises(ValueError, match="2 embedding heads"):
        embedding_head_of(both)
    assert embedding_head_of(Objective({"alpha": 0.0}, CTX)) is None


def test_training_config_checker_knows_every_option_by_name() -> None:
    from evl_ecg.train.config import ConfigError, check_objective

    check_objective("evl-ecg", {"terms": {"mic": {"weight": 0.1, "prefixes": [8, 16, 32], "sir_max_dim": 8}}})
    with pytest.raises(ConfigError, match="did you mean 'scr_weight'"):
        check_objective("evl-ecg", {"terms": {"mic": {"weight": 0.1, "scr_wieght": 1.0}}})
