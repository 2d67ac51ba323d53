"""Hostile input and faults in ``evl-ecg data``: foreign files are never touched, a write error is never a skipped
item, output files follow the umask, bad record fields and unbounded sizes or counts are one-line errors."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evl_ecg.data import corpus
from evl_ecg.data.commands import app, parse_size
from evl_ecg.data.records import (
    Record,
    RecordError,
    Turn,
    load_records,
    save_records,
    write_png,
)
from evl_ecg.files import atomic_write_bytes

runner = CliRunner()
SIZE = (64, 48)
SUBSETS = ("ptb-test", "code15-test", "cpsc-test", "csn-test-no-cot", "g12-test-no-cot", "ecgqa-test")


def build(out: Path, **kw) -> corpus.CorpusResult:
    args = dict(n_train=3, n_bench=1, seed=3, workers=1, size=SIZE, progress=False)
    return corpus.build_corpus(out, **(args | kw))


def synth_args(out: Path, *extra: str) -> list[str]:
    return ["synth", "--out", str(out), "--train", "3", "--bench", "1", "--seed", "3", "--size", "64x48",
            "--workers", "1", "--no-progress", *extra]  # fmt: skip


def files(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path (dotfiles included)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A clean build with the arguments of :func:`build` / :func:`synth_args`."""
    out = tmp_path_factory.mktemp("reference") / "corpus"
    build(out)
    return out


# --------------------------------------------------------------------------------------------------
# 1. Foreign files: never overwritten, never deleted; a corpus of other (or unknown) settings is refused
# --------------------------------------------------------------------------------------------------


def test_a_folder_holding_foreign_files_is_refused_naming_them_and_nothing_is_touched(tmp_path):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / ".cache.tmp").write_text("a user's temporary file")
    (out / "images" / "photo.jpg").write_bytes(b"\xff\xd8")
    (out / "train.json").write_text('[{"id": "my own record"}]')
    before = files(out)
    result = runner.invoke(app, synth_args(out))
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert line.startswith(f"error: {out}: holds 3 entries that no corpus build writes")
    for name in (".cache.tmp", "images/photo.jpg", "notes.txt"):
        assert name in line
    assert files(out) == before  # nothing written, nothing deleted


def test_a_users_train_json_alone_is_not_overwritten(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.json").write_text('[{"id": "my own record"}]')
    with pytest.raises(corpus.CorpusError, match=r"train\.json\) but no \.build\.json or manifest\.json"):
        build(out)
    assert (out / "train.json").read_text() == '[{"id": "my own record"}]'
    assert sorted(p.name for p in out.iterdir()) == ["train.json"]


def test_a_foreign_manifest_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"name": "my dataset", "files": []}')
    with pytest.raises(corpus.CorpusError, match="not the manifest of an evl-ecg corpus"):
        build(out)
    assert (out / "manifest.json").read_text() == '{"name": "my dataset", "files": []}'


def interrupted_build(out, monkeypatch, at: int = 5) -> None:
    """A build of ``out`` interrupted (``KeyboardInterrupt``) inside its ``at``-th record, as a Ctrl-C leaves it."""
    real, calls = corpus.make_item, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(corpus, "make_item", dying)
    with pytest.raises(KeyboardInterrupt):
        build(out)
    monkeypatch.setattr(corpus, "make_item", real)


def test_only_the_builds_own_temporary_files_are_deleted(tmp_path, monkeypatch, reference):
    out = tmp_path / "out"
    interrupted_build(out, monkeypatch)
    # what a kill inside atomic_write_bytes leaves: ".<name>.<8 characters>.tmp" beside a file the build writes
    own = [out / ".train.json.ab12cd34.tmp", out / "images" / "train" / ".synth-train-000001.png.zz99_y88.tmp"]
    for path in own:
        path.write_bytes(b"torn")
    result = build(out)
    assert result.counts["train"] == 3
    assert not any(p.exists() for p in own)
    assert files(out) == files(reference)

    # a temporary-looking file beside no file of the build is not the build's: refused, kept
    stray = out / "images" / "train" / ".holiday.png.ab12cd34.tmp"
    stray.write_bytes(b"not yours")
    with pytest.raises(corpus.CorpusError, match=r"images/train/\.holiday\.png\.ab12cd34\.tmp"):
        build(out)
    assert stray.read_bytes() == b"not yours"


