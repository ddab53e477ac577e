"""Type names from a data set's types.tsv: kept by the run, shown by every output."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import write_recipe
from helpers import TITLE, cli_fails
from peft_tags.cli import main as cli_main
from peft_tags.data.names import read_type_names
from peft_tags.errors import UserError


@pytest.mark.parametrize("content,where,says", [
    (b"kind\tname\n1\tbrand\n", ":1:", "header"),
    (b"type\tname\n1\tbrand\n4\n", ":3:", "separated by one tab"),
    (b"type\tname\n1\tbrand\n1\tlabel\n", ":3:", "named twice"),
    (b"type\tname\n1\t\n", ":2:", "a type and its name"),
    (b"type\tname\n1\tbr\xffand\n", ":", "not UTF-8"),
])
def test_a_bad_names_file_is_one_line_naming_file_and_line(tmp_path, content, where, says):
    path = tmp_path / "types.tsv"
    path.write_bytes(content)
    with pytest.raises(UserError) as e:
        read_type_names(path)
    assert str(e.value).startswith(f"{path}{where}") and says in str(e.value) and "\n" not in str(e.value)


def test_a_run_keeps_the_names_and_its_outputs_show_them(tmp_path, tiny_backbone, toy_data, capsys):
    from peft_tags.predict import Tagger

    data = tmp_path / "data"
    shutil.copytree(toy_data / "toy", data / "toy")
    (data / "toy" / "types.tsv").write_text("type\tname\n1\tbrand\n4\tproduct word\n99\tnot in this data\n\n",
                                            encoding="utf-8")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, data, tmp_path / "run", epochs=2, lr=1e-2)
    assert cli_main(["train", str(recipe)]) == 0
    meta = json.loads((tmp_path / "run" / "labels.json").read_text(encoding="utf-8"))
    assert meta["type_names"] == {"1": "brand", "4": "product word"}  # only the run's types
    tags = [t for ts in Tagger.load(tmp_path / "run").tag([TITLE, "小米白色保护套硅胶"]) for t in ts]
    assert tags and all(t.name == {"1": "brand", "4": "product word"}.get(t.label) for t in tags)
    assert any(t.name for t in tags)
    capsys.readouterr()
    assert cli_main(["predict", str(tmp_path / "run"), TITLE, "小米白色保护套硅胶"]) == 0
    lines = [line.strip().split("\t") for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert lines and all(len(c) == (5 if c[0] in ("1", "4") else 4) for c in lines)
    meta["type_names"] = {"77": "no such type"}
    (tmp_path / "run" / "labels.json").write_text(json.dumps(meta), encoding="utf-8")
    cli_fails(["predict", str(tmp_path / "run"), TITLE], capsys, "labels.json", "type_names")
