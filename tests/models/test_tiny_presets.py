"""The tiny teacher's sizes, counted by hand from the layer shapes (not from the builder), and the preset option."""

import pytest

from evl_ecg.models import build_tiny_student, build_tiny_teacher
from evl_ecg.train.config import ConfigError, EvlConfig

from .conftest import corpus


def clip_params(hidden: int, mlp: int, layers: int, image: int = 448, patch: int = 32) -> int:
    """CLIP vision tower: patch conv (no bias), class and position embeddings, pre/post LayerNorm, and per layer four
    biased projections, two LayerNorms and a biased two-layer MLP."""
    positions = (image // patch) ** 2 + 1
    layer = 4 * (hidden * hidden + hidden) + 2 * 2 * hidden + (hidden * mlp + mlp) + (mlp * hidden + hidden)
    return 3 * patch * patch * hidden + hidden + positions * hidden + 2 * 2 * hidden + layers * layer


def llama_params(vocab: int, hidden: int, mlp: int, layers: int) -> int:
    """Llama (heads = kv heads): embedding, per layer q/k/v/o and gate/up/down without bias and two RMSNorms, a final
    RMSNorm, and an untied LM head."""
    layer = 4 * hidden * hidden + 3 * hidden * mlp + 2 * hidden
    return vocab * hidden + layers * layer + hidden + vocab * hidden


@pytest.mark.parametrize(
    "preset, vision, text",
    [("v1", (64, 128, 3), (256, 512, 2)), ("v2", (192, 768, 6), (256, 768, 3))],
)
def test_teacher_preset_sizes_match_a_count_by_hand(preset, vision, text):
    adapter = build_tiny_teacher(corpus(), seed=0, preset=preset)
    vocab = adapter.model.config.text_config.vocab_size
    projector = (vision[0] * 256 + 256) + (256 * 256 + 256)  # LLaVA's two biased linears into D_t = 256
    want = clip_params(*vision) + llama_params(vocab, *text) + projector
    assert sum(p.numel() for p in adapter.model.parameters()) == want


def test_v2_teacher_is_at_least_five_times_the_student():
    teacher = build_tiny_teacher(corpus(), seed=0, preset="v2")
    student = build_tiny_student(corpus(), seed=0)
    ratio = sum(p.numel() for p in teacher.model.parameters()) / sum(p.numel() for p in student.model.parameters())
    assert ratio >= 5.0


def test_unknown_preset_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="'v3'"):
        build_tiny_teacher(corpus(), seed=0, preset="v3")
    with pytest.raises(ConfigError, match="tiny_teacher"):
        EvlConfig(phase="teacher", train_file="x.json", output_dir=str(tmp_path), tiny_teacher="v3", use_cpu=True)
    with pytest.raises(ConfigError, match="pretrain_vision_generator"):
        EvlConfig(phase="sft", train_file="x.json", output_dir=str(tmp_path), pretrain_vision_generator=3, use_cpu=True)
