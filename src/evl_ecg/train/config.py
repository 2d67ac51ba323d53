"""The training configuration: the transformers ``TrainingArguments`` plus what the SFT and KD phases need.

Every field documents itself (``help``) and is validated in ``__post_init__`` (TRL's habit). A YAML file in
``configs/`` (``configs/tiny/*.yaml``, ``configs/paper/*.yaml``) holds the same keys; :func:`load_config` reads one and
applies ``key=value`` overrides. Distributed engines (accelerate, DeepSpeed, FSDP) come through the Trainer's own
arguments (``deepspeed=...``, ``fsdp=...``), never through code of ours.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import functools
import inspect
import math
import os
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainingArguments

from evl_ecg.files import read_text_file

PHASES = ("teacher", "sft", "kd")
TEACHER_FAMILIES = ("auto", "llava", "llava_next", "pulse")
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config value of the wrong type or out of its range; ``key`` names the option, ``where`` where it was set
    (``FILE: key``, ``--set key=value``), which the message starts with."""

    def __init__(self, key: str, problem: str, where: str | None = None) -> None:
        self.key, self.problem, self.where = key, problem, where
        super().__init__(f"{where or key}: {problem}")


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
        default="auto",
        metadata={
            "help": "'auto' (from the checkpoint's files), 'llava', 'llava_next' or 'pulse' (PULSE-7B, either layout): "
            "the teacher checkpoint must be of this family, or it is refused."
        },
    )
    teacher_dtype: str = field(
        default="auto",
        metadata={
            "help": "dtype of the frozen teacher's weights: 'auto' (bfloat16 under bf16, float16 under fp16, else "
            "float32), 'float32', 'bfloat16' or 'float16'. The student always trains with float32 weights and "
            "optimiser state (bf16/fp16 are autocast, as the Trainer means them)."
        },
    )
    teacher_device: str | None = field(
        default=None,
        metadata={"help": "device of the frozen teacher (e.g. 'cuda:1'); default: the student's training device."},
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
    freeze_projector: bool = field(
        default=False,
        metadata={
            "help": "also freeze the projector (LLaVA multi_modal_projector, Qwen-VL merger): the tiny v2 teacher "
            "trains its language model alone, or the projector collapses to one constant token (docs/train.md 3)."
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
    pretrain_vision_generator: int | None = field(
        default=None,
        metadata={
            "help": "synthetic-ECG generator (1 or 2) of the vision pretraining images; default: the training "
            "corpus' own (its manifest), 1 for a corpus without one."
        },
    )
    pretrain_vision_fold: str = field(
        default="running",
        metadata={
            "help": "statistics of the token standardisation folded into the projector after vision pretraining: "
            "'running' (the head's running mean and variance) or 'exact' (the final tower's tokens; a deep tower "
            "needs it: evl_ecg.models.pretrain)."
        },
    )
    pretrain_vision_data: str = field(
        default="fresh",
        metadata={
            "help": "images of vision pretraining: 'fresh' (a fresh stream of labelled synthetic images) or 'train' "
            "(the training file's records that carry findings: under a label budget, the labelled records only)."
        },
    )
    tiny_teacher: str = field(
        default="v1",
        metadata={
            "help": "phase 'teacher': size of the tiny teacher built from scratch, 'v1' (configs/tiny/teacher-v1.yaml) "
            "or 'v2' (larger; configs/tiny/teacher.yaml, the default teacher's recipe)."
        },
    )
    curve_every: int = field(
        default=0,
        metadata={
            "help": "learning curve: strict macro AUC of the student on curve_bench every N steps, at step 0 and at "
            "the end, into output_dir/curve.json (evl_ecg.eval.curves; 0: off)."
        },
    )
    curve_bench: str | None = field(
        default=None,
        metadata={"help": "validation bench file of the learning curve (a corpus' val/ptb-test.json), never the test."},
    )
    curve_records: int | None = field(default=None, metadata={"help": "use only the first N validation records."})
    curve_keep_best: bool = field(
        default=False,
        metadata={
            "help": "validation checkpoint selection: write the student of the curve's best point after step 0 to "
            "output_dir/best-student whenever a point beats every earlier one (step 0 included)."
        },
    )
    views: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "view policy (evl_ecg.train.views; off by default): {names: [views or families], severity: "
            "[low, high], p: probability}; each sample is, with probability p, a fresh view of its record drawn from "
            "(seed, record id, epoch), the same image for the teacher and the student (needs the live teacher: "
            "refused with teacher_cache)."
        },
    )

    @contextlib.contextmanager
    def unsharded_loading(self) -> Iterator[None]:
        """A context in which ``from_pretrained`` builds whole models even under DeepSpeed ZeRO-3.

        transformers partitions every model loaded while a ZeRO-3 configuration is active (``zero.Init``); the
        frozen teacher is not the engine's model, so nothing would gather its shards. Loaded in here it stays a
        plain, whole, inference-only module on each process (the student outside it is partitioned as usual).
        """
        from transformers.integrations import (
            is_deepspeed_zero3_enabled,
            set_hf_deepspeed_config,
            unset_hf_deepspeed_config,
        )

        held = getattr(self, "hf_deepspeed_config", None)
        if held is None or not is_deepspeed_zero3_enabled():
            yield
            return
        unset_hf_deepspeed_config()
        try:
            yield
        finally:
            set_hf_deepspeed_config(held)

    @property
    def teacher_torch_dtype(self) -> Any:
        """The teacher's weight dtype (``teacher_dtype``; ``auto`` follows ``bf16`` / ``fp16``)."""
        import torch

        name = self.teacher_dtype
        if name == "auto":
            name = "bfloat16" if self.bf16 else "float16" if self.fp16 else "float32"
        return getattr(torch, name)

    def __post_init__(self) -> None:
        check_types(self)  # before anything compares a value: `max_steps: "two"` is an error naming the option
        if self.phase not in PHASES:
            raise ConfigError("phase", f"must be one of {', '.join(PHASES)}, got {self.phase!r}")
        if self.label_smoothing_factor:  # the Trainer's own smoother runs inside its compute_loss, which ours replaces
            raise ConfigError(
                "label_smoothing_factor",
                "is not read by evl-ecg's objective; set the CE term's own: objective={ce: {label_smoothing: "
                f"{self.label_smoothing_factor}}}}}",
            )
        if self.tiny_teacher not in ("v1", "v2"):
            raise ConfigError("tiny_teacher", f"must be 'v1' or 'v2', got {self.tiny_teacher!r}")
        if self.pretrain_vision_fold not in ("running", "exact"):
            got = self.pretrain_vision_fold
            raise ConfigError("pretrain_vision_fold", f"must be 'running' or 'exact', got {got!r}")
        if self.pretrain_vision_data not in ("fresh", "train"):
            raise ConfigError("pretrain_vision_data", f"must be 'fresh' or 'train', got {self.pretrain_vision_data!r}")
        if self.pretrain_vision_generator is not None:
            from evl_ecg.ecg.synth import GENERATORS

            if self.pretrain_vision_generator not in GENERATORS:
                known, got = " or ".join(map(str, GENERATORS)), self.pretrain_vision_generator
                raise ConfigError("pretrain_vision_generator", f"must be {known}, got {got!r}")
        if self.hidden_positions not in ("all", "response", "text"):
            raise ConfigError("hidden_positions", f"must be 'all', 'response' or 'text', got {self.hidden_positions!r}")
        if self.teacher_family not in TEACHER_FAMILIES:
            raise ConfigError(
                "teacher_family", f"must be one of {', '.join(TEACHER_FAMILIES)}, got {self.teacher_family!r}"
            )
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise ConfigError(
                "teacher_dtype", f"must be one of {', '.join(TEACHER_DTYPES)}, got {self.teacher_dtype!r}"
            )
        check_ranges(self)
        if self.max_pixels < self.min_pixels:
            raise ConfigError("max_pixels", f"must be >= min_pixels ({self.min_pixels}), got {self.max_pixels}")
        if self.curve_every > 0 and not self.curve_bench:
            raise ConfigError("curve_every", "a learning curve (curve_every > 0) needs curve_bench")
        if self.curve_keep_best and self.curve_every <= 0:
            raise ConfigError("curve_keep_best", "keeps the best point of a learning curve: set curve_every > 0")
        if self.fsdp and self.use_cpu:
            raise ConfigError(
                "fsdp",
                "FSDP runs on GPUs only: with use_cpu accelerate would train plain DDP instead, silently; drop "
                "use_cpu on a GPU machine, or drop fsdp",
            )
        if self.views is not None:
            check_views(self)
        if self.phase == "kd":
            check_objective(self.method, self.objective)
        # Our batches are dicts of per-side tensors the model's signature does not name: keep every column.
        self.remove_unused_columns = False
        super().__post_init__()
        if self.use_cpu:  # pinned memory needs an accelerator (torch warns on every dataloader otherwise)
            self.dataloader_pin_memory = False


# ---- values checked against their declared types and ranges ---------------------------------------------------
def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f">= {low:g}"


_POSITIVE: tuple[Callable[[Any], bool], str] = ((lambda v: v > 0), "> 0")
_FRACTION: tuple[Callable[[Any], bool], str] = ((lambda v: 0 <= v < 1), "in [0, 1)")
_SEED: tuple[Callable[[Any], bool], str] = ((lambda v: 0 <= v < 2**32), "in [0, 2**32)")

#: option -> (test, what it must be); checked when the option is set (not null).
BOUNDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "per_device_train_batch_size": _at_least(1),
    "per_device_eval_batch_size": _at_least(1),
    "gradient_accumulation_steps": _at_least(1),
    "num_train_epochs": _POSITIVE,
    "max_steps": ((lambda v: v == -1 or v >= 1), "-1 (train num_train_epochs) or >= 1"),
    "learning_rate": ((lambda v: 0 <= v < math.inf), "a finite number >= 0"),
    "projector_lr": ((lambda v: 0 < v < math.inf), "a finite number > 0"),
    "warmup_steps": _at_least(0),
    "weight_decay": _at_least(0),
    "adam_beta1": _FRACTION,
    "adam_beta2": _FRACTION,
    "adam_epsilon": _at_least(0),
    "max_grad_norm": _at_least(0),
    "label_smoothing_factor": _FRACTION,
    "logging_steps": _POSITIVE,
    "save_steps": _POSITIVE,
    "eval_steps": _POSITIVE,
    "save_total_limit": _at_least(1),
    "seed": _SEED,
    "data_seed": _SEED,
    "dataloader_num_workers": _at_least(0),
    "dataloader_prefetch_factor": _at_least(1),
    "eval_accumulation_steps": _at_least(1),
    "torch_empty_cache_steps": _at_least(1),
    "ddp_timeout": _at_least(1),
    "max_train_samples": _at_least(1),
    "max_length": _at_least(1),
    "min_pixels": _at_least(1),
    "max_pixels": _at_least(1),
    "pretrain_vision_steps": _at_least(0),
    "pretrain_vision_records": _at_least(1),
    "pretrain_vision_batch_size": _at_least(1),
    "pretrain_vision_lr": ((lambda v: 0 < v < math.inf), "a finite number > 0"),
    "curve_every": _at_least(0),
    "curve_records": _at_least(1),
}

