"""The recipe: a typed schema for one fine-tuning run, and its strict loader.

A recipe is a YAML file with six sections (``backbone``, ``task``, ``data``, ``method``,
``training``, ``output``). :func:`load_recipe` checks it against the dataclasses below and
reports *every* problem at once (unknown keys with a 'did you mean', missing keys, wrong
types, out-of-range values, cross-field conflicts) as one :class:`RecipeError`, one line
per problem, each line starting with the file path.

The ``method`` section holds ``name`` (a key of :data:`peft_tags.methods.REGISTRY`) and
that method's options, checked against the method's options dataclass.

This module must stay free of torch imports: the CLI loads recipes before anything heavy.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from .errors import UserError, nearest

TASK_TYPES = ("tagging", "multilabel")
DATA_FORMATS = ("conll", "jsonl", "attribute-value", "tags")
POOLING = ("mean", "first")
POS_WEIGHT = ("none", "sqrt", "balanced")
THRESHOLDS = ("auto", "per-tag", "global")
HEAD_BIAS = ("auto", "prior", "zero")
SCHEDULES = ("linear", "cosine", "constant")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
LOG_WITH = ("tensorboard", "none")
QUANTIZATION = ("none", "nf4", "fp4", "int8")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")

#: method column of a :func:`list_recipes` row for a file that does not load
ERROR_MARK = "!error"

#: where bare recipe names are looked up, besides ``./recipes``
REPO_RECIPES = Path(__file__).resolve().parent.parent / "recipes"

#: caps on a recipe file, so that an alias bomb ("billion laughs") fails at once
MAX_BYTES = 1 << 20
MAX_ALIASES = 100
MAX_NODES = 10_000  # with every alias expanded
MAX_DEPTH = 100


class RecipeError(UserError):
    """All problems of one recipe; ``problems`` holds the lines of the message."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _f(default: Any = dataclasses.MISSING, help: str = "", *, factory=None, **checks):
    """A dataclass field with ``help`` and optional checks in its metadata.

    checks: ``choices`` (tuple), ``ge``/``gt``/``le``/``lt`` (numbers), ``allow_inf`` (infinite
    floats are refused otherwise), ``none_word``
    (a string value meaning None, e.g. log_with: none), ``bool_word`` (YAML turns a bare
    ``no`` into false: {False: "no"} takes it back).
    """
    meta = {"help": help, **checks}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- schema


@dataclass
class BackboneSection:
    name: str = _f(help="backbone: an alias (me5-small, minilm-l6), a Hugging Face hub id, or a local directory")
    cache_dir: str | None = _f(None, "conversion cache; null -> $PEFT_TAGS_CACHE or ~/.cache/peft-tags")
    max_length: int = _f(160, "maximum sequence length in tokens (>= 8); longer inputs are cut", ge=8)
    quantization: str = _f("none", "load the frozen backbone quantised through bitsandbytes (QLoRA): "
                           + ", ".join(QUANTIZATION), choices=QUANTIZATION)
    double_quantization: bool = _f(True, "4-bit only: quantise the quantisation constants too")
    compute_dtype: str = _f("float32", "4-bit only: dtype the de-quantised weights compute in: " + ", ".join(COMPUTE_DTYPES),
                            choices=COMPUTE_DTYPES)

    def check(self) -> list[tuple[str, str]]:
        return [("name", "must not be empty")] if not self.name.strip() else []


@dataclass
class TaskSection:
    type: str = _f("tagging", "task type: " + ", ".join(TASK_TYPES), choices=TASK_TYPES)
    slots: int = _f(4, "tagging: how many characters one token can label (1..16)", ge=1, le=16)
    pooling: str = _f("mean", "multilabel: the title's representation, " + " or ".join(POOLING)
                      + " (mean over its tokens, or the first token)", choices=POOLING)
    pos_weight: str = _f("none", "multilabel: weight of a tag's positives in the loss: none, sqrt or balanced "
                         "((titles without / with the tag in train), or its square root), capped at pos_weight_cap",
                         choices=POS_WEIGHT)
    pos_weight_cap: float = _f(50.0, "multilabel: the largest positive weight (>= 1)", ge=1)
    thresholds: str = _f("auto", "multilabel: decision thresholds tuned on dev: per-tag (a tag with fewer than "
                         "min_tag_support dev titles uses the global one), one global, or auto (per-tag only if "
                         "they beat the global one on held-out dev folds)", choices=THRESHOLDS)
    min_tag_support: int = _f(5, "multilabel: dev titles a tag needs for a threshold of its own (>= 1)", ge=1)
    head_bias: str = _f("auto", "the head's starting bias: prior (the log base rate of each label, or log-odds of each "
                        "tag, in train), zero, or auto (prior)", choices=HEAD_BIAS)
    top_k: int | None = _f(None, "multilabel: at most this many tags per title (the highest scores); null: no limit", ge=1)


