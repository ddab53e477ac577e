import json
import logging
import os
from pathlib import Path

import pytest

from peft_tags.data import (
    Example,
    Span,
    label_set,
    normalize_text,
    read_examples,
    read_examples_with_stats,
    resolve_data_path,
)
from peft_tags.errors import UserError

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PEFT_TAGS_DATA") or REPO / ".." / "shared" / "data").resolve()


def write(tmp_path, text, name="f.txt", binary=False):
    p = tmp_path / name
    if binary:
        p.write_bytes(text)
    else:
        p.write_bytes(text.encode("utf-8"))
    return p


def conll(*titles):
    """titles: lists of (char, tag) -> file text."""
    return "\n\n".join("\n".join(f"{c} {t}" for c, t in title) for title in titles) + "\n"


def spans_text(ex):
    return [(ex.text[s.start : s.end], s.label) for s in ex.spans]


# ------------------------------------------------------------------ conll


def test_conll_bio_with_space_character(tmp_path):
    t1 = [("得", "B-1"), ("力", "I-1"), (" ", "O"), ("A", "B-18"), ("4", "I-18"), ("纸", "B-4")]
    t2 = [("黑", "B-16"), ("色", "I-16"), (" ", "I-16"), ("壳", "B-4")]
    p = write(tmp_path, conll(t1, t2))
    exs = read_examples(p, "conll")
    assert [e.text for e in exs] == ["得力 A4纸", "黑色 壳"]
    assert exs[0].spans == [Span(0, 2, "1"), Span(3, 5, "18"), Span(5, 6, "4")]
    assert spans_text(exs[1]) == [("黑色 ", "16"), ("壳", "4")]
    assert exs[0].source == f"{p}:1"
    assert exs[1].source == f"{p}:8"
    assert label_set(exs) == ["1", "16", "18", "4"]


def test_conll_bioes(tmp_path):
    t = [("a", "S-x"), ("b", "B-y"), ("c", "I-y"), ("d", "E-y"), ("e", "O"), ("f", "B-x"), ("g", "E-x"), ("h", "S-x")]
    (ex,) = read_examples(write(tmp_path, conll(t)), "conll")
    assert spans_text(ex) == [("a", "x"), ("bcd", "y"), ("fg", "x"), ("h", "x")]


def test_conll_e_closes_span(tmp_path):
    # after E-x the span is closed, so an I-x cannot continue it
    t = [("a", "B-x"), ("b", "E-x"), ("c", "I-x")]
    with pytest.raises(UserError, match=r"f.txt:3: .*I-x does not continue"):
        read_examples(write(tmp_path, conll(t)), "conll")


def test_conll_crlf_and_multiple_blank_lines(tmp_path):
    text = "a B-x\r\nb I-x\r\n\r\n\r\n  O\r\nc S-y\r\n"
    exs = read_examples(write(tmp_path, text), "conll")
    assert [e.text for e in exs] == ["ab", " c"]
    assert exs[0].spans == [Span(0, 2, "x")]
    assert exs[1].spans == [Span(1, 2, "y")]
    assert exs[1].source.endswith(":5")


def test_conll_no_trailing_newline_and_max_examples(tmp_path):
    p = write(tmp_path, "a O\n\nb O\n\nc B-z")
    assert [e.text for e in read_examples(p, "conll")] == ["a", "b", "c"]
    assert [e.text for e in read_examples(p, "conll", max_examples=2)] == ["a", "b"]


@pytest.mark.parametrize(
    "line, msg",
    [
        ("ab O", r"f.txt:2: expected '<char> <tag>'"),
        ("a", r"f.txt:2: expected '<char> <tag>'"),
        ("a\tO", r"f.txt:2: expected '<char> <tag>'"),
        ("a X-1", r"f.txt:2: unknown tag 'X-1'"),
        ("a B1", r"f.txt:2: unknown tag 'B1'"),
        ("a B-", r"f.txt:2: unknown tag 'B-'"),
    ],
)
def test_conll_bad_lines(tmp_path, line, msg):
    p = write(tmp_path, f"x O\n{line}\ny O\n")
    with pytest.raises(UserError, match=msg) as e:
        read_examples(p, "conll")
    assert "\n" not in str(e.value)


