"""The batched entropic OT solver against POT's per-problem log-Sinkhorn and against first principles."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from evl_ecg.distill.sinkhorn import marginal_error, sinkhorn, uniform_marginals

SOLVERS = ["torch", "pot"]


def _padded_problem(seed: int = 0, dtype: torch.dtype = torch.float64, d: int = 16):
    """Three samples of unequal sizes padded to n=9, m=6, with junk features on the padding."""
    g = torch.Generator().manual_seed(seed)
    n_valid, m_valid = [7, 5, 9], [4, 6, 3]
    n, m = max(n_valid), max(m_valid)
    x = F.normalize(torch.randn(3, n, d, generator=g, dtype=dtype), dim=-1)
    y = F.normalize(torch.randn(3, m, d, generator=g, dtype=dtype), dim=-1)
    mask_x = torch.arange(n)[None] < torch.tensor(n_valid)[:, None]
    mask_y = torch.arange(m)[None] < torch.tensor(m_valid)[:, None]
    x = torch.where(mask_x[..., None], x, 50.0 * torch.randn(3, n, d, generator=g, dtype=dtype))
    y = torch.where(mask_y[..., None], y, -30.0 * torch.randn(3, m, d, generator=g, dtype=dtype))
    return x, y, mask_x, mask_y, n_valid, m_valid


def _cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, y).pow(2)


def _pot_reference(cost_b: torch.Tensor, nv: int, mv: int) -> tuple[np.ndarray, float]:
    """POT's per-problem log-domain Sinkhorn on the unpadded problem (uniform marginals)."""
    c = cost_b[:nv, :mv].detach().double().numpy()
    a, b = np.full(nv, 1.0 / nv), np.full(mv, 1.0 / mv)
    plan = ot.sinkhorn(a, b, c, reg=0.1, method="sinkhorn_log", stopThr=1e-13, numItermax=100000)
    return plan, float((plan * c).sum())


@pytest.mark.parametrize("solver", SOLVERS)
def test_ot_plan_matches_pot_per_problem(solver: str) -> None:
    x, y, mx, my, n_valid, m_valid = _padded_problem()
    cost = _cost(x, y)
    res = sinkhorn(cost, uniform_marginals(mx, cost.dtype), uniform_marginals(my, cost.dtype), tol=1e-12, solver=solver)
    for b, (nv, mv) in enumerate(zip(n_valid, m_valid, strict=True)):
        plan_ref, value_ref = _pot_reference(cost[b], nv, mv)
        np.testing.assert_allclose(res.plan[b, :nv, :mv].numpy(), plan_ref, atol=1e-6, rtol=0)
        assert abs(float(res.value[b]) - value_ref) < 1e-6
        assert float(res.plan[b, nv:].abs().sum() + res.plan[b, :, mv:].abs().sum()) == 0.0  # pads: exactly no mass


@pytest.mark.parametrize("solver", SOLVERS)
def test_marginals_hold(solver: str) -> None:
    x, y, mx, my, _, _ = _padded_problem(seed=1, dtype=torch.float32)
    cost = _cost(x, y)
    a, b = uniform_marginals(mx), uniform_marginals(my)
    res = sinkhorn(cost, a, b, tol=1e-6, solver=solver)
    assert res.plan.dtype == torch.float32
    torch.testing.assert_close(res.plan.sum(-1), a, atol=2e-6, rtol=0)
    torch.testing.assert_close(res.plan.sum(-2), b, atol=2e-6, rtol=0)
    torch.testing.assert_close(res.marginal_error, marginal_error(res.plan, a, b))
    assert float(res.marginal_error.max()) < 1e-5


@pytest.mark.parametrize("solver", SOLVERS)
def test_zero_mass_padding_changes_nothing(solver: str) -> None:
    x, y, mx, my, n_valid, m_valid = _padded_problem(seed=2)
    cost = _cost(x, y)
    res = sinkhorn(cost, uniform_marginals(mx, cost.dtype), uniform_marginals(my, cost.dtype), tol=1e-12, solver=solver)
    for b, (nv, mv) in enumerate(zip(n_valid, m_valid, strict=True)):
        c = cost[b : b + 1, :nv, :mv]
        a1, b1 = torch.full((1, nv), 1.0 / nv, dtype=c.dtype), torch.full((1, mv), 1.0 / mv, dtype=c.dtype)
        alone = sinkhorn(c, a1, b1, tol=1e-12, solver=solver)
        torch.testing.assert_close(res.plan[b, :nv, :mv], alone.plan[0], atol=1e-9, rtol=0)
        torch.testing.assert_close(res.value[b], alone.value[0], atol=1e-9, rtol=0)


