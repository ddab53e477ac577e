"""The model card: prose for people, and a YAML header that Hugging Face tools read."""
from __future__ import annotations

import dataclasses
import json

import pytest

from conftest import write_recipe
from peft_tags.cli import main as cli_main


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_backbone, toy_data):
    tmp = tmp_path_factory.mktemp("card")
    recipe = write_recipe(tmp / "r.yaml", tiny_backbone, toy_data, tmp / "run", epochs=1, lr=1e-2)
    assert cli_main(["train", str(recipe)]) == 0
    return tmp / "run"


def test_huggingface_hub_reads_the_cards_metadata(run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(run / "README.md")
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "token-classification"
    assert "lora" in card.data.tags and card.data.datasets == ["toy"]
    assert card.data.base_model is None  # a local directory is not a hub id
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results["test micro-F1"] == pytest.approx(metrics["test_micro_f1"], abs=1e-4)
    assert results["test macro-F1"] == pytest.approx(metrics["test_macro_f1"], abs=1e-4)
    assert card.data.eval_results[0].task_type == "token-classification"
    assert "# peft-tags tagging model" in card.text  # the prose follows the header


def test_an_alias_backbone_is_named_by_its_hub_id(run):
    from huggingface_hub import ModelCard

    from peft_tags.card import model_card
    from peft_tags.config import load_recipe

    recipe = load_recipe(run / "recipe.yaml")
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    for name, hub in (("me5-small", "intfloat/multilingual-e5-small"), ("org/some-bert", "org/some-bert")):
        other = dataclasses.replace(recipe, backbone=dataclasses.replace(recipe.backbone, name=name))
        assert ModelCard(model_card(other, metrics)).data.base_model == hub
