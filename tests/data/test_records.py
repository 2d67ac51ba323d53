"""Record schema, loaders (JSON / JSONL / HF parquet with the ecgqa quirk), atomic saving and image resolution."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from evl_ecg.data.records import (
    Record,
    RecordError,
    Turn,
    extract_parquet_images,
    load_records,
    open_image,
    resolve_image,
    save_records,
    validate,
)

# The README example of ECGInstruct (reference §1.2), written out by hand.
MIMIC = {
    "id": "mimic-44111511",
    "image": "mimic/p1127/p11273115/s44111511/44111511-0.png",
    "conversations": [
        {
            "from": "human",
            "value": "<image>\nTime for a multiple-choice challenge! Share your thought process, then lock in your "
            "final answer.\nWhat can be inferred about the cardiac axis on this ECG?\nA. The axis is normal\nB. The "
            "axis is deviated to the right\nC. The axis is indeterminate\nD. The axis is deviated to the left",
        },
        {"from": "gpt", "value": "The ECG shows no clear indication ... Therefore ... C. ..."},
    ],
}
ECGQA_PROMPT = (
    "<image>\nGiven this ECG image, please answer the following question. From the provided options, select all "
    "that apply. List your selections, separated by slashes.\nQuestion: Which ECG leads are affected by baseline "
    "drift?\nOptions: lead III, lead V2, lead aVF, lead V3, none Only answer based on the given Options without any "
    "explanation."
)


def test_json_record_round_trips_to_the_same_dict(tmp_path):
    path = tmp_path / "instruct.json"
    path.write_text(json.dumps([MIMIC]))
    (rec,) = load_records(path)
    assert rec.id == "mimic-44111511"
    assert [t.role for t in rec.conversations] == ["human", "gpt"]
    assert rec.prompt.startswith("Time for a multiple-choice challenge!")
    assert rec.to_dict() == MIMIC
    out = tmp_path / "again.jsonl"
    save_records(out, [rec])
    assert json.loads(out.read_text().strip()) == MIMIC
    assert load_records(out)[0].to_dict() == MIMIC


def test_parquet_export_joins_char_split_prompt_and_keeps_gold_list(tmp_path):
    png = tmp_path / "src.png"
    Image.new("RGB", (8, 6), "white").save(png)
    turn = pa.struct([("from", pa.string()), ("value", pa.list_(pa.string()))])
    table = pa.table(
        {
            "id": ["ecgqa-0"],
            "image_path": ["ptb-xl/07190_hr-0.png"],
            "image": pa.array(
                [{"bytes": png.read_bytes(), "path": "07190_hr-0.png"}],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
            "conversations": pa.array(
                [[{"from": "human", "value": list(ECGQA_PROMPT)}, {"from": "gpt", "value": ["lead aVF", "lead V3"]}]],
                pa.list_(turn),
            ),
        }
    )
    path = tmp_path / "ecgqa-test.parquet"
    pq.write_table(table, path)
    (rec,) = load_records(path)
    assert rec.conversations[0].value == ECGQA_PROMPT
    assert rec.answer == ["lead aVF", "lead V3"]
    assert rec.image == "ptb-xl/07190_hr-0.png"
    root = tmp_path / "images"
    assert extract_parquet_images(path, root) == 1
    assert open_image(rec, root).size == (8, 6)
    assert extract_parquet_images(path, root) == 0  # present files are left alone


def test_char_split_gold_is_joined_into_one_answer():
    row = {"id": "q", "image": "a.png", "conversations": [{"from": "human", "value": list("<image>\nHi")}]}
    row["conversations"].append({"from": "gpt", "value": list("yes")})
    rec = Record.from_dict(row)
    assert rec.prompt == "Hi" and rec.answer == ["yes"]


@pytest.mark.parametrize(
    ("conversations", "field"),
    [
        ([{"from": "human", "value": "no image token"}, {"from": "gpt", "value": "x"}], r"conversations\[0\].value"),
        ([{"from": "gpt", "value": "<image>\nq"}, {"from": "human", "value": "x"}], r"conversations\[0\].from"),
        ([{"from": "human", "value": "<image>\nq"}], "conversations"),
        ([{"from": "human", "value": "<image>\nq <image>"}, {"from": "gpt", "value": "x"}], "'<image>' 2 times"),
        ([{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": 3}], r"conversations\[1\].value"),
        ([{"from": "human", "value": "<image>\nq"}, {"value": "x"}], r"conversations\[1\].from is missing"),
    ],
)
def test_bad_records_name_file_record_and_field(tmp_path, conversations, field):
    path = tmp_path / "bad.jsonl"
    good = {"id": "ok-1", "image": "a.png", "conversations": MIMIC["conversations"]}
    bad = {"id": "bad-7", "image": "a.png", "conversations": conversations}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=rf"bad\.jsonl:2: record 'bad-7': .*{field}"):
        load_records(path)


def test_missing_id_absolute_image_and_duplicates_are_errors(tmp_path):
    with pytest.raises(RecordError, match="field 'id'"):
        Record.from_dict({"image": "a.png", "conversations": MIMIC["conversations"]}, source="f.json")
    with pytest.raises(RecordError, match="record 'x': field 'image' must be a relative path"):
        Record.from_dict({"id": "x", "image": "/etc/a.png", "conversations": MIMIC["conversations"]})
    path = tmp_path / "dup.json"
    path.write_text(json.dumps([MIMIC, MIMIC]))
    with pytest.raises(RecordError, match=r"item 1: record 'mimic-44111511': field 'id' duplicates"):
        load_records(path)
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(RecordError, match="broken.json: invalid JSON"):
        load_records(broken)


def test_llava_normalisation_moves_the_image_token_to_the_front():
    row = {"id": "n", "image": "a.png", "conversations": [{"from": "human", "value": "Describe.\n<image>"}]}
    row["conversations"].append({"from": "gpt", "value": "ok"})
    with pytest.raises(RecordError):
        Record.from_dict(row)
    assert Record.from_dict(row, normalize_image_token=True).conversations[0].value == "<image>\nDescribe."


def test_save_is_atomic_and_refuses_invalid_records(tmp_path):
    path = tmp_path / "out.json"
    rec = Record.from_dict(MIMIC)
    save_records(path, [rec])
    before = path.read_bytes()
    bad = Record("bad", "a.png", [Turn("human", "no token"), Turn("gpt", "x")])
    with pytest.raises(RecordError, match="record 'bad'"):
        save_records(path, [rec, bad])
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.json"]  # no temporary file left behind
    save_records(path, [rec])
    assert path.read_bytes() == before  # deterministic bytes


def test_resolve_image_refuses_paths_escaping_the_root(tmp_path):
    root = tmp_path / "images"
    (root / "ptb-xl").mkdir(parents=True)
    outside = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(outside)
    (root / "ptb-xl" / "link.png").symlink_to(outside)

    def rec(image: str) -> Record:
        return Record("r-1", image, [Turn("human", "<image>\nq"), Turn("gpt", "a")])

    with pytest.raises(RecordError, match="record 'r-1'.*'..'"):
        resolve_image(rec("ptb-xl/../../secret.png"), root)
    with pytest.raises(RecordError, match="record 'r-1'.*absolute"):
        resolve_image(rec(str(outside)), root)
    with pytest.raises(RecordError, match="record 'r-1'.*outside"):
        resolve_image(rec("ptb-xl/link.png"), root)
    with pytest.raises(RecordError, match="record 'r-1'.*not found"):
        resolve_image(rec("ptb-xl/missing.png"), root)


def test_open_image_reports_a_corrupt_file(tmp_path):
    root = tmp_path
    good = Record("g", "ok.png", [Turn("human", "<image>\nq"), Turn("gpt", "a")])
    Image.new("L", (5, 3)).save(root / "ok.png")
    img = open_image(good, root)
    assert img.mode == "RGB" and img.size == (5, 3)
    data = (root / "ok.png").read_bytes()
    Path(root / "cut.png").write_bytes(data[: len(data) // 2])
    (root / "text.png").write_text("not an image")
    for name in ("cut.png", "text.png"):
        bad = Record("b-2", name, good.conversations)
        with pytest.raises(RecordError, match=rf"record 'b-2': field 'image': .*{name} is not a readable image"):
            open_image(bad, root)


def test_validate_accepts_list_gold_only_in_gpt_turns():
    rec = Record("q", "a.png", [Turn("human", "<image>\nq"), Turn("gpt", ["yes"])])
    validate(rec)
    rec.conversations[0] = Turn("human", ["<image>\nq"])
    with pytest.raises(RecordError, match=r"conversations\[0\].value must be a string"):
        validate(rec)
