"""``evl-ecg demo``: the whole pipeline on the offline default, with each stage's time and a results table.

The default is the regime where distillation pays (``labels="10%"``, docs/train.md section 6a): synth (a synthetic
ECGInstruct-style corpus with a validation split, and ECGBench-style subsets) -> the label budget (``labelled.json``
and the unlabelled ``pool.json``, :mod:`evl_ecg.data.budget`) -> the shipped tiny teacher answers the pool -> student
SFT on the labelled records (phase 1; vision pretraining on their findings only) -> from that checkpoint, the same
phase-2 steps three times, each keeping its best validation point: the control (the labelled records), the primary
method of the label study (sequence-level KD: the teacher's pool answers beside the labelled records) and the
primary method with EVL-ECG's terms -> evaluation with both scorers -> ``results.json`` / ``results.md``.

``labels="all"``: the paper's regime (every record labelled): SFT -> the control (CE only) and KD with EVL-ECG on
the same phase-2 budget. One seed is never the evidence: ``evl-ecg study`` (``--labels``) runs the seeds.

Every stage is resumable: rerunning the demo in the same directory reuses what finished.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from evl_ecg.files import atomic_write_bytes
from evl_ecg.models.tiny import shipped_teacher
from evl_ecg.train.config import load_config, tiny_config_path


def _atomic_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, default=str).encode("utf-8"))


def _stage(name: str, timings: dict[str, float], fn, *args, **kwargs):
    t0 = time.perf_counter()
    print(f"[demo] {name} ...", flush=True)
    out = fn(*args, **kwargs)
    timings[name] = round(time.perf_counter() - t0, 1)
    print(f"[demo] {name} done in {timings[name]:.1f} s", flush=True)
    return out


def _train(phase: str, out_dir: Path, overrides: dict[str, Any], quick: bool, sets: list[str] | None = None) -> Path:
    from evl_ecg.train.pipeline import run

    student_dir = out_dir / "student"
    marker = out_dir / "method_set.json"  # the settings this run trains with: another set is another run
    if marker.exists() and json.loads(marker.read_text()) != (sets or []):
        raise ValueError(
            f"{out_dir}: trained with other settings ({json.loads(marker.read_text())}, now {sets or []}); "
            "use another --out (for example one for --paper-objective)"
        )
    if (student_dir / "config.json").exists():
        if not marker.exists() and sets:
            raise ValueError(f"{out_dir}: a student of an earlier demo, settings unknown; use another --out")
        return student_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_json(marker, sets or [])
    #: --quick: a smoke test of every stage, not a trained model.
    quick_settings = {"max_steps": 4, "save_steps": 2, "logging_steps": 1}
    quick_settings.update(pretrain_vision_steps=2, pretrain_vision_records=32)
    extra = quick_settings if quick else {}
    cfg = load_config(tiny_config_path(phase), sets, output_dir=str(out_dir), **{**overrides, **extra})
    from evl_ecg.eval.curves import curve_callbacks

    return run(cfg, callbacks=curve_callbacks(cfg)).student_dir


def write_figures(
    out: Path, data: Path, teacher_dir: Path, sft_dir: Path, kd_dir: Path, kd_run: Path | None = None
) -> dict[str, Path]:
    """``out/figures/``: the Sinkhorn plan of one benchmark ECG under the trained ``W_p`` (paper Figure 2), the
    singular-value spectra of the teacher's and both students' visual tokens over a few ECGs (Figure 3), and the
    curve of every loss term of the KD run (``kd_run``, the folder that trained ``kd_dir``: by default its parent)."""
    import torch
    from safetensors.torch import load_file

    from evl_ecg.data.records import load_records, open_image
    from evl_ecg.eval.figures import plot_loss_curves, plot_singular_values, plot_transport_plan
    from evl_ecg.models import load_adapter
    from evl_ecg.train.pipeline import last_complete_checkpoint

    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    records = load_records(data / "bench" / "ptb-test.json")[:8]
    images = [open_image(r, data / "images") for r in records]

    def visual_tokens(model_dir: Path) -> list[torch.Tensor]:
        adapter = load_adapter(model_dir)
        tokens = []
        with torch.no_grad():
            for record, image in zip(records, images, strict=True):
                side = adapter.forward(adapter.collate([adapter.encode(record, image)]))
                tokens.append(side.visual[0][side.visual_mask[0]].float())
        return tokens

    teacher, sft, kd = visual_tokens(teacher_dir), visual_tokens(sft_dir), visual_tokens(kd_dir)
    paths: dict[str, Path] = {}
    kd_run = kd_run if kd_run is not None else kd_dir.parent
    checkpoint = last_complete_checkpoint(kd_run)
    weights = Path(checkpoint) / "objective.safetensors" if checkpoint else None
    objective = load_file(str(weights)) if weights is not None and weights.exists() else {}
    proj = objective.get("terms.ot.proj.weight")
    if proj is not None:
        paths["transport_plan"] = plot_transport_plan(
            teacher[0], kd[0], proj, path=fig_dir / "transport_plan.png", title=f"Sinkhorn plan, {records[0].id}"
        )
    paths["singular_values"] = plot_singular_values(
        {"teacher": torch.cat(teacher), "student (control)": torch.cat(sft), "student (EVL-ECG)": torch.cat(kd)},
        fig_dir / "singular_values.png",
        title="Visual-token spectra over 8 ptb-test ECGs",
    )
    history = json.loads((kd_run / "log_history.json").read_text())
    paths["loss_curves"] = plot_loss_curves(history, fig_dir / "loss_curves.png")
    return paths


#: the study behind the demo's one seed (``evl-ecg study``; written by ``evl_ecg.experiments.study.study_summary``)
SHIPPED_STUDY = Path(__file__).resolve().parents[1] / "assets" / "tiny-study.json"
#: the label study behind the budget demo (``evl-ecg study --labels``: its ``summary.json``)
SHIPPED_LABEL_STUDY = Path(__file__).resolve().parents[1] / "assets" / "tiny-label-study.json"
#: the budget demo's primary method when no label-study summary names one: the pilot's choice on validation
DEFAULT_PRIMARY = "seq-kd"
#: phase-1 steps of the budget demo when no label-study summary has a choice for its budget (the label study's
#: choice on validation at 10 %, seed 0); phase-2 steps of every row (the label study's default)
BUDGET_PHASE1_STEPS = 1000
BUDGET_VAL_RECORDS = 100
#: demo model -> study method
STUDY_ROWS = {"teacher": "teacher", "control-student": "control", "evl-ecg-student": "evl-ecg"}
STUDY_SUBSETS = ("ptb-test", "code15-test", "cpsc-test")


def load_study_summary(path: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """A study's summary: ``path`` (a study folder, its ``results.json`` or a ``tiny-study.json``), else the
    shipped one (None if the package has none)."""
    from evl_ecg.experiments.study import study_summary

    target = Path(path) if path is not None else SHIPPED_STUDY
    if target.is_dir():
        target = target / "summary.json" if (target / "summary.json").exists() else target / "results.json"
    if not target.exists():
        if path is not None:
            raise FileNotFoundError(f"--study {path}: no results.json (run `evl-ecg study --out DIR` first)")
        return None
    doc = json.loads(target.read_text())
    return doc if "summary_of" in doc else study_summary(doc)


def beside_study(rows: dict[str, Any], study: dict[str, Any], seed: int, generator: int | None = None) -> str:
    """Markdown: this run's strict AUC of each model beside the study's mean +- std over seeds; ``generator`` (this
    run's) is compared with the study's (absent from its settings: generator 1), and a study of another generator or
    of a labelled other teacher (``settings.teacher``) is said to be so."""
    head = "| model | " + " | ".join(f"{x} (this run) | {x} (study)" for x in STUDY_SUBSETS) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(STUDY_SUBSETS))]
    for row in rows["rows"]:
        method = STUDY_ROWS.get(row["method"])
        if row.get("scorer") != "strict" or method is None:
            continue
        cells = []
        for subset in STUDY_SUBSETS:
            mine = row["cells"].get(f"{subset}/AUC", {}).get("mean")
            theirs = study["table"].get(method, {}).get(subset)
            cells.append("-" if mine is None else f"{mine:.1f}")
            if theirs is None:
                cells.append("-")
            elif method == "teacher":
                cells.append(f"{theirs['mean']:.1f} (one model)")
            else:
                cells.append(f"{theirs['mean']:.1f} +- {theirs['std']:.1f}")
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    s = study["settings"]
    theirs = s.get("generator", 1)
    lines += [
        "",
        f"This run: seed {seed}, {rows.get('records', 'the demo’s')} records per subset"
        + (f", generator {generator}" if generator is not None else "")
        + f". Study: seeds {s['seeds']}, {s['phase2_steps']} phase-2 steps, test benchmark seed {s['test_seed']} "
        f"({s['test_ptb']} PTB-XL records, the others in ECGBench's proportions), generator {theirs}"
        + (f", {s['teacher']}" if s.get("teacher") else "")
        + "; mean +- std over the seeds. One seed is never the evidence.",
    ]
    if generator is not None and generator != theirs:
        lines += [
            "",
            f"**Not the same setting:** the study drew generator-{theirs} corpora"
            + (f" with {s['teacher']}" if s.get("teacher") else "")
            + f", this run generator {generator}: its columns are the earlier setting's numbers, not this run's "
            "expectation (`evl-ecg study --out DIR` gives a study of this setting; `--study DIR` puts it here).",
        ]
    return "\n".join(lines)


def load_label_study_summary(path: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """A label study's summary: ``path`` (its folder or its ``summary.json``), else the shipped one (None if the
    package has none)."""
    target = Path(path) if path is not None else SHIPPED_LABEL_STUDY
    if target.is_dir():
        target = target / "summary.json"
    if not target.exists():
        if path is not None:
            raise FileNotFoundError(f"--study {path}: no summary.json (run `evl-ecg study --labels ... --out DIR`)")
        return None
    doc = json.loads(target.read_text())
    if "primary" not in doc or "table" not in doc:
        raise ValueError(f"--study {target}: not a label study's summary (evl-ecg study --labels)")
    return doc


def beside_label_study(rows: dict[str, Any], study: dict[str, Any], seed: int, budget: str) -> str:
    """Markdown: this run's strict AUC of each model beside the label study's mean +- std over seeds at the same
    budget (the teacher: one model)."""
    table = study["table"].get(budget, {})
    head = "| model | " + " | ".join(f"{x} (this run) | {x} (study)" for x in STUDY_SUBSETS) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(STUDY_SUBSETS))]
    for row in rows["rows"]:
        if row.get("scorer") != "strict":
            continue
        name = row["method"].removesuffix("-student")
        cells = []
        for subset in STUDY_SUBSETS:
            mine = row["cells"].get(f"{subset}/AUC", {}).get("mean")
            cells.append("-" if mine is None else f"{mine:.1f}")
            if name == "teacher":
                theirs = (study.get("teacher") or {}).get(subset)
                cells.append("-" if theirs is None else f"{theirs:.1f} (one model)")
            else:
                cell = table.get(name, {}).get(subset)
                cells.append("-" if cell is None else f"{cell['auc_mean']:.1f} +- {cell['auc_std']:.1f}")
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    s = study["settings"]
    seeds = s["seeds"] if budget == s["main_budget"] else s["seeds"][: s["other_seeds"]]
    lines += [
        "",
        f"This run: seed {seed}, {rows.get('records', 'the demo’s')} records per subset, {budget} labels. Study: "
        f"seeds {seeds}, test benchmark seed {s['test_seed']} ({s['test_ptb']} PTB-XL records), corpus seed "
        f"{s['data_seed']}; mean +- std over the seeds; primary method {study['primary']['row']} (chosen on "
        "validation)" + (" (partial: the study was still running)" if study.get("partial") else "") + ". "
        "One seed is never the evidence.",
    ]
    return "\n".join(lines)


def _check_teacher(given: Path, teacher_dir: Path) -> None:
    """``--teacher`` must be a model folder, and the one a demo folder already holds (same weights), if any."""
    from evl_ecg.models.fingerprint import model_fingerprint

    if not (given / "config.json").is_file():
        raise FileNotFoundError(f"--teacher {given}: not a model folder (no config.json)")
    if (teacher_dir / "config.json").exists():
        if model_fingerprint(given)["digest"] != model_fingerprint(teacher_dir)["digest"]:
            raise ValueError(
                f"--teacher {given}: {teacher_dir.parent.parent} holds a demo with another teacher; use another --out"
            )


def _phase2_run(stage: str, run_dir: Path, settings: dict[str, Any], quick: bool, sets: list[str],
                threads: int | None) -> dict[str, Any]:  # fmt: skip
    """One phase-2 run of the label-budget regime, in this process or a worker's (``threads``: its torch threads):
    trains, drops its teacher-output cache, and returns its seconds and the validation point it kept."""
    from evl_ecg.eval.curves import best_point

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    _train("kd", run_dir, settings, quick, sets)
    cache = Path(settings.get("teacher_cache") or run_dir / "teacher-cache")
    if cache.is_dir():  # about 0.6 MB a record: not worth keeping once trained
        shutil.rmtree(cache)
    best = best_point(json.loads((run_dir / "curve.json").read_text()))
    return {"stage": stage, "seconds": round(time.perf_counter() - t0, 1), "best": best}


def default_jobs() -> int:
    """Phase-2 runs of the demo at once: one per core, at most the three runs (1 on a 1-core machine)."""
    return max(1, min(3, os.cpu_count() or 1))


def _all_labelled_stages(
    out: Path, train_file: str, teacher_dir: Path, seed: int, quick: bool, timings: dict, paper_objective: bool
) -> tuple[dict[str, Path], Path, Path, Path, Path]:
    """The paper's regime: SFT on every record, then the control (CE) and KD with EVL-ECG on the same budget."""
    from evl_ecg.experiments.study import TINY_METHOD_SETS, method_settings

    base = {"train_file": train_file, "seed": seed}
    sft_dir = _stage("sft", timings, _train, "sft", out / "sft", base, quick)
    kd = {**base, "student": str(sft_dir), "teacher": str(teacher_dir)}
    control_dir = _stage("control", timings, _train, "kd", out / "control", {**kd, "method": "sft"}, quick)
    sets = [] if paper_objective else method_settings(TINY_METHOD_SETS, "evl-ecg")
    kd_dir = _stage("kd", timings, _train, "kd", out / "kd", kd, quick, sets)
    models = {"teacher": teacher_dir, "control-student": control_dir, "evl-ecg-student": kd_dir}
    return models, sft_dir, control_dir, kd_dir, kd_dir.parent


