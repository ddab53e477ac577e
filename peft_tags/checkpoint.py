"""A run's resume state in ``<output.dir>.work``: numbered checkpoints and the best-on-dev weights.

A checkpoint is what ``accelerator.save_state`` writes (so DeepSpeed and FSDP save their own
shards through it): the model's weights, kept to the trainable ones by a save hook (the frozen
backbone is the backbone's, not the run's), the optimizer, the loss scale and every process's
random generators; all of it loads weights-only (data, never code). Beside them peft-tags writes
``run_state``: the schedule and the method's own state (AdaLoRA: scores and rank pattern); the random generators once
more in its own safetensors/JSON form (:mod:`.statefile`; accelerate's own loader forgives a
missing file, and a resume that is not bit-exact must not pass for one) and the loop state
(``state.json``). Each process writes into ``checkpoint-N.tmp``; the main one publishes it as
``checkpoint-N`` in one fsynced rename and then prunes what is older, so a kill at any moment
leaves a complete checkpoint to resume from (:func:`peft_tags.preflight.latest_checkpoint`).
The best weights live in ``best-<step>``, published the same way; the loop state names the one
it means.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from . import owned
from .errors import UserError
from .preflight import CHECKPOINT
from .statefile import load_state, save_state

#: peft-tags' own part of a checkpoint (safetensors + JSON): the method's state and the schedule.
#: (Accelerate would keep a registered schedule as a pickle that it loads with full unpickling.)
RUN_STATE = "run_state"


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trainable(model, state: dict[str, torch.Tensor]) -> None:
    """Copy a :func:`trainable_state` back into the model's parameters."""
    for n, p in model.named_parameters():
        if n in state:
            p.copy_(state[n])


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def keep_trainable_weights(acc) -> None:
    """Have ``acc.save_state`` write only the weights that train (a hook on the state dicts it
    is about to save); the frozen rest comes from the backbone when the run is rebuilt."""
    def hook(models, weights, output_dir):
        for i, model in enumerate(models[: len(weights)]):
            keep = {n for n, p in model.named_parameters() if p.requires_grad}
            weights[i] = {k: v for k, v in weights[i].items() if k in keep}

    acc.register_save_state_pre_hook(hook)


def write(acc, work: Path, state: dict, method_state, scheduler) -> None:
    """Write checkpoint number ``state['checkpoints'] + 1`` (every process calls this;
    ``method_state`` is a function, called on the main process only)."""
    state["checkpoints"] += 1
    tmp, final = work / f"checkpoint-{state['checkpoints']}.tmp", work / f"checkpoint-{state['checkpoints']}"
    acc.wait_for_everyone()
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    acc.wait_for_everyone()
    with _quiet_accelerate():
        acc.save_state(str(tmp))  # weights (trainable), optimizer, scaler, random states
    save_state(rng_state(), tmp / f"rng{acc.process_index}")  # dropout differs per rank
    acc.wait_for_everyone()
    if acc.is_main_process:
        save_state({"method": method_state(), "scheduler": scheduler.state_dict()}, tmp / RUN_STATE)
        owned.write_json_atomic(tmp / "state.json", state)
        owned.fsync_dir(tmp)
        if final.exists():  # left by an attempt killed after this point; same content
            shutil.rmtree(final)
        os.replace(tmp, final)
        owned.fsync_dir(work)
        _prune(work, state, keep=final.name)
    acc.wait_for_everyone()


class _quiet_accelerate:
    """accelerate logs every file it saves or loads at INFO; the run's log says 'checkpoint' once."""

    def __enter__(self):
        import logging

        self.logger = logging.getLogger("accelerate")
        self.level = self.logger.level
        self.logger.setLevel(logging.WARNING)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def _prune(work: Path, state: dict, keep: str) -> None:
    """Remove older checkpoints, unfinished ones and best weights the state no longer names."""
    keep_best = f"best-{state['best']['step']}" if state["best"] else None
    for name in sorted(os.listdir(work)):
        stale = ((CHECKPOINT.fullmatch(name) and name != keep) or name.endswith(".tmp")
                 or (name.startswith("best-") and name != keep_best))
        if stale and (work / name).is_dir() and not (work / name).is_symlink():
            shutil.rmtree(work / name)


def save_best(work: Path, step: int, weights: dict) -> None:
    name = f"best-{step}"
    tmp = work / (name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_state(weights, tmp / "weights")
    owned.fsync_dir(tmp)
    if (work / name).exists():
        shutil.rmtree(work / name)
    os.replace(tmp, work / name)
    owned.fsync_dir(work)


def load_best(work: Path, step: int) -> dict:
    return load_state(work / f"best-{step}" / "weights", "best weights")


def restore(ckpt: Path, acc, load_method_state, scheduler) -> dict:
    """Load checkpoint ``ckpt`` through ``acc.load_state`` (weights, optimizer, schedule, loss
    scale, random states), the method's state (through ``load_method_state``) and this process's
    random generators; return the loop state. One UserError line for a checkpoint that does not
    fit or does not load."""
    from safetensors import safe_open

    rank = acc.process_index
    weights = ckpt / "model.safetensors"
    if weights.is_file():  # what save_state wrote for a model it saves itself (not DeepSpeed's or FSDP's)
        try:
            with safe_open(str(weights), "pt") as f:
                saved = set(f.keys())
        except (OSError, ValueError, RuntimeError) as e:
            raise UserError(f"training.resume: the checkpoint '{ckpt}' does not load: {e}") from None
        missing = [n for n, p in acc._models[0].named_parameters() if p.requires_grad and n not in saved]
        if missing:
            raise UserError(f"training.resume: checkpoint in '{ckpt}' does not match this recipe (no '{missing[0]}')")
    try:
        with _quiet_accelerate():
            acc.load_state(str(ckpt), strict=False)  # only the trainable weights are there
        own = load_state(ckpt / RUN_STATE, "training.resume")
        scheduler.load_state_dict(own["scheduler"])
        if own.get("method") is not None:
            load_method_state(own["method"])
        state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    except UserError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"training.resume: the checkpoint '{ckpt}' does not load: {text}") from None
    if not (ckpt / f"rng{rank}.json").is_file():
        raise UserError(f"training.resume: '{ckpt}' holds no random state for process {rank} "
                        "(was it written with another number of processes?)")
    try:
        set_rng_state(load_state(ckpt / f"rng{rank}", "training.resume"))
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"training.resume: the random state in '{ckpt}' does not load: {e}") from None
    return state
