"""Data through Hugging Face ``datasets``: the ``hf-spans`` and ``hf-tags`` formats read CSV,
JSON lines and Parquet files (and hub datasets) with the columns mapped in the recipe, and give
the same examples as the ``jsonl`` / ``tags`` / ``conll`` readers."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import pytest

from conftest import write_recipe
from helpers import child_env, cli_fails, one_line
from peft_tags.cli import main as cli_main
from peft_tags.data import Span, read_examples, read_examples_with_stats, read_split
from peft_tags.data.hf import HubSplit
from peft_tags.errors import UserError
from peft_tags.recipe import RecipeError, load_recipe

EXTS = ["csv", "jsonl", "parquet"]
SPAN_COLUMNS = {"text": "title", "spans": "entities"}
TAG_COLUMNS = {"text": "title", "tags": "labels"}


def write_table(path, rows: list[dict]):
    """``rows`` as a CSV (lists as JSON cells), JSON lines or Parquet file, by the extension."""
    if path.suffix == ".csv":
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(rows[0])
            for row in rows:
                w.writerow([v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in row.values()])
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def span_rows(examples) -> list[dict]:
    return [{"title": e.text, "entities": [{"start": s.start, "end": s.end, "label": s.label} for s in e.spans]}
            for e in examples]


def as_jsonl(path, examples):
    """The same examples in the ``jsonl`` format."""
    return write_table(path, [{"text": r["title"], "spans": r["entities"]} for r in span_rows(examples)])


def content(examples):
    return [(e.text, getattr(e, "spans", None), getattr(e, "tags", None)) for e in examples]


@pytest.fixture(scope="module")
def toy_spans(toy_data):
    return read_examples(toy_data / "toy" / "train.txt", "conll", fullwidth_to_halfwidth=False)[:40]


# ------------------------------------------------------------------ round trips against the existing readers


@pytest.mark.parametrize("ext", EXTS)
def test_spans_round_trip(ext, tmp_path, toy_spans):
    path = write_table(tmp_path / f"train.{ext}", span_rows(toy_spans))
    got, stats = read_examples_with_stats(path, "hf-spans", columns=SPAN_COLUMNS)
    assert content(got) == content(read_examples(as_jsonl(tmp_path / "same.jsonl", toy_spans), "jsonl"))
    assert content(got) == content(toy_spans)  # the conll file they came from (Chinese, spaces, digits)
    assert got[1].source == f"{path}: row 2"
    assert (stats.examples, stats.spans) == (40, sum(len(e.spans) for e in toy_spans))


@pytest.mark.parametrize("ext", EXTS)
def test_tags_round_trip(ext, tmp_path, toy_tags):
    want = read_examples(toy_tags / "toy-tags" / "train.jsonl", "tags")[:40]
    path = write_table(tmp_path / f"train.{ext}", [{"labels": e.tags, "title": e.text, "sku": i} for i, e in enumerate(want)])
    got = read_examples(path, "hf-tags", columns=TAG_COLUMNS)
    assert content(got) == content(want) and any(e.tags for e in got)


def test_default_column_names_need_no_mapping(tmp_path):
    write_table(tmp_path / "t.parquet", [{"text": "华为手机壳", "tags": ["手机壳", "手机壳 ", "华为"]}])
    (ex,) = read_examples(tmp_path / "t.parquet", "hf-tags")
    assert ex.tags == ["手机壳", "华为"]  # stripped; listed twice counts once, as in the tags format


@pytest.mark.parametrize("ext", EXTS)
def test_bio_tags_per_character(ext, tmp_path, toy_spans):
    rows = []
    for e in toy_spans:
        bio = ["O"] * len(e.text)
        for s in e.spans:
            bio[s.start:s.end] = [f"B-{s.label}"] + [f"I-{s.label}"] * (s.end - s.start - 1)
        rows.append({"chars": e.text if ext == "csv" else list(e.text), "ner": bio})  # a title or its characters
    got = read_examples(write_table(tmp_path / f"bio.{ext}", rows), "hf-spans", columns={"text": "chars", "bio": "ner"})
    assert content(got) == content(toy_spans)


def test_bio_repairs_like_conll_when_not_strict_and_tsv_reads(tmp_path):
    path = write_table(tmp_path / "b.jsonl", [{"text": "华为手机", "bio": ["I-1", "I-1", "E-4", "O"]}])
    (ex,), stats = read_examples_with_stats(path, "hf-spans", strict=False, columns={"bio": "bio"})
    assert ex.spans == [Span(0, 2, "1"), Span(2, 3, "4")] and stats.repaired_tags == 2
    assert "2 I-/E- tags that did not continue a span started new spans" in stats.summary()
    (tmp_path / "t.tsv").write_text('text\ttags\n华为, 手机壳\t["手机壳"]\n', encoding="utf-8")
    assert content(read_examples(tmp_path / "t.tsv", "hf-tags")) == [("华为, 手机壳", None, ["手机壳"])]


def test_bio_class_ids_and_mapped_span_fields(tmp_path):
    from datasets import ClassLabel, Dataset, Features, List, Value

    features = Features({"tokens": List(Value("string")), "ner_tags": List(ClassLabel(names=["O", "B-1", "I-1", "S-4"]))})
    Dataset.from_dict({"tokens": [list("华为手机壳")], "ner_tags": [[1, 2, 0, 0, 3]]}, features=features).to_parquet(
        tmp_path / "ids.parquet")
    (ex,) = read_examples(tmp_path / "ids.parquet", "hf-spans", columns={"text": "tokens", "bio": "ner_tags"})
    assert (ex.text, ex.spans) == ("华为手机壳", [Span(0, 2, "1"), Span(4, 5, "4")])
    write_table(tmp_path / "m.jsonl", [{"name": "华为手机壳", "ents": [{"from": 2, "to": 5, "type": "4"}]}])
    cols = {"text": "name", "spans": "ents", "start": "from", "end": "to", "label": "type"}
    (ex,) = read_examples(tmp_path / "m.jsonl", "hf-spans", columns=cols)
    assert ex.spans == [Span(2, 5, "4")]


# ------------------------------------------------------------------ normalisation, max examples, the recipe


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("fullwidth, lower", [(True, True), (False, False), (True, False)])
def test_normalisation_and_max_examples_as_for_jsonl(ext, fullwidth, lower, tmp_path):
    rows = [{"title": "ＡＰＰＬＥ苹果手机壳　黑色", "entities": [{"start": 0, "end": 5, "label": "1"}]},
            {"title": "Nike运动鞋", "entities": [{"start": 0, "end": 4, "label": "1"}]},
            {"title": "NA", "entities": []},
            {"title": "2024", "entities": []}]
    path = write_table(tmp_path / f"n.{ext}", rows)
    same = as_jsonl(tmp_path / "same.jsonl", read_examples(path, "hf-spans", columns=SPAN_COLUMNS, fullwidth_to_halfwidth=False))
    for n in (None, 2):
        opts = {"fullwidth_to_halfwidth": fullwidth, "lowercase": lower, "max_examples": n}
        got = read_examples(path, "hf-spans", columns=SPAN_COLUMNS, **opts)
        assert content(got) == content(read_examples(same, "jsonl", **opts))
        assert len(got) == (n or 4)
    assert [e.text for e in got] == [("apple苹果手机壳 黑色" if lower else "APPLE苹果手机壳 黑色") if fullwidth
                                     else "ＡＰＰＬＥ苹果手机壳　黑色", "nike运动鞋" if lower else "Nike运动鞋"]


RECIPE = """\
backbone:
  name: me5-small
