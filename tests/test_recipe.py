"""The recipe schema and its strict loader: defaults, every error kind, overrides, lookup, dump."""
from __future__ import annotations

import dataclasses
import re
import textwrap

import pytest

from helpers import recipe_problems, write_dedented
from peft_tags import recipe as recipe_mod
from peft_tags.config import discovery
from peft_tags.errors import UserError
from peft_tags.methods.lora import LoraOptions
from peft_tags.recipe import (
    ERROR_MARK,
    Recipe,
    RecipeError,
    TrainingSection,
    dump_recipe,
    list_recipes,
    load_recipe,
    recipe_to_dict,
    resolve_recipe_path,
)

MINIMAL = """\
backbone:
  name: me5-small
data:
  train: jd-ner/train.txt
method:
  name: lora
output:
  dir: runs/x
"""


def write(tmp_path, text, name="r.yaml"):
    return write_dedented(tmp_path / name, text)


def problems_of(path, overrides=()):
    lines = recipe_problems(path, overrides)
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    return lines


# ----------------------------------------------------------------------------- valid recipes


def test_minimal_recipe_loads_with_defaults(tmp_path):
    path = write(tmp_path, MINIMAL)
    r = load_recipe(path)
    assert isinstance(r, Recipe)
    assert r.source == str(path)
    assert r.backbone.name == "me5-small" and r.backbone.max_length == 160 and r.backbone.cache_dir is None
    assert (r.task.type, r.task.slots) == ("tagging", 4)
    assert r.data.train == "jd-ner/train.txt" and r.data.root is None and r.data.format == "conll"
    assert r.data.fullwidth_to_halfwidth is True and r.data.lowercase is False
    assert r.method.name == "lora" and r.method.options == LoraOptions()
    assert r.training == TrainingSection()
    assert r.training.lr == 1e-3 and r.training.log_with == "tensorboard" and r.training.effective_head_lr == 1e-3
    assert r.output.dir == "runs/x" and r.output.overwrite is False


def test_every_schema_field_has_help():
    for cls in (*recipe_mod.SECTIONS.values(), Recipe):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name}"


def test_numeric_strings_accepted_for_floats_and_ints(tmp_path):
    # PyYAML reads 1e-3 (no dot) as a string; the loader converts it.
    path = write(tmp_path, MINIMAL + "training:\n  lr: 1e-3\n  head_lr: '5e-4'\n  epochs: '2'\n"
                 "  checkpoint_every_steps: 1e3\n  weight_decay: 0\n")
    t = load_recipe(path).training
    assert t.lr == pytest.approx(1e-3) and isinstance(t.lr, float)
    assert t.head_lr == pytest.approx(5e-4) and t.effective_head_lr == pytest.approx(5e-4)
    assert t.epochs == 2 and isinstance(t.epochs, int)
    assert t.checkpoint_every_steps == 1000 and isinstance(t.checkpoint_every_steps, int)
    assert t.weight_decay == 0.0 and isinstance(t.weight_decay, float)


def test_log_with_none_and_bare_no_for_mixed_precision(tmp_path):
    path = write(tmp_path, MINIMAL + "training:\n  log_with: none\n  mixed_precision: no\n")
    t = load_recipe(path).training
    assert t.log_with is None
    assert t.mixed_precision == "no"  # YAML 1.1 reads a bare `no` as false


def test_null_section_counts_as_empty(tmp_path):
    path = write(tmp_path, MINIMAL + "training:\ntask:\n")
    r = load_recipe(path)
    assert r.training == TrainingSection() and r.task.slots == 4


# ----------------------------------------------------------------------------- error kinds


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "backbone:\n  name: [me5\ndata:\n  train: x\n")
    with pytest.raises(UserError, match=re.escape(str(path)) + r": line \d+, column \d+: invalid YAML"):
        load_recipe(path)


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "- backbone\n- data\n")
    (line,) = problems_of(path)
    assert "top level must be a mapping" in line


def test_unknown_key_names_dotted_path_file_and_nearest(tmp_path):
    path = write(tmp_path, MINIMAL + "training:\n  lrr: 0.1\n")
    with pytest.raises(RecipeError, match=re.escape(f"{path}: unknown key 'training.lrr' (did you mean 'training.lr'?)")):
        load_recipe(path)


