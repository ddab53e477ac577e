"""data.dev_from_train: a dev split held out of train, for data sets without a dev file."""
from __future__ import annotations

import pytest

from conftest import write_recipe
from peft_tags.config import load_recipe
from peft_tags.data import Example, read_split
from peft_tags.data.splits import hold_out, read_splits
from peft_tags.errors import UserError
from helpers import recipe_problems


def test_hold_out_is_by_title_stable_and_disjoint():
    titles = [f"title {i}" for i in range(400)] + ["title 7"]  # one title twice
    examples = [Example(t, [], f"x:{i}") for i, t in enumerate(titles)]
    kept, out = hold_out(examples, 0.2)
    assert len(kept) + len(out) == len(examples) and 40 < len(out) < 120
    assert not {e.text for e in kept} & {e.text for e in out}  # a title lands on one side only
    assert [e.source for e in hold_out(list(reversed(examples)), 0.2)[1]] == [e.source for e in reversed(out)]
    assert {e.text for e in hold_out(examples, 0.3)[1]} >= {e.text for e in out}  # a larger share holds out more


def _recipe(tmp_path, tiny_backbone, toy_data, dev_line):
    path = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out")
    path.write_text(path.read_text().replace("  dev: toy/dev.txt\n", dev_line))
    return path


def test_a_recipe_holds_out_dev_from_train_and_caps_it(tmp_path, tiny_backbone, toy_data):
    path = _recipe(tmp_path, tiny_backbone, toy_data, "  dev_from_train: 0.25\n  max_dev_examples: 20\n")
    d = load_recipe(path).data
    data = read_splits(d)
    assert set(data) == {"train", "dev", "test"} and len(data["dev"]) == 20
    kept, out = hold_out(read_split(d, "train"), 0.25)
    assert len(kept) + len(out) == 160 and len(out) > 20
    assert data["train"] == kept and data["dev"] == out[:20]


def test_dev_from_train_and_a_dev_file_are_refused_together(tmp_path, tiny_backbone, toy_data):
    path = _recipe(tmp_path, tiny_backbone, toy_data, "  dev: toy/dev.txt\n  dev_from_train: 0.1\n")
    assert any("data.dev_from_train: holds dev out of data.train, and data.dev names a dev file" in line
               for line in recipe_problems(path))


@pytest.mark.parametrize("share", ["0.6", "0"])
def test_dev_from_train_is_a_share_below_one_half(tmp_path, tiny_backbone, toy_data, share):
    path = _recipe(tmp_path, tiny_backbone, toy_data, f"  dev_from_train: {share}\n")
    assert any("data.dev_from_train" in line for line in recipe_problems(path))


def test_a_share_that_holds_out_nothing_is_one_line(tmp_path, tiny_backbone, toy_data):
    path = _recipe(tmp_path, tiny_backbone, toy_data, "  dev_from_train: 0.0001\n")
    with pytest.raises(UserError, match="data.dev_from_train: 0.0001 of the 160 training titles leaves no dev title"):
        read_splits(load_recipe(path).data)


def test_spread_takes_n_evenly_spaced_examples_in_order():
    from peft_tags.data import spread_subset

    assert spread_subset(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert spread_subset(list(range(10)), 3) == [0, 3, 6]
    assert spread_subset(list(range(4)), 9) == [0, 1, 2, 3]
    assert spread_subset(list(range(7)), 1) == [0]


def test_data_subset_spread_gives_every_category_of_a_sorted_file_its_share(tmp_path):
    import json

    from peft_tags.config import load_recipe
    from peft_tags.data.splits import read_splits

    # a file sorted by category, as OA-Mine's is: the first N titles would all be one category
    rows = [{"input": f"{cat} item {i} red", "category": cat, "target_scores": {"Color": {"red": 1}}}
            for cat in ("Coffee", "Shoes", "Tea", "Vitamin") for i in range(30)]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""backbone: {{name: me5-small}}
task: {{type: tagging}}
data: {{format: attribute-value, root: {tmp_path / 'd'}, train: train.jsonl, max_train_examples: 20}}
method: {{name: lora}}
output: {{dir: {tmp_path / 'out'}}}
""", encoding="utf-8")
    first = read_splits(load_recipe(recipe).data)["train"]
    spread = read_splits(load_recipe(recipe, ["data.subset=spread"]).data)["train"]
    assert len(first) == len(spread) == 20
    assert {e.text.split()[0] for e in first} == {"Coffee"}
    assert sorted(e.text.split()[0] for e in spread) == ["Coffee"] * 5 + ["Shoes"] * 5 + ["Tea"] * 5 + ["Vitamin"] * 5
