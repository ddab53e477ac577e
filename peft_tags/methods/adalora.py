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
as fractions of the run, so it stays right when epochs or batch size change. The other options
are peft's :class:`~peft.AdaLoraConfig` fields under the recipe's names (``alpha`` is
``lora_alpha``, ``dropout`` is ``lora_dropout``, ``allocate_every`` is ``deltaT``); see
:mod:`.options`.
"""
from __future__ import annotations

from ..errors import UserError
from . import Context, register
from ._common import get_peft_model
from .options import PeftOptions, own, peft

#: the run length (optimizer steps) at which ``check()`` builds peft's config; the real one comes at apply
CHECK_STEPS = 1000


def _check(options) -> list[tuple[str, str]]:
    """The checks across keys: target_r against init_r, budget_end against budget_start."""
    problems = []
    if options.target_r < 1 or 1 <= options.init_r < options.target_r:  # against init_r only when init_r is valid
        problems.append(("target_r", f"must be in [1, init_r={options.init_r}], got {options.target_r}"))
    if 0 <= options.budget_start < 1 and not options.budget_start < options.budget_end <= 1:
        problems.append(("budget_end", f"must satisfy 0 <= budget_start < budget_end <= 1, got "
                                       f"{options.budget_start} and {options.budget_end}"))
    return problems


def _schedule_fields(options, total_steps: int = CHECK_STEPS) -> dict:
    """peft's schedule fields (tinit, tfinal, total_step) for a run of ``total_steps`` optimizer steps."""
    tinit, tfinal, total = schedule(options, total_steps)
    return {"tinit": tinit, "tfinal": tfinal, "total_step": total}


OPTIONS = PeftOptions("AdaLoraOptions", "peft.AdaLoraConfig", __name__, {
    "init_r": peft("init_r", 12, positive=True),
    "target_r": peft("target_r", 8),  # checked against init_r (_check)
    "alpha": peft("lora_alpha", 32.0, type=float, gt=0),
    "dropout": peft("lora_dropout", 0.1, ge=0, lt=1),
    "target_modules": peft("target_modules", None, type=list[str] | None, nonempty=True,
                           help="names (suffixes) of the linear layers to wrap; null: peft's defaults for the backbone"),
    "budget_start": own(float, 0.1, "fraction of the optimizer steps trained at init_r before ranks are pruned "
                                    "(peft: tinit)", ge=0, lt=1),
    "budget_end": own(float, 0.7, "fraction of the optimizer steps after which the ranks are fixed "
                                  "(peft: total_step - tfinal)"),  # checked against budget_start (_check)
    "allocate_every": peft("deltaT", 10, positive=True),
    # peft gives both betas the same help; these tell them apart
    "beta1": peft("beta1", 0.85, gt=0, lt=1, help="EMA factor of the importance scores"),
    "beta2": peft("beta2", 0.85, gt=0, lt=1, help="EMA factor of their uncertainty"),
    "orth_reg_weight": peft("orth_reg_weight", 0.5, ge=0),
}, check=_check, fixed=_schedule_fields)
__getattr__ = OPTIONS.module_getattr  # AdaLoraOptions, the options dataclass


def schedule(options, total_steps: int) -> tuple[int, int, int]:
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


@register("adalora", OPTIONS.cls, help="AdaLoRA (peft): LoRA whose ranks are reallocated by importance during training",
          on_step=_on_step, regularizer=_regularizer, state=_state, load_state=_load_state,
          check_steps=schedule)
def apply(model, options, ctx: Context):
    config = OPTIONS.config(options, **_schedule_fields(options, ctx.total_steps), **ctx.peft_fields())
    return get_peft_model(model, config)
