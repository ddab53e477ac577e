"""Full fine-tuning: every backbone weight trains, with the head."""
from __future__ import annotations

from dataclasses import dataclass

from . import Context, register


@dataclass
class FullOptions:
    pass


@register("full", FullOptions, help="full fine-tuning of backbone and head")
def apply(model, options: FullOptions, ctx: Context):
    for p in model.parameters():
        p.requires_grad_(True)
    return model
