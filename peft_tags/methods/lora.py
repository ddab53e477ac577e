"""LoRA through peft: low-rank updates on chosen linear layers; the task head trains fully.

The options are peft's :class:`~peft.LoraConfig` fields under the recipe's shorter names
(``alpha`` is ``lora_alpha``, ``dropout`` is ``lora_dropout``); see :mod:`.options`.
"""
from __future__ import annotations

from . import Context, register
from ._common import get_peft_model
from .options import PeftOptions, peft

OPTIONS = PeftOptions("LoraOptions", "peft.LoraConfig", __name__, {
    "r": peft("r", 8, positive=True),
    "alpha": peft("lora_alpha", 16.0, type=float, gt=0),  # the update is (alpha/r)·BA
    "dropout": peft("lora_dropout", 0.1, ge=0, lt=1),
    "target_modules": peft("target_modules", factory=lambda: ["query", "value"], type=list[str], nonempty=True,
                           help="names (suffixes) of the linear layers to wrap, e.g. query, key, value, dense"),
})
__getattr__ = OPTIONS.module_getattr  # LoraOptions, the options dataclass


@register("lora", OPTIONS.cls, help="LoRA adapters (peft) on the chosen linear layers + trained head")
def apply(model, options, ctx: Context):
    return get_peft_model(model, OPTIONS.config(options, **ctx.peft_fields()))
