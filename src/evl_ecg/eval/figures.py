r"""The paper's Appendix D figures and the training-loss curves, as PNG files (matplotlib, Agg backend).

* :func:`plot_transport_plan` (paper Figure 2): the Sinkhorn plan ``P*`` between one ECG's teacher visual tokens
  (rows) and student visual tokens (columns), computed exactly as ``L_ot`` does (SPEC §2):
  ``t_i = normalize(W_p v_t,i)``, ``s_j = normalize(v_s,j)``, ``C_ij = ||t_i - s_j||^2``, uniform marginals,
  entropic OT with ``eps`` (0.1). The data behind it is :func:`transport_plan`.
* :func:`plot_singular_values` (paper Figure 3): the singular values ``sigma_k / sigma_1`` of each feature matrix
  (tokens x features), log y axis; the data behind it is :func:`singular_value_spectrum`.
* :func:`plot_loss_curves`: every ``loss/...`` term the trainer logs (``Trainer.state.log_history``) over steps,
  one panel per term.

Every figure is written atomically (a temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evl_ecg.distill.sinkhorn import sinkhorn, uniform_marginals
from evl_ecg.files import temp_file_beside


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str], dpi: int = 150) -> Path:
    """Save ``fig`` as PNG to ``path`` atomically (mode 0o666 less the umask) and close it."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path, suffix=".png")  # mode 0o666 less the umask, as a plain open() gives
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
    return path


def _as_matrix(x: Tensor, name: str) -> Tensor:
    x = torch.as_tensor(x).detach()
    if x.dim() == 3 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 2:
        raise ValueError(f"{name} must be N x D (one ECG's tokens), got shape {tuple(x.shape)}")
    return x


def transport_plan(
    teacher_visual: Tensor,
    student_visual: Tensor,
    projection: nn.Module | Tensor | Callable[[Tensor], Tensor] | None = None,
    *,
    eps: float = 0.1,
    max_iter: int = 1000,
    tol: float = 1e-7,
) -> tuple[Tensor, Tensor]:
    """``(plan, cost)``, both ``N_t x N_s`` float64: the Sinkhorn plan of ``L_ot`` for one ECG, and its cost.

    Args:
        teacher_visual: ``N_t x D_t`` (or ``1 x N_t x D_t``) the teacher's visual tokens (``SideOutputs.visual``).
        student_visual: ``N_s x D_s`` the student's visual tokens.
        projection: ``W_p`` (``D_t -> D_s``): the trained ``OTLoss.proj`` module, a ``D_s x D_t`` weight matrix
            (``nn.Linear`` convention) or any callable; ``None`` only if ``D_t == D_s`` (identity).
        eps: Sinkhorn epsilon (paper: 0.1).

    The plan sums to 1 (uniform marginals ``1/N_t``, ``1/N_s``).
    """
    v_t = _as_matrix(teacher_visual, "teacher_visual").double()
    v_s = _as_matrix(student_visual, "student_visual").double()
    with torch.no_grad():
        if projection is None:
            if v_t.shape[1] != v_s.shape[1]:
                raise ValueError(
                    f"teacher and student visual widths differ ({v_t.shape[1]} vs {v_s.shape[1]}): pass the "
                    "trained W_p (OTLoss.proj) as projection"
                )
            t = v_t
        elif isinstance(projection, Tensor):
            t = v_t @ projection.detach().double().T
        elif isinstance(projection, nn.Module):
            p = next(projection.parameters(), None)
            dtype = p.dtype if p is not None else torch.float32
            device = p.device if p is not None else torch.device("cpu")
            t = projection(v_t.to(device=device, dtype=dtype)).double().cpu()
        else:
            t = torch.as_tensor(projection(v_t)).double()
        t = F.normalize(t.cpu(), dim=-1)
        s = F.normalize(v_s.cpu(), dim=-1)
        cost = torch.cdist(t, s).pow(2)
        ones_t = torch.ones(1, t.shape[0], dtype=torch.bool)
        ones_s = torch.ones(1, s.shape[0], dtype=torch.bool)
        result = sinkhorn(
            cost[None],
            uniform_marginals(ones_t, torch.float64),
            uniform_marginals(ones_s, torch.float64),
            epsilon=eps,
            max_iter=max_iter,
            tol=tol,
        )
    return result.plan[0], cost


