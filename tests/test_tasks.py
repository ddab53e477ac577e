"""A new task is one module and one registration: the toy task in ``toy_task.py`` trains,
validates its recipe section, writes its run, loads and tags, with no change to the core."""
from __future__ import annotations

import json

import importlib

import pytest

from conftest import write_recipe
from peft_tags import tasks
from peft_tags.config import load_recipe
from peft_tags.errors import UserError


@pytest.fixture(autouse=True, scope="module")
def toy_task():
    """Register the toy task for this module only (the other tests see the shipped tasks)."""
    module = importlib.import_module("toy_task")
    tasks.register(module.FirstTypeTask)  # again, if an earlier module run took it out
    yield module
    tasks.REGISTRY.pop("first-type")


def _toy_recipe(tmp_path, tiny_backbone, toy_data, **task):
    return write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out",
                        task_options={"type": "first-type", **task}, epochs=2)


def test_the_toy_task_is_registered_beside_the_shipped_ones():
    assert tasks.names()[:2] == ["tagging", "multilabel"] and "first-type" in tasks.names()


def test_its_options_section_is_checked_by_the_generic_validator(tmp_path, tiny_backbone, toy_data):
    r = load_recipe(_toy_recipe(tmp_path, tiny_backbone, toy_data, label_smoothing=0.1))
    assert (r.task.type, r.task.label_smoothing, r.task.head_bias) == ("first-type", 0.1, "auto")
    with pytest.raises(UserError, match=r"task\.label_smoothing: must be in \[0, 1\), got 1\.5"):
        load_recipe(_toy_recipe(tmp_path, tiny_backbone, toy_data, label_smoothing=1.5))
    with pytest.raises(UserError, match=r"unknown key 'task\.slots'"):  # another task's key
        load_recipe(_toy_recipe(tmp_path, tiny_backbone, toy_data, slots=4))
    with pytest.raises(UserError, match=r"task\.type: must be one of tagging, multilabel, generation, first-type; got 'first-typo' "
                                        r"\(did you mean 'first-type'\?\)"):
        load_recipe(_toy_recipe(tmp_path, tiny_backbone, toy_data).with_name("r.yaml"), ["task.type=first-typo"])


def test_its_data_formats_are_its_own(tmp_path, tiny_backbone, toy_data):
    with pytest.raises(UserError, match=r"data\.format: task first-type reads 'conll' or 'jsonl' files, not 'tags'"):
        load_recipe(_toy_recipe(tmp_path, tiny_backbone, toy_data), ["data.format=tags"])


def test_the_toy_task_trains_writes_its_run_and_tags(tmp_path, tiny_backbone, toy_data, toy_task):
    from peft_tags.cli import main as cli_main
    from peft_tags.predict import Tagger

    recipe = _toy_recipe(tmp_path, tiny_backbone, toy_data)
    assert cli_main(["train", str(recipe)]) == 0
    out = tmp_path / "out"
    meta = json.loads((out / "labels.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert meta["task"] == "first-type" and meta["num_outputs"] == len(meta["classes"]) == metrics["classes"]
    assert 0.0 <= metrics["test_micro_f1"] <= 1.0 and metrics["scores"]["test"]["accuracy"] == metrics["test_micro_f1"]
    assert f"first span type of a title ({metrics['classes']} classes)" in (out / "README.md").read_text()
    tagger = Tagger.load(out)
    assert tagger.task is toy_task.FirstTypeTask
    (kind,), (other,) = tagger.tag(["红色连衣裙", "abc"])
    assert kind.kind in meta["classes"] and 0.0 < kind.score <= 1.0 and other.kind in meta["classes"]
    with pytest.raises(UserError, match="--top-k: not an option of first-type runs"):
        tagger.tag(["x"], top_k=2)
    # a damaged labels.json is refused by the task's own check, in one line naming the file
    meta["classes"] = meta["classes"][:1] * 2
    (out / "labels.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"labels\.json: 'classes' must be a list of distinct classes"):
        Tagger.load(out)
