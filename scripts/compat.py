"""Run the model and training tests against the supported range's lower bound and against the newest releases.

Each target gets a fresh virtual environment (outside the repository), the README's install command, and, for the
lower bound, the declared minimum of every range in ``pyproject.toml`` that is pinned here (transformers, accelerate
and tokenizers: the libraries whose API the model adapters and the Trainer use). Then it runs
``pytest tests/models tests/train`` in each and prints one line per target with the versions it resolved and the
test counts, side by side.

    python scripts/compat.py                      # both targets (about 5 minutes each on 2 cores)
    python scripts/compat.py --target newest --write-constraints constraints.txt

``--write-constraints`` writes the exact versions of the newest target's passing environment (the file
``pip install -c constraints.txt ...`` takes to reproduce published numbers). Nothing is downloaded but packages.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the libraries whose lower bounds are installed exactly for the ``lower`` target.
LOWER_PINNED = ("transformers", "accelerate", "tokenizers")
#: packages reported on each target's line.
REPORTED = ("torch", "transformers", "accelerate", "tokenizers", "safetensors", "numpy", "pot")
DEFAULT_TESTS = ("tests/models", "tests/train")


def declared_lower_bounds(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """``{name: minimum}`` of every ``name>=X`` dependency in ``pyproject.toml``."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.match(r"^([A-Za-z0-9_.-]+)\s*(?:\[[^]]*\])?\s*>=\s*([^,;\s]+)", dep)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def _run(cmd: list[str], log, **kw) -> int:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, **kw).returncode


def _installed(python: Path) -> dict[str, str]:
    """``{name: version}`` of what the fresh venv of ``python`` holds: ``evl-ecg[dev]`` and its dependencies."""
    out = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True, check=True
    ).stdout
    versions = {}
    for line in out.splitlines():
        name, sep, version = line.partition("==")
        if sep:
            versions[re.sub(r"[-_.]+", "-", name).lower()] = version
    return versions


def run_target(name: str, workdir: Path, tests: list[str], torch_spec: str, log_dir: Path) -> dict:
    venv = workdir / f"venv-{name}"
    if venv.exists():
        shutil.rmtree(venv)
    log_path = log_dir / f"compat-{name}.log"
    result: dict = {"target": name, "log": str(log_path)}
    with log_path.open("w") as log:
        if _run([sys.executable, "-m", "venv", str(venv)], log):
            result["error"] = "venv creation failed"
            return result
        py = venv / "bin" / "python"
        pins = []
        if name == "lower":
            lower = declared_lower_bounds()
            pins = [f"{pkg}=={lower[pkg]}" for pkg in LOWER_PINNED if pkg in lower]
        cmd = [str(py), "-m", "pip", "install", "-q", torch_spec, "-e", f"{ROOT}[dev]", *pins]
        if _run(cmd, log):
            result["error"] = f"pip install failed ({' '.join(pins) or 'unpinned'}); see {log_path}"
            return result
        versions = _installed(py)
        result["versions"] = {k: versions.get(k, "-") for k in REPORTED}
        result["all_versions"] = versions
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        junit = log_dir / f"compat-{name}.txt"
        with junit.open("w") as out:
            rc = subprocess.run(
                [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            ).returncode
        text = junit.read_text()
        lines = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
        result["pytest_rc"] = rc
        result["summary"] = lines[-1].strip("= ") if lines else "no summary (see log)"
        result["pytest_log"] = str(junit)
    return result


def write_constraints(versions: dict[str, str], path: Path, target: str) -> None:
    lines = [
        "# Exact versions of a passing run of the suite (scripts/compat.py, target "
        f"{target!r}, Python {sys.version.split()[0]}).",
        '# Opt-in, to reproduce published numbers: pip install -c constraints.txt "torch==2.13.0" -e ".[dev]"',
    ]
    for name in sorted(versions):
        version = versions[name]
        if name == "torch":
            version = version.split("+")[0]  # the CPU or CUDA build is the machine's choice
        lines.append(f"{name}=={version}")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=("lower", "newest", "both"), default="both")
    ap.add_argument("--tests", nargs="*", default=list(DEFAULT_TESTS))
    ap.add_argument("--torch", default="torch==2.13.0", help="torch requirement (the CPU build here)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the venvs go (default: a temporary folder)")
    ap.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "evl-ecg-compat")
    ap.add_argument("--write-constraints", type=Path, default=None, help="write the newest target's versions here")
    args = ap.parse_args(argv)
    targets = ["lower", "newest"] if args.target == "both" else [args.target]
    args.logs.mkdir(parents=True, exist_ok=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="evl-ecg-compat-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"declared lower bounds: {declared_lower_bounds()}", flush=True)
    results = []
    for target in targets:
        print(f"[compat] {target}: installing and testing ({', '.join(args.tests)}) ...", flush=True)
        res = run_target(target, workdir, args.tests, args.torch, args.logs)
        results.append(res)
        if args.write_constraints and target == "newest" and res.get("pytest_rc") == 0:
            write_constraints(res["all_versions"], args.write_constraints, target)
            print(f"[compat] wrote {args.write_constraints}", flush=True)
    print()
    print("| target | " + " | ".join(REPORTED) + " | tests |")
    print("|---|" + "---|" * len(REPORTED) + "---|")
    failed = False
    for res in results:
        vers = res.get("versions", {})
        outcome = res.get("error") or res.get("summary", "")
        failed |= bool(res.get("error")) or res.get("pytest_rc", 1) != 0
        print(f"| {res['target']} | " + " | ".join(vers.get(k, "-") for k in REPORTED) + f" | {outcome} |")
    print(f"\nlogs: {args.logs}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