_SIMPLE = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a) for a in typing.get_args(tp)))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if tp in _SIMPLE:
        return _SIMPLE[tp]
    if tp is dict or origin is dict:
        return "a mapping"
    if tp is list or origin is list:
        return "a list"
    return getattr(tp, "__name__", str(tp))


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def _accept(value: Any, tp: Any, convert: bool) -> tuple[bool, Any]:
    """Whether ``value`` is of type ``tp`` (``convert``: after the conversions a YAML file needs); and the value."""
    if tp is Any:
        return True, value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(tp)
        for member in members:  # an exact match wins over a conversion: `str | bool` keeps True a bool
            ok, out = _accept(value, member, False)
            if ok:
                return True, out
        if convert:
            for member in members:
                ok, out = _accept(value, member, True)
                if ok:
                    return True, out
        return False, value
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value
        if convert:
            number = _number(value) if isinstance(value, str) else value
            if isinstance(number, float) and not isinstance(number, bool) and number.is_integer():
                return True, int(number)
        return False, value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return not (isinstance(value, float) and math.isnan(value)), value
        if convert and isinstance(value, str):  # YAML 1.1 reads `2e-4` as a string
            number = _number(value)
            return number is not None, number if number is not None else value
        return False, value
    if tp is str:
        if isinstance(value, str):
            return True, value
        if convert and isinstance(value, os.PathLike):
            return True, os.fspath(value)
        return False, value
    if tp is dict or origin is dict:
        return isinstance(value, dict), value
    if tp is list or origin is list:
        if not isinstance(value, list):
            return False, value
        (item,) = typing.get_args(tp) or (Any,)
        if item in _SIMPLE:
            return all(_accept(v, item, False)[0] for v in value), value
        return True, value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return isinstance(value, tp), value
    return True, value  # a class of the Trainer's own (ParallelismConfig, ...): its __post_init__ checks it