def test_conll_inconsistent_i_strict_and_lenient(tmp_path):
    t = [("a", "O"), ("b", "I-x"), ("c", "B-y"), ("d", "I-x"), ("e", "E-x")]
    p = write(tmp_path, conll(t))
    with pytest.raises(UserError, match=r"f.txt:2: tag I-x does not continue a span of type x"):
        read_examples(p, "conll")
    exs, stats = read_examples_with_stats(p, "conll", strict=False)
    assert spans_text(exs[0]) == [("b", "x"), ("c", "y"), ("de", "x")]
    assert stats.repaired_tags == 2


def test_conll_i_after_other_type_is_error(tmp_path):
    p = write(tmp_path, conll([("a", "B-y"), ("b", "I-x")]))
    with pytest.raises(UserError, match=r":2: .*there is a span of type y"):
        read_examples(p, "conll")


def test_empty_file_and_blank_only(tmp_path):
    for text in ("", "\n\n\r\n"):
        p = write(tmp_path, text)
        for fmt in ("conll", "jsonl", "attribute-value"):
            with pytest.raises(UserError, match=r"f.txt: no examples"):
                read_examples(p, fmt)


def test_not_utf8(tmp_path):
    p = write(tmp_path, "a O\n".encode() + "é O\n".encode("latin-1"), binary=True)  # Latin-1 file
    with pytest.raises(UserError, match=r"f.txt:2: not UTF-8: byte 0xe9"):
        read_examples(p, "conll")
    p = write(tmp_path, b"a O\nb O\n\xe5\xbe O\n", binary=True)
    with pytest.raises(UserError, match=r"f.txt:3: not UTF-8: byte 0xe5 at byte 0"):
        read_examples(p, "conll")


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_examples(tmp_path / "nope.txt", "conll")
    p = write(tmp_path, "a O\n")
    with pytest.raises(UserError, match="did you mean 'conll'"):
        read_examples(p, "conl")


# ------------------------------------------------------------------ jsonl


def jl(*objs):
    return "\n".join(o if isinstance(o, str) else json.dumps(o, ensure_ascii=False) for o in objs) + "\n"


def test_jsonl_good(tmp_path):
    p = write(
        tmp_path,
        jl(
            {"text": "Red Nike shoes", "spans": [{"start": 4, "end": 8, "label": "brand"}, {"start": 0, "end": 3, "label": "color"}]},
            "",
            {"text": "plain", "spans": [], "extra": 1},
        ),
        "f.jsonl",
    )
    exs = read_examples(p, "jsonl")
    assert spans_text(exs[0]) == [("Red", "color"), ("Nike", "brand")]
    assert exs[1] == Example("plain", [], f"{p}:3")


