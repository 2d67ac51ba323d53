"""A checkpoint's student reads back into the model it came from, whatever layout save_pretrained wrote its keys in.

transformers writes a LLaVA model's keys in the checkpoint layout (``language_model.model.*``), not the module's own
(``model.language_model.*``): before the fix, resuming the tiny teacher's phase from its checkpoint failed with
"student weights do not match the model".
"""

import torch

from evl_ecg.models.tiny import build_tiny_student, build_tiny_teacher
from evl_ecg.train.trainer import load_student_weights

TEXTS = ["sinus rhythm, normal ECG", "atrial fibrillation with RBBB", "left bundle branch block"] * 20


def test_a_saved_llava_reads_back_into_a_fresh_model(tmp_path):
    saved = build_tiny_teacher(TEXTS, seed=0)
    saved.save_pretrained(tmp_path / "student")
    fresh = build_tiny_teacher(TEXTS, seed=1)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(saved.model.state_dict().values(), fresh.model.state_dict().values(), strict=True)
    )
    load_student_weights(fresh.model, tmp_path / "student")
    want = saved.model.state_dict()
    for key, value in fresh.model.state_dict().items():
        torch.testing.assert_close(value, want[key], rtol=0, atol=0, msg=key)


def test_a_saved_qwen3_vl_student_reads_back_too(tmp_path):
    saved = build_tiny_student(TEXTS, seed=0)
    saved.save_pretrained(tmp_path / "student")
    fresh = build_tiny_student(TEXTS, seed=1)
    load_student_weights(fresh.model, tmp_path / "student")
    want = saved.model.state_dict()
    for key, value in fresh.model.state_dict().items():
        torch.testing.assert_close(value, want[key], rtol=0, atol=0, msg=key)