@dataclass(kw_only=True)
class DataSection:
    root: str | None = _f(None, "data root; null -> $PEFT_TAGS_DATA, else ../shared/data if it exists")
    format: str = _f("conll", "file format: " + ", ".join(DATA_FORMATS), choices=DATA_FORMATS)
    train: str = _f(help="training file, relative to data.root (or absolute)")
    dev: str | None = _f(None, "dev file (model selection), relative to data.root; null: none")
    test: str | None = _f(None, "test file (final scores), relative to data.root; null: none")
    fullwidth_to_halfwidth: bool = _f(True, "map full-width characters (ＡＢＣ１２３) to half-width before tokenizing")
    lowercase: bool = _f(False, "lowercase the text before tokenizing")
    max_train_examples: int | None = _f(None, "use only the first N training examples (> 0); null: all", gt=0)
    max_dev_examples: int | None = _f(None, "use only the first N dev examples (> 0); null: all", gt=0)
    max_test_examples: int | None = _f(None, "use only the first N test examples (> 0); null: all", gt=0)

    def check(self) -> list[tuple[str, str]]:
        problems = []
        for key in ("train", "dev", "test"):
            if getattr(self, key) is not None and not getattr(self, key).strip():
                problems.append((key, "must not be empty (use null for none)"))
        for key in ("dev", "test"):
            value = getattr(self, key)
            if value and value.strip() and Path(value) == Path(self.train):
                problems.append((key, f"is the same file as data.train ('{self.train}'); "
                                      f"its scores would be training scores"))
        return problems


@dataclass
class MethodSection:
    name: str = _f(help="fine-tuning method (peft_tags.methods.names(): ours, or any peft method by its peft name); "
                        "the other keys of this section are its options")
    options: Any = _f(None, "the method's options dataclass instance")


@dataclass
class TrainingSection:
    epochs: int = _f(3, "passes over the training data (>= 1)", ge=1)
    batch_size: int = _f(16, "examples per step, per process (>= 1)", ge=1)
    grad_accum: int = _f(1, "steps whose gradients are summed before one update (>= 1)", ge=1)
    lr: float = _f(1e-3, "peak learning rate (> 0)", gt=0)
    head_lr: float | None = _f(None, "learning rate of the task head (> 0); null -> training.lr", gt=0)
    weight_decay: float = _f(0.01, "AdamW weight decay (>= 0)", ge=0)
    warmup_ratio: float = _f(0.06, "fraction of the updates spent warming up, in [0, 1)", ge=0, lt=1)
    schedule: str = _f("linear", "learning-rate schedule after warmup: " + ", ".join(SCHEDULES),
                       choices=SCHEDULES)
    max_grad_norm: float | None = _f(1.0, "clip gradients to this norm (> 0); null: no clipping", gt=0)
    seed: int = _f(42, "random seed (data order, dropout, head init)")
    mixed_precision: str = _f("auto", "mixed precision: " + ", ".join(MIXED_PRECISION)
                              + " (auto: bf16 where supported, else no)", choices=MIXED_PRECISION,
                              bool_word={False: "no"})
    eval_every_epochs: int = _f(1, "score the dev set every N epochs (>= 1)", ge=1)
    checkpoint_every_steps: int | None = _f(None, "write a checkpoint every N updates (>= 1); "
                                                  "null -> at the end of each epoch", ge=1)
    resume: bool = _f(False, "continue from the last checkpoint in <output.dir>.work (with the same recipe, data "
                             "and code)")
    num_threads: int | None = _f(None, "torch CPU threads (>= 1); null -> all cores of this process's share", ge=1)
    length_bucketing: bool = _f(True, "batch examples of similar length together (less padding)")
    log_with: str | None = _f("tensorboard", "metrics logger: tensorboard, or none (null)",
                              choices=LOG_WITH, none_word="none")

    @property
    def effective_head_lr(self) -> float:
        return self.lr if self.head_lr is None else self.head_lr


