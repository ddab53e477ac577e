"""Reading tagged product titles: character spans from CoNLL, JSON lines or attribute-value files.

Every reader returns :class:`Example` objects whose spans are character offsets into
``Example.text`` (end exclusive). Mistakes in a file raise :class:`~peft_tags.errors.UserError`
with one line ``path:lineno: what is wrong``.

Formats (``fmt``):

``conll``
    One character per line, ``<char><space><tag>``, a blank line between titles. The character
    may itself be a space (``"  O"``); the first character of the line is the character, the
    second must be a space, the rest is the tag. Tags ``O``, ``B-x``, ``I-x`` and the BIOES
    forms ``S-x``, ``E-x`` (recognised per tag, so BIO and BIOES files both read).
    An ``I-x``/``E-x`` that does not continue a span of type ``x`` is an error; with
    ``strict=False`` it starts a new span instead and is counted in the stats
    (``repaired_tags``).
``jsonl``
    ``{"text": str, "spans": [{"start": int, "end": int, "label": str}, ...]}`` per line.
    Overlapping spans are an error.
``tags``
    ``{"text": str, "tags": [str, ...]}`` per line, for the multi-label task: a title and its
    tags (``[]`` for none). Tags are stripped of surrounding white space; a tag listed twice
    counts once; an empty or non-string tag is an error naming the line.
``attribute-value``
    The OA-Mine / AE-110K form ``{"input": title, "category": ..., "target_scores":
    {attribute: {value: 1}}}``. Each value is located in the title (exact match preferred
    over case-insensitive, whole-token over inside-a-word, the first occurrence that does
    not overlap a span already placed); values are placed longest first, so of two values that
    can only overlap the longer one is kept. ``"n/a"`` values are negatives and skipped.
    Values not found and values dropped for overlap are counted, not errors.
``hf-spans``, ``hf-tags``
    Spans and tags read through Hugging Face ``datasets`` from CSV, JSON or Parquet files or a
    hub dataset, with the columns mapped by name (:mod:`peft_tags.data.hf`); mistakes name
    ``source: row N, column 'c'``.

Statistics: :func:`read_examples_with_stats` returns ``(examples, ReadStats)``;
:func:`read_examples` returns only the examples and logs the stats' summary line on the
``peft_tags.data`` logger at INFO.

Control characters (Unicode category Cc: NUL and the like) in a title are an error naming
``path:line``; tab is allowed, and so is a newline in the JSON formats.

Normalisation (:func:`normalize_text`) is applied to the text after the spans are built and is
length-preserving, so the offsets stay valid.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError, nearest

log = logging.getLogger("peft_tags.data")

#: data format -> (reader, kind): kind "spans" (Example) or "tags" (TagExample); see register_format
FORMATS: dict[str, tuple] = {}
#: formats whose reader opens the source itself (binary files, hub datasets) instead of taking its lines
SOURCE_FORMATS: set[str] = set()
DATA_ENV = "PEFT_TAGS_DATA"
DEFAULT_DATA_ROOT = "../shared/data"


@dataclass(frozen=True, order=True)
class Span:
    """A labelled character span of a text: ``text[start:end]``."""

    start: int
    end: int
    label: str


@dataclass
class Example:
    """One title and its spans; ``source`` is ``"path:line"`` of the example's first line."""

    text: str
    spans: list[Span]
    source: str


@dataclass
class TagExample:
    """One title and its tags (the multi-label task); ``source`` is ``"path:line"``."""

    text: str
    tags: list[str]
    source: str


def tag_set(examples) -> list[str]:
    """The sorted distinct tags of ``examples`` (:class:`TagExample`)."""
    return sorted({t for ex in examples for t in ex.tags})


@dataclass
class ReadStats:
    """What a read found. Format-specific counters stay 0 for the other formats."""

    path: str
    fmt: str
    examples: int = 0
    spans: int = 0
    characters: int = 0
    labels: int = 0  # distinct span label types
    # conll
    repaired_tags: int = 0  # I-x / E-x that did not continue a span (strict=False only)
    # attribute-value
    values: int = 0  # attribute values other than n/a
    negatives: int = 0  # "n/a" values, skipped
    found_exact: int = 0
    found_case_insensitive: int = 0
    not_found: int = 0  # value is not a substring of the title, in any case
    overlap_dropped: int = 0  # found, but every occurrence overlaps a (longer) value's span

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if FORMATS[self.fmt][1] == "tags":  # spans without offsets: one per tag of a title
            s = f"{self.path}: {self.examples} examples, {self.spans} tags, {self.labels} distinct, {self.characters} characters"
        else:
            s = (
                f"{self.path}: {self.examples} examples, {self.spans} spans, "
                f"{self.labels} labels, {self.characters} characters"
            )
        if self.repaired_tags:
            s += f"; {self.repaired_tags} I-/E- tags that did not continue a span started new spans"
        if self.fmt == "attribute-value":
            pct = 100.0 * self.not_found / self.values if self.values else 0.0
            s += (
                f"; {self.values} values: {self.found_exact} found exactly, "
                f"{self.found_case_insensitive} ignoring case, {self.not_found} not found ({pct:.1f}%), "
                f"{self.overlap_dropped} dropped as overlapping; {self.negatives} n/a skipped"
            )
        return s


