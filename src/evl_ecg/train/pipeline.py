"""One function per run: build the models, the objective and the data of a phase, train, export.

Phases (``EvlConfig.phase``):

* ``teacher`` (offline default only): the tiny teacher learns the synthetic corpus by CE; its tokenizer is trained
  on the corpus text when no checkpoint is given.
* ``sft``: the student learns the corpus by CE (paper phase 1); a tiny student is built when none is given.
* ``kd``: the student (the SFT checkpoint) learns from CE plus the distillation terms of ``method`` (paper phase 2),
  with the teacher frozen; with ``teacher_cache`` its outputs come from a cache built once
  (:mod:`evl_ecg.train.teacher_cache`) and its weights are not loaded.

Every run directory holds ``provenance.json`` (resolved config, package versions, git commit, data manifest hash),
``trainer_state``-style ``log_history.json``, ``checkpoint-*`` directories (resumable) and the exported student
(``student/``: a plain transformers checkpoint without the objective's modules, with a model card, ``README.md``).
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from evl_ecg.data.budget import training_budget
from evl_ecg.data.records import Record, default_image_root, load_records, open_image
from evl_ecg.distill.elastic import embedding_head_of
from evl_ecg.distill.objective import Objective
from evl_ecg.distill.presets import get_preset
from evl_ecg.distill.registry import LossContext, registered, units
from evl_ecg.files import atomic_write_bytes
from evl_ecg.models import FAMILIES, load_adapter
from evl_ecg.models.base import Adapter
from evl_ecg.models.card import write_model_card
from evl_ecg.models.checkpoints import checkpoint_family
from evl_ecg.models.fingerprint import count_parameters
from evl_ecg.models.tiny import build_tiny_student, build_tiny_teacher
from evl_ecg.models.tokenizers import corpus_from_records
from evl_ecg.train import teacher_cache
from evl_ecg.train.config import EvlConfig
from evl_ecg.train.paired import PairedCollator, PairedDataset
from evl_ecg.train.teacher_side import LiveTeacher, TeacherSide
from evl_ecg.train.trainer import STUDENT_DIR, DistillModule, EvlTrainer, export_student, submodule_state
from evl_ecg.train.views import viewed_images

PACKAGES = ("evl-ecg", "torch", "transformers", "tokenizers", "accelerate", "pot", "numpy", "pillow", "scikit-learn")


@dataclass
class RunResult:
    """What a finished run leaves: where, the exported student, the Trainer's log history, wall time."""

    output_dir: Path
    student_dir: Path
    log_history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    objective: str = ""


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _manifest_hash(train_file: str | None) -> str | None:
    if not train_file:
        return None
    manifest = Path(train_file).parent / "manifest.json"
    target = manifest if manifest.exists() else Path(train_file)
    return hashlib.sha256(target.read_bytes()).hexdigest() if target.exists() else None