@pytest.mark.parametrize(
    "line, msg",
    [
        ('{"text": "abc", "spans": [', r"f.jsonl:2: invalid JSON"),
        ("[1, 2]", r"f.jsonl:2: expected a JSON object"),
        ('{"spans": []}', r"f.jsonl:2: missing field 'text'"),
        ('{"text": "abc"}', r"f.jsonl:2: missing field 'spans'"),
        ('{"text": 5, "spans": []}', r"f.jsonl:2: 'text' must be a string"),
        ('{"text": "abc", "spans": [{"start": 0, "label": "x"}]}', r"f.jsonl:2: spans\[0\]: missing field 'end'"),
        ('{"text": "abc", "spans": [{"start": "0", "end": 1, "label": "x"}]}', r"f.jsonl:2: spans\[0\].start must be an integer"),
        ('{"text": "abc", "spans": [{"start": 0, "end": 1, "label": ""}]}', r"f.jsonl:2: spans\[0\].label"),
        ('{"text": "abc", "spans": [{"start": 0, "end": 4, "label": "x"}]}', r"f.jsonl:2: spans\[0\]: offsets start=0 end=4"),
        ('{"text": "abc", "spans": [{"start": 2, "end": 2, "label": "x"}]}', r"f.jsonl:2: spans\[0\]: offsets"),
        ('{"text": "abc", "spans": [{"start": -1, "end": 2, "label": "x"}]}', r"f.jsonl:2: spans\[0\]: offsets"),
        (
            '{"text": "abcd", "spans": [{"start": 0, "end": 2, "label": "x"}, {"start": 1, "end": 3, "label": "y"}]}',
            r"f.jsonl:2: spans overlap: x \[0, 2\) and y \[1, 3\)",
        ),
    ],
)
def test_jsonl_bad(tmp_path, line, msg):
    p = write(tmp_path, jl({"text": "ok", "spans": []}, line), "f.jsonl")
    with pytest.raises(UserError, match=msg):
        read_examples(p, "jsonl")


# ------------------------------------------------------------------ attribute-value


def av(title, targets):
    return {"input": title, "category": "C", "target_scores": {a: {v: 1} for a, v in targets}}


def test_attribute_value_matching(tmp_path, caplog):
    p = write(
        tmp_path,
        jl(
            av("Ellie Shoes Women's 8400, red patent, 14 M US", [("Brand", "Ellie Shoes"), ("Color", "Red Patent"), ("Material", "n/a"), ("Size", "14 M US"), ("Style", "Sandal")]),
            av("Blue 4 pack 4 blue", [("Count", "4"), ("Color", "blue")]),
            av("Mixed Color Metal Spoon Lure", [("Item", "Metal Spoon Lure"), ("Material", "Metal"), ("Name", "Mixed")]),
        ),
        "f.jsonl",
    )
    with caplog.at_level(logging.INFO, logger="peft_tags.data"):
        exs, stats = read_examples_with_stats(p, "attribute-value")
    assert spans_text(exs[0]) == [("Ellie Shoes", "Brand"), ("red patent", "Color"), ("14 M US", "Size")]
    # exact match preferred over an earlier case-insensitive one; first whole token occurrence
    assert exs[1].spans == [Span(5, 6, "Count"), Span(14, 18, "Color")]
    # overlapping values: the longer is kept, the shorter dropped and counted
    assert spans_text(exs[2]) == [("Mixed", "Name"), ("Metal Spoon Lure", "Item")]
    assert stats.negatives == 1
    assert stats.values == 9
    assert stats.found_exact == 6
    assert stats.found_case_insensitive == 1
    assert stats.not_found == 1
    assert stats.overlap_dropped == 1
    assert stats.as_dict()["spans"] == 7
    assert any("1 not found" in r.getMessage() and "1 dropped as overlapping" in r.getMessage() for r in caplog.records)


def test_attribute_value_same_value_twice_uses_next_occurrence(tmp_path):
    p = write(tmp_path, jl(av("FTK lure by FTK", [("Brand", "FTK"), ("Model", "FTK")])), "f.jsonl")
    (ex,) = read_examples(p, "attribute-value")
    assert ex.spans == [Span(0, 3, "Brand"), Span(12, 15, "Model")]


def test_attribute_value_bad(tmp_path):
    p = write(tmp_path, jl(av("x", []), {"input": "x", "target_scores": {"A": "v"}}), "f.jsonl")
    with pytest.raises(UserError, match=r"f.jsonl:2: target_scores\['A'\] must be an object"):
        read_examples(p, "attribute-value")
    p = write(tmp_path, jl({"title": "x", "target_scores": {}}), "f.jsonl")
    with pytest.raises(UserError, match=r"f.jsonl:1: missing field 'input'"):
        read_examples(p, "attribute-value")


