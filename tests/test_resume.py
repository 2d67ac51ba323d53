"""The one resume rule (:mod:`evl_ecg.resume`), checked against key documents written here by hand (issue 30)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from evl_ecg.resume import KEY_FORMAT, ResumeKey, ResumeKeyError, file_digest, key_file, show

ADVICE = "use --fresh to start again, or another --out"
SETTINGS = {"decoding": "greedy", "max_new_tokens": 8, "batch_size": 4}


def stored(settings=None, parts=None, info=None, command="eval run") -> dict:
    """A key document as an earlier run wrote it."""
    return {
        "format": KEY_FORMAT,
        "command": command,
        "settings": dict(SETTINGS if settings is None else settings),
        "parts": dict(parts or {}),
        "info": dict(info or {}),
    }


def put(out: Path, doc) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "resume-key.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def key(out: Path, settings=None, **kw) -> ResumeKey:
    return ResumeKey(out, kw.pop("command", "eval run"), dict(SETTINGS if settings is None else settings), **kw)


def test_the_key_lives_in_the_folder_or_beside_the_file(tmp_path):
    assert key_file(tmp_path / "ev", folder=True) == tmp_path / "ev" / "resume-key.json"
    assert key_file(tmp_path / "p.jsonl", folder=False) == tmp_path / "p.jsonl.resume-key.json"
    assert ResumeKey(tmp_path / "p.jsonl", "predict", {}, folder=False).path == tmp_path / "p.jsonl.resume-key.json"


def test_file_digest_is_the_sha256_of_the_bytes(tmp_path):
    (tmp_path / "b.json").write_bytes(b"[1, 2]\n")
    assert file_digest(tmp_path / "b.json") == "sha256:" + hashlib.sha256(b"[1, 2]\n").hexdigest()[:16]


def test_a_new_output_writes_exactly_the_document(tmp_path):
    out = tmp_path / "ev"
    k = key(out, parts={"bench:ptb-test": "sha256:aa"}, info={"model_dir": "/m"})
    assert k.check(has_output=False) == "new"
    assert not out.exists()  # check writes nothing
    k.write()
    assert json.loads((out / "resume-key.json").read_text()) == stored(
        parts={"bench:ptb-test": "sha256:aa"}, info={"model_dir": "/m"}
    )


def test_the_same_settings_resume(tmp_path):
    out = tmp_path / "ev"
    put(out, stored())
    assert key(out).check(has_output=True) == "resumed"


def test_another_value_is_one_line_naming_the_setting_and_both_values(tmp_path):
    out = tmp_path / "ev"
    put(out, stored())
    with pytest.raises(ResumeKeyError) as err:
        key(out, {**SETTINGS, "max_new_tokens": 16}).check(has_output=True)
    assert str(err.value) == f"{out}: was written with max_new_tokens=8, now 16; {ADVICE}"
    with pytest.raises(ResumeKeyError) as err:  # several: the first in the command's order, the others named
        key(out, {"model": "b2", **SETTINGS, "max_new_tokens": 16, "batch_size": 1}).check(has_output=True)
    assert str(err.value).startswith(f"{out}: was written with max_new_tokens=8, now 16 (1 more differs: batch_size)")
    put(out, stored({"model": "a1", **SETTINGS}))
    with pytest.raises(ResumeKeyError) as err:
        key(out, {"model": "b2", **SETTINGS, "max_new_tokens": 16, "batch_size": 1}).check(has_output=True)
    assert str(err.value).startswith(f"{out}: was written with model=a1, now b2 (2 more differ: max_new_tokens, batch")
    assert "\n" not in str(err.value)


def test_fresh_clears_the_output_and_starts_again(tmp_path):
    out = tmp_path / "ev"
    put(out, stored())
    cleared = []
    k = key(out, {**SETTINGS, "max_new_tokens": 16})
    assert k.ensure(has_output=True, fresh=True, clear=lambda: cleared.append(True)) == "fresh"
    assert cleared == [True]
    assert json.loads((out / "resume-key.json").read_text())["settings"]["max_new_tokens"] == 16


def test_parts_are_compared_where_both_have_them_and_merged_otherwise(tmp_path):
    out = tmp_path / "ev"
    put(out, stored(parts={"bench:ptb-test": "sha256:aa"}))
    k = key(out, parts={"bench:cpsc-test": "sha256:bb"})  # another subset, run later into the same folder
    assert k.ensure(has_output=True) == "resumed"
    doc = json.loads((out / "resume-key.json").read_text())
    assert doc["parts"] == {"bench:cpsc-test": "sha256:bb", "bench:ptb-test": "sha256:aa"}
    with pytest.raises(ResumeKeyError, match=r"bench:ptb-test=sha256:aa, now sha256:cc;"):
        key(out, parts={"bench:ptb-test": "sha256:cc"}).check(has_output=True)


def test_info_is_recorded_never_compared(tmp_path):
    out = tmp_path / "ev"
    put(out, stored(info={"model_dir": "/old/place"}))
    k = key(out, info={"model_dir": "/new/place"})
    assert k.ensure(has_output=True) == "resumed"
    assert json.loads((out / "resume-key.json").read_text())["info"] == {"model_dir": "/new/place"}


def test_a_setting_an_older_key_lacks_is_taken_with_a_warning(tmp_path, caplog):
    out = tmp_path / "ev"
    put(out, stored(settings={"decoding": "greedy", "max_new_tokens": 8}))  # written before batch_size was keyed
    with caplog.at_level(logging.WARNING, logger="evl_ecg.resume"):
        assert key(out).check(has_output=True) == "resumed"
    assert any(
        "batch_size was not recorded" in r.getMessage() and "batch_size=4" in r.getMessage() for r in caplog.records
    )


def test_a_legacy_layout_is_read_through_its_converter(tmp_path):
    out = tmp_path / "s"
    put(out, {"n_train": 48, "test_seed": 5})  # an older layout: the settings as one object

    def legacy(doc):
        return {"format": KEY_FORMAT, "command": "study", "settings": doc, "parts": {}, "info": {}}

    assert ResumeKey(out, "study", {"n_train": 48, "test_seed": 5}).check(has_output=True, legacy=legacy) == "resumed"
    with pytest.raises(ResumeKeyError, match="was written with test_seed=5, now 1000;"):
        ResumeKey(out, "study", {"n_train": 48, "test_seed": 1000}).check(has_output=True, legacy=legacy)


def test_output_without_a_key_is_refused_unless_fresh(tmp_path):
    out = tmp_path / "ev"
    out.mkdir()
    with pytest.raises(ResumeKeyError) as err:
        key(out).check(has_output=True)
    assert str(err.value) == (
        f"{out}: holds output without a resume key (resume-key.json), so the settings it was written with are "
        f"unknown; {ADVICE}"
    )
    assert key(out).check(has_output=True, fresh=True, clear=lambda: None) == "fresh"


def test_a_key_with_nothing_written_under_it_takes_the_new_settings(tmp_path):
    out = tmp_path / "ev"
    put(out, stored())  # a run killed after writing its key, before its first row
    assert key(out, {**SETTINGS, "max_new_tokens": 99}).check(has_output=False) == "new"


def test_another_commands_output_is_refused_even_with_fresh_and_never_cleared(tmp_path):
    out = tmp_path / "ev"
    put(out, stored(command="predict"))
    cleared = []
    for fresh in (False, True):
        with pytest.raises(ResumeKeyError) as err:
            key(out).check(has_output=True, fresh=fresh, clear=lambda: cleared.append(True))
        assert str(err.value) == (
            f"{out}: holds the output of `evl-ecg predict`, not of `evl-ecg eval run`; use another --out"
        )
    assert cleared == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "unreadable resume key (Expecting property name enclosed in double quotes)"),
        ("[1, 2]", "not an evl-ecg resume key"),
        (json.dumps({"format": "something/else", "command": "x", "settings": {}}), "not an evl-ecg resume key"),
        (json.dumps({"format": KEY_FORMAT, "command": "eval run"}), "resume key without its command or settings"),
    ],
    ids=["not-json", "a-list", "other-format", "no-settings"],
)
def test_an_unreadable_key_is_one_line_naming_it(tmp_path, text, problem):
    out = tmp_path / "ev"
    path = put(out, text)
    with pytest.raises(ResumeKeyError) as err:
        key(out).check(has_output=True)
    assert str(err.value) == f"{path}: {problem}; {ADVICE}"


def test_a_key_path_that_is_a_folder_is_one_line(tmp_path):
    out = tmp_path / "ev"
    (out / "resume-key.json").mkdir(parents=True)
    with pytest.raises(ResumeKeyError) as err:
        key(out).check(has_output=True)
    assert str(err.value).startswith(f"{out / 'resume-key.json'}: cannot read the resume key (")
    assert "\n" not in str(err.value)


def test_a_key_kept_inside_the_output_is_passed_in(tmp_path):
    out = tmp_path / "e.safetensors"
    k = ResumeKey(out, "embed", {"dims": [8, 16]}, folder=False, path=out)
    assert k.check(has_output=True, stored=stored({"dims": [8, 16]}, command="embed")) == "resumed"
    with pytest.raises(ResumeKeyError) as err:
        k.check(has_output=True, stored=stored({"dims": [4]}, command="embed"))
    assert str(err.value) == f"{out}: was written with dims=[4], now [8,16]; {ADVICE}"
    with pytest.raises(ResumeKeyError, match="holds output without a resume key, so the settings"):
        k.check(has_output=True, stored=None)


def test_without_a_fresh_option_the_advice_is_another_out(tmp_path):
    out = tmp_path / "s"
    put(out, stored({"n_train": 1}, command="study"))
    with pytest.raises(ResumeKeyError, match=r"n_train=1, now 2; use another --out$"):
        ResumeKey(out, "study", {"n_train": 2}, fresh_option=None).check(has_output=True)


def test_values_are_shown_bare_compact_and_cut():
    assert show("greedy") == "greedy" and show(None) == "none" and show(8) == "8"
    assert show({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert show("x" * 100, limit=10) == "xxxxxxx..."
