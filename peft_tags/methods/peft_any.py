"""Any other peft method by its peft name (loha, lokr, vera, boft, fourierft, ...).

The recipe's ``method:`` keys are that method's peft config fields, passed through unchanged.
They are checked against the config class: a key it does not have is an error that names the
key (with the nearest field), and a value peft rejects is an error that quotes peft. The task
head is always trained and saved (``modules_to_save``), so the fields that peft_tags manages
are not recipe keys.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import re
from typing import Any

from . import Context, Method
from ._common import allow_disable_adapter, get_peft_model

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
    options_cls = _options_class(key, config_cls)
    prompt = _is_prompt_learning(config_cls)
    return Method(key, options_cls, functools.partial(_apply, config_cls), help=f"peft {config_cls.__name__}, keys passed through",
                  on_load=allow_disable_adapter if prompt else None, merge_refusal="adds virtual tokens" if prompt else None)


def _options_class(key: str, config_cls) -> type:
    fields = []
    for f in dataclasses.fields(config_cls):
        if f.name in MANAGED or not f.init or f.name.startswith("_"):
            continue
        value = f.default.value if isinstance(f.default, enum.Enum) else f.default  # recipes hold plain YAML values
        default = (dataclasses.field(default_factory=f.default_factory) if f.default_factory is not dataclasses.MISSING
                   else dataclasses.field(default=value))
        default.metadata = {"help": f.metadata.get("help", "") if f.metadata else ""}
        fields.append((f.name, Any, default))

    def check(self) -> list[tuple[str, str]]:
        try:
            _config(config_cls, self)
        except (TypeError, ValueError, ImportError) as e:
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            named = [f.name for f in dataclasses.fields(self) if re.search(rf"(?<!\w){re.escape(f.name)}(?!\w)", text)]
            field = max(named, key=len) if named else None
            return [(field or "name", f"peft {config_cls.__name__} rejects these options: {text}")]
        return []

    return dataclasses.make_dataclass(f"{config_cls.__name__}Options", fields, namespace={"check": check})


def _config(config_cls, options, head_name: str = "classifier"):
    from peft import TaskType

    values = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    extra = {"task_type": TaskType.TOKEN_CLS} if _is_prompt_learning(config_cls) else {"modules_to_save": [head_name]}
    extra = {k: v for k, v in extra.items() if k in {f.name for f in dataclasses.fields(config_cls)}}
    return config_cls(**values, **extra)


def _is_prompt_learning(config_cls) -> bool:
    from peft.config import PromptLearningConfig

    return issubclass(config_cls, PromptLearningConfig)


def _apply(config_cls, model, options, ctx: Context):
    model = get_peft_model(model, _config(config_cls, options, ctx.head_name))
    return allow_disable_adapter(model) if _is_prompt_learning(config_cls) else model
