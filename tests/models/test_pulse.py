"""PULSE-7B: flat any-resolution tiling, and the loader of the original LLaVA (llava_llama) checkpoint layout.

The round-trip test writes a tiny checkpoint in the original layout from independent parts (a Llama LM, a CLIP
tower, an ``nn.Sequential`` mlp2x_gelu projector) and checks the loaded transformers model against the original
LLaVA flat forward written out by hand: CLIP layer -2 patch features of base + tiles -> MLP -> concatenated at the
image position of the Llama input embeddings.
"""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from evl_ecg.models import PulseAdapter, load_adapter, load_pulse, train_tokenizer
from evl_ecg.models.pulse import (
    PULSE_GRID_PINPOINTS,
    PulseImageProcessor,
    clip_image_processor,
    convert_llava_llama_state_dict,
    select_best_resolution,
)

TILE, PATCH = 32, 8
PINPOINTS = [[w * TILE // 336, h * TILE // 336] for w, h in PULSE_GRID_PINPOINTS]


# ---- tiling ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "tiles"),
    [((2200, 1700), 4), ((1344, 672), 2), ((3000, 1000), 3), ((1000, 3000), 3), ((336, 336), 2), ((800, 400), 2)],
)
def test_paper_scale_flat_token_count(size, tiles):
    """576 x (1 + tiles): 2200 x 1700 -> 672 x 672 -> 2,880; 2:1 -> 1,728; 3:1 -> 2,304 (reference doc 3.2).

    A small square image keeps all its pixels in every candidate; least waste then ties (336, 672) and (672, 336)
    and LLaVA keeps the first listed, (w 336, h 672): 2 tiles.
    """
    proc = PulseImageProcessor(clip_image_processor(336), PULSE_GRID_PINPOINTS)
    assert proc.num_tiles(*size) == 1 + tiles
    assert 576 * proc.num_tiles(*size) == {4: 2880, 2: 1728, 3: 2304}[tiles]


def test_paper_scale_tiles_and_pixel_values(make_image):
    proc = PulseImageProcessor(clip_image_processor(336), PULSE_GRID_PINPOINTS)
    img = make_image(2200, 1700)
    tiles = proc.tiles(img)
    assert len(tiles) == 5 and all(t.size == (336, 336) for t in tiles)
    out = proc([img])
    assert out["pixel_values"].shape == (1, 5, 3, 336, 336)
    assert out["image_sizes"].tolist() == [[1700, 2200]]


def test_select_best_resolution_by_hand():
    # (w, h) candidates for a 400 x 200 image: (64,32) keeps 64x32 = 2048 px with no waste -> best.
    assert select_best_resolution((400, 200), PINPOINTS) == (64, 32)
    assert select_best_resolution((512, 384), PINPOINTS) == (64, 64)  # 64 x 48 effective beats 42 x 32
    assert select_best_resolution((600, 200), PINPOINTS) == (96, 32)
    assert select_best_resolution((200, 600), PINPOINTS) == (32, 96)


def test_tiles_are_base_squash_then_row_major_padded_tiles(make_image):
    proc = PulseImageProcessor(clip_image_processor(TILE), PINPOINTS)
    img = make_image(512, 384)
    tiles = proc.tiles(img)
    assert len(tiles) == 5
    assert list(tiles[0].getdata()) == list(img.resize((TILE, TILE)).getdata())
    # 512 x 384 into 64 x 64: resized to 64 x 48, pasted at y = 8 on black; tiles row-major (0,0),(32,0),(0,32),(32,32)
    canvas = Image.new("RGB", (64, 64))
    canvas.paste(img.resize((64, 48)), (0, 8))
    for k, (x, y) in enumerate([(0, 0), (32, 0), (0, 32), (32, 32)]):
        assert list(tiles[1 + k].getdata()) == list(canvas.crop((x, y, x + 32, y + 32)).getdata())
    assert set(tiles[1].crop((0, 0, 32, 8)).getdata()) == {(0, 0, 0)}


# ---- the original-layout checkpoint -------------------------------------------------------------------------
def _write_original_checkpoint(root, seed=0, with_tower=True):
    """A tiny llava_llama checkpoint written from independent parts; returns (parts, tokenizer)."""
    tokenizer = train_tokenizer(
        ["Sinus rhythm with first degree AV block.", "What is the rhythm of this ECG?", "AF; RBBB"] * 5, "teacher", 500
    )
    vocab = tokenizer.convert_tokens_to_ids("<image>")  # the LM vocabulary excludes <image>, as Vicuna's
    torch.manual_seed(seed)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        )
    ).eval()
    clip_cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=TILE,
        patch_size=PATCH,
        hidden_act="quick_gelu",
    )
    clip = CLIPVisionModel(clip_cfg).eval()
    proj = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64)).eval()
    tower_dir = root / "clip-tower"
    clip.save_pretrained(tower_dir)  # a local CLIP directory (config + weights), named by mm_vision_tower
    ckpt = root / "pulse-tiny"
    ckpt.mkdir()
    config = {
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": vocab,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "image_aspect_ratio": "anyres",
        "image_grid_pinpoints": PINPOINTS,
        "mm_hidden_size": 32,
        "mm_patch_merge_type": "flat",
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": str(tower_dir),
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "use_mm_proj": True,
    }
    (ckpt / "config.json").write_text(json.dumps(config))
    state = {k: v.clone().contiguous() for k, v in llama.state_dict().items()}
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # old checkpoints carry this buffer
    state.update({f"model.mm_projector.{k}": v.clone() for k, v in proj.state_dict().items()})
    if not with_tower:  # the tower dir as openai's CLIPModel stores it: vision_model.* next to the text half
        tower = {f"vision_model.{k}": v.clone() for k, v in clip.state_dict().items()}
        tower.update({"text_model.embeddings.token_embedding.weight": torch.zeros(3, 4), "logit_scale": torch.ones(())})
        save_file(tower, str(tower_dir / "model.safetensors"))
    if with_tower:  # LLaVA-1.6 / PULSE checkpoints carry the tower; LLaVA-1.5-style ones do not
        # the original key names: LLaVA's CLIPVisionTower wraps (transformers 4's) CLIPVisionModel -> .vision_model.
        state.update(
            {f"model.vision_tower.vision_tower.vision_model.{k}": v.clone() for k, v in clip.state_dict().items()}
        )
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, str(ckpt / name))
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    tokenizer.save_pretrained(ckpt)
    return ckpt, (llama, clip, proj)


