"""Bad inputs end in one line naming the culprit, exit code 2, and no traceback.

Damaged or mismatched output directories given to predict, export and retune; YAML alias
bombs and values that make no sense in recipes; control characters in titles; CLI usage
mistakes. A few tests check that test spans of types unseen in train are counted.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path

import pytest

from conftest import write_recipe
from helpers import TITLE, cli_fails, drop_log_handlers, edit_json, overwrite, rm, run_argv, truncate, yaml_bomb
from peft_tags.cli import main as cli_main

UNSEEN = "新 B-99\n款 I-99\n华 B-1\n为 I-1\n\n新 B-99\n款 I-99\n\n"  # two test spans of a type train lacks


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_backbone, toy_data):
    """One tiny LoRA run whose test file has two spans of a type unseen in train."""
    tmp = tmp_path_factory.mktemp("bad-inputs")
    shutil.copytree(toy_data / "toy", tmp / "data" / "toy")
    with open(tmp / "data" / "toy" / "test.txt", "a", encoding="utf-8") as f:
        f.write(UNSEEN)
    recipe = write_recipe(tmp / "lora.yaml", tiny_backbone, tmp / "data", tmp / "out", epochs=1)
    assert cli_main(["train", str(recipe)]) == 0
    drop_log_handlers()  # training logs to the stderr of this setup
    return tmp / "out"


@pytest.fixture(scope="module")
def full_run(lora_run, tmp_path_factory):
    """The LoRA run exported: an output directory of method full."""
    dest = tmp_path_factory.mktemp("full") / "merged"
    assert cli_main(["export", str(lora_run), str(dest)]) == 0
    return dest


# ----------------------------------------------------------------------------- damaging a run
# damage(run, tmp): helpers' rm, overwrite, truncate and edit_json (its change gets (data, run, tmp)), and these
def _append(name, extra: bytes):
    def damage(run, tmp):
        with open(run / name, "ab") as f:
            f.write(extra)
    return damage


def _tensors(name, edit):
    def damage(run, tmp):
        from safetensors.torch import load_file, save_file

        state = load_file(str(run / name))
        edit(state)
        save_file(state, str(run / name))
    return damage


def _recipe(edit):
    def damage(run, tmp):
        text = (run / "recipe.yaml").read_text(encoding="utf-8")
        (run / "recipe.yaml").write_text(edit(text, run, tmp), encoding="utf-8")
    return damage


def _other_backbone(text, run, tmp):
    name = re.search(r"^  name: (.*)$", text, re.M).group(1)
    shutil.copytree(name, tmp / "other-bert")
    return text.replace(f"  name: {name}\n", f"  name: {tmp / 'other-bert'}\n", 1)


def _multilabel_meta(d, run, tmp):
    d.update(task="multilabel", tags=[f"t{i}" for i in range(d["num_outputs"])], pooling="mean",
             thresholds={"rule": "global", "global": 0.5})


def _set(**kv):
    return lambda d, run, tmp: d.update(kv)


def _drop(key):
    return lambda d, run, tmp: d.pop(key)


def _map(fn):
    """Apply ``fn(key, tensor)`` -> tensor or None (drop) to every tensor of a state dict."""
    def edit(state):
        for k in list(state):
            v = fn(k, state[k])
            if v is None:
                del state[k]
            else:
                state[k] = v
    return edit


Q0 = "bert.encoder.layer.0.attention.self.query"
BOMB = yaml_bomb(60)
ALL, LOADING = ("predict", "export", "retune"), ("predict", "export")

# (id, damage(run, tmp), culprits (a file of the run by name, or text), commands)
RUN_DAMAGE = [
    ("no-head", rm("head.safetensors"), ["not a peft-tags output directory", "head.safetensors"], ALL),
    ("no-adapter-weights", rm("adapter_model.safetensors"), ["adapter_model.safetensors"], ALL),
    ("no-adapter-config", rm("adapter_config.json"), ["adapter_config.json"], ALL),
    ("labels-not-json", overwrite("labels.json", '{"task": "tagging",\n  oops'), ["@labels.json:2", "invalid JSON"],
     ALL),
    ("labels-empty", overwrite("labels.json", ""), ["@labels.json:1", "invalid JSON"], ALL),
    ("labels-not-utf8", overwrite("labels.json", b'{"types": ["\xff"]}'), ["@labels.json", "UTF-8"], ALL),
    ("labels-not-object", overwrite("labels.json", "[1, 2]"), ["@labels.json", "JSON object"], ALL),
    ("labels-no-slots", edit_json("labels.json", _drop("slots")), ["@labels.json", "'slots'"], ALL),
    ("labels-slots-string", edit_json("labels.json", _set(slots="4")), ["@labels.json", "'slots'"], ALL),
    ("labels-types-string", edit_json("labels.json", _set(types="1,4")), ["@labels.json", "'types'"], ALL),
    ("labels-num-outputs", edit_json("labels.json", _set(num_outputs=12)), ["@labels.json", "'num_outputs'"], ALL),
    ("labels-max-length", edit_json("labels.json", _set(max_length=0)), ["@labels.json", "'max_length'"], ALL),
    ("labels-unknown-task", edit_json("labels.json", _set(task="ner")), ["@labels.json", "'task'"], ALL),
    ("labels-no-thresholds", edit_json("labels.json", lambda d, r, t: (_multilabel_meta(d, r, t), d.pop("thresholds"))),
     ["@labels.json", "'thresholds'"], ALL),
    ("labels-bad-threshold", edit_json("labels.json", lambda d, r, t: (_multilabel_meta(d, r, t),
                                                                       d["thresholds"].update({"global": 2}))),
     ["@labels.json", "thresholds.global"], ALL),
    ("labels-other-task", edit_json("labels.json", _multilabel_meta), ["@labels.json", "task.type tagging"], ALL),
    ("recipe-truncated", truncate("recipe.yaml", 400), ["@recipe.yaml"], ALL),
    ("recipe-no-method-on", _recipe(lambda s, r, t: s[: s.index("method:")]), ["@recipe.yaml", "more problem"], ALL),
    ("recipe-binary", overwrite("recipe.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), ["@recipe.yaml"], ALL),
    ("recipe-bad-yaml", overwrite("recipe.yaml", "backbone: [\n  name: x\n"), ["@recipe.yaml", "invalid YAML"], ALL),
    ("recipe-empty", overwrite("recipe.yaml", "# nothing\n"), ["@recipe.yaml", "empty"], ALL),
    ("recipe-alias-bomb", overwrite("recipe.yaml", BOMB), ["@recipe.yaml", "too many YAML aliases"], ALL),
    ("recipe-inf-lr", _recipe(lambda s, r, t: re.sub(r"^  lr: .*$", "  lr: .inf", s, flags=re.M)),
     ["@recipe.yaml", "training.lr", "finite"], ALL),
    ("recipe-other-backbone", _recipe(_other_backbone), ["@adapter_config.json", "other-bert", "backbone"], ALL),
    ("head-truncated", truncate("head.safetensors", -20), ["@head.safetensors", "truncated"], ALL),
    ("head-empty", overwrite("head.safetensors", b""), ["@head.safetensors", "empty"], ALL),
    ("head-garbage", overwrite("head.safetensors", b"this is not a safetensors file"), ["@head.safetensors"], ALL),
    ("head-outputs", _tensors("head.safetensors", _map(lambda k, v: v[:12].clone())),
     ["@head.safetensors", "num_outputs 36"], ALL),
    ("head-no-bias", _tensors("head.safetensors", _map(lambda k, v: None if k == "bias" else v)),
     ["@head.safetensors", "'bias'"], ALL),
    ("adapter-truncated", truncate("adapter_model.safetensors", -100), ["@adapter_model.safetensors", "truncated"],
     ALL),
    ("adapter-appended", _append("adapter_model.safetensors", b"\0" * 16), ["@adapter_model.safetensors"], ALL),
    ("adapter-header-cut", truncate("adapter_model.safetensors", 40), ["@adapter_model.safetensors"], ALL),
    ("adapter-no-lora", _tensors("adapter_model.safetensors", _map(lambda k, v: None if "lora_" in k else v)),
     ["@adapter_model.safetensors", "no LORA weights"], ALL),
    ("adapter-head-outputs", _tensors("adapter_model.safetensors",
                                      _map(lambda k, v: v[:12].clone() if "classifier" in k else v)),
     ["@adapter_model.safetensors", "num_outputs 36"], ALL),
    ("adapter-config-not-json", overwrite("adapter_config.json", "{\n"), ["@adapter_config.json:2", "invalid JSON"],
     ALL),
    ("adapter-config-no-type", edit_json("adapter_config.json", _drop("peft_type")),
     ["@adapter_config.json", "peft_type"], ALL),
    ("adapter-rank", edit_json("adapter_config.json", _set(r=8)),
     ["@adapter_config.json", "rank 8", "adapter_model.safetensors holds rank 4"], ALL),
    ("adapter-rank-string", edit_json("adapter_config.json", _set(r="4")), ["@adapter_config.json", "'r'"], ALL),
    ("adalora-rank-pattern", edit_json("adapter_config.json", _set(peft_type="ADALORA", init_r=4, rank_pattern={
        f"{Q0}.lora_E": [True, True, False, False]})), ["@adapter_config.json", "rank 2", "rank_pattern", Q0], ALL),
    ("adapter-targets", edit_json("adapter_config.json", _set(target_modules=["query"])),
     ["@adapter_config.json", "target_modules", "value"], ALL),
    ("adapter-other-backbone", edit_json("adapter_config.json", lambda d, r, t: d.update(
        base_model_name_or_path=str(t / "other-bert"))), ["@adapter_config.json", "other-bert", "backbone.name"], ALL),
    # past the checks: what torch and peft raise while loading
    ("head-hidden-size", _tensors("head.safetensors", _map(lambda k, v: v[:, :16].clone() if k == "weight" else v)),
     ["@head.safetensors", "cannot be loaded", "size mismatch"], LOADING),
    ("adapter-input-size", _tensors("adapter_model.safetensors",
                                    _map(lambda k, v: v[:, :16].clone() if k.endswith("query.lora_A.weight") else v)),
     ["adapter_model.safetensors", "cannot be loaded", "size mismatch"], LOADING),
    ("adapter-unknown-type", edit_json("adapter_config.json", _set(peft_type="NOPE")),
     ["adapter_config.json", "cannot be loaded", "NOPE"], LOADING),
]


@pytest.mark.parametrize("case, command", [(c, cmd) for c in RUN_DAMAGE for cmd in c[3]],
                         ids=[f"{c[0]}-{cmd}" for c in RUN_DAMAGE for cmd in c[3]])
def test_damaged_run_is_one_line_naming_the_file(case, command, lora_run, tmp_path, capsys):
    _, damage, culprits, _ = case
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    damage(run, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    cli_fails(run_argv(command, run, tmp_path), capsys, *[run / c[1:] if c.startswith("@") else c for c in culprits])
    assert not (tmp_path / "dest").exists() and not list(tmp_path.glob(".dest.*"))
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # retune wrote nothing


def test_retune_names_a_damaged_metrics_file(lora_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    (run / "metrics.json").write_text('{"test_micro_f1": 0.5,\n', encoding="utf-8")
    cli_fails(["retune", run], capsys, f"{run / 'metrics.json'}:2", "invalid JSON")


@pytest.mark.parametrize("command", LOADING)
@pytest.mark.parametrize("damage, culprit", [
    (overwrite("model/config.json", "{"), "model/config.json:1"),
    (truncate("model/model.safetensors", -64), "model/model.safetensors"),
])
def test_damaged_full_run_names_the_file(full_run, tmp_path, capsys, command, damage, culprit):
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    damage(run, tmp_path)
    cli_fails(run_argv(command, run, tmp_path), capsys, run / culprit)


def test_intact_runs_still_load(lora_run, full_run):
    from peft_tags.predict import Tagger
    from peft_tags.rundir import check_run_dir

    for run in (lora_run, full_run):
        recipe, meta = check_run_dir(run)
        assert meta["num_outputs"] == 36
        assert Tagger.load(run, device="cpu").tag([TITLE])


def test_relative_backbone_in_the_adapter_agrees_with_the_absolute_one(lora_run, tmp_path, monkeypatch):
    from peft_tags.rundir import check_run_dir, same_backbone

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    config = json.loads((run / "adapter_config.json").read_text())
    base = Path(config["base_model_name_or_path"])
    config["base_model_name_or_path"] = f"./{base.name}"  # as a recipe with a relative backbone writes it
    (run / "adapter_config.json").write_text(json.dumps(config))
    monkeypatch.chdir(base.parent)  # resolves here: the same directory
    check_run_dir(run)
    monkeypatch.chdir(tmp_path)  # does not resolve here: its tail agrees
    check_run_dir(run)
    assert not same_backbone("./other", str(base))


@pytest.mark.parametrize("error", [
    RuntimeError("Error(s) in loading state_dict for Linear:\n\tsize mismatch for weight"),
    json.JSONDecodeError("Expecting value", "x", 0), KeyError("peft_type"), ValueError("bad"), OSError("gone"),
])
def test_loading_turns_library_errors_into_one_line(error):
    from safetensors import SafetensorError

    from peft_tags.errors import UserError
    from peft_tags.rundir import loading

    for e in (error, SafetensorError("Error while deserializing header: header too large")):
        with pytest.raises(UserError) as got:
            with loading("run/adapter_model.safetensors"):
                raise e
        text = str(got.value)
        assert text.startswith("run/adapter_model.safetensors: cannot be loaded: ") and "\n" not in text


# ----------------------------------------------------------------------------- recipes
@pytest.fixture()
def recipe(tmp_path, tiny_backbone, toy_data):
    return write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out")


@pytest.mark.parametrize("text, message", [
    (BOMB, "too many YAML aliases"),
    ("".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9) if i else ', '.join(['lol'] * 9)}]\n" for i in range(9)),
     "too many YAML aliases"),
    ("x: &x [1]\n" + "".join(f"y{i}: *x\n" for i in range(150)), "too many YAML aliases"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than"),
])
def test_yaml_bombs_fail_fast(recipe, capsys, text, message):
    recipe.write_text(text, encoding="utf-8")
    tick = time.perf_counter()
    cli_fails(["train", recipe], capsys, f"{recipe}: ", message)
    assert time.perf_counter() - tick < 1.0


def test_alias_bomb_in_an_override_fails_fast(recipe, capsys):
    value = "[" + ", ".join(f"&b{i} [{'*b%d, *b%d' % (i - 1, i - 1) if i else '1, 1'}]" for i in range(60)) + "]"
    tick = time.perf_counter()
    cli_fails(["train", recipe, f"method.target_modules={value}"], capsys, "override 'method.target_modules=",
           "too many YAML aliases")
    assert time.perf_counter() - tick < 1.0


def test_a_large_recipe_file_is_refused(recipe, capsys):
    recipe.write_text(recipe.read_text() + "# " + "x" * (1 << 20) + "\n", encoding="utf-8")
    cli_fails(["train", recipe], capsys, f"{recipe}: ", "at most 1 MiB")


def test_the_capped_loader_reads_ordinary_yaml():
    from peft_tags.recipe import yaml_load as _yaml_load

    assert _yaml_load("a: &x [1, 2]\nb: *x\nc: {d: 1e-3}\n") == {"a": [1, 2], "b": [1, 2], "c": {"d": "1e-3"}}


@pytest.mark.parametrize("text", ["", "# only a comment\n\n# and another\n", "{}\n", "---\n"])
def test_an_empty_recipe_is_one_line(recipe, capsys, text):
    recipe.write_text(text, encoding="utf-8")
    cli_fails(["train", recipe], capsys, f"{recipe}: ", "the recipe is empty")


@pytest.mark.parametrize("edit, overrides, culprit", [
    (lambda s: s.replace("lr: 0.005", "lr: .inf"), [], "training.lr: expected a finite number, got inf"),
    (lambda s: s.replace("lr: 0.005", "lr: 1e999"), [], "training.lr: expected a finite number"),
    (lambda s: s, ["training.head_lr=.inf"], "training.head_lr"),
    (lambda s: s, ["training.weight_decay=-.inf"], "training.weight_decay: expected a finite number"),
    (lambda s: s, ["training.max_grad_norm=.Inf"], "training.max_grad_norm"),
    (lambda s: s, ["task.pos_weight_cap=.inf"], "task.pos_weight_cap"),
    (lambda s: s.replace("alpha: 8", "alpha: .inf"), [], "method.alpha: expected a finite number"),
    (lambda s: s, ["training.epochs=.inf"], "training.epochs"),
])
def test_infinite_numbers_are_refused(recipe, capsys, edit, overrides, culprit):
    recipe.write_text(edit(recipe.read_text(encoding="utf-8")), encoding="utf-8")
    cli_fails(["train", recipe, *overrides], capsys, culprit)


# ----------------------------------------------------------------------------- data
def _recipe_for(recipe: Path, train: Path, fmt: str = "conll", dev: Path | None = None) -> Path:
    """``recipe`` reading ``train`` in ``fmt``; dev only if given, no test."""
    text = recipe.read_text(encoding="utf-8")
    text = re.sub(r"^  (train|dev|test): .*\n", "", text, flags=re.M).replace("format: conll", f"format: {fmt}")
    text = text.replace("data:\n", f"data:\n  train: {train}\n" + (f"  dev: {dev}\n" if dev else ""))
    if fmt == "tags":  # a multi-label task section: the tagging task's keys go
        text = re.sub(r"^  slots: .*\n", "", text.replace("type: tagging", "type: multilabel"), flags=re.M)
    recipe.write_text(text, encoding="utf-8")
    return recipe


def test_a_training_file_without_spans_names_file_and_key(recipe, tmp_path, capsys):
    bad = tmp_path / "no-spans.txt"
    bad.write_text("华 O\n为 O\n\n黑 O\n", encoding="utf-8")
    cli_fails(["train", _recipe_for(recipe, bad)], capsys, "data.train", bad, "no span")
    assert not (tmp_path / "out").exists()


def test_a_training_file_without_tags_names_file_and_key(recipe, tmp_path, capsys):
    bad, dev = tmp_path / "no-tags.jsonl", tmp_path / "dev.jsonl"
    bad.write_text('{"text": "华为黑色", "tags": []}\n{"text": "小米", "tags": []}\n', encoding="utf-8")
    dev.write_text('{"text": "华为", "tags": ["a"]}\n', encoding="utf-8")
    cli_fails(["train", _recipe_for(recipe, bad, "tags", dev)], capsys, "data.train", bad, "no tag")


@pytest.mark.parametrize("fmt, content, line", [
    ("conll", "华 B-1\n为 I-1\n\n黑 O\n\x00 O\n", 5),
    ("conll", "华 B-1\n\x1b I-1\n", 2),
    ("conll", "华 B-1\n\x85 I-1\n", 2),
    ("jsonl", '{"text": "华为", "spans": []}\n{"text": "华\\u0000为", "spans": []}\n', 2),
    ("jsonl", '{"text": "华\x07为", "spans": []}\n', 1),
    ("tags", '{"text": "华为", "tags": ["a"]}\n\n{"text": "华为\\u001f", "tags": ["a"]}\n', 3),
    ("attribute-value", '{"input": "华为\\u0000", "target_scores": {"brand": {"华为": 1}}}\n', 1),
])
def test_control_characters_in_titles_name_file_and_line(recipe, tmp_path, capsys, fmt, content, line):
    bad = tmp_path / f"bad.{fmt}"
    bad.write_text(content, encoding="utf-8")
    dev = tmp_path / "dev.jsonl"
    dev.write_text('{"text": "华为", "tags": ["a"]}\n', encoding="utf-8")
    cli_fails(["train", _recipe_for(recipe, bad, fmt, dev if fmt == "tags" else None)], capsys, f"{bad}:{line}:",
           "control character")


def test_tab_and_newline_stay_allowed_where_the_format_allows_them(tmp_path):
    from peft_tags.data import read_examples

    path = tmp_path / "ok.jsonl"
    path.write_text('{"text": "华为\\t黑色\\n手机壳", "spans": [{"start": 0, "end": 2, "label": "1"}]}\n', encoding="utf-8")
    assert read_examples(path, "jsonl")[0].text == "华为\t黑色\n手机壳"
    conll = tmp_path / "ok.txt"
    conll.write_text("华 B-1\n\t O\n为 B-1\n", encoding="utf-8")
    assert read_examples(conll, "conll")[0].text == "华\t为"


def test_control_characters_in_predict_input_name_file_and_line(tmp_path, capsys):
    titles = tmp_path / "titles.jsonl"
    titles.write_text('{"text": "华为"}\n{"text": "华\\u0000为"}\n', encoding="utf-8")
    cli_fails(["predict", tmp_path, "--input", titles], capsys, f"{titles}:2:", "control character")


# ----------------------------------------------------------------------------- test spans of unseen types
def test_test_spans_of_unseen_types_are_counted_and_missed(lora_run):
    m = json.loads((lora_run / "metrics.json").read_text(encoding="utf-8"))
    assert m["spans_of_unseen_types"] == {"dev": 0, "test": 2}
    assert m["alignment"]["test"]["unseen_types"] == ["99"]
    assert m["scores"]["test"]["per_type"]["99"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}


def test_unseen_types_are_logged_and_count_against_recall(recipe, tiny_backbone, caplog):
    from peft_tags.data import Example, Span
    from peft_tags.model import load_tokenizer
    from peft_tags.recipe import load_recipe
    from peft_tags.tasks.tagging import TaggingTask

    train = [Example("华为黑色", [Span(0, 2, "1"), Span(2, 4, "16")], "train:1")]
    test = [Example("华为新款", [Span(0, 2, "1"), Span(2, 4, "99")], "test:1")]
    task = TaggingTask(load_recipe(recipe), load_tokenizer(str(tiny_backbone)), train)
    with caplog.at_level(logging.INFO, logger="peft_tags.train"):
        task.describe({"train": train, "test": test}, {"train": task.encode(train), "test": task.encode(test)})
    assert "test spans of types unseen in train: 1 (types 99)" in caplog.text
    assert task.metrics()["spans_of_unseen_types"] == {"test": 1}
    assert task.score("test", [[Span(0, 2, "1")]], test, final=True)["micro_recall"] == 0.5


# ----------------------------------------------------------------------------- CLI usage
@pytest.mark.parametrize("argv, prog, culprit", [
    (["predict", "RUN", TITLE, "--batch-size", "0"], "peft-tags predict", "--batch-size"),
    (["predict", "RUN", TITLE, "--top-k", "-1"], "peft-tags predict", "--top-k"),
    (["predict", "RUN", TITLE, "--threshold", "high"], "peft-tags predict", "--threshold"),
    (["predict", "RUN", TITLE, "--frobnicate"], "peft-tags predict", "unrecognized arguments: --frobnicate"),
    (["predict"], "peft-tags predict", "output_dir"),
    (["export", "RUN"], "peft-tags export", "dest"),
    (["export", "RUN", "DEST", "--force"], "peft-tags export", "--force"),
    (["retune", "RUN", "--batch-size", "x"], "peft-tags retune", "--batch-size"),
    (["train"], "peft-tags train", "recipe"),
    (["train", "r.yaml", "--lr", "1"], "peft-tags train", "--lr"),
    (["validate", "--set"], "peft-tags validate", "--set"),
    (["derive-tags", "src", "dest", "--min-count", "0"], "peft-tags derive-tags", "--min-count"),
    (["frobnicate"], "peft-tags", "'frobnicate'"),
    ([], "peft-tags", "command"),
])
def test_usage_mistakes_are_one_line(argv, prog, culprit, capsys):
    line = cli_fails(argv, capsys, culprit)
    assert line.startswith(f"{prog}: error: ") and "usage:" not in line


@pytest.mark.parametrize("argv", [["--help"], ["predict", "--help"], ["retune", "-h"]])
def test_help_is_still_full_and_exits_0(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: peft-tags") and len(out.splitlines()) > 5

