"""Full fine-tuning: every backbone weight trains, with the head."""
from __future__ import annotations

from dataclasses import dataclass

from . import Context, register

NAME = "full"


@dataclass
class FullOptions:
    pass


@register(NAME, FullOptions, help="full fine-tuning of backbone and head", saves="model", quantizable=False)
def apply(model, options: FullOptions, ctx: Context):
    for p in model.parameters():
        p.requires_grad_(True)
    return model
