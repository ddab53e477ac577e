"""The ``tags`` format: a title and its tags per JSON line, for the multi-label task."""
from __future__ import annotations

from ..errors import UserError
from . import ReadStats, TagExample, check_title, json_objects, register_format, string_field


def read_tags(path: str, lines: list[str], stats: ReadStats, max_examples, strict: bool) -> list[TagExample]:
    """``{"text": str, "tags": [str, ...]}`` per line; a tag listed twice counts once."""
    examples: list[TagExample] = []
    for where, obj in json_objects(path, lines):
        text = check_title(string_field(obj, "text", where), where)
        if not text.strip():
            raise UserError(f"{where}: 'text' is empty")
        if "tags" not in obj:
            raise UserError(f"{where}: missing field 'tags' (use [] for a title without tags)")
        raw = obj["tags"]
        if not isinstance(raw, list):
            raise UserError(f"{where}: 'tags' must be a list of strings, got {type(raw).__name__}")
        tags: list[str] = []
        for k, tag in enumerate(raw):
            if not isinstance(tag, str) or not tag.strip():
                raise UserError(f"{where}: tags[{k}] must be a non-empty string, got {tag!r}")
            if tag.strip() not in tags:
                tags.append(tag.strip())
        examples.append(TagExample(text, tags, where))
        if max_examples is not None and len(examples) >= max_examples:
            break
    return examples


register_format("tags", read_tags, "tags")
