"""Paper-shape smoke test: the real architectures of PULSE-7B and Qwen3-VL-2B-Instruct, depth cut, on a page image.

Two checkpoint folders are written at test time from the releases' ``config.json`` (``fixtures/``) by
:mod:`evl_ecg.models.paper_shape`: every width, vocabulary, head count, patch and tile setting published, 1 text layer
on each side, 1 (student) and 2 (teacher, which reads CLIP layer -2) vision layers, random weights, tokenizers trained
locally. They load through :func:`evl_ecg.models.load_adapter` with the paper configs' processor settings, give the
paper's visual-token counts on a 2200 x 1700 ECGInstruct-style page, and take one SFT and one KD (EVL-ECG) step
through :func:`evl_ecg.train.pipeline.run` with ``configs/paper/{sft,kd}.yaml``'s objective, max_length and pixel
limits. About 90 s of CPU time on one core and a 9 GiB peak RSS (the student's 151,936 x 2048 embedding, with its
gradients and AdamW moments, is most of it), hence ``slow``.

Where the fixtures' values come from (the releases' own files could not be read here; nothing was downloaded):

* ``qwen3-vl-2b-instruct.config.json``: a verbatim transcription of ``Qwen/Qwen3-VL-2B-Instruct/config.json`` found
  in a public test fixture ("parses_official_checkpoint_shape", a Qwen3-VL-2B derivative's Rust loader), every key
  and value; its key set and layout match the Qwen3-VL-4B-Instruct release's config transcribed elsewhere (same
  ``transformers_version`` 4.57.0.dev0, ``rope_scaling`` {mrope_interleaved, mrope_section [24, 20, 20]},
  ``rope_theta`` 5,000,000, token ids 151652 to 151656, vision tower 24 x 1024 with DeepStack taps 5, 11, 17). The
  widths (text hidden 2048, intermediate 6144, 16 heads, 8 KV heads, head_dim 128, 28 layers, vocab 151,936, tied;
  vision hidden 1024, out 2048, patch 16, merge 2, temporal 2, 2,304 position embeddings) also agree with the ones
  ``benchmarks/inference.py::paper_pair`` already uses, and at full depth they give exactly the 2,127,532,032
  parameters the hub's API reports for the release (cited in a public write-up; checked below). Not verified against
  the file on the hub itself: the exact
  values of ``max_position_embeddings`` (262,144), ``initializer_range``, ``rms_norm_eps`` and ``hidden_act``
  (consistent across every transcription seen, but only transcriptions).
* ``pulse-7b.config.json``: PULSE-7B's own ``config.json`` could not be read. It is the config of its base model,
  ``liuhaotian/llava-v1.6-vicuna-7b`` (transcribed in PaddleMIX's LLaVA tests; every Vicuna-7B v1.5 width: hidden
  4096, intermediate 11008, 32 heads and KV heads, 32 layers, vocab 32,000, max positions 4096, rms eps 1e-5, rope
  theta 10,000; ``mm_hidden_size`` 1024, ``mlp2x_gelu``, ``anyres`` with the five LLaVA-1.6 pinpoints, layer -2,
  ``patch`` features, tower ``openai/clip-vit-large-patch14-336``, ``torch_dtype`` bfloat16) with the two values that
  PULSE is documented to differ in (docs/eval.md section 2): ``model_type``
  ``llava_llama`` (the hub's tag for PULSE and the original LLaVA code's name; the PaddleMIX copy says ``llava``) and
  ``mm_patch_merge_type`` ``flat`` (PULSE's training script never passes it, so LLaVA's default replaced 1.6's
  ``spatial_unpad``; its load log drops ``model.image_newline``). Not verified for PULSE: the fields its training
  script writes or keeps from the base (``_name_or_path``, ``transformers_version``, ``mm_vision_tower_lr``,
  ``unfreeze_mm_vision_tower``, ``tune_mm_mlp_adapter``, ``freeze_mm_mlp_adapter``, ``image_crop_resolution``,
  ``image_split_resolution``), none of which the loader reads.
* The CLIP tower's own config (ViT-L/14 at 336 px: 24 layers, hidden 1024, intermediate 4096, 16 heads,
  ``quick_gelu``, eps 1e-5) is :data:`evl_ecg.models.pulse.CLIP_L_336`, and Qwen3-VL's image processor settings are
  :data:`evl_ecg.models.paper_shape.QWEN3_VL_PREPROCESSOR` (from the Qwen3-VL / Qwen3.5 ``preprocessor_config.json``
  as transcribed in public code; the paper's pixel limits replace its range).
"""