#: Options whose accepted values are wider than their transformers annotation says (its help: "``fsdp=True`` to turn
#: FSDP on", while the field is annotated ``str | None``).
WIDER_TYPES: dict[str, Any] = {"fsdp": bool | str | None}


@functools.lru_cache(maxsize=1)
def _hints() -> dict[str, Any]:
    return {**typing.get_type_hints(EvlConfig), **WIDER_TYPES}


def check_types(config: EvlConfig) -> None:
    """Every option set to other than its default must have its declared type (the annotation of its field).

    Numbers written as strings (YAML 1.1 reads ``2e-4`` as one) are converted; a float with an integral value may
    stand for an integer; anything else (``freeze_vision: "yes please"``, ``max_steps: 2.5``) is a
    :class:`ConfigError` naming the option.
    """
    hints = _hints()
    for f in dataclasses.fields(config):
        if not f.init or f.name not in hints:
            continue
        value = getattr(config, f.name)
        if value is f.default:
            continue
        ok, converted = _accept(value, hints[f.name], True)
        if not ok:
            raise ConfigError(f.name, f"expected {_describe(hints[f.name])}, got {value!r}")
        if converted is not value:
            setattr(config, f.name, converted)


def check_ranges(config: EvlConfig) -> None:
    """Every option of :data:`BOUNDS` that is set lies in its range (``max_steps: 0``, ``seed: -1`` are errors)."""
    for name, (test, what) in BOUNDS.items():
        value = getattr(config, name, None)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not test(value):
            raise ConfigError(name, f"must be {what}, got {value!r}")


