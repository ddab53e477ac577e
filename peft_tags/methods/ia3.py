"""IA3 through peft: learned vectors that rescale keys, values and the feed-forward input."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import Context, register
from ._common import check_targets, get_peft_model


@dataclass
class IA3Options:
    target_modules: list[str] | None = field(default=None, metadata={
        "help": "layers whose activations are rescaled; null: peft's defaults (BERT: key, value, output.dense)"})
    feedforward_modules: list[str] | None = field(default=None, metadata={
        "help": "those of target_modules scaled on their input (feed-forward); null: peft's defaults"})

    def check(self) -> list[tuple[str, str]]:
        problems = check_targets(self.target_modules)
        if self.feedforward_modules is not None:
            if self.target_modules is None:
                problems.append(("feedforward_modules", "needs method.target_modules (they must be a subset of it)"))
            elif self.target_modules:  # an empty target_modules is its own problem, reported above
                extra = [m for m in self.feedforward_modules if m not in self.target_modules]
                if extra:
                    problems.append(("feedforward_modules", f"{extra} not in method.target_modules"))
        return problems


@register("ia3", IA3Options, help="IA3 (peft): learned rescaling of keys, values and feed-forward activations")
def apply(model, options: IA3Options, ctx: Context):
    from peft import IA3Config

    targets = None if options.target_modules is None else list(options.target_modules)
    ff = None if options.feedforward_modules is None else list(options.feedforward_modules)
    if targets is not None and ff is None:
        ff = []
    return get_peft_model(model, IA3Config(target_modules=targets, feedforward_modules=ff, **ctx.peft_fields()))
