"""Hostile input and faults (issue 15): bad inputs and kill-resume scenarios, each run and classified.

python benchmarks/hostile.py [--group G] [--quick] [--inprocess] [--case NAME] [--list] [--keep] [--json FILE]

Every case is a row of :data:`CASES`: a name, a group (data, train, distill, eval, infer, config, model, paths, resume,
noise), a setup that writes the hostile input into the case's own temporary folder, the ``evl-ecg`` command line, the
outcomes it may have (``expect``), what its error must name, and, where a wrong result could come back with exit 0, a
check.
Each command runs in a subprocess (``python -m evl_ecg.cli``, a timeout, a 4 GiB address-space limit, umask 022) and
is classified from its exit status, its stdout/stderr and the files it left:

* ``clear error``: non-zero exit, no traceback, the message names the file / field / option (``names``);
* ``handled``: exit 0 with a correct result (the case's check passes);
* ``unclear error``: non-zero exit, but the message does not name the thing (or there is none);
* ``false error``: non-zero exit on an input that should be handled;
* ``traceback``: a Python traceback on stderr/stdout;
* ``silent wrong result``: exit 0 on a bad input, or a result the check finds wrong (records missing, labels that do
  not match their image, NaN weights, a user's file overwritten, stdout that is not JSON);
* ``hang``: no exit within the case's timeout.

Kill-resume scenarios (group ``resume``) SIGKILL a command at a chosen point (mid-synth, mid-training, inside a
checkpoint write, mid-eval), rerun it and compare with an uninterrupted run: ``exact`` or ``not exact``.

The table, the counts per outcome and the cases worse than expected are printed; the exit status is 1 when any case
is worse than expected. ``--quick`` runs the cases that take seconds (those ``tests/test_hostile.py`` runs in-process).
Cases that need root (a read-only bind mount, a small tmpfs for a full disk, via ``unshare``) are ``skipped`` where
that is not available. See docs/hostile.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

# ----------------------------------------------------------------------------------------------------- outcomes

CLEAR = "clear error"
HANDLED = "handled"
UNCLEAR = "unclear error"
FALSE = "false error"
TRACEBACK = "traceback"
WRONG = "silent wrong result"
HANG = "hang"
EXACT = "exact"
NOT_EXACT = "not exact"
SKIPPED = "skipped"
OUTCOMES = (CLEAR, HANDLED, UNCLEAR, FALSE, TRACEBACK, WRONG, HANG, EXACT, NOT_EXACT, SKIPPED)
GROUPS = ("data", "train", "distill", "eval", "infer", "config", "model", "paths", "resume", "noise")

MEMORY_LIMIT = 4 << 30  # address space of each command (bytes): a runaway allocation fails instead of eating the host
TRACEBACK_RE = re.compile(r"Traceback \(most recent call last\)")
SQUASH_RE = re.compile(r"[\s│┃╭╮╰╯─━|]+")


@dataclass
class Run:
    """What one command did."""

    rc: int | None
    out: str
    err: str
    seconds: float
    timed_out: bool = False
    exc: str | None = None  # in-process: the formatted exception that escaped the command


@dataclass(frozen=True)
class Case:
    """One hostile input (``argv``) or one kill-resume ``scenario``; see the module docstring."""

    name: str
    group: str
    expect: tuple[str, ...]
    argv: tuple[str, ...] = ()
    setup: Callable[[Ctx], None] | None = None
    names: tuple[str | tuple[str, ...], ...] = ()  # each: a string, or alternatives; ``{d}``-style templates
    check: Callable[[Ctx, Run], str | None] | None = None
    needs: tuple[str, ...] = ()  # fixtures built first: corpus, student, student2, teacher, record, embedder
    timeout: float = 240.0
    quick: bool = True  # seconds: runs with --quick and in tests/test_hostile.py
    inprocess: bool = True  # safe to run inside the test process (no unbounded memory, no mount, no kill)
    wrap: tuple[str, ...] = ()  # ("readonly", PATH) or ("diskfull", PATH, SIZE): needs unshare + mount (root)
    fsize: int | None = None  # a file-size limit (bytes): larger writes fail, mid-run (runs in a subprocess)
    scenario: Callable[[Ctx], tuple[str, str]] | None = None
    note: str = ""


@dataclass
class Result:
    case: Case
    outcome: str
    detail: str
    seconds: float
    command: str

    @property
    def ok(self) -> bool:
        return self.outcome in self.case.expect or self.outcome == SKIPPED


# ----------------------------------------------------------------------------------------------------- runners


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVL_ECG_")}  # no debug switch: user's view
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        COLUMNS="200",
        PYTHONUNBUFFERED="1",
    )
    return env


def _limits(umask: int = 0o022, fsize: int | None = None, cpu: float | None = None) -> Callable[[], None]:
    def preexec() -> None:
        import resource

        os.umask(umask)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
        if cpu is not None:  # a hang that spins is told by its CPU time, whatever the load on the machine
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_CPU, (int(cpu), int(cpu) + 10))
        if fsize is not None:  # writes past fsize bytes fail with EFBIG ("File too large"), as on a bad disk
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return preexec


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def run_process(
    cmd: Sequence[str],
    *,
    cwd: Path,
    timeout: float,
    env: dict[str, str] | None = None,
    umask: int = 0o022,
    fsize: int | None = None,
    cpu: float | None = None,
) -> Run:
    """Run ``cmd`` in its own session; on timeout SIGKILL its process group (workers included).

    ``cpu``: a CPU-time limit (seconds, each process): a command that spins past it dies of SIGXCPU and counts as
    timed out; ``timeout`` is the wall-clock limit (for one that blocks without spinning).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env={**_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_limits(umask, fsize, cpu),
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        spun = cpu is not None and proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
        return Run(proc.returncode, _text(out), _text(err), time.perf_counter() - t0, timed_out=spun)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return Run(None, _text(out), _text(err), time.perf_counter() - t0, timed_out=True)


def cli_command(argv: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "evl_ecg.cli", *argv]


def wall_limit(timeout: float) -> float:
    """The wall-clock limit of a command whose CPU time is limited to ``timeout`` (a loaded machine runs slower)."""
    return max(300.0, 8 * timeout)


def run_subprocess(argv: Sequence[str], *, cwd: Path, timeout: float = 240.0, umask: int = 0o022) -> Run:
    """``evl-ecg ARGV`` in a fresh interpreter: ``timeout`` seconds of CPU time, :func:`wall_limit` of wall time."""
    return run_process(cli_command(argv), cwd=cwd, timeout=wall_limit(timeout), umask=umask, cpu=timeout)


def run_inprocess(argv: Sequence[str], *, cwd: Path, timeout: float = 240.0, umask: int = 0o022) -> Run:
    """``evl-ecg ARGV`` through typer's CliRunner in this process (warnings and log records join stderr).

    ``timeout`` is not enforced: only cases marked ``inprocess`` (bounded ones) run this way.
    """
    import logging
    import traceback
    import warnings

    from typer.testing import CliRunner

    from evl_ecg.cli import app

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setLevel(logging.WARNING)
    loggers = [logging.getLogger(), logging.getLogger("transformers")]
    for lg in loggers:
        lg.addHandler(handler)
    old_umask, old_cwd = os.umask(umask), os.getcwd()
    os.chdir(cwd)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = CliRunner().invoke(app, [str(a) for a in argv], catch_exceptions=True)
    finally:
        os.chdir(old_cwd)
        os.umask(old_umask)
        for lg in loggers:
            lg.removeHandler(handler)
    exc = None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        exc = "".join(traceback.format_exception(result.exception))
    notes = "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
    err = result.stderr + buf.getvalue() + notes + (exc or "")
    return Run(result.exit_code, result.stdout, err, time.perf_counter() - t0, exc=exc)


_MOUNT_OK: dict[str, bool] = {}


def mount_available() -> bool:
    """Whether ``unshare -m`` and ``mount`` work here (root in a private mount namespace)."""
    if "ok" not in _MOUNT_OK:
        ok = False
        if shutil.which("unshare") and shutil.which("mount") and hasattr(os, "geteuid") and os.geteuid() == 0:
            with tempfile.TemporaryDirectory() as tmp:
                probe = ["unshare", "-m", "--propagation", "private", "sh", "-c"]
                probe += ['mount -t tmpfs -o size=16k tmpfs "$1"', "sh", tmp]
                try:
                    ok = subprocess.run(probe, capture_output=True, timeout=20).returncode == 0
                except (OSError, subprocess.SubprocessError):
                    ok = False
        _MOUNT_OK["ok"] = ok
    return _MOUNT_OK["ok"]


def wrapped(wrap: Sequence[str], cmd: list[str]) -> list[str]:
    """``cmd`` inside a private mount namespace where ``PATH`` is read-only, or a tmpfs of ``SIZE`` (a full disk)."""
    kind, path, *rest = wrap
    if kind == "readonly":
        script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", path, *cmd]
    if kind == "diskfull":
        script = 'mount -t tmpfs -o size="$2" tmpfs "$1" && shift 2 && exec "$@"'
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", path, rest[0], *cmd]
    raise ValueError(f"unknown wrap {kind!r}")


# ----------------------------------------------------------------------------------------------------- fixtures

TRAIN_SET = (
    "--set", "pretrain_vision_steps=0", "--set", "per_device_train_batch_size=2", "--set", "logging_steps=1",
    "--set", "save_strategy=no", "--set", "disable_tqdm=true", "--set", "report_to=none", "--set", "max_steps=2",
)  # fmt: skip
SYNTH_SMALL = ("--size", "128x96", "--workers", "1", "--no-progress")
IMAGE_LIMIT = 16 << 10  # bytes: at 128x96 px the plain images fit, the augmented ones (~25 KB) do not


def _teacher_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("evl_ecg")
    if spec is None or spec.origin is None:
        raise SystemExit("evl_ecg is not installed (pip install -e .)")
    return Path(spec.origin).parent / "assets" / "tiny-teacher"


class Fixtures:
    """The tiny corpus, students, the shipped teacher and a WFDB record, built on first use under ``root``."""

    def __init__(self, root: Path, cli: Callable[..., Run]):
        self.root, self.cli = root, cli
        self._built: dict[str, Path] = {}

    def _cli_ok(self, argv: Sequence[str], what: str) -> Run:
        run = self.cli(argv, cwd=self.root, timeout=600)
        if run.rc != 0:
            raise RuntimeError(f"building the {what} fixture failed (exit {run.rc}):\n{run.err[-3000:]}")
        return run

    def get(self, name: str) -> Path:
        if name not in self._built:
            self._built[name] = getattr(self, f"_build_{name}")()
        return self._built[name]

    def _build_corpus(self) -> Path:
        out = self.root / "corpus"
        self._cli_ok(["data", "synth", "--out", str(out), "--train", "8", "--bench", "2", *SYNTH_SMALL], "corpus")
        return out

    def _student(self, name: str, seed: int) -> Path:
        corpus = self.get("corpus")
        out = self.root / name
        argv = ["train", "sft", "--data", str(corpus / "train.json"), "--out", str(out), *TRAIN_SET]
        self._cli_ok([*argv, "--set", "max_steps=1", "--set", f"seed={seed}"], name)
        return out / "student"

    def _build_student(self) -> Path:
        return self._student("sft", 0)

    def _build_student2(self) -> Path:  # same class and sizes, another run: another model
        return self._student("sft2", 1)

    def _build_teacher(self) -> Path:
        return _teacher_dir()

    def _build_record(self) -> Path:
        return write_wfdb(self.root / "record", "R0001")

    def _build_embedder(self) -> Path:
        """The 1-step student with an (untrained) embedding head of prefixes 8 and 16 beside it (``evl-ecg embed``)."""
        import torch

        from evl_ecg.models.embedding_head import EmbeddingHead

        out = self.root / "embedder"
        shutil.copytree(self.get("student"), out)
        hidden = _json(out / "config.json")["text_config"]["hidden_size"]
        torch.manual_seed(0)
        EmbeddingHead(hidden, prefixes=(8, 16)).save(out)
        return out

    def _build_driver(self) -> Path:
        path = self.root / "_hostile_driver.py"
        path.write_text(DRIVER)
        return path


FIXTURE_OF = {"train": "corpus", "bench": "corpus"}  # template name -> the fixture it lies in


class _Vars(dict):
    def __init__(self, ctx: Ctx):
        super().__init__(d=str(ctx.d))
        self.ctx = ctx

    def __missing__(self, key: str) -> str:
        base = self.ctx.base
        value = {
            "corpus": lambda: base.get("corpus"),
            "train": lambda: base.get("corpus") / "train.json",
            "bench": lambda: base.get("corpus") / "bench",
            "student": lambda: base.get("student"),
            "student2": lambda: base.get("student2"),
            "teacher": lambda: base.get("teacher"),
            "record": lambda: base.get("record"),
            "embedder": lambda: base.get("embedder"),
        }[key]()
        self[key] = str(value)
        return self[key]


class Ctx:
    """One case's world: its folder ``d``, the shared fixtures, the runner, and state from setup to check."""

    def __init__(self, base: Fixtures, d: Path, cli: Callable[..., Run]):
        self.base, self.d, self.cli = base, d, cli
        self.state: dict[str, Any] = {}
        self.vars = _Vars(self)

    def fmt(self, text: str) -> str:
        return text.format_map(self.vars)

    def path(self, text: str) -> Path:
        return Path(self.fmt(text))

    def write(self, rel: str, data: str | bytes) -> Path:
        path = self.d / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)
        return path

    def copy(self, fixture: str, rel: str) -> Path:
        target = self.d / rel
        shutil.copytree(self.base.get(fixture), target, symlinks=True)
        return target

    def evl(self, *argv: str, timeout: float = 600, ok: bool = True) -> Run:
        run = self.cli([self.fmt(a) for a in argv], cwd=self.d, timeout=timeout)
        if ok and run.rc != 0:
            raise RuntimeError(f"setup command evl-ecg {' '.join(argv)} failed (exit {run.rc}): {run.err[-2000:]}")
        return run

    def driver(self, argv: Sequence[str], kill: str, timeout: float = 600, fsize: int | None = None) -> Run:
        """``evl-ecg ARGV`` in a subprocess that SIGKILLs itself at ``kill`` (see :data:`DRIVER`)."""
        cmd = [sys.executable, str(self.base.get("driver")), *[self.fmt(a) for a in argv]]
        return run_process(cmd, cwd=self.d, timeout=timeout, env={"HOSTILE_KILL": kill}, fsize=fsize)


