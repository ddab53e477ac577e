"""Frozen backbone, only the task head trains: pretrained features + a linear classifier."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from . import Context, register


@dataclass
class HeadOnlyOptions:
    pass


@register("head-only", HeadOnlyOptions, help="frozen backbone; only the task head trains", saves="head")
def apply(model, options: HeadOnlyOptions, ctx: Context):
    if ctx.head_name is None:
        raise UserError("method: head-only trains the task head alone, and this task has none (its backbone writes "
                        "the answer); choose a method that trains the backbone, such as lora")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(ctx.head_name + ".") or name == ctx.head_name)
    return model