@torch.no_grad()
def _reference_logits(parts, input_ids, image_token_id, tiles):
    """The original LLaVA flat forward: splice MLP(CLIP[-2][:, 1:]) of all tiles at the image position."""
    llama, clip, proj = parts
    feats = proj(clip(tiles, output_hidden_states=True).hidden_states[-2][:, 1:]).reshape(-1, 64)
    pos = (input_ids == image_token_id).nonzero().flatten()
    assert len(pos) == feats.shape[0] and bool((pos.diff() == 1).all())
    embed = llama.get_input_embeddings()
    before, after = input_ids[: pos[0]], input_ids[pos[-1] + 1 :]
    embeds = torch.cat([embed(before), feats, embed(after)])[None]
    return llama(inputs_embeds=embeds).logits[0]


@pytest.fixture(scope="module")
def original_checkpoint(tmp_path_factory):
    return _write_original_checkpoint(tmp_path_factory.mktemp("llava_llama"))


def test_load_pulse_reproduces_the_original_flat_forward(original_checkpoint, records, make_image):
    ckpt, parts = original_checkpoint
    adapter = load_pulse(ckpt)
    assert isinstance(adapter, PulseAdapter)
    assert adapter.model.get_output_embeddings().weight.shape[0] == parts[0].config.vocab_size
    images = [make_image(512, 384), make_image(600, 200, seed=2)]
    encs = [adapter.encode(r, im) for r, im in zip(records, images, strict=True)]
    assert [int((e["input_ids"] == adapter.image_token_id).sum()) for e in encs] == [16 * 5, 16 * 4]
    with torch.no_grad():
        out = adapter.forward(adapter.collate(encs))
    for i, e in enumerate(encs):
        n_tiles = adapter.image_processor.num_tiles(*images[i].size)
        ref = _reference_logits(parts, e["input_ids"], adapter.image_token_id, e["pixel_values"][:n_tiles])
        torch.testing.assert_close(out.logits[i, : len(ref)], ref, rtol=1e-5, atol=1e-5)
    # the loaded weights are the written ones, not a fresh init
    torch.testing.assert_close(
        adapter.model.model.multi_modal_projector.linear_2.weight, parts[2][2].weight, rtol=0, atol=0
    )


