"""Bottleneck adapters (Houlsby / Pfeiffer), a peft method of ours: see peft_tags.tuners.bottleneck.

The options are the fields of :class:`~peft_tags.tuners.bottleneck.BottleneckConfig` (see
:mod:`.options`), and ``layer_norms``, which adds the backbone's normalisation layers to the
modules the adapter trains and saves in full.
"""
from __future__ import annotations

from . import Context, register
from ..errors import UserError
from ._common import get_peft_model
from .options import PeftOptions, own, peft

OPTIONS = PeftOptions("BottleneckOptions", "peft_tags.tuners.bottleneck.BottleneckConfig", __name__, {
    "variant": peft("variant", "houlsby"),  # choices: the config field's
    "bottleneck_size": peft("bottleneck_size", None, positive=True),
    "reduction_factor": peft("reduction_factor", 16.0, gt=0),
    "activation": peft("activation", "relu"),  # choices: the config field's
    "scaling": peft("scaling", 1.0),
    "dropout": peft("dropout", 0.0, ge=0, lt=1),
    # with the up-projection at zero, a zero down-projection would never train
    "init_std": peft("init_std", 1e-2, gt=0),
    "layer_norms": own(bool, False, "also train the backbone's LayerNorm weights and biases, as Houlsby et al. do "
                                    "(2 x hidden size each)"),
    "target_modules": peft("target_modules", None, type=list[str] | None, nonempty=True,
                           help="output projections to adapt (name suffixes); null: the variant's sublayers of a "
                                "known backbone"),
})
__getattr__ = OPTIONS.module_getattr  # BottleneckOptions, the options dataclass


@register("bottleneck", OPTIONS.cls, help="bottleneck adapters (Houlsby or Pfeiffer) as a peft method + trained head",
          merge_refusal="adds non-linear layers",
          card_note="`import peft_tags.tuners.bottleneck` first: it registers the BOTTLENECK peft type.")
def apply(model, options, ctx: Context):
    norms = norm_layers(model, ctx.head_name) if options.layer_norms else []
    return get_peft_model(model, OPTIONS.config(options, **ctx.peft_fields(*norms)))


def norm_layers(model, head_name: str | None) -> list[str]:
    """The full names of the backbone's normalisation layers (LayerNorm, RMSNorm), head excluded.

    Full names, because peft picks ``modules_to_save`` by name suffix: ``output.LayerNorm``
    alone would also pick ``attention.output.LayerNorm``."""
    import torch

    names = [n for n, m in model.named_modules()
             if (isinstance(m, torch.nn.LayerNorm) or type(m).__name__.endswith("RMSNorm"))
             and n.split(".")[0] != head_name]
    if not names:
        raise UserError("method.layer_norms: this backbone has no LayerNorm or RMSNorm layers to train")
    return names
