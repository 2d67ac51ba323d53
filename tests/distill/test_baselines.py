"""A tiny random teacher/student batch for the baseline tests: different L, V, D, N, layers and heads per side.

Sample ``b``: ``[prompt][visual tokens][prompt][response tokens][end token][padding]``. Both sides tokenise the same
response text (student in 3-byte chunks, teacher in 2-byte chunks), so ``token_offsets`` are consistent: boundaries
common to both sides fall at multiples of 6 bytes and at the end.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from evl_ecg.distill.registry import LossContext
from evl_ecg.outputs import IGNORE_INDEX, SideOutputs

ANSWERS = ["hello world!", "abcdefg", "xyz 12"]
STUDENT = {"V": 7, "D": 6, "N": [3, 2, 3], "layers": 2, "heads": 2, "chunk": 3, "prompt": (2, 1), "marker": "\u0120"}
TEACHER = {"V": 9, "D": 8, "N": [5, 4, 5], "layers": 4, "heads": 3, "chunk": 2, "prompt": (1, 2), "marker": "\u2581"}


def vocab(spec: dict, v: int) -> list[str]:
    """Token strings; ``x0..x3`` are shared (with the side's own space marker on ``x1``), the rest differ."""
    m = spec["marker"]
    words = ["x0", m + "x1", "x2", "x3"]
    return words + [f"{m}{'s' if m == chr(0x120) else 't'}{i}" for i in range(v - len(words))]


def _side(spec: dict, seed: int, dtype: torch.dtype, requires_grad: bool) -> SideOutputs:
    g = torch.Generator().manual_seed(seed)
    b = len(ANSWERS)
    layouts = []
    for i, text in enumerate(ANSWERS):
        n_bytes = len(text.encode())
        spans = [(s, min(s + spec["chunk"], n_bytes)) for s in range(0, n_bytes, spec["chunk"])] + [(n_bytes, n_bytes)]
        layouts.append((spec["prompt"][0], spec["N"][i], spec["prompt"][1], spans))
    lengths = [p0 + n + p1 + len(sp) for p0, n, p1, sp in layouts]
    L = max(lengths) + 1  # at least one padded position
    V, D, H = spec["V"], spec["D"], spec["heads"]
    n_max = max(spec["N"])
    input_ids = torch.randint(0, V, (b, L), generator=g)
    labels = torch.full((b, L), IGNORE_INDEX)
    mask = torch.zeros(b, L, dtype=torch.bool)
    offsets = torch.full((b, L, 2), -1)
    image_positions = torch.full((b, n_max), -1)
    for i, (p0, n, p1, spans) in enumerate(layouts):
        mask[i, : lengths[i]] = True
        image_positions[i, :n] = torch.arange(p0, p0 + n)
        r0 = p0 + n + p1
        for k, (s, e) in enumerate(spans):
            labels[i, r0 + k] = input_ids[i, r0 + k]
            offsets[i, r0 + k] = torch.tensor([s, e])

    def rnd(*shape: int) -> torch.Tensor:
        x = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
        return x.requires_grad_(requires_grad)

    scores = torch.randn(b, H, L, L, generator=g, dtype=torch.float64)
    key_ok = mask[:, None, None, :]
    att = []
    for _ in range(spec["layers"]):
        s = torch.randn(b, H, L, L, generator=g, dtype=torch.float64) + scores
        att.append(torch.softmax(s.masked_fill(~key_ok, float("-inf")), -1).to(dtype).requires_grad_(requires_grad))
    return SideOutputs(
        logits=rnd(b, L, V),
        hidden=rnd(b, L, D),
        attention_mask=mask,
        labels=labels,
        input_ids=input_ids,
        text_mask=mask.clone(),
        visual=None,
        image_positions=image_positions,
        embedding_weight=torch.randn(V, D, generator=g, dtype=torch.float64).to(dtype),
        lm_head_weight=torch.randn(V, D, generator=g, dtype=torch.float64).to(dtype),
        all_hidden=tuple(rnd(b, L, D) for _ in range(spec["layers"] + 1)),
        attentions=tuple(att),
        attention_kind="probs",
        token_offsets=offsets,
        vocab=vocab(spec, V),
    )


def make_batch(
    seed: int = 0, dtype: torch.dtype = torch.float32, requires_grad: bool = True
) -> tuple[SideOutputs, SideOutputs, LossContext]:
    student = _side(STUDENT, seed, dtype, requires_grad)
    teacher = _side(TEACHER, seed + 1000, dtype, False)
    context = LossContext(
        student_hidden=STUDENT["D"],
        teacher_hidden=TEACHER["D"],
        student_vocab=student.vocab,
        teacher_vocab=teacher.vocab,
        student_layers=STUDENT["layers"],
        teacher_layers=TEACHER["layers"],
        student_heads=STUDENT["heads"],
        teacher_heads=TEACHER["heads"],
    )
    return student, teacher, context


def pad_junk(side: SideOutputs, extra: int = 3, value: float = float("nan")) -> SideOutputs:
    """``side`` with ``extra`` more padded positions whose float entries are ``value`` (junk that must not leak)."""
    b, length = side.attention_mask.shape

    def grow(t: torch.Tensor, dims: tuple[int, ...], fill: float | int) -> torch.Tensor:
        out = t.detach()
        for d in dims:
            shape = list(out.shape)
            shape[d] = extra
            out = torch.cat([out, torch.full(shape, fill, dtype=out.dtype)], dim=d)
        return out

    changes = {
        "logits": grow(side.logits, (1,), value),
        "hidden": grow(side.hidden, (1,), value),
        "attention_mask": grow(side.attention_mask, (1,), False),
        "labels": grow(side.labels, (1,), IGNORE_INDEX),
        "input_ids": grow(side.input_ids, (1,), 1),
        "text_mask": grow(side.text_mask, (1,), False),
        "token_offsets": grow(side.token_offsets, (1,), -1),
        "all_hidden": tuple(grow(h, (1,), value) for h in side.all_hidden),
        "attentions": tuple(grow(a, (2, 3), value) for a in side.attentions),
    }
    # junk visual slots: image_positions -1
    changes["image_positions"] = grow(side.image_positions, (1,), -1)
    return replace(side, **changes)


# =====================================================================================================================
# tests
# =====================================================================================================================
import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from evl_ecg.distill.baselines import (  # noqa: E402
    BASELINE_PRESETS,
    DEVIATIONS,
    build_vocab_map,
    uniform_layer_map,
)
from evl_ecg.distill.baselines._common import align, segment_ids, student_rows  # noqa: E402
from evl_ecg.distill.objective import Objective  # noqa: E402
from evl_ecg.distill.registry import Denominators, DistillLoss, build_loss, registered  # noqa: E402

NAMES = ["vanilla_kl", "tinybert", "uld", "multilevel_ot", "dskd", "emkd", "rkd"]
OPTIONS = {
    "vanilla_kl": {"align": "offsets"},
    "tinybert": {"pred_weight": 1.0},
    "uld": {},
    "multilevel_ot": {},
    "dskd": {},
    "emkd": {"rld_weight": 0.5},
    "rkd": {},
}


def _build(name: str, context: LossContext, **extra) -> DistillLoss:
    torch.manual_seed(0)
    return build_loss(name, context, **{**OPTIONS[name], **extra})


def mk(logits, labels, *, hidden=None, mask=None, **kw) -> SideOutputs:
    """A hand-made side: ``logits`` (B x L x V) and ``labels`` (B x L) as nested lists."""
    logits = torch.tensor(logits, dtype=torch.float64)
    labels = torch.tensor(labels)
    b, length = labels.shape
    if hidden is None:
        hidden = torch.zeros(b, length, 2, dtype=torch.float64)
    mask = torch.ones(b, length, dtype=torch.bool) if mask is None else torch.tensor(mask)
    return SideOutputs(
        logits=logits, hidden=torch.as_tensor(hidden, dtype=torch.float64), attention_mask=mask, labels=labels, **kw
    )


def np_softmax(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_kl(p, q):
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0))


