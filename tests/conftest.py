"""Shared test set-up: deterministic, offline, single-threaded torch (the suite runs on 2 cores)."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def tiny_config():
    """``tiny_config(output_dir, corpus, **overrides) -> EvlConfig``: a short CPU run on the tiny corpus."""
    return _tiny_config


def _tiny_config(tmp: Path, corpus: Path, sets: list[str] | None = None, **kwargs):
    """``sets``: config overrides as ``--set`` takes them (``"views={...}"``), applied under ``kwargs``."""
    from evl_ecg.train.config import load_config

    base = dict(
        output_dir=str(tmp),
        train_file=str(corpus / "train.json"),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-3,
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    base.update(kwargs)
    return load_config(None, sets, **base)
