"""Character <-> token alignment of the tagging task, with a tokenizer that merges characters."""
from __future__ import annotations

import numpy as np
import pytest

from peft_tags.data import Example, Span
from peft_tags.tasks.tagging import IGNORE, Tag, TaggingCodec, char_labels_to_spans


@pytest.fixture(scope="module")
def tokenizer(tiny_backbone):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_backbone))


def _roundtrip(codec, ex):
    enc = codec.encode([ex.text], [ex])[0]
    labels = np.where(enc.labels == IGNORE, 0, enc.labels)
    return codec.decode(ex.text, enc, labels)


def test_boundaries_inside_a_token_survive_with_slots(tokenizer):
    # "黑色手机壳": the tokenizer has the piece "色手", which straddles colour | product
    ex = Example("华为黑色手机壳", [Span(0, 2, "1"), Span(2, 4, "16"), Span(4, 7, "4")], "t:1")
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(ex.text)["input_ids"])
    assert any(len(p.strip("▁")) > 1 and p not in ("<s>", "</s>") for p in pieces)
    codec = TaggingCodec(tokenizer, ["1", "16", "4"], slots=4, max_length=64)
    assert _roundtrip(codec, ex) == ex.spans
    one = TaggingCodec(tokenizer, ["1", "16", "4"], slots=1, max_length=64)
    stats = one.alignment_stats([ex.text], [ex])
    assert stats["spans_lost"] > 0, "with one label per token some boundary must be lost"
    assert codec.alignment_stats([ex.text], [ex])["spans_lost"] == 0


def test_spaces_inside_and_between_spans(tokenizer):
    ex = Example("新款 华为 黑色", [Span(3, 5, "1"), Span(6, 8, "16")], "t:1")
    codec = TaggingCodec(tokenizer, ["1", "16"], slots=4, max_length=64)
    assert _roundtrip(codec, ex) == ex.spans
    ex2 = Example("华为 黑色", [Span(0, 5, "1")], "t:1")  # a span with a space inside
    assert _roundtrip(codec, ex2) == ex2.spans


def test_characters_past_the_last_slot_continue_the_span(tokenizer):
    # with 1 slot, "20" and "24" are each one token of two characters: the second
    # character continues the first one's span
    ex = Example("2024", [Span(0, 4, "18")], "t:1")
    codec = TaggingCodec(tokenizer, ["18"], slots=1, max_length=64)
    assert _roundtrip(codec, ex) == ex.spans


def test_truncation_counts_lost_spans(tokenizer):
    text = "华为" * 40
    ex = Example(text, [Span(i, i + 2, "1") for i in range(0, 80, 2)], "t:1")
    codec = TaggingCodec(tokenizer, ["1"], slots=4, max_length=16)
    stats = codec.alignment_stats([text], [ex])
    assert 0 < stats["spans_lost"] < 40
    enc = codec.encode([text])[0]
    assert len(enc.input_ids) == 16
    assert (enc.char_token == -1).any()


def test_types_unseen_in_training_are_left_out(tokenizer):
    ex = Example("华为黑色", [Span(0, 2, "1"), Span(2, 4, "99")], "t:1")
    codec = TaggingCodec(tokenizer, ["1"], slots=4, max_length=64)
    assert codec.labels == ["O", "B-1", "I-1"]
    assert _roundtrip(codec, ex) == [Span(0, 2, "1")]
    assert codec.alignment_stats([ex.text], [ex])["spans"] == 1


@pytest.mark.parametrize("labels, spans", [
    (["B-a", "I-a", "O", "B-b"], [Span(0, 2, "a"), Span(3, 4, "b")]),
    (["I-a", "I-a"], [Span(0, 2, "a")]),  # a stray I- opens a span
    (["B-a", "I-b", "I-b"], [Span(0, 1, "a"), Span(1, 3, "b")]),
    (["B-a", "B-a"], [Span(0, 1, "a"), Span(1, 2, "a")]),
    (["O", "O"], []),
])
def test_bio_decoding(labels, spans):
    assert char_labels_to_spans(labels) == spans


