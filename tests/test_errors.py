"""Mistakes a user can make end in one clear line per problem, exit code 2, and nothing on disk.

Each case runs ``peft-tags train`` in-process on a recipe with one mistake and checks the
exit code, that stderr names the culprit, that no traceback is printed, and that neither
the output directory nor its working directory exists afterwards.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, write_recipe
from peft_tags.cli import main as cli_main

# (id, edit applied to the recipe text, overrides, text the error must contain)
BAD_RECIPES = [
    ("unknown-section", lambda s: s + "extras:\n  a: 1\n", [], "unknown key 'extras'"),
    ("misspelt-key", lambda s: s.replace("  lr:", "  lrr:"), [], "did you mean 'training.lr'"),
    ("missing-train", lambda s: s.replace("  train: toy/train.txt\n", ""), [], "missing required key 'data.train'"),
    ("missing-method-name", lambda s: s.replace("  name: lora\n", ""), [], "method.name"),
    ("unknown-method", lambda s: s.replace("name: lora", "name: lorra"), [], "did you mean 'lora'"),
    ("epochs-not-int", lambda s: s.replace("epochs: 3", "epochs: three"), [], "training.epochs: expected an integer"),
    ("epochs-bool", lambda s: s.replace("epochs: 3", "epochs: true"), [], "training.epochs"),
    ("negative-lr", lambda s: s.replace("lr: 0.005", "lr: -1"), [], "training.lr"),
    ("warmup-out-of-range", lambda s: s.replace("  seed: 7", "  seed: 7\n  warmup_ratio: 1.5"), [], "training.warmup_ratio"),
    ("bad-schedule", lambda s: s.replace("  seed: 7", "  seed: 7\n  schedule: exp"), [], "training.schedule"),
    ("bad-precision", lambda s: s.replace("  seed: 7", "  seed: 7\n  mixed_precision: fp8"), [], "training.mixed_precision"),
    ("bad-format", lambda s: s.replace("format: conll", "format: csv"), [], "data.format"),
    ("bad-task", lambda s: s.replace("type: tagging", "type: ner"), [], "task.type"),
    ("zero-slots", lambda s: s.replace("slots: 4", "slots: 0"), [], "task.slots"),
    ("lora-rank-zero", lambda s: s.replace("r: 4", "r: 0"), [], "method.r"),
    ("lora-unknown-option", lambda s: s.replace("r: 4", "rank: 4"), [], "did you mean 'method.r'"),
    ("yaml-syntax", lambda s: s.replace("task:\n", "task: [\n"), [], "invalid YAML"),
    ("top-level-list", lambda s: "- a\n- b\n", [], "top level must be a mapping"),
    ("section-not-mapping", lambda s: s.replace("task:\n  type: tagging\n  slots: 4\n", "task: fast\n"), [], "task: expected a mapping"),
    ("duplicate-key", lambda s: s.replace("  seed: 7", "  seed: 7\n  seed: 8"), [], "given twice"),
    ("short-max-length", lambda s: s.replace("max_length: 64", "max_length: 4"), [], "backbone.max_length"),
    ("dev-is-train", lambda s: s.replace("dev: toy/dev.txt", "dev: toy/train.txt"), [], "data.dev"),
    ("override-syntax", lambda s: s, ["training.lr"], "override 'training.lr'"),
    ("override-unknown", lambda s: s, ["training.lrr=1"], "override 'training.lrr=1'"),
    ("backbone-missing", lambda s: s.replace("name: /", "name: ./no-such-backbone/"), [], "backbone.name"),
    ("resume-into-a-file", lambda s: s.replace("/out\n", "/r.yaml\n"), ["training.resume=true"], "output.dir"),
    ("target-modules-missing", lambda s: s.replace("target_modules: [query, value]", "target_modules: [q_proj]"), [],
     "method.target_modules"),
    ("max-length-past-positions", lambda s: s.replace("max_length: 64", "max_length: 512"), [], "backbone.max_length"),
    # other methods, passed through to peft or ours
    ("peft-method-wrong-case", lambda s: s.replace("name: lora", "name: LoHa"), [], "did you mean 'loha'"),
    ("peft-name-of-ours", lambda s: s.replace("name: lora", "name: prefix_tuning"), [], "did you mean 'prefix'"),
    ("peft-method-unknown-key", lambda s: s.replace("name: lora", "name: loha").replace("r: 4", "rr: 4"), [],
     "unknown key 'method.rr' (did you mean 'method.r'?)"),
    ("peft-method-value-peft-rejects", lambda s: s.replace("name: lora", "name: loha").replace("r: 4", "r: 4\n  layers_pattern: layer"),
     [], "peft LoHaConfig rejects these options"),
    ("adalora-target-above-init", lambda s: s.replace("name: lora\n  r: 4\n  alpha: 8", "name: adalora\n  init_r: 4\n  target_r: 8"),
     [], "method.target_r"),
    ("adalora-budget-order", lambda s: s.replace("name: lora\n  r: 4\n  alpha: 8", "name: adalora\n  budget_start: 0.8\n  budget_end: 0.2"),
     [], "method.budget_end"),
    ("adalora-beta-zero", lambda s: s.replace("name: lora\n  r: 4\n  alpha: 8", "name: adalora\n  beta1: 0"),
     [], "method.beta1: must be in (0, 1)"),
    ("bottleneck-init-std-zero", lambda s: s.replace("name: lora\n  r: 4\n  alpha: 8", "name: bottleneck\n  init_std: 0"),
     [], "method.init_std: must be > 0"),
    ("bottleneck-variant", lambda s: s.replace("name: lora\n  r: 4\n  alpha: 8", "name: bottleneck\n  variant: parallel"),
     [], "method.variant: must be one of houlsby, pfeiffer"),
    ("bottleneck-wrong-targets", lambda s: s.replace("name: lora\n  r: 4\n  alpha: 8", "name: bottleneck"
                                                     ).replace("[query, value]", "[o_proj]"), [], "method.target_modules"),
    ("ia3-feedforward-not-target", lambda s: s.replace("name: lora\n  r: 4\n  alpha: 8", "name: ia3\n  feedforward_modules: [dense]"),
     [], "method.feedforward_modules"),
    ("prompt-past-positions", lambda s: s.replace("name: lora\n  r: 4\n  alpha: 8\n  target_modules: [query, value]",
                                                  "name: prompt\n  num_virtual_tokens: 100"), [],
     "backbone.max_length: 64 plus 100 virtual tokens"),
    ("quantization-unknown", lambda s: s.replace("max_length: 64", "max_length: 64\n  quantization: nf5"), [],
     "backbone.quantization: must be one of none, nf4, fp4, int8"),
    ("quantization-with-full", lambda s: s.replace("max_length: 64", "max_length: 64\n  quantization: nf4").replace(
        "name: lora\n  r: 4\n  alpha: 8\n  target_modules: [query, value]", "name: full"), [], "backbone.quantization"),
]


def _bad_data(name: str, content: bytes | str, fmt: str = "conll", split: str = "train"):
    return (name, content, fmt, split)


BAD_DATA = [
    _bad_data("no-separator", "华 B-1\n为I-1\n"),
    _bad_data("two-chars", "华为 B-1\n"),
    _bad_data("unknown-prefix", "华 X-1\n"),
    _bad_data("empty-type", "华 B-\n"),
    _bad_data("i-without-b", "华 O\n为 I-1\n"),
    _bad_data("i-wrong-type", "华 B-1\n为 I-2\n"),
    _bad_data("empty-file", ""),
    _bad_data("only-blank-lines", "\n\n\n"),
    _bad_data("not-utf8", b"\xff\xfe O\n"),
    _bad_data("bad-dev", "华 B-1\n为 Q\n", split="dev"),
    _bad_data("bad-test", "华 B-1\n为 I-1\n\nx", split="test"),
    _bad_data("json-invalid", '{"text": "a"\n', fmt="jsonl"),
    _bad_data("json-not-object", '["a"]\n', fmt="jsonl"),
    _bad_data("json-missing-text", '{"spans": []}\n', fmt="jsonl"),
    _bad_data("json-text-not-string", '{"text": 5, "spans": []}\n', fmt="jsonl"),
    _bad_data("json-spans-not-list", '{"text": "ab", "spans": 3}\n', fmt="jsonl"),
    _bad_data("json-end-past-text", '{"text": "ab", "spans": [{"start": 0, "end": 5, "label": "x"}]}\n', fmt="jsonl"),
    _bad_data("json-empty-span", '{"text": "ab", "spans": [{"start": 1, "end": 1, "label": "x"}]}\n', fmt="jsonl"),
    _bad_data("json-overlap", '{"text": "abcd", "spans": [{"start": 0, "end": 3, "label": "x"}, {"start": 2, "end": 4, "label": "y"}]}\n', fmt="jsonl"),
    _bad_data("json-label-not-string", '{"text": "ab", "spans": [{"start": 0, "end": 1, "label": 3}]}\n', fmt="jsonl"),
    _bad_data("av-missing-input", '{"target_scores": {}}\n', fmt="attribute-value"),
    _bad_data("av-targets-not-object", '{"input": "ab", "target_scores": [1]}\n', fmt="attribute-value"),
]


@pytest.fixture()
def base_recipe(tmp_path, tiny_backbone, toy_data):
    def make(edit=lambda s: s) -> Path:
        path = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out")
        path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")
        return path

    return make


def _assert_clean_failure(rc: int, err: str, must_contain: str, tmp_path: Path) -> None:
    assert rc == 2
    assert must_contain in err, err
    assert "Traceback" not in err
    # every check runs before the first progress line: the problem is the only line
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one line, got: {err!r}"
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()


@pytest.mark.parametrize("case", BAD_RECIPES, ids=[c[0] for c in BAD_RECIPES])
def test_bad_recipe_is_one_line_exit_2_and_no_output(case, base_recipe, tmp_path, capsys):
    _, edit, overrides, must_contain = case
    recipe = base_recipe(edit)
    rc = cli_main(["train", str(recipe), *overrides])
    _assert_clean_failure(rc, capsys.readouterr().err, must_contain, tmp_path)


@pytest.mark.parametrize("case", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_bad_data_names_file_and_line_before_training(case, base_recipe, tmp_path, toy_data, capsys):
    _, content, fmt, split = case
    bad = tmp_path / f"bad-{split}.txt"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    recipe = base_recipe(lambda s: s.replace(f"{split}: toy/{split}.txt", f"{split}: {bad}").replace("format: conll", f"format: {fmt}"))
    if fmt != "conll":  # the other splits must be in the same format: drop them
        recipe.write_text("\n".join(l for l in recipe.read_text(encoding="utf-8").splitlines()
                                    if not (l.strip().startswith(("dev:", "test:")) and str(bad) not in l)) + "\n",
                          encoding="utf-8")
    rc = cli_main(["train", str(recipe)])
    _assert_clean_failure(rc, capsys.readouterr().err, str(bad), tmp_path)


def test_missing_data_file_names_the_key(base_recipe, tmp_path, capsys):
    recipe = base_recipe(lambda s: s.replace("train: toy/train.txt", "train: toy/nope.txt"))
    _assert_clean_failure(cli_main(["train", str(recipe)]), capsys.readouterr().err, "data.train", tmp_path)


def test_existing_output_dir_is_refused_without_overwrite(base_recipe, tmp_path, capsys):
    recipe = base_recipe()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert cli_main(["train", str(recipe)]) == 2
    assert "output.dir" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_several_problems_are_reported_together(base_recipe, capsys):
    recipe = base_recipe(lambda s: s.replace("epochs: 3", "epochs: x").replace("  lr:", "  lrr:"))
    assert cli_main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and any("training.epochs" in l for l in err) and any("training.lrr" in l for l in err)


def test_run_recipe_script_exits_2_without_traceback(base_recipe):
    recipe = base_recipe(lambda s: s.replace("  lr:", "  lrr:"))
    done = subprocess.run([sys.executable, str(REPO / "run_recipe.py"), str(recipe)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "did you mean 'training.lr'" in done.stderr and "Traceback" not in done.stderr


def test_predict_mistakes_are_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"title": "b"}\n', encoding="utf-8")
    cases = [
        (["predict", str(tmp_path)], "give titles"),
        (["predict", str(tmp_path), "--input", str(tmp_path / "nope.jsonl")], "no such file"),
        (["predict", str(tmp_path), "--input", str(tmp_path / "empty.jsonl")], "no titles"),
        (["predict", str(tmp_path), "--input", str(tmp_path / "latin1.jsonl")], "latin1.jsonl:1: not UTF-8"),
        (["predict", str(tmp_path), "--input", str(tmp_path / "bad.jsonl")], "bad.jsonl:2:"),
        (["predict", str(tmp_path), "a title", "--output", str(tmp_path / "no" / "dir.jsonl")], "--output"),
        (["predict", str(tmp_path), "a title"], "not a peft-tags output directory"),
    ]
    for argv, must in cases:
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and must in err[0], (argv, err)


@pytest.mark.parametrize("data, says", [
    ('{"type": "品牌"}'.encode()[:-4], "invalid JSON (the file ends inside a character"),  # cut inside 牌
    ('{"type": "a"'.encode(), "invalid JSON"),
    (b'{"type": "\xff"}', "not UTF-8"),
])
def test_a_damaged_run_json_file_is_one_line_naming_it(data, says, tmp_path):
    from peft_tags.errors import UserError
    from peft_tags.rundir import read_json
    path = tmp_path / "metrics.json"
    path.write_bytes(data)
    with pytest.raises(UserError) as caught:
        read_json(path)
    assert str(caught.value).startswith(f"{path}") and says in str(caught.value)
