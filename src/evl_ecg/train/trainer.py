"""The transformers ``Trainer`` for both phases: SFT (CE) and KD (any objective preset).

The Trainer is the engine: it brings gradient accumulation, mixed precision, DeepSpeed/FSDP, checkpoint/resume and
logging. What this subclass adds:

* :class:`DistillModule`, the trainable whole handed to the Trainer: the student model and the objective's own
  modules (MHCA, projections). The teacher is *not* part of it: it stays frozen, in eval mode, under ``no_grad``,
  on the training device; or it is not there at all and its outputs come from a teacher-output cache
  (:mod:`evl_ecg.train.teacher_cache`, the batch's ``"teacher_cache"`` key).
* global loss denominators (:class:`~evl_ecg.distill.registry.Denominators`): every token-mean is divided by the count
  of its units in the whole accumulated batch on all ranks, so the loss does not depend on how a batch is split
  (docs/distill.md, "Normalisation under accumulation"); the loss is therefore already scaled for gradient accumulation.
* two optimizer groups: the student's vision projector/merger and the objective's modules at ``projector_lr``.
* every loss term, feature norms and throughput in the logs.
* checkpoints that hold the student as a plain transformers checkpoint (``student/``) and the objective's modules
  beside it (``objective.safetensors``), so a run resumes with both and the student exports without the objective.
* a stop on divergence: a non-finite logged loss, or non-finite weights, at a logging step or before a checkpoint is
  written raises :class:`NonFiniteError`, so that NaN weights are never saved or exported. It is checked then, not at
  every step, which would synchronise with the accelerator at every step.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer, TrainerCallback

from evl_ecg.distill.registry import Denominators, LossOutput, units
from evl_ecg.outputs import IGNORE_INDEX
from evl_ecg.train.teacher_side import teacher_side

OBJECTIVE_FILE = "objective.safetensors"
STUDENT_DIR = "student"


class NonFiniteError(ValueError):
    """Training diverged: the loss or the weights are not finite (NaN or infinity); nothing more is saved."""


def nonfinite_parameters(module: nn.Module, limit: int = 3) -> list[str]:
    """Names of (at most ``limit``) parameters of ``module`` holding a NaN or an infinity.

    One reduction per device and one synchronisation, whatever the number of parameters.
    """
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = defaultdict(list)
    for name, param in module.named_parameters():
        if param.numel():
            by_device[param.device].append((name, param))
    bad: list[str] = []
    for params in by_device.values():
        flags = torch.stack([torch.isfinite(p.detach()).all() for _, p in params])
        if not bool(flags.all()):
            bad += [params[i][0] for i in (~flags).nonzero().flatten().tolist()]
    return bad[:limit]


def _is_loss_key(key: str) -> bool:
    return key in ("loss", "train_loss") or key.startswith("loss/")


class DistillModule(nn.Module):
    """The student and the objective's trainable modules, as one ``nn.Module`` for the Trainer.

    ``forward(student_batch, teacher_outputs, denominators)`` runs the student through its adapter and returns the
    objective's :class:`~evl_ecg.distill.registry.LossOutput`.
    """

    def __init__(
        self,
        adapter: Any,
        objective: nn.Module,
        *,
        requires: frozenset[str] = frozenset(),
        frozen: Sequence[nn.Module] = (),
    ) -> None:
        super().__init__()
        self.student = adapter.model
        self.objective = objective
        self.requires = requires
        object.__setattr__(self, "_adapter", adapter)  # not a submodule: its model is self.student
        object.__setattr__(self, "_frozen", tuple(frozen))  # parts of self.student that stay in eval mode

    @property
    def adapter(self) -> Any:
        """The student's adapter (its model is :attr:`student`)."""
        return self._adapter

    def train(self, mode: bool = True) -> DistillModule:
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def forward(
        self,
        student_batch: dict[str, torch.Tensor],
        teacher_outputs: Any = None,
        denominators: Denominators | None = None,
    ) -> LossOutput:
        student_outputs = self._adapter.forward(student_batch, requires=self.requires)
        return self.objective(student_outputs, teacher_outputs, denominators)

    @property
    def config(self) -> Any:
        """The student's config: what the engines read of "the model" (DeepSpeed's ``auto`` bucket sizes come from
        its hidden size)."""
        return self.student.config

    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        """The student's activation checkpointing (the Trainer's ``activation_checkpointing: true``)."""
        if hasattr(self.student, "activation_checkpointing_enable"):
            self.student.activation_checkpointing_enable(**kwargs)
        else:  # transformers releases before the rename
            self.student.gradient_checkpointing_enable(**kwargs)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """The name transformers releases before ``activation_checkpointing_enable`` call."""
        self.student.gradient_checkpointing_enable(**kwargs)