@dataclass
class OutputSection:
    dir: str = _f(help="directory the run is written to")
    overwrite: bool = _f(False, "replace an existing output.dir at the end, if peft-tags wrote it")

    def check(self) -> list[tuple[str, str]]:
        return [("dir", "must not be empty")] if not self.dir.strip() else []


@dataclass
class Recipe:
    backbone: BackboneSection = _f(help="the pretrained encoder")
    task: TaskSection = _f(help="what the model predicts")
    data: DataSection = _f(help="where the examples are and how to read them")
    method: MethodSection = _f(help="the fine-tuning method and its options")
    training: TrainingSection = _f(help="the optimisation loop")
    output: OutputSection = _f(help="where the run goes")
    source: str = field(default="", compare=False, metadata={"help": "file the recipe came from (not a YAML key)"})

    def check(self) -> list[tuple[str, str]]:
        """Cross-section checks: (dotted key, problem) pairs."""
        from . import methods

        problems = []
        if self.backbone.quantization != "none" and not methods.get(self.method.name).quantizable:
            problems.append(("backbone.quantization", "a quantised backbone is frozen; it cannot be combined with "
                                                      f"method '{self.method.name}', which trains the backbone's "
                                                      "weights (use lora, or quantization: none)"))
        if self.task.type == "multilabel" and self.data.format != "tags":
            problems.append(("data.format", f"task multilabel reads 'tags' files ({{\"text\": ..., \"tags\": [...]}} per "
                                            f"line), not '{self.data.format}'"))
        if self.task.type == "multilabel" and not self.data.dev:
            problems.append(("data.dev", "task multilabel tunes its decision thresholds on dev; give a dev file"))
        if self.task.type == "tagging" and self.data.format == "tags":
            problems.append(("data.format", "'tags' files hold no spans; task tagging reads conll, jsonl or "
                                            "attribute-value (or set task.type: multilabel)"))
        return problems


SECTIONS: dict[str, type] = {
    "backbone": BackboneSection,
    "task": TaskSection,
    "data": DataSection,
    "method": MethodSection,
    "training": TrainingSection,
    "output": OutputSection,
}

