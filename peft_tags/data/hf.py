"""Formats read through Hugging Face ``datasets``: ``hf-spans`` (character spans) and ``hf-tags``
(a title's tags), from a local CSV, JSON or Parquet file or from a hub dataset.

Sources
    A local file goes to ``load_dataset(<builder>, data_files=..., split="train", streaming=True)``,
    the builder taken from the extension (:data:`BUILDERS`): rows are read as they stream, so
    nothing is cached and ``max_*_examples`` stops the read early. A :class:`HubSplit`
    (``data.hub`` in a recipe) is ``load_dataset(hub, config, split=..., revision=...)``, the call
    any ``datasets`` user makes: downloads land in the Hugging Face cache, and offline
    (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``) a cached dataset is read from there. A hub that
    cannot be reached is one line, not a hang.
Columns
    ``columns`` (``data.columns``) maps our names to the source's columns; a name not given is its
    own column. ``hf-tags``: ``text`` (a string) and ``tags`` (a list of strings). ``hf-spans``:
    ``text`` and either ``spans`` (a list of objects with fields ``start``, ``end`` (character
    offsets, end exclusive) and ``label``; the field names map too) or ``bio`` (one BIO or BIOES
    tag per character; then ``text`` may also be a list of one-character strings). Tags and BIO
    tags stored as class ids (a ``ClassLabel`` feature) read as their names. A CSV cell holds a
    list as JSON (``["a", "b"]``).
Mistakes
    One line ``<source>: row N, column 'c': what``; rows count from 1 (a CSV header and blank JSON
    lines are not rows); a hub split is shown as ``owner/name[split]``. The checks are those of
    the ``jsonl`` and ``tags`` formats: offsets within the title with end > start, no overlaps,
    no control characters, non-empty tags (listed twice counts once).
"""
from __future__ import annotations

import glob
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, nearest, one_line
from . import Example, ReadStats, Span, TagExample, check_title, is_int, register_format

SPANS, TAGS = "hf-spans", "hf-tags"
#: format -> {our name: what its column holds}; a name not mapped by ``columns`` is its own column
COLUMNS = {
    SPANS: {"text": "the title", "spans": "a list of {start, end, label} objects",
            "bio": "a BIO or BIOES tag per character (instead of spans)", "start": "a span's start field",
            "end": "a span's end field", "label": "a span's label field"},
    TAGS: {"text": "the title", "tags": "a list of tags"},
}
COLUMNS_HELD = {name: held for fmt in COLUMNS.values() for name, held in fmt.items()}
#: extension -> (datasets builder, its options). CSV: every cell we read stays a string (no
#: "NA" -> null, no "2024" -> int); the list cells are parsed as JSON here.
BUILDERS = {
    ".csv": ("csv", {}), ".tsv": ("csv", {"sep": "\t"}),
    ".json": ("json", {}), ".jsonl": ("json", {}), ".ndjson": ("json", {}),
    ".parquet": ("parquet", {}), ".pq": ("parquet", {}),
}
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass(frozen=True)
class HubSplit:
    """One split of a Hugging Face hub dataset; ``key`` names the recipe setting of the split."""

    hub: str
    split: str
    config: str | None = None
    revision: str | None = None
    key: str = "data.train"

    def __str__(self) -> str:
        return f"{self.hub}[{self.split}]"


def column_problems(fmt: str, columns) -> list[tuple[str, str]]:
    """(key under ``data``, problem) for each thing ``fmt`` cannot use in ``columns``; [] if fine."""
    if columns is None:
        return []
    if fmt not in COLUMNS:
        return [("columns", f"format '{fmt}' has no columns to map; only {' and '.join(COLUMNS)} read columns")]
    if not isinstance(columns, dict):
        return [("columns", f"expected a mapping of our names to your columns, e.g. {{text: title}}; "
                            f"got {columns!r}")]
    problems = []
    for name, column in columns.items():
        if name not in COLUMNS[fmt]:
            hint = nearest(str(name), COLUMNS[fmt])
            problems.append((f"columns.{name}", f"unknown name '{name}'" + (f" (did you mean '{hint}'?)" if hint else "")
                             + f"; {fmt} maps {', '.join(COLUMNS[fmt])}"))
        elif not isinstance(column, str) or not column.strip():
            problems.append((f"columns.{name}", f"expected a column name, got {column!r}"))
    if "spans" in columns and "bio" in columns:
        problems.append(("columns", "give columns.spans (span objects) or columns.bio (a tag per character), not both"))
    return problems