def test_unknown_section_suggests_nearest(tmp_path):
    path = write(tmp_path, MINIMAL + "trainig:\n  lr: 0.1\n")
    (line,) = problems_of(path)
    assert line == f"{path}: unknown key 'trainig' (did you mean 'training'?)"


def test_missing_required_key(tmp_path):
    path = write(tmp_path, MINIMAL.replace("  train: jd-ner/train.txt\n", "  dev: d.txt\n"))
    with pytest.raises(RecipeError, match=re.escape(f"{path}: missing required key 'data.train'")):
        load_recipe(path)


def test_missing_section_reports_its_required_keys(tmp_path):
    path = write(tmp_path, "task:\n  slots: 2\n")
    lines = problems_of(path)
    for key in ("backbone.name", "data.train", "method.name", "output.dir"):
        assert f"{path}: missing required key '{key}'" in lines
    assert len(lines) == 4


def test_wrong_type_names_key_expected_and_got(tmp_path):
    path = write(tmp_path, MINIMAL + "training:\n  epochs: three\n")
    with pytest.raises(RecipeError, match=re.escape(f"{path}: training.epochs: expected an integer, got 'three'")):
        load_recipe(path)


def test_bool_is_not_an_integer_or_number(tmp_path):
    path = write(tmp_path, MINIMAL + "training:\n  batch_size: true\n  lr: false\n")
    lines = problems_of(path)
    assert lines == [
        f"{path}: training.batch_size: expected an integer, got true",
        f"{path}: training.lr: expected a number, got false",
    ]


def test_non_integral_float_is_not_an_integer(tmp_path):
    path = write(tmp_path, MINIMAL + "task:\n  slots: 2.5\n")
    with pytest.raises(RecipeError, match=r"task\.slots: expected an integer, got 2\.5"):
        load_recipe(path)


def test_choice_field_lists_allowed_values(tmp_path):
    path = write(tmp_path, MINIMAL + "training:\n  schedule: cosin\n")
    with pytest.raises(RecipeError, match=re.escape(
            "training.schedule: must be one of linear, cosine, constant; got 'cosin' (did you mean 'cosine'?)")):
        load_recipe(path)


def test_range_checks_state_the_range(tmp_path):
    path = write(tmp_path, MINIMAL + "training:\n  warmup_ratio: 1.0\n  lr: 0\n  epochs: 0\n"
                 "task:\n  slots: 17\n")
    lines = problems_of(path)
    text = "\n".join(lines)
    assert "training.warmup_ratio: must be in [0, 1), got 1.0" in text
    assert "training.lr: must be > 0, got 0.0" in text
    assert "training.epochs: must be >= 1, got 0" in text
    assert "task.slots: must be in [1, 16], got 17" in text


def test_section_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path, MINIMAL + "training: fast\n")
    with pytest.raises(RecipeError, match=re.escape(f"{path}: training: expected a mapping of keys, got 'fast'")):
        load_recipe(path)


def test_all_problems_reported_once_in_file_order(tmp_path):
    path = write(tmp_path, """\
        backbone:
          name: me5-small
          max_length: 4
        data:
          format: csv
        method:
          name: lora
        training:
          lrr: 0.1
          epochs: three
        output:
          dir: runs/x
        """)
    lines = problems_of(path)
    assert len(lines) == 5
    keys = ["backbone.max_length", "data.train", "data.format",  # a missing key sits at its section
            "training.lrr", "training.epochs"]
    for line, key in zip(lines, keys):
        assert key in line, (line, key)


def test_duplicate_key_is_a_problem(tmp_path):
    path = write(tmp_path, MINIMAL + "training:\n  lr: 0.1\n  lr: 0.2\n")
    (line,) = problems_of(path)
    assert "key 'training.lr' is given twice (lines 10 and 11)" in line


def test_cross_field_checks_use_dotted_names(tmp_path):
    path = write(tmp_path, MINIMAL.replace("  train: jd-ner/train.txt\n",
                                           "  train: jd-ner/train.txt\n  dev: jd-ner/train.txt\n"))
    (line,) = problems_of(path)
    assert line.startswith(f"{path}: data.dev: is the same file as data.train")
    # resume continues from <dir>.work and overwrite replaces <dir> at the end: they combine
    path = write(tmp_path, MINIMAL + "training:\n  resume: true\n", name="b.yaml")
    path.write_text(path.read_text().replace("  dir: runs/x\n", "  dir: runs/x\n  overwrite: true\n"))
    assert load_recipe(path).training.resume


