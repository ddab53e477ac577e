"""Task `multilabel`: tags from a vocabulary with a sigmoid per tag, thresholds tuned on dev."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, train_toy, write_recipe
from peft_tags.cli import main as cli_main
from peft_tags.tasks.multilabel import GRID, decide, held_out_check, positive_weights, tune_global, tune_per_tag

ML = {"type": "multilabel", "pooling": "mean", "thresholds": "per-tag"}


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory, tiny_backbone, toy_tags):
    return train_toy(tmp_path_factory.mktemp("ml"), tiny_backbone, toy_tags, task_options=ML, epochs=8, lr=2e-2,
                     head_lr=1e-1)


def test_a_learnable_toy_set_reaches_high_f1(ml_run):
    m = json.loads((ml_run / "metrics.json").read_text())
    assert m["task"] == "multilabel"
    assert m["test_micro_f1"] > 0.85, m["test_micro_f1"]
    test = m["scores"]["test"]
    for key in ("micro_precision", "micro_recall", "macro_f1", "example_f1", "per_tag", "by_rule"):
        assert key in test
    assert set(test["by_rule"]) == {"per-tag", "global", "0.5"}
    assert test["by_rule"]["per-tag"]["micro_f1"] == pytest.approx(test["micro_f1"])  # the recipe's rule is per-tag
    dev = m["scores"]["dev"]  # dev is scored at the one global threshold tuned on it, not at per-tag ones
    assert dev["by_rule"]["global"]["micro_f1"] == pytest.approx(dev["micro_f1"]) == pytest.approx(m["dev_micro_f1"])
    assert m["thresholds"]["tuned_per_tag"] == sum(1 for v in dev["per_tag"].values() if v["support"] >= 5)
    assert m["thresholds"]["rule"] == m["thresholds"]["asked"] == "per-tag" and m["thresholds"]["held_out_dev"] is None
    stats = m["tag_stats"]
    assert stats["vocabulary"] == 9 and stats["test"]["tags_outside_vocabulary"] == 0
    assert "micro avg" in (ml_run / "test_report.txt").read_text()


def test_thresholds_round_trip_into_predict(ml_run, toy_tags):
    from peft_tags.predict import Tagger
    from peft_tags.tasks.multilabel import MultiLabelTask

    meta = json.loads((ml_run / "labels.json").read_text())
    th = meta["thresholds"]
    assert th["rule"] == "per-tag" and set(th["per_tag"]) == set(meta["tags"]) and 0 < th["global"] < 1
    tagger = Tagger.load(ml_run)
    assert tagger.task is MultiLabelTask
    titles = ["华为黑色硅胶手机壳", "小米白色支架", "得力笔记本"]
    got = tagger.tag(titles)
    # the same decisions by hand from the probabilities and the saved thresholds
    from peft_tags.tasks.multilabel import predict_probs

    probs = predict_probs(tagger.model, tagger.codec, tagger.codec.encode(titles), 8, tagger.device)
    rule = np.array([th["per_tag"][t] for t in tagger.codec.tags])
    want = [[tagger.codec.tags[j] for j in row] for row in decide(probs, rule, None)]
    assert [[t.tag for t in ts] for ts in got] == want
    assert all(ts == sorted(ts, key=lambda t: -t.score) for ts in got)
    # on the test titles, predict's tags score exactly what training recorded for test
    from peft_tags.data import read_examples
    from peft_tags.metrics import tag_f1

    test = read_examples(toy_tags / "toy-tags" / "test.jsonl", "tags")
    predicted = [[t.tag for t in ts] for ts in tagger.tag([e.text for e in test])]
    recorded = json.loads((ml_run / "metrics.json").read_text())["test_micro_f1"]
    assert tag_f1(predicted, [e.tags for e in test])["micro_f1"] == pytest.approx(recorded) and recorded > 0.85
    # one global threshold and a cap, chosen at predict time
    assert all(len(ts) <= 1 for ts in tagger.tag(titles, threshold=0.01, top_k=1))
    code = ("import json,sys; from peft_tags.predict import Tagger; "
            f"print(json.dumps([[t.as_dict() for t in ts] for ts in Tagger.load(sys.argv[1]).tag({titles!r})]))")
    fresh = subprocess.run([sys.executable, "-c", code, str(ml_run)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert json.loads(fresh.stdout) == [[t.as_dict() for t in ts] for ts in got]


def test_cli_predict_prints_tags_with_scores(ml_run, capsys):
    assert cli_main(["predict", str(ml_run), "华为黑色硅胶手机壳"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "华为黑色硅胶手机壳"
    tag, score = lines[1].strip().split("\t")
    assert 0 < float(score) <= 1


def test_mean_pooled_logits_are_the_head_on_the_mean_vector(tiny_backbone):
    """The claim the task rests on: pooling the per-token logits is the head applied to the
    pooled title vector (mean over the real tokens, or the first token)."""
    from peft_tags.model import build_token_classifier, load_tokenizer
    from peft_tags.tasks.multilabel import MultiLabelCodec, collate

    model = build_token_classifier(str(tiny_backbone), 5, seed=0).eval()
    tok = load_tokenizer(str(tiny_backbone))
    for pooling in ("mean", "first"):
        codec = MultiLabelCodec(tok, list("abcde"), 64, pooling)
        batch = collate(codec.encode(["华为黑色手机壳", "小米"]), tok.pad_token_id)
        with torch.no_grad():
            out = model(**batch, output_hidden_states=True)
            h = out.hidden_states[-1]
            mask = batch["attention_mask"].unsqueeze(-1).float()
            vec = (h * mask).sum(1) / mask.sum(1) if pooling == "mean" else h[:, 0]
            torch.testing.assert_close(codec.pool(out.logits, batch["attention_mask"]), model.classifier(vec),
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["prompt", "prefix", "ia3", "bottleneck"])
def test_every_method_applies_unchanged(tmp_path, tiny_backbone, toy_tags, method):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_tags, tmp_path / "out", method=method,
                          task_options=ML, epochs=2)
    assert cli_main(["train", str(recipe)]) == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["parameters"]["adapter"] > 0 and 0.0 <= m["test_micro_f1"] <= 1.0
    from peft_tags.predict import Tagger

    assert len(Tagger.load(tmp_path / "out").tag(["华为黑色手机壳"])) == 1


def test_global_threshold_is_the_best_on_dev():
    rng = np.random.default_rng(0)
    gold = rng.random((60, 4)) < 0.3
    probs = np.clip(gold * 0.35 + rng.random((60, 4)) * 0.5, 0, 1)
    t, f1 = tune_global(probs, gold)
    def micro(th):
        pred = probs >= th
        return 2 * (pred & gold).sum() / (pred.sum() + gold.sum())
    assert f1 == pytest.approx(micro(t)) and all(micro(x) <= f1 + 1e-12 for x in GRID)
    # gold tags outside the vocabulary lower recall, never raise F1
    assert tune_global(probs, gold, missed=10)[1] < f1


def test_per_tag_thresholds_fall_back_for_rare_tags():
    gold = np.zeros((20, 3), dtype=bool)
    gold[:10, 0] = True  # frequent tag: separable at 0.7
    gold[:2, 1] = True  # rare tag: 2 dev titles
    probs = np.full((20, 3), 0.1)
    probs[:10, 0], probs[10:, 0] = 0.8, 0.6
    probs[:2, 1] = 0.9
    th = tune_per_tag(probs, gold, global_threshold=0.4, min_support=5)
    assert 0.6 < th[0] <= 0.8  # tuned
    assert th[1] == 0.4 and th[2] == 0.4  # too few dev titles: the global one


def _calibrated(n: int, tags: int, offsets: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose best threshold differs per tag by ``offsets``: positives near 0.5 + offset."""
    rng = np.random.default_rng(seed)
    gold = rng.random((n, tags)) < 0.15
    probs = np.clip(0.3 + offsets + 0.25 * gold + rng.normal(0, 0.08, (n, tags)), 0.01, 0.99)
    return probs, gold


