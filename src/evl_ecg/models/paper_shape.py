"""Paper-shape models: the published configs of the paper's pair, depth cut or whole, with random weights.

The paper distils PULSE-7B (LLaVA-1.6: Vicuna-7B v1.5 and CLIP ViT-L/14-336, original ``llava_llama`` layout) into
Qwen3-VL-2B-Instruct. Their weights are never downloaded here: a model is built from a release's ``config.json``
(the repository's ``tests/paper/fixtures/`` holds both; ``tests/paper/test_paper_shape.py`` says where each value
comes from) with every width, vocabulary, head count, patch and tile
size, pinpoint and rope setting as published, only the number of layers cut, and random weights (each class's own
initialiser, ``seed``). So the shapes that matter for distillation (visual-token counts, hidden sizes D_s = 2048 and
D_t = 4096, the 151,936- and 32,000-row vocabularies) are the paper's, at a fraction of the compute.

* :func:`write_qwen3_vl_checkpoint`, :func:`write_pulse_checkpoint`: checkpoint folders in the releases' layouts
  (Qwen3-VL: the transformers layout with the release's ``config.json`` format; PULSE: ``llava_llama`` weight names,
  sharded with an index, and the CLIP tower as its own local folder named by ``mm_vision_tower``), loadable by
  :func:`evl_ecg.models.load_adapter`.
* :func:`build_qwen3_vl_adapter`, :func:`build_pulse_adapter`: the same models in memory, on any device and dtype
  (``device="meta"`` for parameter counts without memory; full depth with ``text_layers=None``).
* :func:`cut_qwen3_vl_config`, :func:`cut_pulse_config`, :func:`clip_tower_config`: the depth cuts themselves.

Depth cut: the text models keep ``text_layers`` layers; the student's vision tower ``vision_layers`` blocks, its
DeepStack taps mapped proportionally onto them (``i * depth // published_depth``, duplicates dropped: 24 blocks with
taps 5, 11, 17 cut to 2 give taps 0, 1); the teacher's CLIP tower ``vision_layers`` layers (PULSE reads layer -2, so
2 layers keep a real encoder layer under it).

Tokenizers are trained locally on ``texts`` (:func:`evl_ecg.models.tokenizers.train_tokenizer`: SentencePiece-like
for the teacher, byte-level BPE with the Qwen special tokens for the student), much smaller than the released ones;
the model vocabularies stay the published sizes. The config's special-token ids (``image_token_id``,
``vision_start_token_id``, ``bos``/``eos`` ...) are set to the local tokenizer's ids of the same tokens; the
teacher's ``<image>`` then lies inside Vicuna's 32,000 rows rather than just past them (the model replaces those
positions with visual tokens either way). Nothing here reads the network.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor
from transformers import CLIPVisionConfig, Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration

from evl_ecg.models.checkpoints import read_json_object
from evl_ecg.models.pulse import (
    CLIP_L_336,
    PulseAdapter,
    PulseImageProcessor,
    PulseLlavaForConditionalGeneration,
    clip_image_processor,
    convert_llava_llama_state_dict,
    pulse_config,
)
from evl_ecg.models.qwen3vl import PAPER_MAX_PIXELS, PAPER_MIN_PIXELS, Qwen3VLAdapter
from evl_ecg.models.tokenizers import train_tokenizer

#: Qwen3-VL's image processor settings (``preprocessor_config.json`` of the Qwen3-VL / Qwen3.5 releases: 16-pixel
#: patches, 2 x 2 merge, 2 frames per temporal patch, mean = std = 0.5, 65,536 to 16,777,216 pixels). The paper's
#: limits (``min_pixels``/``max_pixels``, Table 2) replace the pixel range when a checkpoint is loaded for training.
QWEN3_VL_PREPROCESSOR: dict[str, Any] = {
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
#: Folder name of the teacher's local CLIP tower (the name PULSE's ``mm_vision_tower`` gives on the hub).
CLIP_TOWER_DIR = "clip-vit-large-patch14-336"
#: Default sizes of the locally trained tokenizers (entries, special tokens included).
TEACHER_TOKENIZER_SIZE = 1000
STUDENT_TOKENIZER_SIZE = 1500


def read_config(path: str | Path) -> dict[str, Any]:
    """A published ``config.json`` (one JSON object); :class:`~evl_ecg.models.checkpoints.ModelLoadError` if it is
    not one."""
    return read_json_object(path, "published model configuration")


def _layers(value: int | None, published: int, what: str) -> int:
    if value is None:
        return published
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= published:
        raise ValueError(f"{what} must be an integer from 1 to the published {published}, got {value!r}")
    return value


def _expect(config: Mapping[str, Any], model_type: str) -> None:
    if not isinstance(config, Mapping) or config.get("model_type") != model_type:
        got = config.get("model_type") if isinstance(config, Mapping) else type(config).__name__
        raise ValueError(f"expected a {model_type!r} config.json, got model_type {got!r}")


def cut_qwen3_vl_config(
    config: Mapping[str, Any], *, text_layers: int | None = None, vision_layers: int | None = None
) -> dict[str, Any]:
    """A copy of Qwen3-VL's ``config.json`` with ``text_layers`` decoder layers and ``vision_layers`` vision blocks.

    ``None`` keeps the published depth. DeepStack taps ``i`` of a ``D``-block tower become ``i * d // D`` for ``d``
    kept blocks (duplicates dropped), so every kept tap has its merger and feeds a text layer.
    """
    _expect(config, "qwen3_vl")
    out = copy.deepcopy(dict(config))
    text, vision = out["text_config"], out["vision_config"]
    text["num_hidden_layers"] = _layers(text_layers, int(text["num_hidden_layers"]), "text_layers")
    full = int(vision["depth"])
    depth = _layers(vision_layers, full, "vision_layers")
    taps = [int(i) * depth // full for i in vision.get("deepstack_visual_indexes", [])]
    vision["depth"] = depth
    vision["deepstack_visual_indexes"] = list(dict.fromkeys(taps))
    return out


def cut_pulse_config(config: Mapping[str, Any], *, text_layers: int | None = None) -> dict[str, Any]:
    """A copy of PULSE's ``llava_llama`` ``config.json`` with ``text_layers`` Llama layers (``None``: all)."""
    _expect(config, "llava_llama")
    out = copy.deepcopy(dict(config))
    out["num_hidden_layers"] = _layers(text_layers, int(config["num_hidden_layers"]), "text_layers")
    return out


