"""The weighted objective and its presets."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from evl_ecg.distill import LossContext, Objective, build_loss, get_preset, list_presets
from evl_ecg.distill.presets import EVL_PRESETS
from evl_ecg.outputs import IGNORE_INDEX, SideOutputs

CONTEXT = LossContext(student_hidden=8, teacher_hidden=12, student_visual=6, teacher_visual=10)


def _side(b: int, length: int, d: int, vocab: int, n_visual: int, d_visual: int, seed: int) -> SideOutputs:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (b, length), generator=g)
    labels[:, : length // 2] = IGNORE_INDEX
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, -1] = False
    return SideOutputs(
        logits=torch.randn(b, length, vocab, generator=g),
        hidden=torch.randn(b, length, d, generator=g),
        attention_mask=mask,
        labels=torch.where(mask, labels, IGNORE_INDEX),
        visual=torch.randn(b, n_visual, d_visual, generator=g),
    )


def _pair() -> tuple[SideOutputs, SideOutputs]:
    return _side(2, 6, 8, 9, 3, 6, 0), _side(2, 10, 12, 7, 7, 10, 1)


def test_formula_string_shows_the_weights() -> None:
    assert str(Objective.from_preset("evl-ecg", CONTEXT)) == "0.7*ce + 0.3*(1.0*mhca + 0.03*relation + 0.1*ot)"
    assert str(Objective.from_preset("sft", CONTEXT)) == "1.0*ce"
    assert str(Objective.from_preset("ot", CONTEXT, alpha=0.7)) == "0.3*ce + 0.7*(0.1*ot)"


def test_weights_are_applied_exactly() -> None:
    torch.manual_seed(0)
    objective = Objective.from_preset("evl-ecg", CONTEXT)
    s, t = _pair()
    out = objective(s, t)
    # independent losses with the same weights, summed by hand
    mhca = build_loss("mhca", CONTEXT, heads=8)
    mhca.load_state_dict(objective.terms["mhca"].state_dict())
    ot = build_loss("ot", CONTEXT)
    ot.load_state_dict(objective.terms["ot"].state_dict())
    m = mhca(s, t)
    rel = build_loss("relation")(s, t, aligned_teacher=m.extras["aligned_teacher"]).loss
    hand = 0.7 * build_loss("ce")(s, None).loss + 0.3 * (1.0 * m.loss + 0.03 * rel + 0.1 * ot(s, t).loss)
    torch.testing.assert_close(out.loss, hand)
    keys = ["loss/total", "loss/ce", "loss/mhca", "loss/relation", "loss/ot", "mhca/norm_student"]
    keys += ["mhca/norm_aligned", "ot/iterations", "ot/marginal_error", "relation/distance", "relation/angle"]
    for key in keys:
        assert key in out.logs, key
    torch.testing.assert_close(out.logs["loss/relation"], rel)


def test_sft_needs_no_teacher() -> None:
    s, _ = _pair()
    for objective in (Objective.from_preset("sft", CONTEXT), Objective.from_preset("evl-ecg", CONTEXT, alpha=0.0)):
        out = objective(s, None)
        torch.testing.assert_close(out.loss, build_loss("ce")(s, None).loss)
        assert not objective.needs_teacher and list(objective.parameters()) == []
    with pytest.raises(ValueError, match="teacher"):
        Objective.from_preset("evl-ecg", CONTEXT)(s, None)


def test_every_preset_resolves() -> None:
    presets = list_presets()
    assert list(presets)[: len(EVL_PRESETS)] == list(EVL_PRESETS)
    for name in EVL_PRESETS:
        Objective.from_preset(name, CONTEXT)
    assert get_preset("ot+mhca+rel")["terms"] == get_preset("evl-ecg")["terms"]
    try:
        from evl_ecg.distill.baselines import BASELINE_PRESETS
    except ModuleNotFoundError:
        return
    assert set(BASELINE_PRESETS) <= set(presets)


def test_overrides_merge_and_remove_terms() -> None:
    config = get_preset("evl-ecg", alpha=0.5, terms={"mhca": {"heads": 4}, "ot": None})
    assert config["alpha"] == 0.5 and config["terms"]["mhca"] == {"weight": 1.0, "heads": 4}
    assert "ot" not in config["terms"] and "ot" in get_preset("evl-ecg")["terms"]  # the table is not mutated
    objective = Objective(config, CONTEXT)
    assert objective.terms["mhca"].heads == 4 and str(objective) == "0.5*ce + 0.5*(1.0*mhca + 0.03*relation)"


def test_requires_and_parameters() -> None:
    objective = Objective.from_preset("evl-ecg", CONTEXT)
    assert objective.requires == frozenset({"visual"})
    ids = {id(p) for p in objective.parameters()}
    expected = {id(p) for name in ("mhca", "ot") for p in objective.terms[name].parameters()}
    assert ids == expected and len(ids) == 5
    (group,) = objective.parameter_groups()
    assert {id(p) for p in group["params"]} == ids


def test_relation_without_mhca_is_refused_and_producers_run_first() -> None:
    with pytest.raises(ValueError, match="aligned_teacher"):
        Objective({"alpha": 0.3, "terms": {"relation": {"weight": 1.0}}}, CONTEXT)
    objective = Objective({"alpha": 0.3, "terms": {"relation": {"weight": 1.0}, "mhca": {"weight": 0.5}}}, CONTEXT)
    assert objective.order == ["mhca", "relation"]
    assert str(objective) == "0.7*ce + 0.3*(1.0*relation + 0.5*mhca)"


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError):
        Objective({"alpha": 1.5}, CONTEXT)
    with pytest.raises(ValueError):
        Objective({"alpha": 0.3, "terms": {"mhca": {"heads": 8}}}, CONTEXT)
    with pytest.raises(KeyError):
        Objective({"alpha": 0.3, "terms": {"nope": {"weight": 1.0}}}, CONTEXT)
    with pytest.raises(KeyError):
        Objective.from_preset("nope", CONTEXT)


def test_backward_reaches_student_and_objective_parameters() -> None:
    objective = Objective.from_preset("evl-ecg", CONTEXT)
    s, t = _pair()
    s.hidden.requires_grad_(True)
    s.visual.requires_grad_(True)
    s.logits.requires_grad_(True)
    objective(s, t).loss.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in (s.hidden, s.visual, s.logits))
    assert all(p.grad is not None for p in objective.parameters())


def test_alpha_warmup_scales_the_distillation_block_linearly_and_keeps_ce() -> None:
    torch.manual_seed(0)
    objective = Objective.from_preset("ot", CONTEXT, alpha_warmup=4)
    s, t = _pair()
    ce = float(build_loss("ce")(s, None).loss)
    for step, share in ((0, 0.25), (1, 0.5), (3, 1.0), (10, 1.0)):
        objective.set_step(step)
        out = objective(s, t)
        hand = 0.7 * ce + 0.3 * share * 0.1 * float(out.logs["loss/ot"])
        assert float(out.loss) == pytest.approx(hand, rel=1e-6), step
        assert out.logs["objective/alpha"] == pytest.approx(0.3 * share)
    with pytest.raises(ValueError, match="alpha_warmup"):
        Objective.from_preset("ot", CONTEXT, alpha_warmup=-1)


def test_balance_ce_gives_each_term_the_magnitude_of_ce_and_the_gradient_of_its_own_loss() -> None:
    torch.manual_seed(0)
    s, t = _pair()
    s.visual.requires_grad_(True)
    objective = Objective.from_preset("ot", CONTEXT, balance="ce")
    out = objective(s, t)
    ce = float(build_loss("ce")(s, None).loss)
    ot = float(out.logs["loss/ot"])
    assert ot > 0 and abs(ot - ce) > 1e-3  # otherwise the test could not tell the scales apart
    # 0.7 * CE + 0.3 * 0.1 * (CE / L_ot) * L_ot: the term enters with CE's magnitude
    assert float(out.loss) == pytest.approx(0.7 * ce + 0.3 * 0.1 * ce, rel=1e-6)
    assert float(out.logs["objective/scale_ot"]) == pytest.approx(ce / ot, rel=1e-6)
    (grad,) = torch.autograd.grad(out.loss, s.visual)
    # the same gradient as the unbalanced objective whose OT weight is multiplied by the (constant) ratio
    plain = Objective.from_preset("ot", CONTEXT, terms={"ot": {"weight": 0.1 * ce / ot}})
    plain.load_state_dict(objective.state_dict())
    (ref,) = torch.autograd.grad(plain(s, t).loss, s.visual)
    torch.testing.assert_close(grad, ref)
    with pytest.raises(ValueError, match="balance"):
        Objective.from_preset("ot", CONTEXT, balance="grad")


def test_relation_compares_the_normalised_student_states_when_mhca_normalises() -> None:
    torch.manual_seed(0)
    s, t = _pair()
    objective = Objective.from_preset("evl-ecg", CONTEXT, terms={"mhca": {"reduction": "mean", "normalize": True}})
    out = objective(s, t)
    aligned = out.extras["aligned_teacher"]
    normalised = torch.nn.functional.layer_norm(s.hidden, s.hidden.shape[-1:])
    relation = build_loss("relation")
    by_hand = relation(dataclasses.replace(s, hidden=normalised), t, aligned_teacher=aligned).loss
    raw = relation(s, t, aligned_teacher=aligned).loss
    assert float(abs(by_hand - raw)) > 1e-4  # the two spaces differ: the test can tell them apart
    torch.testing.assert_close(out.logs["loss/relation"], by_hand.detach(), rtol=1e-5, atol=1e-6)
    # the collapse monitor reports the raw states' norm
    mask = s.attention_mask
    raw_norm = s.hidden.norm(dim=-1)[mask].mean()
    torch.testing.assert_close(out.logs["mhca/norm_student"], raw_norm, rtol=1e-5, atol=1e-6)