def test_viterbi_returns_the_best_valid_bio_sequence():
    from peft_tags.tasks.tagging import viterbi

    labels = ["O", "B-a", "I-a"]
    allowed = np.ones((3, 3), dtype=bool)
    allowed[0, 2] = False  # O -> I-a forbidden
    first = np.array([True, True, False])
    # per position argmax would say O, I-a, I-a (invalid); the best valid path is B-a, I-a, I-a
    lp = np.log(np.array([[0.5, 0.45, 0.05], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8]]))
    assert [labels[i] for i in viterbi(lp, allowed, first)] == ["B-a", "I-a", "I-a"]
    # and it keeps a valid argmax path unchanged
    lp2 = np.log(np.array([[0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1]]))
    assert [labels[i] for i in viterbi(lp2, allowed, first)] == ["B-a", "I-a", "O"]


def test_decoding_from_log_probs_matches_gold_when_confident(tokenizer):
    ex = Example("华为黑色手机壳", [Span(0, 2, "1"), Span(2, 4, "16"), Span(4, 7, "4")], "t:1")
    codec = TaggingCodec(tokenizer, ["1", "16", "4"], slots=4, max_length=64)
    enc = codec.encode([ex.text], [ex])[0]
    gold = np.where(enc.labels == IGNORE, 0, enc.labels)
    lp = np.full(gold.shape + (len(codec.labels),), np.log(0.01))
    np.put_along_axis(lp, gold[..., None], np.log(0.9), axis=-1)
    assert codec.decode(ex.text, enc, log_probs=lp) == ex.spans


def test_a_span_score_is_the_geometric_mean_of_its_characters_label_probabilities(tokenizer):
    from types import SimpleNamespace

    from peft_tags.tasks.tagging import TaggingTask, span_score

    ex = Example("华为黑色手机壳", [Span(0, 2, "1"), Span(2, 4, "16"), Span(4, 7, "4")], "t:1")
    codec = TaggingCodec(tokenizer, ["1", "16", "4"], slots=4, max_length=64)
    enc = codec.encode([ex.text], [ex])[0]
    gold = np.where(enc.labels == IGNORE, 0, enc.labels)
    probs = np.full(gold.shape + (len(codec.labels),), 0.01)
    np.put_along_axis(probs, gold[..., None], 0.9, axis=-1)
    c = enc.char_token[0], enc.char_slot[0]
    probs[c[0], c[1], gold[c]] = 0.6  # the first character of '华为' is less sure
    lp = np.log(probs)
    assert span_score(codec, enc, lp, 0, 2, "1") == pytest.approx((0.6 * 0.9) ** 0.5)
    assert span_score(codec, enc, lp, 4, 7, "4") == pytest.approx(0.9)
    tagger = SimpleNamespace(codec=codec, meta={"type_names": {"1": "brand"}})
    tags = TaggingTask.decode(tagger, [ex.text], [ex.text], [enc], [lp])[0]
    assert [(t.label, t.text, t.name) for t in tags] == [("1", "华为", "brand"), ("16", "黑色", None), ("4", "手机壳", None)]
    assert tags[0].as_dict() == {"label": "1", "text": "华为", "start": 0, "end": 2, "name": "brand",
                                 "score": round((0.6 * 0.9) ** 0.5, 4)}
    assert "score" not in Tag("1", "华为", 0, 2).as_dict() and Tag("1", "华为", 0, 2, 0.5) == Tag("1", "华为", 0, 2, 0.7)


def test_the_warning_about_cut_titles_comes_once_a_minute_per_run(tokenizer, caplog):
    import logging

    from peft_tags.tasks.tagging import _warn_cut

    codec = TaggingCodec(tokenizer, ["1"], slots=4, max_length=16)
    with caplog.at_level(logging.WARNING, logger="peft_tags.train"):
        _warn_cut(codec, 1, 3)
        _warn_cut(codec, 2, 5)  # within the minute: counted, not logged
        _warn_cut(codec, 1, 1, every_s=0.0)  # the minute is over: the counts since the last warning
        _warn_cut(TaggingCodec(tokenizer, ["1"], slots=4, max_length=16), 1, 1)  # another run warns at once
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["1 of 3 titles are longer than 16 tokens; their ends are not tagged",
                     "3 of 6 titles are longer than 16 tokens; their ends are not tagged",
                     "1 of 1 titles are longer than 16 tokens; their ends are not tagged"]