# ------------------------------------------------------------------ normalisation


def test_normalize_text_keeps_length():
    s = "ＡＢＣ１２３　ｘ！ＩİẞΣ"
    out = normalize_text(s, True, True)
    assert len(out) == len(s)
    assert out[:9] == "abc123 x!"
    assert normalize_text(s, False, False) == s
    assert normalize_text("ＡＢ", True, False) == "AB"


def test_normalisation_keeps_offsets(tmp_path):
    t = [("华", "B-37"), ("为", "I-37"), ("Ｐ", "B-38"), ("３", "I-38"), ("０", "I-38"), ("　", "O"), ("İ", "B-9")]
    p = write(tmp_path, conll(t))
    (ex,) = read_examples(p, "conll", lowercase=True)
    assert ex.text == "华为p30 İ"  # 'İ'.lower() is two characters: kept as is
    assert spans_text(ex) == [("华为", "37"), ("p30", "38"), ("İ", "9")]
    (raw,) = read_examples(p, "conll", fullwidth_to_halfwidth=False)
    assert spans_text(raw)[1] == ("Ｐ３０", "38")


# ------------------------------------------------------------------ paths


def test_resolve_data_path(tmp_path, monkeypatch):
    (tmp_path / "set").mkdir()
    f = tmp_path / "set" / "train.txt"
    f.write_text("a O\n")
    assert resolve_data_path("set/train.txt", tmp_path) == f.resolve()
    assert resolve_data_path(str(f), None) == f
    monkeypatch.setenv("PEFT_TAGS_DATA", str(tmp_path))
    assert resolve_data_path("set/train.txt", None) == f.resolve()
    with pytest.raises(UserError, match=r"data.train: no such file: set/dev.txt under data root .*PEFT_TAGS_DATA"):
        resolve_data_path("set/dev.txt", None, key="data.train")
    with pytest.raises(UserError, match=rf"no such file: set/train.txt under data root {tmp_path / 'nowhere'}"):
        resolve_data_path("set/train.txt", tmp_path / "nowhere")
    with pytest.raises(UserError, match="no such file"):
        resolve_data_path(str(tmp_path / "missing.txt"), None)
    monkeypatch.delenv("PEFT_TAGS_DATA")
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "t.txt").write_text("x")
    monkeypatch.chdir(work)
    assert resolve_data_path("t.txt", None) == (tmp_path / "shared" / "data" / "t.txt").resolve()
    with pytest.raises(UserError, match=r"default \.\./shared/data"):
        resolve_data_path("u.txt", None)


# ------------------------------------------------------------------ real data

needs_data = pytest.mark.skipif(not (DATA / "jd-ner").is_dir(), reason=f"no data at {DATA}")


@needs_data
@pytest.mark.parametrize(
    "split, titles, chars, spans",
    [("train", 3314, 185426, 54682), ("dev", 338, 18808, 5723), ("test", 449, 25195, 7421)],
)
def test_real_jd_ner_counts(split, titles, chars, spans):
    exs, stats = read_examples_with_stats(resolve_data_path(f"jd-ner/{split}.txt", DATA), "conll")
    assert (stats.examples, stats.characters, stats.spans) == (titles, chars, spans)
    assert stats.repaired_tags == 0
    assert max(len(e.text) for e in exs) <= 100
    assert any(" " in e.text for e in exs)


@needs_data
def test_real_attribute_value_sets():
    for name, train, test in (("oa-mine", 1452, 491), ("ae-110k", 1568, 524)):
        for split, n in (("train", train), ("test", test)):
            exs, stats = read_examples_with_stats(resolve_data_path(f"{name}/{split}.jsonl", DATA), "attribute-value")
            assert stats.examples == n
            assert stats.not_found == 0
    assert stats.negatives > 0  # ae-110k has n/a negatives
