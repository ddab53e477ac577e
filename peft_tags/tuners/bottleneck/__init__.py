"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021) as a real peft method.

Importing this package registers the peft type ``BOTTLENECK``, once; from then on the ordinary
peft API works: ``get_peft_model(model, BottleneckConfig(...))``, ``save_pretrained``,
``PeftModel.from_pretrained``, ``disable_adapter()``, several named adapters,
``print_trainable_parameters``.

An adapter wraps the output projection of a sublayer (the attention output and/or the
feed-forward output) and adds a small residual MLP to that projection's output, before the
sublayer's own skip connection and LayerNorm, where Houlsby places it::

    y = W x + b                      (the frozen projection)
    y' = y + s · up(act(down(y)))    (down: d -> m, up: m -> d)

``houlsby`` adapts both sublayers of every block, ``pfeiffer`` only the feed-forward one. The
up-projection starts at zero, so a new adapter is the identity (near-identity training start).
The adapter is non-linear, so it cannot be merged into the frozen weights.

Modules, as in peft's own tuners: :mod:`.config` (:class:`BottleneckConfig`), :mod:`.layer`
(:class:`BottleneckLayer`, :class:`Linear`), :mod:`.model` (:class:`BottleneckModel`).
"""
from __future__ import annotations

from peft.utils.peft_types import PeftType

from .config import ACTIVATIONS, NAME, VARIANTS, BottleneckConfig
from .layer import BottleneckLayer, Linear
from .model import BottleneckModel, default_targets

__all__ = ["ACTIVATIONS", "NAME", "VARIANTS", "BottleneckConfig", "BottleneckLayer", "BottleneckModel", "Linear",
           "default_targets"]


def _add_peft_type() -> None:
    """Add BOTTLENECK to peft's PeftType enum (peft only registers methods it lists there)."""
    key = NAME.upper()
    if key in PeftType.__members__:
        return
    member = str.__new__(PeftType, key)
    member._name_, member._value_ = key, key
    member.__objclass__ = PeftType
    member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_map_[key] = member
    PeftType._value2member_map_[key] = member
    PeftType._member_names_.append(key)
    type.__setattr__(PeftType, key, member)


def _register() -> None:
    """Make BOTTLENECK a peft method: its enum member, config class, tuner and parameter prefix."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import register_peft_method

    _add_peft_type()
    if PeftType.BOTTLENECK not in PEFT_TYPE_TO_CONFIG_MAPPING:
        register_peft_method(name=NAME, config_cls=BottleneckConfig, model_cls=BottleneckModel, prefix=BottleneckModel.prefix)


_register()