def plot_transport_plan(
    teacher_visual: Tensor,
    student_visual: Tensor,
    projection: nn.Module | Tensor | Callable[[Tensor], Tensor] | None = None,
    *,
    path: str | os.PathLike[str],
    eps: float = 0.1,
    title: str | None = None,
) -> Path:
    """Paper Figure 2: heatmap of the Sinkhorn plan (teacher tokens x student tokens) for one ECG; returns ``path``.

    Cells show ``N_t * P*_ij`` (the share of teacher token ``i``'s mass sent to student token ``j``; each row sums
    to 1), brighter = more mass = lower cost. See :func:`transport_plan` for the arguments.
    """
    plan, cost = transport_plan(teacher_visual, student_visual, projection, eps=eps)
    n_t, n_s = plan.shape
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    im = ax.imshow((plan * n_t).numpy(), aspect="auto", cmap="viridis", interpolation="nearest", origin="upper")
    ax.set_xlabel(f"student visual token j ({n_s})")
    ax.set_ylabel(f"teacher visual token i ({n_t})")
    value = float((plan * cost).sum())
    ax.set_title(title or f"Sinkhorn transport plan (eps={eps:g}, <P*,C>={value:.3f})")
    fig.colorbar(im, ax=ax, label="N_t x P*_ij (row share of teacher mass)")
    return _save(fig, path)


def singular_value_spectrum(features: Tensor) -> Tensor:
    """``sigma_k / sigma_1`` (float64, descending) of a feature matrix (``N x D``; ``B x L x D`` is flattened)."""
    x = torch.as_tensor(features).detach()
    if x.dim() > 2:
        x = x.reshape(-1, x.shape[-1])
    if x.dim() != 2 or x.numel() == 0:
        raise ValueError(f"features must be a non-empty N x D matrix, got shape {tuple(x.shape)}")
    s = torch.linalg.svdvals(x.double().cpu())
    if float(s[0]) == 0.0:
        raise ValueError("features are all zero: no spectrum")
    return s / s[0]