def check_views(config: EvlConfig) -> None:
    """The view policy (``views``) is well formed (:meth:`evl_ecg.train.views.ViewPolicy.from_config`), and the run
    can give both models the same fresh view: not with a teacher-output cache (its outputs are of the stored pages),
    nor with persistent data-loader workers (they would keep the first epoch's views)."""
    from evl_ecg.train.views import ViewPolicy

    try:
        ViewPolicy.from_config(config.views)
    except ValueError as exc:
        raise ConfigError("views", str(exc)) from None
    if config.teacher_cache:
        raise ConfigError(
            "views",
            "a view policy shows both models the same fresh view at every step, which needs the live teacher; the "
            "teacher-output cache holds the teacher's outputs on the stored pages: drop teacher_cache (or views)",
        )
    if config.dataloader_persistent_workers:
        raise ConfigError(
            "views", "a view policy draws a new view each epoch; persistent data-loader workers would keep the first"
        )


def _term_options(name: str, options: Any, cls: type) -> None:
    where = f"terms.{name}" if name != "ce" else "ce"
    if not isinstance(options, dict):
        raise ConfigError("objective", f"{where}: expected a mapping of options, got {options!r}")
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [p for p in params if p != "context"]
    known = allowed + (["weight"] if name != "ce" else [])
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                "objective", f"{where}: unknown option {key!r}{hint}; options of {name}: {', '.join(known) or 'none'}"
            )
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not resolve: leave the types to the loss itself
        hints = {}
    for key, value in options.items():
        if key == "weight":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ConfigError("objective", f"{where}.weight: expected a finite number >= 0, got {value!r}")
        elif key in hints and not _accept(value, hints[key], False)[0]:
            raise ConfigError("objective", f"{where}.{key}: expected {_describe(hints[key])}, got {value!r}")


