"""Command-line overrides (``key.sub=value``) and the order and prefix of each problem line."""
from __future__ import annotations

from typing import Sequence

import yaml

from .validate import Problems, show
from .yamlio import yaml_load, yaml_problem


def apply_overrides(raw: dict, overrides: Sequence[str], problems: Problems) -> dict[str, tuple[int, str]]:
    """Set each ``key.sub=value`` in ``raw``; return dotted key -> (index, override text)."""
    applied: dict[str, tuple[int, str]] = {}
    for index, text in enumerate(overrides):
        tag = f"@override{index}"
        key, eq, value_text = text.partition("=")
        parts = key.strip().split(".")
        if not eq or not key.strip() or any(not p.strip() for p in parts):
            problems.add(tag, f"override '{text}': expected key.sub=value, e.g. training.lr=5e-4")
            continue
        parts = [p.strip() for p in parts]
        try:
            value = yaml_load(value_text)
        except yaml.YAMLError as err:
            problems.add(tag, f"override '{text}': the value is not valid YAML ({yaml_problem(err)})")
            continue
        node = raw
        for depth, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                where = ".".join(parts[: depth + 1])
                problems.add(tag, f"override '{text}': '{where}' is {show(node[part])}, not a mapping")
                break
            node = node[part]
        else:
            node[parts[-1]] = value
            applied[".".join(parts)] = (index, text)
    return applied


def problem_lines(problems: Problems, source: str, positions: dict, applied, in_file=frozenset(),
                  files: Sequence[str] = ()) -> list[str]:
    """The lines of a RecipeError: ``<source>: <problem>`` in the order of the file, then the problems of
    the overrides (each names its override), then those of keys the file lacks.

    ``positions``: dotted key -> line of the key, or -> (file, line). ``in_file``: (key, problem) pairs
    that are the file's whatever the overrides set (a mapping gives each its (file, line)). ``files``:
    a recipe and its bases, the recipe first; with a base, a line starts with the file and line where
    its key was written, ``<file>:<line>: <problem>``, the recipe's lines first (overrides and keys
    no file writes keep ``<source>: ``)."""
    chain = list(files) if len(files) > 1 else None
    rows = []
    for order, (key, text) in enumerate(problems.items):
        culprit = None
        if key.startswith("@override"):
            culprit = (int(key[len("@override"):]), None)
        elif (key, text) not in in_file:  # a key given twice is the file's problem, whatever the overrides set
            for okey, (index, otext) in applied.items():
                if key == okey or key.startswith(okey + ".") or okey.startswith(key + "."):
                    if culprit is None or index > culprit[0]:
                        culprit = (index, otext)
        if culprit is not None:
            if culprit[1] is not None:
                text = f"override '{culprit[1]}': {text}"
            rows.append(((1, culprit[0], 0), order, f"{source}: {text}"))
            continue
        at = in_file.get((key, text)) if isinstance(in_file, dict) else None
        probe = key
        while probe and at is None:
            at = positions.get(probe)
            probe = probe.rpartition(".")[0]
        if at is None:
            rows.append(((2, 0, key), order, f"{source}: {text}"))
            continue
        file, line = at if isinstance(at, tuple) else (source, at)
        if chain is None:
            rows.append(((0, 0, line), order, f"{source}: {text}"))
        else:
            rows.append(((0, chain.index(file), line), order, f"{file}:{line}: {text}"))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [line for _, _, line in rows]


def deep_copy(value):
    if isinstance(value, dict):
        return {k: deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [deep_copy(v) for v in value]
    return value