def test_a_corpus_copied_without_its_dotfiles_and_rerun_with_another_seed_is_refused(tmp_path, reference):
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy, ignore=lambda _d, names: [n for n in names if n.startswith(".")])
    assert not (copy / ".build.json").exists()
    before = files(copy)
    result = runner.invoke(app, synth_args(copy, "--seed", "4"))
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert "other settings (seed differ: manifest.json has seed 3, asked 4)" in line
    assert files(copy) == before  # the images of seed 3 are not relabelled as seed 4's
    # the same seed adopts the copy (its manifest states the settings) and gives the same bytes
    assert runner.invoke(app, synth_args(copy)).exit_code == 0
    assert files(copy) == files(reference)


def test_a_partial_corpus_copied_without_its_dotfiles_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "out"
    interrupted_build(out, monkeypatch)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=lambda _d, names: [n for n in names if n.startswith(".")])
    assert list((copy / "images" / "train").iterdir())  # images, but no .build.json, no manifest.json
    before = files(copy)
    for seed in (3, 4):  # whatever the seed asked, the images' own seed is unknown
        with pytest.raises(corpus.CorpusError, match="settings they were made with are unknown"):
            build(copy, seed=seed)
    assert files(copy) == before and not (copy / "train.json").exists()


def test_a_marker_and_a_manifest_must_both_match(tmp_path, reference):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["settings"]["seed"] = 9  # another corpus's manifest copied in
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(corpus.CorpusError, match="manifest.json has seed 9, asked 3"):
        build(out)


# --------------------------------------------------------------------------------------------------
# 2. A write error stops the build (one line, exit 1); a rerun after the fix loses no record
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("where", ["image", "chunk"])
def test_a_write_error_fails_naming_the_file_and_a_rerun_completes_every_record(
    tmp_path, monkeypatch, reference, where, workers
):
    """A full disk while writing a ptb-test image, or the code15-test chunk file: exit 1 with one line naming the
    file and the OS error (it was a skipped item and exit 0), then the rerun with room again loses no record. With
    two workers the error comes back from a worker process (forked: the fault below is theirs too)."""
    out = tmp_path / "out"
    bad = {
        "image": out / "images" / "ptb-test" / "synth-ptb-test-00000.png",
        "chunk": out / ".parts" / "code15-test-00000.json",
    }[where]
    real_png, real_write = corpus.write_png, corpus.atomic_write_bytes
    disk_full = {"on": True}

    def check(path):
        if disk_full["on"] and Path(path) == bad:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(corpus, "write_png", lambda path, image: (check(path), real_png(path, image)))
    monkeypatch.setattr(corpus, "atomic_write_bytes", lambda path, data: (check(path), real_write(path, data)))
    result = runner.invoke(app, [*synth_args(out), "--workers", workers])
    assert result.exit_code == 1, result.output
    assert error_lines(result) == [
        f"error: {bad}: cannot write (No space left on device); no record was skipped: fix it and rerun to resume"
    ]
    assert not (out / "manifest.json").exists() and not (out / "train.json").exists()

    disk_full["on"] = False
    result = runner.invoke(app, synth_args(out))
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"] == [] and manifest["counts"] == {"train": 3, **dict.fromkeys(SUBSETS, 1)}
    assert files(out) == files(reference)  # every record and image, as a build without the fault


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod does not stop writes (patched cases above)")
def test_a_read_only_images_folder_fails_and_the_rerun_completes(tmp_path, reference):
    out = tmp_path / "out"
    (out / "images" / "train").mkdir(parents=True)
    (out / "images" / "train").chmod(0o555)
    try:
        result = runner.invoke(app, synth_args(out))
    finally:
        (out / "images" / "train").chmod(0o755)
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert "synth-train-000000.png: cannot write (Permission denied)" in line
    assert runner.invoke(app, synth_args(out)).exit_code == 0
    assert files(out) == files(reference)