def test_held_out_check_keeps_per_tag_thresholds_that_generalise():
    # every tag has its own calibration (a tag's positives score 0.55 + its offset): one global threshold
    # cannot fit them all, per-tag thresholds can, and they win on the held-out folds
    probs, gold = _calibrated(400, 6, np.array([-0.25, -0.15, 0.0, 0.1, 0.2, 0.3]), seed=1)
    check = held_out_check(probs, gold, np.zeros(400, dtype=np.int64), min_support=5)
    assert check["folds"] == 5 and check["per-tag"] > check["global"] + 0.05, check


def test_held_out_check_prefers_one_threshold_where_per_tag_fits_noise():
    # one calibration for all 40 tags and only a few positives per tag: per-tag thresholds chase noise
    probs, gold = _calibrated(60, 40, np.zeros(40), seed=2)
    check = held_out_check(probs, gold, np.zeros(60, dtype=np.int64), min_support=2)
    assert check["global"] > check["per-tag"], check
    # too few titles for 5 folds: no check
    assert held_out_check(probs[:9], gold[:9], np.zeros(9, dtype=np.int64), min_support=2) is None


def test_held_out_check_counts_tags_outside_the_vocabulary_as_misses():
    probs, gold = _calibrated(100, 4, np.zeros(4), seed=3)
    none = held_out_check(probs, gold, np.zeros(100, dtype=np.int64), min_support=5)
    some = held_out_check(probs, gold, np.full(100, 2, dtype=np.int64), min_support=5)
    assert some["global"] < none["global"] and some["per-tag"] < none["per-tag"]


