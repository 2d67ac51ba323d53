"""EVL-ECG's loss terms (ce, mhca, ot, relation) against independent references."""

from __future__ import annotations

import dataclasses

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evl_ecg.distill import Denominators, LossContext, build_loss
from evl_ecg.outputs import IGNORE_INDEX, SideOutputs

D_S, D_T, DV_S, DV_T, V_S, V_T = 16, 24, 12, 20, 11, 13
CONTEXT = LossContext(student_hidden=D_S, teacher_hidden=D_T, student_visual=DV_S, teacher_visual=DV_T)


def _side(
    lengths: list[int],
    length: int,
    d: int,
    vocab: int,
    visual_lengths: list[int],
    n_visual: int,
    d_visual: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
) -> SideOutputs:
    """A padded batch: junk (large values) in padding, labels on the second half of each sample."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    pos = torch.arange(length)[None]
    valid = pos < torch.tensor(lengths)[:, None]
    hidden = torch.where(valid[..., None], torch.randn(b, length, d, generator=g), 1e3 * torch.randn(b, length, d))
    labels = torch.randint(0, vocab, (b, length), generator=g)
    labels = torch.where(valid & (pos >= torch.tensor(lengths)[:, None] // 2), labels, IGNORE_INDEX)
    vmask = torch.arange(n_visual)[None] < torch.tensor(visual_lengths)[:, None]
    visual = torch.where(vmask[..., None], torch.randn(b, n_visual, d_visual, generator=g), -1e3)
    return SideOutputs(
        logits=torch.randn(b, length, vocab, generator=g, dtype=dtype),
        hidden=hidden.to(dtype),
        attention_mask=valid,
        labels=labels,
        text_mask=valid & (pos >= 2),
        visual=visual.to(dtype),
        visual_mask=vmask,
    )


def _student(seed: int = 0, dtype: torch.dtype = torch.float32) -> SideOutputs:
    return _side([7, 5, 6], 7, D_S, V_S, [4, 3, 5], 5, DV_S, seed, dtype)


def _teacher(seed: int = 1, dtype: torch.dtype = torch.float32) -> SideOutputs:
    return _side([9, 11, 6], 11, D_T, V_T, [8, 10, 6], 10, DV_T, seed, dtype)


def _take(side: SideOutputs, idx: slice) -> SideOutputs:
    changes = {
        f.name: getattr(side, f.name)[idx] for f in dataclasses.fields(side) if torch.is_tensor(getattr(side, f.name))
    }
    return dataclasses.replace(side, **changes)


def _pad(side: SideOutputs, extra: int, visual_extra: int = 0) -> SideOutputs:
    """The same batch with ``extra`` more (invalid, junk-filled) positions and visual tokens."""

    def grow(t: torch.Tensor, n: int, fill: float) -> torch.Tensor:
        pad = torch.full((t.shape[0], n, *t.shape[2:]), fill, dtype=t.dtype)
        return torch.cat([t, pad], dim=1)

    return dataclasses.replace(
        side,
        logits=grow(side.logits, extra, 7.0),
        hidden=grow(side.hidden, extra, float("nan")),
        attention_mask=grow(side.attention_mask, extra, False),
        labels=grow(side.labels, extra, IGNORE_INDEX),
        text_mask=grow(side.text_mask, extra, False),
        visual=grow(side.visual, visual_extra, float("nan")),
        visual_mask=grow(side.visual_mask, visual_extra, False),
    )


def _with_grad(side: SideOutputs) -> SideOutputs:
    return dataclasses.replace(
        side,
        logits=side.logits.clone().requires_grad_(True),
        hidden=side.hidden.clone().requires_grad_(True),
        visual=side.visual.clone().requires_grad_(True),
    )


# ---- ce ------------------------------------------------------------------------------------------------------------
def test_ce_matches_torch_cross_entropy_on_shifted_labels() -> None:
    s = _student()
    out = build_loss("ce")(s, None)
    labels = s.labels.clone()
    ref = F.cross_entropy(s.logits[:, :-1].reshape(-1, V_S), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(s.labels, labels)  # inputs untouched


def test_ce_label_smoothing_is_the_smoothed_target_written_out() -> None:
    """Label smoothing by its definition (Szegedy et al. 2016): target (1 - eps) on the next token + eps / V on each
    token, i.e. (1 - eps) * NLL + eps * mean over the vocabulary of -log p; computed here with numpy in float64."""
    s = _student()
    eps = 0.2
    out = build_loss("ce", label_smoothing=eps)(s, None)
    logits = s.logits[:, :-1].reshape(-1, V_S).double().numpy()
    target = s.labels[:, 1:].reshape(-1).numpy()
    keep = target != IGNORE_INDEX
    z = logits[keep]
    logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    per_token = -(1 - eps) * logp[np.arange(len(z)), target[keep]] - eps * logp.mean(1)
    assert abs(float(out.loss) - per_token.mean()) < 1e-5
    assert float(out.loss) != pytest.approx(float(build_loss("ce")(s, None).loss))
    with pytest.raises(ValueError, match="label_smoothing"):
        build_loss("ce", label_smoothing=1.0)


def test_ce_ignores_a_label_left_on_the_first_padded_position() -> None:
    # sample 1 is valid on 0..4 and right-padded on 5..6; a caller leaves a real token id (not -100) at position 5:
    # the last valid row (4) must not be trained to predict it (nor may padding count in the denominator)
    s = _student()
    ref = build_loss("ce")(s, None)
    labels = s.labels.clone()
    assert not s.attention_mask[1, 5] and labels[1, 5] == IGNORE_INDEX
    labels[1, 5] = 3
    leaky = dataclasses.replace(s, logits=s.logits.clone().requires_grad_(True), labels=labels)
    out = build_loss("ce")(leaky, None)
    torch.testing.assert_close(out.loss, ref.loss)
    assert int(out.logs["tokens"]) == int(ref.logs["tokens"])
    out.loss.backward()
    assert float(leaky.logits.grad[1, 4:].abs().sum()) == 0.0  # neither the row before padding nor padding


# ---- mhca ----------------------------------------------------------------------------------------------------------
def _mha_reference(loss: nn.Module, s: SideOutputs, t: SideOutputs, key_mask: torch.Tensor, bias: bool):
    mha = nn.MultiheadAttention(D_S, loss.heads, kdim=D_T, vdim=D_T, bias=bias, batch_first=True)
    with torch.no_grad():
        mha.q_proj_weight.copy_(loss.q_proj.weight)
        mha.k_proj_weight.copy_(loss.k_proj.weight)
        mha.v_proj_weight.copy_(loss.v_proj.weight)
        mha.out_proj.weight.copy_(loss.o_proj.weight)
        if bias:
            mha.in_proj_bias.copy_(torch.cat([loss.q_proj.bias, loss.k_proj.bias, loss.v_proj.bias]))
            mha.out_proj.bias.copy_(loss.o_proj.bias)
    h_t = torch.where(key_mask[..., None], t.hidden, 0.0)
    h_s = torch.where(s.attention_mask[..., None], s.hidden, 0.0)
    out, _ = mha(h_s, h_t, h_t, key_padding_mask=~key_mask, need_weights=False)
    return out.detach()


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("heads", [1, 4])
def test_mhca_matches_torch_multihead_attention(heads: int, bias: bool) -> None:
    torch.manual_seed(0)
    loss = build_loss("mhca", CONTEXT, heads=heads, bias=bias)
    s, t = _student(), _teacher()
    out = loss(s, t)
    ref = _mha_reference(loss, s, t, t.attention_mask, bias)
    m = s.attention_mask
    torch.testing.assert_close(out.extras["aligned_teacher"][m], ref[m], atol=1e-5, rtol=1e-5)
    ref_loss = sum(
        float(((s.hidden[b, i] - ref[b, i]) ** 2).sum()) for b in range(3) for i in range(7) if m[b, i]
    ) / float(m.sum())
    assert float(out.loss.detach()) == pytest.approx(ref_loss, rel=1e-5)
    norm_s = float(torch.stack([s.hidden[b, i].norm() for b in range(3) for i in range(7) if m[b, i]]).mean())
    assert float(out.logs["norm_student"]) == pytest.approx(norm_s, rel=1e-5)


def test_mhca_response_positions_on_both_sides() -> None:
    torch.manual_seed(0)
    loss = build_loss("mhca", CONTEXT, heads=4, positions="response")
    s, t = _student(), _teacher()
    out = loss(s, t)
    ref = _mha_reference(loss, s, t, t.response_mask, False)
    m = s.response_mask
    torch.testing.assert_close(out.extras["aligned_teacher"][m], ref[m], atol=1e-5, rtol=1e-5)
    ref_loss = ((s.hidden - ref) ** 2).sum(-1)[m].sum() / m.sum()
    torch.testing.assert_close(out.loss, ref_loss, atol=1e-5, rtol=1e-5)


def test_mhca_teacher_text_keys_equal_attention_over_the_text_positions_alone() -> None:
    """``teacher_positions="text"``: the teacher's image positions leave the keys (gathered out, not just masked)."""
    torch.manual_seed(0)
    loss = build_loss("mhca", CONTEXT, heads=4, teacher_positions="text")
    s, t = _student(), _teacher()
    seen: list[int] = []
    loss.k_proj.register_forward_hook(lambda mod, args, res: seen.append(args[0].shape[1]))
    out = loss(s, t)
    key_mask = t.text_mask & t.attention_mask
    assert seen == [int(key_mask.sum(1).max())] and seen[0] < t.hidden.shape[1]  # projected: the kept rows only
    ref = _mha_reference(loss, s, t, key_mask, False)
    m = s.attention_mask  # the student side keeps positions="all"
    torch.testing.assert_close(out.extras["aligned_teacher"][m], ref[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, ((s.hidden - ref) ** 2).sum(-1)[m].sum() / m.sum(), atol=1e-5, rtol=1e-5)
    # the image positions' hidden states do not matter at all
    t_junk = dataclasses.replace(t, hidden=torch.where(key_mask[..., None], t.hidden, torch.nan))
    torch.testing.assert_close(loss(s, t_junk).loss, out.loss)
    with pytest.raises(ValueError, match="positions"):
        build_loss("mhca", CONTEXT, teacher_positions="image")


@pytest.mark.parametrize("teacher_positions", ["response", "text"])
def test_mhca_sample_without_teacher_keys_takes_no_part_and_stays_finite(teacher_positions: str) -> None:
    """A sample whose teacher has no key position (e.g. its response cut off): no NaN from the junk in its padding."""
    torch.manual_seed(0)
    loss = build_loss("mhca", CONTEXT, heads=4, positions="response", teacher_positions=teacher_positions)
    s, t = _with_grad(_student()), _teacher()
    no_keys = torch.zeros_like(t.attention_mask)
    no_keys[1:] = True  # sample 0 loses every key position
    hidden = torch.where(t.attention_mask[..., None], t.hidden, torch.nan)
    t = dataclasses.replace(
        t,
        hidden=hidden,
        labels=torch.where(no_keys, t.labels, IGNORE_INDEX),
        text_mask=t.text_mask & no_keys,
    )
    out = loss(s, t)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(s.hidden.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in loss.parameters())
    assert float(s.hidden.grad[0].abs().sum()) == 0.0  # its queries do not count
    rest = loss(_take(s, slice(1, None)), _take(t, slice(1, None)))  # the same loss without that sample
    torch.testing.assert_close(out.loss, rest.loss)


def test_mhca_padding_changes_nothing() -> None:
    torch.manual_seed(0)
    loss = build_loss("mhca", CONTEXT, heads=4)
    s, t = _student(), _teacher()
    base = loss(s, t)
    padded = loss(_pad(s, 3), _pad(t, 5))  # NaN junk in the extra positions of both sides
    torch.testing.assert_close(padded.loss, base.loss, atol=1e-6, rtol=1e-6)
    m = s.attention_mask
    torch.testing.assert_close(padded.extras["aligned_teacher"][:, :7][m], base.extras["aligned_teacher"][m])
    s2 = dataclasses.replace(s, hidden=torch.where(m[..., None], s.hidden, -5e4))  # other student-padding junk
    torch.testing.assert_close(loss(s2, t).loss, base.loss)


def test_mhca_gradients_reach_student_and_weights_not_teacher() -> None:
    loss = build_loss("mhca", CONTEXT, heads=4)
    s, t = _with_grad(_student()), _with_grad(_teacher())
    loss(s, t).loss.backward()
    assert s.hidden.grad.abs().sum() > 0 and t.hidden.grad is None
    assert float(s.hidden.grad[~s.attention_mask].abs().sum()) == 0.0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())


