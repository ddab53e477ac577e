"""Any other peft method by its peft name (loha, lokr, vera, boft, fourierft, ...).

The recipe's ``method:`` keys are that method's peft config fields, passed through unchanged
(untyped: peft judges the values). The options dataclass derives from the config class as our
own peft methods' do (:mod:`.options`): a key it does not have is an error that names the key
(with the nearest field), and a value peft rejects is an error that quotes peft. The task head
is always trained and saved (``modules_to_save``), so the fields that peft_tags manages are not
recipe keys.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

from . import Context, Method
from ._common import allow_disable_adapter, get_peft_model
from .options import PeftOptions, peft

#: config fields the runner sets itself
MANAGED = ("peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "modules_to_save",
           "auto_mapping", "peft_version")
#: peft methods that do not fit a frozen encoder + token head, or that we offer under our own name
EXCLUDED = {"lora": "lora", "adalora": "adalora", "ia3": "ia3", "prefix_tuning": "prefix", "prompt_tuning": "prompt",
            "bottleneck": "bottleneck", "adaption_prompt": None, "xlora": None, "poly": None,
            "multitask_prompt_tuning": None, "cpt": None, "cartridge": None,
            "trainable_tokens": None}  # trains token embeddings only; it cannot train the task head


def _normal(name: str) -> str:
    return name.strip().lower().replace("-", "_")


@functools.lru_cache(maxsize=None)
def _configs() -> dict[str, type]:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return {str(k.value).lower(): v for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items() if str(k.value).lower() not in EXCLUDED}


def names() -> list[str]:
    return sorted(_configs())


def ours_for(name: str) -> str | None:
    """Our method name for a peft name we offer under another name (prefix_tuning -> prefix)."""
    return EXCLUDED.get(_normal(name))


def method(name: str) -> Method | None:
    key = _normal(name)
    if key != name or key not in _configs():  # one spelling per method: peft's, lower case
        return None
    return _method(key)


@functools.lru_cache(maxsize=None)
def _method(key: str) -> Method:
    config_cls = _configs()[key]
    options = _options(config_cls)
    prompt = _is_prompt_learning(config_cls)
    return Method(key, options.cls, functools.partial(_apply, options), help=f"peft {config_cls.__name__}, keys passed through",
                  on_load=allow_disable_adapter if prompt else None, merge_refusal="adds virtual tokens" if prompt else None)


def _options(config_cls) -> PeftOptions:
    """Every field of ``config_cls`` that the runner does not manage, under its own name, untyped."""
    keys = {f.name: peft(f.name, type=Any) for f in dataclasses.fields(config_cls)
            if f.name not in MANAGED and f.init and not f.name.startswith("_")}
    return PeftOptions(f"{config_cls.__name__}Options", config_cls, __name__, keys,
                       fixed=lambda options: _managed(config_cls, Context("classifier")))


def _managed(config_cls, ctx: Context) -> dict:
    """The fields the runner sets: the task type of a prompt method, else the head to train and
    save (and a causal language model's task type)."""
    extra = {"task_type": ctx.task_type} if _is_prompt_learning(config_cls) else ctx.peft_fields()
    return {k: v for k, v in extra.items() if k in {f.name for f in dataclasses.fields(config_cls)}}


def _is_prompt_learning(config_cls) -> bool:
    from peft.config import PromptLearningConfig

    return issubclass(config_cls, PromptLearningConfig)


def _apply(options: PeftOptions, model, values, ctx: Context):
    config_cls = options.config_class()
    model = get_peft_model(model, options.config(values, **_managed(config_cls, ctx)))
    return allow_disable_adapter(model) if _is_prompt_learning(config_cls) else model
