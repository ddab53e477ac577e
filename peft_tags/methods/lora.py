"""LoRA through peft: low-rank updates on chosen linear layers; the task head trains fully."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import Context, register
from ._common import get_peft_model


@dataclass
class LoraOptions:
    r: int = field(default=8, metadata={"help": "rank of the update matrices"})
    alpha: float = field(default=16.0, metadata={"help": "scaling numerator: the update is (alpha/r)·BA"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the LoRA input"})
    target_modules: list[str] = field(
        default_factory=lambda: ["query", "value"],
        metadata={"help": "names (suffixes) of the linear layers to wrap, e.g. query, key, value, dense"},
    )

    def check(self) -> list[tuple[str, str]]:
        """Return (key, problem) pairs; empty when the options are valid."""
        problems = []
        if self.r < 1:
            problems.append(("r", f"must be a positive integer, got {self.r}"))
        if self.alpha <= 0:
            problems.append(("alpha", f"must be > 0, got {self.alpha}"))
        if not 0 <= self.dropout < 1:
            problems.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        if not self.target_modules:
            problems.append(("target_modules", "must name at least one module"))
        return problems


@register("lora", LoraOptions, help="LoRA adapters (peft) on the chosen linear layers + trained head")
def apply(model, options: LoraOptions, ctx: Context):
    from peft import LoraConfig

    config = LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout,
                        target_modules=list(options.target_modules), modules_to_save=[ctx.head_name])
    return get_peft_model(model, config)