task:
  type: {task}
data:
  root: {root}
  format: {fmt}
  train: shop/train.{ext}
  dev: shop/dev.{ext}
{extra}method:
  name: lora
output:
  dir: runs/x
"""


def recipe_file(tmp_path, task="multilabel", fmt="hf-tags", ext="parquet", extra="  columns: {text: title, tags: labels}\n"):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(task=task, root=tmp_path, fmt=fmt, ext=ext, extra=extra), encoding="utf-8")
    return path


def test_the_recipe_reads_a_split_through_read_split(tmp_path, toy_tags):
    want = read_examples(toy_tags / "toy-tags" / "train.jsonl", "tags", lowercase=True, max_examples=5)
    (tmp_path / "shop").mkdir()
    write_table(tmp_path / "shop" / "train.parquet", [{"title": e.text, "labels": e.tags} for e in want])
    recipe = load_recipe(recipe_file(tmp_path), ["data.lowercase=true", "data.max_train_examples=3"])
    assert recipe.data.columns == TAG_COLUMNS and recipe.data.hub is None
    assert content(read_split(recipe.data, "train")) == content(want[:3])


@pytest.mark.parametrize("extra, fmt, task, line", [
    ("  columns: {text: title}\n", "conll", "tagging",
     "data.columns: format 'conll' has no columns to map; only hf-spans and hf-tags read columns"),
    ("  columns: {txt: title}\n", "hf-tags", "multilabel",
     "data.columns.txt: unknown name 'txt' (did you mean 'text'?); hf-tags maps text, tags"),
    ("  columns: {text: 3}\n", "hf-tags", "multilabel", "data.columns.text: expected a column name, got 3"),
    ("  columns: [title]\n", "hf-tags", "multilabel",
     "data.columns: expected a mapping of our names to your columns, e.g. {text: title}; got ['title']"),
    ("  columns: {spans: e, bio: t}\n", "hf-spans", "tagging",
     "data.columns: give columns.spans (span objects) or columns.bio (a tag per character), not both"),
    ("  hub: shop/titles\n", "jsonl", "tagging",
     "data.hub: format 'jsonl' reads files; a hub dataset is read by format hf-spans or hf-tags"),
    ("  hub_revision: v1\n", "hf-tags", "multilabel", "data.hub_revision: applies to a hub dataset; set data.hub too"),
    ("", "hf-spans", "multilabel",
     "data.format: task multilabel reads 'tags' or 'hf-tags' files, not 'hf-spans' "
     "({\"text\": ..., \"tags\": [...]} per line)"),
    ("", "hf-tags", "tagging",
     "data.format: task tagging reads 'conll' or 'jsonl' or 'attribute-value' or 'hf-spans' files, not 'hf-tags'"),
])
def test_recipe_problems_with_the_new_keys(tmp_path, extra, fmt, task, line):
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file(tmp_path, task=task, fmt=fmt, extra=extra))
    assert info.value.problems == [f"{tmp_path / 'r.yaml'}: {line}"]


# ------------------------------------------------------------------ one line for each mistake


def bad(tmp_path, ext, row, fmt="hf-spans", columns=None):
    good = {"title": "华为手机壳", "entities": [], "labels": [], "bio": ["O"] * 5}
    path = write_table(tmp_path / f"bad.{ext}", [{k: v for k, v in good.items() if k in row}, row])
    with pytest.raises(UserError) as info:
        read_examples(path, fmt, columns=columns or (SPAN_COLUMNS if fmt == "hf-spans" else TAG_COLUMNS))
    return one_line(str(info.value)).replace(str(path), "F")


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("entities, line", [
    ([{"start": 3, "end": 1, "label": "4"}],
     "F: row 2, column 'entities': span 0: offsets start=3 end=1 must satisfy 0 <= start < end <= 5 (the text length)"),
    ([{"start": 0, "end": 2, "label": "1"}, {"start": 2, "end": 6, "label": "4"}],
     "F: row 2, column 'entities': span 1: offsets start=2 end=6 must satisfy 0 <= start < end <= 5 (the text length)"),
    ([{"start": 2, "end": 2, "label": "4"}],
     "F: row 2, column 'entities': span 0: offsets start=2 end=2 must satisfy 0 <= start < end <= 5 (the text length)"),
    ([{"start": 0, "end": 3, "label": "1"}, {"start": 2, "end": 5, "label": "4"}],
     "F: row 2, column 'entities': spans overlap: 1 [0, 3) and 4 [2, 5)"),
    ([{"start": 0, "end": 2, "label": ""}], "F: row 2, column 'entities': span 0: 'label' must be a non-empty string, got ''"),
])
def test_bad_spans_name_file_row_and_column(ext, tmp_path, entities, line):
    assert bad(tmp_path, ext, {"title": "华为手机壳", "entities": entities}) == line


@pytest.mark.parametrize("ext", EXTS)
def test_a_missing_column_names_it_and_the_columns_there(ext, tmp_path):
    row = {"title": "华为手机壳", "entities": []}
    assert bad(tmp_path, ext, row, columns={"text": "titel", "spans": "entities"}) == (
        "F: no column 'titel' (data.columns.text); it has columns title, entities (did you mean 'title'?)")
    assert bad(tmp_path, ext, row, columns={"text": "title"}) == (
        "F: no column 'spans' (set data.columns.spans to the column that holds a list of {start, end, label} "
        "objects); it has columns title, entities")
    assert bad(tmp_path, ext, {"title": "华为", "labels": ["x"]}, "hf-tags", {"text": "title"}) == (
        "F: no column 'tags' (set data.columns.tags to the column that holds a list of tags); it has columns "
        "title, labels")


@pytest.mark.parametrize("row, fmt, columns, line", [
    ({"title": "华为", "labels": ["x", " "]}, "hf-tags", None, "F: row 2, column 'labels': tag 1 must be a non-empty string, got ' '"),
    ({"title": " ", "labels": ["x"]}, "hf-tags", None, "F: row 2, column 'title': the title is empty"),
    ({"title": "华\x00为", "labels": []}, "hf-tags", None,
     "F: row 2, column 'title': the title holds control character U+0000 at character 2; remove it"),
    ({"title": "华为", "entities": [{"start": 0, "label": "1"}]}, "hf-spans", None,
     "F: row 2, column 'entities': span 0: missing field 'end' (its fields: start, label; data.columns.end names "
     "the field of the end)"),
    ({"title": "华为", "bio": ["B-1"]}, "hf-spans", {"text": "title", "bio": "bio"},
     "F: row 2, column 'bio': 1 tags for a title of 2 characters; give one tag per character"),
    ({"title": "华为", "bio": ["O", "I-1"]}, "hf-spans", {"text": "title", "bio": "bio"},
     "F: row 2, column 'bio': tag 1: I-1 does not continue a span of type 1 (there is no open span); use B-1 to start one"),
    ({"title": "华为", "bio": ["O", "X"]}, "hf-spans", {"text": "title", "bio": "bio"},
     "F: row 2, column 'bio': tag 1: unknown tag 'X'; expected O or B-, I-, E-, S- followed by a type"),
])
def test_bad_rows(tmp_path, row, fmt, columns, line):
    assert bad(tmp_path, "jsonl", row, fmt, columns) == line


def test_csv_cells_hold_lists_as_json(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("title,labels\n华为手机壳,手机壳\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        read_examples(path, "hf-tags", columns=TAG_COLUMNS)
    assert str(info.value) == (f"{path}: row 1, column 'labels': not a JSON list (Expecting value at character 0); "
                               'a CSV cell holds a list as JSON, e.g. ["a", "b"]')


def test_unknown_extension_and_unreadable_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("title\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        read_examples(path, "hf-tags")
    assert str(info.value) == (f"{path}: cannot tell the file type from the extension; name it .csv, .tsv, .json, "
                               ".jsonl, .ndjson, .parquet, .pq (CSV, JSON or Parquet)")
    path = tmp_path / "t.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match=rf"^{path}: cannot read it as PARQUET"):
        read_examples(path, "hf-tags")


# ------------------------------------------------------------------ a hub dataset, with no hub


def test_hub_split_offline_is_one_line_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what conftest set before datasets was imported
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    recipe = load_recipe(recipe_file(tmp_path, extra="  hub: shop/titles\n  hub_revision: v1\n"),
                         ["data.train=train", "data.dev=validation"])
    tick = time.monotonic()
    with pytest.raises(UserError) as info:
        read_split(recipe.data, "dev")
    assert time.monotonic() - tick < 30
    assert str(info.value) == (
        "data.hub: cannot load 'shop/titles' (data.dev: split validation) from the Hugging Face hub: Couldn't reach "
        "'shop/titles' on the Hub (OfflineModeIsEnabled); offline mode is on (HF_HUB_OFFLINE and HF_DATASETS_OFFLINE) "
        "and the local cache does not hold it")
    assert str(HubSplit("shop/titles", "validation")) == "shop/titles[validation]"


def test_the_hub_call_reads_what_load_dataset_finds(tmp_path, monkeypatch, toy_tags):
    """A local dataset folder stands in for a hub id: the same load_dataset(id, config, split=...,
    revision=...) call, splits by name, class ids of a ClassLabel column read as their names."""
    import datasets
    from datasets import ClassLabel, Dataset, Features, List, Value

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    want = read_examples(toy_tags / "toy-tags" / "dev.jsonl", "tags")[:6]
    names = sorted({t for e in want for t in e.tags})
    features = Features({"title": Value("string"), "labels": List(ClassLabel(names=names))})
    (tmp_path / "shop").mkdir()
    Dataset.from_dict({"title": [e.text for e in want], "labels": [[names.index(t) for t in e.tags] for e in want]},
                      features=features).to_parquet(tmp_path / "shop" / "validation.parquet")
    extra = f"  hub: {tmp_path / 'shop'}\n  columns: {{text: title, tags: labels}}\n"
    recipe = load_recipe(recipe_file(tmp_path, extra=extra), ["data.train=validation", "data.dev=validation2"])
    assert content(read_split(recipe.data, "train")) == content(want)
    with pytest.raises(UserError) as info:
        read_split(recipe.data, "dev")
    assert str(info.value) == (f"data.hub: cannot load '{tmp_path / 'shop'}' (data.dev: split validation2): "
                               "Unknown split \"validation2\". Should be one of ['validation'].")


def test_hub_offline_in_a_fresh_process_is_one_line(tmp_path):
    """The datasets variable alone (set before anything is imported) is enough, and nothing hangs."""
    code = ("from peft_tags.data import read_examples; from peft_tags.data.hf import HubSplit; "
            "from peft_tags.errors import UserError\n"
            "try:\n    read_examples(HubSplit('shop/titles', 'train'), 'hf-tags')\n"
            "except UserError as e:\n    print(e, file=__import__('sys').stderr); raise SystemExit(2)")
    env = child_env(HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert one_line(done.stderr, "data.hub", "'shop/titles'", "offline mode is on (HF_DATASETS_OFFLINE)")


def test_validate_of_a_hub_recipe_offline_is_one_line(tmp_path, tiny_backbone, toy_data, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    recipe = write_recipe(tmp_path / "hub.yaml", tiny_backbone, toy_data, tmp_path / "out", method="head-only")
    overrides = ["data.format=hf-spans", "data.hub=shop/titles", "data.train=train", "data.dev=validation",
                 "data.test=test", "data.columns={text: title, spans: entities}"]
    cli_fails(["validate", recipe, *(a for o in overrides for a in ("--set", o))], capsys,
              "data.hub: cannot load 'shop/titles' (data.train: split train) from the Hugging Face hub", exact=True)


# ------------------------------------------------------------------ a tiny run from Parquet


def test_a_tiny_run_trains_from_parquet_like_from_conll(tmp_path, tiny_backbone, toy_data):
    root = tmp_path / "data"
    (root / "toy-pq").mkdir(parents=True)
    for split in ("train", "dev", "test"):
        write_table(root / "toy-pq" / f"{split}.parquet",
                    span_rows(read_examples(toy_data / "toy" / f"{split}.txt", "conll", fullwidth_to_halfwidth=False)))
    hub = root / "toy-hub"  # a local dataset folder stands in for a hub id: splits by name
    hub.mkdir()
    for split, name in (("train", "train"), ("dev", "validation"), ("test", "test")):
        (hub / f"{name}.parquet").write_bytes((root / "toy-pq" / f"{split}.parquet").read_bytes())
    runs = {}
    for name, overrides in (("conll", []), ("parquet", [
            f"data.root={root}", "data.format=hf-spans", "data.train=toy-pq/train.parquet",
            "data.dev=toy-pq/dev.parquet", "data.test=toy-pq/test.parquet", "data.columns={text: title, spans: entities}"]),
            ("hub", [f"data.hub={hub}", "data.format=hf-spans", "data.train=train", "data.dev=validation",
                     "data.test=test", "data.columns={text: title, spans: entities}"])):
        recipe = write_recipe(tmp_path / f"{name}.yaml", tiny_backbone, toy_data, tmp_path / name, method="head-only",
                              epochs=1)
        cut = ["data.max_train_examples=48", "data.max_dev_examples=16", "data.max_test_examples=16"]
        assert cli_main(["train", str(recipe), *cut, *overrides]) == 0
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert runs["parquet"]["alignment"] == runs["conll"]["alignment"]
    assert runs["parquet"]["scores"] == runs["conll"]["scores"] == runs["hub"]["scores"]  # same examples and seed
    resolved = (tmp_path / "parquet" / "recipe.yaml").read_text(encoding="utf-8")
    assert "format: hf-spans" in resolved and "spans: entities" in resolved