# ---------------------------------------------------------------------------------------------
# paths


def resolve_data_path(rel: str | os.PathLike, root: str | os.PathLike | None = None, *, key: str = "data path") -> Path:
    """Find a data file. Absolute paths are used as they are; a relative one is looked up under
    ``root`` if given, else under ``$PEFT_TAGS_DATA``, else under ``../shared/data`` beside the
    current directory. ``key`` (e.g. ``"data.train"``) names the setting in the error message.
    """
    p = Path(os.path.expanduser(str(rel)))
    if p.is_absolute():
        if p.is_dir():
            raise UserError(f"{key}: {p} is a directory, expected a file")
        if not p.is_file():
            raise UserError(f"{key}: no such file: {p}")
        return p
    if root is not None:
        base, how = Path(os.path.expanduser(str(root))), "the data root given"
    elif os.environ.get(DATA_ENV):
        base, how = Path(os.path.expanduser(os.environ[DATA_ENV])), f"${DATA_ENV}"
    else:
        base, how = Path.cwd() / DEFAULT_DATA_ROOT, f"the default {DEFAULT_DATA_ROOT} (set ${DATA_ENV} to change it)"
    full = (base / p).resolve()
    if full.is_dir():
        raise UserError(f"{key}: {full} is a directory, expected a file")
    if not full.is_file():
        where = "which does not exist" if not base.is_dir() else "which exists"
        raise UserError(
            f"{key}: no such file: {rel} under data root {base.resolve()} ({how}, {where})"
        )
    return full


# ---------------------------------------------------------------------------------------------
# normalisation

#: Unicode category Cc but tab and newline
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def check_title(text: str, where: str) -> str:
    """``text``, or a UserError naming ``where`` when it holds a control character."""
    m = CONTROL.search(text)
    if m:
        raise UserError(f"{where}: the title holds control character U+{ord(m.group()):04X} at character "
                        f"{m.start() + 1}; remove it")
    return text


def normalize_text(text: str, fullwidth_to_halfwidth: bool = True, lowercase: bool = False) -> str:
    """Length-preserving normalisation: character i of the result comes from character i of
    ``text``. Full-width forms U+FF01..U+FF5E become ASCII, U+3000 a space; ``lowercase``
    lowers only characters whose lower case is one character."""
    if not fullwidth_to_halfwidth and not lowercase:
        return text
    out = []
    for ch in text:
        if fullwidth_to_halfwidth:
            o = ord(ch)
            if 0xFF01 <= o <= 0xFF5E:
                ch = chr(o - 0xFEE0)
            elif o == 0x3000:
                ch = " "
        if lowercase:
            low = ch.lower()
            if len(low) == 1:
                ch = low
        out.append(ch)
    return "".join(out)


def label_set(examples) -> list[str]:
    """The sorted span label types of ``examples``."""
    return sorted({s.label for ex in examples for s in ex.spans})


# ---------------------------------------------------------------------------------------------
# reading


def read_examples(
    path,
    fmt: str,
    *,
    fullwidth_to_halfwidth: bool = True,
    lowercase: bool = False,
    max_examples: int | None = None,
    strict: bool = True,
    columns: dict | None = None,
) -> list[Example]:
    """Read ``path`` in format ``fmt`` (see the module doc); logs a summary at INFO. ``columns``:
    the column mapping of the formats that read columns (``data.columns``)."""
    examples, _ = read_examples_with_stats(
        path,
        fmt,
        fullwidth_to_halfwidth=fullwidth_to_halfwidth,
        lowercase=lowercase,
        max_examples=max_examples,
        strict=strict,
        columns=columns,
    )
    return examples


