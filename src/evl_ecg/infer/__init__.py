"""At the bedside: one ECG in, an interpretation out (:class:`Interpreter`), a smaller model out (:func:`export_model`),
and a local page to try it on (:mod:`evl_ecg.infer.serve`). The last stage: it reads models (``models/``), renders with
``ecg/`` and parses answers with the scorers' rules (``eval/``); nothing upstream imports it.

Names are imported lazily, so that ``evl-ecg --help`` (which imports :mod:`evl_ecg.infer.commands`) stays fast.
See docs/predict.md, docs/export.md and docs/serve.md.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "DISCLAIMER": "evl_ecg.infer.interpreter",
    "Interpreter": "evl_ecg.infer.interpreter",
    "Prediction": "evl_ecg.infer.interpreter",
    "EcgInput": "evl_ecg.infer.inputs",
    "InputError": "evl_ecg.infer.inputs",
    "read_input": "evl_ecg.infer.inputs",
    "QUESTIONS": "evl_ecg.infer.questions",
    "Question": "evl_ecg.infer.questions",
    "export_model": "evl_ecg.infer.export",
    "create_app": "evl_ecg.infer.serve",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'evl_ecg.infer' has no attribute {name!r}")
