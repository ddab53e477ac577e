"""Span formats: CoNLL character BIO/BIOES, JSON lines with offsets, and attribute-value records
(see :mod:`peft_tags.data` for the formats)."""
from __future__ import annotations

import re

from ..errors import UserError
from . import CONTROL, Example, ReadStats, Span, check_title, is_int, json_objects, register_format, string_field

_TAG_PREFIXES = ("B", "I", "E", "S")


def _read_conll(path: str, lines: list[str], stats: ReadStats, max_examples, strict: bool) -> list[Example]:
    examples: list[Example] = []
    chars: list[str] = []
    spans: list[Span] = []
    first = 0
    open_label: str | None = None  # type of the span still open (can be continued)
    open_start = 0

    def close(end: int) -> None:
        nonlocal open_label
        if open_label is not None:
            spans.append(Span(open_start, end, open_label))
            open_label = None

    for lineno, line in enumerate(lines, 1):
        if line == "":
            if chars:
                close(len(chars))
                examples.append(Example("".join(chars), spans, f"{path}:{first}"))
                chars, spans = [], []
                if max_examples is not None and len(examples) >= max_examples:
                    return examples
            continue
        if len(line) < 3 or line[1] != " ":
            raise UserError(
                f"{path}:{lineno}: expected '<char> <tag>' (one character, one space, the tag), "
                f"got {line!r}"
            )
        if CONTROL.match(line[0]):
            raise UserError(f"{path}:{lineno}: the character is control character U+{ord(line[0]):04X}; "
                            "remove the line")
        if not chars:
            first = lineno
        tag = line[2:].rstrip(" \t")
        i = len(chars)
        chars.append(line[0])
        if tag == "O":
            close(i)
            continue
        prefix, dash, kind = tag.partition("-")
        if not dash or prefix not in _TAG_PREFIXES or not kind:
            raise UserError(
                f"{path}:{lineno}: unknown tag {tag!r}; expected O or B-, I-, E-, S- followed by a type"
            )
        if prefix == "B":
            close(i)
            open_label, open_start = kind, i
        elif prefix == "S":
            close(i)
            spans.append(Span(i, i + 1, kind))
        else:  # I or E: must continue an open span of the same type
            if open_label != kind:
                if strict:
                    was = f"a span of type {open_label}" if open_label is not None else "no open span"
                    raise UserError(
                        f"{path}:{lineno}: tag {tag} does not continue a span of type {kind} "
                        f"(there is {was}); use B-{kind} to start one, or read with strict=False "
                        f"to start a new span there"
                    )
                stats.repaired_tags += 1
                close(i)
                open_label, open_start = kind, i
            if prefix == "E":
                close(i + 1)
    if chars:
        close(len(chars))
        examples.append(Example("".join(chars), spans, f"{path}:{first}"))
    return examples


def _read_jsonl(path: str, lines: list[str], stats: ReadStats, max_examples, strict: bool) -> list[Example]:
    examples: list[Example] = []
    for where, obj in json_objects(path, lines):
        text = check_title(string_field(obj, "text", where), where)
        if "spans" not in obj:
            raise UserError(f"{where}: missing field 'spans' (use [] for a title without spans)")
        raw_spans = obj["spans"]
        if not isinstance(raw_spans, list):
            raise UserError(f"{where}: 'spans' must be a list, got {type(raw_spans).__name__}")
        spans = []
        for k, sp in enumerate(raw_spans):
            f = f"spans[{k}]"
            if not isinstance(sp, dict):
                raise UserError(f"{where}: {f} must be an object, got {type(sp).__name__}")
            for name in ("start", "end", "label"):
                if name not in sp:
                    raise UserError(f"{where}: {f}: missing field '{name}'")
            start, end, label = sp["start"], sp["end"], sp["label"]
            for name, v in (("start", start), ("end", end)):
                if not is_int(v):
                    raise UserError(f"{where}: {f}.{name} must be an integer, got {v!r}")
            if not isinstance(label, str) or not label:
                raise UserError(f"{where}: {f}.label must be a non-empty string, got {label!r}")
            if not 0 <= start < end <= len(text):
                raise UserError(
                    f"{where}: {f}: offsets start={start} end={end} must satisfy "
                    f"0 <= start < end <= {len(text)} (the text length)"
                )
            spans.append(Span(start, end, label))
        spans.sort()
        for a, b in zip(spans, spans[1:]):
            if b.start < a.end:
                raise UserError(
                    f"{where}: spans overlap: {a.label} [{a.start}, {a.end}) and "
                    f"{b.label} [{b.start}, {b.end})"
                )
        examples.append(Example(text, spans, where))
        if max_examples is not None and len(examples) >= max_examples:
            break
    return examples


def _occurrences(text: str, value: str, ignore_case: bool) -> list[tuple[int, int]]:
    """All (possibly overlapping) occurrences of ``value`` in ``text``, whole-token ones first."""
    pattern = re.compile("(?=(" + re.escape(value) + "))", re.IGNORECASE if ignore_case else 0)
    found = [(m.start(1), m.end(1)) for m in pattern.finditer(text)]

    def whole_token(se):
        s, e = se
        return (s == 0 or not text[s - 1].isalnum()) and (e == len(text) or not text[e].isalnum())

    return [se for se in found if whole_token(se)] + [se for se in found if not whole_token(se)]


def _read_attribute_value(path: str, lines: list[str], stats: ReadStats, max_examples, strict: bool) -> list[Example]:
    examples: list[Example] = []
    for where, obj in json_objects(path, lines):
        text = check_title(string_field(obj, "input", where, " (the title)"), where)
        if "target_scores" not in obj:
            raise UserError(f"{where}: missing field 'target_scores'")
        targets = obj["target_scores"]
        if not isinstance(targets, dict):
            raise UserError(f"{where}: 'target_scores' must be an object, got {type(targets).__name__}")
        wanted: list[tuple[str, str]] = []  # (attribute, value)
        for attr, values in targets.items():
            if not isinstance(values, dict):
                raise UserError(
                    f"{where}: target_scores[{attr!r}] must be an object {{value: score}}, "
                    f"got {type(values).__name__}"
                )
            if not attr:
                raise UserError(f"{where}: target_scores has an empty attribute name")
            for value in values:
                if value.strip().lower() == "n/a":
                    stats.negatives += 1
                    continue
                stats.values += 1
                wanted.append((attr, value))
        # longest value first, so that of two values that overlap the longer one keeps its span
        wanted.sort(key=lambda av: -len(av[1]))
        taken = [False] * len(text)
        spans: list[Span] = []
        for attr, value in wanted:
            if not value.strip():
                stats.not_found += 1
                continue
            placed = seen = False
            for ignore_case in (False, True):
                occ = _occurrences(text, value, ignore_case)
                seen = seen or bool(occ)
                for s, e in occ:
                    if not any(taken[s:e]):
                        spans.append(Span(s, e, attr))
                        taken[s:e] = [True] * (e - s)
                        placed = True
                        if ignore_case:
                            stats.found_case_insensitive += 1
                        else:
                            stats.found_exact += 1
                        break
                if placed:
                    break
            if not placed:
                if seen:
                    stats.overlap_dropped += 1
                else:
                    stats.not_found += 1
        examples.append(Example(text, sorted(spans), where))
        if max_examples is not None and len(examples) >= max_examples:
            break
    return examples


register_format("conll", _read_conll, "spans")
register_format("jsonl", _read_jsonl, "spans")
register_format("attribute-value", _read_attribute_value, "spans")
