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


#: the models a task trains (``Task.model_kind``): a stock token classifier whose head is the
#: task's, or a stock causal language model that writes its answer (no head of its own)
KINDS = ("token", "causal")


def auto_class(kind: str):
    """The transformers auto class of a model kind."""
    import transformers

    return transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModelForTokenClassification


def peft_task_type(kind: str) -> str:
    return "CAUSAL_LM" if kind == "causal" else "TOKEN_CLS"


def build_token_classifier(backbone_dir: str, num_outputs: int, seed: int, quantization: str = "none",
                           double_quantization: bool = True, compute_dtype: str = "float32", device=None,
                           gradient_checkpointing: bool = False, kind: str = "token"):
    """A stock ``AutoModelForTokenClassification`` with ``num_outputs`` logits per token (``kind``
    causal: a stock ``AutoModelForCausalLM``, ``num_outputs`` unused).

    ``quantization`` (nf4, fp4, int8) loads the frozen backbone through bitsandbytes, onto
    ``device`` (default: the current GPU, else the CPU); the head stays in full precision.
    ``gradient_checkpointing``: see :func:`enable_gradient_checkpointing` (before a method wraps
    the model, as peft expects)."""
    torch.manual_seed(seed)  # the head's initialisation
    kwargs = {} if kind == "causal" else {"num_labels": num_outputs}
    if quantization != "none":
        kwargs.update({"quantization_config": quantization_config(quantization, double_quantization, compute_dtype, kind),
                       "device_map": {"": _quantized_device(device)}})
    try:
        model = auto_class(kind).from_pretrained(backbone_dir, attn_implementation="sdpa", **kwargs)
    except (OSError, ValueError) as e:
        raise UserError(f"backbone.name: cannot load '{backbone_dir}': {_first_line(e)}") from None
    if quantization != "none":
        from peft import prepare_model_for_kbit_training

        # frozen weights stay quantised; layer norms and the head in float32. Checkpointing, if asked
        # for, is turned on below as for any backbone: peft's way, non-reentrant, without the
        # deprecated transformers call it would make
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        _no_cpu_weight_packing(model)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def enable_gradient_checkpointing(model) -> None:
    """Checkpoint every layer of a transformers backbone: its activations are recomputed in the
    backward pass instead of kept (training mode only). Non-reentrant (``use_reentrant=False``),
    so gradients reach adapters inside frozen or quantised layers without the inputs requiring
    grad; transformers (and peft, when it wraps the model) hook the input embeddings to require
    grad anyway, as peft's ``prepare_model_for_kbit_training`` does. Raises UserError for a
    backbone without checkpointing."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"training.gradient_checkpointing: this backbone ({type(model).__name__}) cannot checkpoint "
                        "its layers; set training.gradient_checkpointing: false")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers' new name; the old one warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def is_checkpointing(model) -> bool:
    """Whether any layer of ``model`` (peft-wrapped or not) checkpoints its activations."""
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def _no_cpu_weight_packing(model) -> None:
    """Keep bitsandbytes' 4-bit weights in their trained layout on CPUs with AVX512-BF16.

    There bitsandbytes re-packs a layer's weights in place at its first forward pass without
    gradients (an evaluation), for a bf16 inference kernel. Training after that fails (an
    in-place add on a tensor autograd needs), and the kernel computes differently from the
    one training used, so evaluation and prediction use the trained layout too."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _quantized_device(device):
    if device is not None:
        device = torch.device(device)
        return device.index if device.type == "cuda" and device.index is not None else str(device)
    return torch.cuda.current_device() if torch.cuda.is_available() else "cpu"


def quantization_config(quantization: str, double_quantization: bool, compute_dtype: str, kind: str = "token"):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("backbone.quantization: needs bitsandbytes (pip install 'peft-tags[quantization]')") from None
    from transformers import BitsAndBytesConfig

    skip = [HEAD_NAME] if kind == "token" else ["lm_head"]  # the task head (the word output) stays in full precision
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantization,
                              bnb_4bit_use_double_quant=double_quantization,
                              bnb_4bit_compute_dtype=getattr(torch, compute_dtype), llm_int8_skip_modules=skip)


def check_max_length(model, max_length: int) -> None:
    """backbone.max_length (plus any virtual tokens of prompt tuning) must fit the position embeddings."""
    limit = getattr(model.config, "max_position_embeddings", None)
    virtual = _input_virtual_tokens(model)
    if limit is not None and max_length + virtual > limit:
        extra = f" plus {virtual} virtual tokens of method.num_virtual_tokens" if virtual else ""
        raise UserError(f"backbone.max_length: {max_length}{extra} is longer than this backbone's {limit} positions")


def _input_virtual_tokens(model) -> int:
    """Virtual tokens a peft prompt method puts in front of the input (not prefix tuning's)."""
    config = getattr(model, "peft_config", {}).get("default")
    if config is None or not getattr(config, "is_prompt_learning", False) or config.peft_type == "PREFIX_TUNING":
        return 0
    return config.num_virtual_tokens


def token_logits(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The logits of the real tokens: prompt methods prepend virtual positions to the output."""
    return logits[:, logits.shape[1] - input_ids.shape[1]:] if logits.shape[1] != input_ids.shape[1] else logits


def apply_method(model, method_name: str, options, total_steps: int = 0, kind: str = "token", tokenizer=None):
    from .methods import Context

    checkpointing = is_checkpointing(model)
    ctx = Context(head_name=HEAD_NAME if kind == "token" else None, total_steps=total_steps, task_type=peft_task_type(kind),
                  tokenizer=tokenizer)
    try:
        model = methods.get(method_name).apply(model, options, ctx)
    except ValueError as e:  # peft's prompt methods that pass a cache between layers refuse checkpointing
        if checkpointing and "checkpointing" in str(e):
            raise UserError(f"training.gradient_checkpointing: method '{method_name}' cannot train with it "
                            f"({_first_line(e)}); set training.gradient_checkpointing: false") from None
        raise
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
        quant = getattr(p, "quant_state", None)  # a bitsandbytes 4-bit weight stores two values per byte
        n = quant.shape.numel() if quant is not None else p.numel()
        total += n
        if p.requires_grad:
            kind = "head" if is_head_param(name) else ("adapter" if added_by_peft else "backbone")
            counts[kind] += n
    trainable = sum(counts.values())
    return {**counts, "trainable": trainable, "all": total, "trainable_pct": round(100.0 * trainable / total, 4)}


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
