"""AdaLoRA through peft, with its budget allocator wired into the training loop.

peft leaves three things to the user, and each is easy to get wrong; here the runner does
them:

- ``total_step`` comes from the run's schedule (epochs x optimizer steps per epoch, after
  gradient accumulation and sharding over processes);
- ``update_and_allocate`` runs once per *optimizer* step, after the step and before the
  gradients are zeroed (gradients are already averaged over processes by then, so every
  process computes the same ranks);
- the orthogonal regulariser is added to our loss (peft adds it only to a loss that the
  model computes itself).

The recipe sets the initial and the target average rank; the schedule of the budget is given
as fractions of the run, so it stays right when epochs or batch size change.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError
from . import Context, register
from ._common import check_targets, get_peft_model


@dataclass
class AdaLoraOptions:
    init_r: int = field(default=12, metadata={"help": "rank every wrapped matrix starts with"})
    target_r: int = field(default=8, metadata={"help": "average rank left when the budget is spent"})
    alpha: float = field(default=32.0, metadata={"help": "scaling numerator of the update"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the adapter input"})
    target_modules: list[str] | None = field(default=None, metadata={
        "help": "names (suffixes) of the linear layers to wrap; null: peft's defaults for the backbone"})
    budget_start: float = field(default=0.1, metadata={
        "help": "fraction of the optimizer steps trained at init_r before ranks are pruned (peft: tinit)"})
    budget_end: float = field(default=0.7, metadata={
        "help": "fraction of the optimizer steps after which the ranks are fixed (peft: total_step - tfinal)"})
    allocate_every: int = field(default=10, metadata={"help": "optimizer steps between two budget allocations (peft: deltaT)"})
    beta1: float = field(default=0.85, metadata={"help": "EMA factor of the importance scores"})
    beta2: float = field(default=0.85, metadata={"help": "EMA factor of their uncertainty"})
    orth_reg_weight: float = field(default=0.5, metadata={"help": "weight of the orthogonal regulariser in the loss"})

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.init_r < 1:
            problems.append(("init_r", f"must be a positive integer, got {self.init_r}"))
        if self.target_r < 1 or 1 <= self.init_r < self.target_r:  # against init_r only when init_r itself is valid
            problems.append(("target_r", f"must be in [1, init_r={self.init_r}], got {self.target_r}"))
        if self.alpha <= 0:
            problems.append(("alpha", f"must be > 0, got {self.alpha}"))
        if not 0 <= self.dropout < 1:
            problems.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        if not 0 <= self.budget_start < 1:  # the key at fault: budget_end is checked against a valid start only
            problems.append(("budget_start", f"must be in [0, 1), got {self.budget_start}"))
        elif not self.budget_start < self.budget_end <= 1:
            problems.append(("budget_end", f"must satisfy 0 <= budget_start < budget_end <= 1, got "
                                           f"{self.budget_start} and {self.budget_end}"))
        if self.allocate_every < 1:
            problems.append(("allocate_every", f"must be a positive integer, got {self.allocate_every}"))
        for key in ("beta1", "beta2"):
            if not 0 < getattr(self, key) < 1:
                problems.append((key, f"must be in (0, 1), got {getattr(self, key)}"))
        if self.orth_reg_weight < 0:
            problems.append(("orth_reg_weight", f"must be >= 0, got {self.orth_reg_weight}"))
        return problems + check_targets(self.target_modules)


def schedule(options: AdaLoraOptions, total_steps: int) -> tuple[int, int, int]:
    """peft's (tinit, tfinal, total_step) for a run of ``total_steps`` (>= 2) optimizer steps.

    peft scores importance only at steps before total_step - tfinal and fixes the ranks at that
    step, so it must come at step 2 or later (a final allocation without any score fails), and
    after tinit. A run too short for the fractions gets one scoring step and one allocation."""
    if total_steps < 2:
        raise UserError(f"method: adalora needs at least 2 optimizer steps (one to score importance, one to allocate "
                        f"the budget); this run has {total_steps}: train longer or on more examples")
    total = total_steps
    tinit = int(options.budget_start * total)
    end = max(int(options.budget_end * total), tinit + 1, 2)
    end = min(end, total)
    if tinit >= end:
        tinit = end - 1
    return tinit, total - end, total


def _tuner(model):
    return model.base_model  # the AdaLoraModel inside the PeftModel


def _on_step(model, step: int) -> None:
    """After optimizer step ``step`` (1-based); ranks are masked in place on lora_E.

    peft fixes the ranks at exactly step total_step - tfinal. Where that step was skipped
    (fp16 loss scaling skips steps that overflow) the allocation is made up first: the scores
    are still there (peft clears them at the final allocation)."""
    tuner = _tuner(model)
    config = tuner.peft_config[tuner.trainable_adapter_name]
    boundary = config.total_step - config.tfinal
    if step > boundary and tuner.rankallocator.ipt:
        tuner.update_and_allocate(boundary)
    tuner.update_and_allocate(step)


def _regularizer(model):
    """peft's orthogonal regulariser: mean over A, B of ||AAᵀ - I||_F (resp. BᵀB)."""
    import torch

    tuner = _tuner(model)
    name = tuner.trainable_adapter_name
    weight = tuner.peft_config[name].orth_reg_weight
    terms = []
    for n, p in tuner.model.named_parameters():
        if ("lora_A" in n or "lora_B" in n) and f".{name}" in n and p.requires_grad:
            cov = p @ p.T if "lora_A" in n else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)))
    if not terms or weight == 0:
        return None
    return weight * torch.stack(terms).mean()


