"""The registry of fine-tuning methods.

A method is an options dataclass (the keys a recipe may put under ``method:`` beside
``name``) plus a function that turns a backbone-with-head into the model to train.
Adding a method is a new module in this package and one ``register`` call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Method:
    name: str
    options_cls: type
    apply: Callable  # apply(model, options, head_module_name) -> model
    help: str


REGISTRY: dict[str, Method] = {}


def register(name: str, options_cls: type, help: str):
    """Decorator: register ``apply`` as the method ``name`` with its options dataclass."""

    def wrap(apply):
        REGISTRY[name] = Method(name, options_cls, apply, help)
        return apply

    return wrap


def get(name: str) -> Method:
    return REGISTRY[name]


from . import lora, full, head_only  # noqa: E402,F401  (registration side effects)