def clip_tower_config(vision_layers: int | None = None) -> CLIPVisionConfig:
    """CLIP ViT-L/14-336 (PULSE's frozen tower: 24 layers, hidden 1024, 336 px, patch 14) with ``vision_layers``."""
    values = dict(CLIP_L_336)
    values["num_hidden_layers"] = _layers(vision_layers, int(CLIP_L_336["num_hidden_layers"]), "vision_layers")
    return CLIPVisionConfig(**values)


@contextmanager
def _building(device: str | torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Parameters created meanwhile are ``dtype`` on ``device``."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def random_model(cls: type, config: Any, *, device: str | torch.device = "cpu", dtype: torch.dtype) -> Any:
    """``cls(config)`` with random weights from the class's own initialiser (``_init_weights``), as ``dtype``.

    The model is created where it runs (``device``; ``"meta"``: no weights at all) and initialised once: torch's
    default initialisation at construction is skipped (it would draw every weight twice). On a CPU the weights are
    drawn in float32 and then cast (drawing normal numbers directly in bfloat16 is about four times slower there).
    """
    kind = torch.device(device).type
    init_dtype = torch.float32 if kind == "cpu" else dtype
    with _building(device, init_dtype), _no_init():
        model = cls(config)
    if kind == "meta":
        model.tie_weights()  # what init_weights does besides initialising (the student's tied embeddings)
    else:
        model.init_weights()
    return model.to(dtype)


def _no_init() -> Any:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # an older transformers: construction initialises (twice, but correctly)
        return nullcontext()
    return no_init_weights()


def _token_id(tokenizer: Any, token: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {token!r} token")
    return int(tid)


def qwen3_vl_config(config: Mapping[str, Any], tokenizer: Any) -> dict[str, Any]:
    """``config`` (a Qwen3-VL ``config.json``) with the special-token ids of ``tokenizer`` (same tokens, local ids)."""
    out = copy.deepcopy(dict(config))
    for key, token in (
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
    ):
        out[key] = _token_id(tokenizer, token)
    out["text_config"]["bos_token_id"] = _token_id(tokenizer, "<|endoftext|>")
    out["text_config"]["eos_token_id"] = _token_id(tokenizer, "<|im_end|>")
    vocab = int(out["text_config"]["vocab_size"])
    if len(tokenizer) > vocab:
        raise ValueError(f"the tokenizer has {len(tokenizer)} entries, more than the model's {vocab} rows")
    return out


def _pulse_text_ids(config: Mapping[str, Any], tokenizer: Any) -> dict[str, Any]:
    out = copy.deepcopy(dict(config))
    out.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    out["pad_token_id"] = tokenizer.pad_token_id
    if len(tokenizer) > int(out["vocab_size"]):
        raise ValueError(f"the tokenizer has {len(tokenizer)} entries, more than the model's {out['vocab_size']} rows")
    return out


def _qwen3_vl(
    config: Mapping[str, Any], texts: Iterable[str], text_layers: int | None, vision_layers: int | None,
    tokenizer_size: int, seed: int, device: str | torch.device, dtype: torch.dtype, min_pixels: int, max_pixels: int,
) -> tuple[Qwen3VLAdapter, dict[str, Any]]:  # fmt: skip
    tokenizer = train_tokenizer(texts, "student", tokenizer_size)
    published = qwen3_vl_config(
        cut_qwen3_vl_config(config, text_layers=text_layers, vision_layers=vision_layers), tokenizer
    )
    torch.manual_seed(seed)
    model = random_model(
        Qwen3VLForConditionalGeneration, Qwen3VLConfig.from_dict(published), device=device, dtype=dtype
    )
    settings = {k: v for k, v in QWEN3_VL_PREPROCESSOR.items() if k != "size"}
    processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, **settings)
    return Qwen3VLAdapter(model.eval(), tokenizer, processor), published


def build_qwen3_vl_adapter(
    config: Mapping[str, Any],
    texts: Iterable[str],
    *,
    text_layers: int | None = 1,
    vision_layers: int | None = 1,
    tokenizer_size: int = STUDENT_TOKENIZER_SIZE,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    min_pixels: int = PAPER_MIN_PIXELS,
    max_pixels: int = PAPER_MAX_PIXELS,
) -> Qwen3VLAdapter:
    """The student (Qwen3-VL, published widths, depth cut) with random weights, in memory, and its adapter.

    ``text_layers``/``vision_layers``: see :func:`cut_qwen3_vl_config` (``None``: the published 28 / 24). The weights
    are created as ``dtype`` on ``device`` (``"meta"``: none at all, for parameter counts). The image processor takes
    the paper's pixel limits (Table 2: 784 to 50,176 px).
    """
    adapter, _ = _qwen3_vl(
        config, texts, text_layers, vision_layers, tokenizer_size, seed, device, dtype, min_pixels, max_pixels
    )
    return adapter


def _pulse(
    config: Mapping[str, Any], texts: Iterable[str], text_layers: int | None, vision_layers: int | None,
    tokenizer_size: int, seed: int, device: str | torch.device, dtype: torch.dtype,
) -> tuple[PulseAdapter, dict[str, Any]]:  # fmt: skip
    tokenizer = train_tokenizer(texts, "teacher", tokenizer_size)
    published = _pulse_text_ids(cut_pulse_config(config, text_layers=text_layers), tokenizer)
    tower = clip_tower_config(vision_layers)
    if int(published.get("mm_hidden_size", tower.hidden_size)) != tower.hidden_size:
        raise ValueError(f"mm_hidden_size {published['mm_hidden_size']} is not the CLIP tower's {tower.hidden_size}")
    model_config = pulse_config(published, tower, tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    model = random_model(PulseLlavaForConditionalGeneration, model_config, device=device, dtype=dtype)
    clip = clip_image_processor(int(tower.image_size))
    adapter = PulseAdapter(model.eval(), tokenizer, PulseImageProcessor(clip, model_config.image_grid_pinpoints))
    return adapter, published


def build_pulse_adapter(
    config: Mapping[str, Any],
    texts: Iterable[str],
    *,
    text_layers: int | None = 1,
    vision_layers: int | None = 2,
    tokenizer_size: int = TEACHER_TOKENIZER_SIZE,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
) -> PulseAdapter:
    """The teacher (PULSE-7B's flat any-resolution LLaVA, published widths, depth cut), random weights, in memory.

    ``text_layers`` Llama layers and ``vision_layers`` CLIP layers (``None``: the published 32 / 24), created as
    ``dtype`` on ``device`` (``"meta"``: no weights). Images become 576 x (1 + tiles) visual tokens, as PULSE's.
    """
    adapter, _ = _pulse(config, texts, text_layers, vision_layers, tokenizer_size, seed, device, dtype)
    return adapter


def to_llava_llama_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """:class:`PulseLlavaForConditionalGeneration` weights under their original LLaVA (``llava_llama``) names.

    The inverse of :func:`evl_ecg.models.pulse.convert_llava_llama_state_dict`: ``model.embed_tokens``,
    ``model.layers.*``, ``model.norm``, ``lm_head``, ``model.mm_projector.{0,2}``,
    ``model.vision_tower.vision_tower.vision_model.*`` (LLaVA's ``CLIPVisionTower`` around ``CLIPVisionModel``).
    """
    rules = (
        ("model.language_model.", "model."),
        ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
        ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
        ("model.vision_tower.vision_model.", "model.vision_tower.vision_tower.vision_model."),
        ("model.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
        ("lm_head.", "lm_head."),
    )
    out = {}
    for key, value in state.items():
        for new, old in rules:
            if key.startswith(new):
                out[old + key[len(new) :]] = value
                break
        else:
            raise KeyError(f"a PULSE weight without an original-layout name: {key!r}")
    return out


def _save_shards(state: Mapping[str, Tensor], folder: Path, shards: int) -> None:
    """``model-0000k-of-0000n.safetensors`` files and ``model.safetensors.index.json`` (the releases' layout)."""
    keys = sorted(state)
    groups = [keys[k::shards] for k in range(shards)]
    weight_map = {}
    total = 0
    for k, group in enumerate(groups, 1):
        name = f"model-{k:05d}-of-{shards:05d}.safetensors"
        save_file({key: state[key].contiguous() for key in group}, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, name))
        total += sum(state[key].numel() * state[key].element_size() for key in group)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_qwen3_vl_checkpoint(
    config: Mapping[str, Any],
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    text_layers: int | None = 1,
    vision_layers: int | None = 1,
    tokenizer_size: int = STUDENT_TOKENIZER_SIZE,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write a depth-cut Qwen3-VL checkpoint folder with random weights (``dtype``: the release's bf16); returns it.

    Files as in the release: ``config.json`` in the release's own format (the published one, depth cut, local token
    ids: ``rope_scaling``/``rope_theta``, as transformers 4.57 wrote it), ``model.safetensors``, ``tokenizer.json``
    and its settings, ``preprocessor_config.json`` (:data:`QWEN3_VL_PREPROCESSOR`). No ``evl_ecg_adapter.json``: the
    folder is read as a release is (:func:`evl_ecg.models.load_adapter` detects ``qwen3_vl``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    adapter, published = _qwen3_vl(
        config, texts, text_layers, vision_layers, tokenizer_size, seed, "cpu", dtype, PAPER_MIN_PIXELS,
        PAPER_MAX_PIXELS,
    )  # fmt: skip
    adapter.model.save_pretrained(out)
    adapter.tokenizer.save_pretrained(out)
    Qwen2VLImageProcessorPil(**QWEN3_VL_PREPROCESSOR).save_pretrained(out)
    (out / "config.json").write_text(json.dumps(published, indent=2, sort_keys=True) + "\n")
    return out


def write_pulse_checkpoint(
    config: Mapping[str, Any],
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    text_layers: int | None = 1,
    vision_layers: int | None = 2,
    tokenizer_size: int = TEACHER_TOKENIZER_SIZE,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    shards: int = 2,
) -> Path:
    """Write a depth-cut PULSE-7B checkpoint in the original ``llava_llama`` layout; returns its folder.

    ``out_dir/PULSE-7B``: ``config.json`` (the published one, depth cut, ``mm_vision_tower`` naming the local tower
    folder), the weights under LLaVA's names (:func:`to_llava_llama_state_dict`; the frozen CLIP tower included, as
    in LLaVA-1.6 / PULSE) in ``shards`` safetensors files with an index, ``tokenizer.json``. ``out_dir/`` +
    :data:`CLIP_TOWER_DIR`: the tower as its own folder (``config.json``, weights, CLIP's ``preprocessor_config.json``),
    standing for ``openai/clip-vit-large-patch14-336``.
    """
    out = Path(out_dir)
    ckpt, tower_dir = out / "PULSE-7B", out / CLIP_TOWER_DIR
    ckpt.mkdir(parents=True, exist_ok=True)
    tower_dir.mkdir(parents=True, exist_ok=True)
    adapter, published = _pulse(config, texts, text_layers, vision_layers, tokenizer_size, seed, "cpu", dtype)
    model = adapter.model
    state = model.state_dict()
    original = to_llava_llama_state_dict(state)
    if set(convert_llava_llama_state_dict(original)) != set(state):  # the loader must read back exactly these
        raise RuntimeError("the llava_llama names do not convert back to the PULSE model's weights")
    _save_shards(original, ckpt, shards)
    published["mm_vision_tower"] = str(tower_dir.resolve())
    (ckpt / "config.json").write_text(json.dumps(published, indent=2, sort_keys=True) + "\n")
    adapter.tokenizer.save_pretrained(ckpt)
    prefix = "model.vision_tower."
    tower = {k[len(prefix) :]: v.contiguous() for k, v in state.items() if k.startswith(prefix)}
    save_file(tower, str(tower_dir / "model.safetensors"), metadata={"format": "pt"})
    model.config.vision_config.save_pretrained(tower_dir)
    adapter.image_processor.clip.save_pretrained(tower_dir)
    return ckpt


__all__ = [
    "CLIP_TOWER_DIR",
    "QWEN3_VL_PREPROCESSOR",
    "build_pulse_adapter",
    "build_qwen3_vl_adapter",
    "clip_tower_config",
    "cut_pulse_config",
    "cut_qwen3_vl_config",
    "qwen3_vl_config",
    "random_model",
    "read_config",
    "to_llava_llama_state_dict",
    "write_pulse_checkpoint",
    "write_qwen3_vl_checkpoint",
]