def check_objective(method: str, objective: Any) -> None:
    """Phase ``kd``: ``method`` names a preset and ``objective`` overrides it with registered terms and their options.

    Raises :class:`ConfigError` (option ``method`` or ``objective``) naming what is wrong: an unknown preset, term or
    option (``wieght``), an option of the wrong type, a negative weight.
    """
    from evl_ecg.distill.objective import ObjectiveConfig
    from evl_ecg.distill.presets import get_preset, list_presets
    from evl_ecg.distill.registry import registered

    presets = list_presets()
    if method not in presets:
        raise ConfigError("method", f"unknown method {method!r}; choose one of {', '.join(sorted(presets))}")
    if objective is None:
        return
    if not isinstance(objective, dict):
        raise ConfigError("objective", f"expected a mapping (alpha, terms, ...), got {objective!r}")
    terms = objective.get("terms")
    if terms is not None and not isinstance(terms, dict):
        raise ConfigError("objective", f"terms: expected a mapping of term names to options, got {terms!r}")
    spec = get_preset(method, **objective)
    try:
        ObjectiveConfig.from_dict(spec)
    except (ValueError, TypeError) as exc:
        raise ConfigError("objective", str(exc)) from None
    losses = registered()
    for name, options in spec["terms"].items():
        if name not in losses:
            close = difflib.get_close_matches(str(name), list(losses), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                "objective", f"unknown term {name!r}{hint}; registered terms: {', '.join(sorted(losses))}"
            )
        _term_options(name, options, losses[name])
    if spec.get("ce"):
        _term_options("ce", spec["ce"], losses["ce"])


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


def _read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in YAML file ``path``; one-line errors naming the file for anything else."""
    text = read_text_file(path, ValueError, what="YAML config file", missing=FileNotFoundError)
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: a config file must be a mapping of keys to values, got {type(loaded).__name__}")
    return loaded


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


#: Keys whose mapping values merge key by key when set again (in the YAML, then each ``--set``): a later
#: ``objective={terms: {mhca: {heads: 4}}}`` changes that option and keeps the objective's other settings.
MERGED_KEYS = ("objective", "views")


def _merge_mappings(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``over``, nested mappings merged key by key (copies; the inputs are not changed)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_mappings(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **kwargs: Any) -> EvlConfig:
    """Build an :class:`EvlConfig` from a YAML file, ``key=value`` overrides and keyword arguments (last wins;
    an ``objective`` mapping set again merges into the earlier one key by key, :data:`MERGED_KEYS`).

    Every error is one line that starts with where the bad value was set (``FILE: key``, ``--set key=value``):
    an unreadable file or YAML syntax, an unknown key (with the closest known one), a value of the wrong type or out
    of its range (:class:`ConfigError`).
    """
    data: dict[str, Any] = {}
    where: dict[str, str] = {}  # key -> where its value was set, for messages
    source = "arguments"
    if path is not None:
        source = str(path)
        loaded = _read_yaml(Path(path))
        data.update(loaded)
        where.update({key: f"{path}: {key}" for key in loaded})
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set {item}: an override must look like key=value")
        key, value = item.split("=", 1)
        try:
            parsed = _coerce(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {item}: the value is not valid YAML ({_yaml_problem(exc)})") from None
        key = key.strip()
        if key in MERGED_KEYS and isinstance(data.get(key), dict) and isinstance(parsed, dict):
            parsed = _merge_mappings(data[key], parsed)  # a later objective setting adds to the earlier ones
        data[key] = parsed
        where[key] = f"--set {item}"
    given = {k: v for k, v in kwargs.items() if v is not None}
    data.update(given)
    where.update({key: key for key in given})
    fields = {f.name: f for f in dataclasses.fields(EvlConfig)}
    for key, value in list(data.items()):  # YAML 1.1 reads `save_strategy: no` as False: give string fields "no"
        default = getattr(fields.get(key), "default", None)
        if (
            isinstance(value, bool)
            and not isinstance(default, bool)
            and isinstance(getattr(default, "value", default), str)
        ):
            data[key] = "yes" if value else "no"
    known = {name for name, f in fields.items() if f.init}
    unknown = [k for k in data if k not in known]
    if unknown:
        from_file = [k for k in unknown if path is not None and where.get(k) == f"{path}: {k}"]
        label = source if from_file else where.get(unknown[0], source)
        names = []
        for key in from_file or unknown:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            names.append(f"{key} (did you mean {close[0]}?)" if close else str(key))
        raise ValueError(f"{label}: unknown config key(s) {', '.join(names)}")
    data.setdefault("output_dir", "runs/unnamed")
    try:
        return EvlConfig(**data)
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.problem, where.get(exc.key)) from None
    except ValueError as exc:  # the Trainer's own checks (TrainingArguments.__post_init__)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(message if path is None else f"{path}: {message}") from None