# ----------------------------------------------------------------------------------------------------- helpers

DRIVER = r'''"""evl-ecg ARGV, killed with SIGKILL at the point HOSTILE_KILL names (benchmarks/hostile.py):

step:N    after training step N          ckpt:N    inside the write of checkpoint-N (weights written, not the rest)
image:N   after the N-th image written   part:P    after the synth chunk file .parts/P*.json is written
row:N     after eval run's N-th row      batch:N   after predict's N-th batch of rows
noise     (no kill) torchao's load lines logged once the command has set up its logging
"""
import os
import re
import signal
import sys


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


kind, _, arg = os.environ.get("HOSTILE_KILL", "").partition(":")
if kind in ("step", "ckpt"):
    import transformers.trainer as tr
    import transformers.trainer_callback as tc

    n = int(arg)
    if kind == "step":
        _on_step_end = tc.CallbackHandler.on_step_end

        def on_step_end(self, args, state, control):
            result = _on_step_end(self, args, state, control)
            if state.global_step == n:
                _die()
            return result

        tc.CallbackHandler.on_step_end = on_step_end
    else:
        pattern = re.compile(rf"checkpoint-{n}(\D|$)")
        _save_opt = tr.Trainer._save_optimizer_and_scheduler
        _save_json = tc.TrainerState.save_to_json

        def save_opt(self, output_dir, *a, **k):
            if pattern.search(str(output_dir)):
                _die()
            return _save_opt(self, output_dir, *a, **k)

        def save_json(self, json_path, *a, **k):
            if pattern.search(str(json_path)):
                _die()
            return _save_json(self, json_path, *a, **k)

        tr.Trainer._save_optimizer_and_scheduler = save_opt
        tc.TrainerState.save_to_json = save_json
elif kind in ("image", "part"):
    import evl_ecg.data.corpus as corpus

    if kind == "image":
        count = [0]
        _write_png = corpus.write_png

        def write_png(*a, **k):
            result = _write_png(*a, **k)
            count[0] += 1
            if count[0] >= int(arg):
                _die()
            return result

        corpus.write_png = write_png
    else:
        _atomic = corpus.atomic_write_bytes

        def atomic_write_bytes(path, *a, **k):
            result = _atomic(path, *a, **k)
            if ".parts" in str(path) and os.path.basename(str(path)).startswith(arg):
                _die()
            return result

        corpus.atomic_write_bytes = atomic_write_bytes

elif kind == "row":  # eval run: after N prediction rows are written (the (N+1)-th row's id is being made)
    import evl_ecg.eval.generate as generate

    n, count = int(arg), [0]
    _answer_id = generate.answer_id

    def answer_id(*a, **k):
        count[0] += 1
        if count[0] > n:
            _die()
        return _answer_id(*a, **k)

    generate.answer_id = answer_id
elif kind == "batch":  # predict --out: after N generation batches are written
    from evl_ecg.infer.interpreter import Interpreter

    n, count = int(arg), [0]
    _predict_batch = Interpreter.predict_batch

    def predict_batch(self, *a, **k):
        count[0] += 1
        if count[0] > n:
            _die()
        return _predict_batch(self, *a, **k)

    Interpreter.predict_batch = predict_batch
elif kind == "noise":  # no kill: torchao's load lines logged as the library logs them when imported mid-command
    import logging

    import evl_ecg.quiet as quiet

    _quiet = quiet.quiet_library_noise

    def quiet_library_noise(enabled=True):
        _quiet(enabled)
        log = logging.getLogger("torchao")
        log.warning("Failed to load /site-packages/torchao/_C_mxfp8.abi3.so: libcudart.so.12: cannot open file")
        log.warning("torchao: a warning that is not load noise")

    quiet.quiet_library_noise = quiet_library_noise

from evl_ecg.cli import main  # noqa: E402

sys.argv = ["evl-ecg", *sys.argv[1:]]
main()
'''

