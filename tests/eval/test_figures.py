"""Figures: valid PNGs written atomically; the plan behind Figure 2 is a transport plan; spectra match numpy."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from evl_ecg.eval.figures import (
    loss_terms,
    plot_loss_curves,
    plot_singular_values,
    plot_transport_plan,
    singular_value_spectrum,
    transport_plan,
)


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


def tokens(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_transport_plan_is_a_coupling_of_uniform_marginals():
    v_t, v_s = tokens(20, 16, 0), tokens(6, 8, 1)
    proj = torch.nn.Linear(16, 8, bias=False)
    plan, cost = transport_plan(v_t, v_s, proj, eps=0.1)
    assert plan.shape == cost.shape == (20, 6)
    assert float(plan.sum()) == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(plan.sum(1).numpy(), np.full(20, 1 / 20), atol=1e-7)
    np.testing.assert_allclose(plan.sum(0).numpy(), np.full(6, 1 / 6), atol=1e-7)
    # the cost is L_ot's: squared distance of the L2-normalised projected teacher and student tokens
    t = F.normalize(proj(v_t).double(), dim=-1)
    s = F.normalize(v_s.double(), dim=-1)
    np.testing.assert_allclose(cost.numpy(), ((t[:, None] - s[None]) ** 2).sum(-1).detach().numpy(), atol=1e-10)
    plan_w, _ = transport_plan(v_t, v_s, proj.weight, eps=0.1)  # a weight matrix works the same
    np.testing.assert_allclose(plan_w.numpy(), plan.numpy(), atol=1e-6)


def test_transport_plan_puts_mass_on_matching_tokens():
    v_s = tokens(5, 8, 2)
    v_t = v_s[[0, 0, 1, 2, 3, 4, 4, 3, 2, 1]]  # each teacher token is a copy of one student token
    plan, _ = transport_plan(v_t, v_s, eps=0.01)
    assert (plan.argmax(1) == torch.tensor([0, 0, 1, 2, 3, 4, 4, 3, 2, 1])).all()


def test_transport_plan_needs_a_projection_when_widths_differ():
    with pytest.raises(ValueError, match="projection"):
        transport_plan(tokens(4, 16, 0), tokens(3, 8, 1))


def test_plot_transport_plan_writes_png(tmp_path):
    out = plot_transport_plan(
        tokens(12, 16, 0)[None], tokens(4, 8, 1), torch.nn.Linear(16, 8), path=tmp_path / "f2.png"
    )
    assert out == tmp_path / "f2.png"
    assert_png(out)


def test_singular_value_spectrum_matches_numpy(tmp_path):
    x = tokens(30, 10, 3)
    s = np.linalg.svd(x.double().numpy(), compute_uv=False)
    np.testing.assert_allclose(singular_value_spectrum(x).numpy(), s / s[0], rtol=1e-10)
    assert singular_value_spectrum(x.reshape(3, 10, 10))[0] == 1.0  # B x L x D is flattened to tokens x features
    out = plot_singular_values({"teacher": tokens(40, 16, 4), "student": tokens(12, 8, 5)}, tmp_path / "f3.png")
    assert_png(out)
    with pytest.raises(ValueError):
        singular_value_spectrum(torch.zeros(3, 3))


LOG_HISTORY = [
    {"loss": 2.0, "loss/total": 2.0, "loss/ce": 1.5, "loss/ot": 0.4, "learning_rate": 1e-4, "step": 1},
    {"loss": 1.5, "loss/total": 1.5, "loss/ce": 1.2, "loss/ot": 0.3, "loss/mhca": 0.7, "step": 2},
    {"eval_loss": 1.7, "step": 2},
    {"loss/total": 1.1, "loss/ce": 0.9, "loss/ot": float("nan"), "step": 3},
    {"train_runtime": 12.0, "step": 3},
]


def test_loss_terms_and_curves(tmp_path):
    terms = loss_terms(LOG_HISTORY)
    assert list(terms) == ["loss/total", "loss/ce", "loss/mhca", "loss/ot"]
    assert terms["loss/ce"] == ([1, 2, 3], [1.5, 1.2, 0.9])
    assert terms["loss/ot"] == ([1, 2], [0.4, 0.3])  # non-finite values are left out
    assert_png(plot_loss_curves(LOG_HISTORY, tmp_path / "loss.png"))
    with pytest.raises(ValueError, match="loss/"):
        plot_loss_curves([{"loss": 1.0, "step": 1}], tmp_path / "none.png")
