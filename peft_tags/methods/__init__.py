"""The registry of fine-tuning methods.

A method is an options dataclass (the keys a recipe may put under ``method:`` beside
``name``; for a method built on a peft config class, derived from it: see :mod:`.options`)
plus a function that turns a backbone-with-head into the model to train, and
optional hooks into the training loop (AdaLoRA's budget allocator, a loss regulariser,
extra checkpoint state, a fix-up after loading). Adding a method is a new module in this
package and one ``register`` call.

Any other peft method (LoHa, LoKr, VeRA, ...) is available by its peft name: its options are
the fields of its peft config class (see :mod:`.peft_any`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Context:
    """What a method may need to know when it is applied."""

    head_name: str | None  # the task head's module name (it trains with every method); None: the task has no head
    total_steps: int = 0  # optimizer steps of the whole run (0: not training, e.g. loading)
    task_type: str = "TOKEN_CLS"  # peft's task type of the model: TOKEN_CLS (a head per token) or CAUSAL_LM
    tokenizer: object = None  # the backbone's tokenizer, where the caller has it (None: checking a skeleton)

    def peft_fields(self, *extra_saved: str) -> dict:
        """The fields of a peft config that the model decides: the head (and ``extra_saved``
        modules) trained in full and saved, and, for a causal language model, its task type (so
        that peft wraps it in its generating class)."""
        saved = ([self.head_name] if self.head_name else []) + list(extra_saved)
        return {"modules_to_save": saved or None, **({"task_type": self.task_type} if self.causal else {})}

    @property
    def causal(self) -> bool:
        return self.task_type == "CAUSAL_LM"


#: what a run of a method saves besides its head: peft adapter files, the whole model, or nothing
SAVES = ("adapter", "model", "head")


@dataclass(frozen=True)
class Method:
    """A fine-tuning method and what the rest of peft-tags needs to know of it, so that no other
    module asks for a method by its name."""

    name: str
    options: type | Callable[[], type]  # the options dataclass, or a function that builds it on first use
    apply: Callable  # apply(model, options, ctx: Context) -> model
    help: str
    saves: str = "adapter"  # one of SAVES: adapter_config.json + adapter_model.safetensors, model/, or the head only
    merge_refusal: str | None = None  # why it cannot be merged into the backbone (it adds computation); None: it can
    quantizable: bool = True  # trains over a frozen backbone, so the backbone may be quantised (QLoRA)
    card_note: str = ""  # what a user of plain peft does first to load the adapter (model card)
    check_steps: Callable | None = None  # check_steps(options, total_steps): raise UserError if the run is too short
    on_step: Callable | None = None  # on_step(model, step): after each optimizer step, before zero_grad
    regularizer: Callable | None = None  # regularizer(model) -> scalar tensor added to the training loss
    state: Callable | None = None  # state(model) -> dict kept with checkpoints and the best weights
    load_state: Callable | None = None  # load_state(model, dict): the inverse of state
    on_load: Callable | None = None  # on_load(model) -> model: after PeftModel.from_pretrained

    @property
    def options_cls(self) -> type:
        """The options dataclass (those derived from a peft config class are built, and peft
        imported, on first use)."""
        return self.options if isinstance(self.options, type) else self.options()


REGISTRY: dict[str, Method] = {}


def register(name: str, options: type | Callable[[], type], help: str, **hooks):
    """Decorator: register ``apply`` as the method ``name`` with its options dataclass (or a
    function that builds it on first use, such as :meth:`.options.PeftOptions.cls`)."""

    def wrap(apply):
        REGISTRY[name] = Method(name, options, apply, help, **hooks)
        return apply

    return wrap


def lookup(name: str) -> Method | None:
    """The method called ``name``: one of ours, else a peft method by its peft name."""
    if name in REGISTRY:
        return REGISTRY[name]
    from . import peft_any

    return peft_any.method(name)


def get(name: str) -> Method:
    method = lookup(name)
    if method is None:
        raise KeyError(name)
    return method


def names() -> list[str]:
    """Every method name a recipe may use: ours first, then the other peft methods."""
    from . import peft_any

    return sorted(REGISTRY) + [n for n in peft_any.names() if n not in REGISTRY]


from . import lora, adalora, ia3, bottleneck, prefix, prompt, full, head_only  # noqa: E402,F401  (registration)