def _is_projector_param(name: str) -> bool:
    """Parameters of the student's vision projector (LLaVA ``multi_modal_projector``, Qwen-VL ``visual.merger``)."""
    return "multi_modal_projector" in name or "merger" in name or "mm_projector" in name


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")


def count_denominators(
    student_batches: list[dict[str, torch.Tensor]], positions: str = "all", image_token_id: int | None = None
) -> dict[str, float]:
    """Local counts of every registered loss unit (:func:`evl_ecg.distill.registry.units`) over micro-batches (one
    process): the numerators of :class:`Denominators`.

    ``positions`` is the position set of hidden-state losses (``all``, ``response``, ``text``); ``text`` are the
    valid positions that are not the student's image token (``image_token_id``), as the adapters' ``text_mask``.
    """
    counts: dict[str, float] = defaultdict(float)
    for batch in student_batches:
        labels = batch["labels"]
        mask = batch["attention_mask"].bool()
        if positions == "all":
            pos = mask
        elif positions == "response":
            pos = mask & (labels != IGNORE_INDEX)
        elif image_token_id is not None:
            pos = mask & (batch["input_ids"] != image_token_id)
        else:
            raise ValueError("hidden_positions='text' needs the student's image_token_id to count text positions")
        for name, unit in units().items():
            counts[name] += float(unit.count(batch, pos))
    return dict(counts)


