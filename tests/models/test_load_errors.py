"""A model folder that is not one whole model of its family is one clear error naming the folder or file.

Each case would otherwise load a randomly initialised model with exit 0 (weights of another model), or end in a raw
``JSONDecodeError``, ``KeyError``, ``SafetensorError`` or ``RuntimeError`` from deep inside transformers.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from evl_ecg.models import ModelLoadError, load_adapter
from evl_ecg.models.fingerprint import count_parameters, model_family


@pytest.fixture(scope="module")
def saved(tmp_path_factory, adapters) -> dict[str, Path]:
    """The tiny student, teacher and PULSE saved once: ``{"student": dir, "teacher": dir, "pulse": dir}``."""
    root = tmp_path_factory.mktemp("saved")
    for side, adapter in adapters.items():
        adapter.save_pretrained(root / side)
    return {side: root / side for side in adapters}


def _copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


@pytest.mark.parametrize(
    ("side", "other"), [("student", "teacher"), ("teacher", "student"), ("pulse", "teacher"), ("teacher", "pulse")]
)
def test_weights_of_another_model_are_an_error_naming_the_folder(saved, tmp_path, side, other):
    folder = _copy(saved[side], tmp_path / f"{side}-with-{other}-weights")
    shutil.copy(saved[other] / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(ModelLoadError, match=rf"{folder.name}: the weights do not belong to the model") as info:
        load_adapter(folder)
    assert "\n" not in str(info.value)


def test_a_missing_or_an_extra_tensor_is_an_error(saved, tmp_path):
    state = load_file(str(saved["student"] / "model.safetensors"))
    dropped = sorted(k for k in state if "layernorm" in k)[0]
    folder = _copy(saved["student"], tmp_path / "missing")
    save_file({k: v for k, v in state.items() if k != dropped}, str(folder / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=rf"1 of the model's tensors missing \({dropped}\)"):
        load_adapter(folder)
    folder = _copy(saved["student"], tmp_path / "extra")
    save_file({**state, "model.extra.weight": torch.zeros(2)}, str(folder / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"1 unexpected tensors \(model\.extra\.weight\)"):
        load_adapter(folder)


def test_a_tensor_of_another_shape_is_an_error_naming_it(saved, tmp_path):
    state = load_file(str(saved["teacher"] / "model.safetensors"))
    name = sorted(k for k, v in state.items() if v.ndim == 2)[0]
    state[name] = torch.zeros(state[name].shape[0] + 1, state[name].shape[1])
    folder = _copy(saved["teacher"], tmp_path / "shape")
    save_file(state, str(folder / "model.safetensors"))
    rows, cols = state[name].shape
    with pytest.raises(ModelLoadError, match=rf"1 tensors of another shape \(\S+: \[{rows}, {cols}\] in the weights"):
        load_adapter(folder)


def _corrupt_config(folder: Path) -> None:
    (folder / "config.json").write_text('{"model_type": "qwen3_vl", ')


def _config_list(folder: Path) -> None:
    (folder / "config.json").write_text("[1, 2]")


def _truncated_weights(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _random_weights(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(os.urandom(4096))


def _empty_weights(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"")


def _other_class_config(folder: Path, teacher: Path) -> None:
    shutil.copy(teacher / "config.json", folder / "config.json")


def _unknown_family(folder: Path) -> None:
    (folder / "evl_ecg_adapter.json").write_text(json.dumps({"family": "bert"}))


def _corrupt_adapter_file(folder: Path) -> None:
    (folder / "evl_ecg_adapter.json").write_text('{"family": ')


def _adapter_file_without_family(folder: Path) -> None:
    (folder / "evl_ecg_adapter.json").write_text("{}")


def _unknown_model_type(folder: Path) -> None:
    (folder / "evl_ecg_adapter.json").unlink()
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))


CASES = {
    "corrupt-config": (_corrupt_config, r"config\.json: the model configuration is not valid JSON \(line 1"),
    "config-not-an-object": (_config_list, r"config\.json: the model configuration must be a JSON object, got list"),
    "truncated-weights": (_truncated_weights, r"model\.safetensors: truncated: its header describes \d+ bytes"),
    "random-weights": (_random_weights, r"model\.safetensors: .*(not plausible|unreadable|too short)"),
    "empty-weights": (_empty_weights, r"model\.safetensors: too short to be a safetensors file"),
    "other-class-config": (
        _other_class_config,
        r"config\.json: model_type 'llava' is not 'qwen3_vl', which the 'qwen3_vl' family loads",
    ),
    "unknown-family": (_unknown_family, r"evl_ecg_adapter\.json: family 'bert' is not a supported family"),
    "corrupt-adapter-file": (_corrupt_adapter_file, r"evl_ecg_adapter\.json: the adapter settings file is not valid"),
    "adapter-file-without-family": (_adapter_file_without_family, r"evl_ecg_adapter\.json: 'family' must name"),
    "unknown-model-type": (_unknown_model_type, r"config\.json: model_type 'bert' is not a supported family"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_broken_model_folder_is_one_clear_error_naming_the_file(saved, tmp_path, case):
    damage, message = CASES[case]
    folder = _copy(saved["student"], tmp_path / case)
    if damage is _other_class_config:
        damage(folder, saved["teacher"])
    else:
        damage(folder)
    with pytest.raises(ModelLoadError, match=message) as info:
        load_adapter(folder)
    assert str(folder) in str(info.value) and "\n" not in str(info.value)


def test_truncated_weights_of_a_sharded_checkpoint_name_the_shard(saved, tmp_path):
    folder = _copy(saved["teacher"], tmp_path / "sharded")
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(folder / shard), metadata={"format": "pt"})
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert load_adapter(folder).family == "llava"  # whole: loads
    _truncated_weights_file(folder / "model-00002-of-00002.safetensors")
    with pytest.raises(ModelLoadError, match=r"model-00002-of-00002\.safetensors: truncated"):
        load_adapter(folder)


def _truncated_weights_file(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-16])


def test_the_fingerprint_family_reports_a_corrupt_adapter_file_as_the_loader_does(saved, tmp_path):
    folder = _copy(saved["student"], tmp_path / "corrupt")
    assert model_family(folder) == "qwen3_vl"
    _corrupt_adapter_file(folder)
    with pytest.raises(ModelLoadError, match=r"evl_ecg_adapter\.json: the adapter settings file is not valid JSON"):
        model_family(folder)


def test_parameters_are_counted_from_the_headers(saved, adapters):
    for side, adapter in adapters.items():
        stored = sum(t.numel() for t in load_file(str(saved[side] / "model.safetensors")).values())
        assert count_parameters(saved[side]) == stored <= adapter.num_parameters()
    assert count_parameters(saved["teacher"]) > count_parameters(saved["student"])
