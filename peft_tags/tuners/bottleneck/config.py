"""The configuration of bottleneck adapters (peft type ``BOTTLENECK``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from torch import nn

from peft.config import PeftConfig
from peft.utils.peft_types import PeftType

NAME = "bottleneck"
VARIANTS = ("houlsby", "pfeiffer")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "silu": nn.SiLU, "tanh": nn.Tanh}


@dataclass
class BottleneckConfig(PeftConfig):
    """Configuration of bottleneck adapters; see :mod:`peft_tags.tuners.bottleneck`.

    ``choices`` in a field's metadata lists its valid values (``__post_init__`` refuses others).
    """

    variant: str = field(default="houlsby", metadata={
        "help": "houlsby (attention and feed-forward) or pfeiffer (feed-forward only)", "choices": VARIANTS})
    bottleneck_size: Optional[int] = field(default=None, metadata={"help": "hidden size m of the adapter; null: d / reduction_factor"})
    reduction_factor: float = field(default=16.0, metadata={"help": "m = d / reduction_factor when bottleneck_size is null"})
    activation: str = field(default="relu", metadata={
        "help": "non-linearity: " + ", ".join(ACTIVATIONS), "choices": tuple(ACTIVATIONS)})
    scaling: float = field(default=1.0, metadata={"help": "s: multiplies the adapter's output"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    init_std: float = field(default=1e-2, metadata={"help": "std of the down-projection at init"})
    init_weights: bool = field(default=True, metadata={"help": "up-projection starts at zero (identity adapter); false: random"})
    target_modules: Optional[Union[list[str], str]] = field(default=None, metadata={
        "help": "modules (name suffixes, or one regex) to adapt; null: the variant's sublayers for known backbones"})
    exclude_modules: Optional[Union[list[str], str]] = field(default=None, metadata={"help": "modules not to adapt"})
    modules_to_save: Optional[list[str]] = field(default=None, metadata={"help": "modules trained and saved in full (the task head)"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.BOTTLENECK
        if isinstance(self.target_modules, (list, tuple)):
            self.target_modules = set(self.target_modules)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.bottleneck_size is not None and self.bottleneck_size < 1:
            raise ValueError(f"bottleneck_size must be >= 1, got {self.bottleneck_size}")
        if self.reduction_factor <= 0:
            raise ValueError(f"reduction_factor must be > 0, got {self.reduction_factor}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def size_for(self, d: int) -> int:
        """The adapter's hidden size m for a projection of width ``d``."""
        return self.bottleneck_size or max(1, int(round(d / self.reduction_factor)))
