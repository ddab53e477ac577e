"""``output.push_to_hub``: a finished run goes to a hub repository in one commit; against a local
stand-in of the hub's HTTP API (tests/hub_standin.py), never the network."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import write_recipe
from helpers import child_env, one_line
from hub_standin import HubStandIn


def _train(recipe, hub, *overrides, token="hf_standin"):
    env = child_env(HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(recipe.parent / "hf-home"),
                    HF_HUB_OFFLINE="0")  # the stand-in is the hub here
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "peft_tags", "train", str(recipe), *overrides], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture
def recipe(tmp_path, tiny_backbone, toy_data):
    return write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "run", epochs=1)


def test_a_finished_run_is_pushed_whole_in_one_commit(recipe, tmp_path):
    with HubStandIn() as hub:
        done = _train(recipe, hub, "output.push_to_hub=shop/toy-tagger", "output.hub_private=false")
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    local = {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*")
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(run).parts)}
    assert {"adapter_config.json", "adapter_model.safetensors", "labels.json", "README.md", "hf/config.json",
            "backbone.json"} <= set(local)
    assert hub.repos["shop/toy-tagger"]["files"] == local  # every file, byte for byte; no marker files
    assert hub.repos["shop/toy-tagger"]["visibility"] == "public"
    assert len(hub.commits) == 1 and hub.commits[0]["summary"] == "peft-tags run run"


def test_a_push_the_hub_refuses_keeps_the_run_and_says_how_to_push_again(recipe, tmp_path):
    with HubStandIn(refuse=403) as hub:
        done = _train(recipe, hub, "output.push_to_hub=shop/toy-tagger")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr  # the training log, then the one line of the refusal
    line = one_line(done.stderr.strip().splitlines()[-1], "output.push_to_hub", "shop/toy-tagger", "403",
                    "peft-tags push")
    assert str(tmp_path / "run") in line
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file() and (tmp_path / "run" / "metrics.json").is_file()


def test_without_a_token_the_recipe_is_refused_before_training(recipe, tmp_path):
    with HubStandIn() as hub:
        done = _train(recipe, hub, "output.push_to_hub=shop/toy-tagger", token=None)
    assert done.returncode == 2
    one_line(done.stderr, "output.push_to_hub", "HF_TOKEN")
    assert not (tmp_path / "run").exists() and not hub.repos


def test_a_bad_repository_id_is_a_recipe_error(recipe, capsys):
    from helpers import cli_fails

    cli_fails(["validate", str(recipe), "output.push_to_hub=not a repo"], capsys, "output.push_to_hub", "not a repo")


def test_peft_tags_push_uploads_a_trained_run(recipe, tmp_path):
    from peft_tags.cli import main as cli_main

    assert cli_main(["train", str(recipe)]) == 0
    env = child_env(HF_ENDPOINT="", HF_HUB_OFFLINE="0", HF_TOKEN="hf_standin", HF_HOME=str(tmp_path / "hf-home"))
    with HubStandIn() as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        done = subprocess.run([sys.executable, "-m", "peft_tags", "push", str(tmp_path / "run"), "shop/toy"],
                              capture_output=True, text=True, env=env, timeout=300)
        refused = subprocess.run([sys.executable, "-m", "peft_tags", "push", str(tmp_path), "shop/toy"],
                                 capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert hub.repos["shop/toy"]["visibility"] == "private" and "adapter_model.safetensors" in hub.repos["shop/toy"]["files"]
    assert refused.returncode == 2 and len(hub.commits) == 1  # not a run: nothing is uploaded
    one_line(refused.stderr, str(tmp_path))