# ---- every baseline --------------------------------------------------------------------------------------------
def test_every_baseline_is_registered():
    assert set(NAMES) <= set(registered())


@pytest.mark.parametrize("name", NAMES)
def test_build_loss_by_name(name):
    _, _, ctx = make_batch()
    loss = _build(name, ctx)
    assert isinstance(loss, DistillLoss) and loss.name == name


@pytest.mark.parametrize("name", NAMES)
def test_finite_loss_and_grads_under_bf16_autocast(name):
    student, teacher, ctx = make_batch(seed=1, dtype=torch.bfloat16)
    loss = _build(name, ctx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(student, teacher.detached())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    leaves = [student.logits, student.hidden, *student.all_hidden]
    grads = [t.grad for t in leaves if t.grad is not None]
    assert grads and all(torch.isfinite(g.float()).all() for g in grads)
    assert any(g.float().abs().sum() > 0 for g in grads)
    for p in loss.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_padding_does_not_change_loss(name):
    student, teacher, ctx = make_batch(seed=2, requires_grad=False)
    loss = _build(name, ctx)
    ref = loss(student, teacher)
    out = loss(pad_junk(student, 3), pad_junk(teacher, 5))
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_float64_gradcheck(name):
    student, teacher, ctx = make_batch(seed=3, dtype=torch.float64)
    loss = _build(name, ctx).double()
    teacher = teacher.detached()
    field = {"vanilla_kl": "logits", "uld": "logits", "multilevel_ot": "logits"}.get(name, "hidden")
    if name == "tinybert":
        x0 = student.all_hidden[1].detach().clone().requires_grad_(True)

        def fn(x):
            hs = (student.all_hidden[0], x, student.all_hidden[2])
            return loss(replace(student, all_hidden=hs), teacher).loss
    else:
        x0 = getattr(student, field).detach().clone().requires_grad_(True)

        def fn(x):
            return loss(replace(student, **{field: x}), teacher).loss

    assert torch.autograd.gradcheck(fn, (x0,), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("preset", sorted(BASELINE_PRESETS))
def test_presets_build_and_run_as_objectives(preset):
    student, teacher, ctx = make_batch(seed=4)
    objective = Objective(BASELINE_PRESETS[preset], ctx)
    out = objective(student, teacher.detached())
    assert torch.isfinite(out.loss)
    assert set(BASELINE_PRESETS) == {"vanilla-kl", "tinybert", "uld", "multilevel-ot", "dskd", "emkd", "rkd"}


def test_preset_totals_reproduce_the_authors_scales():
    uld = Objective(BASELINE_PRESETS["uld"], make_batch()[2])
    assert uld.ce_weight == 1.0 and uld.alpha * uld.weights["uld"] == 1.5
    dskd = Objective(BASELINE_PRESETS["dskd"], make_batch()[2])
    assert dskd.ce_weight == 0.5 and dskd.alpha == 0.5
    emkd = BASELINE_PRESETS["emkd"]
    assert emkd["ce_weight"] == 0.5 and emkd["terms"]["emkd"]["rld_weight"] == 0.5


def test_deviations_table_is_complete():
    methods = {d["method"] for d in DEVIATIONS}
    assert set(BASELINE_PRESETS) <= methods
    assert all(set(d) == {"method", "authors", "ours", "why"} for d in DEVIATIONS)


# ---- vocabulary map --------------------------------------------------------------------------------------------
def test_vocab_map_pairs_and_coverage_by_hand():
    s = ["a", "\u0120b", "c", "<|im_end|>", "\u0120b"]
    t = ["\u2581b", "a", "d", "</s>"]
    m = build_vocab_map(s, t, "space")
    assert m.teacher_ids.tolist() == [0, 1] and m.student_ids.tolist() == [1, 0]
    assert m.coverage_teacher == 2 / 4 and m.coverage_student == 2 / 5
    m = build_vocab_map(s, t, "none")
    assert m.teacher_ids.tolist() == [1] and m.student_ids.tolist() == [0]
    m = build_vocab_map(s, t, "space", special_pairs={"</s>": "<|im_end|>"})
    assert m.teacher_ids.tolist() == [0, 1, 3] and m.student_ids.tolist() == [1, 0, 3]
    with pytest.raises(ValueError):
        build_vocab_map(s, t, "space", special_pairs={"<eos>": "<|im_end|>"})


def test_vocab_map_bytes_mode_decodes_both_schemes():
    s = ["\u010a", "\u0120hi", "\u00c3\u00a9", "zz"]  # byte-level: "\n", " hi", "é" (as bytes C3 A9)
    t = ["<0x0A>", "\u2581hi", "é", "\u2581zz"]  # sentencepiece
    m = build_vocab_map(s, t, "bytes")
    assert sorted(zip(m.student_ids.tolist(), m.teacher_ids.tolist(), strict=True)) == [(0, 0), (1, 1), (2, 2)]
    assert len(build_vocab_map(s, t, "space")) == 1  # " hi" only


def test_vanilla_kl_logs_coverage_by_hand():
    student, teacher, ctx = make_batch(seed=5, requires_grad=False)
    out = _build("vanilla_kl", ctx)(student, teacher)
    # fixture vocabularies share x0, x1 (space marker normalised), x2, x3
    assert out.logs["coverage_student_vocab"] == pytest.approx(4 / 7)
    assert out.logs["coverage_teacher_vocab"] == pytest.approx(4 / 9)


# ---- alignment -------------------------------------------------------------------------------------------------
def test_segment_ids_by_hand():
    m = torch.tensor([[False, True, True, False, True]])
    assert segment_ids(m).tolist() == [[-1, 0, 0, -1, 1]]


def _offset_pair():
    # student "ab" "cd" END ; teacher "a" "b" "cd" END (answer "abcd", 4 bytes)
    s = mk([[[0.0] * 3] * 4], [[-100, 1, 2, 0]], token_offsets=torch.tensor([[[-1, -1], [0, 2], [2, 4], [4, 4]]]))
    t = mk(
        [[[0.0] * 3] * 6],
        [[-100, -100, 1, 2, 1, 0]],
        token_offsets=torch.tensor([[[-1, -1], [-1, -1], [0, 1], [1, 2], [2, 4], [4, 4]]]),
    )
    return s, t


def test_offset_alignment_by_hand():
    s, t = _offset_pair()
    rows = align(s, t, "offsets", "rows")
    assert list(zip(rows.student.tolist(), rows.teacher.tolist(), strict=True)) == [(0, 1), (1, 3), (2, 4)]
    toks = align(s, t, "offsets", "tokens")
    assert list(zip(toks.student.tolist(), toks.teacher.tolist(), strict=True)) == [(1, 3), (2, 4), (3, 5)]
    idx = align(s, t, "index", "rows")
    assert list(zip(idx.student.tolist(), idx.teacher.tolist(), strict=True)) == [(0, 1), (1, 2), (2, 3)]


# ---- vanilla KL ------------------------------------------------------------------------------------------------
def test_vanilla_kl_by_hand():
    zs = [[1.0, 2.0, 0.0], [0.5, -1.0, 2.0], [3.0, 3.0, 3.0]]
    zt = [[0.0] * 4, [0.3, 1.0, -0.5, 2.0], [1.5, -2.0, 0.7, 0.1], [9.0] * 4]
    s = mk([zs], [[-100, 1, 2]], vocab=["a", "\u0120b", "c"])
    t = mk([zt], [[-100, -100, 0, 3]], vocab=["x", "\u2581b", "a", "y"])
    ctx = LossContext(student_vocab=s.vocab, teacher_vocab=t.vocab)
    T = 2.0
    out = build_loss("vanilla_kl", ctx, temperature=T, align="index")(s, t)
    # map: teacher 1 <-> student 1 ("b"), teacher 2 <-> student 0 ("a"); rows (s0, t1), (s1, t2)
    total, mass = 0.0, []
    for rs, rt in [(0, 1), (1, 2)]:
        pt = np_softmax([zt[rt][1] / T, zt[rt][2] / T])
        ps = np_softmax([zs[rs][1] / T, zs[rs][0] / T])
        total += T * T * np_kl(pt, ps)
        full = np_softmax(np.array(zt[rt]) / T)
        mass.append(full[1] + full[2])
    assert out.loss.item() == pytest.approx(total / 2, rel=1e-9)
    assert float(out.logs["coverage_mass"]) == pytest.approx(np.mean(mass), rel=1e-9)
    assert out.logs["paired_fraction"] == 1.0


def test_vanilla_kl_is_zero_for_equal_distributions_and_uses_global_denominator():
    z = [[0.2, -0.3, 1.0], [0.0, 0.5, 0.1], [0.0, 0.0, 0.0]]
    s = mk([z], [[-100, 0, 1]], vocab=["a", "b", "c"])
    t = mk([z], [[-100, 0, 1]], vocab=["a", "b", "c"])
    loss = build_loss("vanilla_kl", LossContext(student_vocab=s.vocab, teacher_vocab=t.vocab))
    assert loss(s, t).loss.item() == pytest.approx(0.0, abs=1e-12)
    zt = [[1.0, -0.3, 1.0], [0.0, 0.5, 2.1], [0.0, 0.0, 0.0]]
    t = mk([zt], [[-100, 0, 1]], vocab=["a", "b", "c"])
    from evl_ecg.distill.registry import Denominators

    a = loss(s, t).loss
    b = loss(s, t, Denominators(response_tokens=8)).loss
    assert b.item() == pytest.approx(a.item() * 2 / 8)


# ---- ULD -------------------------------------------------------------------------------------------------------
def _uld_expected(rows_s, rows_t):
    per = []
    for zs, zt in zip(rows_s, rows_t, strict=True):
        n = min(len(zs), len(zt))
        vals = []
        for k in range(n):
            a = sorted(np_softmax(zs[k]), reverse=True)
            b = sorted(np_softmax(zt[k]), reverse=True)
            v = max(len(a), len(b))
            a, b = a + [0.0] * (v - len(a)), b + [0.0] * (v - len(b))
            vals.append(sum(abs(x - y) for x, y in zip(a, b, strict=True)))
        per.append(sum(vals) / n)
    return sum(per) / len(per)


def _rows_side(rows, v, pad_value=0.0):
    """A side whose supervised next-token rows are exactly ``rows[b]`` (positions 0..n_b-1)."""
    b = len(rows)
    length = max(len(r) for r in rows) + 2
    logits = np.full((b, length, v), pad_value)
    labels = np.full((b, length), -100)
    mask = np.zeros((b, length), dtype=bool)
    for i, r in enumerate(rows):
        logits[i, : len(r)] = r
        labels[i, 1 : len(r) + 1] = 0
        mask[i, : len(r) + 1] = True
    return mk(logits.tolist(), labels.tolist(), mask=mask.tolist())


def test_uld_by_hand():
    rows_s = [[[1.0, 0.0, -1.0], [0.2, 0.3, 0.1]], [[2.0, -1.0, 0.5]]]
    rows_t = [[[0.0, 1.0, 2.0, -1.0], [0.5, 0.5, 0.0, 1.0], [3.0, 0.0, 0.0, 0.0]], [[1.0, 1.0, 0.0, -2.0]] * 2]
    loss = build_loss("uld", LossContext(), skip_student_eos=False)
    out = loss(_rows_side(rows_s, 3), _rows_side(rows_t, 4))
    assert out.loss.item() == pytest.approx(_uld_expected(rows_s, rows_t), rel=1e-9)
    # skip_student_eos drops the student's last row of each answer
    out = build_loss("uld", LossContext(), skip_student_eos=True)(_rows_side(rows_s, 3), _rows_side(rows_t, 4))
    assert out.loss.item() == pytest.approx(_uld_expected([rows_s[0][:1]], [rows_t[0]]), rel=1e-9)


def test_uld_is_invariant_under_vocabulary_permutation():
    student, teacher, ctx = make_batch(seed=6, requires_grad=False)
    loss = _build("uld", ctx)
    ref = loss(student, teacher).loss
    g = torch.Generator().manual_seed(0)
    ps, pt = torch.randperm(7, generator=g), torch.randperm(9, generator=g)
    out = loss(replace(student, logits=student.logits[..., ps]), replace(teacher, logits=teacher.logits[..., pt])).loss
    torch.testing.assert_close(out, ref)
    other = loss(replace(student, logits=student.logits * 2), teacher).loss
    assert not torch.allclose(other, ref)


# ---- MultiLevelOT ----------------------------------------------------------------------------------------------
def _mlot_reference(rows_s, rows_t, top_k, masked, reduction):
    """The official code's steps, in numpy loops."""

    def probs(rows, v, r):
        out = np.zeros((r, v))
        for k, z in enumerate(rows):
            z = np.asarray(z, dtype=np.float64)
            z = z / (z.std(ddof=1) + 1e-4)
            out[k] = np_softmax(z)
        return out

    r = max(max(len(x) for x in rows_s), max(len(x) for x in rows_t))
    ps = np.stack([probs(x, len(rows_s[0][0]), r) for x in rows_s])
    pt = np.stack([probs(x, len(rows_t[0][0]), r) for x in rows_t])
    ps = ps[:, :, np.argsort(-ps.sum((0, 1)), kind="stable")[:top_k]]
    pt = pt[:, :, np.argsort(-pt.sum((0, 1)), kind="stable")[:top_k]]
    b = len(rows_s)
    n = [min(len(rows_s[i]), len(rows_t[i])) for i in range(b)]
    token = np.mean([np.abs(ps[i, : n[i]] - pt[i, : n[i]]).sum(-1).mean() for i in range(b)])
    ce = -(np_softmax(ps) * np.log(np_softmax(pt))).sum(-1)
    kl = np.mean([ce[i, : n[i]].mean() for i in range(b)]) if masked else ce.mean()  # masked: per-sample means
    sink = []
    for i in range(b):
        qs, qt = np_softmax(ps[i] / 2), np_softmax(pt[i] / 2)
        if masked:
            qs, qt = qs[: len(rows_s[i])], qt[: len(rows_t[i])]
        cost = np.array([[np.abs(a - c).sum() for c in qs] for a in qt])
        plan = np.exp(-cost / 0.1)
        for _ in range(10):
            plan = plan / plan.sum(1, keepdims=True)
            plan = plan / plan.sum(0, keepdims=True)
        sink.append(0.001 * (plan * cost).sum())
    sink = sum(sink) if reduction == "sum" else np.mean(sink)
    return token + 0.1 * kl + 0.1 * sink


@pytest.mark.parametrize("faithful", [True, False])
def test_multilevel_ot_matches_the_code_by_hand(faithful):
    g = np.random.default_rng(0)
    rows_s = [g.normal(size=(3, 4)).tolist(), g.normal(size=(1, 4)).tolist()]
    rows_t = [g.normal(size=(2, 5)).tolist(), g.normal(size=(3, 5)).tolist()]
    loss = build_loss("multilevel_ot", LossContext(), faithful=faithful, top_k=3, skip_student_eos=False)
    out = loss(_rows_side(rows_s, 4), _rows_side(rows_t, 5))
    expected = _mlot_reference(rows_s, rows_t, 3, masked=not faithful, reduction="sum" if faithful else "mean")
    assert out.loss.item() == pytest.approx(expected, rel=1e-8)


def test_multilevel_ot_masked_option_differs_from_faithful_only_with_unequal_answers():
    g = np.random.default_rng(1)
    rows_s = [g.normal(size=(2, 4)).tolist(), g.normal(size=(1, 4)).tolist()]
    rows_t = [g.normal(size=(2, 5)).tolist(), g.normal(size=(2, 5)).tolist()]
    s, t = _rows_side(rows_s, 4), _rows_side(rows_t, 5)
    a = build_loss("multilevel_ot", LossContext(), masked=False, skip_student_eos=False)(s, t).loss
    b = build_loss("multilevel_ot", LossContext(), masked=True, skip_student_eos=False)(s, t).loss
    assert not torch.allclose(a, b)


def _left_padded_rows_side(rows, v, left):
    """:func:`_rows_side` with ``left[b]`` NaN-filled padded positions in front of sample ``b`` (left padding)."""
    right = _rows_side(rows, v)
    length = right.labels.shape[1] + max(left)
    logits = torch.full((len(rows), length, v), float("nan"), dtype=torch.float64)
    labels = torch.full((len(rows), length), IGNORE_INDEX)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, k in enumerate(left):
        n = int(right.attention_mask[i].sum())
        logits[i, k : k + n] = right.logits[i, :n]
        labels[i, k : k + n] = right.labels[i, :n]
        mask[i, k : k + n] = True
    return mk(logits.tolist(), labels.tolist(), mask=mask.tolist())


@pytest.mark.parametrize("faithful", [True, False])
def test_multilevel_ot_left_padding_gives_finite_gradients_equal_to_the_unpadded_ones(faithful):
    # the teacher's answer is longer than the student's, so the student has empty row slots; they gather position
    # 0, which left padding makes a NaN-filled padded position
    g = np.random.default_rng(3)
    rows_s, rows_t = [g.normal(size=(2, 4)).tolist()], [g.normal(size=(4, 5)).tolist()]
    loss = build_loss("multilevel_ot", LossContext(), faithful=faithful, top_k=3, skip_student_eos=False)
    plain = _rows_side(rows_s, 4)
    plain.logits.requires_grad_(True)
    ref = loss(plain, _rows_side(rows_t, 5)).loss
    (g_ref,) = torch.autograd.grad(ref, plain.logits)
    padded = _left_padded_rows_side(rows_s, 4, [3])
    padded.logits.requires_grad_(True)
    out = loss(padded, _left_padded_rows_side(rows_t, 5, [2])).loss
    (grad,) = torch.autograd.grad(out, padded.logits)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(out, ref)
    n = int(plain.attention_mask.sum())
    torch.testing.assert_close(grad[0, 3 : 3 + n], g_ref[0, :n])
    assert float(grad[0, :3].abs().sum()) == 0.0
    # a batch: the short answer left-padded gives the gradients of the same batch right-padded
    rows_s = [g.normal(size=(3, 4)).tolist(), g.normal(size=(1, 4)).tolist()]
    rows_t = [g.normal(size=(2, 5)).tolist(), g.normal(size=(3, 5)).tolist()]
    right, left = _rows_side(rows_s, 4), _left_padded_rows_side(rows_s, 4, [0, 2])
    values, grads = [], []
    for side in (right, left):
        side.logits.requires_grad_(True)
        values.append(loss(side, _rows_side(rows_t, 5)).loss)
        grads.append(torch.autograd.grad(values[-1], side.logits)[0])
    assert torch.isfinite(grads[1]).all()
    torch.testing.assert_close(values[1], values[0])
    torch.testing.assert_close(grads[1][1, 2:4], grads[0][1, :2])
    torch.testing.assert_close(grads[1][0, :4], grads[0][0, :4])


def _ordered_rows(g, lengths, v, scale=2.0):
    """Answer rows whose columns keep one order in any sub-batch (a large decreasing bias plus small noise), so that
    MultiLevelOT's batch-level top-k column order is the same in every micro-batch."""
    bias = np.linspace(scale, -scale, v)
    return [(bias + 0.05 * g.normal(size=(n, v))).tolist() for n in lengths]


MLOT_MODES = [{"faithful": True}, {"faithful": False}, {"faithful": True, "sinkhorn_reduction": "mean"}]


@pytest.mark.parametrize("micro_batches", [2, 3])
@pytest.mark.parametrize("options", MLOT_MODES)
def test_multilevel_ot_micro_batches_with_global_samples_sum_to_the_full_batch(options, micro_batches):
    g = np.random.default_rng(4)
    # faithful mode pads every sample to the micro-batch's longest answer (the code's quirk): equal lengths there
    lengths_s = [3] * 6 if options["faithful"] else [3, 2, 4, 3, 1, 2]
    lengths_t = [3] * 6 if options["faithful"] else [2, 3, 4, 1, 2, 3]
    rows_s, rows_t = _ordered_rows(g, lengths_s, 6), _ordered_rows(g, lengths_t, 7)
    loss = build_loss("multilevel_ot", LossContext(), top_k=4, skip_student_eos=False, **options)
    full = loss(_rows_side(rows_s, 6), _rows_side(rows_t, 7)).logs
    den = Denominators(samples=6.0)
    size = 6 // micro_batches
    parts = [
        loss(_rows_side(rows_s[k : k + size], 6), _rows_side(rows_t[k : k + size], 7), den).logs
        for k in range(0, 6, size)
    ]
    for key in ("loss", "token_l1", "kl_wo", "sinkhorn"):
        torch.testing.assert_close(sum(p[key] for p in parts), full[key], rtol=1e-12, atol=1e-12)


# ---- DSKD ------------------------------------------------------------------------------------------------------
def _dskd_reference(loss, s, t, temp, t_tea):
    np_ = {k: v.detach().numpy().astype(np.float64) for k, v in loss.state_dict().items()}

    def emb(side):
        e = side.embedding_weight.numpy()
        lab = side.labels[0].numpy()
        tgt = np.append(lab[1:], -100)
        m = (tgt != -100) & side.attention_mask[0].numpy()
        ids = side.input_ids[0].numpy()
        return e[ids], e[np.where(m, tgt, 0)], m, np.where(m, tgt, 0)

    ex_s, ey_s, m_s, y_s = emb(s)
    ex_t, ey_t, m_t, y_t = emb(t)
    idx_t = np.concatenate([ex_t, ey_t], -1)
    idx_t = idx_t / idx_t.std(ddof=1)
    ey_n = ey_t / ey_t.std(ddof=1)
    h_t = t.hidden[0].numpy()
    h_t = h_t / h_t.std(ddof=1)
    h_s = s.hidden[0].detach().numpy()
    q = np.concatenate([ex_s, ey_s], -1) @ np_["query.weight"].T + np_["query.bias"]
    d_t = t.hidden.shape[-1]
    a = q @ idx_t.T / math.sqrt(2 * d_t)
    a = np.where(m_s[:, None] & m_t[None, :], a, -1e30)
    v_t = (h_t + ey_n) @ np_["t2s.weight"].T + np_["t2s.bias"]
    t2s = (np_softmax(a, 1) @ v_t) @ s.lm_head_weight.numpy().T
    z_s = s.logits[0].detach().numpy()
    ce = kd = 0.0
    hits = 0
    for i in np.nonzero(m_s)[0]:
        p = np_softmax(t2s[i])
        ce -= math.log(p[y_s[i]])
        if t2s[i].argmax() == y_s[i]:
            hits += 1
            kd += np_kl(np_softmax(t2s[i] / (temp * t_tea)), np_softmax(z_s[i] / temp))
    v_s = h_s @ np_["s2t.weight"].T + np_["s2t.bias"]
    s2t = (np_softmax(a, 0).T @ v_s) @ t.lm_head_weight.numpy().T
    z_t = t.logits[0].numpy()
    s2t_kd = sum(np_kl(np_softmax(z_t[j] / temp), np_softmax(s2t[j] / temp)) for j in np.nonzero(m_t)[0])
    return (ce + kd + s2t_kd) / m_s.sum(), hits, int(m_s.sum())


def _dskd_sides(seed):
    g = torch.Generator().manual_seed(seed)

    def side(length, v, d, labels):
        return mk(
            torch.randn(1, length, v, generator=g, dtype=torch.float64).tolist(),
            [labels],
            hidden=torch.randn(1, length, d, generator=g, dtype=torch.float64),
            input_ids=torch.randint(0, v, (1, length), generator=g),
            embedding_weight=torch.randn(v, d, generator=g, dtype=torch.float64),
            lm_head_weight=torch.randn(v, d, generator=g, dtype=torch.float64),
        )

    s = side(5, 2, 2, [-100, -100, 1, 0, 1])
    t = side(6, 4, 3, [-100, -100, -100, 2, 3, 1])
    return s, t


def test_dskd_by_hand():
    s, t = _dskd_sides(3)
    torch.manual_seed(0)
    loss = build_loss("dskd", LossContext(student_hidden=2, teacher_hidden=3), temperature=2.0).double()
    out = loss(s, t)
    expected, hits, rows = _dskd_reference(loss, s, t, 2.0, 1.0)
    assert 0 < hits < rows  # the case covers both branches of the correctness mask
    assert out.loss.item() == pytest.approx(expected, rel=1e-8)
    assert float(out.logs["t2s_acc"]) == pytest.approx(hits / rows)


def test_dskd_trains_projectors_not_lm_heads():
    student, teacher, ctx = make_batch(seed=7)
    student = replace(student, lm_head_weight=student.lm_head_weight.clone().requires_grad_(True))
    loss = _build("dskd", ctx)
    loss(student, teacher.detached()).loss.backward()
    assert student.lm_head_weight.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())


# ---- EM-KD -----------------------------------------------------------------------------------------------------
def test_emkd_by_hand():
    # positions: [img, img, text, resp, resp]; student and teacher (D = 2); the teacher's vision tokens are swapped
    hs = [[[1.0, 0.0], [0.0, 1.0], [0.3, 0.3], [1.0, 2.0], [-1.0, 0.5]]]
    ht = [[[0.0, 2.0], [3.0, 0.0], [0.1, 0.0], [2.0, 1.0], [0.5, -0.5]]]
    w_t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    labels = [[-100, -100, -100, 1, 2]]
    pos = torch.tensor([[0, 1]])
    s = mk([[[0.0] * 3] * 5], labels, hidden=hs, image_positions=pos, lm_head_weight=w_t.clone())
    t = mk([[[0.0] * 3] * 5], labels, hidden=ht, image_positions=pos, lm_head_weight=w_t)
    loss = build_loss("emkd", LossContext(student_hidden=2, teacher_hidden=2), temperature=1.0).double()
    with torch.no_grad():
        loss.proj.weight.copy_(torch.eye(2))
    out = loss(s, t)
    pairs = [(0, 1), (1, 0)]  # student vision token i <-> teacher token pi(i), cost 0
    assert out.logs["match_cost"] == pytest.approx(0.0, abs=1e-12)
    w = w_t.numpy()
    vsd = np.mean([np_kl(np_softmax(w @ np.array(hs[0][i])), np_softmax(w @ np.array(ht[0][j]))) for i, j in pairs])

    def cos(a, b):
        a, b = np.array(a), np.array(b)
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    def huber(x):
        return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5

    diffs = [cos(hs[0][i], hs[0][k]) - cos(ht[0][j], ht[0][k]) for i, j in pairs for k in (3, 4)]
    vlad = np.mean([huber(d) for d in diffs])
    assert float(out.logs["vsd"]) == pytest.approx(vsd, rel=1e-9)
    assert float(out.logs["vlad"]) == pytest.approx(vlad, rel=1e-9)
    assert out.loss.item() == pytest.approx(0.25 * vsd + 25 * vlad, rel=1e-9)


def test_emkd_logits_matching_and_mapped_space_run():
    student, teacher, ctx = make_batch(seed=8)
    out = _build("emkd", ctx, match="logits", vsd_space="mapped")(student, teacher.detached())
    assert torch.isfinite(out.loss) and out.logs["matched"] == 3 + 2 + 3


def _take_samples(side: SideOutputs, idx: slice) -> SideOutputs:
    """Samples ``idx`` of a batch (per-sample tensors and tuples of them; the weight matrices stay whole)."""
    names = ("logits", "hidden", "attention_mask", "labels", "input_ids", "text_mask", "image_positions")
    changes = {name: getattr(side, name)[idx] for name in (*names, "token_offsets")}
    for name in ("all_hidden", "attentions"):
        changes[name] = tuple(t[idx] for t in getattr(side, name))
    return replace(side, **changes)


@pytest.mark.parametrize("splits", [[slice(0, 1), slice(1, 3)], [slice(0, 1), slice(1, 2), slice(2, 3)]])
@pytest.mark.parametrize("name", ["emkd", "vanilla_kl", "uld"])  # dskd: batch-level stds (as the code)
def test_micro_batches_with_global_denominators_sum_to_the_full_batch(name, splits):
    student, teacher, ctx = make_batch(seed=11, dtype=torch.float64, requires_grad=False)
    loss = _build(name, ctx).double()
    full = loss(student, teacher).logs
    den = Denominators(response_tokens=float(student_rows(student, "rows").sum()), samples=3.0)
    parts = [loss(_take_samples(student, p), _take_samples(teacher, p), den).logs for p in splits]
    for key in ["loss"] + (["vsd", "vlad", "rld"] if name == "emkd" else []):
        torch.testing.assert_close(sum(p[key] for p in parts), full[key], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_a_label_left_on_padding_changes_nothing(name):
    # right padding whose labels are real token ids instead of -100: the row before the padding must not become a
    # row predicting a padded token
    student, teacher, ctx = make_batch(seed=12, requires_grad=False)
    loss = _build(name, ctx)
    ref = loss(student, teacher).loss

    def label_padding(side):
        return replace(side, labels=torch.where(side.attention_mask, side.labels, torch.ones_like(side.labels)))

    out = loss(label_padding(student), label_padding(teacher)).loss
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)


# ---- RKD -------------------------------------------------------------------------------------------------------
def _rkd_expected(es, et, wd=1.0, wa=2.0):
    def dist(e):
        n = len(e)
        d = np.array([[np.linalg.norm(e[i] - e[j]) if i != j else 0.0 for j in range(n)] for i in range(n)])
        return d / d[d > 0].mean()

    def ang(e):
        n = len(e)
        out = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    a, b = e[j] - e[i], e[k] - e[i]
                    na, nb = np.linalg.norm(a), np.linalg.norm(b)
                    if na > 0 and nb > 0:
                        out[i, j, k] = a @ b / na / nb
        return out

    def huber(x):
        x = np.abs(x)
        return np.where(x < 1, 0.5 * x * x, x - 0.5).mean()

    return wd * huber(dist(es) - dist(et)) + wa * huber(ang(es) - ang(et))


def test_rkd_by_hand():
    es = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    et = np.array([[1.0, 1.0, 0.0], [0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
    # two valid positions per sample whose mean is the embedding, plus a padded junk position
    hs = np.stack([es - 1, es + 1, np.full_like(es, 7)], 1)
    ht = np.stack([et + 0.5, et - 0.5, np.full_like(et, 7)], 1)
    mask = [[True, True, False]] * 3
    s = mk(np.zeros((3, 3, 2)).tolist(), [[-100] * 3] * 3, hidden=hs, mask=mask)
    t = mk(np.zeros((3, 3, 2)).tolist(), [[-100] * 3] * 3, hidden=ht, mask=mask)
    out = build_loss("rkd", LossContext())(s, t)
    assert out.loss.item() == pytest.approx(_rkd_expected(es, et), rel=1e-9)


def test_rkd_is_invariant_under_sample_permutation():
    student, teacher, ctx = make_batch(seed=9, requires_grad=False)
    loss = _build("rkd", ctx)
    ref = loss(student, teacher).loss
    perm = torch.tensor([2, 0, 1])

    def permute(side):
        return replace(
            side, hidden=side.hidden[perm], attention_mask=side.attention_mask[perm], labels=side.labels[perm]
        )

    torch.testing.assert_close(loss(permute(student), permute(teacher)).loss, ref)
    assert not torch.allclose(loss(permute(student), teacher).loss, ref)  # relations are sample-specific


def test_rkd_needs_two_samples():
    s = mk([[[0.0, 0.0]]], [[-100]])
    with pytest.raises(ValueError, match="batch size >= 2"):
        build_loss("rkd", LossContext())(s, s)


# ---- TinyBERT --------------------------------------------------------------------------------------------------
def test_tinybert_uniform_layer_map_by_hand():
    assert uniform_layer_map(2, 4) == [0, 2, 4]
    assert uniform_layer_map(3, 4) == [0, 1, 3, 4]
    assert uniform_layer_map(2, 3) == [0, 2, 3]
    assert uniform_layer_map(4, 4) == [0, 1, 2, 3, 4]


def test_tinybert_by_hand():
    g = np.random.default_rng(2)
    # student: 2 valid positions + 1 padding, 1 layer, 2 heads; teacher: 4 positions, 2 layers, 1 head; D = 2
    hs = [g.normal(size=(1, 3, 2)) for _ in range(2)]
    ht = [g.normal(size=(1, 4, 2)) for _ in range(3)]
    a_s = np_softmax(g.normal(size=(1, 2, 3, 3)))
    a_t = [np_softmax(g.normal(size=(1, 1, 4, 4))) for _ in range(2)]
    t64 = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    s = mk(
        np.zeros((1, 3, 2)).tolist(),
        [[-100, 0, -100]],
        hidden=hs[-1][0][None],
        mask=[[True, True, False]],
        all_hidden=tuple(t64(h) for h in hs),
        attentions=(t64(a_s),),
    )
    t = mk(
        np.zeros((1, 4, 2)).tolist(),
        [[-100, -100, 0, 1]],
        hidden=ht[-1],
        all_hidden=tuple(t64(h) for h in ht),
        attentions=tuple(t64(a) for a in a_t),
    )
    loss = build_loss("tinybert", LossContext(student_hidden=2, teacher_hidden=2)).double()
    with torch.no_grad():
        loss.fit_dense.weight.copy_(torch.eye(2))
        loss.fit_dense.bias.zero_()
    out = loss(s, t)

    def pool_rows(x):  # 4 rows -> 2 (area)
        return np.stack([x[0:2].mean(0), x[2:4].mean(0)])

    hidden = sum(((hs[m][0, :2] - pool_rows(ht[gm][0])) ** 2).sum() / (2 * 2) for m, gm in [(0, 0), (1, 2)])
    s_map = a_s[0].mean(0)[:2, :2]
    t_map = a_t[1][0, 0]  # student layer 1 -> teacher layer 2
    t_pooled = np.array([[t_map[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean() for j in range(2)] for i in range(2)])
    attention = ((s_map - t_pooled) ** 2).mean()
    assert float(out.logs["hidden"]) == pytest.approx(hidden, rel=1e-9)
    assert float(out.logs["attention"]) == pytest.approx(attention, rel=1e-9)
    assert out.loss.item() == pytest.approx(hidden + attention, rel=1e-9)


def test_tinybert_response_alignment_runs():
    student, teacher, ctx = make_batch(seed=10)
    out = _build("tinybert", ctx, hidden_align="response", attention_align="response")(student, teacher.detached())
    assert torch.isfinite(out.loss)


def test_docs_show_the_deviations_table():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "baselines.md").read_text()
    for d in DEVIATIONS:
        assert f"| {d['method']} | {d['authors']} | {d['ours']} | {d['why']} |" in text
