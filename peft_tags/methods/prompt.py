"""Prompt tuning through peft: learned embeddings in front of the title, at the input only.

peft prepends the virtual tokens to the input, so the model's output has that many extra
positions at the front; the runner keeps the last positions, one per real token
(:func:`peft_tags.model.token_logits`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import Context, register
from ._common import allow_disable_adapter

INITS = ("random", "vocab")


@dataclass
class PromptOptions:
    num_virtual_tokens: int = field(default=20, metadata={"help": "learned input embeddings put before the title"})
    init: str = field(default="vocab", metadata={
        "help": "random, or vocab: start from the embeddings of randomly drawn vocabulary tokens", "choices": INITS})

    def check(self) -> list[tuple[str, str]]:
        if self.num_virtual_tokens < 1:
            return [("num_virtual_tokens", f"must be a positive integer, got {self.num_virtual_tokens}")]
        return []


@register("prompt", PromptOptions, help="prompt tuning: learned input embeddings before the title + trained head",
          on_load=allow_disable_adapter, merge_refusal="adds input embeddings")
def apply(model, options: PromptOptions, ctx: Context):
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    init = PromptTuningInit.SAMPLE_VOCAB if options.init == "vocab" else PromptTuningInit.RANDOM
    config = PromptTuningConfig(task_type=TaskType(ctx.task_type), num_virtual_tokens=options.num_virtual_tokens,
                                prompt_tuning_init=init)
    return allow_disable_adapter(get_peft_model(model, config))
