"""Vision pretraining of the tiny models: teach the vision tower to see the findings before instruction tuning.

The paper's teacher (PULSE-7B) and student (Qwen3-VL-2B) come with pretrained vision encoders; the tiny presets
(:mod:`evl_ecg.models.tiny`) start from random weights and, trained by CE alone on a CPU budget, never learn to see.
:func:`pretrain_vision` is the tiny analogue of a pretrained encoder: the adapter's vision tower is trained as a
multi-label classifier of the canonical findings (:data:`evl_ecg.ecg.labels.FINDINGS`) on synthetic ECG images,
through a temporary head (:class:`TokenHead`) that standardises each visual token, maps it to one logit per finding
and pools the token logits per image as ``(mean + max) / 2``. The max lets one beat (a premature complex) or one lead
(a Q wave) carry a finding that a mean dilutes. The head is discarded; its standardisation is folded into the model
(:func:`fold_standardization`: the first linear layer of LLaVA's projector, the last of Qwen3-VL's merger), an exact
reparametrisation after which the projector reads the tokens on the scale where the findings are linearly readable.
Without the fold, what differs between two ECGs is about 5% of a visual token's norm after the projector, and a
tiny LLaVA trained 500 CE steps on them answered every image alike (label-likelihood AUC 0.49 on ``ptb-test``) although
a logistic regression on its frozen tower's pooled tokens reached 0.89. Nothing of the language model moves.

Features are the ones the multimodal model hands on:

* LLaVA (tiny teacher): the CLIP layer ``config.vision_feature_layer``, without the CLS token when
  ``vision_feature_select_strategy == "default"`` (exactly what the projector reads);
* Qwen3-VL (tiny student): the output of the visual merger (``pooler_output``, what replaces the image tokens).

Data: a fresh stream of synthetic records, never a corpus split, drawn by the generator of the corpus the model will
learn (``generator``; the training pipeline reads it from the corpus manifest). Record ``i`` of the training pool
(and of the held-out set) draws everything from ``numpy.random.SeedSequence(seed, spawn_key=(PRETRAIN_KEY[+1], i))``:
findings by ``sample_spec`` with a vocabulary drawn like the corpus' training mix, the signal by ``generate``, the image
by ``render`` with the default :class:`~evl_ecg.ecg.render.RenderSpec` and the corpus' augmentation habits (half the
images augmented, strength ``U(0.2, 1)``). Images are rendered once into memory (PNG bytes, lossless) and reused
over the steps; batches are drawn by a seeded generator, so a seed gives the same weights whatever the worker count.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from evl_ecg.ecg.labels import FINDINGS

#: spawn-key of the pretraining pool (held-out set: ``PRETRAIN_KEY + 1``); far from the corpus' split keys.
PRETRAIN_KEY = 0x5052  # "PR"
FINDING_CODES: tuple[str, ...] = tuple(FINDINGS)


# ---- data ---------------------------------------------------------------------------------------------------
def _vocabularies() -> tuple[list[str | None], np.ndarray]:
    from evl_ecg.data.corpus import TRAIN_MIX

    tasks = sorted(TRAIN_MIX)
    weights = np.array([TRAIN_MIX[t][0] for t in tasks], dtype=float)
    return [TRAIN_MIX[t][1] for t in tasks], weights / weights.sum()


def make_example(
    seed: int, key: int, index: int, augment_fraction: float = 0.5, generator: int = 1
) -> tuple[bytes, np.ndarray]:
    """Render record ``index`` of stream ``key`` with synthetic-ECG ``generator`` (1 or 2, as the corpus it serves):
    ``(PNG bytes, float32 multi-hot over FINDING_CODES)``."""
    from evl_ecg.ecg.render import Augment, RenderSpec, render
    from evl_ecg.ecg.synth import generate, sample_spec

    ss_spec, ss_signal, ss_render = np.random.SeedSequence(int(seed), spawn_key=(int(key), int(index))).spawn(3)
    rng_spec = np.random.default_rng(ss_spec)
    vocabularies, weights = _vocabularies()
    vocabulary = vocabularies[int(rng_spec.choice(len(vocabularies), p=weights))]
    spec = sample_spec(rng_spec, vocabulary=vocabulary, generator=generator)
    signal_seed = int(ss_signal.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
    ecg = generate(spec, seed=signal_seed, generator=generator)
    rng_render = np.random.default_rng(ss_render)
    augmented = bool(rng_render.random() < augment_fraction)
    strength = float(rng_render.uniform(0.2, 1.0))
    render_seed = int(rng_render.integers(2**31))
    augment = Augment.random(rng_render, strength) if augmented else None
    image = render(ecg, RenderSpec(), augment=augment, seed=render_seed)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    target = np.array([code in spec.findings for code in FINDING_CODES], dtype=np.float32)
    return buf.getvalue(), target


def _make_one(args: tuple[int, int, int, int]) -> tuple[bytes, np.ndarray]:
    seed, key, index, generator = args
    return make_example(seed, key, index, generator=generator)


def make_pool(seed: int, key: int, n: int, workers: int = 1, generator: int = 1) -> tuple[list[bytes], np.ndarray]:
    """``n`` records of stream ``key`` drawn by ``generator`` (same bytes whatever ``workers``)."""
    jobs = [(seed, key, i, generator) for i in range(n)]
    if workers > 1 and n > 1:
        with ProcessPoolExecutor(workers) as pool:
            out = list(pool.map(_make_one, jobs, chunksize=8))
    else:
        out = [_make_one(j) for j in jobs]
    if not out:
        return [], np.zeros((0, len(FINDING_CODES)), dtype=np.float32)
    return [o[0] for o in out], np.stack([o[1] for o in out])


def pool_from_records(records: Sequence[Any], image_loader: Callable[[Any], Any]) -> tuple[list[bytes], np.ndarray]:
    """A pretraining pool from labelled records instead of a fresh stream: each record that carries findings
    (``labels["findings"]``) gives its image (``image_loader(record)``, PIL) and its multi-hot findings; the others
    (a label budget's pool records, which carry no labels) are left out."""
    images, targets = [], []
    for record in records:
        labels = record.get("labels") if isinstance(record, dict) else getattr(record, "labels", None)
        findings = (labels or {}).get("findings")
        if findings is None:
            continue
        buf = io.BytesIO()
        image_loader(record).convert("RGB").save(buf, format="PNG")
        images.append(buf.getvalue())
        targets.append(np.array([code in findings for code in FINDING_CODES], dtype=np.float32))
    if not images:
        return [], np.zeros((0, len(FINDING_CODES)), dtype=np.float32)
    return images, np.stack(targets)


def _open(png: bytes) -> Any:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        return img.convert("RGB")


# ---- the tower ----------------------------------------------------------------------------------------------
def vision_module(adapter: Any) -> nn.Module:
    """The module :func:`pretrain_vision` trains: LLaVA's ``vision_tower`` or Qwen3-VL's ``visual``."""
    inner = adapter.model.model
    for name in ("vision_tower", "visual"):
        module = getattr(inner, name, None)
        if module is not None:
            return module
    raise TypeError(f"{type(adapter.model).__name__}: no vision tower (vision_tower / visual) found")


def token_features(adapter: Any, images: Sequence[Any]) -> list[Tensor]:
    """The visual tokens the multimodal model reads for each of ``images`` (PIL): one ``T x D`` tensor per image.

    LLaVA: CLIP layer ``vision_feature_layer`` (CLS dropped under ``default``), what the projector reads; Qwen3-VL:
    the merger output, what replaces the image tokens.
    """
    processed = [adapter.process_image(img)[0] for img in images]
    batch = adapter.collate_images(processed)
    model = adapter.model
    tower = vision_module(adapter)
    pixel_values = batch["pixel_values"].to(next(tower.parameters()).dtype)
    if "image_grid_thw" in batch:  # Qwen3-VL: the merger's output, split per image
        grid = batch["image_grid_thw"]
        out = tower(pixel_values, grid_thw=grid)
        merged = out.pooler_output if hasattr(out, "pooler_output") else out[0]
        merge = int(tower.spatial_merge_size) ** 2
        return list(torch.split(merged, (grid.prod(-1) // merge).tolist(), 0))
    cfg = model.config
    layer = cfg.vision_feature_layer
    out = tower(pixel_values, output_hidden_states=True)
    if isinstance(layer, int):
        feats = out.hidden_states[layer]
    else:
        feats = torch.cat([out.hidden_states[i] for i in layer], -1)
    if getattr(cfg, "vision_feature_select_strategy", "default") == "default":
        feats = feats[:, 1:]
    return list(feats)


class TokenHead(nn.Module):
    """The temporary findings head: per-dimension standardisation of every visual token (``BatchNorm1d`` over the
    tokens of the batch, no affine), a linear map to one logit per finding for each token, and per image
    ``(mean + max) / 2`` of the token logits. The max lets one beat or one lead carry a finding; the standardisation
    is later folded into the model (:func:`fold_standardization`), so that the model's own projector reads the
    tokens on the scale the head learned them on."""

    def __init__(self, dim: int, n_out: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, momentum=0.05)
        self.linear = nn.Linear(dim, n_out)

    def forward(self, tokens: Sequence[Tensor]) -> Tensor:
        z = self.linear(self.norm(torch.cat(list(tokens), 0)))
        return torch.stack([0.5 * (c.mean(0) + c.amax(0)) for c in torch.split(z, [len(t) for t in tokens], 0)])


def fold_standardization(adapter: Any, mean: Tensor, var: Tensor, eps: float = 1e-5) -> None:
    """Make the model read ``(h - mean) / sqrt(var + eps)`` wherever it read the visual tokens ``h``, exactly.

    LLaVA: into the projector's first linear layer (``W' = W / s``, ``b' = b - W' mean``); Qwen3-VL: into the
    merger's last linear layer, whose output the tokens are (``W' = W / s`` row-wise, ``b' = (b - mean) / s``).
    """
    inner = adapter.model.model
    std = torch.sqrt(var.double() + eps)
    mean = mean.double()
    with torch.no_grad():
        if getattr(inner, "multi_modal_projector", None) is not None:
            linear = inner.multi_modal_projector.linear_1
            weight = linear.weight.double() / std[None, :]
            linear.weight.copy_(weight.to(linear.weight.dtype))
            linear.bias.copy_((linear.bias.double() - weight @ mean).to(linear.bias.dtype))
        elif getattr(inner, "visual", None) is not None:
            linear = inner.visual.merger.linear_fc2
            linear.weight.copy_((linear.weight.double() / std[:, None]).to(linear.weight.dtype))
            linear.bias.copy_(((linear.bias.double() - mean) / std).to(linear.bias.dtype))
        else:
            raise TypeError(f"{type(adapter.model).__name__}: no projector or merger to fold the standardisation into")


#: images whose tokens give the exact statistics of ``fold="exact"``
EXACT_STAT_IMAGES = 512


def token_statistics(adapter: Any, images: Sequence[bytes], batch_size: int = 32) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and (population) variance of the visual tokens of ``images`` (PNG bytes), computed in
    float64 in eval mode: the statistics :func:`fold_standardization` folds under ``fold="exact"``."""
    was_training = adapter.model.training
    adapter.model.eval()
    total, total_sq, count = None, None, 0
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                tokens = torch.cat(token_features(adapter, [_open(b) for b in images[i : i + batch_size]])).double()
                total = tokens.sum(0) if total is None else total + tokens.sum(0)
                total_sq = (tokens**2).sum(0) if total_sq is None else total_sq + (tokens**2).sum(0)
                count += tokens.shape[0]
    finally:
        adapter.model.train(was_training)
    if not count:
        raise ValueError("token statistics need at least one image")
    mean = total / count
    return mean.float(), (total_sq / count - mean**2).clamp_min(0).float()


def _macro_auc(targets: np.ndarray, scores: np.ndarray) -> tuple[float, dict[str, float]]:
    """Macro AUC over the findings, and each finding's (:mod:`evl_ecg.auc`; one without both values left out)."""
    from evl_ecg.auc import roc_auc_macro, roc_auc_per_class

    per = {code: a for code, a in zip(FINDING_CODES, roc_auc_per_class(targets, scores), strict=True) if a == a}
    return roc_auc_macro(targets, scores), per


def pretrain_vision(
    adapter: Any,
    *,
    n_records: int = 2000,
    seed: int = 0,
    steps: int = 500,
    batch_size: int = 16,
    lr: float = 2e-3,
    weight_decay: float = 0.01,
    warmup: float = 0.05,
    n_eval: int = 200,
    workers: int = 1,
    log_every: int = 50,
    log: Callable[[str], None] | None = print,
    fold: bool | str = True,
    generator: int = 1,
    pool: tuple[list[bytes], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Pretrain ``adapter``'s vision tower as a multi-label findings classifier; returns metrics.

    Args:
        adapter: a LLaVA (tiny teacher) or Qwen3-VL (tiny student) adapter; changed in place: the vision tower, and
            the one linear layer ``fold`` rewrites.
        n_records: training pool size (rendered once, reused over ``steps``).
        seed: seeds the records, the head's initialisation and the batch order.
        steps: optimiser steps (AdamW, linear warm-up then cosine decay, gradient norm clipped at 1).
        batch_size: images per step.
        lr: peak learning rate (tower and head).
        weight_decay: AdamW weight decay.
        warmup: warm-up share of the steps.
        n_eval: held-out records for the metric (0: no evaluation).
        workers: processes that render the images (does not change the result).
        log_every: log the running BCE every this many steps (``log`` ``None``: silent).
        generator: the synthetic-ECG generator that draws the images (the one of the corpus the model will learn).
        pool: ``(PNG bytes, multi-hot findings)`` to train on instead of a fresh stream (:func:`pool_from_records`:
            a corpus' labelled records); ``n_records`` then caps it (its first records). The held-out metric is
            still drawn fresh (it changes no weight).
        fold: fold the head's token standardisation into the model's projector (LLaVA) or merger (Qwen3-VL)
            (:func:`fold_standardization`): ``True`` or ``"running"``: with the head's running mean and variance
            (momentum 0.05: they trail a tower that is still moving); ``"exact"``: with the mean and variance of the
            final tower's tokens over the first :data:`EXACT_STAT_IMAGES` training images (:func:`token_statistics`);
            ``False``: no fold. A deep tower moves fast up to its last step, and its running mean then sits tens of
            standard deviations off the final tokens' mean: the projector's output is one large constant for every
            image, which a language model cannot read past (docs/train.md section 3).

    Returns:
        ``{"steps", "records", "train_bce", "eval_macro_auc", "eval_auc" (per finding), "seconds",
        "render_seconds", "features"}``; the temporary head is discarded (never part of the model).
    """
    if fold not in (True, False, "running", "exact"):
        raise ValueError(f"fold must be True, False, 'running' or 'exact', got {fold!r}")
    t0 = time.perf_counter()
    tower = vision_module(adapter)
    if pool is None:
        images, targets = make_pool(seed, PRETRAIN_KEY, n_records, workers, generator)
    else:
        images, targets = list(pool[0][:n_records]), pool[1][:n_records]
    eval_images, eval_targets = make_pool(seed, PRETRAIN_KEY + 1, n_eval, workers, generator)
    render_s = time.perf_counter() - t0
    if log:
        log(f"[pretrain] rendered {len(images)} + {len(eval_images)} images in {render_s:.1f} s")

    was_training = adapter.model.training
    frozen = {name: p.requires_grad for name, p in adapter.model.named_parameters()}
    for p in adapter.model.parameters():
        p.requires_grad_(False)
    params = [p for p in tower.parameters()]
    for p in params:
        p.requires_grad_(True)

    with torch.no_grad():
        dim = token_features(adapter, [_open(images[0])])[0].shape[-1] if images else 1
    gen = torch.Generator().manual_seed(int(seed))
    # The head standardises the tokens first: a random tower's tokens vary little from image to image (grid, paper,
    # position embeddings dominate), and a plain linear head on them gets no usable gradient. It is temporary; its
    # standardisation is folded into the model at the end.
    head = TokenHead(dim, len(FINDING_CODES))
    linear = head.linear
    with torch.no_grad():
        bound = 1.0 / math.sqrt(dim)
        linear.weight.copy_(torch.empty_like(linear.weight).uniform_(-bound, bound, generator=gen))
        prevalence = torch.from_numpy(targets.mean(0) if len(targets) else np.full(len(FINDING_CODES), 0.5))
        linear.bias.copy_(torch.logit(prevalence.clamp(0.01, 0.99)).float())
    opt = torch.optim.AdamW(
        [{"params": params, "weight_decay": weight_decay}, {"params": head.parameters(), "weight_decay": 0.0}],
        lr=lr,
    )
    n_warm = max(1, int(round(warmup * steps)))

    def lr_at(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        return 0.5 * (1 + math.cos(math.pi * (step - n_warm) / max(1, steps - n_warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    loss_fn = nn.BCEWithLogitsLoss()
    y_all = torch.from_numpy(targets)
    order: list[int] = []
    running, history = 0.0, []
    adapter.model.train()
    head.train()
    try:
        for step in range(steps if images else 0):
            if len(order) < batch_size:
                order += torch.randperm(len(images), generator=gen).tolist()
            idx, order = order[:batch_size], order[batch_size:]
            loss = loss_fn(head(token_features(adapter, [_open(images[i]) for i in idx])), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*params, *head.parameters()], 1.0)
            opt.step()
            sched.step()
            running += float(loss.detach())
            if (step + 1) % max(1, log_every) == 0 or step + 1 == steps:
                n = (step % max(1, log_every)) + 1
                history.append(round(running / n, 4))
                if log:
                    log(f"[pretrain] step {step + 1}/{steps} bce {running / n:.4f} ({time.perf_counter() - t0:.0f} s)")
                running = 0.0
        adapter.model.eval()
        head.eval()
        macro, per = float("nan"), {}
        if len(eval_images):
            with torch.no_grad():
                scores = torch.cat(
                    [
                        torch.sigmoid(head(token_features(adapter, [_open(b) for b in eval_images[i : i + 32]])))
                        for i in range(0, len(eval_images), 32)
                    ]
                ).numpy()
            macro, per = _macro_auc(eval_targets, scores)
        if fold == "exact" and images:
            mean, var = token_statistics(adapter, images[:EXACT_STAT_IMAGES])
            fold_standardization(adapter, mean, var, head.norm.eps)
        elif fold and images:
            fold_standardization(adapter, head.norm.running_mean, head.norm.running_var, head.norm.eps)
    finally:
        for name, p in adapter.model.named_parameters():
            p.requires_grad_(frozen[name])
        adapter.model.train(was_training)
        for p in params:
            p.grad = None
    seconds = time.perf_counter() - t0
    if log:
        log(f"[pretrain] held-out findings macro AUC {macro:.4f} in {seconds:.1f} s")
    return {
        "steps": steps,
        "records": len(images),
        "batch_size": batch_size,
        "lr": lr,
        "train_bce": history,
        "eval_macro_auc": macro,
        "eval_auc": per,
        "seconds": round(seconds, 1),
        "render_seconds": round(render_s, 1),
        "features": int(dim),
        "folded": ("exact" if fold == "exact" else "running") if fold and images else False,
        "generator": int(generator),
        "data": "fresh" if pool is None else "records",
    }


__all__ = [
    "FINDING_CODES",
    "PRETRAIN_KEY",
    "TokenHead",
    "fold_standardization",
    "make_example",
    "EXACT_STAT_IMAGES",
    "make_pool",
    "token_statistics",
    "pool_from_records",
    "pretrain_vision",
    "token_features",
]
