"""``evl-ecg study``: every method of the paper's tables from one phase-1 checkpoint, over seeds, on a fresh test set.

Layout of ``out``::

    study.json                 its resume key (:mod:`evl_ecg.resume`): the settings and the teacher's fingerprint; a
                               rerun with others into the same folder is refused, naming the setting and both values
    data/                      the training corpus (train.json, val/<subset>.json for choosing settings)
    test/                      the reported benchmark: its own seed, ``test_ptb`` PTB-XL records, the other
                               subsets in ECGBench's proportions (bench/<subset>.json)
    phase1/seed-<s>/           the phase-1 (SFT) run(s): one shared by default, one per seed with phase1_seeds
    runs/<method>/seed-<s>/    one phase-2 run (pipeline run directory), its evaluation in eval/, and done.json
    results.json, results.md   mean +- std over seeds per benchmark and method, paired bootstrap against the control

Every run is a subprocess (``evl-ecg distill`` / ``evl-ecg eval run``), so each method's peak memory is its own
(``os.wait4``'s ``ru_maxrss``: Table 7). A run is finished when its ``done.json`` exists; a killed study rerun with
the same command reruns nothing it finished, and a run killed mid-way resumes from its own checkpoint.

The control is the paper's SFT row made fair: from the same phase-1 checkpoint, the same number of further steps
on the same data with CE only (method ``sft`` in phase 2). Every method is compared with it, never with the
phase-1 checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evl_ecg.files import atomic_write_bytes

#: The 11 distinct methods of the paper's Tables 1 and 6 (Table 6's last row is EVL-ECG itself).
TABLE1_METHODS = ("control", "vanilla-kl", "tinybert", "uld", "multilevel-ot", "dskd", "emkd", "rkd", "evl-ecg")
TABLE6_METHODS = ("ot", "ot+mhca")
STUDY_METHODS = TABLE1_METHODS + TABLE6_METHODS
#: The preset each study method trains with in phase 2 (the control: CE only).
PRESET = {"control": "sft"}


def known_methods() -> tuple[str, ...]:
    """What ``--methods`` may name: the control and every registered objective preset (the paper's 11 first; a
    preset a plugin registers joins the study without an edit here)."""
    from evl_ecg.distill.presets import list_presets

    extra = sorted(m for m in list_presets() if m not in STUDY_METHODS and m != "sft")
    return (*STUDY_METHODS, *extra)


def cached(method: str) -> bool:
    """Whether the study's shared teacher-output cache serves ``method``: its terms declare what they read of the
    teacher (:func:`evl_ecg.train.teacher_cache.method_fields`), and that is not every layer's attention maps
    (TinyBERT's: larger than running the teacher live)."""
    from evl_ecg.train.teacher_cache import method_fields

    if method == "control":
        return False
    fields = method_fields([PRESET.get(method, method)])
    return fields is not None and "attentions" not in fields


#: Multi-label subsets reported with strict macro AUC (and their bootstrap against the control).
REPORTED = ("ptb-test", "code15-test", "cpsc-test")
#: The paper's rows (SPEC section 4: AUC on PTB-XL, CODE-15%, CPSC) beside ours, where it gives them.
PAPER = {
    "teacher": {"ptb-test": 82.4, "code15-test": 90.7, "cpsc-test": 76.9},
    "control": {"ptb-test": 74.6, "code15-test": 85.0},
    "evl-ecg": {"ptb-test": 75.2, "code15-test": 86.4, "cpsc-test": 66.8},
}


#: The tiny preset's per-method phase-2 settings, as ``METHOD[,METHOD...]:KEY=VALUE`` entries (``evl-ecg study
#: --method-set``), chosen on a validation draw (docs/train.md section 4) and used by ``evl-ecg study`` and ``evl-ecg
#: demo`` unless ``--paper-objective``: with the paper's objective as written (MHCA summed over the features, alpha
#: from the first step, all positions) the tiny student returns to one answer for every ECG within 75 steps. Each
#: setting is a deviation row of docs/deviations.md; Table 6's rows get the settings of the terms they have.
TINY_METHOD_SETS: tuple[str, ...] = (
    "evl-ecg,ot+mhca:hidden_positions=response",
    "evl-ecg,ot+mhca:objective={alpha_warmup: 150, terms: {mhca: {reduction: mean}}}",
    "ot:objective={alpha_warmup: 150}",
)


def parse_method_set(entry: str) -> tuple[list[str], str]:
    """``"METHOD[,METHOD...]:KEY=VALUE"`` -> ``([methods], "KEY=VALUE")``; a malformed entry raises ValueError."""
    methods, _, setting = entry.partition(":")
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names or "=" not in setting or not setting.split("=", 1)[0].strip():
        raise ValueError(f"--method-set {entry!r}: expected METHOD[,METHOD...]:KEY=VALUE")
    return names, setting


def method_settings(entries: tuple[str, ...] | list[str], method: str) -> list[str]:
    """The ``KEY=VALUE`` settings of ``entries`` that name ``method``, in order."""
    return [setting for names, setting in map(parse_method_set, entries) if method in names]


class StudyError(RuntimeError):
    """A study that cannot proceed; the message names the run, the file or the setting."""


@dataclass(frozen=True)
class StudySettings:
    """Everything that determines a study's numbers."""

    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = STUDY_METHODS
    phase1_seeds: bool = False
    n_train: int = 2000
    n_val: int = 100
    test_ptb: int = 500
    data_seed: int = 0
    test_seed: int = 1000
    generator: int = 2
    phase2_steps: int = 300
    phase1_overrides: tuple[str, ...] = ()
    phase2_overrides: tuple[str, ...] = ()
    method_overrides: tuple[str, ...] = TINY_METHOD_SETS
    max_new_tokens: int = 32
    curve_points: int = 4
    curve_records: int | None = None
    teacher_cache: bool = True
    table7_steps: int = 20
    eval_subsets: tuple[str, ...] = REPORTED
    teacher: str | None = None
    quick: bool = False
    threads: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(known_methods()))
        if unknown:
            raise StudyError(f"unknown study method(s) {', '.join(unknown)}; choose from {', '.join(known_methods())}")
        if "control" not in self.methods:
            raise StudyError("the study needs the control (every method is compared with it): add 'control'")
        if not self.seeds:
            raise StudyError("--seeds: give at least one seed")
        if self.test_ptb < 1 or self.n_train < 1 or self.phase2_steps < 1:
            raise StudyError("test_ptb, n_train and phase2_steps must be >= 1")
        for entry in self.method_overrides:
            try:
                names, _ = parse_method_set(entry)
            except ValueError as exc:
                raise StudyError(str(exc)) from None
            unknown = sorted(set(names) - set(known_methods()))
            if unknown:
                raise StudyError(f"--method-set {entry!r}: unknown method(s) {', '.join(unknown)}")

    def method_sets(self, method: str) -> list[str]:
        """The ``--set KEY=VALUE`` arguments of ``method``'s own overrides (``method_overrides``), in order."""
        return [x for setting in method_settings(self.method_overrides, method) for x in ("--set", setting)]

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


