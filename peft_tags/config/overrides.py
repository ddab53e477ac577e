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


def problem_lines(problems: Problems, source: str, positions: dict[str, int], applied, in_file=frozenset()) -> list[str]:
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
            rows.append(((1, culprit[0], ""), order, text))
            continue
        line = None
        probe = key
        while probe and line is None:
            line = positions.get(probe)
            probe = probe.rpartition(".")[0]
        rows.append(((0, line, "") if line is not None else (2, 0, key), order, text))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [f"{source}: {text}" for _, _, text in rows]


def deep_copy(value):
    if isinstance(value, dict):
        return {k: deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [deep_copy(v) for v in value]
    return value