def test_chunks_saved_with_os_error_skips_by_an_older_build_are_redone(tmp_path, reference):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    (out / "manifest.json").unlink()
    (out / "train.json").unlink()
    saved = [corpus.make_item(corpus.CorpusSettings(n_train=3, n_bench=1, seed=3, size=SIZE), out, "train", i)
             for i in range(3)]  # fmt: skip
    for item in saved:
        item.pop("rendered")
    saved[1] = {"skip": {"split": "train", "index": 1, "id": "synth-train-000001",
                         "reason": "PermissionError: [Errno 13] Permission denied: 'x.png'"}}  # fmt: skip
    (out / ".parts").mkdir()
    (out / ".parts" / "train-00000.json").write_text(json.dumps(saved))
    result = build(out)
    assert result.skipped == [] and result.counts["train"] == 3
    assert (out / "train.json").read_bytes() == (reference / "train.json").read_bytes()


# --------------------------------------------------------------------------------------------------
# 5. Written files follow the umask, as files written with open() do
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002, 0o077])
def test_written_files_get_mode_0666_less_the_umask(tmp_path, umask):
    from PIL import Image

    record = Record("r1", "x.png", [Turn("human", "<image>\nWhich rhythm?"), Turn("gpt", "Sinus rhythm")])
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"data")
        save_records(tmp_path / "records.json", [record])
        write_png(tmp_path / "page.png", Image.new("RGB", (16, 16), "white"))
        with open(tmp_path / "plain.txt", "w") as fh:  # what the user's other files get
            fh.write("x")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == want
    for name in ("a.bin", "records.json", "page.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "page.png", "plain.txt", "records.json"]


def test_every_corpus_file_is_readable_by_others_under_umask_022(tmp_path):
    old = os.umask(0o022)
    try:
        build(tmp_path / "out")
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").rglob("*")}
    assert modes and all(m == (0o755 if (tmp_path / p).is_dir() else 0o644) for p, m in modes.items()), modes


def test_an_unreadable_record_file_is_not_reported_as_missing(tmp_path, monkeypatch):
    path = tmp_path / "train.json"
    path.write_text("[]")

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(RecordError) as exc:
        load_records(path)
    assert str(exc.value) == f"{path}: cannot read the file (Permission denied)"
    monkeypatch.undo()
    with pytest.raises(RecordError, match="is a folder, not a file"):
        load_records(tmp_path)
    with pytest.raises(RecordError, match="file not found"):
        load_records(tmp_path / "none.json")


# --------------------------------------------------------------------------------------------------
# 6. Records with wrong field types: one line naming file, record and field
# --------------------------------------------------------------------------------------------------

GOOD = {
    "id": "r1",
    "image": "x/r1.png",
    "conversations": [{"from": "human", "value": "<image>\nWhich rhythm?"}, {"from": "gpt", "value": "Sinus"}],
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"conversations": "not a list"}, "field 'conversations'"),
        ({"conversations": {"from": "human"}}, "field 'conversations'"),
        ({"image": 5}, "field 'image'"),
        ({"id": {"a": 1}}, "field 'id'"),
        ({"labels": "MI"}, "field 'labels'"),
        ({"labels": ["MI"]}, "field 'labels'"),
        ({"labels": 5}, "field 'labels'"),
        ({"meta": "abc"}, "field 'meta'"),
        ({"meta": [[1, 2]]}, "field 'meta'"),
        (
            {"conversations": [GOOD["conversations"][0], {"from": "gpt", "value": [{"option": "A"}]}]},
            "field conversations[1].value",
        ),
        (
            {"conversations": [{"from": "human", "value": ["<image>\n", 5]}, GOOD["conversations"][1]]},
            "field conversations[0].value",
        ),
    ],
    ids=[
        "conversations-str",
        "conversations-dict",
        "image-int",
        "id-dict",
        "labels-str",
        "labels-list",
        "labels-int",
        "meta-str",
        "meta-pairs",
        "answer-list-of-objects",
        "prompt-list-with-int",
    ],
)
def test_a_record_with_a_wrong_field_type_is_one_line_naming_file_record_and_field(tmp_path, change, field):
    from evl_ecg.eval.run import read_bench_records

    path = tmp_path / "ptb-test.json"
    path.write_text(json.dumps([GOOD, {**GOOD, "id": "r2", **change}]))
    with pytest.raises(RecordError) as exc:
        load_records(path)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{path}: item 1: record ") and field in message
    records, failed = read_bench_records(path)  # eval run: the record is reported and left out, no traceback
    assert [r.id for r in records] == ["r1"] and len(failed) == 1 and field in failed[0][1]