def test_auto_rule_is_decided_on_dev_and_saved(tmp_path, tiny_backbone, toy_tags):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_tags, tmp_path / "out",
                          task_options={**ML, "thresholds": "auto"}, epochs=2, lr=2e-2, head_lr=1e-1)
    assert cli_main(["train", str(recipe)]) == 0
    th = json.loads((tmp_path / "out" / "labels.json").read_text())["thresholds"]
    check = th["held_out_dev"]
    assert th["asked"] == "auto" and set(check) == {"per-tag", "global", "folds"}
    assert th["rule"] == ("per-tag" if check["per-tag"] > check["global"] else "global")
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["test_micro_f1"] == pytest.approx(m["scores"]["test"]["by_rule"][th["rule"]]["micro_f1"])


def test_decide_orders_by_score_and_caps():
    probs = np.array([[0.2, 0.9, 0.6], [0.1, 0.1, 0.1]])
    assert decide(probs, 0.5, None) == [[1, 2], []]
    assert decide(probs, 0.5, 1) == [[1]]  + [[]]
    assert decide(probs, np.array([0.1, 0.95, 0.5]), None) == [[2, 0], [0]]


def test_positive_weights():
    from peft_tags.data import TagExample

    ex = [TagExample("a", ["x"], "f:1"), TagExample("b", ["x", "y"], "f:2"), TagExample("c", [], "f:3"),
          TagExample("d", [], "f:4")]
    assert positive_weights(ex, ["x", "y"], "none", 50) is None
    np.testing.assert_allclose(positive_weights(ex, ["x", "y"], "balanced", 50), [1.0, 3.0])
    np.testing.assert_allclose(positive_weights(ex, ["x", "y"], "sqrt", 50), [1.0, np.sqrt(3.0)])
    np.testing.assert_allclose(positive_weights(ex, ["x", "y"], "balanced", 2.0), [1.0, 2.0])


@pytest.mark.parametrize("line, message", [
    ('{"text": "ab", "tags": ["x", ""]}', ":2: tags[1] must be a non-empty string, got ''"),
    ('{"text": "ab", "tags": "x"}', ":2: 'tags' must be a list of strings, got str"),
    ('{"text": "ab", "tags": [3]}', ":2: tags[0] must be a non-empty string, got 3"),
    ('{"text": "ab"}', ":2: missing field 'tags' (use [] for a title without tags)"),
    ('{"text": "", "tags": []}', ":2: 'text' is empty"),
])
def test_bad_tags_name_the_line(tmp_path, tiny_backbone, toy_tags, capsys, line, message):
    from test_errors import _assert_clean_failure

    data = tmp_path / "data" / "toy-tags"
    data.mkdir(parents=True)
    for split in ("dev", "test"):
        (data / f"{split}.jsonl").write_text((toy_tags / "toy-tags" / f"{split}.jsonl").read_text(encoding="utf-8"))
    (data / "train.jsonl").write_text('{"text": "华为黑色", "tags": ["黑色"]}\n' + line + "\n", encoding="utf-8")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, tmp_path / "data", tmp_path / "out", task_options=ML)
    capsys.readouterr()
    rc = cli_main(["train", str(recipe)])
    _assert_clean_failure(rc, capsys.readouterr().err, "train.jsonl" + message, tmp_path)


@pytest.mark.parametrize("override, message", [
    ("data.format=conll", "data.format: task multilabel reads 'tags' or 'hf-tags' files"),
    ("data.dev=null", "data.dev: task multilabel tunes its decision thresholds on dev"),
])
def test_multilabel_recipe_mistakes(tmp_path, tiny_backbone, toy_tags, capsys, override, message):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_tags, tmp_path / "out", task_options=ML)
    assert cli_main(["train", str(recipe), override]) == 2
    assert message in capsys.readouterr().err