# ---- relation ------------------------------------------------------------------------------------------------------
def _relation_loop(h_s: torch.Tensor, h_t: torch.Tensor, mask: torch.Tensor) -> float:
    """Direct double loop over samples and pairs i != j (float64)."""
    total_d = total_a = pairs = 0.0
    for b in range(h_s.shape[0]):
        idx = [i for i in range(h_s.shape[1]) if mask[b, i]]
        s = [h_s[b, i].double() for i in idx]
        t = [h_t[b, i].double() for i in idx]
        off = [(i, j) for i in range(len(idx)) for j in range(len(idx)) if i != j]
        if not off:
            continue
        mu_s = sum(float((s[i] - s[j]).norm()) for i, j in off) / len(off)
        mu_t = sum(float((t[i] - t[j]).norm()) for i, j in off) / len(off)
        for i, j in off:
            total_d += (float((t[i] - t[j]).norm()) / mu_t - float((s[i] - s[j]).norm()) / mu_s) ** 2
            total_a += (
                float(F.cosine_similarity(t[i], t[j], dim=0)) - float(F.cosine_similarity(s[i], s[j], dim=0))
            ) ** 2
        pairs += len(off)
    return 0.5 * (total_d + total_a) / pairs


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_relation_matches_double_loop(chunk_size: int | None) -> None:
    s = _student()
    target = torch.randn(3, 7, D_S, generator=torch.Generator().manual_seed(5))
    out = build_loss("relation", chunk_size=chunk_size)(s, None, aligned_teacher=target)
    assert float(out.loss) == pytest.approx(_relation_loop(s.hidden, target, s.attention_mask), rel=1e-5)
    resp = build_loss("relation", positions="response")(s, None, aligned_teacher=target)
    assert float(resp.loss) == pytest.approx(_relation_loop(s.hidden, target, s.response_mask), rel=1e-5)