#: Study settings that may change between runs of one study folder (recorded in its key, not compared).
STUDY_FREE = ("methods", "method_overrides")


def _legacy_study_key(doc: dict[str, Any]) -> dict[str, Any]:
    """A ``study.json`` of an older evl-ecg (the settings as one object) read as a resume key."""
    from evl_ecg.resume import KEY_FORMAT

    settings = {k: v for k, v in doc.items() if k not in STUDY_FREE}
    settings.setdefault("generator", 1)  # studies made before the setting drew generator 1's corpora
    return {"format": KEY_FORMAT, "command": "study", "settings": settings, "parts": {}, "info": {}}


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1, default=str) + "\n").encode("utf-8"))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "evl_ecg.cli", *args]


def run_process(cmd: Sequence[str], log_file: Path, threads: int) -> dict[str, float]:
    """Run ``cmd`` with its output in ``log_file``; ``{"seconds", "peak_rss_mb"}`` of that process alone.

    Raises :class:`StudyError` naming the log when it fails.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log_file.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log_file.open("ab") as log:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise StudyError(f"{' '.join(cmd[3:6])} failed (exit {proc.returncode}); see {log_file}: {tail[0][:300]}")
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1)}


def _distill_cmd(
    method: str,
    student: Path,
    teacher: Path,
    data: Path,
    out: Path,
    *,
    steps: int,
    save_steps: int,
    seed: int | None = None,
) -> list[str]:
    """The ``evl-ecg distill`` command of one study run (the control trains with the ``sft`` preset)."""
    cmd = _cli("distill", "--method", PRESET.get(method, method), "--data", str(data / "train.json"))
    cmd += ["--student", str(student), "--teacher", str(teacher), "--out", str(out)]
    settings = {"max_steps": steps, "save_steps": save_steps, "logging_steps": max(1, min(25, steps))}
    if seed is not None:
        settings = {"seed": seed, **settings}
    return cmd + [x for key, value in settings.items() for x in ("--set", f"{key}={value}")]


def _read_curve(run_dir: Path) -> list[dict[str, Any]]:
    from evl_ecg.eval.curves import CURVE_FILE

    path = run_dir / CURVE_FILE
    return json.loads(path.read_text()) if path.exists() else []


def study_data(
    out: Path, n_train: int, n_val: int, test_ptb: int, data_seed: int, test_seed: int, generator: int,
    log: Callable[[str], None],
) -> tuple[Path, Path]:  # fmt: skip
    """A study's training corpus with its validation split (``out/data``) and its test benchmark of a seed of its
    own in ECGBench's proportions (``out/test``), each built unless it is there."""
    from evl_ecg.data.corpus import build_corpus

    data, test = out / "data", out / "test"
    if not (data / "manifest.json").exists():
        log(f"[study] training corpus: {n_train} records + validation {n_val} per subset")
        build_corpus(data, n_train=n_train, n_bench=0, n_val=n_val, seed=data_seed, workers=2, progress=False,
                     generator=generator)  # fmt: skip
    if not (test / "manifest.json").exists():
        log(f"[study] test benchmark: seed {test_seed}, {test_ptb} PTB-XL records, ECGBench proportions")
        build_corpus(test, n_train=0, n_bench=test_ptb, seed=test_seed, workers=2, progress=False,
                     bench_proportions="ecgbench", generator=generator)  # fmt: skip
    return data, test


