"""PULSE-7B as a transformers model: flat any-resolution LLaVA, and a loader for its original checkpoint layout.

PULSE-7B (ecgbench-scoring.md section 3.2) is LLaVA-v1.6-Vicuna-7B trained with ``mm_patch_merge_type='flat'``:

* image: resized+padded to the best of ``image_grid_pinpoints`` and cut into ``336 x 336`` tiles; a ``336 x 336``
  squash of the whole image is prepended (``process_anyres_image`` of the original LLaVA code);
* each tile: CLIP ViT-L/14-336, hidden states of layer ``-2``, patch tokens only (CLS dropped): 576 per tile;
* ``mlp2x_gelu`` projector (Linear, GELU, Linear); tile features simply concatenated: **576 x (1 + tiles)**
  visual tokens, no unpadding, no ``image_newline``.

transformers' ``LlavaNextForConditionalGeneration`` always unpads and appends newline tokens, so
:class:`PulseLlavaForConditionalGeneration` subclasses it and replaces only ``pack_image_features`` (flat
concatenation). The image placeholder id is out of the 32,000-token vocabulary, as LLaVA's ``IMAGE_TOKEN_INDEX``:
logits keep Vicuna's width (no extra row for ``<image>``).

:func:`load_pulse` reads the original ``llava_llama`` layout (``model.embed_tokens``, ``model.layers.*``,
``model.norm``, ``lm_head``, ``model.mm_projector.{0,2}``, ``model.vision_tower.vision_tower.vision_model.*``)
into that class.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn
from transformers import (
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    PreTrainedModel,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
from transformers.models.llava_next.modeling_llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextModel,
    LlavaNextPreTrainedModel,
)

from evl_ecg.models.checkpoints import (
    WEIGHT_FILES,
    ModelLoadError,
    check_weight_files,
    load_checked,
    loading,
    read_json_object,
    require_files,
)
from evl_ecg.models.llava import LlavaAdapter

#: PULSE-7B's ``image_grid_pinpoints`` (original LLaVA convention: ``(width, height)``).
PULSE_GRID_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
#: ``openai/clip-vit-large-patch14-336`` (PULSE's frozen vision tower); its checkpoint config is not in PULSE's.
CLIP_L_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
}


# ---- image processing (the original LLaVA mm_utils, sizes as (width, height)) -------------------------------
def select_best_resolution(original_size: tuple[int, int], possible_resolutions: Sequence[Sequence[int]]) -> tuple:
    """LLaVA's choice of the any-resolution grid: most effective pixels, then least waste. Sizes ``(w, h)``."""
    ow, oh = original_size
    best, best_eff, best_waste = None, 0, math.inf
    for w, h in possible_resolutions:
        scale = min(w / ow, h / oh)
        dw, dh = int(ow * scale), int(oh * scale)
        eff = min(dw * dh, ow * oh)
        waste = w * h - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (w, h), eff, waste
    return best


