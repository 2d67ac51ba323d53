"""Can a small image classifier read the PTB-XL superclasses off our rendered synthetic ECGs?

Trains a small CNN (torch, CPU) on default-size rendered images of synthetic records labelled with the five
PTB-XL diagnostic superclasses (multi-label: NORM, MI, STTC, CD, HYP) and prints the macro ROC-AUC
(``sklearn.metrics.roc_auc_score`` on the sigmoid scores) on held-out synthetic records, with the per-class AUCs.
Aim: macro AUC >= 0.95, i.e. the findings the generator encodes are visible in the rendered image.

    python benchmarks/superclass_probe.py                   # about 4-5 minutes on 2 CPU cores
    python benchmarks/superclass_probe.py --train 400 --test 200 --epochs 4   # a quick look

Train and test records come from different seed streams; the test set is drawn like ``ptb-test``
(``sample_spec(vocabulary="ptbxl")``), images without augmentation.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from evl_ecg.ecg.labels import PTBXL_SUPERCLASSES, labels_from_findings


def _make(args: tuple[int, str, int, tuple[int, int], int, bool]) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic record; returns (ink image ``H/pool x W/pool`` uint8, its 5 superclass labels)."""
    seed, split, index, size, pool, augment = args
    from evl_ecg.ecg.render import Augment, RenderSpec, render
    from evl_ecg.ecg.synth import generate, sample_spec

    ss_spec, ss_signal, ss_render = np.random.SeedSequence(seed, spawn_key=(split == "test", index)).spawn(3)
    spec = sample_spec(np.random.default_rng(ss_spec), vocabulary="ptbxl")
    ecg = generate(spec, seed=int(ss_signal.generate_state(1)[0]))
    rng_r = np.random.default_rng(ss_render)
    aug = Augment.random(rng_r, float(rng_r.uniform(0.2, 1.0))) if augment and rng_r.random() < 0.5 else None
    img = render(ecg, RenderSpec(size=size), augment=aug, seed=int(rng_r.integers(2**31)))
    ink = 255 - np.asarray(img.convert("L"), dtype=np.uint8)  # H x W, trace = high
    if pool > 1:  # max-pool the ink so that 1-px traces survive the downsampling
        h, w = (ink.shape[0] // pool) * pool, (ink.shape[1] // pool) * pool
        ink = ink[:h, :w].reshape(h // pool, pool, w // pool, pool).max(axis=(1, 3))
    labels = labels_from_findings(spec.findings, "ptbxl")
    return ink, np.array([c in labels for c in PTBXL_SUPERCLASSES], dtype=np.float32)


def make_set(
    split: str, n: int, seed: int, size: tuple[int, int], pool: int, workers: int, augment: bool
) -> tuple[np.ndarray, np.ndarray]:
    jobs = [(seed, split, i, size, pool, augment) for i in range(n)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            out = list(pool.map(_make, jobs, chunksize=16))
    else:
        out = [_make(j) for j in jobs]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


def build_cnn(n_classes: int = 5):
    """A small CNN: 5 conv blocks (stride-2), then global average + max pooling, then a linear head."""
    import torch
    from torch import nn

    def block(cin: int, cout: int, stride: int = 2) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                block(1, 16), block(16, 32), block(32, 48), block(48, 64), block(64, 96), block(96, 96, 1)
            )
            self.head = nn.Linear(192, n_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # B x 1 x H x W -> B x n_classes logits
            f = self.features(x)
            return self.head(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))

    return Net()


def train_cnn(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, epochs: int, seed: int) -> np.ndarray:
    import torch

    torch.manual_seed(seed)
    net = build_cnn(y_tr.shape[1])
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * int(np.ceil(len(x_tr) / 32))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    xt = torch.from_numpy(x_tr.astype(np.float32) / 255.0).unsqueeze(1)  # ink = 1
    yt = torch.from_numpy(y_tr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), 32):
            idx = perm[i : i + 32]
            opt.zero_grad()
            loss = loss_fn(net(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"  epoch {epoch + 1}/{epochs}: train BCE {total / len(xt):.4f}", flush=True)
    net.eval()
    with torch.no_grad():
        xe = torch.from_numpy(x_te.astype(np.float32) / 255.0).unsqueeze(1)
        return torch.cat([torch.sigmoid(net(xe[i : i + 64])) for i in range(0, len(xe), 64)]).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--test", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", default="512x384", help="render size WxH (the corpus default)")
    ap.add_argument("--pool", type=int, default=2, help="ink max-pooling factor before the CNN")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--augment", action="store_true", help="augment half of the images (train and test)")
    args = ap.parse_args()

    import torch
    from sklearn.metrics import roc_auc_score

    torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.split("x"))
    t0 = time.perf_counter()
    x_tr, y_tr = make_set("train", args.train, args.seed, size, args.pool, args.workers, args.augment)
    x_te, y_te = make_set("test", args.test, args.seed, size, args.pool, args.workers, args.augment)
    t1 = time.perf_counter()
    print(f"rendered {len(x_tr)} train + {len(x_te)} test images at {size[0]}x{size[1]} in {t1 - t0:.1f} s")
    print(
        "label prevalence (train):",
        {c: round(float(v), 3) for c, v in zip(PTBXL_SUPERCLASSES, y_tr.mean(0), strict=True)},
    )
    scores = train_cnn(x_tr, y_tr, x_te, args.epochs, args.seed)
    t2 = time.perf_counter()
    per_class = {c: float(roc_auc_score(y_te[:, k], scores[:, k])) for k, c in enumerate(PTBXL_SUPERCLASSES)}
    macro = float(np.mean(list(per_class.values())))
    print(f"trained in {t2 - t1:.1f} s ({args.epochs} epochs, input {x_tr.shape[2]}x{x_tr.shape[1]})")
    print("per-class ROC-AUC:", {k: round(v, 4) for k, v in per_class.items()})
    print(f"macro ROC-AUC (held-out synthetic, n={len(y_te)}): {macro:.4f}  (aim >= 0.95)")


if __name__ == "__main__":
    main()