from __future__ import annotations

import gc
import math
from importlib import resources
from pathlib import Path

import pytest
import torch
import yaml

from evl_ecg.models import PulseAdapter, Qwen3VLAdapter, load_adapter

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures"
PAPER_CONFIGS = resources.files("evl_ecg") / "configs" / "paper"
PAGE = (2200, 1700)  # ECGInstruct's page, in pixels (w, h)
#: What the paper's YAML files set that a one-step CPU run keeps as they are (not ``warmup_steps``: a 3 % warm-up of a
#: one-step run gives its only step a learning rate of 0; not the batch, bf16, workers or schedule of saves).
PAPER_KEYS = (
    "method",
    "teacher_family",
    "max_length",
    "min_pixels",
    "max_pixels",
    "learning_rate",
    "projector_lr",
    "lr_scheduler_type",
    "weight_decay",
    "gradient_checkpointing",
    "seed",
)


def paper_settings(phase: str) -> dict:
    """The settings of ``configs/paper/<phase>.yaml`` that make sense on a CPU (:data:`PAPER_KEYS`)."""
    data = yaml.safe_load((PAPER_CONFIGS / f"{phase}.yaml").read_text(encoding="utf-8"))
    return {key: data[key] for key in PAPER_KEYS if key in data}


@pytest.fixture(scope="module")
def paper(tmp_path_factory) -> dict:
    """One page-sized ECGInstruct-style record and the two depth-cut checkpoints (built once for the module)."""
    from evl_ecg.data.corpus import build_corpus
    from evl_ecg.data.records import load_records
    from evl_ecg.models.paper_shape import read_config, write_pulse_checkpoint, write_qwen3_vl_checkpoint
    from evl_ecg.models.tokenizers import corpus_from_records

    root = tmp_path_factory.mktemp("paper")
    build_corpus(root / "data", n_train=1, n_bench=0, seed=0, size=PAGE, augment=False, progress=False)
    train_file = root / "data" / "train.json"
    records = load_records(train_file)
    texts = corpus_from_records(records)
    student = write_qwen3_vl_checkpoint(
        read_config(FIXTURES / "qwen3-vl-2b-instruct.config.json"), root / "qwen", texts
    )
    teacher = write_pulse_checkpoint(read_config(FIXTURES / "pulse-7b.config.json"), root / "pulse", texts)
    return {"root": root, "train_file": train_file, "records": records, "student": student, "teacher": teacher}


def _run_config(out: Path, phase: str, train_file: Path, **paths):
    from evl_ecg.train.config import load_config

    settings = {
        **paper_settings(phase),
        "phase": phase,
        "output_dir": str(out),
        "train_file": str(train_file),
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "max_steps": 1,
        "use_cpu": True,
        "bf16": False,  # the student in float32 without autocast; the frozen teacher in bf16 (the paper's, under bf16)
        "teacher_dtype": "bfloat16",
        "dataloader_num_workers": 0,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 1,
        "disable_tqdm": True,
        **{key: str(value) for key, value in paths.items()},
    }
    return load_config(None, **settings)


def _losses(history: list[dict]) -> dict[str, float]:
    return {k: v for h in history for k, v in h.items() if k in ("loss", "train_loss") or k.startswith("loss/")}