def resize_and_pad_image(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """Resize keeping the aspect ratio into ``target`` ``(w, h)`` and pad with black, centred (LLaVA)."""
    ow, oh = image.size
    tw, th = target
    sw, sh = tw / ow, th / oh
    if sw < sh:
        nw, nh = tw, min(math.ceil(oh * sw), th)
    else:
        nh, nw = th, min(math.ceil(ow * sh), tw)
    resized = image.resize((nw, nh))
    canvas = Image.new("RGB", (tw, th), (0, 0, 0))
    canvas.paste(resized, ((tw - nw) // 2, (th - nh) // 2))
    return canvas


def divide_to_patches(image: Image.Image, size: int) -> list[Image.Image]:
    """Row-major ``size x size`` tiles (LLaVA)."""
    w, h = image.size
    return [image.crop((j, i, j + size, i + size)) for i in range(0, h, size) for j in range(0, w, size)]


def clip_image_processor(size: int = 336, *, crop: bool = True) -> CLIPImageProcessorPil:
    """The CLIP processor of ``openai/clip-vit-large-patch14-336`` at tile size ``size`` (PIL backend).

    ``crop=True``: CLIP's own resize of the shortest edge then centre crop (PULSE's tiles). ``crop=False``: the
    whole image resized to ``size x size`` (the tiny single-tile teacher: a centre crop would cut leads off).
    """
    geometry = (
        {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}, "do_center_crop": True}
        if crop
        else {"size": {"height": size, "width": size}, "do_center_crop": False}
    )
    return CLIPImageProcessorPil(
        **geometry,
        do_resize=True,
        resample=PILImageResampling.BICUBIC,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        do_convert_rgb=True,
    )


class PulseImageProcessor:
    """PULSE's any-resolution preprocessing: base squash + tiles of the best pinpoint, each through CLIP's processor.

    Args:
        clip: the per-tile CLIP processor (its ``crop_size`` is the tile size).
        grid_pinpoints: candidate resolutions ``(w, h)``, multiples of the tile size.
    """

    def __init__(self, clip: CLIPImageProcessorPil, grid_pinpoints: Sequence[Sequence[int]]) -> None:
        self.clip = clip
        self.grid_pinpoints = [list(map(int, p)) for p in grid_pinpoints]
        self.tile = int(clip.crop_size["height"])
        for w, h in self.grid_pinpoints:
            if w % self.tile or h % self.tile:
                raise ValueError(f"grid pinpoint {(w, h)} is not a multiple of the tile size {self.tile}")

    def tiles(self, image: Image.Image) -> list[Image.Image]:
        """``[base] + tiles`` for one image (``process_anyres_image``)."""
        image = image.convert("RGB")
        best = select_best_resolution(image.size, self.grid_pinpoints)
        patches = divide_to_patches(resize_and_pad_image(image, best), self.tile)
        base = image.resize((self.tile, self.tile))
        return [base, *patches]

    def num_tiles(self, width: int, height: int) -> int:
        """``1 + tiles`` for an image of that size."""
        w, h = select_best_resolution((width, height), self.grid_pinpoints)
        return 1 + (w // self.tile) * (h // self.tile)

    def __call__(self, images: Sequence[Image.Image], return_tensors: str = "pt") -> dict[str, Any]:
        """``pixel_values``: ``B x T_max x 3 x S x S`` (zero-padded tiles); ``image_sizes``: ``B x 2`` (h, w)."""
        per_image = [self.clip(images=self.tiles(im), return_tensors="pt")["pixel_values"] for im in images]
        t_max = max(p.shape[0] for p in per_image)
        pixel_values = torch.zeros(len(per_image), t_max, *per_image[0].shape[1:], dtype=per_image[0].dtype)
        for i, p in enumerate(per_image):
            pixel_values[i, : p.shape[0]] = p
        sizes = torch.tensor([[im.size[1], im.size[0]] for im in images], dtype=torch.long)
        return {"pixel_values": pixel_values, "image_sizes": sizes, "num_tiles": [p.shape[0] for p in per_image]}

    def save_pretrained(self, path: str | Path) -> None:
        """Save the CLIP tile processor (the pinpoints live in the model config, as in LLaVA)."""
        self.clip.save_pretrained(path)


# ---- the model ----------------------------------------------------------------------------------------------
class _PlaceholderSafeEmbedding(nn.Embedding):
    """``nn.Embedding`` that looks an out-of-vocabulary id (LLaVA's image placeholder) up as row 0.

    PULSE's image placeholder lies outside Vicuna's 32,000 rows, as LLaVA's ``IMAGE_TOKEN_INDEX``; the model
    overwrites those positions with the visual tokens (``masked_scatter``), so the row looked up there never reaches
    the language model. Keeping the lookup tolerant lets :class:`PulseLlavaModel` use ``LlavaNextModel.forward`` as
    it is, whatever output fields a transformers release gives it. Same parameter (``weight``), same state dict.
    """

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - nn.Embedding's own argument name
        return super().forward(input.masked_fill(input >= self.num_embeddings, 0))


class _FlatInit:
    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, PulseLlavaModel):  # no image_newline to initialise
            PreTrainedModel._init_weights(self, module)
            return
        super()._init_weights(module)


class PulseLlavaModel(_FlatInit, LlavaNextModel):
    """``LlavaNextModel`` with PULSE's flat tiling: tile features concatenated, no unpad, no newline token."""

    def __init__(self, config: LlavaNextConfig) -> None:
        super().__init__(config)
        del self.image_newline
        self.image_newline = None
        old = self.language_model.get_input_embeddings()
        safe = _PlaceholderSafeEmbedding(old.num_embeddings, old.embedding_dim, old.padding_idx)
        self.language_model.set_input_embeddings(safe)

    def pack_image_features(self, image_features, image_sizes, vision_feature_select_strategy, image_newline=None):
        """Flat: each image's ``T x P x D`` tile features become ``(T * P) x D``, base tile first."""
        feats = [f.reshape(-1, f.shape[-1]) for f in image_features]
        lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.long, device=feats[0].device)
        return feats, lens


class PulseLlavaForConditionalGeneration(_FlatInit, LlavaNextForConditionalGeneration):
    """PULSE-7B: ``LlavaNextForConditionalGeneration`` over :class:`PulseLlavaModel` (flat any-resolution)."""

    def __init__(self, config: LlavaNextConfig) -> None:
        LlavaNextPreTrainedModel.__init__(self, config)
        self.model = PulseLlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()


def pulse_config(
    llava_llama: Mapping[str, Any], vision_config: CLIPVisionConfig, image_token_id: int
) -> LlavaNextConfig:
    """The transformers config of a PULSE model from its ``llava_llama`` ``config.json`` and its CLIP tower config."""
    cfg = dict(llava_llama)
    problems = []
    if cfg.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        problems.append(f"mm_projector_type={cfg['mm_projector_type']!r} (only 'mlp2x_gelu')")
    if cfg.get("mm_patch_merge_type", "flat") != "flat":
        problems.append(f"mm_patch_merge_type={cfg['mm_patch_merge_type']!r} (only PULSE's 'flat')")
    if cfg.get("image_aspect_ratio", "anyres") != "anyres":
        problems.append(f"image_aspect_ratio={cfg['image_aspect_ratio']!r} (only 'anyres')")
    if cfg.get("mm_use_im_start_end") or cfg.get("mm_use_im_patch_token"):
        problems.append("mm_use_im_start_end / mm_use_im_patch_token (PULSE uses neither)")
    if problems:
        raise ValueError("unsupported llava_llama settings: " + "; ".join(problems))
    text_keys = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "rms_norm_eps",
        "hidden_act",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "attention_bias",
    )
    text = {k: cfg[k] for k in text_keys if cfg.get(k) is not None}
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": float(cfg.get("rope_theta", 10000.0))}
    text["tie_word_embeddings"] = bool(cfg.get("tie_word_embeddings", False))
    select = cfg.get("mm_vision_select_feature", "patch")
    if select not in ("patch", "cls_patch"):
        raise ValueError(f"unsupported mm_vision_select_feature={select!r}")
    config = LlavaNextConfig(
        text_config=LlamaConfig(**text),
        vision_config=vision_config,
        image_grid_pinpoints=[list(p) for p in cfg.get("image_grid_pinpoints", PULSE_GRID_PINPOINTS)],
        vision_feature_layer=int(cfg.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy="default" if select == "patch" else "full",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        image_token_id=int(image_token_id),
        tie_word_embeddings=text["tie_word_embeddings"],
    )
    config.mm_patch_merge_type = "flat"
    config.architectures = ["PulseLlavaForConditionalGeneration"]
    return config


def convert_llava_llama_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename original-LLaVA (``llava_llama``) keys to :class:`PulseLlavaForConditionalGeneration` keys.

    Non-weights (rotary ``inv_freq``, CLIP ``position_ids``) and an unused ``model.image_newline`` are dropped.
    The CLIP tower's ``vision_model.`` level (old transformers' ``CLIPVisionModel``) is removed, as transformers 5's
    ``CLIPVisionModel`` holds the embeddings and encoder directly; :func:`load_pulse` restores it if the installed
    transformers still has it.
    """
    rules = (
        ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
        ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
        ("model.vision_tower.vision_tower.vision_model.", "model.vision_tower."),
        ("model.vision_tower.vision_tower.", "model.vision_tower."),
        ("model.", "model.language_model."),
        ("lm_head.", "lm_head."),
    )
    out = {}
    for key, value in state.items():
        if key.endswith(("rotary_emb.inv_freq", "embeddings.position_ids")) or key == "model.image_newline":
            continue
        for old, new in rules:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            raise KeyError(f"unexpected key in a llava_llama checkpoint: {key!r}")
    return out


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a local checkpoint directory (safetensors, sharded or not; ``.bin`` as a fallback)."""
    from safetensors.torch import load_file

    path = Path(path)
    for index_name, loader in (
        ("model.safetensors.index.json", load_file),
        ("pytorch_model.bin.index.json", lambda f: torch.load(f, map_location="cpu", weights_only=True)),
    ):
        if (path / index_name).exists():
            files = sorted(set(json.loads((path / index_name).read_text())["weight_map"].values()))
            state: dict[str, Tensor] = {}
            for f in files:
                if not (path / f).exists():
                    raise FileNotFoundError(f"{path} lacks {f}, listed in {index_name}")
                state.update(loader(path / f))
            return state
    if (path / "model.safetensors").exists():
        return load_file(path / "model.safetensors")
    if (path / "pytorch_model.bin").exists():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path} lacks model weights ({' or '.join(WEIGHT_FILES)})")