def test_load_pulse_takes_an_omitted_tower_from_mm_vision_tower(tmp_path, records, image):
    ckpt, parts = _write_original_checkpoint(tmp_path, seed=3, with_tower=False)
    adapter = load_pulse(ckpt)

    def encoder(tower):  # older transformers 5 releases keep CLIPVisionModel's ``vision_model`` level
        return getattr(tower, "vision_model", tower).encoder

    torch.testing.assert_close(
        encoder(adapter.model.model.vision_tower).layers[1].mlp.fc1.weight,
        encoder(parts[1]).layers[1].mlp.fc1.weight,
        rtol=0,
        atol=0,
    )
    e = adapter.encode(records[0], image)
    with torch.no_grad():
        out = adapter.forward(adapter.collate([e]))
    ref = _reference_logits(parts, e["input_ids"], adapter.image_token_id, e["pixel_values"])
    torch.testing.assert_close(out.logits[0], ref, rtol=1e-5, atol=1e-5)


def test_loaded_pulse_saves_and_reloads(original_checkpoint, records, image, tmp_path):
    ckpt, _ = original_checkpoint
    a = load_adapter(ckpt)
    a.save_pretrained(tmp_path / "hf")
    b = load_adapter(tmp_path / "hf")
    assert isinstance(b, PulseAdapter)
    e = a.encode(records[0], image)
    with torch.no_grad():
        torch.testing.assert_close(a.forward(a.collate([e])).logits, b.forward(b.collate([e])).logits)


def test_load_pulse_missing_tokenizer_names_it(original_checkpoint, tmp_path):
    ckpt, _ = original_checkpoint
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in ckpt.iterdir():
        if f.name != "tokenizer.json":
            (partial / f.name).write_bytes(f.read_bytes())
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        load_pulse(partial)


def test_load_pulse_rejects_other_layouts(original_checkpoint, tmp_path):
    ckpt, _ = original_checkpoint
    cfg = json.loads((ckpt / "config.json").read_text())
    for key, value, match in [
        ("mm_patch_merge_type", "spatial_unpad", "flat"),
        ("mm_projector_type", "linear", "mlp2x_gelu"),
        ("model_type", "llama", "llava_llama"),
        ("mm_vision_tower", "some/remote-tower", "vision_config"),
    ]:
        d = tmp_path / f"bad-{key}"
        d.mkdir()
        for f in ckpt.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        (d / "config.json").write_text(json.dumps({**cfg, key: value}))
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            load_pulse(d)


def test_convert_rejects_unknown_keys():
    with pytest.raises(KeyError, match="mm_resampler"):
        convert_llava_llama_state_dict({"mm_resampler.weight": torch.zeros(1)})
    out = convert_llava_llama_state_dict(
        {"model.image_newline": torch.zeros(1), "model.vision_tower.vision_tower.vision_model.post_layernorm.bias": 1}
    )
    assert list(out) == ["model.vision_tower.post_layernorm.bias"]