def test_full_depth_fixtures_give_the_releases_parameter_counts():
    """At full depth (meta device, no weights): Qwen3-VL-2B-Instruct's 2,127,532,032 parameters (the hub's count of the
    release); PULSE-7B's Vicuna-7B (6,738,415,616), CLIP ViT-L/14-336 vision tower and mlp2x_gelu projector."""
    from evl_ecg.models.paper_shape import build_pulse_adapter, build_qwen3_vl_adapter, read_config

    texts = ["What is the rhythm of this ECG?", "Sinus rhythm."] * 5
    full = {"text_layers": None, "vision_layers": None, "device": "meta"}
    student = build_qwen3_vl_adapter(read_config(FIXTURES / "qwen3-vl-2b-instruct.config.json"), texts, **full)
    assert student.num_parameters() == 2_127_532_032
    teacher = build_pulse_adapter(read_config(FIXTURES / "pulse-7b.config.json"), texts, **full).model
    parts = (
        (teacher.model.language_model, teacher.lm_head),
        (teacher.model.vision_tower,),
        (teacher.model.multi_modal_projector,),
    )
    counts = [sum(p.numel() for m in group for p in m.parameters()) for group in parts]
    assert counts == [6_738_415_616, 303_507_456, 1024 * 4096 + 4096 + 4096 * 4096 + 4096]


def test_page_gives_the_papers_visual_token_counts(paper):
    """2200 x 1700 page: teacher 576 x (1 + 4 tiles) = 2,880 visual tokens; student 42 (tens) = its image pads."""
    from evl_ecg.data.records import open_image

    sft = paper_settings("sft")
    pixels = {"min_pixels": sft["min_pixels"], "max_pixels": sft["max_pixels"]}
    student = load_adapter(paper["student"], dtype=torch.bfloat16, **pixels)
    teacher = load_adapter(paper["teacher"], family="pulse", dtype=torch.bfloat16)
    assert isinstance(student, Qwen3VLAdapter) and isinstance(teacher, PulseAdapter)
    record = paper["records"][0]
    image = open_image(record, paper["train_file"].parent / "images")
    assert image.size == PAGE

    assert teacher.image_processor.num_tiles(*PAGE) == 1 + 4
    t = teacher.encode(record, image)
    assert int((t["input_ids"] == teacher.image_token_id).sum()) == 576 * (1 + 4) == 2880
    assert t["pixel_values"].shape == (5, 3, 336, 336)

    s = student.encode(record, image)
    n_pads = int((s["input_ids"] == student.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    n_visual = int(s["image_grid_thw"].prod()) // student.image_processor.merge_size**2
    assert n_visual == n_pads and 10 <= n_pads < 100
    assert n_pads == 42  # 2200 x 1700 -> 224 x 192 px within 50,176 px -> 14 x 12 patches of 16 -> 7 x 6 merged

    # the published widths and vocabularies, whatever the depth
    assert (student.text_config.hidden_size, student.model.get_output_embeddings().weight.shape[0]) == (2048, 151936)
    assert (teacher.text_config.hidden_size, teacher.model.get_output_embeddings().weight.shape[0]) == (4096, 32000)


def test_one_sft_and_one_kd_step_at_paper_shape_are_finite_and_export(paper, tmp_path):
    """SFT (CE) then KD (EVL-ECG, PULSE teacher in bf16) from the SFT export (so it reloads): finite losses, the KD
    export reloads with finite weights."""
    from evl_ecg.train.pipeline import run

    gc.collect()  # the other test's adapters
    sft = run(_run_config(tmp_path / "sft", "sft", paper["train_file"], student=paper["student"]), resume=False)
    losses = _losses(sft.log_history)
    assert "loss/ce" in losses and all(math.isfinite(v) for v in losses.values()), losses
    gc.collect()  # the SFT Trainer (with the student's AdamW state) is held by reference cycles until collected

    kd_config = _run_config(
        tmp_path / "kd", "kd", paper["train_file"], student=sft.student_dir, teacher=paper["teacher"]
    )
    assert kd_config.method == "evl-ecg" and kd_config.teacher_family == "pulse"
    kd = run(kd_config, resume=False)
    losses = _losses(kd.log_history)
    assert {"loss/ce", "loss/mhca", "loss/relation", "loss/ot"} <= set(losses), losses
    assert all(math.isfinite(v) for v in losses.values()), losses
    gc.collect()

    sft_settings = paper_settings("sft")
    reloaded = load_adapter(
        kd.student_dir, min_pixels=sft_settings["min_pixels"], max_pixels=sft_settings["max_pixels"]
    )
    assert isinstance(reloaded, Qwen3VLAdapter)
    assert reloaded.text_config.hidden_size == 2048 and reloaded.adapter_settings()["max_pixels"] == 50176
    assert all(bool(torch.isfinite(p).all()) for p in reloaded.model.parameters())