def _state(model) -> dict:
    """The allocator's running scores and the current rank pattern (for resume and best weights)."""
    tuner = _tuner(model)
    alloc = tuner.rankallocator
    config = tuner.peft_config[tuner.trainable_adapter_name]
    copy = lambda d: {k: v.detach().cpu().clone() for k, v in d.items()}  # noqa: E731
    pattern = config.rank_pattern
    return {"ipt": copy(alloc.ipt), "exp_avg_ipt": copy(alloc.exp_avg_ipt), "exp_avg_unc": copy(alloc.exp_avg_unc),
            "rank_pattern": None if pattern is None else {k: list(map(bool, v)) for k, v in pattern.items()}}


def _load_state(model, state: dict) -> None:
    tuner = _tuner(model)
    alloc = tuner.rankallocator
    device = next(tuner.parameters()).device
    for key in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
        setattr(alloc, key, {k: v.to(device) for k, v in state[key].items()})
    config = tuner.peft_config[tuner.trainable_adapter_name]
    config.rank_pattern = state["rank_pattern"]
    if state["rank_pattern"] is not None:
        # the weights were saved under this pattern; ranks it drops must read as zero
        alloc.mask_using_rank_pattern(tuner.model, state["rank_pattern"])


@register("adalora", AdaLoraOptions, help="AdaLoRA (peft): LoRA whose ranks are reallocated by importance during training",
          on_step=_on_step, regularizer=_regularizer, state=_state, load_state=_load_state,
          check_steps=schedule)
def apply(model, options: AdaLoraOptions, ctx: Context):
    from peft import AdaLoraConfig

    tinit, tfinal, total = schedule(options, ctx.total_steps)
    config = AdaLoraConfig(
        init_r=options.init_r, target_r=options.target_r, lora_alpha=options.alpha, lora_dropout=options.dropout,
        target_modules=None if options.target_modules is None else list(options.target_modules),
        tinit=tinit, tfinal=tfinal, deltaT=options.allocate_every, beta1=options.beta1, beta2=options.beta2,
        orth_reg_weight=options.orth_reg_weight, total_step=total, modules_to_save=[ctx.head_name],
    )
    return get_peft_model(model, config)
