"""The generic validator: a mapping checked against a dataclass, every problem at once.

A field's metadata (made by :func:`opt`) carries its help text and its checks; :func:`build`
checks a YAML mapping against the dataclass and collects (dotted key, problem) pairs in a
:class:`Problems`, with a 'did you mean' for unknown keys. Recipes and the benchmark grid use it.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field
from typing import Any, Iterable, Sequence

from ..errors import UserError, nearest


class RecipeError(UserError):
    """All problems of one recipe; ``problems`` holds the lines of the message."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory=None, **checks):
    """A dataclass field with ``help`` and optional checks in its metadata.

    checks: ``choices`` (a tuple, or a function returning one: choices registered by plugins),
    ``ge``/``gt``/``le``/``lt`` (numbers), ``positive`` (an integer >= 1), ``nonempty`` (a list
    with an item; a string value is the message), ``allow_inf`` (infinite floats are refused
    otherwise), ``none_word`` (a string value meaning None, e.g. log_with: none), ``bool_word``
    (YAML turns a bare ``no`` into false: {False: "no"} takes it back).
    """
    meta = {"help": help, **checks}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# Spellings from other tools -> our key, consulted before the edit-distance suggestion.
ALIASES = {
    "rank": ("r",), "lora_r": ("r",), "lora_rank": ("r",), "lora_alpha": ("alpha",),
    "lora_dropout": ("dropout",), "target": ("target_modules",), "targets": ("target_modules",),
    "modules": ("target_modules",), "learning_rate": ("lr",), "head_learning_rate": ("head_lr",),
    "num_epochs": ("epochs",), "num_train_epochs": ("epochs",), "epoch": ("epochs",),
    "bs": ("batch_size",), "per_device_train_batch_size": ("batch_size",),
    "train_batch_size": ("batch_size",), "gradient_accumulation_steps": ("grad_accum",),
    "gradient_accumulation": ("grad_accum",), "lr_scheduler_type": ("schedule",),
    "scheduler": ("schedule",), "lr_schedule": ("schedule",), "warmup": ("warmup_ratio",),
    "clip": ("max_grad_norm",), "grad_clip": ("max_grad_norm",), "precision": ("mixed_precision",),
    "fp16": ("mixed_precision",), "bf16": ("mixed_precision",), "max_seq_length": ("max_length",),
    "max_len": ("max_length",), "seq_len": ("max_length",), "model": ("backbone", "name"),
    "model_name": ("name",), "output_dir": ("dir", "output"), "path": ("dir",),
    "threads": ("num_threads",), "train_file": ("train",), "dev_file": ("dev",), "valid": ("dev",),
    "validation": ("dev",), "test_file": ("test",), "data_dir": ("root",),
}


def suggest(key: str, choices: Iterable[str]) -> str | None:
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if key.lower() in lowered:
        return lowered[key.lower()]
    for alias in ALIASES.get(key, ()):
        if alias in choices:
            return alias
    return nearest(key, choices)


# --------------------------------------------------------------------------- value checks


class _BadValue(Exception):
    pass