def test_a_training_set_without_tags_is_an_error(tmp_path, tiny_backbone, toy_tags, capsys):
    data = tmp_path / "data" / "toy-tags"
    data.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        (data / f"{split}.jsonl").write_text('{"text": "华为黑色", "tags": []}\n', encoding="utf-8")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, tmp_path / "data", tmp_path / "out", task_options=ML)
    assert cli_main(["train", str(recipe)]) == 2
    assert "data.train: 'toy-tags/train.jsonl' holds no tag" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_merges_and_keeps_the_decision_rule(ml_run, tmp_path):
    from peft_tags.export import export
    from peft_tags.predict import Tagger
    from peft_tags.tasks.multilabel import MultiLabelTask

    dest = export(ml_run, tmp_path / "merged")
    merged = Tagger.load(dest)
    assert merged.task is MultiLabelTask and merged.meta["thresholds"] == Tagger.load(ml_run).meta["thresholds"]
    titles = ["华为黑色硅胶手机壳", "小米白色支架", "得力笔记本", "晨光红色金属保护套"]
    a, b = Tagger.load(ml_run).tag(titles), merged.tag(titles)
    assert [[t.tag for t in ts] for ts in a] == [[t.tag for t in ts] for ts in b]
    for x, y in zip(a, b):
        np.testing.assert_allclose([t.score for t in x], [t.score for t in y], atol=1e-5)