def claim_study_folder(out: Path, key: Any, legacy: Callable[[Any], dict[str, Any] | None] | None = None) -> None:
    """Check a study folder's resume key against ``key`` (a folder with other settings is refused with one
    :class:`StudyError` line), then create the folder and record the key."""
    from evl_ecg.resume import ResumeKeyError

    has_output = out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir())
    try:
        key.check(has_output=has_output, legacy=legacy)
    except ResumeKeyError as exc:
        raise StudyError(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    key.write()


def study_teacher(given: str | None) -> Path:
    """The teacher of a study: ``given``, else the shipped tiny teacher."""
    if given:
        return Path(given)
    from evl_ecg.models.tiny import shipped_teacher

    shipped = shipped_teacher()
    if shipped is None:
        raise StudyError("no teacher: give --teacher DIR (the package ships none)")
    return shipped


class Study:
    """One study folder: :meth:`run` does (or resumes) everything and writes the results."""

    def __init__(self, out: str | os.PathLike[str], settings: StudySettings, log: Callable[[str], None] = print):
        self.out = Path(out)
        self.settings = settings
        self.log = log

    def _fresh_run(self, run_dir: Path, method: str) -> dict | None:
        """The finished result of ``run_dir`` if it ran with ``method``'s current ``--method-set`` overrides; else
        None, after removing a run (finished or partial) made with other overrides, so that it reruns from scratch.
        The overrides are recorded in ``run_dir/method_set.json`` before the run starts."""
        wanted = self.settings.method_sets(method)
        marker, done = run_dir / "method_set.json", run_dir / "done.json"
        found = json.loads(marker.read_text()) if marker.exists() else ([] if run_dir.exists() else None)
        if found is not None and found != wanted:
            self.log(f"[study] {run_dir.relative_to(self.out)}: made with other --method-set overrides; rerunning")
            shutil.rmtree(run_dir)
        elif done.exists():
            return json.loads(done.read_text())
        _write_json(marker, wanted)
        return None

    # ---- stages ------------------------------------------------------------------------------------------------
    def resume_key(self) -> Any:
        """The study's :class:`~evl_ecg.resume.ResumeKey`, kept in ``study.json``: every setting, and the teacher's
        fingerprint (a teacher folder of the same name holding other weights would mix two teachers' runs). Methods
        may grow, and a method's own overrides rerun that method only (:meth:`_fresh_run`): recorded, not compared."""
        from evl_ecg.models.fingerprint import model_fingerprint
        from evl_ecg.resume import ResumeKey

        wanted = self.settings.to_json()
        info = {k: wanted.pop(k) for k in STUDY_FREE}
        teacher = self._teacher()
        if not teacher.is_dir():
            raise StudyError(f"--teacher {teacher}: no such model folder")
        wanted["teacher_fingerprint"] = model_fingerprint(teacher)["digest"][:16]
        return ResumeKey(self.out, "study", wanted, info=info, fresh_option=None, path=self.out / "study.json")

    def _check_settings(self) -> None:
        claim_study_folder(self.out, self.resume_key(), legacy=_legacy_study_key)

    def _data(self) -> tuple[Path, Path]:
        s = self.settings
        return study_data(self.out, s.n_train, s.n_val, s.test_ptb, s.data_seed, s.test_seed, s.generator, self.log)

    def _teacher(self) -> Path:
        return study_teacher(self.settings.teacher)

    def _phase1(self, seed: int, data: Path) -> Path:
        s = self.settings
        key = seed if s.phase1_seeds else s.seeds[0]
        run_dir = self.out / "phase1" / f"seed-{key}"
        if (run_dir / "done.json").exists():
            return run_dir / "student"
        self.log(f"[study] phase 1 (SFT), seed {key}")
        quick = ["--set", "max_steps=4", "--set", "pretrain_vision_steps=2", "--set", "pretrain_vision_records=32"]
        overrides = [x for o in s.phase1_overrides for x in ("--set", o)] + (quick if s.quick else [])
        cmd = _cli("train", "sft", "--data", str(data / "train.json"), "--out", str(run_dir), "--set", f"seed={key}")
        usage = run_process([*cmd, *overrides], run_dir.with_suffix(".log"), s.threads)
        _write_json(run_dir / "done.json", usage)
        return run_dir / "student"

    def _cache(self, teacher: Path, data: Path) -> Path | None:
        """The teacher-output cache of every cached method (built once, in its own process), or None."""
        s = self.settings
        methods = [m for m in s.methods if cached(m)]
        if not s.teacher_cache or not methods:
            return None
        cache = self.out / "teacher-cache"
        done = self.out / "teacher-cache.done.json"
        fields = self._cache_fields(methods)
        if done.exists():
            built = json.loads(done.read_text())
            has = set(built.get("fields") or []) if "fields" in built else None
            if not set(methods) <= set(built.get("methods", [])) or (has is not None and not fields <= has):
                # built for fewer methods or settings (the study grew): the new ones' fields are missing
                self.log("[study] the teacher-output cache lacks fields the study's methods now read: rebuilding it")
                done.unlink()
                if cache.exists():
                    shutil.rmtree(cache)
        if not done.exists():
            self.log(f"[study] teacher-output cache for {', '.join(methods)}")
            cmd = _cli(
                "train", "cache", "--out", str(cache), "--teacher", str(teacher), "--data", str(data / "train.json")
            )
            cmd += [x for m in methods for x in ("--method", m)]
            cmd += [x for f in sorted(fields) for x in ("--field", f)]
            usage = run_process(cmd, self.out / "teacher-cache.log", s.threads)
            size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
            _write_json(done, {**usage, "bytes": size, "methods": methods, "fields": sorted(fields)})
        return cache

    def _cache_fields(self, methods: list[str]) -> set[str]:
        """What the cached methods read of the teacher with the objectives they will train with: each method's
        preset after the study's phase-2 overrides and its own ``--method-set`` ones (resolved as ``distill`` does)."""
        from evl_ecg.train.config import load_config, tiny_config_path
        from evl_ecg.train.teacher_cache import method_fields

        s = self.settings
        out: set[str] = set()
        for method in methods:
            sets = [*s.phase2_overrides, *method_settings(s.method_overrides, method)]
            cfg = load_config(tiny_config_path("kd"), sets, phase="kd", method=PRESET.get(method, method))
            out |= set(method_fields([PRESET.get(method, method)], cfg.objective) or ())
        return out

    def _table7(self, method: str, student: Path, teacher: Path, data: Path, cache: Path | None) -> dict:
        """Seconds per step and peak RSS of ``method`` with the live teacher and (if cached) with the cache: short
        runs of ``table7_steps`` steps, each its own process, no evaluation inside."""
        s = self.settings
        out: dict[str, Any] = {}
        variants = [("live", None)] + ([("cache", cache)] if cache is not None and cached(method) else [])
        for name, cache_dir in variants:
            run_dir = self.out / "table7" / method / name
            finished = self._fresh_run(run_dir, method)
            if finished is not None:
                out[name] = finished
                continue
            done = run_dir / "done.json"
            steps = 2 if s.quick else s.table7_steps
            cmd = _distill_cmd(method, student, teacher, data, run_dir / "train", steps=steps, save_steps=steps)
            cmd += s.method_sets(method)
            if cache_dir is not None:
                cmd += ["--set", f"teacher_cache={cache_dir}"]
            usage = run_process(cmd, run_dir / "train.log", s.threads)
            history = json.loads((run_dir / "train" / "log_history.json").read_text())
            runtime = next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), None)
            out[name] = {"seconds_per_step": round(float(runtime) / steps, 4) if runtime else None, **usage}
            _write_json(done, out[name])
        return out

    def _eval_cmd(self, model: Path, test: Path, run_dir: Path) -> list[str]:
        """``evl-ecg eval run`` of ``model`` on the test benchmark's reported subsets, into ``run_dir/eval``."""
        s = self.settings
        subsets = [x for sub in s.eval_subsets for x in ("--subset", sub)]
        cmd = _cli("eval", "run", "--model", str(model), "--bench", str(test / "bench"), "--out", str(run_dir / "eval"))
        return cmd + ["--max-new-tokens", str(8 if s.quick else s.max_new_tokens), *subsets]

    def _teacher_eval(self, teacher: Path, test: Path) -> dict:
        """The teacher on the same test benchmark, once (a frozen model: no seeds), for the control -> teacher gap."""
        run_dir = self.out / "runs" / "teacher"
        done = run_dir / "done.json"
        if done.exists():
            return json.loads(done.read_text())
        self.log("[study] the teacher on the test benchmark")
        run_dir.mkdir(parents=True, exist_ok=True)
        evaluation = run_process(self._eval_cmd(teacher, test, run_dir), run_dir / "eval.log", self.settings.threads)
        result = {
            "method": "teacher",
            "seed": None,
            "eval": evaluation,
            "scores": str(run_dir / "eval" / "scores.json"),
        }
        _write_json(done, result)
        return result

    def _phase2(
        self, method: str, seed: int, student: Path, teacher: Path, data: Path, test: Path, cache: Path | None = None
    ) -> dict:
        s = self.settings
        run_dir = self.out / "runs" / method / f"seed-{seed}"
        done = run_dir / "done.json"
        finished = self._fresh_run(run_dir, method)
        if finished is not None:
            return finished
        steps = 3 if s.quick else s.phase2_steps
        self.log(f"[study] {method}, seed {seed}: {steps} phase-2 steps")
        cmd = _distill_cmd(
            method, student, teacher, data, run_dir / "train", steps=steps, save_steps=max(1, steps // 2), seed=seed
        )
        overrides = [x for o in s.phase2_overrides for x in ("--set", o)] + s.method_sets(method)
        if cache is not None and cached(method):  # the same teacher outputs, computed once (tested equal)
            overrides += ["--set", f"teacher_cache={cache}"]
        if s.curve_points > 0:  # the learning curve on the validation split, never on the test benchmark
            overrides += ["--set", f"curve_every={max(1, steps // s.curve_points)}"]
            overrides += ["--set", f"curve_bench={data / 'val' / 'ptb-test.json'}"]
            if s.curve_records:
                overrides += ["--set", f"curve_records={s.curve_records}"]
        train = run_process([*cmd, *overrides], run_dir / "train.log", s.threads)
        history = json.loads((run_dir / "train" / "log_history.json").read_text())
        runtime = next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), None)
        curve = _read_curve(run_dir / "train")
        if runtime is not None:  # the learning curve's evaluations run inside the Trainer's clock
            runtime = max(0.0, float(runtime) - sum(p.get("seconds", 0.0) for p in curve if p["step"] > 0))
        evaluation = run_process(
            self._eval_cmd(run_dir / "train" / "student", test, run_dir), run_dir / "eval.log", s.threads
        )
        result = {
            "method": method,
            "seed": seed,
            "steps": steps,
            "train": train,
            "seconds_per_step": round(runtime / steps, 4) if runtime else None,
            "eval": evaluation,
            "scores": str(run_dir / "eval" / "scores.json"),
            "curve": curve,
        }
        _write_json(done, result)
        return result

    # ---- results -----------------------------------------------------------------------------------------------
    def results(self, runs: list[dict], test: Path) -> dict[str, Any]:
        from evl_ecg.eval.stats import label_matrices, macro_auc, mean_std, paired_bootstrap

        s = self.settings
        matrices: dict[str, dict[str, dict[int, tuple]]] = {}
        likelihood: dict[str, dict[str, list[float]]] = {}
        for run in runs:
            eval_dir = Path(run["scores"]).parent
            doc = json.loads(Path(run["scores"]).read_text())
            # the teacher is one frozen model: its predictions stand beside every seed's, so that the bootstrap pairs
            seeds = [run["seed"]] if run["seed"] is not None else list(s.seeds)
            for subset in s.eval_subsets:
                pred = eval_dir / subset / "predictions.jsonl"
                if pred.exists():
                    _, Y, P = label_matrices(test / "bench" / f"{subset}.json", pred)
                    for seed in seeds:
                        matrices.setdefault(subset, {}).setdefault(run["method"], {})[seed] = (Y, P)
                auc = (doc.get("likelihood") or {}).get(subset, {}).get("auc")
                if auc is not None:
                    likelihood.setdefault(subset, {}).setdefault(run["method"], []).append(100 * float(auc))
        table: dict[str, dict[str, Any]] = {}
        for subset, by_method in matrices.items():
            control = by_method.get("control", {})
            for method, by_seed in by_method.items():
                aucs = [macro_auc(Y, P) for Y, P in by_seed.values()]
                mean, std = mean_std(aucs)
                row = {"auc_mean": mean, "auc_std": std, "auc_per_seed": aucs, "seeds": sorted(by_seed)}
                lk = likelihood.get(subset, {}).get(method)
                if lk:
                    row["likelihood_auc_mean"], row["likelihood_auc_std"] = mean_std(lk)
                if method == "teacher":  # one model, one evaluation
                    row.update(auc_std=0.0, auc_per_seed=aucs[:1], seeds=[])
                if method != "control" and control:
                    row["vs_control"] = paired_bootstrap(by_seed, control, n_boot=200 if s.quick else 2000)
                table.setdefault(method, {})[subset] = row
        add_gap_closed(table)
        cost = {}
        for run in (r for r in runs if "train" in r):
            entry = cost.setdefault(run["method"], {"seconds_per_step": [], "peak_rss_mb": []})
            if run.get("seconds_per_step"):
                entry["seconds_per_step"].append(run["seconds_per_step"])
            entry["peak_rss_mb"].append(run["train"]["peak_rss_mb"])
        table7 = {
            m: {"seconds_per_step": mean_std(v["seconds_per_step"]), "peak_rss_mb": mean_std(v["peak_rss_mb"])}
            for m, v in cost.items()
        }
        return {"settings": s.to_json(), "table": table, "table7": table7, "paper": PAPER, "runs": runs}

    def figures(self, res: dict[str, Any], runs: list[dict]) -> dict[str, str]:
        """``figures/``: the learning curves of the control and EVL-ECG (seeds' band), one bar chart per table."""
        from evl_ecg.eval.figures import plot_bars, plot_learning_curves

        fig_dir = self.out / "figures"
        paths: dict[str, str] = {}
        curves = {m: [r["curve"] for r in runs if r["method"] == m and r.get("curve")] for m in ("control", "evl-ecg")}
        curves = {m: c for m, c in curves.items() if c}
        if curves:
            paths["learning_curves"] = str(
                plot_learning_curves(curves, fig_dir / "learning_curves.png", ylabel="strict PTB-XL AUC (validation)")
            )
        table = res["table"]
        for name, methods in (("table1", TABLE1_METHODS), ("table6", ("control", *TABLE6_METHODS, "evl-ecg"))):
            values = {
                m: (table[m]["ptb-test"]["auc_mean"], table[m]["ptb-test"]["auc_std"])
                for m in methods
                if m in table and "ptb-test" in table[m]
            }
            if values:
                paths[name] = str(
                    plot_bars(values, fig_dir / f"{name}.png", ylabel="strict PTB-XL AUC (test)", title=name)
                )
        t7 = {m: tuple(v["seconds_per_step"]) for m, v in res["table7"].items()}
        if t7:
            paths["table7"] = str(plot_bars(t7, fig_dir / "table7.png", ylabel="seconds per step", title="table7"))
        return paths

    def markdown(self, res: dict[str, Any]) -> str:
        s = self.settings
        subsets = list(s.eval_subsets)
        lines = [
            "# evl-ecg study (synthetic ECGs; not a clinical evaluation)",
            "",
            f"Seeds {list(s.seeds)}; {3 if s.quick else s.phase2_steps} phase-2 steps"
            + (" (--quick: a smoke test, not a result)" if s.quick else "")
            + " from "
            + ("one phase-1 checkpoint per seed" if s.phase1_seeds else "one shared phase-1 checkpoint")
            + f"; test benchmark seed {s.test_seed} ({s.test_ptb} PTB-XL records). Strict macro AUC, mean +- std over "
            "seeds; [lo, hi] is the 95 % paired bootstrap interval (records x seeds) of the difference to the control.",
            "",
            "| method | "
            + " | ".join(subsets)
            + " | "
            + " | ".join(f"{x} vs control" for x in subsets)
            + " | gap closed |",
            "|---|" + "---:|" * (2 * len(subsets) + 1),
        ]
        notes = [f"`{o}`" for o in s.phase2_overrides] + [f"`{o}`" for o in s.method_overrides]
        if notes:  # the settings that are not the presets' own
            lines[3:3] = ["Overrides (`--phase2-set`, then `--method-set METHOD:KEY=VALUE`): " + ", ".join(notes), ""]
        for method in [m for m in ("teacher", *known_methods()) if m in res["table"]]:
            row = res["table"][method]
            cells = [f"{row[x]['auc_mean']:.1f} +- {row[x]['auc_std']:.1f}" if x in row else "-" for x in subsets]
            diffs = []
            for x in subsets:
                b = row.get(x, {}).get("vs_control")
                diffs.append(f"{b['diff']:+.1f} [{b['lo']:+.1f}, {b['hi']:+.1f}]" if b else "-")
            closed = [f"{100 * row[x]['gap_closed']:.0f} %" if "gap_closed" in row.get(x, {}) else "-" for x in subsets]
            name = "teacher (one model)" if method == "teacher" else method
            lines.append(
                f"| {name} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " | " + " / ".join(closed) + " |"
            )
        lines += [
            "",
            "Gap closed: the method's difference to the control over the teacher's, per subset in the order above; "
            "only where the teacher's own interval against the control is above 0.",
            "",
            "Paper (SPEC section 4, real data, 2B student): " + json.dumps(PAPER),
            "",
        ]
        lines += [
            "## Table 7 (this machine)",
            "",
            f"Short runs of {2 if s.quick else s.table7_steps} steps, each its own process (peak RSS of that process);"
            " the grid's runs (with their learning-curve evaluations subtracted) beside them.",
            "",
            "| method | s/step live | peak RSS live (MB) | s/step cache | peak RSS cache (MB) | s/step in the grid |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for method, c in res["table7"].items():
            t7 = res.get("table7_runs", {}).get(method, {})
            live, cached = t7.get("live", {}), t7.get("cache", {})

            def cell(d: dict, key: str, fmt: str) -> str:
                return format(d[key], fmt) if d.get(key) is not None else "-"

            sps = c["seconds_per_step"]
            lines.append(
                f"| {method} | {cell(live, 'seconds_per_step', '.3f')} | {cell(live, 'peak_rss_mb', '.0f')} | "
                f"{cell(cached, 'seconds_per_step', '.3f')} | {cell(cached, 'peak_rss_mb', '.0f')} | "
                f"{sps[0]:.3f} +- {sps[1]:.3f} |"
            )
        if res.get("teacher_cache"):
            tc = res["teacher_cache"]
            lines += ["", f"Teacher-output cache: {tc['bytes'] / 1e6:.1f} MB, built in {tc['seconds']:.0f} s."]
        return "\n".join(lines) + "\n"

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self._check_settings()
        data, test = self._data()
        teacher = self._teacher()
        s = self.settings
        runs = []
        cache = None
        for seed in s.seeds:
            student = self._phase1(seed, data)
            if cache is None:
                cache = self._cache(teacher, data)
            for method in s.methods:
                runs.append(self._phase2(method, seed, student, teacher, data, test, cache))
        runs.append(self._teacher_eval(teacher, test))
        first = self._phase1(s.seeds[0], data)
        # --quick times three methods only (the suite's budget); a real study times every method
        timed = [m for m in s.methods if not s.quick or m in ("control", "evl-ecg", "vanilla-kl")]
        table7 = {m: self._table7(m, first, teacher, data, cache) for m in timed}
        res = self.results(runs, test)
        res["table7_runs"] = table7
        done = self.out / "teacher-cache.done.json"
        res["teacher_cache"] = json.loads(done.read_text()) if done.exists() else None
        res["figures"] = self.figures(res, runs)
        res["wall_seconds"] = round(time.perf_counter() - t0, 1)
        _write_json(self.out / "results.json", res)
        atomic_write_bytes(self.out / "results.md", self.markdown(res).encode("utf-8"))
        _write_json(self.out / "summary.json", study_summary(res))
        self.log(f"[study] wrote {self.out / 'results.md'} ({res['wall_seconds']:.0f} s this invocation)")
        return res


def add_gap_closed(table: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Give each method's row (``table[method][subset]``) its share of the control -> teacher gap, ``gap_closed``:
    its paired difference to the control over the teacher's; only where the teacher's own interval against the
    control lies above 0 (a ratio over a gap that may be 0 says nothing)."""
    for method, rows in table.items():
        for subset, row in rows.items():
            teacher = table.get("teacher", {}).get(subset, {}).get("vs_control", {})
            if method not in ("teacher", "control") and teacher.get("lo", 0) > 0 and "vs_control" in row:
                row["gap_closed"] = row["vs_control"]["diff"] / teacher["diff"]


def study_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The compact form of a study's ``results.json`` (``summary.json``; the shipped ``assets/tiny-study.json``):
    the settings, and per method and subset the strict AUC's mean, std and seeds, the paired bootstrap against the
    control and the share of the gap closed; Table 7's seconds per step."""
    keep = ("seeds", "phase2_steps", "test_seed", "test_ptb", "n_train", "n_val", "data_seed", "method_overrides")
    table = {
        method: {
            subset: {
                "mean": round(row["auc_mean"], 2),
                "std": round(row["auc_std"], 2),
                "seeds": row.get("seeds", []),
                **(
                    {"vs_control": {k: round(v, 2) for k, v in row["vs_control"].items()}}
                    if "vs_control" in row
                    else {}
                ),
                **({"gap_closed": round(row["gap_closed"], 3)} if "gap_closed" in row else {}),
            }
            for subset, row in rows.items()
        }
        for method, rows in results["table"].items()
    }
    return {
        "summary_of": "evl-ecg study (strict macro AUC on the study's test benchmark)",
        "settings": {k: results["settings"].get(k) for k in keep},
        "table": table,
        "table7": results.get("table7_runs", {}),
        "wall_seconds": results.get("wall_seconds"),
    }


def run_study(out: str | os.PathLike[str], settings: StudySettings, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the study in ``out``; returns what ``results.json`` holds."""
    return Study(out, settings, log).run()


__all__ = ["PRESET", "STUDY_METHODS", "StudyError", "StudySettings", "run_study"]