def show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _optional_inner(tp):
    """``X | None`` -> X; anything else -> None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _describe(tp) -> str:
    inner = _optional_inner(tp)
    if inner is not None:
        return _describe(inner) + " or null"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp) or (Any,)
        return {str: "a list of strings", int: "a list of integers", float: "a list of numbers"}.get(item, "a list")
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp) -> Any:
    """Return ``value`` as type ``tp`` or raise _BadValue (bool is never a number)."""
    inner = _optional_inner(tp)
    if inner is not None:
        return None if value is None else _coerce(value, inner)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _BadValue
    if tp is int:
        if isinstance(value, bool):
            raise _BadValue
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                value = _number(value)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise _BadValue
    if tp is float:
        if isinstance(value, bool):
            raise _BadValue
        if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
            return float(value)
        if isinstance(value, str):
            return _number(value)
        raise _BadValue
    if tp is str:
        if isinstance(value, str):
            return value
        raise _BadValue
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise _BadValue
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item) for v in value] if item is not Any else list(value)
    return value


def _infinite(value) -> bool:
    """An infinite float, in a list too."""
    if isinstance(value, list):
        return any(_infinite(v) for v in value)
    return isinstance(value, float) and math.isinf(value)


def _number(text: str) -> float:
    """A numeric string as float ('1e-3' is a string to PyYAML); NaN is refused."""
    try:
        number = float(text.strip())
    except ValueError:
        raise _BadValue from None
    if math.isnan(number):
        raise _BadValue
    return number


def _fmt(x) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _range_problem(value, meta) -> str | None:
    lo = ("ge", meta["ge"]) if "ge" in meta else ("gt", meta["gt"]) if "gt" in meta else None
    hi = ("le", meta["le"]) if "le" in meta else ("lt", meta["lt"]) if "lt" in meta else None
    ok = True
    if lo:
        ok &= value >= lo[1] if lo[0] == "ge" else value > lo[1]
    if hi:
        ok &= value <= hi[1] if hi[0] == "le" else value < hi[1]
    if ok:
        return None
    if lo and hi:
        span = f"in {'[' if lo[0] == 'ge' else '('}{_fmt(lo[1])}, {_fmt(hi[1])}{']' if hi[0] == 'le' else ')'}"
    else:
        op, bound = lo or hi
        span = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}[op] + " " + _fmt(bound)
    return f"must be {span}, got {show(value)}"


# --------------------------------------------------------------------------- validation


class Problems:
    def __init__(self):
        self.items: list[tuple[str, str]] = []  # (dotted key, text without the file prefix)

    def add(self, key: str, text: str):
        if (key, text) not in self.items:
            self.items.append((key, text))

    def __len__(self):
        return len(self.items)


def _fields(cls):
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def required(f) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _choices(meta) -> tuple:
    choices = meta["choices"]
    return tuple(choices() if callable(choices) else choices)


def build(cls, raw: Any, prefix: str, problems: Problems, extra_keys=(), no_options_of=None):
    """Validate mapping ``raw`` against dataclass ``cls``; return an instance or None."""
    before = len(problems)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.add(prefix, f"{prefix}: expected a mapping of keys, got {show(raw)}")
        return None
    fields = _fields(cls)
    names = [f.name for f, _ in fields]
    meant = set()  # keys an unknown key is taken for: a misspelt required key is one problem, not two
    for key in raw:
        if str(key) in names or key in extra_keys:
            continue
        dotted = f"{prefix}.{key}"
        hint = suggest(str(key), [*extra_keys, *names])
        text = f"unknown key '{dotted}'"
        if hint:
            meant.add(hint)
            text += f" (did you mean '{prefix}.{hint}'?)"
        elif no_options_of:
            text += f" (method '{no_options_of}' takes no options)"
        problems.add(dotted, text)
    values = {}
    for f, tp in fields:
        dotted = f"{prefix}.{f.name}"
        if f.name not in raw:
            if required(f) and f.name not in meant:
                problems.add(dotted, f"missing required key '{dotted}'")
            continue
        value = raw[f.name]
        meta = f.metadata
        if meta.get("none_word") and isinstance(value, str) and value.lower() == meta["none_word"]:
            value = None
        if isinstance(value, bool) and value in meta.get("bool_word", {}):
            value = meta["bool_word"][value]
        try:
            value = _coerce(value, tp)
        except _BadValue:
            got = show(value) + (" (an empty value)" if value is None else "")
            if "choices" in meta:
                problems.add(dotted, f"{dotted}: must be one of {', '.join(_choices(meta))}; got {got}")
            else:
                problems.add(dotted, f"{dotted}: expected {_describe(tp)}, got {got}")
            continue
        if _infinite(value) and not meta.get("allow_inf"):
            problems.add(dotted, f"{dotted}: expected a finite number, got {show(value)}")
            continue
        if value is not None and "choices" in meta and value not in _choices(meta):
            text = f"{dotted}: must be one of {', '.join(_choices(meta))}; got {show(value)}"
            hint = suggest(str(value), _choices(meta))
            problems.add(dotted, text + (f" (did you mean '{hint}'?)" if hint else ""))
            continue
        if value is not None and meta.get("positive") and value < 1:
            problems.add(dotted, f"{dotted}: must be a positive integer, got {show(value)}")
            continue
        if value is not None and meta.get("nonempty") and not value:
            text = meta["nonempty"] if isinstance(meta["nonempty"], str) else "must not be empty"
            problems.add(dotted, f"{dotted}: {text}")
            continue
        if value is not None and any(k in meta for k in ("ge", "gt", "le", "lt")):
            bad = _range_problem(value, meta)
            if bad:
                problems.add(dotted, f"{dotted}: {bad}")
                continue
        values[f.name] = value
    if len(problems) > before:
        return None
    obj = cls(**values)
    for key, message in (obj.check() if hasattr(obj, "check") else []):
        problems.add(f"{prefix}.{key}", f"{prefix}.{key}: {message}")
    return obj if len(problems) == before else None

