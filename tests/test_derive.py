"""`peft-tags derive-tags`: a multi-label tag set from span-tagged titles."""
from __future__ import annotations

import json

import pytest

from conftest import write_conll
from peft_tags.cli import main as cli_main
from peft_tags.derive import derive_tags, normalize_tag


def _source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_conll(src / "train.txt", [
        [("华为", "1"), ("黑色", "16"), ("手机壳", "4")],
        [("小米", "1"), ("黑色", "16"), ("硅胶", "12")],
        [("华为", "1"), ("ＢＬＡＣＫ", "16"), ("硅胶", "12")],
        [("得力", "1"), ("白色", "16")],
        [("晨光", "1"), ("black", "16")],
    ])
    write_conll(src / "dev.txt", [[("华为", "1"), ("黑色", "16"), ("红色", "16")], [("得力", "1")]])
    write_conll(src / "test.txt", [[("硅胶", "12"), ("金属", "12"), ("Black", "16")]])
    return src


def test_tags_vocabulary_and_out_of_vocabulary_counts(tmp_path):
    stats = derive_tags(str(_source(tmp_path)), tmp_path / "out", types=["16", "12"], min_count=2)
    vocab = json.loads((tmp_path / "out" / "vocab.json").read_text())
    # 黑色 x2, black x2 (ＢＬＡＣＫ and black normalise alike), 硅胶 x2; 白色 once: out
    assert [v["tag"] for v in vocab] == ["black", "硅胶", "黑色"]
    assert [v["train_titles"] for v in vocab] == [2, 2, 2]
    rows = [json.loads(l) for l in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert rows[0] == {"text": "华为黑色手机壳", "tags": ["黑色"], "other_tags": []}
    assert rows[2]["tags"] == ["black", "硅胶"] and rows[2]["text"] == "华为ＢＬＡＣＫ硅胶"  # the text is left as it was
    assert rows[3]["tags"] == [] and rows[3]["other_tags"] == ["白色"]  # kept as a negative; its rare tag beside
    dev = [json.loads(l) for l in (tmp_path / "out" / "dev.jsonl").read_text().splitlines()]
    assert dev[0]["tags"] == ["黑色"]
    s = stats["splits"]
    assert s["train"]["out_of_vocabulary"] == 1 and s["train"]["out_of_vocabulary_top"] == [["白色", 1]]
    assert s["dev"]["out_of_vocabulary"] == 1 and s["dev"]["titles_without_tags"] == 1
    assert s["test"]["tags"] == 2 and s["test"]["out_of_vocabulary_top"] == [["金属", 1]]
    assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats


def test_output_is_deterministic(tmp_path):
    src = _source(tmp_path)
    derive_tags(str(src), tmp_path / "a", types=["16", "12", "1"], min_count=1)
    derive_tags(str(src), tmp_path / "b", types=["16", "12", "1"], min_count=1)
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl", "vocab.json", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_normalisation():
    assert normalize_tag("  ＡＢＣ　１２  x ") == "abc 12 x"


@pytest.mark.parametrize("args, message", [
    (["--types", "16,99"], "--types: no span of type '99'"),
    (["--types", "16", "--min-count", "50"], "--min-count: no tag occurs in 50 or more training titles"),
    (["--min-count", "0"], "expected a positive integer"),
])
def test_mistakes_are_one_line(tmp_path, capsys, args, message):
    src = _source(tmp_path)
    with pytest.raises(SystemExit) if "positive" in message else _nothing():
        rc = cli_main(["derive-tags", str(src), str(tmp_path / "out"), *args])
        assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_existing_destination_needs_overwrite(tmp_path, capsys):
    src = _source(tmp_path)
    assert cli_main(["derive-tags", str(src), str(tmp_path / "out"), "--types", "16", "--min-count", "1"]) == 0
    assert cli_main(["derive-tags", str(src), str(tmp_path / "out"), "--types", "16"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert cli_main(["derive-tags", str(src), str(tmp_path / "out"), "--types", "16", "--min-count", "1", "--overwrite"]) == 0
    assert (tmp_path / "out" / "vocab.json").is_file()
    (tmp_path / "mine").mkdir()  # a folder peft-tags did not write is never replaced
    assert cli_main(["derive-tags", str(src), str(tmp_path / "mine"), "--types", "16", "--overwrite"]) == 2
    assert "was not written by peft-tags" in capsys.readouterr().err


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_the_source_folder_is_never_the_destination(tmp_path, capsys):
    src = _source(tmp_path)
    before = (src / "train.txt").read_bytes()
    assert cli_main(["derive-tags", str(src), str(src), "--types", "16", "--min-count", "1", "--overwrite"]) == 2
    assert "is (or holds) the source folder" in capsys.readouterr().err
    assert (src / "train.txt").read_bytes() == before
    (tmp_path / "afile").write_text("x")
    assert cli_main(["derive-tags", str(src), str(tmp_path / "afile"), "--types", "16", "--overwrite"]) == 2
    assert "is a file; peft-tags replaces only directories it wrote itself" in capsys.readouterr().err
