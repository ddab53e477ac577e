"""Method options derived from a peft config class.

A method that wraps a model with peft takes most of its recipe keys straight from its peft
config class. :class:`PeftOptions` builds the method's options dataclass from that class:
each recipe key names the config field it sets (:func:`peft`), and takes from it, unless the
key says otherwise, its default, its type (the field's annotation) and its help text (the
field's ``help`` metadata). Keys that are the project's own (a fraction of the run, a switch
that peft does not have) are declared in full with :func:`own`.

Checks are field metadata, applied by the recipe validator (:mod:`peft_tags.config.validate`):
``choices``, ``ge``, ``gt``, ``le``, ``lt`` (a config field's own ``choices``, as our bottleneck
config declares them, carry over to its key), ``positive`` (an integer >= 1) and ``nonempty`` (a
list of modules that names at least one). The generated ``check()`` runs the method's cross-key
checks, and, when those pass, it builds the peft config and reports a ``ValueError`` (or ``TypeError``) of peft as a problem of the key its message names.
The validator calls ``check()`` only when every value has passed its own checks.

The dataclass is built on first use (:meth:`PeftOptions.cls`): peft is imported then, not when
the methods package is, so that the package stays light to import. A method module exposes the
class under its name with ``__getattr__ = OPTIONS.module_getattr``.

Example (LoRA's options, with peft's field ``lora_alpha`` under the recipe key ``alpha``)::

    OPTIONS = PeftOptions("LoraOptions", "peft.LoraConfig", __name__, {
        "r": peft("r", 8, positive=True),
        "alpha": peft("lora_alpha", 16.0, type=float, gt=0),
        "dropout": peft("lora_dropout", 0.1, ge=0, lt=1),
    })
    config = OPTIONS.config(options, modules_to_save=["classifier"])  # a peft LoraConfig
"""
from __future__ import annotations

import dataclasses
import enum
import importlib
import re
import typing
from dataclasses import MISSING, dataclass
from typing import Any, Callable, Mapping

from ._common import empty_modules

#: checks the recipe validator applies; they carry over from a config field's metadata too
VALIDATOR_CHECKS = ("choices", "ge", "gt", "le", "lt", "positive", "nonempty")


@dataclass(frozen=True)
class Key:
    """One recipe key of a method's options (made by :func:`peft` or :func:`own`)."""

    field: str | None  # the peft config field the key sets; None: a key of the project's own
    default: Any = MISSING  # MISSING: the config field's default
    factory: Callable[[], Any] | None = None  # a default made fresh for each instance (lists)
    type: Any = None  # None: the config field's annotation
    help: str | None = None  # None: the config field's help
    checks: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def peft(field: str, default: Any = MISSING, *, factory: Callable[[], Any] | None = None, type: Any = None,
         help: str | None = None, **checks) -> Key:
    """A key that sets the peft config field ``field``; what it does not give comes from that field."""
    _known(checks)
    return Key(field, default, factory, type, help, checks)


def own(type: Any, default: Any = MISSING, help: str = "", *, factory: Callable[[], Any] | None = None, **checks) -> Key:
    """A key of the project's own, not a peft config field: the method turns it into peft's terms."""
    _known(checks)
    return Key(None, default, factory, type, help, checks)


def _known(checks) -> None:
    unknown = set(checks) - set(VALIDATOR_CHECKS)
    if unknown:
        raise TypeError(f"unknown checks {sorted(unknown)}; known: {', '.join(VALIDATOR_CHECKS)}")