def _vision_setup(
    cfg: Mapping[str, Any], root: Path, vision_config: CLIPVisionConfig | None
) -> tuple[CLIPVisionConfig, CLIPImageProcessorPil, Path | None]:
    tower = cfg.get("mm_vision_tower") or cfg.get("vision_tower")
    local = None
    if tower:
        for cand in (Path(tower), root / tower):
            if (cand / "config.json").exists():
                local = cand
                break
    if vision_config is None:
        if local is not None:
            vision_config = CLIPVisionConfig.from_pretrained(local, local_files_only=True)
        elif tower and "clip-vit-large-patch14-336" in str(tower):
            vision_config = CLIPVisionConfig(**CLIP_L_336)
        else:
            raise FileNotFoundError(
                f"mm_vision_tower={tower!r} in {root / 'config.json'} is neither a local CLIP directory with a "
                "config.json nor openai/clip-vit-large-patch14-336; pass vision_config="
            )
    if local is not None and (local / "preprocessor_config.json").exists():
        processor = CLIPImageProcessorPil.from_pretrained(local, local_files_only=True)
    else:  # PULSE's checkpoint has no image processor: CLIP's constants at the tower's resolution
        processor = clip_image_processor(int(vision_config.image_size))
    return vision_config, processor, local


def load_pulse_tokenizer(path: str | Path) -> Any:
    """The Vicuna tokenizer of a PULSE directory (needs ``tokenizer.json``), ``<image>`` added, pad = unk."""
    path = Path(path)
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(
            f"{path} lacks tokenizer.json (the fast tokenizer; offsets are needed and sentencepiece is not "
            "installed to convert tokenizer.model: convert it once elsewhere and save tokenizer.json next to it)"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if "<image>" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    tokenizer.padding_side = "right"
    from evl_ecg.models.tokenizers import LLAVA_V1_TEMPLATE

    tokenizer.chat_template = LLAVA_V1_TEMPLATE
    return tokenizer


def load_pulse(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    vision_config: CLIPVisionConfig | None = None,
) -> PulseAdapter:
    """Load PULSE-7B (or any ``llava_llama`` flat-anyres checkpoint) from a local directory in the original layout.

    Args:
        path: directory with ``config.json`` (``model_type: "llava_llama"``), weights (safetensors or ``.bin``,
            sharded or not) and ``tokenizer.json``.
        dtype: cast the weights (default: as stored).
        vision_config: the CLIP tower's config; by default read from ``mm_vision_tower`` when it is a local
            directory, or CLIP ViT-L/14-336's constants when it names that model.
    """
    from accelerate import init_empty_weights

    root = require_files(path, "PULSE (llava_llama) checkpoint", "config.json", WEIGHT_FILES, "tokenizer.json")
    cfg = read_json_object(root / "config.json", "model configuration")
    if cfg.get("model_type") != "llava_llama":
        raise ModelLoadError(f"{root / 'config.json'} has model_type {cfg.get('model_type')!r}, expected 'llava_llama'")
    with loading(root, "tokenizer (tokenizer.json)"):
        tokenizer = load_pulse_tokenizer(root)
    with loading(root, "vision tower settings"):
        vision_config, clip, tower_dir = _vision_setup(cfg, root, vision_config)
    try:
        config = pulse_config(cfg, vision_config, tokenizer.convert_tokens_to_ids("<image>"))
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"{root / 'config.json'}: {exc}") from None
    check_weight_files(root)
    with loading(root, "PULSE weights"):
        state = convert_llava_llama_state_dict(read_state_dict(root))
    if not any(k.startswith("model.vision_tower.") for k in state):
        # LLaVA-1.5-style checkpoints omit the frozen tower: take it from the local mm_vision_tower directory
        if tower_dir is None or not any((tower_dir / f).exists() for f in WEIGHT_FILES):
            raise FileNotFoundError(
                f"{root} has no vision-tower weights and mm_vision_tower={cfg.get('mm_vision_tower')!r} is not a "
                "local CLIP directory with weights"
            )
        check_weight_files(tower_dir)
        with loading(tower_dir, "vision tower weights"):
            tower_state = read_state_dict(tower_dir)
        for key, value in tower_state.items():
            if key.startswith(("text_model.", "logit_scale", "text_projection", "visual_projection")):
                continue  # a full CLIPModel directory (openai/clip-vit-large-patch14-336): keep the vision half
            key = key.removeprefix("vision_model.")
            if not key.endswith("position_ids"):
                state[f"model.vision_tower.{key}"] = value
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with init_empty_weights(include_buffers=False):
        model = PulseLlavaForConditionalGeneration(config)
    expected = set(model.state_dict())
    if "model.vision_tower.vision_model.post_layernorm.weight" in expected:  # transformers 4.x CLIPVisionModel
        state = {
            (k.replace("model.vision_tower.", "model.vision_tower.vision_model.", 1) if k not in expected else k): v
            for k, v in state.items()
        }
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"{root}: weights do not match the PULSE architecture; missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )
    model.eval()
    processor = PulseImageProcessor(clip, config.image_grid_pinpoints)
    return PulseAdapter(model, tokenizer, processor)


