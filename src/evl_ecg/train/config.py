"""The training configuration: the transformers ``TrainingArguments`` plus what the SFT and KD phases need.

Every field documents itself (``help``) and is validated in ``__post_init__`` (TRL's habit). A YAML file in
``configs/`` (``configs/tiny/*.yaml``, ``configs/paper/*.yaml``) holds the same keys; :func:`load_config` reads one and
applies ``key=value`` overrides. Distributed engines (accelerate, DeepSpeed, FSDP) come through the Trainer's own
arguments (``deepspeed=...``, ``fsdp=...``), never through code of ours.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainingArguments

PHASES = ("teacher", "sft", "kd")


@dataclass
class EvlConfig(TrainingArguments):
    """Configuration of one training run (phase ``teacher``, ``sft`` or ``kd``).

    The paper's settings are Tables 2 (SFT) and 3 (KD) with Table 4's loss weights; ``configs/paper/`` holds them.
    Defaults below are the paper's where it gives one.
    """

    phase: str = field(default="kd", metadata={"help": "'teacher' (tiny default only), 'sft' (CE) or 'kd'."})
    method: str = field(
        default="evl-ecg",
        metadata={"help": "objective preset for phase 'kd' (evl_ecg.distill.presets: evl-ecg, ot, ot+mhca, sft, ...)."},
    )
    objective: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "overrides of the preset: {'alpha': a, 'terms': {name: {'weight': w, ...}}}."},
    )
    student: str | None = field(
        default=None, metadata={"help": "local directory of the student (a transformers checkpoint)."}
    )
    teacher: str | None = field(
        default=None, metadata={"help": "local directory of the teacher (transformers LLaVA, or PULSE's layout)."}
    )
    teacher_cache: str | None = field(
        default=None,
        metadata={
            "help": "phase 'kd': directory of the teacher-output cache (evl_ecg.train.teacher_cache): built there when "
            "empty or absent, reused when its key (teacher fingerprint, template, image processor, data, max_length, "
            "fields) matches, refused otherwise; the run then loads no teacher weights."
        },
    )
    teacher_family: str = field(
        default="auto", metadata={"help": "'auto' (from config.json), 'llava', 'llava_next' or 'pulse'."}
    )
    train_file: str | None = field(default=None, metadata={"help": "ECGInstruct-format JSON/JSONL/parquet."})
    image_root: str | None = field(default=None, metadata={"help": "root the records' image paths are relative to."})
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N records."})
    projector_lr: float = field(
        default=5e-4,
        metadata={"help": "learning rate of the student's vision projector/merger and of the objective's own modules."},
    )
    max_length: int = field(default=4096, metadata={"help": "model max length (tokens) on each side."})
    min_pixels: int = field(default=784, metadata={"help": "student image processor min pixels (Table 2)."})
    max_pixels: int = field(default=50176, metadata={"help": "student image processor max pixels (Table 2)."})
    freeze_vision: bool = field(
        default=False,
        metadata={
            "help": "freeze the trained model's vision encoder, not its projector (LLaVA vision_tower, Qwen-VL visual "
            "without merger); frozen parts stay in eval mode."
        },
    )
    hidden_positions: str = field(
        default="all", metadata={"help": "positions in hidden-state losses: 'all', 'response' or 'text'."}
    )
    pretrain_vision_steps: int = field(
        default=0,
        metadata={
            "help": "phases 'teacher'/'sft' building a tiny model: first pretrain its vision tower this many steps "
            "as a findings classifier (evl_ecg.models.pretrain; 0: off)."
        },
    )
    pretrain_vision_records: int = field(
        default=2000, metadata={"help": "synthetic images rendered for vision pretraining (reused over the steps)."}
    )
    pretrain_vision_batch_size: int = field(default=16, metadata={"help": "images per vision pretraining step."})
    pretrain_vision_lr: float = field(default=2e-3, metadata={"help": "peak learning rate of vision pretraining."})
    curve_every: int = field(
        default=0,
        metadata={
            "help": "learning curve: strict macro AUC of the student on curve_bench every N steps, at step 0 and at "
            "the end, into output_dir/curve.json (evl_ecg.train.curves; 0: off)."
        },
    )
    curve_bench: str | None = field(
        default=None,
        metadata={"help": "validation bench file of the learning curve (a corpus' val/ptb-test.json), never the test."},
    )
    curve_records: int | None = field(default=None, metadata={"help": "use only the first N validation records."})

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
        if self.hidden_positions not in ("all", "response", "text"):
            raise ValueError(f"hidden_positions must be 'all', 'response' or 'text', got {self.hidden_positions!r}")
        if self.projector_lr <= 0:
            raise ValueError("projector_lr must be positive")
        if self.pretrain_vision_steps < 0 or self.pretrain_vision_records < 1 or self.pretrain_vision_batch_size < 1:
            raise ValueError("pretrain_vision_steps must be >= 0, pretrain_vision_records/batch_size >= 1")
        if self.pretrain_vision_lr <= 0:
            raise ValueError("pretrain_vision_lr must be positive")
        if self.curve_every < 0 or (self.curve_every > 0 and not self.curve_bench):
            raise ValueError("curve_every must be >= 0, and a learning curve (curve_every > 0) needs curve_bench")
        # Our batches are dicts of per-side tensors the model's signature does not name: keep every column.
        self.remove_unused_columns = False
        super().__post_init__()
        if self.use_cpu:  # pinned memory needs an accelerator (torch warns on every dataloader otherwise)
            self.dataloader_pin_memory = False


def _coerce(value: str) -> Any:
    """A ``key=value`` override's value: YAML scalars (numbers, booleans, null, lists) or the string.

    YAML 1.1 reads ``2e-4`` as a string; numbers in that form are read as floats here. ``yes``/``no``/``on``/``off``
    stay strings (``save_strategy=no``); booleans are ``true``/``false``.
    """
    if value.strip().lower() in ("yes", "no", "on", "off", "y", "n"):
        return value.strip()
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):
        try:
            return float(parsed)
        except ValueError:
            return parsed
    return parsed


def tiny_config_path(phase: str) -> Path:
    """``configs/tiny/<phase>.yaml`` inside the package: the offline default of each phase."""
    from importlib import resources

    return Path(str(resources.files("evl_ecg") / "configs" / "tiny" / f"{phase}.yaml"))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **kwargs: Any) -> EvlConfig:
    """Build an :class:`EvlConfig` from a YAML file, ``key=value`` overrides and keyword arguments (last wins).

    Unknown keys raise an error naming the key and the file.
    """
    data: dict[str, Any] = {}
    source = "arguments"
    if path is not None:
        source = str(path)
        loaded = yaml.safe_load(Path(path).read_text())
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file must be a mapping of keys to values")
        data.update(loaded)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        data[key.strip()] = _coerce(value)
    data.update({k: v for k, v in kwargs.items() if v is not None})
    fields = {f.name: f for f in dataclasses.fields(EvlConfig)}
    for key, value in list(data.items()):  # YAML 1.1 reads `save_strategy: no` as False: give string fields "no"
        default = getattr(fields.get(key), "default", None)
        if (
            isinstance(value, bool)
            and not isinstance(default, bool)
            and isinstance(getattr(default, "value", default), str)
        ):
            data[key] = "yes" if value else "no"
    known = set(fields)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{source}: unknown config key(s) {', '.join(unknown)}")
    data.setdefault("output_dir", "runs/unnamed")
    return EvlConfig(**data)