def test_permuting_tokens_changes_nothing() -> None:
    x, y, mx, my, _, _ = _padded_problem(seed=3)
    a, b = uniform_marginals(mx, x.dtype), uniform_marginals(my, x.dtype)
    res = sinkhorn(_cost(x, y), a, b, tol=1e-12)
    px, py = torch.randperm(x.shape[1]), torch.randperm(y.shape[1])
    res_p = sinkhorn(_cost(x[:, px], y[:, py]), a[:, px], b[:, py], tol=1e-12)
    torch.testing.assert_close(res_p.value, res.value, atol=1e-10, rtol=0)
    torch.testing.assert_close(res_p.plan, res.plan[:, px][:, :, py], atol=1e-10, rtol=0)


def _unrolled(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(<P, C>, sum P (log P - 1))`` with autograd through 300 log-Sinkhorn iterations (independent reference)."""
    cost = _cost(x, y)
    k = -cost / 0.1
    log_a, log_b = a.log(), b.log()
    u, v = torch.zeros_like(a), torch.zeros_like(b)
    for _ in range(300):
        u = log_a - torch.logsumexp(k + v[:, None, :], dim=2)
        v = log_b - torch.logsumexp(k + u[:, :, None], dim=1)
    plan = torch.exp(k + u[:, :, None] + v[:, None, :])
    safe = torch.where(plan > 0, plan, torch.ones_like(plan))
    neg_entropy = torch.where(plan > 0, plan * (safe.log() - 1), torch.zeros_like(plan)).sum()
    return (plan * cost).sum(), neg_entropy


def test_envelope_gradient_is_the_gradient_of_the_entropic_ot_value() -> None:
    """Envelope theorem: d/dx of <P*, C(x)> with P* constant = d/dx of min_P <P, C(x)> - eps H(P), exactly."""
    x, y, mx, my, _, _ = _padded_problem(seed=4)
    a, b = uniform_marginals(mx, x.dtype), uniform_marginals(my, x.dtype)
    x = x.clone().requires_grad_(True)
    (g_env,) = torch.autograd.grad(sinkhorn(_cost(x, y), a, b, tol=1e-12).value.sum(), x)
    linear, neg_entropy = _unrolled(x, y, a, b)
    (g_ref,) = torch.autograd.grad(linear + 0.1 * neg_entropy, x)
    torch.testing.assert_close(g_env, g_ref, atol=1e-9, rtol=0)
    mask = mx[..., None].expand_as(x)
    assert float(g_env[~mask].abs().max()) == 0.0  # no gradient into padding


def test_envelope_gradient_matches_pots_autodiff_at_the_papers_dimension() -> None:
    """Issue 3's check at the paper's single-tile shape: 576 teacher and 64 student tokens, ``D_s`` 2048.

    Reference: POT's ``ot.solve(..., method="sinkhorn_log", grad="autodiff")``, autograd through POT's own
    iterations. Features: L2-normalised tokens around 8 shared centres, so the plan is structured (about 90 % of
    its mass joins tokens of one cluster) and the check can fail: the gradient under a uniform plan scores 0.78.
    Measured: 0.999. The cosine is not > 0.99 on every problem (0.95 to 0.97 at d 16; 0.98 with looser
    clusters at d 2048): docs/distill.md, Deviations.
    """
    g = torch.Generator().manual_seed(0)
    d, n_s, n_t = 2048, 64, 576
    centres = torch.randn(8, d, generator=g, dtype=torch.float64)
    c_s, c_t = torch.randint(0, 8, (n_s,), generator=g), torch.randint(0, 8, (n_t,), generator=g)
    s = F.normalize(centres[c_s] + torch.randn(n_s, d, generator=g, dtype=torch.float64), dim=-1)
    t = F.normalize(centres[c_t] + torch.randn(n_t, d, generator=g, dtype=torch.float64), dim=-1)
    s = s.clone().requires_grad_(True)
    a, b = torch.full((n_s,), 1.0 / n_s, dtype=torch.float64), torch.full((n_t,), 1.0 / n_t, dtype=torch.float64)
    res = sinkhorn(_cost(s, t)[None], a[None], b[None], tol=1e-12, max_iter=100_000)
    assert float((res.plan[0] * (c_s[:, None] == c_t[None, :])).sum()) > 0.85  # structured, not near uniform
    (g_env,) = torch.autograd.grad(res.value.sum(), s)
    ref = ot.solve(_cost(s, t), a, b, reg=0.1, reg_type="entropy", method="sinkhorn_log", max_iter=5000,
                   tol=1e-12, grad="autodiff")  # fmt: skip
    assert float(marginal_error(ref.plan.detach()[None], a[None], b[None])) < 1e-9
    (g_ref,) = torch.autograd.grad(ref.value_linear, s)
    assert float(F.cosine_similarity(g_env.flatten(), g_ref.flatten(), dim=0)) > 0.99
    (g_uniform,) = torch.autograd.grad((a[:, None] * b[None, :] * _cost(s, t)).sum(), s)
    assert float(F.cosine_similarity(g_uniform.flatten(), g_ref.flatten(), dim=0)) < 0.9


def test_envelope_gradient_is_close_to_the_unrolled_gradient_of_the_transport_cost() -> None:
    """Against autograd of <P(C), C> through the iterations (which adds the <dP, C> term the envelope drops).

    On these low-dimensional (d 16) problems the dropped term is larger: measured cosine 0.95 to 0.99
    (docs/distill.md); at the paper's dimension with a structured plan it is > 0.99 (the test above).
    """
    x, y, mx, my, _, _ = _padded_problem(seed=4)
    a, b = uniform_marginals(mx, x.dtype), uniform_marginals(my, x.dtype)
    x = x.clone().requires_grad_(True)
    (g_env,) = torch.autograd.grad(sinkhorn(_cost(x, y), a, b, tol=1e-12).value.sum(), x)
    linear, _ = _unrolled(x, y, a, b)
    (g_unrolled,) = torch.autograd.grad(linear, x)
    mask = mx[..., None].expand_as(x)
    assert float(F.cosine_similarity(g_env[mask], g_unrolled[mask], dim=0)) > 0.95


@pytest.mark.parametrize("solver", SOLVERS)
def test_runs_in_fp32_under_bf16_autocast(solver: str) -> None:
    x, y, mx, my, _, _ = _padded_problem(seed=5, dtype=torch.float32)
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cost = torch.bmm(x, y.transpose(1, 2)).mul(-2).add(2)  # bf16 under autocast
        assert cost.dtype == torch.bfloat16
        res = sinkhorn(cost, uniform_marginals(mx), uniform_marginals(my), solver=solver)
    assert res.plan.dtype == torch.float32 and res.value.dtype == torch.float32
    assert float(res.marginal_error.max()) < 1e-5
    res.value.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(res.value).all()


@pytest.mark.parametrize("solver", SOLVERS)
def test_empty_sample_gets_zero_plan(solver: str) -> None:
    x, y, mx, my, _, _ = _padded_problem(seed=6)
    my = my.clone()
    my[1] = False
    res = sinkhorn(_cost(x, y), uniform_marginals(mx, x.dtype), uniform_marginals(my, x.dtype), solver=solver)
    assert torch.isfinite(res.plan).all() and torch.isfinite(res.value).all()
    assert float(res.plan[1].abs().sum()) == 0.0 and float(res.value[1]) == 0.0
    assert float(res.plan[0].sum()) == pytest.approx(1.0, abs=1e-6)


def test_fixed_iterations_without_tolerance() -> None:
    x, y, mx, my, _, _ = _padded_problem(seed=7)
    res = sinkhorn(_cost(x, y), uniform_marginals(mx, x.dtype), uniform_marginals(my, x.dtype), tol=None, max_iter=13)
    assert res.iterations == 13


def test_pot_kl_and_entropy_regularisers_give_the_same_plan() -> None:
    import ot.batch

    x, y, mx, my, _, _ = _padded_problem(seed=8)
    cost = _cost(x, y)
    a, b = uniform_marginals(mx, x.dtype), uniform_marginals(my, x.dtype)
    kw = {"reg": 0.1, "a": a, "b": b, "tol": 1e-12, "method": "log_sinkhorn", "grad": "detach"}
    p_ent = ot.batch.solve_batch(cost, reg_type="entropy", **kw).plan
    p_kl = ot.batch.solve_batch(cost, reg_type="KL".lower(), **kw).plan
    torch.testing.assert_close(p_ent, p_kl, atol=0, rtol=0)
    torch.testing.assert_close(sinkhorn(cost, a, b, tol=1e-12).plan, p_ent, atol=1e-9, rtol=0)
