"""Helpers shared by the methods that wrap a model with peft."""
from __future__ import annotations

from ..errors import UserError


def linear_layer_names(model) -> list[str]:
    import torch

    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def get_peft_model(model, config, key: str = "method.target_modules"):
    """``peft.get_peft_model`` with a clear error when no layer matches the targets."""
    from peft import get_peft_model as wrap

    targets = getattr(config, "target_modules", None)
    try:
        return wrap(model, config)
    except (ValueError, KeyError, TypeError) as e:  # peft raises ValueError or NoMatchingPeftModuleError, by version
        text = str(e)
        if "wrap linear layers" in text or ("Target module" in text and "is not supported" in text):
            raise UserError(f"{key}: {text.splitlines()[0]}") from None
        if "not found in the base model" in text or "No modules were targeted" in text:
            shown = targets if isinstance(targets, str) else sorted(targets or [])
            raise UserError(f"{key}: none of {shown} is a layer of this backbone; its linear layers are named "
                            f"{', '.join(linear_layer_names(model))}") from None
        if "specify `target_modules`" in text:
            raise UserError(f"{key}: this backbone ({getattr(model.config, 'model_type', '?')}) has no default targets "
                            f"for method '{config.peft_type.value.lower()}'; name them (its linear layers are named "
                            f"{', '.join(linear_layer_names(model))})") from None
        raise


def empty_modules(optional: bool) -> str:
    """The problem of a list of modules that names none (``optional``: null would take the defaults)."""
    return "must name at least one module" + (" (or be null for the backbone's defaults)" if optional else "")


def check_targets(targets) -> list[tuple[str, str]]:
    """The problem of an empty ``target_modules`` (null takes the backbone's defaults)."""
    if targets is not None and not targets:
        return [("target_modules", empty_modules(optional=True))]
    return []


def allow_disable_adapter(peft_model):
    """Make peft's ``disable_adapter()`` work for prompt methods on models that do not generate.

    For prompt learning it swaps ``prepare_inputs_for_generation`` in and out, which a
    token-classification model lacks (AttributeError); an inert one lets the swap happen."""
    base = peft_model.base_model
    if not hasattr(base, "prepare_inputs_for_generation"):
        base.prepare_inputs_for_generation = None
    return peft_model