def _budget_stages(
    out: Path,
    data: Path,
    teacher_dir: Path,
    budget: Any,
    seed: int,
    quick: bool,
    timings: dict,
    study: dict[str, Any] | None,
    paper_objective: bool,
    jobs: int = 1,
) -> tuple[dict[str, Path], Path, Path, Path, Path]:
    """The label-budget regime (module docstring): the split, the teacher's pool answers, phase 1 on the labelled
    records, and three phase-2 runs that each keep their best validation point (``jobs`` at a time, in worker
    processes where ``jobs > 1``)."""
    import dataclasses

    from evl_ecg.data.budget import BUDGET_FILE, LABELLED_FILE, POOL_FILE, compose, load_answers, load_pool, write_split
    from evl_ecg.data.records import load_records, save_records
    from evl_ecg.eval.answers import answer_pool
    from evl_ecg.eval.curves import BEST_DIR
    from evl_ecg.experiments.label_study import ROWS, LabelStudySettings, evl_sets

    split_dir = out / "budget"
    if not (split_dir / BUDGET_FILE).exists():
        write_split(data / "train.json", split_dir, budget, seed)
    info = json.loads((split_dir / BUDGET_FILE).read_text())
    print(f"[demo] {budget} labels: {info['labelled']} labelled records, {info['pool']} in the pool", flush=True)
    primary_name = (study or {}).get("primary", {}).get("row") or DEFAULT_PRIMARY
    primary = ROWS[primary_name]
    terms = evl_sets() if not paper_objective else ()
    with_terms = dataclasses.replace(primary, name=f"{primary_name}+evl-ecg", method="evl-ecg")
    with_terms = dataclasses.replace(with_terms, sets=(*primary.sets, *terms))
    if primary.method == "evl-ecg":  # the study's primary has the terms already: show it without them
        primary, with_terms = dataclasses.replace(primary, name="seq-kd", method="sft", sets=()), primary
    choice = ((study or {}).get("choices") or {}).get(str(budget)) or {}
    phase1_steps = int(choice.get("phase1_steps") or BUDGET_PHASE1_STEPS)
    phase2_steps = int(choice.get("phase2_steps") or LabelStudySettings.phase2_steps)
    images = str(data / "images")
    labelled_file = split_dir / LABELLED_FILE

    phase1 = {
        "train_file": str(labelled_file),
        "seed": seed,
        "image_root": images,
        "pretrain_vision_data": "train",  # vision pretraining sees the labelled records' findings only
        "max_steps": phase1_steps,
        "save_steps": phase1_steps,
    }
    sft_dir = _stage("sft", timings, _train, "sft", out / "sft", phase1, quick)

    def pool_file(row: Any) -> Path:
        if row.pool is None:
            return labelled_file
        path = split_dir / (f"train-teacher-gold{row.gold}.json" if row.gold > 1 else "train-teacher.json")
        if not path.exists():
            answers = _stage(
                "teacher answers", timings, answer_pool, teacher_dir, data / "train.json", out / "answers",
                image_root=data / "images", progress=True,
            )  # fmt: skip
            labelled = load_records(labelled_file)
            records, _ = compose(labelled, load_pool(split_dir / POOL_FILE), load_answers(answers))
            copies = [dataclasses.replace(r, id=f"{r.id}~{k}") for k in range(2, row.gold + 1) for r in labelled]
            save_records(path, records + copies)
        return path

    def phase2_settings(row: Any, train_file: Path) -> dict[str, Any]:
        settings = {
            "train_file": str(train_file),
            "seed": seed,
            "student": str(sft_dir),
            "teacher": str(teacher_dir),
            "method": row.method,
            "image_root": images,
            "max_steps": phase2_steps,
            "save_steps": phase2_steps,
            "curve_every": max(1, phase2_steps // 4),
            "curve_bench": str(data / "val" / "ptb-test.json"),
            "curve_records": BUDGET_VAL_RECORDS,
            "curve_keep_best": True,
        }
        if row.method != "sft":  # the teacher's outputs from one pass over the training file, not one per step
            settings["teacher_cache"] = str(out / row.name / "teacher-cache")
        return settings

    rows = [("control", ROWS["control"]), (primary.name, primary), (with_terms.name, with_terms)]
    results: dict[str, dict[str, Any]] = {}
    if jobs <= 1:
        for stage, row in rows:
            settings = phase2_settings(row, pool_file(row))
            args = (stage, out / stage, settings, quick, list(row.sets), None)
            results[stage] = _stage(stage, timings, _phase2_run, *args)
    else:  # the runs side by side, ``threads`` torch threads each; the teacher answers the pool beside the control
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        threads = max(1, (os.cpu_count() or 1) // jobs)
        t0 = time.perf_counter()
        print(f"[demo] phase 2: {len(rows)} runs, {jobs} at a time with {threads} torch thread(s) each", flush=True)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:

            def submit(stage: str, row: Any) -> Any:
                print(f"[demo] {stage} ...", flush=True)
                settings = phase2_settings(row, pool_file(row))
                return pool.submit(_phase2_run, stage, out / stage, settings, quick, list(row.sets), threads)

            futures = [submit(*rows[0])]
            import torch

            before = torch.get_num_threads()
            torch.set_num_threads(threads)  # the teacher's answers share the cores with the running jobs
            try:
                futures += [submit(*rows[2]), submit(*rows[1])]  # the longest (the terms) first
            finally:
                torch.set_num_threads(before)
            for future in futures:
                try:
                    result = future.result()
                except BrokenProcessPool as exc:  # a worker killed (out of memory?): finished runs are kept
                    raise ValueError(
                        f"{out}: a phase-2 worker process died ({exc}); the finished runs are kept: rerun the same "
                        "command, with --jobs 1 if memory is short"
                    ) from exc
                results[result["stage"]] = result
                print(f"[demo] {result['stage']} done in {result['seconds']:.1f} s", flush=True)
        wall = round(time.perf_counter() - t0, 1)
        for stage, _ in rows:  # each run's own time in its worker, inside the wall time below
            timings[f"{stage} (worker)"] = results[stage]["seconds"]
        timings[f"phase 2 ({len(rows)} runs, {jobs} at a time; wall)"] = wall

    def kept(stage: str) -> Path:
        best = results[stage]["best"]
        print(f"[demo] {stage}: kept the student of step {best['step']} (validation AUC {best['auc']:.1f})")
        return out / stage / BEST_DIR if best["step"] > 0 else sft_dir

    control_dir, primary_dir, kd_dir = (kept(stage) for stage, _ in rows)
    models = {
        "teacher": teacher_dir,
        "control-student": control_dir,
        f"{primary.name}-student": primary_dir,
        f"{with_terms.name}-student": kd_dir,
    }
    return models, sft_dir, control_dir, kd_dir, out / with_terms.name


def run_demo(
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    quick: bool = False,
    paper_objective: bool = False,
    study: str | os.PathLike[str] | None = None,
    generator: int = 2,
    teacher: str | os.PathLike[str] | None = None,
    labels: str = "10%",
    jobs: int | None = None,
) -> dict[str, Any]:
    """Run every stage into ``out`` and return the summary written to ``results.json``.

    ``labels``: the label budget (a count or a fraction of the training records; default 10 %), or ``"all"`` for
    the paper's regime (every record labelled). Under a budget the table shows the teacher, the control, the label
    study's primary method and that method with EVL-ECG's terms (module docstring).

    The KD stage trains EVL-ECG with the tiny preset's settings (``evl_ecg.experiments.study.TINY_METHOD_SETS``), or
    with the paper's objective as written when ``paper_objective``. ``study``: the study whose mean +- std the table
    puts beside this run's seed (default: the shipped summary, ``assets/tiny-study.json``). ``generator``: the
    synthetic-ECG generator of the corpus (1, the frozen first one; 2, closer to real ECGs). ``teacher``: a teacher
    folder to use in place of the shipped one (copied into ``out/teacher/student``; a demo folder holding another
    teacher is refused). ``jobs``: under a budget, the phase-2 runs at once, each in a worker process with
    ``cores // jobs`` torch threads (default :func:`default_jobs`: one per core, at most 3; 1 runs them in this
    process, one after another). Thread counts can change a run's last digits, so compare demos run with one
    ``jobs``.
    """
    started = time.perf_counter()
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: give at least 1")
    from evl_ecg.data.budget import Budget

    budget = Budget.parse(labels)
    regime = None if budget.is_all else budget
    summary_of_study = load_label_study_summary(study) if regime else load_study_summary(study)
    if summary_of_study is None:
        print("[demo] no study summary shipped with this package: the table has this seed only", flush=True)
    from evl_ecg.data.corpus import build_corpus
    from evl_ecg.eval.run import evaluate_model
    from evl_ecg.eval.tables import build_table, load_score_doc, to_json, to_markdown

    out = Path(out)
    teacher_dir = out / "teacher" / "student"
    if teacher is not None:  # before anything is built
        teacher = Path(teacher)
        _check_teacher(teacher, teacher_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    n_train, n_bench = (48, 4) if quick else (2000, 50)
    n_val = (4 if quick else BUDGET_VAL_RECORDS) if regime else 0
    data = out / "data"
    _stage(
        "synth",
        timings,
        build_corpus,
        data,
        n_train=n_train,
        n_bench=n_bench,
        seed=seed,
        workers=2,
        progress=True,
        generator=generator,
        **({"n_val": n_val} if n_val else {}),
    )
    train_file = str(data / "train.json")

    if not (teacher_dir / "config.json").exists():
        shipped = Path(teacher) if teacher is not None else shipped_teacher()
        if shipped is not None and (not quick or teacher is not None):
            teacher_dir.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(shipped, teacher_dir)
            timings["teacher"] = 0.0
            which = "the given" if teacher is not None else "the shipped tiny"
            print(f"[demo] teacher: using {which} teacher ({shipped})", flush=True)
        else:
            _stage(
                "teacher", timings, _train, "teacher", out / "teacher", {"train_file": train_file, "seed": seed}, quick
            )
    if regime is not None:
        models, sft_dir, control_dir, kd_dir, kd_run = _budget_stages(
            out, data, teacher_dir, regime, seed, quick, timings, summary_of_study, paper_objective, jobs
        )
    else:
        models, sft_dir, control_dir, kd_dir, kd_run = _all_labelled_stages(
            out, train_file, teacher_dir, seed, quick, timings, paper_objective
        )
    docs = []
    for name, model_dir in models.items():
        eval_dir = out / "eval" / name
        _stage(
            f"eval {name}",
            timings,
            evaluate_model,
            model_dir,
            data / "bench",
            eval_dir,
            scorer="both",
            max_new_tokens=16 if quick else 96,
            batch_size=16,
            model_id=name,
            seed=seed,
            image_root=data / "images",
            progress=True,
            update_card=True,  # the demo's own model folders: their cards gain the scores
        )
        docs.append(load_score_doc(eval_dir / "scores.json"))
    figures = _stage("figures", timings, write_figures, out, data, teacher_dir, control_dir, kd_dir, kd_run)
    rows = build_table(docs, with_reference=False)
    table_md = to_markdown(rows)
    likelihood = {}
    for name in models:
        doc = json.loads((out / "eval" / name / "scores.json").read_text())
        likelihood[name] = doc.get("likelihood", {})
    timing_md = "\n".join(f"| {k} | {v:.1f} |" for k, v in timings.items())
    rows_json = to_json(rows)
    objective = "the paper's objective (--paper-objective)" if paper_objective else "the tiny preset's settings"
    study_md = ""
    if summary_of_study is not None and regime is not None:
        study_md = "\n\n## This seed beside the label study (strict macro AUC)\n\n" + beside_label_study(
            {**rows_json, "records": n_bench}, summary_of_study, seed, str(regime)
        )
    elif summary_of_study is not None:
        study_md = "\n\n## This seed beside the study (strict macro AUC)\n\n" + beside_study(
            {**rows_json, "records": n_bench}, summary_of_study, seed, generator
        )
    if regime is not None:
        info = json.loads((out / "budget" / "budget.json").read_text())
        title = f"# evl-ecg demo, {regime} labels (synthetic ECGs; not a clinical evaluation)\n\n"
        intro = (
            f"{info['labelled']} of {info['records']} training records labelled; the teacher answered the other "
            f"{info['pool']}. Every student starts from the same phase-1 student and keeps its best validation point; "
            f"EVL-ECG's terms: {objective}.\n\n"
        )
    else:
        title = "# evl-ecg demo results (synthetic ECGs; not a clinical evaluation)\n\n"
        intro = f"EVL-ECG student: {objective}.\n\n"
    markdown = (
        title
        + intro
        + table_md
        + study_md
        + "\n\n## Stage times (s)\n\n| stage | seconds |\n|---|---|\n"
        + timing_md
        + f"\n| total (wall) | {time.perf_counter() - started:.1f} |\n"
        + (
            "\nThe phase-2 runs ran in worker processes side by side, the teacher answers beside them: their own "
            "times overlap, and phase 2's wall time holds them.\n"
            if any(k.endswith("(worker)") for k in timings)
            else ""
        )
    )
    summary = {
        "table": rows_json,
        "study": summary_of_study,
        "paper_objective": paper_objective,
        "table_markdown": markdown,
        "likelihood": likelihood,
        "timings_s": timings,
        "models": {k: str(v) for k, v in models.items()},
        "figures": {k: str(v) for k, v in figures.items()},
        "quick": quick,
        "seed": seed,
        "labels": str(regime) if regime is not None else "all",
    }
    _atomic_json(out / "results.json", summary)
    atomic_write_bytes(out / "results.md", markdown.encode("utf-8"))
    return summary
