"""The tagging task's span head (``task.head: global-pointer``): character-exact cells, rotary
scores, the multi-label categorical loss, a threshold tuned on dev, and the same predict,
export, ONNX and serving paths as the BIO head."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import train_toy, write_recipe
from helpers import cli_fails, edit_json, recipe_problems
from peft_tags.cli import main as cli_main
from peft_tags.data import Example, Span
from peft_tags.tasks.pointer import (GRID, PointerCodec, PointerTask, collate, pair_scores, pointer_loss, rotary)
from peft_tags.tasks.slots import TaggingCodec

GP = {"type": "tagging", "slots": 4, "head": "global-pointer", "pointer_size": 16}
TITLES = ["华为黑色手机壳", "小米白色保护套硅胶", "得力 金属支架2024新款", "黑", ""]


@pytest.fixture(scope="module")
def tokenizer(tiny_backbone):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_backbone))


@pytest.fixture(scope="module")
def gp_run(tmp_path_factory, tiny_backbone, toy_data):
    return train_toy(tmp_path_factory.mktemp("gp"), tiny_backbone, toy_data, task_options=GP, epochs=6, lr=1e-2,
                     head_lr=2e-2)


# ----------------------------------------------------------------------------- the codec
@pytest.mark.parametrize("slots", [1, 2, 4])
def test_the_cells_keep_exactly_the_spans_the_bio_slots_keep(tokenizer, toy_data, slots):
    """Same alignment as the BIO head: a span is lost only where a boundary falls inside a group
    of characters sharing a token's last slot (or past truncation), and the gold spans read back
    from the cells are the data's spans."""
    from peft_tags.data import read_examples

    examples = read_examples(toy_data / "toy" / "dev.txt", "conll") + [
        Example("华为黑色手机壳", [Span(0, 2, "1"), Span(2, 4, "16"), Span(4, 7, "4")], "t:1"),
        Example("新款 华为 黑色", [Span(3, 5, "1"), Span(6, 8, "16")], "t:2"),
        Example("2024", [Span(0, 4, "18")], "t:3")]
    types = sorted({s.label for e in examples for s in e.spans})
    texts = [e.text for e in examples]
    gp = PointerCodec(tokenizer, types, slots, 64, 8)
    bio = TaggingCodec(tokenizer, types, slots, 64)
    assert gp._spans_lost(texts, examples)[:2] == bio._spans_lost(texts, examples)[:2]
    for ex, enc in zip(examples, gp.encode(texts, examples)):
        assert gp.gold_spans(enc) <= set(ex.spans)
        if slots == 4:
            assert gp.gold_spans(enc) == set(ex.spans)
        assert list(enc.starts[1:]) == list(enc.ends[:-1]) or not len(enc.starts)  # groups tile the title
    assert gp._spans_lost(texts, examples)[0] == 0 if slots == 4 else True
    assert PointerCodec(tokenizer, types, 1, 64, 8)._spans_lost(texts, examples)[0] > 0


def test_rotary_scores_depend_only_on_the_distance():
    torch.manual_seed(0)
    q, k = torch.randn(16), torch.randn(16)

    def score(m, n):
        return float(rotary(q[None], torch.tensor([m])) @ rotary(k[None], torch.tensor([n])).T)

    assert score(3, 7) == pytest.approx(score(10, 14), abs=1e-4)
    assert score(3, 7) != pytest.approx(score(3, 9), abs=1e-3)


def test_flat_decoding_keeps_the_best_of_overlapping_spans_and_nested_keeps_all(tokenizer):
    codec = PointerCodec(tokenizer, ["a", "b"], 4, 64, 8)
    # (score, type, start, end), best first
    cands = np.array([[3.0, 0, 0, 4], [2.0, 1, 2, 6], [1.0, 1, 4, 6], [0.5, 0, 0, 2], [-0.5, 0, 6, 8]])
    flat = [(s.label, s.start, s.end) for s, _ in codec.spans(cands, 0.0, nested=False)]
    assert flat == [("a", 0, 4), ("b", 4, 6)]  # adjacent spans are kept, overlapping ones dropped
    nested = [(s.label, s.start, s.end) for s, _ in codec.spans(cands, 0.0, nested=True)]
    assert nested == [("a", 0, 2), ("a", 0, 4), ("b", 2, 6), ("b", 4, 6)]
    assert [(s.start, s.end) for s, _ in codec.spans(cands, -1.0, nested=False)][-1] == (6, 8)