class PeftOptions:
    """How a method's options dataclass derives from its peft config class.

    name: the dataclass's name; config: the peft config class, or its dotted path (imported on
    first use); module: the module that exposes the dataclass (``__name__``); keys: recipe key
    -> :class:`Key`, in the order of the dataclass's fields; check: ``check(options)`` -> (key,
    problem) pairs across keys; fixed: ``fixed(options)`` -> the peft fields the method sets
    itself (``modules_to_save``, a schedule), as ``check()`` sets them to build the config
    (``apply`` passes its own to :meth:`config`).
    """

    def __init__(self, name: str, config: type | str, module: str, keys: Mapping[str, Key], *,
                 check: Callable[[Any], list[tuple[str, str]]] | None = None,
                 fixed: Callable[[Any], dict] | None = None):
        self.name, self.module, self.keys = name, module, dict(keys)
        self._config, self._check, self._fixed = config, check, fixed
        self._cls: type | None = None

    def config_class(self) -> type:
        """The peft config class (imported on first use)."""
        if isinstance(self._config, str):
            module, _, attr = self._config.rpartition(".")
            self._config = getattr(importlib.import_module(module), attr)
        return self._config

    def cls(self) -> type:
        """The options dataclass, built on first use."""
        if self._cls is None:
            self._cls = self._build()
        return self._cls

    def _build(self) -> type:
        config_cls = self.config_class()
        peft_fields = {f.name: f for f in dataclasses.fields(config_cls)}
        hints = None
        fields = []
        for key, spec in self.keys.items():
            source = peft_fields[spec.field] if spec.field is not None else None
            tp = spec.type
            if tp is None:
                if source is None:
                    raise TypeError(f"{self.name}.{key}: a key of our own needs a type")
                hints = typing.get_type_hints(config_cls) if hints is None else hints
                tp = hints[spec.field]
            inherited = {k: source.metadata[k] for k in VALIDATOR_CHECKS if source is not None and k in source.metadata}
            help_text = spec.help if spec.help is not None else (source.metadata.get("help", "") if source else "")
            metadata = {"help": help_text, **inherited, **spec.checks}
            if metadata.get("nonempty"):  # the validator's message for an empty list
                metadata["nonempty"] = empty_modules(optional=type(None) in typing.get_args(tp))
            fields.append((key, tp, _field(spec, source, metadata)))
        options = self

        def check(self) -> list[tuple[str, str]]:
            """(key, problem) pairs; empty when the options are valid."""
            return options.problems(self)

        cls = dataclasses.make_dataclass(self.name, fields, namespace={"check": check})
        cls.__module__, cls.__qualname__ = self.module, self.name
        cls.__doc__ = f"Options of a method built on peft's {config_cls.__name__} (see {self.module})."
        return cls

    def module_getattr(self, attr: str):
        """A module's ``__getattr__`` that gives the options dataclass under its name."""
        if attr == self.name:
            return self.cls()
        raise AttributeError(f"module {self.module!r} has no attribute {attr!r}")

    def kwargs(self, options) -> dict:
        """The peft config fields the options set directly (lists copied), by field name."""
        values = {}
        for key, spec in self.keys.items():
            if spec.field is not None:
                value = getattr(options, key)
                values[spec.field] = list(value) if isinstance(value, list) else value
        return values

    def config(self, options, **fixed):
        """The peft config of ``options``, with the fields the method sets itself (``fixed``)."""
        return self.config_class()(**self.kwargs(options), **fixed)

    def problems(self, options) -> list[tuple[str, str]]:
        """What ``check()`` returns: our checks in field order, else what peft rejects."""
        problems = []
        problems += self._check(options) if self._check is not None else []
        if problems:
            order = {key: i for i, key in enumerate(self.keys)}
            return sorted(problems, key=lambda p: order.get(p[0], len(order)))  # stable: a key's own order kept
        try:
            self.config(options, **(self._fixed(options) if self._fixed else {}))
        except (TypeError, ValueError, ImportError) as e:
            return [self.rejected(e)]
        return []

    def rejected(self, error: Exception) -> tuple[str, str]:
        """peft's refusal as a (key, problem) pair: the key its message names (the longest), else ``name``."""
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        names = {key: key for key in self.keys}
        names.update({spec.field: key for key, spec in self.keys.items() if spec.field is not None and spec.field not in names})
        named = [n for n in names if re.search(rf"(?<!\w){re.escape(n)}(?!\w)", text)]
        key = names[max(named, key=len)] if named else "name"
        return key, f"peft {self.config_class().__name__} rejects these options: {text}"


def _field(spec: Key, source, metadata: dict):
    """The dataclass field of a key: its default, else the config field's (enum members as values)."""
    if spec.factory is not None:
        return dataclasses.field(default_factory=spec.factory, metadata=metadata)
    if spec.default is not MISSING or source is None:
        return dataclasses.field(default=spec.default, metadata=metadata)
    if source.default_factory is not MISSING:
        return dataclasses.field(default_factory=source.default_factory, metadata=metadata)
    value = source.default.value if isinstance(source.default, enum.Enum) else source.default  # recipes hold plain values
    return dataclasses.field(default=value, metadata=metadata)