# ----------------------------------------------------------------------------- method section


def test_method_options_validated_against_lora_options(tmp_path):
    path = write(tmp_path, MINIMAL.replace("  name: lora\n", "  name: lora\n  r: 16\n  alpha: 32\n"
                                           "  target_modules: [query, key, value]\n"))
    opts = load_recipe(path).method.options
    assert opts == LoraOptions(r=16, alpha=32.0, dropout=0.1, target_modules=["query", "key", "value"])
    assert isinstance(opts.alpha, float)


def test_unknown_method_option_suggests_r(tmp_path):
    path = write(tmp_path, MINIMAL.replace("  name: lora\n", "  name: lora\n  rank: 4\n"))
    with pytest.raises(RecipeError, match=re.escape(f"{path}: unknown key 'method.rank' (did you mean 'method.r'?)")):
        load_recipe(path)


def test_method_option_check_runs(tmp_path):
    path = write(tmp_path, MINIMAL.replace("  name: lora\n", "  name: lora\n  r: 0\n"))
    (line,) = problems_of(path)
    assert line == f"{path}: method.r: must be a positive integer, got 0"


def test_method_option_types(tmp_path):
    path = write(tmp_path, MINIMAL.replace("  name: lora\n", "  name: lora\n  target_modules: query\n"))
    with pytest.raises(RecipeError, match=r"method\.target_modules: expected a list of strings, got 'query'"):
        load_recipe(path)


def test_unknown_method_name_suggests_nearest(tmp_path):
    path = write(tmp_path, MINIMAL.replace("name: lora", "name: lorra"))
    (line,) = problems_of(path)
    assert line.startswith(f"{path}: method.name: unknown method 'lorra' (did you mean 'lora'?); choose from ")
    assert "head-only" in line and "full" in line


def test_method_without_options_rejects_options(tmp_path):
    path = write(tmp_path, MINIMAL.replace("name: lora", "name: full\n  dropout: 0.1"))
    (line,) = problems_of(path)
    assert "unknown key 'method.dropout'" in line and "takes no options" in line


# ----------------------------------------------------------------------------- overrides


def test_overrides_set_and_create_keys(tmp_path):
    path = write(tmp_path, MINIMAL)
    r = load_recipe(path, ["training.lr=5e-4", "method.target_modules=[query,value,key]",
                           "data.test=jd-ner/test.txt", "data.dev=null", "training.epochs=2"])
    assert r.training.lr == pytest.approx(5e-4) and r.training.epochs == 2
    assert r.method.options.target_modules == ["query", "value", "key"]
    assert r.data.test == "jd-ner/test.txt" and r.data.dev is None
    assert load_recipe(path).data.test is None  # the file itself is untouched


def test_override_creates_missing_section(tmp_path):
    path = write(tmp_path, MINIMAL.replace("output:\n  dir: runs/x\n", ""))
    assert load_recipe(path, ["output.dir=runs/y"]).output.dir == "runs/y"


def test_malformed_override(tmp_path):
    path = write(tmp_path, MINIMAL)
    (line,) = problems_of(path, ["training.lr"])
    assert line.startswith(f"{path}: override 'training.lr': expected key.sub=value")
    (line,) = problems_of(path, ["=3"])
    assert "override '=3'" in line


def test_unknown_key_in_override_names_the_override(tmp_path):
    path = write(tmp_path, MINIMAL)
    (line,) = problems_of(path, ["training.lrr=1"])
    assert line == f"{path}: override 'training.lrr=1': unknown key 'training.lrr' (did you mean 'training.lr'?)"


def test_bad_value_in_override_names_the_override(tmp_path):
    path = write(tmp_path, MINIMAL)
    lines = problems_of(path, ["training.epochs=three", "method.r=0"])
    assert lines == [
        f"{path}: override 'training.epochs=three': training.epochs: expected an integer, got 'three'",
        f"{path}: override 'method.r=0': method.r: must be a positive integer, got 0",
    ]


# ----------------------------------------------------------------------------- recipe lookup


def test_resolve_existing_file(tmp_path):
    path = write(tmp_path, MINIMAL, name="some/where.yaml")
    assert resolve_recipe_path(str(path)) == path


