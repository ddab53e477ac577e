"""Derive a multi-label tag set from span-tagged titles (``peft-tags derive-tags``).

For each title, its tags are the normalised values of its spans of the chosen types, kept if
the value occurs in at least ``min_count`` training titles. The vocabulary comes from the
training split only; every split's ``tags`` are the title's tags in that vocabulary (the task),
and its other tag values stay beside them in ``other_tags`` and are counted per split in
``stats.json``: nothing is silently dropped.

A tag is the value, not the type: on jd-ner, 186 values occur under more than one of the
default types (防摔 as a function and as a style), and a shop wants the tag 防摔 once.

Normalisation: NFKC (full-width ＡＢＣ１２ becomes ABC12), lower case, runs of white space
become one space, ends stripped. The output is deterministic: titles in input order, tags of
a title sorted, the vocabulary sorted by training count (descending) then by value.

    peft-tags derive-tags jd-ner DEST [--types 11,5,7,16,14,8,12] [--min-count 8]

writes ``DEST/{train,dev,test}.jsonl`` (``{"text": ..., "tags": [...], "other_tags": [...]}``, the
``tags`` data format), ``DEST/vocab.json`` and ``DEST/stats.json``.
"""
from __future__ import annotations

import json
import os
import unicodedata
from collections import Counter
from pathlib import Path

from . import owned
from .data import read_examples, resolve_data_path
from .errors import UserError

# jd-ner types (our reading, see the data README): function, use/scenario, place of use,
# colour, style, target user, material
DEFAULT_TYPES = ("11", "5", "7", "16", "14", "8", "12")
DEFAULT_MIN_COUNT = 8
SPLITS = ("train", "dev", "test")


def normalize_tag(value: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", value).lower().split())


def title_tags(example, types: set[str]) -> list[str]:
    """The distinct normalised values of ``example``'s spans whose type is in ``types``."""
    return sorted({normalize_tag(example.text[s.start:s.end]) for s in example.spans if s.label in types} - {""})


def derive_tags(source: str, dest: str | Path, *, types=DEFAULT_TYPES, min_count: int = DEFAULT_MIN_COUNT,
                fmt: str = "conll", data_root: str | None = None, overwrite: bool = False) -> dict:
    """Build the tag set from ``source``'s ``train/dev/test.txt`` (a folder under the data root,
    or a path) into ``dest``; returns the statistics also written to ``stats.json``."""
    types = [str(t).strip() for t in types if str(t).strip()]
    if not types:
        raise UserError("--types: give at least one span type")
    if min_count < 1:
        raise UserError(f"--min-count: must be at least 1, got {min_count}")
    dest = Path(dest)
    if os.path.lexists(dest) and not overwrite:
        raise UserError(f"{dest}: already exists; pass --overwrite to replace it")
    paths = {}
    for split in SPLITS:
        rel = Path(source) / f"{split}{'.txt' if fmt == 'conll' else '.jsonl'}"
        if split == "train" or (Path(rel).is_absolute() and rel.is_file()) or _exists(rel, data_root):
            paths[split] = resolve_data_path(rel, data_root, key=f"{source} ({split})")
    sources = {p.resolve().parent for p in paths.values()}
    if any(dest.resolve() == s or dest.resolve() in s.parents for s in sources):
        raise UserError(f"{dest}: is (or holds) the source folder {next(iter(sources))}; write the tag set elsewhere")
    owned.check_replaceable(dest, str(dest), [data_root] if data_root else [])
    examples = {split: read_examples(p, fmt, fullwidth_to_halfwidth=False) for split, p in paths.items()}
    known = {s.label for e in examples["train"] for s in e.spans}
    missing = [t for t in types if t not in known]
    if missing:
        raise UserError(f"--types: no span of type {', '.join(repr(t) for t in missing)} in {paths['train']} "
                        f"(types there: {', '.join(sorted(known, key=lambda t: (len(t), t)))})")
    chosen = set(types)
    tags = {split: [title_tags(e, chosen) for e in exs] for split, exs in examples.items()}
    counts = Counter(t for ts in tags["train"] for t in ts)
    vocab = sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
    if not vocab:
        raise UserError(f"--min-count: no tag occurs in {min_count} or more training titles; lower it")
    in_vocab = set(vocab)
    value_types: dict[str, set[str]] = {t: set() for t in vocab}
    for e in examples["train"]:
        for s in e.spans:
            v = normalize_tag(e.text[s.start:s.end])
            if s.label in chosen and v in in_vocab:
                value_types[v].add(s.label)

    stats = {"source": str(source), "types": types, "min_count": min_count, "vocabulary": len(vocab), "splits": {}}
    with owned.Staged(dest, "derive-tags", replace=overwrite) as tmp:
        for split, exs in examples.items():
            kept_total = oov_total = no_tag = 0
            oov = Counter()
            with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as fh:
                for e, ts in zip(exs, tags[split]):
                    kept = [t for t in ts if t in in_vocab]
                    for t in ts:
                        if t not in in_vocab:
                            oov[t] += 1
                    kept_total += len(kept)
                    oov_total += len(ts) - len(kept)
                    no_tag += not kept
                    other = [t for t in ts if t not in in_vocab]
                    fh.write(json.dumps({"text": e.text, "tags": kept, "other_tags": other}, ensure_ascii=False) + "\n")
            stats["splits"][split] = {
                "titles": len(exs), "tags": kept_total, "tags_per_title": round(kept_total / len(exs), 3),
                "titles_without_tags": no_tag, "out_of_vocabulary": oov_total,
                "out_of_vocabulary_pct": round(100.0 * oov_total / max(1, oov_total + kept_total), 2),
                "out_of_vocabulary_distinct": len(oov),
                "out_of_vocabulary_top": [[t, n] for t, n in sorted(oov.items(), key=lambda x: (-x[1], x[0]))[:20]],
            }
        (tmp / "vocab.json").write_text(json.dumps(
            [{"tag": t, "train_titles": counts[t], "types": sorted(value_types[t], key=lambda x: (len(x), x))} for t in vocab],
            ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        (tmp / "stats.json").write_text(json.dumps(stats, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return stats


def _exists(rel: Path, data_root: str | None) -> bool:
    try:
        resolve_data_path(rel, data_root)
        return True
    except UserError:
        return False
