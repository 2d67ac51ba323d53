"""The model card names the synthetic-ECG generator of its training corpus, read from the corpus manifest."""

import json

import pytest

from evl_ecg.models.card import render_card, training_facts


@pytest.mark.parametrize(
    "settings, want",
    [({"seed": 0, "generator": 2}, 2), ({"seed": 0}, 1), (None, None)],  # no field: made before it, by generator 1
)
def test_card_records_the_corpus_generator(tmp_path, settings, want):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    if settings is not None:
        doc = {"format": "evl-ecg synthetic corpus v1 (ECGInstruct / ECGBench record format)", "settings": settings}
        (corpus / "manifest.json").write_text(json.dumps(doc))
    provenance = {"phase": "teacher", "config": {"phase": "teacher", "train_file": str(corpus / "train.json")}}
    facts = training_facts(provenance, tmp_path)
    assert facts["generator"] == want
    card = render_card("t", {**facts, "notes": ["Checkpoint: step 500."]}, None)
    assert (f"synthetic-ECG generator {want}" in card) == (want is not None)
    assert "- Checkpoint: step 500." in card