# ---- the adapter --------------------------------------------------------------------------------------------
class PulseAdapter(LlavaAdapter):
    """PULSE-7B (the paper's teacher): llava_v1 template, flat any-resolution images, 576 x (1 + tiles) tokens."""

    family = "pulse"

    @property
    def tokens_per_tile(self) -> int:
        cfg = self.model.config
        vc = cfg.vision_config
        n = (vc.image_size // vc.patch_size) ** 2
        return n + (1 if cfg.vision_feature_select_strategy == "full" else 0)

    def process_image(self, image: Any) -> tuple[dict[str, Tensor], int]:
        out = self.image_processor([image])
        n_tiles = out["num_tiles"][0]
        return {
            "pixel_values": out["pixel_values"][0],
            "image_sizes": out["image_sizes"],
        }, self.tokens_per_tile * n_tiles

    def collate_images(self, samples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        t_max = max(s["pixel_values"].shape[0] for s in samples)
        first = samples[0]["pixel_values"]
        pixel_values = first.new_zeros(len(samples), t_max, *first.shape[1:])
        for i, s in enumerate(samples):
            pixel_values[i, : s["pixel_values"].shape[0]] = s["pixel_values"]
        return {"pixel_values": pixel_values, "image_sizes": torch.cat([s["image_sizes"] for s in samples], 0)}

    def model_inputs(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = super().model_inputs(batch)
        out["image_sizes"] = batch["image_sizes"]
        return out

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, dtype: torch.dtype | str | None = None, **model_kwargs: Any
    ) -> PulseAdapter:
        """A local directory: the original ``llava_llama`` layout (via :func:`load_pulse`) or one we saved."""
        root = require_files(path, "PULSE checkpoint", "config.json")
        cfg = read_json_object(root / "config.json", "model configuration")
        if cfg.get("model_type") == "llava_llama":
            return load_pulse(root, dtype=dtype if isinstance(dtype, torch.dtype) else None)
        require_files(root, "PULSE checkpoint", WEIGHT_FILES, "tokenizer.json", "preprocessor_config.json")
        model = load_checked(
            PulseLlavaForConditionalGeneration,
            root,
            cls.family,
            dtype=dtype or "auto",
            local_files_only=True,
            trust_remote_code=False,
            **model_kwargs,
        )
        with loading(root, "tokenizer (tokenizer.json)"):
            tokenizer = load_pulse_tokenizer(root)
        with loading(root, "image processor (preprocessor_config.json)"):
            clip = CLIPImageProcessorPil.from_pretrained(root, local_files_only=True)
        return cls(model.eval(), tokenizer, PulseImageProcessor(clip, model.config.image_grid_pinpoints))
