"""Bottleneck adapters (Houlsby / Pfeiffer), a peft method of ours: see peft_tags.bottleneck."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import Context, register
from ..errors import UserError
from ._common import check_targets, get_peft_model

VARIANTS = ("houlsby", "pfeiffer")
ACTIVATIONS = ("relu", "gelu", "swish", "silu", "tanh")


@dataclass
class BottleneckOptions:
    variant: str = field(default="houlsby", metadata={
        "help": "houlsby: after the attention and the feed-forward output; pfeiffer: after the feed-forward output only",
        "choices": VARIANTS})
    bottleneck_size: int | None = field(default=None, metadata={
        "help": "hidden size of each adapter; null: hidden size / reduction_factor"})
    reduction_factor: float = field(default=16.0, metadata={"help": "hidden size / bottleneck size, when bottleneck_size is null"})
    activation: str = field(default="relu", metadata={"help": "non-linearity: " + ", ".join(ACTIVATIONS), "choices": ACTIVATIONS})
    scaling: float = field(default=1.0, metadata={"help": "multiplies the adapter's output"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    init_std: float = field(default=1e-2, metadata={"help": "std of the down-projection at init (the up-projection starts at zero)"})
    layer_norms: bool = field(default=False, metadata={
        "help": "also train the backbone's LayerNorm weights and biases, as Houlsby et al. do (2 x hidden size each)"})
    target_modules: list[str] | None = field(default=None, metadata={
        "help": "output projections to adapt (name suffixes); null: the variant's sublayers of a known backbone"})

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.bottleneck_size is not None and self.bottleneck_size < 1:
            problems.append(("bottleneck_size", f"must be a positive integer, got {self.bottleneck_size}"))
        if self.reduction_factor <= 0:
            problems.append(("reduction_factor", f"must be > 0, got {self.reduction_factor}"))
        if not 0 <= self.dropout < 1:
            problems.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        if self.init_std <= 0:  # with the up-projection at zero, a zero down-projection would never train
            problems.append(("init_std", f"must be > 0, got {self.init_std}"))
        return problems + check_targets(self.target_modules)


@register("bottleneck", BottleneckOptions, help="bottleneck adapters (Houlsby or Pfeiffer) as a peft method + trained head",
          merge_refusal="adds non-linear layers",
          card_note="`import peft_tags.bottleneck` first: it registers the BOTTLENECK peft type.")
def apply(model, options: BottleneckOptions, ctx: Context):
    from ..bottleneck import BottleneckConfig  # importing it registers the peft type

    config = BottleneckConfig(
        variant=options.variant, bottleneck_size=options.bottleneck_size, reduction_factor=options.reduction_factor,
        activation=options.activation, scaling=options.scaling, dropout=options.dropout, init_std=options.init_std,
        target_modules=None if options.target_modules is None else list(options.target_modules),
        modules_to_save=[ctx.head_name] + (norm_layers(model, ctx.head_name) if options.layer_norms else []),
    )
    return get_peft_model(model, config)


def norm_layers(model, head_name: str) -> list[str]:
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
