"""A run's resume state in ``<output.dir>.work``: numbered checkpoints and the best-on-dev weights.

A checkpoint holds the trainable weights with the method's own state, the optimizer, schedule
and loss scale, every process's random generators and the loop state (``state.json``), all as
safetensors and JSON (:mod:`.statefile`, never pickle). Each process writes into
``checkpoint-N.tmp``; the main one publishes it as ``checkpoint-N`` in one fsynced rename and
then prunes what is older, so a kill at any moment leaves a complete checkpoint to resume from
(:func:`peft_tags.preflight.latest_checkpoint`). The best weights live in ``best-<step>``,
published the same way; the loop state names the one it means.
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


def write(acc, work: Path, state: dict, weights, optimizer, scheduler) -> None:
    """Write checkpoint number ``state['checkpoints'] + 1`` (every process calls this; ``weights``
    is a function, called on the main process only)."""
    state["checkpoints"] += 1
    tmp, final = work / f"checkpoint-{state['checkpoints']}.tmp", work / f"checkpoint-{state['checkpoints']}"
    acc.wait_for_everyone()
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    acc.wait_for_everyone()
    save_state(rng_state(), tmp / f"rng{acc.process_index}")  # dropout differs per rank
    acc.wait_for_everyone()
    if acc.is_main_process:
        save_state(weights(), tmp / "trainable")
        save_state({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": acc.scaler.state_dict() if acc.scaler is not None else None}, tmp / "optim")
        owned.write_json_atomic(tmp / "state.json", state)
        owned.fsync_dir(tmp)
        if final.exists():  # left by an attempt killed after this point; same content
            shutil.rmtree(final)
        os.replace(tmp, final)
        owned.fsync_dir(work)
        _prune(work, state, keep=final.name)
    acc.wait_for_everyone()


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


def restore(ckpt: Path, model, load_weights, optimizer, scheduler, scaler, rank: int) -> dict:
    """Load checkpoint ``ckpt`` into the model (through ``load_weights``), optimizer, schedule and
    loss scale, and this process's random generators; return the loop state. One UserError line
    for a checkpoint that does not fit or does not load."""
    weights = load_state(ckpt / "trainable", "training.resume")
    params = weights.get("params") if isinstance(weights, dict) else None
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in (params or {})]
    if missing:
        raise UserError(f"training.resume: checkpoint in '{ckpt}' does not match this recipe (no '{missing[0]}')")
    try:
        load_weights(weights)
        optim = load_state(ckpt / "optim", "training.resume")
        optimizer.load_state_dict(optim["optimizer"])
        scheduler.load_state_dict(optim["scheduler"])
        if optim.get("scaler") is not None and scaler is not None:
            scaler.load_state_dict(optim["scaler"])
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