# Spellings from other tools -> our key, consulted before the edit-distance suggestion.
_ALIASES = {
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


def _suggest(key: str, choices: Iterable[str]) -> str | None:
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if key.lower() in lowered:
        return lowered[key.lower()]
    for alias in _ALIASES.get(key, ()):
        if alias in choices:
            return alias
    return nearest(key, choices)


# --------------------------------------------------------------------------- YAML


class YamlTooBig(yaml.YAMLError):
    """A YAML text over the caps (aliases, nodes with aliases expanded, nesting)."""


class _CappedLoader(yaml.SafeLoader):
    """SafeLoader that counts alias uses, nodes (every alias expanded) and nesting as it composes."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases, self._depth, self._sizes = 0, 0, {}

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlTooBig(f"too many YAML aliases (more than {MAX_ALIASES} uses of '*name'); "
                                 "a recipe needs few or none")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise YamlTooBig(f"YAML nested more than {MAX_DEPTH} levels deep")
        node = super().compose_node(parent, index)
        self._depth -= 1
        if id(node) not in self._sizes:
            children = node.value if isinstance(node, yaml.SequenceNode) else \
                [n for kv in node.value for n in kv] if isinstance(node, yaml.MappingNode) else []
            self._sizes[id(node)] = 1 + sum(self._sizes.get(id(c), 1) for c in children)
            if self._sizes[id(node)] > MAX_NODES:
                raise YamlTooBig(f"too many YAML nodes (more than {MAX_NODES} with aliases expanded; too many YAML "
                                 "aliases or values)")
        return node


def yaml_load(text: str):
    """``yaml.safe_load`` under the caps of :class:`_CappedLoader` (raises :class:`YamlTooBig` past them):
    for any YAML a user hands over, recipes first."""
    return yaml.load(text, Loader=_CappedLoader)


_yaml_load = yaml_load


# --------------------------------------------------------------------------- value checks


class _BadValue(Exception):
    pass


def _show(value: Any) -> str:
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
    return f"must be {span}, got {_show(value)}"


# --------------------------------------------------------------------------- validation


class _Problems:
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


def _required(f) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _build(cls, raw: Any, prefix: str, problems: _Problems, extra_keys=(), no_options_of=None):
    """Validate mapping ``raw`` against dataclass ``cls``; return an instance or None."""
    before = len(problems)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.add(prefix, f"{prefix}: expected a mapping of keys, got {_show(raw)}")
        return None
    fields = _fields(cls)
    names = [f.name for f, _ in fields]
    meant = set()  # keys an unknown key is taken for: a misspelt required key is one problem, not two
    for key in raw:
        if str(key) in names or key in extra_keys:
            continue
        dotted = f"{prefix}.{key}"
        hint = _suggest(str(key), [*extra_keys, *names])
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
            if _required(f) and f.name not in meant:
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
            got = _show(value) + (" (an empty value)" if value is None else "")
            if "choices" in meta:
                problems.add(dotted, f"{dotted}: must be one of {', '.join(meta['choices'])}; got {got}")
            else:
                problems.add(dotted, f"{dotted}: expected {_describe(tp)}, got {got}")
            continue
        if _infinite(value) and not meta.get("allow_inf"):
            problems.add(dotted, f"{dotted}: expected a finite number, got {_show(value)}")
            continue
        if value is not None and "choices" in meta and value not in meta["choices"]:
            text = f"{dotted}: must be one of {', '.join(meta['choices'])}; got {_show(value)}"
            hint = _suggest(str(value), meta["choices"])
            problems.add(dotted, text + (f" (did you mean '{hint}'?)" if hint else ""))
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


def _build_method(raw: Any, problems: _Problems):
    from . import methods

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.add("method", f"method: expected a mapping of keys, got {_show(raw)}")
        return None
    if "name" not in raw:
        typo = next((k for k in raw if _suggest(str(k), ["name"]) == "name"), None)
        if typo is not None:  # one problem: the misspelt key
            problems.add(f"method.{typo}", f"unknown key 'method.{typo}' (did you mean 'method.name'?)")
        else:
            problems.add("method.name", "missing required key 'method.name'")
        return None
    name = raw["name"]
    if not isinstance(name, str):
        problems.add("method.name", f"method.name: expected a string, got {_show(name)}")
        return None
    method = methods.lookup(name)
    if method is None:
        from .methods import peft_any

        ours = sorted(methods.REGISTRY)
        hint = peft_any.ours_for(name) or _suggest(name, methods.names())
        problems.add("method.name", f"method.name: unknown method '{name}'"
                     + (f" (did you mean '{hint}'?)" if hint else "")
                     + f"; choose from {', '.join(ours)}, or another peft method by its peft name "
                       f"({', '.join(n for n in peft_any.names() if n not in ours)})")
        return None
    options_cls = method.options_cls
    opts = {k: v for k, v in raw.items() if k != "name"}
    takes_none = name if not dataclasses.fields(options_cls) else None
    options = _build(options_cls, opts, "method", problems, extra_keys=("name",), no_options_of=takes_none)
    return None if options is None else MethodSection(name=name, options=options)


def _positions(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line of the key in the YAML text (best effort)."""
    try:
        root = yaml.compose(text, Loader=_CappedLoader)
    except yaml.YAMLError:
        return {}
    found: dict[str, int] = {}

    def walk(node, prefix):
        if not isinstance(node, yaml.MappingNode):
            return
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            dotted = f"{prefix}{key_node.value}"
            found.setdefault(dotted, key_node.start_mark.line + 1)
            walk(value_node, dotted + ".")

    walk(root, "")
    return found


def _duplicates(text: str) -> list[tuple[str, int, int]]:
    """(dotted key, first line, repeated line) for keys given twice in one mapping."""
    try:
        root = yaml.compose(text, Loader=_CappedLoader)
    except yaml.YAMLError:
        return []
    out = []

    def walk(node, prefix):
        if not isinstance(node, yaml.MappingNode):
            return
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            dotted = f"{prefix}{key_node.value}"
            line = key_node.start_mark.line + 1
            if dotted in seen:
                out.append((dotted, seen[dotted], line))
            else:
                seen[dotted] = line
            walk(value_node, dotted + ".")

    walk(root, "")
    return out


def _apply_overrides(raw: dict, overrides: Sequence[str], problems: _Problems) -> dict[str, tuple[int, str]]:
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
            problems.add(tag, f"override '{text}': the value is not valid YAML ({_yaml_problem(err)})")
            continue
        node = raw
        for depth, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                where = ".".join(parts[: depth + 1])
                problems.add(tag, f"override '{text}': '{where}' is {_show(node[part])}, not a mapping")
                break
            node = node[part]
        else:
            node[parts[-1]] = value
            applied[".".join(parts)] = (index, text)
    return applied


def _yaml_problem(err: yaml.YAMLError) -> str:
    return str(getattr(err, "problem", None) or err).strip()


def _finish(raw: Any, source: str, overrides: Sequence[str], positions: dict[str, int],
            extra: Sequence[tuple[str, str]] = ()) -> Recipe:
    problems = _Problems()
    for key, text in extra:
        problems.add(key, text)
    recipe = None
    applied: dict[str, tuple[int, str]] = {}
    empty = raw is None or raw == {}
    empty_line = f"{source}: the recipe is empty; expected a mapping with sections " + ", ".join(SECTIONS)
    if empty:
        raw = {}
        if not overrides:  # one line, not one per missing section
            raise RecipeError([empty_line])
    if not isinstance(raw, dict):
        problems.add("", f"the top level must be a mapping with sections {', '.join(SECTIONS)}, got {_show(raw)}")
        raw = None
    else:
        raw = _deep_copy(raw)
        applied = _apply_overrides(raw, overrides, problems)
        meant = set()  # sections a misspelt one is taken for: their keys are not missing, they are misplaced
        for key in raw:
            if key not in SECTIONS:
                hint = _suggest(str(key), SECTIONS)
                meant.add(hint or key)
                problems.add(str(key), f"unknown key '{key}'" + (f" (did you mean '{hint}'?)" if hint else ""))
        built = {}
        for name, cls in SECTIONS.items():
            if name in meant and name not in raw:
                built[name] = None
            elif name == "method":
                built[name] = _build_method(raw.get(name), problems)
            else:
                built[name] = _build(cls, raw.get(name), name, problems)
        if not len(problems):
            recipe = Recipe(**built, source=source)
            for key, message in recipe.check():
                problems.add(key, f"{key}: {message}")
    if len(problems):
        if empty:  # overrides alone are no recipe: one line for the file
            raise RecipeError([empty_line])
        raise RecipeError(_lines(problems, source, positions, applied, in_file=set(extra)))
    return recipe


def _lines(problems: _Problems, source: str, positions: dict[str, int], applied, in_file=frozenset()) -> list[str]:
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


def _deep_copy(value):
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


# --------------------------------------------------------------------------- public API


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override and validate the recipe at ``path``; raise RecipeError listing every problem."""
    source = str(path)
    try:
        size = Path(path).stat().st_size
        if size > MAX_BYTES:
            raise RecipeError([f"{source}: {size} bytes; a recipe is at most {MAX_BYTES >> 20} MiB"])
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{source}: no such recipe file") from None
    except OSError as err:
        raise UserError(f"{source}: cannot read the recipe ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise RecipeError([f"{source}:{line}: not UTF-8 (byte 0x{data[err.start]:02x}); save the recipe as UTF-8"]) from None
    try:
        raw = yaml_load(text)
    except YamlTooBig as err:
        raise RecipeError([f"{source}: {err}"]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise RecipeError([f"{source}: {where}invalid YAML: {_yaml_problem(err)}"]) from None
    duplicates = [(key, f"key '{key}' is given twice (lines {first} and {again})")
                  for key, first, again in _duplicates(text)]
    return _finish(raw, source, overrides, _positions(text), duplicates)


def recipe_from_dict(raw: Any, source: str = "<dict>", overrides: Sequence[str] = ()) -> Recipe:
    """Validate an already-parsed recipe mapping (same rules as :func:`load_recipe`)."""
    return _finish(raw, source, overrides, {})


def recipe_to_dict(recipe: Recipe) -> dict:
    """Plain data of the resolved recipe; ``method`` flattened to ``{name, **options}``."""
    out = {}
    for name in SECTIONS:
        section = getattr(recipe, name)
        if name == "method":
            out[name] = {"name": section.name, **dataclasses.asdict(section.options)}
        else:
            out[name] = dataclasses.asdict(section)
    return out


def dump_recipe(recipe: Recipe, path: str | Path) -> Path:
    """Write the resolved recipe (every default filled in) as YAML; return the path."""
    from . import __version__

    path = Path(path)
    data = recipe_to_dict(recipe)
    header = (f"# Resolved peft-tags recipe (every default filled in), written by peft-tags {__version__}\n"
              f"# from {recipe.source or '<unknown>'}. Train the same again (into another directory) with:\n"
              f"#   peft-tags train {path.name} output.dir=<new directory>\n")
    blocks = [yaml.safe_dump({k: v}, sort_keys=False, allow_unicode=True, default_flow_style=False)
              for k, v in data.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "\n".join(blocks), encoding="utf-8")
    return path


def _default_dirs() -> list[Path]:
    dirs, seen = [], set()
    for d in (Path.cwd() / "recipes", REPO_RECIPES):
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            dirs.append(d)
    return dirs


def _display(path: Path) -> str:
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def _recipe_files(dirs: Iterable[Path]) -> list[tuple[Path, Path]]:
    """(search dir, file) for every .yaml/.yml under the dirs, each file once."""
    out, seen = [], set()
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for p in sorted(list(d.rglob("*.yaml")) + list(d.rglob("*.yml"))):
            key = p.resolve()
            if p.is_file() and key not in seen:
                seen.add(key)
                out.append((d, p))
    return out


def resolve_recipe_path(name: str, search_dirs: Sequence[str | Path] | None = None) -> Path:
    """An existing file as is; else the one recipe under the search dirs whose path ends with ``name``."""
    if Path(name).is_file():
        return Path(name)
    dirs = _default_dirs() if search_dirs is None else [Path(d) for d in search_dirs]
    wanted = [Path(name)]
    if Path(name).suffix not in (".yaml", ".yml"):
        wanted += [Path(name + ".yaml"), Path(name + ".yml")]
    files = _recipe_files(dirs)
    matches = []
    for _, p in files:
        parts = p.resolve().parts
        for w in wanted:
            wparts = tuple(x for x in w.parts if x not in ("", "."))
            if wparts and parts[-len(wparts):] == wparts:
                matches.append(p)
                break
    where = "recipes/" if search_dirs is None else ", ".join(_display(d) + "/" for d in dirs)
    if not matches:
        rel = [p.relative_to(d).as_posix() for d, p in files]
        hint = nearest(name, rel)
        if hint is None:
            by_base = {Path(r).name: r for r in rel}
            base = nearest(Path(name).name, by_base)
            hint = by_base[base] if base else None
        raise UserError(f"no recipe '{name}' (not a file; not found under {where})"
                        + (f" (did you mean '{hint}'?)" if hint else ""))
    if len(matches) > 1:
        raise UserError(f"ambiguous recipe '{name}': {len(matches)} files under {where} match; "
                        f"give one of: {', '.join(_display(p) for p in matches)}")
    return matches[0]


def list_recipes(root_dirs: Sequence[str | Path] | None = None) -> list[tuple[str, str, str, str]]:
    """Rows (path, method, task, backbone) for every recipe under the dirs, sorted by path.

    A file that does not load gives ``(path, ERROR_MARK, "", first problem)``.
    """
    dirs = _default_dirs() if root_dirs is None else [Path(d) for d in root_dirs]
    rows = []
    for _, p in _recipe_files(dirs):
        shown = _display(p)
        try:
            r = load_recipe(p)
        except UserError as err:
            first = str(err).splitlines()[0] if str(err) else "error"
            prefix = f"{p}: "
            rows.append((shown, ERROR_MARK, "", first[len(prefix):] if first.startswith(prefix) else first))
            continue
        rows.append((shown, r.method.name, r.task.type, r.backbone.name))
    return sorted(rows)