# --------------------------------------------------------------------------------------------------
# 7. and 9. Unbounded sizes and counts, free disk space
# --------------------------------------------------------------------------------------------------


def test_a_huge_size_is_refused_by_the_parser_and_the_commands(tmp_path):
    import typer

    with pytest.raises(typer.BadParameter, match="60000x60000 px is too large"):
        parse_size("60000x60000")
    with pytest.raises(typer.BadParameter, match="too large"):
        parse_size("40000x100")  # one side too long
    assert parse_size("6600x5100") == (6600, 5100)  # the letter page at 600 DPI
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), "--size", "60000x60000", "--no-progress"])
    assert result.exit_code != 0 and "too large" in result.output and "MemoryError" not in result.output
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), "--dpi", "100000", "--no-progress"])
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert line.startswith(f"error: {tmp_path / 'x'}: --dpi 100000: the page at 100000 DPI") and "too large" in line
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="too large"):
        corpus.CorpusSettings(n_train=1, n_bench=0, seed=0, size=(60000, 60000))


def test_counts_beyond_the_bound_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="n_train 1000000000000 is beyond the limit of 10,000,000 records"):
        corpus.CorpusSettings(n_train=10**12, n_bench=0, seed=0)
    with pytest.raises(ValueError, match="in all is beyond the limit"):  # 6 bench subsets of 2 M each
        corpus.CorpusSettings(n_train=0, n_bench=2_000_000, seed=0)
    corpus.CorpusSettings(n_train=corpus.MAX_RECORDS, n_bench=0, seed=0)  # the bound itself is allowed


def test_synth_with_a_trillion_records_exits_at_once_in_bounded_memory(tmp_path):
    import resource

    def limit_memory():  # the unbounded build grew until killed: here it would die of MemoryError instead
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    out = tmp_path / "x"
    code = "from evl_ecg.data.commands import app; app()"
    args = [sys.executable, "-c", code, "synth", "--out", str(out), "--train", "1000000000000", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, preexec_fn=limit_memory, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "error: n_train 1000000000000 is beyond the limit of 10,000,000 records"
    assert not out.exists()


def test_a_build_the_disk_cannot_hold_is_refused_before_any_work(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 50_000, 50_000))
    out = tmp_path / "out"
    # by hand: 9 records (3 train + 6 bench) x (64 x 48 px x 0.5 B + 4096 B) = 9 x 5632 = 50688 B > 50000 B free
    settings = corpus.CorpusSettings(n_train=3, n_bench=1, seed=3, size=SIZE)
    assert corpus.estimate_bytes(settings) == 50688
    assert corpus.estimate_bytes(settings, images_present=9) == 9 * 4096
    result = runner.invoke(app, synth_args(out))
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert line == (
        f"error: {out}: the corpus needs about 50.7 kB (9 records, images of 64x48 px) but its disk has 50.0 kB "
        "free; free some space, or ask for fewer records or a smaller size"
    )
    assert list(out.iterdir()) == []  # not even the build marker
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 0, 10**9))
    assert runner.invoke(app, synth_args(out)).exit_code == 0


# --------------------------------------------------------------------------------------------------
# Output paths that cannot be written or created
# --------------------------------------------------------------------------------------------------


def test_uncreatable_output_paths_are_one_line_naming_them(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, synth_args(blocker))
    assert result.exit_code == 1 and error_lines(result) == [f"error: {blocker}: exists and is not a folder"]
    result = runner.invoke(app, synth_args(blocker / "corpus"))
    assert result.exit_code == 1
    assert error_lines(result) == [f"error: {blocker / 'corpus'}: cannot create the folder (Not a directory)"]
    record = Path(__file__).parents[1] / "ecg" / "fixtures" / "A0001.hea"
    result = runner.invoke(app, ["render", str(record), "--out", str(blocker / "page.png")])
    assert result.exit_code == 1
    assert error_lines(result) == [f"error: {blocker / 'page.png'}: cannot write (Not a directory)"]
    assert blocker.read_text() == "not a folder"