def write_provenance(config: EvlConfig, out_dir: Path, **extra: Any) -> Path:
    """``provenance.json``: the resolved config, package versions, git commit, data manifest hash (atomic)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    data = {
        "config": json.loads(config.to_json_string()),
        "packages": versions,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "data_manifest_sha256": _manifest_hash(config.train_file),
        "label_budget": training_budget(config.train_file),
        "torch_threads": torch.get_num_threads(),
        **extra,
    }
    path = out_dir / "provenance.json"
    atomic_write_bytes(path, json.dumps(data, indent=2, default=str).encode("utf-8"))
    return path


def load_training_records(config: EvlConfig) -> list[Record]:
    if not config.train_file:
        raise ValueError("train_file is not set: give the ECGInstruct-format training file")
    records = load_records(config.train_file)
    if config.max_train_samples is not None:
        records = records[: config.max_train_samples]
    if not records:
        raise ValueError(f"{config.train_file}: no training records")
    return records


def image_loader(config: EvlConfig) -> Any:
    """``record -> PIL image``; the image root defaults to ``images/`` beside the training file (our corpus layout)."""
    root = config.image_root if config.image_root is not None else str(default_image_root(config.train_file))
    return lambda record: open_image(record, root)


def _student_adapter(config: EvlConfig, records: list[Record]) -> Adapter:
    kwargs: dict[str, Any] = {}
    if config.student:
        try:
            family = FAMILIES.get(checkpoint_family(config.student))
        except (OSError, ValueError):
            family = None  # load_adapter says what is wrong with the folder
        takes_pixels = family is not None and "min_pixels" in inspect.signature(family.from_pretrained).parameters
        if config.phase in ("sft", "kd") and takes_pixels:  # the student family's processor limits (Table 2)
            kwargs = {"min_pixels": config.min_pixels, "max_pixels": config.max_pixels}
        # float32 weights (and so float32 AdamW moments): bf16 / fp16 are the Trainer's autocast over them, or
        # DeepSpeed's own master copy; a checkpoint stored in bf16 is upcast here
        return load_adapter(config.student, dtype=torch.float32, **kwargs)
    texts = corpus_from_records(records)
    if config.phase == "teacher":
        return build_tiny_teacher(texts, seed=config.seed, preset=config.tiny_teacher)
    if config.phase == "sft":
        return build_tiny_student(texts, seed=config.seed)
    raise ValueError("phase 'kd' needs a student checkpoint (the SFT run's student/ directory)")


def warn(message: str) -> None:
    """One ``warning:`` line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def prepare_output_dir(out_dir: Path) -> None:
    """Create ``out_dir`` and check that it takes a file, before any work: a one-line ``ValueError`` if not.

    (A read-only or uncreatable path, a path under a file: ``PermissionError``, ``NotADirectoryError``,
    ``FileNotFoundError`` otherwise surface at the first checkpoint, after the work.)
    """
    probe = out_dir / f".evl-ecg-write-probe-{os.getpid()}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"output_dir {out_dir}: cannot create or write the run directory ({reason})") from None