class _FiniteBeforeSave(TrainerCallback):
    """Check the weights before a checkpoint is written: the Trainer saves right after ``on_step_end``,
    ``on_epoch_end`` or ``on_evaluate`` when ``control.should_save`` is set then (by its ``DefaultFlowCallback``,
    which runs first). A ``save_strategy: best`` save is decided after ``on_evaluate``: that one is not checked
    here; the export is checked in any case (``pipeline.run``)."""

    def __init__(self, trainer: EvlTrainer) -> None:
        self.trainer = trainer

    def _check(self, state: Any, control: Any) -> None:
        if control.should_save:
            self.trainer.check_finite(when=f"before writing checkpoint-{state.global_step}")

    # where the Trainer decides to save: every N steps, every epoch
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._check(state, control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._check(state, control)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._check(state, control)


class EvlTrainer(Trainer):
    """A ``Trainer`` whose loss is an objective over a student (and, for KD, a frozen teacher).

    Args:
        model: a :class:`DistillModule`.
        teacher: the teacher's side (:class:`~evl_ecg.train.teacher_side.TeacherSide`: a live teacher, frozen here
            and moved to ``teacher_device`` or the training device; or a
            :class:`~evl_ecg.train.teacher_cache.TeacherCache`, whose batch entries stand for the teacher's outputs),
            or its adapter (a live teacher); ``None`` for SFT and teacher training. The collator must hold the same.
        args: an :class:`~evl_ecg.train.config.EvlConfig`.
        Other arguments are the Trainer's.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, teacher: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher_side(teacher)
        named = getattr(self.args, "teacher_device", None)
        self.teacher_device = torch.device(named) if named else self.args.device
        if self.teacher is not None:
            self.teacher.prepare(self.teacher_device)
        self._truncated: torch.Tensor | None = None
        self.add_callback(_FiniteBeforeSave(self))
        self._term_sums: dict[str, torch.Tensor | float] = defaultdict(float)
        self._term_count = 0
        self._tokens_seen: torch.Tensor | int = 0
        self._t0 = time.perf_counter()

    # ---- denominators over the accumulated batch, summed over ranks ------------------------------------------
    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> Denominators | None:
        if not batch_samples:
            return None
        image_token_id = self.accelerator.unwrap_model(self.model).adapter.image_token_id
        batches = [b["student"] for b in batch_samples]
        counts = count_denominators(batches, self.args.hidden_positions, image_token_id)
        keys = sorted(counts)
        values = torch.tensor([counts[k] for k in keys], dtype=torch.float64, device=device)
        if self.args.world_size > 1:
            values = self.accelerator.reduce(values, reduction="sum")
        return Denominators(**{k: values[i].to(torch.float32) for i, k in enumerate(keys)})

    # ---- the loss --------------------------------------------------------------------------------------------
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        unwrapped = self.accelerator.unwrap_model(model)
        teacher_outputs = None if self.teacher is None else self.teacher.outputs(inputs, unwrapped.requires)
        if teacher_outputs is not None:
            teacher_outputs = teacher_outputs.to(**self._teacher_output_policy(unwrapped))
        if model.training and torch.is_tensor(inputs.get("truncated")):
            cut = inputs["truncated"].detach()
            self._truncated = cut if self._truncated is None else self._truncated + cut
        denominators = num_items_in_batch if isinstance(num_items_in_batch, Denominators) else None
        out: LossOutput = model(inputs["student"], teacher_outputs, denominators)
        loss = out.loss
        if denominators is not None and self.args.world_size > 1:
            # DDP averages gradients over ranks; our sums were divided by global counts already.
            loss = loss * self.args.world_size
        if model.training:
            self._record(out, inputs)
        return (loss, out) if return_outputs else loss

    def _teacher_output_policy(self, module: nn.Module) -> dict[str, Any]:
        """Where and in which dtype the objective receives the teacher's outputs: on the student's device; in the
        student's weight dtype unless an autocast is on (which casts every matmul's inputs itself)."""
        param = next(module.student.parameters())
        autocast = torch.is_autocast_enabled(param.device.type)
        return {"device": param.device, "dtype": None if autocast else param.dtype}

    def truncated_counts(self) -> dict[str, int]:
        """Training samples cut to ``max_length`` so far, per side, on this process (student, teacher)."""
        if self._truncated is None:
            return {"student": 0, "teacher": 0}
        student, teacher = (int(x) for x in self._truncated.tolist())
        return {"student": student, "teacher": teacher}

    def _record(self, out: LossOutput, inputs: dict[str, Any]) -> None:
        # Summed on the device: converting to Python numbers here would synchronise with the GPU at every
        # micro-step; that happens once per logging step instead (in `log`), as the Trainer does for its loss.
        for key, value in out.logs.items():
            value = value.detach().float() if torch.is_tensor(value) else float(value)
            self._term_sums[key] = self._term_sums[key] + value
        self._term_count += 1
        self._tokens_seen = self._tokens_seen + inputs["student"]["attention_mask"].sum()

    def _term_means(self) -> dict[str, float]:
        """Each logged figure averaged over the micro-steps since the last call, and the throughput; then reset."""
        if not self._term_count:
            return {}
        means = {key: round(float(total) / self._term_count, 6) for key, total in self._term_sums.items()}
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        means["throughput/student_tokens_per_s"] = round(float(self._tokens_seen) / elapsed, 2)
        self._term_sums.clear()
        self._term_count = 0
        self._tokens_seen = 0
        self._t0 = time.perf_counter()
        return means

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        logs.update(self._term_means())
        if self._truncated is not None and "loss" in logs:  # cumulative counts of samples cut to max_length
            cut = self.truncated_counts()
            logs["data/truncated_student"], logs["data/truncated_teacher"] = cut["student"], cut["teacher"]
        self.check_finite(logs)
        super().log(logs, *args, **kwargs)

    # ---- divergence ------------------------------------------------------------------------------------------
    def check_finite(self, logs: dict[str, Any] | None = None, *, when: str | None = None) -> None:
        """Raise :class:`NonFiniteError` if a logged loss (``loss``, ``loss/*``) or a trainable weight is not finite.

        Under fp16 the grad scaler skips the steps whose loss overflowed, so there a non-finite loss alone is not
        divergence; non-finite weights always are. With several processes the verdict is summed over them (one
        collective), so that all of them stop together, whichever found the fault (sharded weights, local logs).
        """
        step = self.state.global_step
        losses = {
            key: value
            for key, value in (logs or {}).items()
            if _is_loss_key(key) and isinstance(value, (int, float)) and not math.isfinite(value)
        }
        weights = nonfinite_parameters(self.accelerator.unwrap_model(self.model))
        diverged = bool(weights or (losses and not self.args.fp16))
        if self.args.world_size > 1:
            flag = torch.tensor([float(diverged)], device=self.args.device)
            diverged = bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
        if diverged:
            found = []
            if losses:
                found.append("loss " + ", ".join(f"{k}={v}" for k, v in sorted(losses.items())[:3]))
            if weights:
                found.append("non-finite weights (" + ", ".join(weights) + ")")
            if not found:
                found.append("non-finite loss or weights on another process")
            raise NonFiniteError(
                f"training diverged at step {step}{f' ({when})' if when else ''}: {' and '.join(found)}; stopped "
                f"without saving or exporting these weights (learning_rate={self.args.learning_rate:g}"
                + (f", projector_lr={self.args.projector_lr:g}" if hasattr(self.args, "projector_lr") else "")
                + ": try lower ones)"
            )

    # ---- optimizer groups ------------------------------------------------------------------------------------
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        module = self.accelerator.unwrap_model(model or self.model)
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = defaultdict(list)
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            fast = name.startswith("objective.") or _is_projector_param(name)
            groups[(fast, _no_decay(name, param))].append(param)
        param_groups = []
        for (fast, no_decay), params in sorted(groups.items()):
            param_groups.append(
                {
                    "params": params,
                    "lr": self.args.projector_lr if fast else self.args.learning_rate,
                    "weight_decay": 0.0 if no_decay else self.args.weight_decay,
                }
            )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, module)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(param_groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    # ---- checkpoints: student as a transformers checkpoint, objective beside it -------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:  # only the main process writes
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        module = self.accelerator.unwrap_model(self.model)
        # under ZeRO-3 / FSDP the Trainer hands over the gathered weights (`state_dict`); the module's are shards
        export_student(module, self.processing_class, Path(output_dir) / STUDENT_DIR, state_dict=state_dict)
        if state_dict is not None:
            objective_state = {k[len("objective.") :]: v for k, v in state_dict.items() if k.startswith("objective.")}
        else:
            objective_state = module.objective.state_dict()
        objective_state = {k: v.detach().contiguous().cpu() for k, v in objective_state.items()}
        if objective_state:
            tmp = Path(output_dir) / (OBJECTIVE_FILE + ".tmp")
            save_file(objective_state, str(tmp))
            os.replace(tmp, Path(output_dir) / OBJECTIVE_FILE)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        module = self.accelerator.unwrap_model(model or self.model)
        load_student_weights(module.student, Path(resume_from_checkpoint) / STUDENT_DIR)
        objective_file = Path(resume_from_checkpoint) / OBJECTIVE_FILE
        if objective_file.exists():
            module.objective.load_state_dict(load_file(str(objective_file)))


def submodule_state(
    state_dict: dict[str, torch.Tensor] | None, module: nn.Module, part: nn.Module
) -> dict[str, torch.Tensor] | None:
    """``part``'s entries of ``module``'s (gathered) state dict, keyed as ``part`` keys its own; ``None`` for ``None``.

    The student's, for :func:`export_student`; the elastic embedding head's, for its own file.
    """
    if state_dict is None:
        return None
    prefix = next(name for name, m in module.named_modules() if m is part) + "."
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def export_student(
    module: DistillModule, processor: Any, out_dir: str | Path, *, state_dict: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write the student alone as a plain transformers checkpoint (safetensors), with its processor.

    The objective's modules are not part of it. ``state_dict``: the whole :class:`DistillModule`'s gathered weights
    (DeepSpeed ZeRO-3, FSDP: :meth:`accelerate.Accelerator.get_state_dict`), written instead of the module's own
    parameters, which are then shards. The directory is written to a temporary sibling and renamed into place, so a
    crash never leaves half a checkpoint.
    """
    weights = submodule_state(state_dict, module, module.student)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    adapter = getattr(module, "_adapter", None)
    if adapter is not None:
        adapter.save_pretrained(tmp, state_dict=weights)  # model, tokenizer, image processor and adapter settings
    else:
        module.student.save_pretrained(tmp, state_dict=weights)
        if processor is not None and hasattr(processor, "save_pretrained"):
            processor.save_pretrained(tmp)
    from evl_ecg.files import chmod_as_umask

    chmod_as_umask(tmp)  # safetensors writes 0600 files: the student is as readable as any other output
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def load_student_weights(student: nn.Module, directory: Path) -> None:
    """Load a checkpoint's student weights (written by :func:`export_student`) into ``student`` in place."""
    from transformers.modeling_utils import load_state_dict

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory}: no *.safetensors student weights to resume from")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_state_dict(str(f)))
    missing, unexpected = student.load_state_dict(state, strict=False)
    if (missing or unexpected) and hasattr(type(student), "from_pretrained"):
        # save_pretrained writes some architectures' keys in their checkpoint layout (LLaVA: language_model.model.*),
        # which from_pretrained maps back; the model class reads its own checkpoint
        saved = type(student).from_pretrained(str(directory), dtype=next(student.parameters()).dtype)
        missing, unexpected = student.load_state_dict(saved.state_dict(), strict=False)
        del saved
    tied = set(getattr(student, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(
            f"{directory}: student weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