LEADS12 = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def write_wfdb(
    folder: Path,
    name: str,
    *,
    n: int = 5000,
    signal_lines: int = 12,
    descriptions: bool = True,
    dat: str = "full",
) -> Path:
    """A hand-written 12-lead WFDB record (format 16, 500 Hz, 1000 adu/mV); returns the ``.hea`` path.

    ``signal_lines`` < 12 writes fewer signal lines than the record line declares; ``descriptions=False`` leaves the
    lead names out; ``dat`` is ``full``, ``half`` (truncated) or ``none``.
    """
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(n) / 500.0
    sig = np.stack([np.round(600 * np.sin(2 * np.pi * 1.2 * t + k)) for k in range(12)], axis=1).astype("<i2")
    lines = [f"{name} 12 500 {n}"]
    for i, lead in enumerate(LEADS12[:signal_lines]):
        col = sig[:, i].astype(np.int64)
        check = (int(col.sum()) + 32768) % 65536 - 32768
        first = int(col[0]) if n else 0
        line = f"{name}.dat 16 1000/mV 16 0 {first} {check} 0"
        lines.append(f"{line} {lead}" if descriptions else line)
    lines += ["# Age: 60", "# Sex: Male", "# Dx: 426783006"]
    hea = folder / f"{name}.hea"
    hea.write_text("\n".join(lines) + "\n")
    data = sig.tobytes()
    if dat == "full":
        (folder / f"{name}.dat").write_bytes(data)
    elif dat == "half":
        (folder / f"{name}.dat").write_bytes(data[: len(data) // 2 + 1])
    return hea


def file_hashes(root: Path, *, skip_dotfiles: bool = False) -> dict[str, str]:
    out = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(root).as_posix()
            if skip_dotfiles and any(part.startswith(".") for part in rel.split("/")):
                continue
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def last_json(text: str) -> Any:
    """The last JSON document printed on its own lines (trainer log lines may come before it)."""
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].strip() in ("{", "["):
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads("\n".join(lines[i:]))
    raise ValueError("no JSON document on stdout")


def weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def max_abs_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    if a.keys() != b.keys():
        return float("inf")
    worst = 0.0
    for k in a:
        if a[k].shape != b[k].shape:
            return float("inf")
        if a[k].numel():
            worst = max(worst, float((a[k].double() - b[k].double()).abs().max()))
    return worst


def image_ok(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not a readable image"
        return False


def _records(path: Path) -> list[dict[str, Any]]:
    data = _json(path)
    return data if isinstance(data, list) else []


# ---- setups (factories: each row of the table names one with its parameters)


def do(*steps: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        for step in steps:
            step(ctx)

    return setup


def write(rel: str, data: str | bytes) -> Callable[[Ctx], None]:
    """``rel`` holding ``data`` as written (no templating: JSON and YAML keep their braces)."""
    return lambda ctx: ctx.write(rel, data) and None


def mkdir(rel: str) -> Callable[[Ctx], None]:
    return lambda ctx: (ctx.d / rel).mkdir(parents=True, exist_ok=True)


def copy(fixture: str, rel: str) -> Callable[[Ctx], None]:
    return lambda ctx: ctx.copy(fixture, rel) and None


def evl(*argv: str, ok: bool = True) -> Callable[[Ctx], None]:
    return lambda ctx: ctx.evl(*argv, ok=ok) and None


def snapshot(rel: str, key: str = "keep") -> Callable[[Ctx], None]:
    """Remember the hashes of everything under ``rel`` (the user's files the command must not touch)."""

    def step(ctx: Ctx) -> None:
        ctx.state[key] = (rel, file_hashes(ctx.path(rel)))

    return step


BASE_YAML = {
    "sft": "phase: sft\noutput_dir: runs/x\nmax_steps: 2\nper_device_train_batch_size: 2\nlearning_rate: 1.0e-3\n"
    'use_cpu: true\nlogging_steps: 1\nsave_strategy: "no"\nreport_to: none\ndisable_tqdm: true\nseed: 0\n',
    "kd": "phase: kd\nmethod: evl-ecg\noutput_dir: runs/x\nmax_steps: 2\nper_device_train_batch_size: 2\n"
    'learning_rate: 1.0e-3\nuse_cpu: true\nlogging_steps: 1\nsave_strategy: "no"\nreport_to: none\n'
    "disable_tqdm: true\nseed: 0\n",
}


def config_yaml(text: str, phase: str = "sft") -> Callable[[Ctx], None]:
    """``cfg.yaml``: the phase's short CPU config with the keys of ``text`` replaced (raw YAML lines)."""

    def step(ctx: Ctx) -> None:
        keys = {line.split(":", 1)[0] for line in text.splitlines() if ":" in line and not line.startswith(" ")}
        base = [ln for ln in BASE_YAML[phase].splitlines() if ln.split(":", 1)[0] not in keys]
        ctx.write("cfg.yaml", "\n".join(base) + "\n" + text + "\n")

    return step


def records_file(rel: str, edit: Callable[[list[dict[str, Any]]], Any], source: str = "train") -> Callable[[Ctx], None]:
    """``rel``: a copy of the corpus' records (``train`` or a bench subset) passed through ``edit``."""

    def step(ctx: Ctx) -> None:
        corpus = ctx.base.get("corpus")
        src = corpus / ("train.json" if source == "train" else f"bench/{source}.json")
        records = _json(src)
        edited = edit(records)
        ctx.write(rel, json.dumps(records if edited is None else edited, indent=1))

    return step


def bench_dir(edit: Callable[[list[dict[str, Any]]], Any] | str, subset: str = "ptb-test") -> Callable[[Ctx], None]:
    """``bench/<subset>.json`` (edited records, or raw text) with the corpus' images beside it (``bench/images``)."""

    def step(ctx: Ctx) -> None:
        corpus = ctx.base.get("corpus")
        shutil.copytree(corpus / "images", ctx.d / "bench" / "images")
        if isinstance(edit, str):
            ctx.write(f"bench/{subset}.json", edit)
        else:
            records_file(f"bench/{subset}.json", edit, source=subset)(ctx)

    return step


def model_copy(fixture: str, rel: str = "m", **files: Callable[[Ctx, Path], None]) -> Callable[[Ctx], None]:
    """A copy of a model fixture in ``rel`` whose files are then rewritten by ``files`` (name -> editor)."""

    def step(ctx: Ctx) -> None:
        folder = ctx.copy(fixture, rel)
        for name, edit in files.items():
            edit(ctx, folder / name.replace("__", "."))

    return step


def text_of(data: str | bytes) -> Callable[[Ctx, Path], None]:
    return lambda ctx, path: path.write_bytes(data if isinstance(data, bytes) else data.encode())


def truncated(fraction: float) -> Callable[[Ctx, Path], None]:
    def edit(ctx: Ctx, path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])

    return edit


def random_bytes(ctx: Ctx, path: Path) -> None:
    size = path.stat().st_size
    path.write_bytes(os.urandom(size))


def deleted(ctx: Ctx, path: Path) -> None:
    path.unlink()


def from_fixture(fixture: str, name: str | None = None) -> Callable[[Ctx, Path], None]:
    """The same file taken from another model (its ``config.json``, its weights)."""
    return lambda ctx, path: shutil.copyfile(ctx.base.get(fixture) / (name or path.name), path)


def json_edit(**changes: Any) -> Callable[[Ctx, Path], None]:
    def edit(ctx: Ctx, path: Path) -> None:
        data = _json(path)
        data.update(changes)
        path.write_text(json.dumps(data))

    return edit


def first(change: Callable[[dict[str, Any]], None]) -> Callable[[list[dict[str, Any]]], None]:
    """An edit of the first record of a list."""

    def edit(records: list[dict[str, Any]]) -> None:
        change(records[0])

    return edit


def setitem(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda record: record.__setitem__(key, value)


def answer_value(value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda record: record["conversations"][1].__setitem__("value", value)


def gpt_first(record: dict[str, Any]) -> None:
    record["conversations"] = list(reversed(record["conversations"]))


def duplicate_ids(records: list[dict[str, Any]]) -> None:
    records[1]["id"] = records[0]["id"]


def block_images(rel: str, *indices: int) -> Callable[[Ctx], None]:
    """Directories where synth's train images ``indices`` go: each of those writes fails (as on a bad disk)."""

    def step(ctx: Ctx) -> None:
        for i in indices:
            (ctx.d / rel / "images" / "train" / f"synth-train-{i:06d}.png").mkdir(parents=True)

    return step


def killed(argv: Sequence[str], kill: str, fsize: int | None = None) -> Callable[[Ctx], None]:
    """Run ``argv`` (under a file-size limit ``fsize``) until SIGKILL at ``kill``."""

    def step(ctx: Ctx) -> None:
        run = ctx.driver(argv, kill, fsize=fsize)
        ctx.state["killed_rc"] = run.rc

    return step


def copy_without_dotfiles(src: str, dst: str) -> Callable[[Ctx], None]:
    def step(ctx: Ctx) -> None:
        shutil.copytree(ctx.d / src, ctx.d / dst, ignore=lambda _d, names: [n for n in names if n.startswith(".")])

    return step


def hea(name: str, **kw: Any) -> Callable[[Ctx], None]:
    return lambda ctx: write_wfdb(ctx.d, name, **kw) and None


def removed(rel: str) -> Callable[[Ctx], None]:
    return lambda ctx: (ctx.d / rel).unlink()


def study_json(rel: str, *, legacy: bool = False, **changes: Any) -> Callable[[Ctx], None]:
    """``rel/study.json`` as a study of ``evl-ecg study --quick`` (defaults otherwise) with ``changes`` wrote it: its
    resume key, or (``legacy``) the settings as one object, as an evl-ecg before resume keys wrote them."""

    def step(ctx: Ctx) -> None:
        from evl_ecg.experiments.study import Study, StudySettings

        out = ctx.d / rel
        out.mkdir(parents=True, exist_ok=True)
        settings = StudySettings(quick=True, **{"n_train": 48, "n_val": 4, "test_ptb": 8, **changes})  # as --quick
        if legacy:
            doc = {k: v for k, v in settings.to_json().items() if k != "generator"}
            (out / "study.json").write_text(json.dumps(doc, indent=1))
        else:
            Study(out, settings).resume_key().write()

    return step


# ---- checks: ``(ctx, run) -> problem or None``


def untouched(key: str = "keep") -> Callable[[Ctx, Run], str | None]:
    """The files snapshot() saw are all there with the same bytes."""

    def check(ctx: Ctx, run: Run) -> str | None:
        rel, before = ctx.state[key]
        after = file_hashes(ctx.path(rel))
        gone = sorted(k for k in before if k not in after)
        changed = sorted(k for k in before if k in after and after[k] != before[k])
        bits = []
        if gone:
            bits.append(f"deleted {', '.join(gone[:4])}")
        if changed:
            bits.append(f"overwrote {', '.join(changed[:4])}")
        return f"user files under {ctx.fmt(rel)}: {'; '.join(bits)}" if bits else None

    return check


def corpus_complete(rel: str, n_train: int, n_bench: int = 0) -> Callable[[Ctx, Run], str | None]:
    """On exit 0: every requested record is there, ids unique, every image readable."""

    def check(ctx: Ctx, run: Run) -> str | None:
        if run.rc != 0:
            return None
        out = ctx.path(rel)
        wanted = {"train.json": n_train}
        if n_bench:
            manifest = _json(out / "manifest.json")
            wanted.update({f: n_bench for s, f in manifest["files"].items() if s != "train"})
        for f, n in wanted.items():
            records = _records(out / f) if (out / f).is_file() else []
            if len(records) != n:
                return f"{f} holds {len(records)} of {n} records"
            ids = [r.get("id") for r in records]
            if len(set(ids)) != len(ids):
                return f"{f}: duplicate ids"
            bad = [r["id"] for r in records if not image_ok(out / "images" / r["image"])]
            if bad:
                return f"{f}: {len(bad)} records without a readable image ({bad[0]})"
        return None

    return check


def same_as(rel: str, ref: str) -> Callable[[Ctx, Run], str | None]:
    """On exit 0: the corpus in ``rel`` equals the fresh build ``ref`` (records and image bytes, dotfiles aside)."""

    def check(ctx: Ctx, run: Run) -> str | None:
        if run.rc != 0:
            return None
        got, want = file_hashes(ctx.path(rel), skip_dotfiles=True), file_hashes(ctx.path(ref), skip_dotfiles=True)
        images = [k for k in want if k.startswith("images/")]
        wrong = [k for k in images if got.get(k) != want[k]]
        if wrong:
            return f"{len(wrong)} of {len(images)} images are not this seed's (e.g. {wrong[0]}): labels do not match"
        other = [k for k in want if not k.startswith("images/") and k != "manifest.json" and got.get(k) != want[k]]
        if other:
            return f"{', '.join(other[:3])} differ from a fresh build with the same arguments"
        return None

    return check


def finite_student(rel: str) -> Callable[[Ctx, Run], str | None]:
    """Whatever the exit status: no exported student holds a non-finite weight."""

    def check(ctx: Ctx, run: Run) -> str | None:
        folder = ctx.path(rel)
        if not any(folder.glob("*.safetensors")):
            return None
        import torch

        bad = [k for k, v in weights(folder).items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            return f"exported {folder.name}/ with non-finite weights ({len(bad)} tensors, e.g. {bad[0]})"
        return None

    return check


def readable_by_others(rel: str) -> Callable[[Ctx, Run], str | None]:
    """Under umask 022 the files written are readable by group and others (mode 0644, not 0600)."""

    def check(ctx: Ctx, run: Run) -> str | None:
        if run.rc != 0:
            return None
        root = ctx.path(rel)
        closed = [
            p.relative_to(root).as_posix()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and (p.stat().st_mode & 0o044) != 0o044
        ]
        if closed:
            mode = oct(((root / closed[0]).stat().st_mode) & 0o777)
            return f"{len(closed)} files written unreadable to others under umask 022 (e.g. {closed[0]}: {mode})"
        return None

    return check


def objective_has(*want: str, absent: Sequence[str] = ()) -> Callable[[Ctx, Run], str | None]:
    """On exit 0: the run's objective (stdout JSON / provenance) uses the ``want`` terms and none of ``absent``."""

    def check(ctx: Ctx, run: Run) -> str | None:
        if run.rc != 0:
            return None
        try:
            objective = str(last_json(run.out).get("objective", ""))
        except ValueError:
            objective = str(_json(ctx.d / "run" / "provenance.json").get("objective", ""))
        missing = [w for w in want if w not in objective]
        extra = [a for a in absent if a in objective]
        if missing or extra:
            return f"trained objective {objective!r}, not the configured method ({', '.join(want)})"
        return None

    return check


def warned(*words: str) -> Callable[[Ctx, Run], str | None]:
    """On exit 0: stderr carries a warning with one of ``words``."""

    def check(ctx: Ctx, run: Run) -> str | None:
        if run.rc != 0:
            return None
        low = run.err.lower()
        if "warning" in low and any(w in low for w in words):
            return None
        return f"exit 0 without a warning ({' / '.join(words)})"

    return check


def eval_ok(rel: str = "ev", *, not_scored: str | None = None, reported: str | None = None):
    """On exit 0: stdout is one JSON document, scores.json exists and has no errors; ``not_scored``: an id that
    must not have been generated for; ``reported``: an id that must be named on stderr."""

    def check(ctx: Ctx, run: Run) -> str | None:
        if run.rc != 0:
            return None
        try:
            json.loads(run.out)
        except json.JSONDecodeError as exc:
            return f"stdout ({len(run.out)} chars) is not a JSON document: {exc.msg} at char {exc.pos}"
        scores = ctx.d / rel / "scores.json"
        if not scores.is_file():
            return f"exit 0 without {rel}/scores.json"
        errors = _json(scores).get("errors") or []
        if errors:
            return f"exit 0 with a scoring error inside scores.json: {str(errors[0])[:160]}"
        if not_scored is not None:
            for path in (ctx.d / rel).glob("*/predictions.jsonl"):
                if ctx.fmt(not_scored) in path.read_text():
                    return f"{ctx.fmt(not_scored)} was generated for and scored"
        if reported is not None and ctx.fmt(reported) not in run.err:
            return f"{ctx.fmt(reported)} left out without a word on stderr"
        return None

    return check


def png_written(rel: str) -> Callable[[Ctx, Run], str | None]:
    def check(ctx: Ctx, run: Run) -> str | None:
        if run.rc == 0 and not image_ok(ctx.path(rel)):
            return f"exit 0 without a readable {rel}"
        return None

    return check


def says_nothing_of(*secrets: str) -> Callable[[Ctx, Run], str | None]:
    """Nothing the command printed holds any of ``secrets`` (a patient's name, id, birth date)."""

    def check(ctx: Ctx, run: Run) -> str | None:
        leaked = [x for x in secrets if x in run.out + run.err]
        return f"printed {', '.join(leaked)}" if leaked else None

    return check


#: the export fixtures of tests/ecg/fixtures (written by make_export_fixtures.py from the published layouts)
EXPORTS = Path(__file__).resolve().parents[1] / "tests" / "ecg" / "fixtures"


def export(name: str, rel: str, edit: Callable[[bytes], bytes] = lambda b: b) -> Callable[[Ctx], None]:
    """``rel`` holding the export fixture ``name``, passed through ``edit``."""
    return lambda ctx: ctx.write(rel, edit((EXPORTS / name).read_bytes())) and None


def _last_waveform_corrupted(xml: bytes) -> bytes:
    at = xml.rindex(b"<WaveFormData>") + len(b"<WaveFormData>")
    return xml[:at] + b"!!" + xml[at:]


_ROWS = "\n".join(",".join(["0.1"] * 12) for _ in range(600))
_BIG_ROWS = "\n".join(",".join(["950"] * 12) for _ in range(600))
_LEADS_HEADER = "I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6\n"
_BOMB = (
    '<?xml version="1.0"?>\n<!DOCTYPE RestingECG [<!ENTITY a "aaaaaaaaaa">'
    + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8))
    + "]>\n<RestingECG>&i;</RestingECG>\n"
)
_EXTERNAL = '<?xml version="1.0"?>\n<!DOCTYPE AnnotatedECG [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n<AnnotatedECG>&x;</AnnotatedECG>\n'


def same_predictions(rel: str, ref: str) -> Callable[[Ctx, Run], str | None]:
    """On exit 0: the prediction rows under ``rel`` are those of the uninterrupted run ``ref``, none twice."""

    def check(ctx: Ctx, run: Run) -> str | None:
        if run.rc != 0:
            return None
        got, dups = _predictions(ctx.path(rel))
        want, _ = _predictions(ctx.path(ref))
        if dups:
            return f"rows written twice: {', '.join(dups[:3])}"
        if got != want:
            differ = sorted(s for s in set(got) | set(want) if got.get(s) != want.get(s))
            return f"rows differ from one uninterrupted run in {', '.join(differ)} (rows of other settings kept?)"
        return None

    return check


def jsonl_rows(rel: str, n: int, **settings: Any) -> Callable[[Ctx, Run], str | None]:
    """On exit 0: ``rel`` holds ``n`` rows of distinct inputs, and its resume key the ``settings``."""

    def check(ctx: Ctx, run: Run) -> str | None:
        if run.rc != 0:
            return None
        path = ctx.path(rel)
        ids = [json.loads(ln)["question_id"] for ln in path.read_text().splitlines() if ln.strip()]
        if len(ids) != n or len(set(ids)) != n:
            return f"{path.name} holds {len(ids)} rows ({len(set(ids))} inputs), expected {n}"
        key = _json(Path(f"{path}.resume-key.json"))["settings"]
        wrong = {k: key.get(k) for k, v in settings.items() if key.get(k) != v}
        return f"its resume key records {wrong}, not {settings}" if wrong else None

    return check


def embeddings_dims(rel: str, dims: Sequence[int]) -> Callable[[Ctx, Run], str | None]:
    """On exit 0: ``rel`` is an embeddings file of exactly ``dims``."""

    def check(ctx: Ctx, run: Run) -> str | None:
        if run.rc != 0:
            return None
        from evl_ecg.infer.embed import read_embeddings

        got = sorted(read_embeddings(ctx.path(rel)).by_dim)
        return None if got == sorted(dims) else f"{rel} holds dims {got}, not {sorted(dims)}"

    return check


def stdout_has(*words: str) -> Callable[[Ctx, Run], str | None]:
    """On exit 0: stdout carries each of ``words`` (a bad row named in the score document)."""

    def check(ctx: Ctx, run: Run) -> str | None:
        if run.rc != 0:
            return None
        missing = [ctx.fmt(w) for w in words if ctx.fmt(w) not in run.out]
        return f"exit 0, and stdout does not say {', '.join(missing)}" if missing else None

    return check


def all_of(*checks: Callable[[Ctx, Run], str | None]) -> Callable[[Ctx, Run], str | None]:
    def check(ctx: Ctx, run: Run) -> str | None:
        for c in checks:
            problem = c(ctx, run)
            if problem:
                return problem
        return None

    return check


# ----------------------------------------------------------------------------------------------------- scenarios


def _kill_note(rc: int | None) -> str:
    return "" if rc == -signal.SIGKILL else f" (kill point not reached: the killed run exited {rc})"


def scenario_synth_kills(ctx: Ctx) -> tuple[str, str]:
    """synth SIGKILLed 5 times at different points (images, chunk files), then rerun: byte-identical to one run."""
    args = ["data", "synth", "--train", "40", "--bench", "3", "--seed", "5", *SYNTH_SMALL]
    ref = ctx.evl(*args, "--out", "{d}/ref")
    if ref.rc != 0:
        return NOT_EXACT, f"uninterrupted run failed: {ref.err[-300:]}"
    kills = ["image:5", "part:train-00000", "image:9", "part:ptb-test", "image:4"]
    notes = []
    for kill in kills:
        run = ctx.driver([*args, "--out", "{d}/cut"], kill)
        notes.append(f"{kill}->{run.rc}")
    final = ctx.evl(*args, "--out", "{d}/cut", ok=False)
    if final.rc != 0:
        return NOT_EXACT, f"rerun after 5 kills failed (exit {final.rc}): {final.err.strip().splitlines()[-1:]}"
    a, b = file_hashes(ctx.d / "ref"), file_hashes(ctx.d / "cut")
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    killed = sum(n.endswith(f"->{-signal.SIGKILL}") for n in notes)
    if diff:
        return NOT_EXACT, f"{len(diff)} files differ after {killed} kills (e.g. {diff[0]}); kills {notes}"
    return EXACT, f"{len(a)} files byte-identical after {killed} kills ({', '.join(notes)})"


def scenario_synth_kill_workers(ctx: Ctx) -> tuple[str, str]:
    """synth with 2 workers SIGKILLed (whole process group) once 12 images exist, rerun: identical to one run."""
    args = ["data", "synth", "--train", "40", "--bench", "3", "--seed", "6", "--size", "128x96", "--no-progress"]
    ref = ctx.evl(*args, "--workers", "1", "--out", "{d}/ref")
    if ref.rc != 0:
        return NOT_EXACT, f"uninterrupted run failed: {ref.err[-300:]}"
    out = ctx.d / "cut"
    cmd = cli_command([*args, "--workers", "2", "--out", str(out)])
    proc = subprocess.Popen(
        cmd, cwd=ctx.d, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    t0, images = time.time(), 0
    while proc.poll() is None and time.time() - t0 < 120:
        images = sum(1 for _ in (out / "images").rglob("*.png")) if (out / "images").is_dir() else 0
        if images >= 12:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    final = ctx.evl(*args, "--workers", "2", "--out", "{d}/cut", ok=False)
    if final.rc != 0:
        return NOT_EXACT, f"rerun failed (exit {final.rc}): {final.err.strip().splitlines()[-1:]}"
    a, b = file_hashes(ctx.d / "ref"), file_hashes(out)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    how = f"killed at {images} images (exit {proc.returncode})"
    if diff:
        return NOT_EXACT, f"{len(diff)} files differ (e.g. {diff[0]}); {how}"
    return EXACT, f"{len(a)} files byte-identical; {how}"


def _train_argv(phase: str, out: str) -> list[str]:
    steps = ["--set", "max_steps=5", "--set", "save_strategy=steps", "--set", "save_steps=2", "--set", "data_seed=0"]
    if phase == "sft":
        base = ["train", "sft", "--data", "{train}", "--student", "{student}", "--out", out]
    else:
        base = ["distill", "--data", "{train}", "--student", "{student}", "--teacher", "{teacher}", "--out", out]
    return [*base, *TRAIN_SET, *steps]


def _compare_students(ctx: Ctx, whole: Path, resumed: Path, how: str) -> tuple[str, str]:
    if not any((whole / "student").glob("*.safetensors")):
        return NOT_EXACT, f"the uninterrupted run exported no student; {how}"
    if not any((resumed / "student").glob("*.safetensors")):
        return NOT_EXACT, f"the resumed run exported no student; {how}"
    diff = max_abs_diff(weights(whole / "student"), weights(resumed / "student"))
    if diff != 0.0:
        return NOT_EXACT, f"student weights differ from an uninterrupted run: max abs difference {diff:.3g}; {how}"
    return EXACT, f"student weights equal to an uninterrupted run (max abs difference 0.0); {how}"


def _scenario_train(phase: str, kill: str) -> Callable[[Ctx], tuple[str, str]]:
    def scenario(ctx: Ctx) -> tuple[str, str]:
        """5 steps, a checkpoint every 2, SIGKILL at the kill point, rerun: weights equal to one run."""
        whole = ctx.evl(*_train_argv(phase, "{d}/whole"), ok=False)
        if whole.rc != 0:
            return NOT_EXACT, f"uninterrupted run failed (exit {whole.rc}): {whole.err.strip().splitlines()[-1:]}"
        cut = ctx.driver(_train_argv(phase, "{d}/cut"), kill)
        left = sorted(p.name for p in (ctx.d / "cut").glob("checkpoint-*"))
        torn = [n for n in left if not (ctx.d / "cut" / n / "trainer_state.json").exists()]
        how = f"killed at {kill}{_kill_note(cut.rc)}, left {left or 'no checkpoint'}"
        how += f" ({', '.join(torn)} incomplete)" if torn else ""
        rerun = ctx.evl(*_train_argv(phase, "{d}/cut"), ok=False)
        if rerun.rc != 0 or rerun.exc:
            last = (rerun.err.strip().splitlines() or ["(no message)"])[-1]
            return NOT_EXACT, f"rerun failed (exit {rerun.rc}): {last[:200]}; {how}"
        outcome, detail = _compare_students(ctx, ctx.d / "whole", ctx.d / "cut", how)
        if outcome == EXACT and torn and not any(t in rerun.err for t in torn):
            return NOT_EXACT, f"{detail}; but no warning named the incomplete {torn[0]}"
        return outcome, detail

    return scenario


def _predictions(folder: Path) -> tuple[dict[str, dict[str, str]], list[str]]:
    rows: dict[str, dict[str, str]] = {}
    dups: list[str] = []
    for path in sorted(folder.glob("*/predictions.jsonl")):
        seen: dict[str, str] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            key = str(row.get("question_id", row.get("id", row.get("answer_id"))))
            if key in seen:
                dups.append(f"{path.parent.name}/{key}")
            seen[key] = json.dumps({k: v for k, v in row.items() if k not in ("answer_id",)}, sort_keys=True)
        rows[path.parent.name] = seen
    return rows, dups


def scenario_eval_kill(ctx: Ctx) -> tuple[str, str]:
    """eval run SIGKILLed once the first rows are written, rerun: the same rows as one run, none twice."""
    args = ["eval", "run", "--model", "{student}", "--bench", "{bench}", "--max-new-tokens", "12", "--batch-size", "1"]
    whole = ctx.evl(*args, "--out", "{d}/whole", ok=False)
    if whole.rc != 0:
        return NOT_EXACT, f"uninterrupted run failed (exit {whole.rc}): {whole.err.strip().splitlines()[-1:]}"
    out = ctx.d / "cut"
    cmd = cli_command([ctx.fmt(a) for a in args] + ["--out", str(out)])
    proc = subprocess.Popen(
        cmd, cwd=ctx.d, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    t0, rows = time.time(), 0
    while proc.poll() is None and time.time() - t0 < 300:
        files = list(out.glob("*/predictions.jsonl")) if out.is_dir() else []
        rows = sum(p.read_bytes().count(b"\n") for p in files)
        if rows >= 3:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    how = f"killed after {rows} rows (exit {proc.returncode})"
    rerun = ctx.evl(*args, "--out", "{d}/cut", ok=False)
    if rerun.rc != 0:
        return NOT_EXACT, f"rerun failed (exit {rerun.rc}): {rerun.err.strip().splitlines()[-1:]}; {how}"
    want, _ = _predictions(ctx.d / "whole")
    got, dups = _predictions(out)
    if dups:
        return NOT_EXACT, f"duplicate rows after the resume: {', '.join(dups[:3])}; {how}"
    if got != want:
        differ = [s for s in set(want) | set(got) if want.get(s) != got.get(s)]
        return NOT_EXACT, f"predictions differ from one run in {', '.join(sorted(differ))}; {how}"
    n = sum(len(v) for v in want.values())
    return EXACT, f"{n} rows equal to one run, none twice; {how}"


def scenario_library_noise(ctx: Ctx) -> tuple[str, str]:
    """torchao's load lines, logged mid-command as the library logs them on import, stay off a plain command's
    screen; its other warnings show, and --debug shows everything."""
    argv = ["data", "inspect", "{record}"]
    plain, debug = ctx.driver(argv, "noise"), ctx.driver(["--debug", *argv], "noise")
    for run, how in ((plain, ""), (debug, "--debug ")):
        if run.rc != 0:
            return FALSE, f"evl-ecg {how}data inspect failed (exit {run.rc}): {error_line(run.err)[:200]}"
    if "Failed to load" in plain.err:
        return WRONG, "torchao's 'Failed to load ...' line on the screen of a plain command"
    if "not load noise" not in plain.err:
        return WRONG, "a torchao warning that is not load noise was dropped as well"
    if "Failed to load" not in debug.err:
        return WRONG, "--debug does not show torchao's load lines"
    return HANDLED, "load lines dropped, torchao's other warning shown, --debug shows both"


# ----------------------------------------------------------------------------------------------------- the table

SFT = ("train", "sft", "--data", "{train}", "--out", "{d}/run", *TRAIN_SET)
SFT_CFG = ("train", "sft", "--config", "{d}/cfg.yaml", "--data", "{train}", "--out", "{d}/run")
KD = ("distill", "--data", "{train}", "--out", "{d}/run", *TRAIN_SET)
KD_CFG = ("distill", "--config", "{d}/cfg.yaml", "--data", "{train}", "--out", "{d}/run", "--student", "{student}")
KD_CFG += ("--teacher", "{teacher}")
PAIR = ("--student", "{student}", "--teacher", "{teacher}")
EVAL = ("eval", "run", "--max-new-tokens", "4", "--batch-size", "4", "--no-likelihood")
EVAL_PTB = (*EVAL, "--subset", "ptb-test")
SYNTH = ("data", "synth", *SYNTH_SMALL)
EVK = ("eval", "run", "--no-likelihood", "--subset", "ptb-test", "--scorer", "strict", "--model", "{student}",
       "--bench", "{bench}", "--batch-size", "1")  # fmt: skip
PRED = ("predict", "{d}/A.hea", "{d}/B.hea", "--model", "{student}", "--out", "{d}/p.jsonl", "--no-progress",
        "--max-new-tokens", "4")  # fmt: skip
EMBED = ("embed", "--model", "{embedder}", "--data", "{bench}/ptb-test.json", "--image-root", "{corpus}/images",
         "--batch-size", "2", "--no-progress")  # fmt: skip
STUDY = ("study", "--out", "{d}/s", "--quick")
ARRAYS = "".join(json.dumps([f"synth-ptb-test-0000{i}", "NORM"]) + "\n" for i in range(2))
C, H = (CLEAR,), (HANDLED,)
CH = (CLEAR, HANDLED)
S, T, ST, R = ("student",), ("teacher",), ("student", "teacher"), ("record",)
NO_SCORE_ERRORS = eval_ok()

CASES: list[Case] = [
    # ------------------------------------------------------------------------------------------------ data
    Case("synth-foreign-files", "data", CH, (*SYNTH, "--out", "{d}/out", "--train", "2", "--bench", "1"),
         setup=do(write("out/train.json", '{"mine": 1}'), write("out/manifest.json", "mine"),
                  write("out/bench/ptb-test.json", "[]"), write("out/notes.txt", "mine"),
                  write("out/.draft.tmp", "mine"), write("out/sub/.x.tmp", "mine"), snapshot("{d}/out")),
         names=("{d}/out",), check=untouched(), note="overwrites train.json, manifest.json, bench; deletes .*.tmp"),
    Case("synth-copied-without-dotfiles-new-seed", "data", CH,
         (*SYNTH, "--out", "{d}/b", "--train", "16", "--bench", "1", "--seed", "1"),
         setup=do(evl(*SYNTH, "--out", "{d}/a", "--train", "16", "--bench", "1", "--seed", "0"),
                  copy_without_dotfiles("a", "b"),
                  evl(*SYNTH, "--out", "{d}/ref", "--train", "16", "--bench", "1", "--seed", "1")),
         names=("{d}/b",), check=same_as("{d}/b", "{d}/ref"), note="old images reused: labels not matching images"),
    Case("synth-image-write-error", "data", C, (*SYNTH, "--out", "{d}/out", "--train", "8", "--bench", "0"),
         fsize=IMAGE_LIMIT, names=("{d}/out",), check=corpus_complete("{d}/out", 8),
         note="a write error counted as a skipped item, exit 0"),
    Case("synth-image-path-taken-by-a-folder", "data", C, (*SYNTH, "--out", "{d}/out", "--train", "8", "--bench", "0"),
         setup=block_images("out", 1, 5), names=("{d}/out",), check=corpus_complete("{d}/out", 8)),
    Case("synth-write-error-killed-then-fixed", "data", H,
         (*SYNTH, "--out", "{d}/out", "--train", "40", "--bench", "0"),
         setup=killed((*SYNTH, "--out", "{d}/out", "--train", "40", "--bench", "0"), "part:train-00001", IMAGE_LIMIT),
         check=corpus_complete("{d}/out", 40), note="records lost for good after a kill and a rerun"),
    Case("synth-disk-full", "data", C, (*SYNTH, "--out", "{d}/out", "--train", "48", "--bench", "2"),
         setup=mkdir("out"), wrap=("diskfull", "{d}/out", "160k"), inprocess=False, names=("{d}/out",),
         note="a full disk: items skipped, exit 0"),
    Case("synth-out-read-only", "data", C, (*SYNTH, "--out", "{d}/out", "--train", "2", "--bench", "0"),
         setup=mkdir("out"), wrap=("readonly", "{d}/out"), inprocess=False, names=("{d}/out",)),
    Case("synth-out-is-a-file", "data", C, (*SYNTH, "--out", "{d}/f.txt", "--train", "2", "--bench", "0"),
         setup=write("f.txt", "x"), names=("f.txt",)),
    Case("synth-out-under-a-file", "data", C, (*SYNTH, "--out", "{d}/f.txt/corpus", "--train", "2", "--bench", "0"),
         setup=write("f.txt", "x"), names=("f.txt",), note="NotADirectoryError"),
    Case("synth-out-through-a-dangling-symlink", "data", C,
         (*SYNTH, "--out", "{d}/link/corpus", "--train", "2", "--bench", "0"),
         setup=lambda ctx: (ctx.d / "link").symlink_to(ctx.d / "gone"), names=("link",), note="FileNotFoundError"),
    Case("synth-train-1e12", "data", C, (*SYNTH, "--out", "{d}/out", "--train", "1000000000000", "--bench", "0"),
         names=(("--train", "n_train", "1000000000000"),), timeout=30, inprocess=False,
         note="loops before any work, grows in memory until killed"),
    Case("synth-bench-1e12", "data", C, (*SYNTH, "--out", "{d}/out", "--train", "0", "--bench", "1000000000000"),
         names=(("--bench", "n_bench", "1000000000000"),), timeout=30, inprocess=False),
    Case("synth-size-60000x60000", "data", C,
         ("data", "synth", "--out", "{d}/out", "--train", "1", "--bench", "0", "--workers", "1", "--no-progress",
          "--size", "60000x60000"),
         names=("--size", "60000x60000"), timeout=60, inprocess=False, note="MemoryError; then no --size named"),
    Case("synth-dpi-100000", "data", C,
         ("data", "synth", "--out", "{d}/out", "--train", "1", "--bench", "0", "--workers", "1", "--no-progress",
          "--dpi", "100000"),
         names=(("--dpi", "dpi"),), timeout=60, inprocess=False),
    Case("synth-size-not-a-size", "data", C, ("data", "synth", "--out", "{d}/o", "--size", "big"),
         names=(("--size", "size"),), note="control: refused today"),
    Case("synth-train-negative", "data", C, (*SYNTH, "--out", "{d}/o", "--train", "-1"), names=("--train",)),
    Case("synth-files-readable-umask-022", "data", H, (*SYNTH, "--out", "{d}/out", "--train", "2", "--bench", "1"),
         check=readable_by_others("{d}/out"), note="every output file mode 0600 whatever the umask"),
    Case("synth-path-with-space-and-accent", "data", H,
         (*SYNTH, "--out", "{d}/my corpus é", "--train", "3", "--bench", "1"),
         check=corpus_complete("{d}/my corpus é", 3, 1), note="control"),
    Case("synth-rerun-finished-corpus", "data", H, (*SYNTH, "--out", "{d}/out", "--train", "3", "--bench", "1"),
         setup=do(evl(*SYNTH, "--out", "{d}/out", "--train", "3", "--bench", "1"), snapshot("{d}/out")),
         check=untouched(), note="control: a rerun keeps the corpus byte for byte"),
    Case("render-size-60000x60000", "data", C,
         ("data", "render", "{record}", "--out", "{d}/a.png", "--size", "60000x60000"), needs=R,
         names=("--size", "60000x60000"), timeout=60, inprocess=False, note="MemoryError; then no --size named"),
    Case("render-out-under-a-file", "data", C, ("data", "render", "{record}", "--out", "{d}/f.txt/a.png"),
         setup=write("f.txt", "x"), needs=R, names=("f.txt",)),
    Case("render-out-new-folder", "data", CH, ("data", "render", "{record}", "--out", "{d}/new/sub/a.png"),
         needs=R, names=("new",), check=png_written("{d}/new/sub/a.png")),
    Case("wfdb-too-few-signal-lines", "data", C, ("data", "inspect", "{d}/FEW.hea"),
         setup=hea("FEW", signal_lines=3), names=("FEW.hea",)),
    Case("wfdb-too-few-signal-lines-render", "data", C, ("data", "render", "{d}/FEW.hea", "--out", "{d}/a.png"),
         setup=hea("FEW", signal_lines=3), names=("FEW.hea",)),
    Case("wfdb-no-descriptions", "data", C, ("data", "inspect", "{d}/NODESC.hea"),
         setup=hea("NODESC", descriptions=False), names=("NODESC.hea",)),
    Case("wfdb-no-descriptions-render", "data", C, ("data", "render", "{d}/NODESC.hea", "--out", "{d}/a.png"),
         setup=hea("NODESC", descriptions=False), names=("NODESC.hea",)),
    Case("wfdb-zero-length", "data", C, ("data", "inspect", "{d}/ZERO.hea"),
         setup=hea("ZERO", n=0), names=("ZERO.hea",)),
    Case("wfdb-zero-length-render", "data", C, ("data", "render", "{d}/ZERO.hea", "--out", "{d}/a.png"),
         setup=hea("ZERO", n=0), names=("ZERO.hea",)),
    Case("wfdb-dat-missing", "data", C, ("data", "inspect", "{d}/NODAT.hea"),
         setup=hea("NODAT", dat="none"), names=("NODAT",)),
    Case("wfdb-dat-truncated", "data", C, ("data", "render", "{d}/HALF.hea", "--out", "{d}/a.png"),
         setup=hea("HALF", dat="half"), names=("HALF",)),
    Case("wfdb-not-a-header", "data", C, ("data", "inspect", "{d}/bad.hea"),
         setup=write("bad.hea", "this is not a header\n"), names=("bad.hea",), note="control"),
    # ------------------------------------------------------------------------------------- exports of carts
    Case("xml-entity-bomb", "data", C, ("data", "inspect", "{d}/bomb.xml"), setup=write("bomb.xml", _BOMB),
         names=("bomb.xml",), timeout=30, note="a billion laughs: refused at the declaration"),
    Case("xml-external-entity", "data", C, ("data", "inspect", "{d}/x.xml"), setup=write("x.xml", _EXTERNAL),
         names=("x.xml",), check=says_nothing_of("root:"), timeout=30, note="no file is read through the entity"),
    Case("xml-unknown-root", "data", C, ("data", "inspect", "{d}/other.xml"),
         setup=write("other.xml", '<?xml version="1.0"?>\n<invoice><total>3</total></invoice>\n'),
         names=("other.xml", "invoice")),
    Case("muse-bad-base64", "data", C, ("data", "inspect", "{d}/m.xml"),
         setup=export("muse_rhythm.xml", "m.xml", _last_waveform_corrupted), names=("m.xml", "WaveFormData"),
         note="the Rhythm waveform's data (the median one before it is not read)"),
    Case("muse-no-patient-in-output", "data", H, ("data", "inspect", "{d}/m.xml"),
         setup=export("muse_rhythm.xml", "m.xml"), check=says_nothing_of("DOE", "PID-90210", "1951"),
         note="control: read, and no identifier printed"),
    Case("aecg-render-no-patient", "data", H, ("data", "render", "{d}/a.xml", "--out", "{d}/a.png"),
         setup=export("aecg_rhythm.xml", "a.xml"), check=png_written("{d}/a.png"), note="control"),
    Case("csv-no-rate", "data", C, ("data", "inspect", "{d}/c.csv"),
         setup=write("c.csv", _LEADS_HEADER + _ROWS + "\n"), names=("c.csv",), note="no time column, no # fs:"),
    Case("csv-microvolts-read-as-millivolts", "data", C, ("data", "inspect", "{d}/c.csv"),
         setup=write("c.csv", "# fs: 500\n" + _LEADS_HEADER + _BIG_ROWS + "\n"), names=("c.csv",),
         note="950 mV is no ECG: a unit mistake"),
    Case("edf-truncated", "data", C, ("data", "inspect", "{d}/e.edf"),
         setup=export("ecg_export.edf", "e.edf", lambda b: b[: len(b) // 2]), names=("e.edf",)),
    Case("philips-cut-payload", "data", C, ("data", "inspect", "{d}/p.xml"),
         setup=export("philips_xli.xml", "p.xml", lambda b: b[: int(len(b) * 0.7)]), names=("p.xml",)),
    # ------------------------------------------------------------------------------------------------ config
    Case("config-yaml-syntax-error", "config", C, SFT_CFG, setup=write("cfg.yaml", "max_steps: [2\nseed: 0\n"),
         names=("cfg.yaml",)),
    Case("config-not-a-mapping", "config", C, SFT_CFG, setup=write("cfg.yaml", "- a\n- b\n"), names=("cfg.yaml",),
         note="control"),
    Case("config-is-a-directory", "config", C,
         ("train", "sft", "--config", "{d}/cfgdir", "--data", "{train}", "--out", "{d}/run"),
         setup=mkdir("cfgdir"), names=("cfgdir",)),
    Case("config-missing", "config", C,
         ("train", "sft", "--config", "{d}/nope.yaml", "--data", "{train}", "--out", "{d}/run"), names=("nope.yaml",),
         note="control"),
    Case("config-max-steps-string", "config", C, SFT_CFG, setup=config_yaml('max_steps: "two"'),
         names=("max_steps",)),
    Case("config-max-steps-float", "config", C, SFT_CFG, setup=config_yaml("max_steps: 2.5"), names=("max_steps",)),
    Case("config-max-steps-zero", "config", C, SFT_CFG, setup=config_yaml("max_steps: 0"), names=("max_steps",),
         note="trains one step"),
    Case("config-seed-string", "config", C, SFT_CFG, setup=config_yaml('seed: "abcd"'), names=("seed",)),
    Case("config-gradient-accumulation-zero", "config", C, SFT_CFG,
         setup=config_yaml("gradient_accumulation_steps: 0"), names=("gradient_accumulation_steps",)),
    Case("config-batch-size-zero", "config", C, SFT_CFG, setup=config_yaml("per_device_train_batch_size: 0"),
         names=("per_device_train_batch_size",)),
    Case("config-max-train-samples-negative", "config", C, SFT_CFG, setup=config_yaml("max_train_samples: -1"),
         names=("max_train_samples",), note="drops one record"),
    Case("config-freeze-vision-string", "config", C, SFT_CFG, setup=config_yaml('freeze_vision: "yes please"'),
         names=("freeze_vision",), note="taken as true"),
    Case("config-learning-rate-negative", "config", C, SFT_CFG, setup=config_yaml("learning_rate: -1.0"),
         names=("learning_rate",)),
    Case("config-learning-rate-1e9", "config", C, SFT_CFG,
         setup=config_yaml("learning_rate: 1e9\nmax_steps: 3"),
         names=(("learning_rate", "non-finite", "NaN", "nan", "inf"),), check=finite_student("{d}/run/student"),
         note="exports an all-NaN model, logged loss 0, exit 0"),
    Case("config-set-learning-rate-1e9", "config", C, (*SFT, "--set", "learning_rate=1e9", "--set", "max_steps=3"),
         names=(("learning_rate", "non-finite", "NaN", "nan", "inf"),), check=finite_student("{d}/run/student")),
    Case("config-unknown-key", "config", C, SFT_CFG, setup=config_yaml("lerning_rate: 0.1"),
         names=("lerning_rate",), note="control"),
    Case("config-set-max-steps-abc", "config", C, (*SFT, "--set", "max_steps=abc"), names=("max_steps",)),
    Case("config-set-without-equals", "config", C, (*SFT, "--set", "max_steps"), names=("max_steps",),
         note="control"),
    Case("config-set-unknown-key", "config", C, (*SFT, "--set", "nosuchkey=1"), names=("nosuchkey",),
         note="control"),
    Case("config-objective-not-a-mapping", "config", C, KD_CFG, setup=config_yaml("objective: 5", "kd"), needs=ST,
         names=("objective",)),
    Case("config-objective-unknown-term", "config", C, KD_CFG,
         setup=config_yaml("objective:\n  terms:\n    foo:\n      weight: 1.0", "kd"), needs=ST, names=("foo",)),
    Case("config-objective-option-typo", "config", C, KD_CFG,
         setup=config_yaml("objective:\n  terms:\n    ot:\n      wieght: 0.1", "kd"), needs=ST, names=("wieght",)),
    # ------------------------------------------------------------------------------------------------ train
    Case("train-data-missing", "train", C, ("train", "sft", "--data", "{d}/none.json", "--out", "{d}/run"),
         names=("none.json",), note="control"),
    Case("train-data-is-a-directory", "train", C, ("train", "sft", "--data", "{d}/dir", "--out", "{d}/run"),
         setup=mkdir("dir"), names=("dir",)),
    Case("train-data-json-syntax-error", "train", C, (*SFT[:2], "--data", "{d}/bad.json", *SFT[4:]),
         setup=write("bad.json", '[{"id": "a", '), names=("bad.json",)),
    Case("train-data-object", "train", C, (*SFT[:2], "--data", "{d}/bad.json", *SFT[4:]),
         setup=write("bad.json", '{"id": "a"}'), names=("bad.json",)),
    Case("train-data-empty-list", "train", C, (*SFT[:2], "--data", "{d}/bad.json", *SFT[4:]),
         setup=write("bad.json", "[]"), names=("bad.json",)),
    Case("train-data-list-of-strings", "train", C, (*SFT[:2], "--data", "{d}/bad.json", *SFT[4:]),
         setup=write("bad.json", '["a", "b"]'), names=("bad.json",)),
    Case("train-record-conversations-string", "train", C, (*SFT[:2], "--data", "{d}/bad.json", *SFT[4:]),
         setup=records_file("bad.json", first(setitem("conversations", "hello"))), names=("bad.json",)),
    Case("train-record-answer-int", "train", C, (*SFT[:2], "--data", "{d}/bad.json", *SFT[4:]),
         setup=records_file("bad.json", first(answer_value(5))), names=("bad.json",)),
    Case("train-record-image-int", "train", C, (*SFT[:2], "--data", "{d}/bad.json", *SFT[4:]),
         setup=records_file("bad.json", first(setitem("image", 7))), names=("bad.json",)),
    Case("train-record-id-list", "train", C, (*SFT[:2], "--data", "{d}/bad.json", *SFT[4:]),
         setup=records_file("bad.json", first(setitem("id", [1, 2]))), names=("bad.json",)),
    Case("train-record-labels-string", "train", C, (*SFT[:2], "--data", "{d}/bad.json", *SFT[4:]),
         setup=records_file("bad.json", first(setitem("labels", "NORM"))), names=("bad.json",)),
    Case("train-record-image-missing", "train", C, ("train", "sft", "--data", "{d}/c/bad.json", *SFT[4:]),
         setup=do(copy("corpus", "c"), records_file("c/bad.json", first(setitem("image", "train/missing.png")))),
         names=("missing.png",)),
    Case("train-out-is-a-file", "train", C, (*SFT[:4], "--out", "{d}/f.txt", *SFT[6:]), setup=write("f.txt", "x"),
         names=("f.txt",)),
    Case("train-out-under-a-file", "train", C, (*SFT[:4], "--out", "{d}/f.txt/run", *SFT[6:]),
         setup=write("f.txt", "x"), names=("f.txt",)),
    Case("train-out-read-only", "train", C, (*SFT[:4], "--out", "{d}/ro/run", *SFT[6:]), setup=mkdir("ro"),
         wrap=("readonly", "{d}/ro"), inprocess=False, quick=False, names=("{d}/ro",), note="PermissionError"),
    Case("train-files-readable-umask-022", "train", H, SFT, check=readable_by_others("{d}/run")),
    # ------------------------------------------------------------------------------------------------ distill
    Case("distill-method-in-yaml", "distill", H, KD_CFG, setup=config_yaml("method: ot", "kd"), needs=ST,
         check=objective_has("ot", absent=("mhca",)), note="the CLI default --method wins over the YAML"),
    Case("distill-set-method-uld", "distill", H, (*KD, *PAIR, "--set", "method=uld"), needs=ST,
         check=objective_has("uld", absent=("mhca",))),
    Case("distill-same-student-and-teacher", "distill", C, (*KD, "--student", "{student}", "--teacher", "{student}"),
         needs=S, names=("student", "teacher")),
    Case("distill-teacher-is-a-copy-of-the-student", "distill", C,
         (*KD, "--student", "{student}", "--teacher", "{d}/copy"), setup=copy("student", "copy"),
         names=("student", "teacher")),
    Case("distill-swapped-student-and-teacher", "distill", CH,
         (*KD, "--student", "{teacher}", "--teacher", "{student}"), needs=ST, names=("student",),
         check=warned("larger", "bigger", "more parameters"), note="accepted without a word"),
    Case("distill-unknown-method", "distill", C, (*KD, *PAIR, "--method", "nope"), needs=ST, names=("nope",),
         note="control"),
    Case("distill-no-teacher", "distill", C, (*KD, "--student", "{student}"), needs=S, names=("teacher",),
         note="control"),
    # ------------------------------------------------------------------------------------------------ eval
    Case("eval-bench-list-of-strings", "eval", C, (*EVAL_PTB, "--model", "{student}", "--bench", "{d}/bench",
         "--out", "{d}/ev"), setup=bench_dir('["a", "b"]'), needs=S, names=("ptb-test.json",),
         check=NO_SCORE_ERRORS, note="exit 0, the error only inside scores.json"),
    Case("eval-bench-object", "eval", C, (*EVAL_PTB, "--model", "{student}", "--bench", "{d}/bench", "--out",
         "{d}/ev"), setup=bench_dir('{"id": "a"}'), needs=S, names=("ptb-test.json",), check=NO_SCORE_ERRORS),
    Case("eval-bench-empty-list", "eval", C, (*EVAL_PTB, "--model", "{student}", "--bench", "{d}/bench", "--out",
         "{d}/ev"), setup=bench_dir("[]"), needs=S, names=("ptb-test.json",), check=NO_SCORE_ERRORS),
    Case("eval-bench-json-syntax-error", "eval", C, (*EVAL_PTB, "--model", "{student}", "--bench", "{d}/bench",
         "--out", "{d}/ev"), setup=bench_dir('[{"id": '), needs=S, names=("ptb-test.json",), check=NO_SCORE_ERRORS),
    Case("eval-bench-duplicate-ids", "eval", C, (*EVAL_PTB, "--model", "{student}", "--bench", "{d}/bench",
         "--out", "{d}/ev"), setup=bench_dir(duplicate_ids), needs=S, names=("ptb-test.json",),
         check=NO_SCORE_ERRORS),
    Case("eval-bench-first-turn-gpt", "eval", CH, (*EVAL_PTB, "--model", "{student}", "--bench", "{d}/bench",
         "--out", "{d}/ev"), setup=bench_dir(first(gpt_first)), needs=S, names=("ptb-test.json",),
         check=eval_ok(not_scored="synth-ptb-test-00000", reported="synth-ptb-test-00000"),
         note="scored with the question as its gold answer"),
    Case("eval-bench-record-wrong-types", "eval", CH, (*EVAL_PTB, "--model", "{student}", "--bench", "{d}/bench",
         "--out", "{d}/ev"), setup=bench_dir(first(setitem("conversations", "hello"))), needs=S,
         names=("ptb-test.json",), check=eval_ok(reported="synth-ptb-test-00000")),
    Case("eval-stdout-is-one-json-document", "eval", H,
         (*EVAL, "--model", "{student}", "--bench", "{bench}", "--out", "{d}/ev"), needs=S, check=NO_SCORE_ERRORS,
         note="stdout JSON cut at 20,000 characters"),
    Case("eval-resume-with-another-model-same-folder", "eval", C,
         (*EVAL, "--model", "{d}/models/student", "--bench", "{bench}", "--out", "{d}/ev"),
         setup=do(copy("student", "models/student"),
                  evl(*EVAL_PTB, "--model", "{d}/models/student", "--bench", "{bench}", "--out", "{d}/ev"),
                  lambda ctx: shutil.rmtree(ctx.d / "models" / "student"), copy("student2", "models/student")),
         names=("{d}/ev",), check=NO_SCORE_ERRORS, note="rows of two models mixed and scored"),
    Case("eval-bench-foreign-files", "eval", H, (*EVAL_PTB, "--model", "{student}", "--bench", "{d}/bench",
         "--out", "{d}/ev"), setup=do(bench_dir(lambda r: None), write("bench/README.md", "# mine"),
                                      write("bench/notes.json", "{}"), write("bench/extra.jsonl", "x\n")),
         needs=S, check=NO_SCORE_ERRORS, note="control"),
    Case("eval-bench-missing", "eval", C, (*EVAL, "--model", "{student}", "--bench", "{d}/none", "--out", "{d}/ev"),
         needs=S, names=("none",), note="control"),
    Case("eval-out-is-a-file", "eval", C, (*EVAL_PTB, "--model", "{student}", "--bench", "{bench}", "--out",
         "{d}/f.txt"), setup=write("f.txt", "x"), needs=S, names=("f.txt",)),
    Case("eval-out-read-only", "eval", C, (*EVAL_PTB, "--model", "{student}", "--bench", "{bench}", "--out",
         "{d}/ro/ev"), setup=mkdir("ro"), wrap=("readonly", "{d}/ro"), inprocess=False, quick=False, needs=S,
         names=("{d}/ro",)),
    Case("eval-update-card-model-read-only", "eval", C, (*EVAL_PTB, "--model", "{d}/m", "--bench", "{bench}",
         "--out", "{d}/ev", "--update-card"), setup=copy("student", "m"), wrap=("readonly", "{d}/m"),
         inprocess=False, quick=False, names=("{d}/m",), note="control"),
    Case("eval-out-is-the-model-folder", "eval", CH, (*EVAL_PTB, "--model", "{d}/m", "--bench", "{bench}",
         "--out", "{d}/m"), setup=do(copy("student", "m"), snapshot("{d}/m")), names=("{d}/m",), check=untouched()),
    Case("eval-files-readable-umask-022", "eval", H, (*EVAL_PTB, "--model", "{student}", "--bench", "{bench}",
         "--out", "{d}/ev"), needs=S, check=readable_by_others("{d}/ev")),
    # ---- issue 30: one resume rule, keyed on every setting that changes an answer (docs/hostile.md)
    Case("eval-resume-killed-other-max-new-tokens", "eval", C, (*EVK, "--out", "{d}/ev", "--max-new-tokens", "8"),
         setup=do(killed((*EVK, "--out", "{d}/ev", "--max-new-tokens", "4"), "row:1"), snapshot("{d}/ev")),
         needs=S, names=("{d}/ev", "max_new_tokens=4, now 8"), check=untouched(),
         note="the killed run's rows kept and mixed with rows of another length, exit 0"),
    Case("eval-resume-killed-fresh", "eval", H, (*EVK, "--out", "{d}/ev", "--max-new-tokens", "8", "--fresh"),
         setup=do(killed((*EVK, "--out", "{d}/ev", "--max-new-tokens", "4"), "row:1"),
                  evl(*EVK, "--out", "{d}/ref", "--max-new-tokens", "8")),
         needs=S, check=same_predictions("{d}/ev", "{d}/ref")),
    Case("eval-resume-killed-same-settings", "eval", H, (*EVK, "--out", "{d}/ev", "--max-new-tokens", "4"),
         setup=do(killed((*EVK, "--out", "{d}/ev", "--max-new-tokens", "4"), "row:1"),
                  evl(*EVK, "--out", "{d}/ref", "--max-new-tokens", "4")),
         needs=S, check=same_predictions("{d}/ev", "{d}/ref"), note="control: the same settings resume"),
    Case("eval-resume-other-batch-size", "eval", C, (*EVK[:-1], "4", "--out", "{d}/ev", "--max-new-tokens", "4"),
         setup=do(evl(*EVK, "--out", "{d}/ev", "--max-new-tokens", "4"), snapshot("{d}/ev")), needs=S,
         names=("{d}/ev", "batch_size=1, now 4"), check=untouched()),
    Case("eval-resume-bench-file-changed", "eval", C,
         ("eval", "run", "--no-likelihood", "--subset", "ptb-test", "--model", "{student}", "--bench", "{d}/bench",
          "--out", "{d}/ev", "--max-new-tokens", "4"),
         setup=do(bench_dir(lambda r: None),
                  evl("eval", "run", "--no-likelihood", "--subset", "ptb-test", "--model", "{student}", "--bench",
                      "{d}/bench", "--out", "{d}/ev", "--max-new-tokens", "4"),
                  records_file("bench/ptb-test.json", first(answer_value("NORM; MI")), source="ptb-test"),
                  snapshot("{d}/ev")),
         needs=S, names=("{d}/ev", "bench:ptb-test=sha256:"), check=untouched()),
    Case("eval-resume-output-without-a-key", "eval", C, (*EVK, "--out", "{d}/ev", "--max-new-tokens", "4"),
         setup=do(evl(*EVK, "--out", "{d}/ev", "--max-new-tokens", "4"), removed("ev/resume-key.json"),
                  snapshot("{d}/ev")),
         needs=S, names=("{d}/ev", "resume key"), check=untouched(), note="an evaluation of an older evl-ecg"),
    Case("eval-out-holds-foreign-files", "eval", C, (*EVK, "--out", "{d}/ev", "--fresh"),
         setup=do(write("ev/notes.txt", "mine"), write("ev/ptb-test/mine.jsonl", "{}\n"), snapshot("{d}/ev")),
         needs=S, names=("{d}/ev", "notes.txt"), check=untouched(), note="--fresh must not clear another's files"),
    Case("score-jsonl-lines-hold-arrays", "eval", C,
         ("eval", "score", "--bench", "{bench}/ptb-test.json", "--pred", "{d}/p/ptb-test.jsonl"),
         setup=write("p/ptb-test.jsonl", ARRAYS), names=("ptb-test.jsonl:1", "holds an array"),
         note="'invalid JSON at line 2 (Extra data)': parsed as one document"),
    Case("score-jsonl-line-2-holds-an-array", "eval", H,
         ("eval", "score", "--bench", "{bench}/ptb-test.json", "--pred", "{d}/p/ptb-test.jsonl"),
         setup=write("p/ptb-test.jsonl", json.dumps({"question_id": "synth-ptb-test-00000", "text": "NORM"}) + "\n"
                     + json.dumps(["synth-ptb-test-00001", "MI"]) + "\n"),
         check=stdout_has("ptb-test.jsonl:2: holds an array")),
    Case("score-bench-jsonl-line-2-holds-an-array", "eval", C,
         ("eval", "score", "--bench", "{d}/bench/ptb-test.jsonl", "--pred", "{d}/p/ptb-test.jsonl"),
         setup=do(write("bench/ptb-test.jsonl", json.dumps({"id": "a", "image": "x.png", "conversations": [
                      {"from": "human", "value": "<image>\nWhich?"}, {"from": "gpt", "value": "NORM"}]}) + "\n"
                        + json.dumps(["b"]) + "\n"),
                  write("p/ptb-test.jsonl", json.dumps({"question_id": "a", "text": "NORM"}) + "\n")),
         names=("ptb-test.jsonl", "line 2", "holds an array")),
    Case("predict-jsonl-killed-other-batch-size", "infer", C, (*PRED, "--batch-size", "2"),
         setup=do(hea("A"), hea("B"), killed((*PRED, "--batch-size", "1"), "batch:1"), snapshot("{d}/p.jsonl")),
         needs=S, names=("{d}/p.jsonl", "batch_size=1, now 2"), check=untouched(),
         note="rows of two batch sizes mixed in one file"),
    Case("predict-jsonl-other-max-new-tokens", "infer", C, (*PRED[:-1], "9", "--batch-size", "1"),
         setup=do(hea("A"), hea("B"), evl(*PRED, "--batch-size", "1"), snapshot("{d}/p.jsonl")),
         needs=S, names=("{d}/p.jsonl", "max_new_tokens=4, now 9"), check=untouched()),
    Case("predict-jsonl-killed-fresh", "infer", H, (*PRED, "--batch-size", "2", "--fresh"),
         setup=do(hea("A"), hea("B"), killed((*PRED, "--batch-size", "1"), "batch:1")),
         needs=S, check=jsonl_rows("{d}/p.jsonl", 2, batch_size=2, max_new_tokens=4)),
    Case("predict-out-is-a-folder", "infer", C, (*PRED, "--batch-size", "1"), setup=do(hea("A"), hea("B"),
         mkdir("p.jsonl")), needs=S, names=("--out", "p.jsonl"), note="'[Errno 21] Is a directory'"),
    Case("embed-other-dims", "infer", C, (*EMBED, "--dims", "8", "--out", "{d}/e.safetensors"),
         setup=do(evl(*EMBED, "--dims", "8,16", "--out", "{d}/e.safetensors"), snapshot("{d}/e.safetensors")),
         needs=("embedder",), names=("{d}/e.safetensors", "dims=[8,16], now [8]"), check=untouched(),
         note="overwritten with other dims, exit 0"),
    Case("embed-other-dims-fresh", "infer", H, (*EMBED, "--dims", "8", "--out", "{d}/e.safetensors", "--fresh"),
         setup=evl(*EMBED, "--dims", "8,16", "--out", "{d}/e.safetensors"), needs=("embedder",),
         check=embeddings_dims("{d}/e.safetensors", (8,))),
    Case("embed-rerun-same-bytes", "infer", H, (*EMBED, "--dims", "8,16", "--out", "{d}/e.safetensors"),
         setup=do(evl(*EMBED, "--dims", "8,16", "--out", "{d}/e.safetensors"), snapshot("{d}/e.safetensors")),
         needs=("embedder",), check=untouched(), note="control: the same settings write the same bytes"),
    Case("embed-over-a-file-not-embeddings", "infer", C,
         (*EMBED, "--dims", "8", "--out", "{d}/mine.safetensors", "--fresh"),
         setup=do(write("mine.safetensors", b"\x00\x01 my own data" * 8), snapshot("{d}/mine.safetensors")),
         needs=("embedder",), names=("mine.safetensors", "not an evl-ecg embeddings file"), check=untouched(),
         note="a user's file overwritten"),
    Case("study-other-settings", "train", C, (*STUDY, "--steps", "9"), setup=study_json("s", phase2_steps=7),
         names=("{d}/s", "phase2_steps=7, now 9"), timeout=60, inprocess=False,
         note="'other settings (phase2_steps differ)': no values"),
    Case("study-legacy-study-json-other-settings", "train", C, (*STUDY, "--steps", "9", "--generator", "1"),
         setup=study_json("s", legacy=True, phase2_steps=7), names=("{d}/s", "phase2_steps=7, now 9"), timeout=60,
         inprocess=False),
    Case("study-unreadable-study-json", "train", C, STUDY, setup=write("s/study.json", "{not json"),
         names=("study.json",), timeout=60, inprocess=False, note="JSONDecodeError traceback"),
    Case("synth-seed-negative", "data", C, (*SYNTH, "--out", "{d}/o", "--seed", "-1"), names=("--seed",),
         note="'expected non-negative integer', naming no option"),
    Case("library-noise-off-screen", "noise", H, scenario=scenario_library_noise, needs=R,
         note="torchao's 'Failed to load ...' lines before every command's output"),
    # ------------------------------------------------------------------------------------------------ model folder
    Case("model-config-json-corrupt", "model", C, (*EVAL_PTB, "--model", "{d}/m", "--bench", "{bench}", "--out",
         "{d}/ev"), setup=model_copy("student", config__json=text_of("{not json")), names=("config.json",)),
    Case("model-config-json-corrupt-sft", "model", C, (*SFT, "--student", "{d}/m"),
         setup=model_copy("student", config__json=text_of("{not json")), names=("config.json",)),
    Case("model-config-json-corrupt-teacher", "model", C, (*KD, "--student", "{student}", "--teacher", "{d}/m"),
         setup=model_copy("teacher", config__json=text_of("{not json")), needs=S, names=("config.json",)),
    Case("model-safetensors-truncated", "model", C, (*EVAL_PTB, "--model", "{d}/m", "--bench", "{bench}", "--out",
         "{d}/ev"), setup=model_copy("student", model__safetensors=truncated(0.5)), names=("model.safetensors",)),
    Case("model-safetensors-truncated-student", "model", C, (*KD, "--student", "{d}/m", "--teacher", "{teacher}"),
         setup=model_copy("student", model__safetensors=truncated(0.5)), needs=T, names=("model.safetensors",)),
    Case("model-safetensors-random", "model", C, (*EVAL_PTB, "--model", "{d}/m", "--bench", "{bench}", "--out",
         "{d}/ev"), setup=model_copy("student", model__safetensors=random_bytes), names=("model.safetensors",)),
    Case("model-safetensors-empty", "model", C, (*EVAL_PTB, "--model", "{d}/m", "--bench", "{bench}", "--out",
         "{d}/ev"), setup=model_copy("student", model__safetensors=text_of(b"")), names=("model.safetensors",)),
    Case("model-safetensors-missing", "model", C, (*EVAL_PTB, "--model", "{d}/m", "--bench", "{bench}", "--out",
         "{d}/ev"), setup=model_copy("student", model__safetensors=deleted),
         names=(("model.safetensors", "safetensors", "weights"),)),
    Case("model-weights-of-another-model", "model", C, (*EVAL_PTB, "--model", "{d}/m", "--bench", "{bench}",
         "--out", "{d}/ev"), setup=model_copy("student", model__safetensors=from_fixture("teacher")),
         names=("{d}/m",), note="loads as a randomly initialised model, exit 0"),
    Case("model-weights-of-another-model-sft", "model", C, (*SFT, "--student", "{d}/m"),
         setup=model_copy("student", model__safetensors=from_fixture("teacher")), names=("{d}/m",)),
    Case("model-weights-of-another-model-teacher", "model", C, (*KD, "--student", "{student}", "--teacher", "{d}/m"),
         setup=model_copy("teacher", model__safetensors=from_fixture("student")), needs=S, names=("{d}/m",)),
    Case("model-config-of-another-class", "model", C, (*EVAL_PTB, "--model", "{d}/m", "--bench", "{bench}",
         "--out", "{d}/ev"), setup=model_copy("student", config__json=from_fixture("teacher")),
         names=(("config.json", "{d}/m"),)),
    Case("model-unknown-family-config", "model", C, (*EVAL_PTB, "--model", "{d}/m", "--bench", "{bench}", "--out",
         "{d}/ev"),
         setup=model_copy("student", evl_ecg_adapter__json=deleted, config__json=json_edit(model_type="bert")),
         names=("config.json",), note="control"),
    Case("model-unknown-family-adapter-json", "model", C, (*EVAL_PTB, "--model", "{d}/m", "--bench", "{bench}",
         "--out", "{d}/ev"), setup=model_copy("student", evl_ecg_adapter__json=text_of('{"family": "foo"}')),
         names=("evl_ecg_adapter.json",)),
    Case("model-adapter-json-corrupt", "model", C, (*EVAL_PTB, "--model", "{d}/m", "--bench", "{bench}", "--out",
         "{d}/ev"), setup=model_copy("student", evl_ecg_adapter__json=text_of("{")), names=("evl_ecg_adapter.json",)),
    Case("model-tokenizer-missing", "model", C, (*EVAL_PTB, "--model", "{d}/m", "--bench", "{bench}", "--out",
         "{d}/ev"), setup=model_copy("student", tokenizer__json=deleted), names=(("tokenizer", "{d}/m"),)),
    Case("model-folder-missing", "model", C, (*EVAL_PTB, "--model", "{d}/nope", "--bench", "{bench}", "--out",
         "{d}/ev"), names=("nope",), note="control"),
    Case("model-folder-empty", "model", C, (*EVAL_PTB, "--model", "{d}/empty", "--bench", "{bench}", "--out",
         "{d}/ev"), setup=mkdir("empty"), names=("empty",)),
    Case("model-folder-is-a-file", "model", C, (*EVAL_PTB, "--model", "{d}/f.txt", "--bench", "{bench}", "--out",
         "{d}/ev"), setup=write("f.txt", "x"), names=("f.txt",)),
    # ------------------------------------------------------------------------------------------------ paths
    Case("path-record-image-dotdot", "paths", C, ("train", "sft", "--data", "{d}/c/bad.json", *SFT[4:]),
         setup=do(copy("corpus", "c"), records_file("c/bad.json", first(setitem("image", "../../../etc/passwd")))),
         names=(("bad.json", "synth-train-000000"),), note="control: refused today"),
    Case("path-record-image-absolute", "paths", C, ("train", "sft", "--data", "{d}/c/bad.json", *SFT[4:]),
         setup=do(copy("corpus", "c"), records_file("c/bad.json", first(setitem("image", "/etc/hostname")))),
         names=(("bad.json", "synth-train-000000"),), note="control"),
    Case("path-record-image-symlink-out", "paths", C, ("train", "sft", "--data", "{d}/c/bad.json", *SFT[4:]),
         setup=do(copy("corpus", "c"), lambda ctx: (ctx.d / "c/images/train/link.png").symlink_to("/etc/hostname"),
                  records_file("c/bad.json", first(setitem("image", "train/link.png")))),
         names=(("bad.json", "synth-train-000000", "link.png"),), note="control"),
    Case("path-bench-image-dotdot", "paths", CH, (*EVAL_PTB, "--model", "{student}", "--bench", "{d}/bench",
         "--out", "{d}/ev"), setup=bench_dir(first(setitem("image", "../../../etc/passwd"))), needs=S,
         names=("ptb-test.json",), check=eval_ok(reported="synth-ptb-test-00000")),
    # ------------------------------------------------------------------------------------------------ resume
    Case("kill-synth-5-times", "resume", (EXACT,), scenario=scenario_synth_kills, quick=False),
    Case("kill-synth-2-workers", "resume", (EXACT,), scenario=scenario_synth_kill_workers, quick=False),
    Case("kill-sft-mid-training", "resume", (EXACT,), scenario=_scenario_train("sft", "step:3"), needs=S,
         quick=False),
    Case("kill-distill-mid-training", "resume", (EXACT,), scenario=_scenario_train("kd", "step:3"), needs=ST,
         quick=False),
    Case("kill-sft-inside-checkpoint-write", "resume", (EXACT,), scenario=_scenario_train("sft", "ckpt:4"),
         needs=S, note="checkpoint-N/ without trainer_state.json blocks every rerun"),
    Case("kill-eval-mid-run", "resume", (EXACT,), scenario=scenario_eval_kill, needs=S, quick=False),
]  # fmt: skip


# ----------------------------------------------------------------------------------------------------- classify


def _squash(text: str) -> str:
    return SQUASH_RE.sub("", text)


def mentioned(name: str | tuple[str, ...], text: str, ctx: Ctx) -> bool:
    options = name if isinstance(name, tuple) else (name,)
    squashed = _squash(text)
    return any(_squash(ctx.fmt(o)) in squashed for o in options)


def error_line(text: str) -> str:
    lines = [ln.strip(" │┃") for ln in text.splitlines() if ln.strip(" │┃╭╮╰╯─")]
    for ln in lines:
        if re.match(r"(error|Error|ERROR)\b", ln) or "Invalid value" in ln:
            return ln
    return lines[-1] if lines else ""


def classify(case: Case, ctx: Ctx, run: Run) -> tuple[str, str]:
    """The outcome of one command (see the module docstring) and a one-line detail."""
    if run.timed_out:
        if run.rc is None:
            return HANG, f"no exit within {run.seconds:.0f} s (wall clock)"
        return HANG, f"still running after {case.timeout:g} s of CPU time"
    text = run.err + "\n" + run.out
    if run.exc or TRACEBACK_RE.search(text):
        tail = [ln.strip() for ln in (run.exc or text).splitlines() if ln.strip()]
        exc_lines = [ln for ln in tail if re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b", ln)]
        return TRACEBACK, (exc_lines[-1] if exc_lines else tail[-1] if tail else "")[:300]
    problem = case.check(ctx, run) if case.check else None
    line = error_line(run.err)
    if run.rc != 0:
        if problem:
            return WRONG, f"exit {run.rc}, and {problem}"
        if run.rc is not None and run.rc < 0:
            return UNCLEAR, f"killed by signal {-run.rc} with {line[:200]!r}"
        if CLEAR not in case.expect:
            return FALSE, line[:300]
        if not run.err.strip():
            return UNCLEAR, "non-zero exit without a message"
        missing = [n for n in case.names if not mentioned(n, run.err, ctx)]
        if missing:
            shown = [ctx.fmt(m if isinstance(m, str) else " / ".join(m)) for m in missing]
            return UNCLEAR, f"does not name {', '.join(shown)}: {line[:240]}"
        return CLEAR, line[:300]
    if problem:
        return WRONG, problem
    if HANDLED in case.expect:
        return HANDLED, "exit 0, result checked" if case.check else "exit 0"
    return WRONG, f"exit 0: the bad input was accepted ({(run.out.strip().splitlines() or [''])[-1][:160]})"


def run_case(case: Case, base: Fixtures, root: Path, cli: Callable[..., Run], *, inprocess: bool = False) -> Result:
    """Set up, run and classify one case in its own folder under ``root``."""
    d = root / case.name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    ctx = Ctx(base, d, cli)
    command = ""
    try:
        used = {m for a in case.argv for m in re.findall(r"\{(\w+)\}", a)} - {"d"}
        for need in (*case.needs, *sorted(used)):  # shared fixtures, built once: not counted in the case's time
            base.get(FIXTURE_OF.get(need, need))
    except Exception as exc:  # noqa: BLE001
        return Result(case, "setup failed", f"fixture: {type(exc).__name__}: {exc}"[:300], 0.0, command)
    t0 = time.perf_counter()
    try:
        if case.wrap and not mount_available():
            return Result(case, SKIPPED, "needs root with unshare and mount", 0.0, "")
        if case.setup:
            case.setup(ctx)
        if case.scenario is not None:  # the killed run is a subprocess; the others run as ``cli`` does
            outcome, detail = case.scenario(ctx)
            what = (case.scenario.__doc__ or "").strip().splitlines()[0] if case.scenario.__doc__ else ""
            return Result(case, outcome, detail, time.perf_counter() - t0, f"(scenario {case.name}) {what}")
        argv = [ctx.fmt(a) for a in case.argv]
        command = "evl-ecg " + " ".join(_quote(a, d) for a in argv)
        limits = {"timeout": wall_limit(case.timeout), "cpu": case.timeout}
        if case.wrap:
            cmd = wrapped([ctx.fmt(w) for w in case.wrap], cli_command(argv))
            run = run_process(cmd, cwd=d, **limits)
        elif case.fsize is not None:
            run = run_process(cli_command(argv), cwd=d, fsize=case.fsize, **limits)
        elif inprocess and case.inprocess:
            run = run_inprocess(argv, cwd=d, timeout=case.timeout)
        else:
            run = run_subprocess(argv, cwd=d, timeout=case.timeout)
        outcome, detail = classify(case, ctx, run)
        return Result(case, outcome, detail, time.perf_counter() - t0, command)
    except Exception as exc:  # noqa: BLE001 - a broken setup is reported, not a crash of the campaign
        return Result(case, "setup failed", f"{type(exc).__name__}: {exc}"[:300], time.perf_counter() - t0, command)


def _quote(arg: str, d: Path) -> str:
    arg = arg.replace(str(d), "$D")
    return f"'{arg}'" if any(c in arg for c in " '\"") else arg


# ----------------------------------------------------------------------------------------------------- main


def select(cases: Sequence[Case], group: str | None = None, quick: bool = False, names: Sequence[str] = ()):
    return [
        c
        for c in cases
        if (group is None or c.group == group) and (not quick or c.quick) and (not names or c.name in names)
    ]


def print_report(results: Sequence[Result], seconds: float, stream: Any = sys.stdout) -> None:
    width = max((len(r.case.name) for r in results), default=10)
    print(f"{'group':<8} {'case':<{width}} {'outcome':<20} {'expected':<22} {'s':>6}  detail", file=stream)
    for r in results:
        mark = "  " if r.ok else "!!"
        expected = " | ".join(r.case.expect)
        print(
            f"{r.case.group:<8} {r.case.name:<{width}} {r.outcome:<20} {expected:<22} {r.seconds:6.1f}{mark}"
            f"{r.detail[:160]}",
            file=stream,
        )
    counts = Counter(r.outcome for r in results)
    print("\ncounts: " + ", ".join(f"{o} {counts[o]}" for o in (*OUTCOMES, "setup failed") if counts[o]), file=stream)
    worse = [r for r in results if not r.ok]
    print(f"{len(results)} cases in {seconds:.0f} s; {len(worse)} worse than expected", file=stream)
    for r in worse:
        print(f"\n!! {r.case.name} [{r.case.group}]: {r.outcome} (expected {' or '.join(r.case.expect)})", file=stream)
        print(f"   {r.command}", file=stream)
        print(f"   {r.detail}", file=stream)
        if r.case.note:
            print(f"   issue: {r.case.note}", file=stream)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", choices=GROUPS, help="only this group's cases")
    parser.add_argument("--quick", action="store_true", help="only the cases that take seconds")
    parser.add_argument("--case", action="append", default=[], help="only this case (repeat)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--inprocess",
        action="store_true",
        help="run the bounded commands in this process through typer's CliRunner, as tests/test_hostile.py does "
        "(much faster: one interpreter start); the others still run in a subprocess",
    )
    args = parser.parse_args(argv)
    cases = select(CASES, args.group, args.quick, args.case)
    if args.list:
        for c in cases:
            print(f"{c.group:<8} {c.name:<46} {' | '.join(c.expect):<22} {'quick' if c.quick else ''}")
        return 0
    if not cases:
        parser.error("no case selected")
    root = Path(tempfile.mkdtemp(prefix="evl-hostile-"))
    t0 = time.perf_counter()
    results: list[Result] = []
    try:
        cli = run_inprocess if args.inprocess else run_subprocess
        if args.inprocess:
            import torch

            torch.set_num_threads(1)
        base = Fixtures(root / "_fixtures", cli)
        base.root.mkdir()
        for i, case in enumerate(cases, 1):
            result = run_case(case, base, root / "cases", cli, inprocess=args.inprocess)
            results.append(result)
            mark = "" if result.ok else "  !! worse than expected"
            print(f"[{i}/{len(cases)}] {case.name}: {result.outcome} ({result.seconds:.1f} s){mark}", file=sys.stderr)
        seconds = time.perf_counter() - t0
        print_report(results, seconds)
        if args.json:
            rows = [
                {"name": r.case.name, "group": r.case.group, "outcome": r.outcome, "expect": list(r.case.expect),
                 "ok": r.ok, "seconds": round(r.seconds, 2), "command": r.command, "detail": r.detail}
                for r in results
            ]  # fmt: skip
            args.json.write_text(json.dumps({"seconds": round(seconds, 1), "results": rows}, indent=1) + "\n")
    finally:
        if args.keep:
            print(f"work folder kept: {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