_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` (a ``checkpoint-N`` folder) cannot be resumed from, or ``None`` if it is complete.

    The Trainer writes ``trainer_state.json`` last, after the weights (however the engine writes them), the
    optimizer, scheduler and RNG states: a process killed while writing a checkpoint leaves it absent or cut short.
    """
    state = checkpoint / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json"
    try:
        data = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "trainer_state.json is cut short or unreadable"
    if not isinstance(data, dict) or "global_step" not in data:
        return "trainer_state.json holds no trainer state"
    return None


def last_complete_checkpoint(out_dir: Path, log: Any = warn) -> str | None:
    """The newest complete ``checkpoint-N`` in ``out_dir`` (``None`` if there is none).

    An incomplete one (a kill during its writing: :func:`checkpoint_problem`) is skipped with a warning naming it;
    the run resumes from the one before and writes that step's checkpoint again.
    """
    if not out_dir.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in out_dir.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()),
        reverse=True,
    )
    for _, path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        if log is not None:
            log(f"{path} is incomplete ({problem}; a run killed while writing it?): skipped, not resumed from")
    return None


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _weight_files(folder: Path) -> dict[str, Path]:
    return {
        p.name: p
        for p in folder.iterdir()
        if p.is_file() and p.suffix in _WEIGHT_SUFFIXES and p.name != "training_args.bin"
    }


def same_weights(first: Path, second: Path) -> bool:
    """Whether two checkpoint folders hold the same weight files, byte for byte (a copy of one model).

    Names and sizes are compared first; contents only when those agree (then read until the first difference, which
    for two different models of one architecture comes in the first megabytes).
    """
    import filecmp

    a, b = _weight_files(first), _weight_files(second)
    if not a or a.keys() != b.keys() or any(a[k].stat().st_size != b[k].stat().st_size for k in a):
        return False
    return all(filecmp.cmp(a[k], b[k], shallow=False) for k in sorted(a))


def check_model_pair(config: EvlConfig) -> None:
    """Phase ``kd``: the student and the teacher must be two models; a student larger than its teacher is warned of.

    The same folder twice, or two folders with the same weights (a copy), is a ``ValueError``. The sizes are counted
    from the safetensors headers (nothing loaded).
    """
    if config.phase != "kd" or not config.student or not config.teacher:
        return
    student, teacher = Path(config.student), Path(config.teacher)
    if not (student.is_dir() and teacher.is_dir()):
        return  # the loaders say what is missing
    if os.path.samefile(student, teacher):
        raise ValueError(
            f"--student and --teacher are the same model folder ({student}): distillation needs the teacher and "
            "the SFT student of phase 1"
        )
    if same_weights(student, teacher):
        raise ValueError(
            f"--student {student} and --teacher {teacher} hold the same weights (a copy of one model): distillation "
            "needs the teacher and the SFT student of phase 1"
        )
    n_student, n_teacher = count_parameters(student), count_parameters(teacher)
    if n_student and n_teacher and n_student > n_teacher and config.process_index == 0:
        warn(
            f"the student ({student}, {n_student:,} parameters) is larger than the teacher ({teacher}, "
            f"{n_teacher:,}): are --student and --teacher swapped?"
        )


def pretrain_tiny_vision(config: EvlConfig, adapter: Adapter) -> dict[str, Any] | None:
    """Vision pretraining of a freshly built tiny model (``pretrain_vision_steps``; see evl_ecg.models.pretrain)."""
    if config.student or config.phase not in ("teacher", "sft") or config.pretrain_vision_steps <= 0:
        return None
    from evl_ecg.data.corpus import corpus_generator
    from evl_ecg.models.pretrain import pretrain_vision

    generator = config.pretrain_vision_generator
    if generator is None:
        generator = corpus_generator(config.train_file) or 1
    pool = None
    if config.pretrain_vision_data == "train":
        from evl_ecg.models.pretrain import pool_from_records

        pool = pool_from_records(load_training_records(config), image_loader(config))
        if not pool[0]:
            raise ValueError(
                f"{config.train_file}: pretrain_vision_data 'train' needs records with labels.findings; none has them"
            )
    return pretrain_vision(
        adapter,
        pool=pool,
        fold=config.pretrain_vision_fold,
        n_records=config.pretrain_vision_records,
        seed=config.seed,
        steps=config.pretrain_vision_steps,
        batch_size=config.pretrain_vision_batch_size,
        lr=config.pretrain_vision_lr,
        generator=generator,
        workers=max(1, min(2, config.dataloader_num_workers)),
        log=print if config.process_index == 0 else None,
    )


def freeze_projector(adapter: Adapter) -> list[torch.nn.Module]:
    """Freeze what maps the visual tokens into the language model: LLaVA's ``multi_modal_projector``, Qwen-VL's
    ``visual.merger``. Returns the frozen modules.

    Why the tiny v2 teacher needs it: trained by CE, its projector turns every visual token into one large constant
    within a few hundred steps (output mean norm about 30-40 against a spread of about 1 from image to image, so the
    language model's RMSNorm leaves the same vector for every ECG) before the language model learns to read the
    image; frozen after the vision pretraining's fold, its image-to-image variation reaches the language model, which
    reads it within 250 steps (docs/train.md section 3)."""
    inner = adapter.model.model
    module = getattr(inner, "multi_modal_projector", None)
    if module is None and getattr(inner, "visual", None) is not None:
        module = getattr(inner.visual, "merger", None)
    if module is None:
        raise TypeError(f"{type(adapter.model).__name__}: no projector to freeze")
    module.requires_grad_(False)
    return [module]


def freeze_vision_encoder(adapter: Adapter) -> list[torch.nn.Module]:
    """Freeze the vision encoder, not the projector: LLaVA's ``vision_tower`` (as LLaVA-1.5 trains), Qwen-VL's
    ``visual`` blocks without its ``merger``. Returns the frozen modules (kept in eval mode during training, so that
    normalisation statistics do not move either)."""
    inner = adapter.model.model
    if getattr(inner, "vision_tower", None) is not None:
        tower = inner.vision_tower
        tower.requires_grad_(False)
        return [tower]
    visual = getattr(inner, "visual", None)
    if visual is None:
        raise TypeError(f"{type(adapter.model).__name__}: no vision encoder to freeze")
    frozen = []
    for name, child in visual.named_children():
        if "merger" not in name:
            child.requires_grad_(False)
            frozen.append(child)
    for param in visual.parameters(recurse=False):
        param.requires_grad_(False)
    return frozen


def load_teacher_side(config: EvlConfig, records: list[Record]) -> TeacherSide | None:
    """The teacher's side of phase ``kd`` (``None`` in the other phases): the teacher-output cache where
    ``config.teacher_cache`` is set and the method's loss terms can be cached (built now if the directory is empty;
    no teacher weights loaded), else the live teacher (whole and inference-only, never partitioned with the
    student)."""
    if config.phase != "kd":
        return None
    if not config.teacher:
        raise ValueError("phase 'kd' needs a teacher checkpoint (teacher=DIR)")
    if config.teacher_cache and teacher_cache.method_fields([config.method], config.objective) is not None:
        return teacher_cache.open_or_build(config, records, image_loader(config))
    with config.unsharded_loading():
        adapter = load_adapter(config.teacher, family=config.teacher_family, dtype=config.teacher_torch_dtype)
    return LiveTeacher(adapter)  # the trainer moves it to teacher_device (default: the training device)


def build_objective(config: EvlConfig, student: Adapter, teacher: TeacherSide | Adapter | None) -> Objective:
    """The phase's objective; ``config.hidden_positions`` is the ``positions`` of the hidden-state terms.

    The trainer counts the denominators of hidden-state losses (units ``student_positions``, ``student_pairs``) over
    ``hidden_positions``, so such a term must average over the same set: it gets ``hidden_positions`` as its
    ``positions`` unless ``config.objective`` sets one, and a disagreeing setting, or such a term without the option
    when the set is not ``all`` (TinyBERT's interpolated hidden states), is refused.
    """
    if config.phase in ("teacher", "sft"):  # CE alone; its own options (label smoothing) are the config's
        extra = set(config.objective or {}) - {"ce"}
        if extra:
            raise ValueError(
                f"phase {config.phase!r} trains CE alone: objective may set 'ce' only, not {sorted(extra)}"
            )
        ce = dict((config.objective or {}).get("ce") or {})
        return Objective.from_preset("sft", LossContext.from_adapters(student), **({"ce": ce} if ce else {}))
    hidden = config.hidden_positions
    spec = get_preset(config.method, **dict(config.objective or {}))
    spec["terms"] = {name: dict(options) for name, options in spec["terms"].items()}
    over_positions = {name for name, unit in units().items() if unit.positions}
    for name, options in spec["terms"].items():
        cls = registered().get(name)
        if cls is not None and cls.unit in over_positions and "positions" in inspect.signature(cls).parameters:
            options.setdefault("positions", hidden)
    objective = Objective(spec, LossContext.from_adapters(student, teacher))
    for name, term in objective.terms.items():
        used = getattr(term, "positions", "all")
        if term.unit in over_positions and used != hidden:
            raise ValueError(
                f"objective term {name!r} averages over positions={used!r} but hidden_positions={hidden!r}, over "
                f"which the trainer counts its denominator; set both to the same value"
            )
    return objective


def gathered_state_dict(trainer: EvlTrainer) -> dict[str, torch.Tensor] | None:
    """The whole training module's weights gathered from its shards under DeepSpeed ZeRO-3 or FSDP (a collective:
    every process calls it); ``None`` when the module holds its full weights itself (one process, DDP, ZeRO-1/2)."""
    from accelerate.utils import DistributedType

    acc = trainer.accelerator
    zero3 = acc.distributed_type == DistributedType.DEEPSPEED and int(acc.state.deepspeed_plugin.zero_stage) == 3
    if acc.distributed_type != DistributedType.FSDP and not zero3:
        return None
    return acc.get_state_dict(trainer.model_wrapped)


def run(config: EvlConfig, *, resume: bool | str = True, callbacks: list[Any] | None = None) -> RunResult:
    """Train one phase as ``config`` says; resume from the last complete checkpoint in ``output_dir`` if any.

    Before any work: the student and teacher must be two models (:func:`check_model_pair`) and ``output_dir`` must
    take files (:func:`prepare_output_dir`); a checkpoint cut short by a kill is skipped with a warning
    (:func:`last_complete_checkpoint`). A run whose loss or weights stop being finite raises
    :class:`~evl_ecg.train.trainer.NonFiniteError` and exports nothing. ``callbacks`` are transformers
    ``TrainerCallback`` objects added to the Trainer's own; a config with ``curve_every > 0`` needs its learning
    curve among them (:func:`evl_ecg.eval.curves.curve_callbacks`: evaluation is a stage above training).
    """
    t0 = time.perf_counter()
    set_seed(config.seed)
    out_dir = Path(config.output_dir)
    check_model_pair(config)
    prepare_output_dir(out_dir)
    records = load_training_records(config)
    images, view_callbacks = viewed_images(config, image_loader(config))  # a view policy (off: the stored pages)
    checkpoint = None
    if resume is True:
        checkpoint = last_complete_checkpoint(out_dir, warn if config.process_index == 0 else None)
    elif isinstance(resume, str):
        checkpoint = resume
    student = _student_adapter(config, records)
    # A resumed run loads its weights from the checkpoint: pretraining them again would be wasted work.
    pretrain = pretrain_tiny_vision(config, student) if checkpoint is None else None
    teacher = load_teacher_side(config, records)
    objective = build_objective(config, student, teacher)
    if objective.needs_teacher and teacher is None:
        raise ValueError(f"objective {objective} needs a teacher")
    if not objective.needs_teacher:
        teacher = None
    frozen = freeze_vision_encoder(student) if config.freeze_vision else []
    if config.freeze_projector:
        frozen += freeze_projector(student)
    label_sets = None
    if "label_logliks" in objective.requires:  # a label-space loss: each label-set question's candidates
        from evl_ecg.data.label_sets import training_candidates

        label_sets = training_candidates(records)
        if not label_sets:
            raise ValueError(f"{config.train_file}: a label-space loss needs label-set questions; none is asked there")
    dataset = PairedDataset(
        records, images or image_loader(config), teacher, student, max_length=config.max_length, label_sets=label_sets
    )
    collator = PairedCollator(student, teacher)
    module = DistillModule(student, objective, requires=objective.requires, frozen=frozen)
    from evl_ecg.train.callbacks import ObjectiveStep, StopAtMaxSteps, TrainingDone

    callbacks = [*(callbacks or []), ObjectiveStep(objective), StopAtMaxSteps(), *view_callbacks]
    if config.curve_every > 0 and not any(getattr(cb, "learning_curve", False) for cb in callbacks):
        # evaluation sits above training: the caller hands the curve in (evl_ecg.eval.curves.curve_callbacks)
        raise ValueError(
            "curve_every > 0: pass the learning curve's callback, run(config, callbacks="
            "evl_ecg.eval.curves.curve_callbacks(config)) (the train and distill commands do)"
        )
    trainer = EvlTrainer(
        model=module,
        args=config,
        train_dataset=dataset,
        data_collator=collator,
        teacher=teacher,
        callbacks=callbacks,
    )
    if trainer.args.should_save:
        if pretrain is None and (out_dir / "provenance.json").exists():  # resumed: keep the first run's record
            pretrain = json.loads((out_dir / "provenance.json").read_text()).get("vision_pretraining")
        extra = {"vision_pretraining": pretrain} if pretrain is not None else {}
        if teacher is not None and teacher.kind == "cache":
            extra["teacher_cache"] = teacher.describe()
        write_provenance(config, out_dir, objective=str(objective), phase=config.phase, records=len(records), **extra)
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    except TrainingDone:  # resumed from a checkpoint at max_steps: its weights and state are loaded, nothing to train
        if checkpoint is None:
            raise
    cut = trainer.truncated_counts()
    if config.process_index == 0 and any(cut.values()):
        sides = ", ".join(f"{n} {side}" for side, n in cut.items() if n)
        warn(f"max_length {config.max_length}: {sides} samples were cut to {config.max_length} tokens (their tails)")
    student_dir = out_dir / STUDENT_DIR
    history = trainer.state.log_history
    trainer.check_finite(when="before exporting the student")  # NaN weights are never exported
    # every process takes part in gathering the weights (ZeRO-3, FSDP: the full model from the shards); one writes
    gathered = gathered_state_dict(trainer)
    if trainer.args.should_save:  # only the main process writes
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        export_student(unwrapped, None, student_dir, state_dict=gathered)
        head = embedding_head_of(objective)
        if head is not None:  # the elastic-embedding head is the user's, unlike the distiller's modules: kept
            head.save(student_dir, state_dict=submodule_state(gathered, unwrapped, head))
        write_model_card(student_dir, provenance=json.loads((out_dir / "provenance.json").read_text()))
        atomic_write_bytes(out_dir / "log_history.json", json.dumps(history, indent=1).encode("utf-8"))
    trainer.accelerator.wait_for_everyone()
    result = RunResult(out_dir, student_dir, history, time.perf_counter() - t0, str(objective))
    # the Trainer, the models and the optimiser state sit in reference cycles: free them now, not at some later
    # collection (a caller running several phases in one process would hold each run's gigabytes meanwhile)
    del trainer, module, student, teacher, objective, dataset, collator, callbacks
    gc.collect()
    return result
