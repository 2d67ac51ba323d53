"""Where a record's clean signal comes from (``evl_ecg.data.sources``): each corpus kind gives back the signal its
pages were drawn from, checked against the pages the builds wrote; a bench of images alone says it has none."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evl_ecg.data.corpus import build_corpus, parse_synth_record_id, read_corpus_settings, synth_record, synth_record_id
from evl_ecg.data.records import load_records
from evl_ecg.data.sources import SourceError, open_record_source
from evl_ecg.ecg.render import render

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def stored(root: Path, record) -> np.ndarray:
    with Image.open(root / "images" / record.image) as img:
        return pixels(img)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """A small synthetic corpus, half of its pages augmented (the default)."""
    root = tmp_path_factory.mktemp("synth")
    build_corpus(root, n_train=6, n_bench=3, seed=4, progress=False, size=(160, 120))
    return root


def test_synthetic_records_regenerate_the_signal_of_their_stored_pages(synth):
    source = open_record_source(synth / "bench")
    assert source.kind == "synthetic" and source.signals
    settings = read_corpus_settings(synth / "manifest.json")
    seen_augmented = seen_clean = 0
    for rel in ("train.json", "bench/ptb-test.json", "bench/cpsc-test.json"):
        for record in load_records(synth / rel):
            ecg, spec = source.clean(record)
            item = synth_record(settings, *parse_synth_record_id(record.id))
            assert item.signal_seed == record.meta["signal_seed"]
            assert bool(record.meta["augmented"]) == item.augmented
            if item.augmented:  # the stored page is the clean page under the recorded augmentation
                seen_augmented += 1
                page = render(ecg, spec, augment=item.augment, seed=item.render_seed)
            else:  # the stored page is the clean page itself
                seen_clean += 1
                page = render(ecg, spec)
            assert np.array_equal(pixels(page), stored(synth, record)), record.id
    assert seen_augmented and seen_clean


def test_a_record_of_another_corpus_or_id_is_refused_in_one_line(synth):
    source = open_record_source(synth)
    record = load_records(synth / "bench" / "ptb-test.json")[0]
    forged = record.to_dict() | {"meta": {**record.meta, "signal_seed": record.meta["signal_seed"] + 1}}
    with pytest.raises(SourceError, match="signal_seed") as err:
        source.clean(forged)
    assert "\n" not in str(err.value)
    copy = record.to_dict() | {"id": f"{record.id}~2"}  # a copy under another id: found by its page
    assert np.array_equal(source.clean(copy)[0].signal, source.clean(record)[0].signal)
    with pytest.raises(SourceError, match="not the id of a synthetic corpus record"):
        source.clean({"id": "ecg-7", "meta": {}})
    with pytest.raises(SourceError, match="index beyond"):
        source.clean({"id": synth_record_id("ptb-test", 3), "meta": {}})


def test_a_bench_of_images_alone_gives_image_views_only(synth, tmp_path):
    bench = tmp_path / "ecgbench"
    shutil.copytree(synth / "bench", bench / "bench")
    shutil.copytree(synth / "images", bench / "images")
    source = open_record_source(bench / "bench")
    assert source.kind == "images" and not source.signals
    assert "image views only" in source.describe() and "\n" not in source.describe()
    with pytest.raises(SourceError, match="image views only"):
        source.clean(load_records(bench / "bench" / "ptb-test.json")[0])


@pytest.mark.parametrize("kind", ["ptbxl", "challenge", "code15"])
def test_database_records_are_read_again_from_their_source_files(kind, tmp_path):
    from evl_ecg.data.build import build_from_database

    out = tmp_path / kind
    build_from_database(FIXTURES / kind, kind, out, progress=False, augment=False)
    source = open_record_source(out / "bench")
    assert source.kind == "database"
    manifest = json.loads((out / "manifest.json").read_text())
    checked = 0
    for rel in manifest["files"].values():
        for record in load_records(out / rel):
            ecg, spec = source.clean(record)
            assert np.array_equal(pixels(render(ecg, spec)), stored(out, record)), record.id
            checked += 1
    assert checked == sum(manifest["counts"].values()) > 0


def test_a_database_corpus_without_its_database_folder_gives_image_views_only(tmp_path):
    from evl_ecg.data.build import build_from_database

    database = tmp_path / "db"
    shutil.copytree(FIXTURES / "ptbxl", database)
    build_from_database(database, "ptbxl", tmp_path / "out", progress=False, augment=False)
    assert open_record_source(tmp_path / "out").signals
    shutil.rmtree(database)
    source = open_record_source(tmp_path / "out")
    assert not source.signals and str(database) in source.why