def test_resolve_bare_name_and_suffix(tmp_path, monkeypatch):
    write(tmp_path, MINIMAL, name="recipes/jd-ner/lora.yaml")
    write(tmp_path, MINIMAL, name="recipes/jd-ner/full.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(discovery, "REPO_RECIPES", tmp_path / "no-such-dir")
    assert resolve_recipe_path("lora.yaml").resolve() == (tmp_path / "recipes/jd-ner/lora.yaml").resolve()
    assert resolve_recipe_path("jd-ner/full.yaml").name == "full.yaml"
    assert resolve_recipe_path("jd-ner/full").name == "full.yaml"  # extension optional


def test_resolve_ambiguous_lists_candidates(tmp_path):
    write(tmp_path, MINIMAL, name="recipes/a/lora.yaml")
    write(tmp_path, MINIMAL, name="recipes/b/lora.yaml")
    with pytest.raises(UserError, match=r"ambiguous recipe 'lora\.yaml'.*give one of: .*a/lora\.yaml, .*b/lora\.yaml"):
        resolve_recipe_path("lora.yaml", search_dirs=[tmp_path / "recipes"])
    assert resolve_recipe_path("b/lora.yaml", search_dirs=[tmp_path / "recipes"]).parent.name == "b"


def test_resolve_missing_suggests_nearest(tmp_path, monkeypatch):
    write(tmp_path, MINIMAL, name="recipes/jd-ner/lora.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(discovery, "REPO_RECIPES", tmp_path / "no-such-dir")
    with pytest.raises(UserError, match=re.escape(
            "no recipe 'lora.yml' (not a file; not found under recipes/) (did you mean 'jd-ner/lora.yaml'?)")):
        resolve_recipe_path("lora.yml")


# ----------------------------------------------------------------------------- dump and list


def test_dump_load_round_trip(tmp_path):
    path = write(tmp_path, MINIMAL.replace("  name: lora\n", "  name: lora\n  r: 4\n  target_modules: [query]\n")
                 + "training:\n  lr: 2e-5\n  log_with: none\n  mixed_precision: bf16\n")
    original = load_recipe(path, ["data.dev=jd-ner/dev.txt"])
    out = dump_recipe(original, tmp_path / "run/recipe.yaml")
    text = out.read_text()
    assert text.startswith("#")
    assert "warmup_ratio: 0.06" in text and "max_length: 160" in text  # defaults written out
    again = load_recipe(out)
    assert again == original
    assert again.source == str(out)
    assert recipe_to_dict(again) == recipe_to_dict(original)
    assert recipe_to_dict(original)["method"] == {"name": "lora", "r": 4, "alpha": 16.0, "dropout": 0.1,
                                                   "target_modules": ["query"]}


def test_list_recipes_marks_broken_files(tmp_path, monkeypatch):
    write(tmp_path, MINIMAL, name="recipes/jd-ner/lora.yaml")
    write(tmp_path, MINIMAL.replace("name: lora", "name: head-only"), name="recipes/jd-ner/head.yaml")
    write(tmp_path, "backbone: [\n", name="recipes/broken.yaml")
    monkeypatch.chdir(tmp_path)
    rows = list_recipes([tmp_path / "recipes"])
    assert rows[0][0] == "recipes/broken.yaml" and rows[0][1] == ERROR_MARK and "invalid YAML" in rows[0][3]
    assert rows[1:] == [("recipes/jd-ner/head.yaml", "head-only", "tagging", "me5-small"),
                        ("recipes/jd-ner/lora.yaml", "lora", "tagging", "me5-small")]


def test_recipe_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, peft_tags.recipe; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_run_written_before_tasks_had_sections_still_loads(tmp_path):
    # resolved recipes of earlier versions list every task's keys under task:
    old_task = ("task:\n  type: tagging\n  slots: 4\n  pooling: mean\n  pos_weight: none\n  pos_weight_cap: 50.0\n"
                "  thresholds: auto\n  min_tag_support: 5\n  head_bias: auto\n  top_k: null\n")
    body = MINIMAL  # no task section of its own
    resolved = tmp_path / "recipe.yaml"
    resolved.write_text("# Resolved peft-tags recipe (every default filled in), written by peft-tags 0.1.0\n"
                        + textwrap.dedent(body) + old_task, encoding="utf-8")
    assert load_recipe(resolved).task.slots == 4
    mine = tmp_path / "mine.yaml"  # a recipe a user wrote gets no such leniency
    mine.write_text(textwrap.dedent(body) + old_task, encoding="utf-8")
    with pytest.raises(RecipeError, match=r"unknown key 'task\.pooling'"):
        load_recipe(mine)
