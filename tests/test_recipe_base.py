"""Recipe inheritance: ``base: other.yaml`` plus the keys that change, and problems placed by file and line."""
from __future__ import annotations

import re

import pytest

from conftest import REPO
from peft_tags.config import (ERROR_MARK, RecipeError, TrainingSection, dump_recipe, list_recipes, load_recipe,
                              recipe_mapping, recipe_to_dict)
from peft_tags.config.yamlio import MAX_BYTES
from helpers import recipe_problems, write_dedented

BASE = """\
backbone:
  name: me5-small
  max_length: 128
data:
  train: jd-ner/train.txt
  dev: jd-ner/dev.txt
method:
  name: lora
  r: 8
  target_modules: [query, key, value]
training:
  epochs: 4
  lr: 2.0e-3
  head_lr: 5.0e-3
output:
  dir: runs/base
"""
# lines of BASE: 1 backbone, 8 method, 9 r, 12 epochs, 13 lr, 14 head_lr


def write(tmp_path, name, text):
    return write_dedented(tmp_path / name, text)


problems_of = recipe_problems


# ----------------------------------------------------------------------------- merging


def test_child_merges_over_its_base_key_by_key(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", """\
        base: base.yaml
        method:
          target_modules: [query]
        training:
          epochs: 2
        output:
          dir: runs/child
        """)
    r = load_recipe(child)
    assert r.source == str(child)  # the file asked for, not its base
    opts = r.method.options
    assert opts.target_modules == ["query"]  # a list replaces the base's whole list
    assert (r.method.name, opts.r) == ("lora", 8)  # the rest of method: from the base
    assert (r.training.epochs, r.training.lr, r.training.head_lr) == (2, 2e-3, 5e-3)
    assert (r.backbone.max_length, r.data.dev, r.output.dir) == (128, "jd-ner/dev.txt", "runs/child")
    assert load_recipe(tmp_path / "base.yaml").output.dir == "runs/base"  # the base itself is untouched


def test_a_child_naming_another_method_replaces_the_base_method_section(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "base: base.yaml\nmethod:\n  name: prefix\n  num_virtual_tokens: 8\n")
    r = load_recipe(child)  # lora's r and target_modules are not prefix options: they do not carry over
    assert (r.method.name, r.method.options.num_virtual_tokens) == ("prefix", 8)
    assert r.training.epochs == 4  # the other sections still merge
    # the same method named again merges key by key as before
    child.write_text("base: base.yaml\nmethod:\n  name: lora\n  r: 4\n", encoding="utf-8")
    assert load_recipe(child).method.options.target_modules == ["query", "key", "value"]


def test_null_in_the_child_replaces_the_base_value(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "base: base.yaml\ndata:\n  dev: null\ntraining:\n  head_lr: null\n")
    r = load_recipe(child)
    assert r.data.dev is None  # null means none, as in one file
    assert r.training.head_lr is None and r.training.effective_head_lr == 2e-3
    # a null section is an empty one: every key at its default
    child.write_text("base: base.yaml\ntraining: null\n", encoding="utf-8")
    assert load_recipe(child).training == TrainingSection()
    # a key without a null meaning refuses null, at the child's line
    child.write_text("base: base.yaml\ntraining:\n  epochs: null\n", encoding="utf-8")
    assert problems_of(child) == [f"{child}:3: training.epochs: expected an integer, got null (an empty value)"]


def test_recipe_mapping_is_the_merged_data_without_base(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "base: base.yaml\nbackbone:\n  quantization: nf4\n")
    raw = recipe_mapping(child)
    assert "base" not in raw
    assert raw["backbone"] == {"name": "me5-small", "max_length": 128, "quantization": "nf4"}
    assert raw["method"]["target_modules"] == ["query", "key", "value"]


def test_bases_can_have_bases_relative_to_each_file(tmp_path):
    write(tmp_path, "common/base.yaml", BASE)
    write(tmp_path, "common/mid.yaml", "base: base.yaml\ntraining:\n  epochs: 6\n  lr: 1.0e-3\n")
    child = write(tmp_path, "tasks/ner/child.yaml", "base: ../../common/mid.yaml\ntraining:\n  lr: 5.0e-4\n")
    r = load_recipe(child)
    assert (r.training.epochs, r.training.lr, r.method.options.r) == (6, 5e-4, 8)
    absolute = write(tmp_path, "abs.yaml", f"base: {tmp_path / 'common' / 'mid.yaml'}\n")
    assert load_recipe(absolute).training.lr == 1e-3


# ----------------------------------------------------------------------------- bases that cannot be used


def test_a_cycle_of_bases_is_one_line(tmp_path):
    a = write(tmp_path, "a.yaml", "base: b.yaml\n" + BASE)
    b = write(tmp_path, "b.yaml", "# b\nbase: a.yaml\n")
    assert problems_of(a) == [f"{b}:2: base 'a.yaml': the bases form a cycle ({a} -> {b} -> {a})"]
    itself = write(tmp_path, "self.yaml", "base: ./self.yaml\n")
    assert problems_of(itself) == [f"{itself}:1: base './self.yaml': the bases form a cycle ({itself} -> {itself})"]


def test_a_missing_base_names_the_line_and_where_it_looked(tmp_path):
    child = write(tmp_path, "r/child.yaml", "# QLoRA\nbase: lora2.yaml\n")
    assert problems_of(child) == [f"{child}:2: base 'lora2.yaml': no such recipe file "
                                  f"(looked for {(tmp_path / 'r' / 'lora2.yaml').resolve()})"]


@pytest.mark.parametrize("value, got", [("3", "3"), ("[a.yaml]", "['a.yaml']"), ("", "null"), ("''", "''")])
def test_base_must_be_a_path(tmp_path, value, got):
    child = write(tmp_path, "child.yaml", f"output:\n  dir: x\nbase: {value}\n")
    assert problems_of(child) == [f"{child}:3: base: expected the path of a recipe file (relative to this one), "
                                  f"got {got}"]


@pytest.mark.parametrize("text, got", [("- backbone\n- data\n", "got ['backbone', 'data']"),
                                       ("# nothing yet\n", "it is empty"), ("lora\n", "got 'lora'")])
def test_a_base_that_is_not_a_mapping(tmp_path, text, got):
    base = write(tmp_path, "base.yaml", text)
    child = write(tmp_path, "child.yaml", "base: base.yaml\n")
    assert problems_of(child) == [f"{child}:1: base 'base.yaml': {base} must be a mapping with sections backbone, "
                                  f"task, data, method, training, output; {got}"]


def test_file_checks_apply_to_every_base(tmp_path):
    child = write(tmp_path, "child.yaml", "base: mid.yaml\n")
    mid = write(tmp_path, "mid.yaml", "base: base.yaml\n")
    base = tmp_path / "base.yaml"
    base.write_text("backbone:\n  name: [me5\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=re.escape(f"{base}: line ") + r"\d+, column \d+: invalid YAML"):
        load_recipe(child)
    base.write_bytes(BASE.encode().replace(b"runs/base", b"runs/\xff"))
    assert problems_of(child) == [f"{base}:16: not UTF-8 (byte 0xff); save the recipe as UTF-8"]
    base.write_text(BASE + "# " + "x" * MAX_BYTES + "\n", encoding="utf-8")
    (line,) = problems_of(child)
    assert line.startswith(f"{base}: ") and "a recipe is at most 1 MiB" in line
    base.write_text("a: &a [1]\n" + "".join(f"b{i}: *a\n" for i in range(150)), encoding="utf-8")
    (line,) = problems_of(child)
    assert line.startswith(f"{base}: too many YAML aliases")
    assert mid.exists()


def test_a_duplicate_key_in_the_base_names_the_base(tmp_path):
    base = write(tmp_path, "base.yaml", BASE.replace("  lr: 2.0e-3\n", "  lr: 2.0e-3\n  lr: 3.0e-3\n"))
    child = write(tmp_path, "child.yaml", "base: base.yaml\ntraining:\n  lr: 1.0e-3\n")
    # the child sets training.lr too: the duplicate is still the base's problem, at the base's lines
    assert problems_of(child) == [f"{base}:13: key 'training.lr' is given twice (lines 13 and 14)"]


# ----------------------------------------------------------------------------- where problems are reported


def test_problems_name_the_file_and_line_of_their_key(tmp_path):
    base = write(tmp_path, "base.yaml", BASE.replace("  r: 8\n", "  rank: 8\n").replace("lr: 2.0e-3", "lr: -1"))
    child = write(tmp_path, "child.yaml", """\
        # a child with one mistake of its own
        base: base.yaml
        training:
          epochs: three
        backbone:
          quantization: nf5
        """)
    assert problems_of(child) == [
        f"{child}:4: training.epochs: expected an integer, got 'three'",  # the recipe's own lines first
        f"{child}:6: backbone.quantization: must be one of none, nf4, fp4, int8; got 'nf5' (did you mean 'nf4'?)",
        f"{base}:9: unknown key 'method.rank' (did you mean 'method.r'?)",  # then its base's, at the base's lines
        f"{base}:13: training.lr: must be > 0, got -1.0",
    ]


def test_a_key_the_child_replaces_is_the_childs(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "base: base.yaml\nmethod: lora\n")
    assert problems_of(child) == [f"{child}:2: method: expected a mapping of keys, got 'lora'"]
    # another method's section replaces the base's whole; a key of the base's method in the child is its own
    child.write_text("base: base.yaml\nmethod:\n  name: full\n  r: 8\n", encoding="utf-8")
    lines = problems_of(child)
    assert [line.split(" (")[0] for line in lines] == [f"{child}:4: unknown key 'method.r'"]
    assert "method 'full' takes no options" in lines[0]


def test_overrides_of_inherited_keys(tmp_path):
    base = write(tmp_path, "base.yaml", BASE.replace("lr: 2.0e-3", "lr: -1"))
    child = write(tmp_path, "child.yaml", "base: base.yaml\n")
    assert problems_of(child) == [f"{base}:13: training.lr: must be > 0, got -1.0"]
    assert load_recipe(child, ["training.lr=5e-4"]).training.lr == 5e-4  # an override fixes the base's value
    assert problems_of(child, ["training.lr=0", "method.rr=2"]) == [
        f"{child}: override 'training.lr=0': training.lr: must be > 0, got 0.0",
        f"{child}: override 'method.rr=2': unknown key 'method.rr' (did you mean 'method.r'?)",
    ]


def test_a_recipe_without_base_keeps_its_problem_format(tmp_path):
    path = write(tmp_path, "base.yaml", BASE.replace("epochs: 4", "epochs: four"))
    assert problems_of(path) == [f"{path}: training.epochs: expected an integer, got 'four'"]


# ----------------------------------------------------------------------------- listing and the shipped recipes


def test_ls_lists_an_inherited_recipe_resolved_through_its_base(tmp_path, monkeypatch, capsys):
    from peft_tags.cli import main as cli_main

    write(tmp_path, "recipes/ner/lora.yaml", BASE)
    write(tmp_path, "recipes/ner/full.yaml", "base: lora.yaml\nmethod:\n  name: full\n  r: null\n")
    write(tmp_path, "recipes/ner/qlora.yaml", "base: lora.yaml\nbackbone:\n  quantization: nf4\n")
    write(tmp_path, "recipes/ner/broken.yaml", "# broken\nbase: nope.yaml\n")
    monkeypatch.chdir(tmp_path)
    rows = list_recipes([tmp_path / "recipes"])
    assert rows[0][:2] == ("recipes/ner/broken.yaml", ERROR_MARK)
    assert rows[0][3].startswith("line 2: base 'nope.yaml': no such recipe file")
    assert rows[1][:2] == ("recipes/ner/full.yaml", ERROR_MARK) and "method.r" in rows[1][3]
    assert rows[2:] == [("recipes/ner/lora.yaml", "lora", "tagging", "me5-small"),
                        ("recipes/ner/qlora.yaml", "lora", "tagging", "me5-small")]
    assert cli_main(["ls"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^recipes/ner/qlora\.yaml +lora +tagging +me5-small$", out, re.M), out


INHERITED = {  # shipped recipe -> (its base, the keys it changes, as overrides of the base)
    "jd-ner/qlora.yaml": ("jd-ner/lora.yaml", ["backbone.quantization=nf4", "backbone.double_quantization=true",
                                               "backbone.compute_dtype=float32", "output.dir=runs/jd-ner/qlora"]),
    "jd-ner/bottleneck-pfeiffer.yaml": ("jd-ner/bottleneck-houlsby.yaml", [
        "method.variant=pfeiffer", "method.bottleneck_size=224", "method.layer_norms=false",
        "output.dir=runs/jd-ner/bottleneck-pfeiffer"]),
    "jd-tags/head-only.yaml": ("jd-tags/full.yaml", ["method.name=head-only", "training.lr=2.0e-3",
                                                     "training.head_lr=2.0e-2", "output.dir=runs/jd-tags/head-only"]),
}


@pytest.mark.parametrize("name", INHERITED)
def test_shipped_recipe_is_its_base_plus_the_keys_it_changes(name, tmp_path):
    base, changes = INHERITED[name]
    path = REPO / "recipes" / name
    assert path.read_text(encoding="utf-8").count("\nbase: ") == 1
    recipe = load_recipe(path)
    assert recipe == load_recipe(REPO / "recipes" / base, changes)
    assert recipe != load_recipe(REPO / "recipes" / base)
    assert recipe.source == str(path)
    out = dump_recipe(recipe, tmp_path / "recipe.yaml")  # what a run writes: flat, every key, no base
    text = out.read_text(encoding="utf-8")
    assert not re.search(r"^base:", text, re.M) and f"# from {path}." in text
    assert load_recipe(out) == recipe and recipe_to_dict(load_recipe(out)) == recipe_to_dict(recipe)