def test_the_loss_is_the_multilabel_categorical_cross_entropy():
    torch.manual_seed(1)
    scores = torch.randn(2, 3, 4, 4)
    scores[..., 3, 0] = float("-inf")  # a pair that does not exist
    gold = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    gold[0, 1, 0, 2] = gold[0, 1, 1, 1] = gold[1, 2, 3, 3] = True
    want = 0.0
    for b in range(2):
        for t in range(3):
            s, y = scores[b, t].flatten(), gold[b, t].flatten()
            ok = torch.isfinite(s)
            neg, pos = s[ok & ~y], s[ok & y]
            want += float(torch.log(1 + neg.exp().sum()) + torch.log(1 + (-pos).exp().sum()))
    assert float(pointer_loss(scores, gold)) == pytest.approx(want / 6, rel=1e-5)
    # a confident right answer costs nearly nothing
    perfect = torch.where(gold, 30.0, -30.0)
    assert float(pointer_loss(perfect, gold)) < 1e-6


def test_pair_scores_match_the_candidates_of_prediction(tokenizer):
    """Training's gathered scores and prediction's per-title candidates are the same numbers."""
    codec = PointerCodec(tokenizer, ["1", "16", "4"], 4, 64, 8)
    examples = [Example("华为黑色手机壳", [Span(0, 2, "1"), Span(2, 4, "16")], "t:1"),
                Example("小米白色", [Span(0, 2, "1")], "t:2")]
    encoded = codec.encode([e.text for e in examples], examples)
    batch = collate(encoded, tokenizer.pad_token_id, 3)
    torch.manual_seed(2)
    logits = torch.randn(*batch["input_ids"].shape, codec.num_outputs)
    scores = pair_scores(codec, logits, batch["cells"], batch["cell_mask"])
    feats = PointerTask.reduce(codec, logits, batch["attention_mask"])
    for b, enc in enumerate(encoded):
        for s, t, a, e in codec.candidates(enc, feats[b], floor=-1e9):
            i, j = list(enc.starts).index(a), list(enc.ends).index(e)
            assert float(scores[b, int(t), i, j]) == pytest.approx(s, abs=1e-4)
        g = len(enc.cells)
        assert torch.isinf(scores[b, :, g:, :]).all() and torch.isinf(scores[b, :, 1, 0]).all()
    assert batch["gold"][0, 0, 0, 0] == (encoded[0].starts[0] == 0 and encoded[0].ends[0] == 2)
    assert int(batch["gold"].sum()) == sum(len(e.gold) for e in encoded)


# ----------------------------------------------------------------------------- a trained run
def test_a_pointer_run_learns_the_toy_set_and_records_its_threshold(gp_run):
    m = json.loads((gp_run / "metrics.json").read_text())
    meta = json.loads((gp_run / "labels.json").read_text())
    assert m["test_micro_f1"] > 0.9, m["test_micro_f1"]
    assert meta["head"] == "global-pointer" and meta["pointer_size"] == 16 and meta["nested"] is False
    assert meta["threshold"] == m["pointer"]["threshold"] and meta["threshold"] in GRID
    by = m["pointer"]["dev_micro_f1_by_threshold"]
    assert by[str(meta["threshold"])] == max(by.values()) == pytest.approx(m["dev_micro_f1"], abs=1e-4)
    types = len(meta["types"])
    assert meta["num_outputs"] == 4 * (2 * 16 + 2 * types)
    assert m["parameters"]["head"] == (32 + 1) * meta["num_outputs"]  # hidden 32, one Linear
    card = (gp_run / "README.md").read_text()
    assert "global-pointer" in card and "no stock pipeline reads them as tags" in card
    assert "pipeline('token-classification'" not in card and "pipeline_tag:" not in card.split("---")[1]


