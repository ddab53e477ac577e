"""``output.push_to_hub`` and ``peft-tags push``: a finished run goes to a hub repository in one
commit; against a local stand-in of the hub's HTTP API (tests/hub_standin.py), never the network.
huggingface_hub is pointed at the stand-in in-process (its endpoint constant), as HF_ENDPOINT
would point a user's process at their hub."""
from __future__ import annotations

import pytest

from conftest import write_recipe
from helpers import cli_fails, one_line
from hub_standin import HubStandIn
from peft_tags.cli import main as cli_main


@pytest.fixture
def recipe(tmp_path, tiny_backbone, toy_data):
    return write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "run", epochs=1)


def _stand_in(monkeypatch, tmp_path, token="hf_standin", **kw):
    from huggingface_hub import constants

    hub = HubStandIn(**kw)
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the stand-in is the hub here
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token file of this machine's user
    monkeypatch.delenv("HF_TOKEN", raising=False)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    return hub


def _files(run):
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(run).parts)}


def test_a_finished_run_is_pushed_whole_in_one_commit(recipe, tmp_path, monkeypatch):
    with _stand_in(monkeypatch, tmp_path) as hub:
        assert cli_main(["train", str(recipe), "output.push_to_hub=shop/toy-tagger", "output.hub_private=false"]) == 0
    local = _files(tmp_path / "run")
    assert {"adapter_config.json", "adapter_model.safetensors", "labels.json", "README.md", "hf/config.json",
            "backbone.json"} <= set(local)
    assert hub.repos["shop/toy-tagger"]["files"] == local  # every file, byte for byte; no marker files
    assert hub.repos["shop/toy-tagger"]["visibility"] == "public"
    assert len(hub.commits) == 1 and hub.commits[0]["summary"] == "peft-tags run run"


def test_a_push_the_hub_refuses_keeps_the_run_and_says_how_to_push_again(recipe, tmp_path, monkeypatch, capsys):
    with _stand_in(monkeypatch, tmp_path, refuse=403):
        capsys.readouterr()
        assert cli_main(["train", str(recipe), "output.push_to_hub=shop/toy-tagger"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err  # the training log, then the one line of the refusal
    line = one_line(err.strip().splitlines()[-1], "output.push_to_hub", "shop/toy-tagger", "403", "peft-tags push")
    assert str(tmp_path / "run") in line
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file() and (tmp_path / "run" / "metrics.json").is_file()


def test_without_a_token_the_recipe_is_refused_before_training(recipe, tmp_path, monkeypatch, capsys):
    with _stand_in(monkeypatch, tmp_path, token=None) as hub:
        cli_fails(["train", str(recipe), "output.push_to_hub=shop/toy-tagger"], capsys, "output.push_to_hub", "HF_TOKEN")
    assert not (tmp_path / "run").exists() and not hub.repos


def test_a_bad_repository_id_is_a_recipe_error(recipe, capsys):
    cli_fails(["validate", str(recipe), "output.push_to_hub=not a repo"], capsys, "output.push_to_hub", "not a repo")


def test_peft_tags_push_uploads_a_trained_run_and_nothing_else(recipe, tmp_path, monkeypatch, capsys):
    assert cli_main(["train", str(recipe)]) == 0
    with _stand_in(monkeypatch, tmp_path) as hub:
        assert cli_main(["push", str(tmp_path / "run"), "shop/toy"]) == 0
        cli_fails(["push", str(tmp_path), "shop/toy"], capsys, str(tmp_path))  # not a run: nothing is uploaded
    assert hub.repos["shop/toy"]["visibility"] == "private" and hub.repos["shop/toy"]["files"] == _files(tmp_path / "run")
    assert len(hub.commits) == 1