def plot_singular_values(
    features: Mapping[str, Tensor], path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Paper Figure 3: normalised singular-value spectra of each named feature matrix, log y axis; returns ``path``.

    ``features`` maps a legend name (``"teacher"``, ``"student (KD)"``) to an ``N x D`` matrix (tokens x features,
    e.g. the valid rows of ``SideOutputs.hidden`` or ``.visual``). Padding rows must be removed by the caller.
    """
    if not features:
        raise ValueError("no feature matrices to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, x in features.items():
        s = singular_value_spectrum(x).clamp_min(1e-300).numpy()
        ax.plot(range(1, len(s) + 1), s, label=f"{name} ({tuple(torch.as_tensor(x).shape)})", linewidth=1.5)
    ax.set_yscale("log")
    ax.set_xlabel("singular value index k")
    ax.set_ylabel("sigma_k / sigma_1")
    ax.set_title(title or "Feature spectrum (SVD)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def loss_terms(log_history: Sequence[Mapping[str, Any]], prefix: str = "loss/") -> dict[str, tuple[list, list]]:
    """``{term: (steps, values)}`` of every ``prefix...`` key in a Trainer ``log_history`` (finite values only)."""
    terms: dict[str, tuple[list, list]] = {}
    for i, entry in enumerate(log_history):
        step = entry.get("step", i)
        for key, value in entry.items():
            if not key.startswith(prefix) or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(float(value)):
                continue
            steps, values = terms.setdefault(key, ([], []))
            steps.append(step)
            values.append(float(value))
    return dict(sorted(terms.items(), key=lambda kv: (kv[0] != f"{prefix}total", kv[0])))


def plot_loss_curves(log_history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Every ``loss/...`` term of a transformers ``Trainer.state.log_history`` over steps, one panel per term.

    Terms are the unweighted values the objective logs (``loss/total`` first). Raises ``ValueError`` if the
    history holds no ``loss/`` key. Returns ``path``.
    """
    terms = loss_terms(log_history)
    if not terms:
        raise ValueError("log_history holds no 'loss/...' entries (was the run logged with the evl-ecg trainer?)")
    plt = _pyplot()
    n = len(terms)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, (steps, values)) in zip(axes.ravel(), terms.items(), strict=False):
        ax.plot(steps, values, marker="." if len(steps) < 30 else None, linewidth=1.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def plot_learning_curves(
    curves: Mapping[str, Sequence[Sequence[Mapping[str, float]]]], path: str | os.PathLike[str], *, ylabel: str
) -> Path:
    """Mean over seeds of each method's learning curve, with the seeds' min-max band.

    ``curves``: ``{method: [one list of {"step", "auc"} points per seed]}``; steps missing in a seed are skipped.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for method, runs in curves.items():
        steps = sorted({p["step"] for run in runs for p in run})
        if not steps:
            continue
        table = [[next((p["auc"] for p in run if p["step"] == st), math.nan) for run in runs] for st in steps]
        arr = torch.tensor(table, dtype=torch.float64)
        mean = arr.nanmean(1)
        lo = torch.where(arr.isnan(), torch.inf, arr).amin(1)
        hi = torch.where(arr.isnan(), -torch.inf, arr).amax(1)
        (line,) = ax.plot(steps, mean.tolist(), marker="o", label=f"{method} ({len(runs)} seeds)")
        ax.fill_between(steps, lo.tolist(), hi.tolist(), alpha=0.2, color=line.get_color())
    ax.set_xlabel("phase-2 step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_label_budgets(
    series: Mapping[str, Mapping[int, Sequence[float]]],
    path: str | os.PathLike[str],
    *,
    teacher: float | None = None,
    ylabel: str = "strict PTB-XL AUC (test)",
    title: str = "",
) -> Path:
    """A score against labelled records (log scale), one line per method: its mean over seeds at each budget with
    the seeds' min-max band (``series``: ``{method: {labelled records: [one value per seed]}}``); the teacher as a
    dashed line above."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for method, by_budget in series.items():
        xs = sorted(n for n, values in by_budget.items() if len(values))
        if not xs:
            continue
        means = [sum(by_budget[n]) / len(by_budget[n]) for n in xs]
        seeds = max(len(by_budget[n]) for n in xs)
        (line,) = ax.plot(xs, means, marker="o", label=f"{method} ({seeds} seed{'' if seeds == 1 else 's'})")
        ax.fill_between(xs, [min(by_budget[n]) for n in xs], [max(by_budget[n]) for n in xs], alpha=0.2,
                        color=line.get_color())  # fmt: skip
    if teacher is not None:
        ax.axhline(teacher, color="black", linestyle="--", linewidth=1, label="teacher")
    ax.set_xscale("log")
    ax.set_xlabel("labelled training records")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_bars(
    values: Mapping[str, tuple[float, float]], path: str | os.PathLike[str], *, ylabel: str, title: str = ""
) -> Path:
    """One bar per method (``{method: (mean, std)}``) with the standard deviation as the error bar."""
    plt = _pyplot()
    names = list(values)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 1.5), 3.6))
    means = [values[n][0] for n in names]
    stds = [values[n][1] for n in names]
    ax.bar(range(len(names)), means, yerr=stds, capsize=3, color="#4c72b0")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_robustness(doc: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """``evl-ecg eval robustness``'s figure: the strict macro AUC against the severity, one panel per view unit (a
    row per subset), one line per model, the clean page at severity 0; the band is each severity's 95 % paired
    bootstrap interval, drawn around the clean score (clean + [lo, hi] of the change).

    ``doc``: :func:`evl_ecg.eval.robustness.evaluate_robustness`'s document (``results[subset][model][unit][sev]``).
    """
    plt = _pyplot()
    subsets = list(doc["results"])
    units = list(doc["units"])
    severities = [float(s) for s in doc["severities"]]
    fig, axes = plt.subplots(
        len(subsets), len(units), figsize=(3.2 * len(units), 2.8 * len(subsets)), squeeze=False, sharey="row"
    )
    for i, subset in enumerate(subsets):
        for j, unit in enumerate(units):
            ax = axes[i][j]
            for model, rows in doc["results"][subset].items():
                by_sev = rows.get(unit, {})
                xs, ys, lo, hi = [], [], [], []
                clean = (by_sev.get("0") or {}).get("auc")
                for s in severities:
                    row = by_sev.get(f"{s:g}")
                    if row is None or row.get("auc") is None:
                        continue
                    xs.append(s)
                    ys.append(row["auc"])
                    band = (row.get("lo"), row.get("hi")) if s > 0 else (0.0, 0.0)
                    ok = clean is not None and None not in band
                    lo.append(clean + band[0] if ok else row["auc"])
                    hi.append(clean + band[1] if ok else row["auc"])
                if not xs:
                    continue
                (line,) = ax.plot(xs, ys, marker="o", label=model)
                ax.fill_between(xs, lo, hi, alpha=0.15, color=line.get_color())
            ax.set_title(unit if len(subsets) == 1 else f"{subset}: {unit}", fontsize=9)
            ax.set_xlabel("severity")
            if j == 0:
                ax.set_ylabel("strict macro AUC")
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