def test_relation_chunked_equals_full_with_gradients() -> None:
    s = _with_grad(_student())
    target = torch.randn(3, 7, D_S, generator=torch.Generator().manual_seed(5), requires_grad=True)
    full = build_loss("relation", detach_target=False)(s, None, aligned_teacher=target)
    g_full = torch.autograd.grad(full.loss, [s.hidden, target])
    chunked = build_loss("relation", detach_target=False, chunk_size=2)(s, None, aligned_teacher=target)
    g_chunked = torch.autograd.grad(chunked.loss, [s.hidden, target])
    torch.testing.assert_close(chunked.loss, full.loss)
    for a, b in zip(g_chunked, g_full, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_relation_padding_changes_nothing() -> None:
    s = _student()
    target = torch.randn(3, 7, D_S, generator=torch.Generator().manual_seed(5))
    base = build_loss("relation")(s, None, aligned_teacher=target)
    padded_target = torch.cat([target, torch.full((3, 4, D_S), float("nan"))], dim=1)
    padded = build_loss("relation")(_pad(s, 4), None, aligned_teacher=padded_target)
    torch.testing.assert_close(padded.loss, base.loss)


def test_relation_target_is_detached_by_default() -> None:
    s = _with_grad(_student())
    target = torch.randn(3, 7, D_S, generator=torch.Generator().manual_seed(5), requires_grad=True)
    build_loss("relation")(s, None, aligned_teacher=target).loss.backward()
    assert target.grad is None and s.hidden.grad.abs().sum() > 0
    build_loss("relation", detach_target=False)(s, None, aligned_teacher=target).loss.backward()
    assert target.grad is not None and target.grad.abs().sum() > 0


def _relation_direct_float64(h_s: torch.Tensor, h_t: torch.Tensor) -> torch.Tensor:
    """L_rel of one sample (all positions valid) from direct differences ``h_i - h_j`` (``L x L x D``), float64."""
    off = ~torch.eye(h_s.shape[0], dtype=torch.bool)

    def psi(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = (h[:, None] - h[None]).pow(2).sum(-1).clamp_min(1e-300).sqrt()
        u = F.normalize(h, dim=-1)
        return d / d[off].mean(), u @ u.T

    (d_s, a_s), (d_t, a_t) = psi(h_s), psi(h_t)
    return 0.5 * (((d_t - d_s)[off] ** 2).sum() + ((a_t - a_s)[off] ** 2).sum()) / off.sum()


def _near_duplicates(delta: float, length: int = 16, d: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Student features: ``length / 2`` random tokens (offset 1) and a copy of each at relative distance ``delta``;
    the target has no duplicates (so the loss pulls the near-duplicate pairs apart: large distance gradients)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(length // 2, d, generator=g, dtype=torch.float64) + 1.0
    step = F.normalize(torch.randn(length // 2, d, generator=g, dtype=torch.float64), dim=-1)
    h_s = torch.cat([base, base + delta * (base - base.mean(0)).norm(dim=-1, keepdim=True) * step])
    h_t = torch.randn(length, d, generator=g, dtype=torch.float64)
    return h_s.float().double(), h_t.float().double()  # exactly representable in float32


def _relation_grad_error(h_s: torch.Tensor, h_t: torch.Tensor, **options) -> float:
    """Relative error of the float32 gradient of L_rel w.r.t. H_s against the float64 direct reference."""
    x = h_s.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(_relation_direct_float64(x, h_t), x)
    h = h_s.float()[None].clone().requires_grad_(True)
    mask = torch.ones(1, h.shape[1], dtype=torch.bool)
    s = SideOutputs(logits=h[..., :1], hidden=h, attention_mask=mask, labels=torch.zeros_like(mask, dtype=torch.long))
    out = build_loss("relation", **options)(s, None, aligned_teacher=h_t.float()[None])
    (grad,) = torch.autograd.grad(out.loss, h)
    return float((grad[0].double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("chunk_size", [None, 5])
@pytest.mark.parametrize("delta", [1e-3, 1e-4, 1e-5])
def test_relation_float32_gradient_of_near_duplicates_matches_float64_direct_differences(
    delta: float, chunk_size: int | None
) -> None:
    h_s, h_t = _near_duplicates(delta)
    err = _relation_grad_error(h_s, h_t, chunk_size=chunk_size)
    assert err < 1e-4  # measured 2e-7 to 3e-7
    if delta <= 1e-4:  # from the Gram matrix alone (direct_below=0, the old code): 0.26 to 0.28
        assert _relation_grad_error(h_s, h_t, chunk_size=chunk_size, direct_below=0.0) > 1e-2


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_relation_direct_distances_in_blocks_equal_one_block(
    monkeypatch: pytest.MonkeyPatch, chunk_size: int | None
) -> None:
    import evl_ecg.distill.losses as losses

    h_s, h_t = _near_duplicates(1e-4, d=32)
    mask = torch.ones(1, 16, dtype=torch.bool)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        h = h_s.float()[None].clone().requires_grad_(True)
        s = SideOutputs(logits=h[..., :1], hidden=h, attention_mask=mask, labels=torch.zeros(1, 16, dtype=torch.long))
        loss = build_loss("relation", chunk_size=chunk_size)(s, None, aligned_teacher=h_t.float()[None]).loss
        return loss, torch.autograd.grad(loss, h)[0]

    one = run()
    monkeypatch.setattr(losses, "_DIRECT_BLOCK", 3 * 32)  # 3 of the 16 near-duplicate pairs (i, i +- 8) a block
    blocks = run()
    torch.testing.assert_close(blocks[0], one[0])
    torch.testing.assert_close(blocks[1], one[1])


def test_relation_gradcheck_float64_through_the_direct_distances() -> None:
    g = torch.Generator().manual_seed(3)
    h = torch.randn(1, 5, 3, generator=g, dtype=torch.float64)
    h[0, 1] = h[0, 0] + 1e-4 * torch.randn(3, generator=g, dtype=torch.float64)  # a near-duplicate pair
    h_s = h.clone().requires_grad_(True)
    h_t = torch.randn(1, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 5, dtype=torch.bool)
    loss = build_loss("relation", detach_target=False)

    def f(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        s = SideOutputs(logits=x[..., :1], hidden=x, attention_mask=mask, labels=torch.zeros(1, 5, dtype=torch.long))
        return loss(s, None, aligned_teacher=target).loss

    assert torch.autograd.gradcheck(f, (h_s, h_t), eps=1e-8, atol=1e-5, rtol=1e-4)


def test_relation_without_aligned_teacher_is_an_error() -> None:
    with pytest.raises(ValueError, match="aligned_teacher"):
        build_loss("relation")(_student(), _teacher())


# ---- ot ------------------------------------------------------------------------------------------------------------
def _ot_reference(loss: nn.Module, s: SideOutputs, t: SideOutputs) -> float:
    """Per sample: project, normalise, cdist^2 on the valid tokens, POT's log-Sinkhorn, <P, C>; mean over samples."""
    total = 0.0
    with torch.no_grad():
        for b in range(s.batch_size):
            tv = F.normalize(loss.proj(t.visual[b][t.visual_mask[b]]).double(), dim=-1)
            sv = F.normalize(s.visual[b][s.visual_mask[b]].double(), dim=-1)
            c = (torch.cdist(tv, sv) ** 2).numpy()
            a, bb = np.full(c.shape[0], 1 / c.shape[0]), np.full(c.shape[1], 1 / c.shape[1])
            plan = ot.sinkhorn(a, bb, c, reg=0.1, method="sinkhorn_log", stopThr=1e-12, numItermax=100000)
            total += float((plan * c).sum())
    return total / s.batch_size


@pytest.mark.parametrize("solver", ["torch", "pot"])
def test_ot_loss_matches_pot_reference(solver: str) -> None:
    torch.manual_seed(0)
    loss = build_loss("ot", CONTEXT, solver=solver, tol=1e-9)
    s, t = _student(), _teacher()
    out = loss(s, t)
    assert float(out.loss.detach()) == pytest.approx(_ot_reference(loss, s, t), abs=1e-6)
    assert float(out.logs["marginal_error"]) < 1e-6 and out.logs["iterations"] >= 1


def test_ot_padding_and_permutation_change_nothing() -> None:
    torch.manual_seed(0)
    loss = build_loss("ot", CONTEXT, tol=1e-9)
    s, t = _student(), _teacher()
    base = loss(s, t).loss
    torch.testing.assert_close(loss(_pad(s, 0, 3), _pad(t, 0, 4)).loss, base, atol=1e-6, rtol=0)
    perm_s, perm_t = torch.randperm(5), torch.randperm(10)
    s_p = dataclasses.replace(s, visual=s.visual[:, perm_s], visual_mask=s.visual_mask[:, perm_s])
    t_p = dataclasses.replace(t, visual=t.visual[:, perm_t], visual_mask=t.visual_mask[:, perm_t])
    torch.testing.assert_close(loss(s_p, t_p).loss, base, atol=1e-6, rtol=0)


def test_ot_gradients_reach_student_and_projection_not_teacher() -> None:
    loss = build_loss("ot", CONTEXT)
    s, t = _with_grad(_student()), _with_grad(_teacher())
    loss(s, t).loss.backward()
    assert s.visual.grad.abs().sum() > 0 and t.visual.grad is None and loss.proj.weight.grad.abs().sum() > 0
    assert float(s.visual.grad[~s.visual_mask].abs().sum()) == 0.0


# ---- every loss ----------------------------------------------------------------------------------------------------
def _run(name: str, loss: nn.Module, s: SideOutputs, t: SideOutputs, den: Denominators | None, target=None):
    if name == "relation":
        return loss(s, t, den, aligned_teacher=target)
    return loss(s, t, den)


@pytest.mark.parametrize("name", ["ce", "mhca", "ot", "relation"])
def test_global_denominators_make_micro_batches_sum_to_the_full_batch(name: str) -> None:
    torch.manual_seed(0)
    loss = build_loss(name, CONTEXT)
    s, t = _student(), _teacher()
    target = torch.randn(3, 7, D_S, generator=torch.Generator().manual_seed(5))
    full = _run(name, loss, s, t, None, target).loss
    n = s.attention_mask.sum(1).double()
    den = Denominators(
        response_tokens=float(s.next_token_targets()[1].sum()),
        ce_tokens=float(s.next_token_targets()[1].sum()),
        student_positions=float(s.attention_mask.sum()),
        student_pairs=float((n * (n - 1)).sum()),
        samples=3.0,
    )
    parts = [slice(0, 1), slice(1, 3)]
    split = sum(_run(name, loss, _take(s, p), _take(t, p), den, target[p]).loss for p in parts)
    torch.testing.assert_close(split, full, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["ce", "mhca", "ot", "relation"])
def test_finite_values_and_gradients_under_bf16_autocast(name: str) -> None:
    torch.manual_seed(0)
    loss = build_loss(name, CONTEXT)
    s, t = _with_grad(_student()), _teacher()
    target = torch.randn(3, 7, D_S, generator=torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _run(name, loss, s, t, None, target)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [s.logits.grad, s.hidden.grad, s.visual.grad, *[p.grad for p in loss.parameters()]]
    assert any(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)


def _small_context() -> LossContext:
    return LossContext(student_hidden=4, teacher_hidden=6, student_visual=3, teacher_visual=5)


def test_mhca_gradcheck_float64() -> None:
    torch.manual_seed(0)
    loss = build_loss("mhca", _small_context(), heads=2, bias=True).double()
    mask_s = torch.tensor([[True, True, True], [True, True, False]])
    mask_t = torch.tensor([[True, True, True, False], [True, True, False, False]])
    h_s = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    h_t = torch.randn(2, 4, 6, dtype=torch.float64)
    params = list(loss.parameters())

    def f(h: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        s = SideOutputs(logits=h[..., :1], hidden=h, attention_mask=mask_s, labels=torch.zeros(2, 3, dtype=torch.long))
        t = SideOutputs(
            logits=h_t[..., :1], hidden=h_t, attention_mask=mask_t, labels=torch.zeros(2, 4, dtype=torch.long)
        )
        names = [n for n, _ in loss.named_parameters()]
        return torch.func.functional_call(loss, dict(zip(names, weights, strict=True)), (s, t)).loss

    assert torch.autograd.gradcheck(f, (h_s, *[p.detach().clone().requires_grad_(True) for p in params]))


def test_relation_gradcheck_float64() -> None:
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    h_s = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    h_t = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    loss = build_loss("relation", detach_target=False)

    def f(h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        s = SideOutputs(logits=h[..., :1], hidden=h, attention_mask=mask, labels=torch.zeros(2, 4, dtype=torch.long))
        return loss(s, None, aligned_teacher=target).loss

    assert torch.autograd.gradcheck(f, (h_s, h_t))


class _CostOf(nn.Module):
    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.loss.cost(*args)


def test_ot_gradcheck_float64_with_plan_constant() -> None:
    from evl_ecg.distill.sinkhorn import sinkhorn, uniform_marginals

    torch.manual_seed(0)
    cost_of = _CostOf(build_loss("ot", _small_context()).double())
    mask_s = torch.tensor([[True, True, True], [True, True, False]])
    mask_t = torch.tensor([[True, True, True, True], [True, True, True, False]])
    v_s = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    v_t = torch.randn(2, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        c = cost_of(v_s, v_t, mask_s, mask_t)
        plan = sinkhorn(c, uniform_marginals(mask_t, c.dtype), uniform_marginals(mask_s, c.dtype)).plan
    weight = cost_of.loss.proj.weight.detach().clone().requires_grad_(True)

    def f(vs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        cost = torch.func.functional_call(cost_of, {"loss.proj.weight": w}, (vs, v_t, mask_s, mask_t))
        return (plan * cost).sum()

    assert torch.autograd.gradcheck(f, (v_s, weight))


def test_mhca_mean_reduction_is_the_mean_squared_error_per_feature() -> None:
    torch.manual_seed(0)
    loss = build_loss("mhca", CONTEXT, heads=4, reduction="mean")
    s, t = _student(), _teacher()
    out = loss(s, t)
    ref = _mha_reference(loss, s, t, t.attention_mask, bias=False)
    m = s.attention_mask
    ref_loss = sum(
        float(((s.hidden[b, i] - ref[b, i]) ** 2).mean()) for b in range(3) for i in range(7) if m[b, i]
    ) / float(m.sum())
    assert float(out.loss.detach()) == pytest.approx(ref_loss, rel=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        build_loss("mhca", CONTEXT, reduction="max")


def test_ot_fixed_projection_gets_no_gradient_and_its_value_is_the_pot_reference() -> None:
    torch.manual_seed(0)
    loss = build_loss("ot", CONTEXT, tol=1e-9, train_proj=False)
    s = _with_grad(_student())
    out = loss(s, _teacher())
    assert float(out.loss.detach()) == pytest.approx(_ot_reference(loss, s, _teacher()), abs=1e-6)
    out.loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in loss.parameters())
    assert s.visual.grad is not None and float(s.visual.grad.abs().sum()) > 0


def test_mhca_normalize_standardises_both_sides_per_position_before_attention_and_error() -> None:
    torch.manual_seed(0)
    loss = build_loss("mhca", CONTEXT, heads=4, reduction="mean", normalize=True)
    s, t = _student(), _teacher()
    out = loss(s, t)

    def standardise(h: torch.Tensor) -> torch.Tensor:  # by hand: zero mean, unit (biased) variance per position
        mu = h.mean(-1, keepdim=True)
        var = ((h - mu) ** 2).mean(-1, keepdim=True)
        return (h - mu) / torch.sqrt(var + 1e-5)

    s_n = dataclasses.replace(s, hidden=standardise(s.hidden))
    t_n = dataclasses.replace(t, hidden=standardise(t.hidden))
    ref = _mha_reference(loss, s_n, t_n, t.attention_mask, bias=False)
    m = s.attention_mask
    torch.testing.assert_close(out.extras["aligned_teacher"][m], ref[m], atol=1e-5, rtol=1e-5)
    ref_loss = sum(
        float(((s_n.hidden[b, i] - ref[b, i]) ** 2).mean()) for b in range(3) for i in range(7) if m[b, i]
    ) / float(m.sum())
    assert float(out.loss.detach()) == pytest.approx(ref_loss, rel=1e-5)
    # scaling the student's states changes nothing: the term cannot fall by shrinking them
    scaled = loss(dataclasses.replace(s, hidden=0.1 * s.hidden), t)
    assert float(scaled.loss) == pytest.approx(float(out.loss), rel=1e-2)


def test_ce_leaves_out_answers_that_are_context_only() -> None:
    """``ce_mask`` (records with ``meta`` ``"ce": false``): CE is the token mean over the other samples' answers, by
    hand from the logits, and its unit ``ce_tokens`` counts only their tokens."""
    from evl_ecg.train.trainer import count_denominators

    s = _student()
    masked = dataclasses.replace(s, ce_mask=torch.tensor([True, False, True]))
    got = build_loss("ce", CONTEXT)(masked, None).loss
    targets, mask = s.next_token_targets()
    rows = [(b, p) for b in (0, 2) for p in range(mask.shape[1]) if mask[b, p]]
    want = sum(-torch.log_softmax(s.logits[b, p].double(), -1)[targets[b, p]] for b, p in rows) / len(rows)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    batch = {"labels": s.labels, "attention_mask": s.attention_mask, "ce_mask": masked.ce_mask}
    counts = count_denominators([batch])
    assert counts["ce_tokens"] == len(rows) < counts["response_tokens"] == int(mask.sum())
