"""Frozen backbone, only the task head trains: pretrained features + a linear classifier."""
from __future__ import annotations

from dataclasses import dataclass

from . import Context, register


@dataclass
class HeadOnlyOptions:
    pass


@register("head-only", HeadOnlyOptions, help="frozen backbone; only the task head trains", saves="head")
def apply(model, options: HeadOnlyOptions, ctx: Context):
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(ctx.head_name + ".") or name == ctx.head_name)
    return model