def read_examples_with_stats(
    path,
    fmt: str,
    *,
    fullwidth_to_halfwidth: bool = True,
    lowercase: bool = False,
    max_examples: int | None = None,
    strict: bool = True,
    columns: dict | None = None,
) -> tuple[list[Example], ReadStats]:
    """Like :func:`read_examples`, and also return the :class:`ReadStats` of the read."""
    if fmt not in FORMATS:
        hint = nearest(fmt, FORMATS)
        raise UserError(
            f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}"
            + (f" (did you mean {hint!r}?)" if hint else "")
        )
    if max_examples is not None and max_examples < 1:
        raise UserError(f"max_examples must be at least 1, got {max_examples}")
    read, kind = FORMATS[fmt]
    stats = ReadStats(path=str(path), fmt=fmt)
    if fmt in SOURCE_FORMATS:  # a file or hub split that the reader opens itself
        examples = read(path if isinstance(path, hf.HubSplit) else str(path), stats, max_examples, strict, columns)
        if not examples:
            raise UserError(f"{path}: no examples (it has no rows)")
    else:
        if columns is not None:
            raise UserError(f"data.columns: format '{fmt}' has no columns to map; only "
                            f"{' and '.join(sorted(SOURCE_FORMATS))} read columns")
        if isinstance(path, hf.HubSplit):
            raise UserError(f"data.hub: format '{fmt}' reads files; {' and '.join(sorted(SOURCE_FORMATS))} "
                            "read hub datasets")
        path = str(path)
        examples = read(path, _read_lines(path), stats, max_examples, strict)
        if not examples:
            raise UserError(f"{path}: no examples (the file is empty or has only blank lines)")
    for ex in examples:
        ex.text = normalize_text(ex.text, fullwidth_to_halfwidth, lowercase)
        if kind == "spans":
            ex.spans.sort()
    stats.examples = len(examples)
    stats.characters = sum(len(ex.text) for ex in examples)
    if kind == "tags":  # "spans" and "labels" count tags and distinct tags
        stats.spans = sum(len(ex.tags) for ex in examples)
        stats.labels = len(tag_set(examples))
    else:
        stats.spans = sum(len(ex.spans) for ex in examples)
        stats.labels = len(label_set(examples))
    log.info("%s", stats.summary())
    return examples, stats


def _read_lines(path: str) -> list[str]:
    """The file's lines without their ``\\n`` / ``\\r\\n``. Only ``\\n`` ends a line: titles
    may hold other characters that ``str.splitlines`` would split on."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1)
        raise UserError(
            f"{path}:{lineno}: not UTF-8: byte 0x{raw[e.start]:02x} at byte {col} of the line "
            f"(offset {e.start} in the file); save the file as UTF-8"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def load_json_line(path: str, lineno: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{lineno}: invalid JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    return obj


def json_objects(path: str, lines: list[str]):
    """``(where, object)`` for each non-blank line, ``where`` being ``path:line``."""
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            yield f"{path}:{lineno}", load_json_line(path, lineno, line)


def string_field(obj: dict, key: str, where: str, what: str = "") -> str:
    if key not in obj:
        raise UserError(f"{where}: missing field '{key}'{what}")
    value = obj[key]
    if not isinstance(value, str):
        raise UserError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
    return value


def register_format(name: str, read, kind: str, *, lines: bool = True) -> None:
    """Make ``name`` a data format: ``read(path, lines, stats, max_examples, strict)`` returns the
    examples of a file (``kind`` "spans": :class:`Example`; "tags": :class:`TagExample`).
    ``lines=False``: ``read(source, stats, max_examples, strict, columns)`` opens the source itself
    (a path, or a :class:`~peft_tags.data.hf.HubSplit`) and maps its columns by ``columns``."""
    FORMATS[name] = (read, kind)
    if not lines:
        SOURCE_FORMATS.add(name)


def read_split(d, split: str) -> list:
    """The examples of one split of a recipe's ``data`` section, as training reads them: a file
    under the data root, or with ``data.hub`` the split of that name of the hub dataset."""
    if d.hub:
        source = hf.HubSplit(d.hub, getattr(d, split), d.hub_config, d.hub_revision, key=f"data.{split}")
    else:
        source = resolve_data_path(getattr(d, split), d.root, key=f"data.{split}")
    cap = getattr(d, f"max_{split}_examples")
    spread = cap is not None and d.subset == "spread"
    examples = read_examples(source, d.format, fullwidth_to_halfwidth=d.fullwidth_to_halfwidth, lowercase=d.lowercase,
                             max_examples=None if spread else cap, columns=d.columns)
    return spread_subset(examples, cap) if spread else examples


def spread_subset(examples: list, n: int) -> list:
    """``n`` of ``examples`` spread evenly over the list, in their order: the i-th kept one is the
    one at ``floor(i * len / n)``. All of them when there are no more than ``n``."""
    if len(examples) <= n:
        return list(examples)
    return [examples[i * len(examples) // n] for i in range(n)]


from . import hf, spans, tags  # noqa: E402,F401  (registration of the formats)