def test_predict_gives_what_training_scored_and_the_cli_prints_tags(gp_run, toy_data, capsys):
    from peft_tags.data import read_examples
    from peft_tags.metrics import span_f1
    from peft_tags.predict import Tagger

    tagger = Tagger.load(gp_run)
    assert tagger.task is PointerTask
    test = read_examples(toy_data / "toy" / "test.txt", "conll")
    got = tagger.tag([e.text for e in test])
    predicted = [[Span(t.start, t.end, t.label) for t in tags] for tags in got]
    recorded = json.loads((gp_run / "metrics.json").read_text())["test_micro_f1"]
    assert span_f1(predicted, [e.spans for e in test])["micro_f1"] == pytest.approx(recorded)
    assert all(0.5 < t.score <= 1 or t.score > 0 for tags in got for t in tags)
    for title, tags in zip([e.text for e in test], got):
        assert all(title[t.start : t.end] == t.text for t in tags)
        assert all(a.end <= b.start for a, b in zip(tags, tags[1:]))  # flat: train has no overlaps
    assert tagger.tag(TITLES)[-1] == []
    assert cli_main(["predict", str(gp_run), "华为黑色手机壳"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "华为黑色手机壳" and len(lines) > 1 and lines[1].strip().split("\t")[1] in "华为黑色手机壳"


def test_export_onnx_and_serving_tag_alike(gp_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from peft_tags.export import export
    from peft_tags.predict import Tagger
    from peft_tags.serve.models import load_runs, tag_requests

    want = [[t.as_dict() for t in tags] for tags in Tagger.load(gp_run).tag(TITLES)]
    merged = export(gp_run, tmp_path / "merged")
    assert [[t.as_dict() for t in tags] for tags in Tagger.load(merged).tag(TITLES)] == want
    onnx = export(gp_run, tmp_path / "onnx", format="onnx")
    got = [[t.as_dict() for t in tags] for tags in Tagger.load(onnx, backend="onnx").tag(TITLES)]
    assert [[(t["label"], t["start"], t["end"]) for t in tags] for tags in got] == \
        [[(t["label"], t["start"], t["end"]) for t in tags] for tags in want]
    runs = load_runs([("gp", gp_run)])
    run = runs["gp"]
    [served] = tag_requests(run.group, [(run, TITLES, {})], 4)
    assert [[t.as_dict() for t in tags] for tags in served] == want
    hf = json.loads((gp_run / "hf" / "config.json").read_text())
    assert hf["id2label"]["0"] == "q0" and any(v.startswith("start ") for v in hf["id2label"].values())


# ----------------------------------------------------------------------------- mistakes
@pytest.mark.parametrize("override, message", [
    ("task.head=crf", "task.head"),
    ("task.pointer_size=15", "task.pointer_size: must be even"),
    ("task.pointer_size=0", "task.pointer_size"),
])
def test_recipe_mistakes_are_one_line(tmp_path, tiny_backbone, toy_data, override, message):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", task_options=GP)
    problems = recipe_problems(recipe, [override])
    assert len(problems) == 1 and message in problems[0], problems


@pytest.mark.parametrize("change, key", [
    (lambda m, *_: m.update(head="crf"), "'head'"),
    (lambda m, *_: m.update(threshold="high"), "'threshold'"),
    (lambda m, *_: m.pop("pointer_size"), "'pointer_size'"),
    (lambda m, *_: m.update(pointer_size=8), "'num_outputs'"),
])
def test_a_damaged_labels_json_is_one_line(gp_run, tmp_path, capsys, change, key):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(gp_run, run)
    edit_json("labels.json", change)(run)
    line = cli_fails(["predict", str(run), "华为"], capsys, run / "labels.json")
    assert key in line, line