# ---------------------------------------------------------------------------------------------
# opening a source


def _builder(path: str) -> tuple[str, dict]:
    found = BUILDERS.get(Path(path).suffix.lower())
    if found is None:
        raise UserError(f"{path}: cannot tell the file type from the extension; name it "
                        f"{', '.join(BUILDERS)} (CSV, JSON or Parquet)")
    return found


def _datasets_errors() -> tuple:
    """What ``datasets`` raises for a source it cannot read (bad file, no hub, no such split)."""
    import pyarrow
    from datasets.exceptions import DatasetsError

    return OSError, ValueError, DatasetsError, pyarrow.ArrowException


def _load(source, wanted: list[str], cache: str):
    """The split as a ``datasets`` (iterable) dataset; a UserError line when it cannot be loaded.
    ``cache``: the builder's cache folder for a local file (streaming writes only a lock there)."""
    from datasets import load_dataset

    errors = _datasets_errors()
    if isinstance(source, HubSplit):
        try:
            return load_dataset(source.hub, source.config, split=source.split, revision=source.revision)
        except ConnectionError as e:
            offline = [v for v in OFFLINE_ENV if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")]
            why = (f"offline mode is on ({' and '.join(offline)}) and the local cache does not hold it" if offline
                   else "check the network, or load it once where the hub is reachable (it is cached)")
            raise UserError(f"data.hub: cannot load '{source.hub}' ({source.key}: split {source.split}) from the "
                            f"Hugging Face hub: {one_line(e)}; {why}") from None
        except errors as e:
            raise UserError(f"data.hub: cannot load '{source.hub}' ({source.key}: split {source.split}): "
                            f"{one_line(e)}") from None
    builder, options = _builder(source)
    if not Path(source).is_file():
        raise UserError(f"{source}: no such file")
    if builder == "csv":  # our columns as text: pandas would turn "NA" into null and "2024" into a number
        options = {**options, "keep_default_na": False, "na_filter": False, "converters": dict.fromkeys(wanted, str)}
    try:
        # data_files are glob patterns: a file named "a[1].csv" is itself, not the files a1.csv
        return load_dataset(builder, data_files={"train": glob.escape(source)}, split="train", streaming=True,
                            cache_dir=cache, **options)
    except errors as e:
        raise UserError(f"{source}: cannot read it as {builder.upper()}: {one_line(e)}") from None


def _rows(ds, where: str, builder_of: str):
    """``(row number, row)`` from 1; an error of ``datasets`` mid-way is a UserError line."""
    errors = _datasets_errors()
    it = iter(ds)
    n = 0
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except errors as e:
            raise UserError(f"{where}: cannot read it{builder_of} after row {n}: {one_line(e)}") from None
        n += 1
        yield n, row


def _class_names(ds, column: str) -> list[str] | None:
    """The names of a column of class ids (a list of ``ClassLabel``), else None."""
    from datasets import ClassLabel

    features = getattr(ds, "features", None) or {}
    inner = getattr(features.get(column), "feature", None)
    return list(inner.names) if isinstance(inner, ClassLabel) else None


class _Columns:
    """The source's columns for our names, checked against the first row's."""

    def __init__(self, fmt: str, columns: dict | None, where: str):
        problems = column_problems(fmt, columns)
        if problems:
            raise UserError(f"data.{problems[0][0]}: {problems[0][1]}")
        self.given = dict(columns or {})
        self.where = where
        self.names = {name: self.given.get(name, name) for name in COLUMNS[fmt]}

    def wanted(self, *names: str) -> list[str]:
        return [self.names[n] for n in names]

    def check(self, row: dict, *names: str) -> None:
        have = list(row)
        for name in names:
            column = self.names[name]
            if column in have:
                continue
            how = (f"data.columns.{name}" if name in self.given
                   else f"set data.columns.{name} to the column that holds {COLUMNS_HELD[name]}")
            hint = nearest(column, have)
            raise UserError(f"{self.where}: no column '{column}' ({how}); it has columns {', '.join(have)}"
                            + (f" (did you mean '{hint}'?)" if hint else ""))


# ---------------------------------------------------------------------------------------------
# cells


def _list_cell(value, at: str, csv: bool, names: list[str] | None = None) -> list:
    """A list cell (JSON text in a CSV); class ids become their names."""
    if csv and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise UserError(f"{at}: not a JSON list ({e.msg} at character {e.pos}); a CSV cell holds a list as "
                            f'JSON, e.g. ["a", "b"]') from None
    if value is None:
        raise UserError(f"{at}: empty cell; use [] for none")
    if not isinstance(value, list):
        raise UserError(f"{at}: expected a list, got {type(value).__name__} {value!r}"[:300])
    if names is not None:
        value = [names[v] if is_int(v) and 0 <= v < len(names) else v for v in value]
    return value


def _text(row: dict, column: str, at: str, chars_ok: bool = False) -> str:
    value = row[column]
    if chars_ok and isinstance(value, list) and all(isinstance(c, str) and len(c) == 1 for c in value):
        value = "".join(value)  # a title as a list of its characters (BIO sets on the hub)
    if not isinstance(value, str):
        got = "an empty cell" if value is None else f"{type(value).__name__} {value!r}"
        raise UserError(f"{at}: the title must be a string, got {got}"[:300])
    return check_title(value, at)


def _span_objects(raw: list, text: str, at: str, fields: dict) -> list[Span]:
    start_f, end_f, label_f = fields["start"], fields["end"], fields["label"]
    spans = []
    for k, sp in enumerate(raw):
        if not isinstance(sp, dict):
            raise UserError(f"{at}: span {k} must be an object with {start_f}, {end_f}, {label_f}; "
                            f"got {type(sp).__name__}")
        for name, f in (("start", start_f), ("end", end_f), ("label", label_f)):
            if sp.get(f) is None:
                has = ", ".join(key for key, v in sp.items() if v is not None) or "none"
                raise UserError(f"{at}: span {k}: missing field '{f}' (its fields: {has}; "
                                f"data.columns.{name} names the field of the {name})")
        start, end, label = sp[start_f], sp[end_f], sp[label_f]
        for f, v in ((start_f, start), (end_f, end)):
            if not is_int(v):
                raise UserError(f"{at}: span {k}: '{f}' must be an integer, got {v!r}")
        if not isinstance(label, str) or not label:
            raise UserError(f"{at}: span {k}: '{label_f}' must be a non-empty string, got {label!r}")
        if not 0 <= start < end <= len(text):
            raise UserError(f"{at}: span {k}: offsets start={start} end={end} must satisfy "
                            f"0 <= start < end <= {len(text)} (the text length)")
        spans.append(Span(start, end, label))
    return sorted(spans)


def _bio_spans(tags: list, text: str, at: str, strict: bool, stats: ReadStats) -> list[Span]:
    """Spans of one BIO/BIOES tag per character, read as the ``conll`` format reads its tags."""
    if len(tags) != len(text):
        raise UserError(f"{at}: {len(tags)} tags for a title of {len(text)} characters; give one tag per character")
    spans: list[Span] = []
    open_label, open_start = None, 0

    def close(end: int) -> None:
        nonlocal open_label
        if open_label is not None:
            spans.append(Span(open_start, end, open_label))
            open_label = None

    for i, tag in enumerate(tags):
        if tag == "O":
            close(i)
            continue
        prefix, dash, kind = tag.partition("-") if isinstance(tag, str) else ("", "", "")
        if not dash or prefix not in ("B", "I", "E", "S") or not kind:
            raise UserError(f"{at}: tag {i}: unknown tag {tag!r}; expected O or B-, I-, E-, S- followed by a type")
        if prefix in ("I", "E") and open_label != kind:
            if strict:
                was = f"a span of type {open_label}" if open_label is not None else "no open span"
                raise UserError(f"{at}: tag {i}: {tag} does not continue a span of type {kind} (there is {was}); "
                                f"use B-{kind} to start one")
            stats.repaired_tags += 1  # strict=False: it starts a new span, as in conll
            prefix = "B" if prefix == "I" else "S"
        if prefix in ("B", "S"):
            close(i)
            open_label, open_start = kind, i
        if prefix in ("E", "S"):
            close(i + 1)
    close(len(tags))
    return spans


def _tag_list(raw: list, at: str) -> list[str]:
    tags: list[str] = []
    for k, tag in enumerate(raw):
        if not isinstance(tag, str) or not tag.strip():
            raise UserError(f"{at}: tag {k} must be a non-empty string, got {tag!r}")
        if tag.strip() not in tags:
            tags.append(tag.strip())
    return tags


# ---------------------------------------------------------------------------------------------
# readers


@contextmanager
def _open(source, fmt: str, columns: dict | None, *names: str):
    """``(where, columns, dataset, csv, rows)`` of ``source``, while its temporary cache lives."""
    where = str(source)
    cols = _Columns(fmt, columns, where)
    builder = None if isinstance(source, HubSplit) else _builder(source)[0]
    with tempfile.TemporaryDirectory(prefix="peft-tags-datasets-") as cache:
        ds = _load(source, cols.wanted(*names), cache)
        yield where, cols, ds, builder == "csv", _rows(ds, where, f" as {builder.upper()}" if builder else "")


def _read(source, fmt: str, columns: dict | None, names: tuple[str, str], example, max_examples,
          empty_titles: bool = True) -> list:
    """``example(text, cell, row, at)`` for each row: ``cell`` is the list column's value, ``row``
    names the row (the example's source), ``at`` the row and list column (for errors)."""
    examples = []
    with _open(source, fmt, columns, *names) as (where, cols, ds, csv, rows):
        text_col, list_col = cols.wanted(*names)
        class_names = _class_names(ds, list_col)
        for n, row in rows:
            if n == 1:
                cols.check(row, *names)
            at = f"{where}: row {n}"
            text = _text(row, text_col, f"{at}, column '{text_col}'", chars_ok=names[1] == "bio")
            if not empty_titles and not text.strip():
                raise UserError(f"{at}, column '{text_col}': the title is empty")
            cell = _list_cell(row[list_col], f"{at}, column '{list_col}'", csv, class_names)
            examples.append(example(text, cell, at, f"{at}, column '{list_col}'"))
            if max_examples is not None and len(examples) >= max_examples:
                break
    return examples


def read_spans(source, stats: ReadStats, max_examples, strict: bool, columns: dict | None = None) -> list[Example]:
    """The ``hf-spans`` examples of ``source`` (a path or a :class:`HubSplit`)."""
    fields = {name: (columns or {}).get(name, name) for name in ("start", "end", "label")}
    bio = "bio" in (columns or {})

    def example(text: str, cell: list, row: str, at: str) -> Example:
        if bio:
            return Example(text, _bio_spans(cell, text, at, strict, stats), row)
        spans = _span_objects(cell, text, at, fields)
        for a, b in zip(spans, spans[1:]):
            if b.start < a.end:
                raise UserError(f"{at}: spans overlap: {a.label} [{a.start}, {a.end}) and {b.label} [{b.start}, {b.end})")
        return Example(text, spans, row)

    return _read(source, SPANS, columns, ("text", "bio" if bio else "spans"), example, max_examples)


def read_tags(source, stats: ReadStats, max_examples, strict: bool, columns: dict | None = None) -> list[TagExample]:
    """The ``hf-tags`` examples of ``source`` (a path or a :class:`HubSplit`)."""

    def example(text: str, cell: list, row: str, at: str) -> TagExample:
        return TagExample(text, _tag_list(cell, at), row)

    return _read(source, TAGS, columns, ("text", "tags"), example, max_examples, empty_titles=False)


register_format(SPANS, read_spans, "spans", lines=False)
register_format(TAGS, read_tags, "tags", lines=False)