def test_cli_predict_choices(ml_run, lora_tagging_run, capsys):
    assert cli_main(["predict", str(ml_run), "华为黑色硅胶手机壳", "--top-k", "1", "--threshold", "0.01"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2  # the title and one tag
    assert cli_main(["predict", str(lora_tagging_run), "华为黑色", "--top-k", "1"]) == 2
    assert "--top-k: not an option of tagging runs" in capsys.readouterr().err


@pytest.fixture(scope="module")
def lora_tagging_run(tmp_path_factory, tiny_backbone, toy_data):
    tmp = tmp_path_factory.mktemp("tagging")
    recipe = write_recipe(tmp / "r.yaml", tiny_backbone, toy_data, tmp / "out", epochs=1)
    assert cli_main(["train", str(recipe)]) == 0
    return tmp / "out"


def test_retune_changes_the_rule_without_training(ml_run, tmp_path, capsys):
    import shutil

    from peft_tags.predict import Tagger

    run = tmp_path / "run"
    shutil.copytree(ml_run, run)
    before = json.loads((run / "metrics.json").read_text())
    weights = {p.name: p.read_bytes() for p in run.glob("*.safetensors")}
    assert cli_main(["retune", str(run), "task.thresholds=global"]) == 0
    assert "global thresholds" in capsys.readouterr().err
    after = json.loads((run / "metrics.json").read_text())
    meta = json.loads((run / "labels.json").read_text())
    assert meta["thresholds"]["rule"] == "global" and after["thresholds"]["rule"] == "global"
    # the same model and dev, so the same global threshold and the score training recorded for that rule
    assert meta["thresholds"]["global"] == before["thresholds"]["global"]
    assert after["test_micro_f1"] == pytest.approx(before["scores"]["test"]["by_rule"]["global"]["micro_f1"])
    assert after["retuned"][0]["overrides"] == ["task.thresholds=global"]
    assert after["retuned"][0]["before"]["test_micro_f1"] == before["test_micro_f1"]
    assert after["train_seconds"] == before["train_seconds"]  # training facts are kept
    assert {p.name: p.read_bytes() for p in run.glob("*.safetensors")} == weights
    assert "thresholds: global" in (run / "recipe.yaml").read_text()
    assert not list(run.glob(".retune-*"))
    titles = ["华为黑色硅胶手机壳", "小米白色支架"]
    clf = Tagger.load(run)
    assert clf.tag(titles) == clf.tag(titles, threshold=meta["thresholds"]["global"])
    # auto: the rule comes from the held-out check, and a cap applies from then on
    assert cli_main(["retune", str(run), "task.thresholds=auto", "task.top_k=1"]) == 0
    th = json.loads((run / "labels.json").read_text())["thresholds"]
    assert th["rule"] == ("per-tag" if th["held_out_dev"]["per-tag"] > th["held_out_dev"]["global"] else "global")
    assert all(len(ts) <= 1 for ts in Tagger.load(run).tag(titles))
    assert len(json.loads((run / "metrics.json").read_text())["retuned"]) == 2


@pytest.mark.parametrize("args, message", [
    (["training.lr=1e-3"], "'training.lr=1e-3': retune takes KEY=VALUE with KEY one of task.thresholds"),
    (["task.thresholds=best"], "task.thresholds"),
    (["data.dev=missing.jsonl"], "data.dev"),
])
def test_retune_mistakes(ml_run, tmp_path, capsys, args, message):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ml_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert cli_main(["retune", str(run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing half-written


def test_retune_refuses_tagging_runs_and_non_runs(lora_tagging_run, tmp_path, capsys):
    assert cli_main(["retune", str(lora_tagging_run)]) == 2
    assert "a tagging run; it has no decision rule to tune again (runs of task multilabel have)" in capsys.readouterr().err
    assert cli_main(["retune", str(tmp_path)]) == 2
    assert "not a trained output directory (no labels.json)" in capsys.readouterr().err


def test_head_bias_starts_at_the_tags_base_rates(tmp_path, tiny_backbone, toy_tags):
    from peft_tags.data import TagExample, read_examples
    from peft_tags.model import build_token_classifier, load_tokenizer
    from peft_tags.recipe import load_recipe
    from peft_tags.tasks import make_task
    from peft_tags.tasks.multilabel import prior_logits

    ex = [TagExample("a", ["x"], "f:1"), TagExample("b", ["x", "y"], "f:2"), TagExample("c", [], "f:3")]
    np.testing.assert_allclose(prior_logits(ex, ["x", "y", "z"]),  # (count + 0.5) / (titles + 1), as log-odds
                               np.log(np.array([2.5, 1.5, 0.5]) / np.array([1.5, 2.5, 3.5])), rtol=1e-6)
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_tags, tmp_path / "out", task_options=ML))
    train = read_examples(toy_tags / "toy-tags" / "train.jsonl", "tags")
    task = make_task(recipe, load_tokenizer(str(tiny_backbone)), train)
    model = build_token_classifier(str(tiny_backbone), task.num_outputs, seed=0)
    task.init_head(model, task.encode(train))
    rate = np.array([sum(t in e.tags for e in train) / len(train) for t in task.codec.tags])
    np.testing.assert_allclose(torch.sigmoid(model.classifier.bias.detach()).numpy(), rate, atol=0.01)
    # head_bias: zero leaves the bias as transformers built it (zeros)
    recipe = load_recipe(write_recipe(tmp_path / "z.yaml", tiny_backbone, toy_tags, tmp_path / "out",
                                      task_options={**ML, "head_bias": "zero"}))
    task = make_task(recipe, load_tokenizer(str(tiny_backbone)), train)
    model = build_token_classifier(str(tiny_backbone), task.num_outputs, seed=0)
    task.init_head(model, task.encode(train))
    assert not model.classifier.bias.detach().any()


@pytest.mark.parametrize("asked", [{}, {"head_bias": "auto"}, {"head_bias": "prior"}], ids=["default", "auto", "prior"])
def test_tagging_head_bias_prior_is_each_slots_label_shares(tmp_path, tiny_backbone, toy_data, asked):
    from peft_tags.data import read_examples
    from peft_tags.model import build_token_classifier, load_tokenizer
    from peft_tags.recipe import load_recipe
    from peft_tags.tasks import make_task
    from peft_tags.tasks.tagging import IGNORE

    train = read_examples(toy_data / "toy" / "train.txt", "conll")
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out",
                                      task_options=asked))
    task = make_task(recipe, load_tokenizer(str(tiny_backbone)), train)
    encoded = task.encode(train)
    model = build_token_classifier(str(tiny_backbone), task.num_outputs, seed=0)
    task.init_head(model, encoded)
    n = len(task.codec.labels)
    shares = torch.softmax(model.classifier.bias.detach().reshape(task.codec.slots, n), dim=1).numpy()
    labels = np.concatenate([e.labels for e in encoded])
    first = labels[:, 0][labels[:, 0] != IGNORE]  # slot 0 holds a character in every token
    np.testing.assert_allclose(shares[0], np.bincount(first, minlength=n) / len(first), atol=0.01)
    assert shares.shape == (task.codec.slots, n)  # a distribution per slot, slot-major as the head's outputs
