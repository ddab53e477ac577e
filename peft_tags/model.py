"""Build the backbone with its task head, apply a method, and count what trains."""
from __future__ import annotations

import logging
import os
import warnings

import torch

from . import methods
from .errors import UserError

log = logging.getLogger("peft_tags.model")

HEAD_NAME = "classifier"  # the token-classification head of every *ForTokenClassification


def quiet_transformers() -> None:
    """Keep load reports and progress bars of transformers out of the user's log."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*were not initialized from the model checkpoint.*")
    # raised inside transformers when peft wraps a model; nothing a user can act on
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing.*")


def load_tokenizer(backbone_dir: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(backbone_dir)
    except OSError as e:
        raise UserError(f"backbone.name: cannot load a tokenizer from '{backbone_dir}' (not an alias, a local "
                        f"directory, or a hub model reachable from here): {_first_line(e)}") from None
    if not getattr(tok, "is_fast", False):
        raise UserError(f"backbone.name: '{backbone_dir}' has no fast tokenizer; character offsets need one")
    return tok


def build_token_classifier(backbone_dir: str, num_outputs: int, seed: int):
    """A stock ``AutoModelForTokenClassification`` with ``num_outputs`` logits per token."""
    from transformers import AutoModelForTokenClassification

    torch.manual_seed(seed)  # the head's initialisation
    try:
        model = AutoModelForTokenClassification.from_pretrained(
            backbone_dir, num_labels=num_outputs, attn_implementation="sdpa"
        )
    except (OSError, ValueError) as e:
        raise UserError(f"backbone.name: cannot load '{backbone_dir}': {_first_line(e)}") from None
    return model


def check_max_length(model, max_length: int) -> None:
    """backbone.max_length must fit the backbone's position embeddings."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and max_length > limit:
        raise UserError(f"backbone.max_length: {max_length} is longer than this backbone's {limit} positions")


def apply_method(model, method_name: str, options):
    model = methods.get(method_name).apply(model, options, HEAD_NAME)
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError(f"method '{method_name}' left no trainable parameter")
    return model


def is_head_param(name: str) -> bool:
    return f".{HEAD_NAME}." in f".{name}"


def parameter_counts(model) -> dict:
    """Trainable parameters split into adapter (added by a peft method), backbone (original
    weights left trainable, as in full fine-tuning) and head, and their share of all.

    peft keeps a frozen copy of a saved module (``original_module``); it is not counted.
    """
    counts = {"adapter": 0, "backbone": 0, "head": 0}
    total = 0
    added_by_peft = hasattr(model, "peft_config")
    for name, p in model.named_parameters():
        if "original_module" in name:
            continue
        total += p.numel()
        if p.requires_grad:
            kind = "head" if is_head_param(name) else ("adapter" if added_by_peft else "backbone")
            counts[kind] += p.numel()
    trainable = sum(counts.values())
    return {**counts, "trainable": trainable, "all": total, "trainable_pct": round(100.0 * trainable / total, 4)}


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
