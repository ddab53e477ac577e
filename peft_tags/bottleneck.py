"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021) as a real peft method.

Importing this module registers the peft type ``BOTTLENECK``; from then on the ordinary
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
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import nn

from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils.peft_types import PeftType

NAME = "bottleneck"
VARIANTS = ("houlsby", "pfeiffer")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "silu": nn.SiLU, "tanh": nn.Tanh}

# Output projections per model type: (attention output, feed-forward output), as regexes over
# module names (peft matches a string target with re.fullmatch).
_SUBLAYERS = {
    "bert": (r"attention\.output\.dense", r"(?<!attention\.)output\.dense"),
    "distilbert": (r"attention\.out_lin", r"ffn\.lin2"),
    "llama": (r"self_attn\.o_proj", r"mlp\.down_proj"),
}
for _t in ("roberta", "xlm-roberta", "camembert", "electra", "ernie", "nezha", "megatron-bert", "data2vec-text", "xlm-roberta-xl"):
    _SUBLAYERS[_t] = _SUBLAYERS["bert"]
for _t in ("qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3", "olmo", "smollm3"):
    _SUBLAYERS[_t] = _SUBLAYERS["llama"]


def default_targets(model_type: str, variant: str) -> str | None:
    """The regex of the modules ``variant`` adapts in a ``model_type`` backbone, or None."""
    if model_type not in _SUBLAYERS:
        return None
    attention, feed_forward = _SUBLAYERS[model_type]
    chosen = f"(?:{attention}|{feed_forward})" if variant == "houlsby" else feed_forward
    return rf".*\.{chosen}"


def _register_peft_type() -> None:
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


_register_peft_type()


@dataclass
class BottleneckConfig(PeftConfig):
    """Configuration of bottleneck adapters; see the module docstring."""

    variant: str = field(default="houlsby", metadata={"help": "houlsby (attention and feed-forward) or pfeiffer (feed-forward only)"})
    bottleneck_size: Optional[int] = field(default=None, metadata={"help": "hidden size m of the adapter; null: d / reduction_factor"})
    reduction_factor: float = field(default=16.0, metadata={"help": "m = d / reduction_factor when bottleneck_size is null"})
    activation: str = field(default="relu", metadata={"help": "non-linearity: " + ", ".join(ACTIVATIONS)})
    scaling: float = field(default=1.0, metadata={"help": "s: multiplies the adapter's output"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    init_std: float = field(default=1e-2, metadata={"help": "std of the down-projection at init"})
    init_weights: bool = field(default=True, metadata={"help": "up-projection starts at zero (identity adapter); false: random"})
    target_modules: Optional[Union[list[str], str]] = field(default=None, metadata={
        "help": "modules (name suffixes, or one regex) to adapt; null: the variant's sublayers for known backbones"})
    exclude_modules: Optional[Union[list[str], str]] = field(default=None, metadata={"help": "modules not to adapt"})
    modules_to_save: Optional[list[str]] = field(default=None, metadata={"help": "modules trained and saved in full (the task head)"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.BOTTLENECK
        if isinstance(self.target_modules, (list, tuple)):
            self.target_modules = set(self.target_modules)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.bottleneck_size is not None and self.bottleneck_size < 1:
            raise ValueError(f"bottleneck_size must be >= 1, got {self.bottleneck_size}")
        if self.reduction_factor <= 0:
            raise ValueError(f"reduction_factor must be > 0, got {self.reduction_factor}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def size_for(self, d: int) -> int:
        return self.bottleneck_size or max(1, int(round(d / self.reduction_factor)))


class BottleneckLayer(BaseTunerLayer):
    """A wrapped output projection with one bottleneck adapter per adapter name."""

    adapter_layer_names = ("bottleneck_down", "bottleneck_up")
    other_param_names = ("bottleneck_scaling", "bottleneck_act", "bottleneck_dropout")

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.bottleneck_down = nn.ModuleDict({})
        self.bottleneck_up = nn.ModuleDict({})
        self.bottleneck_act = nn.ModuleDict({})
        self.bottleneck_dropout = nn.ModuleDict({})
        self.bottleneck_scaling: dict[str, float] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear) and not hasattr(base, "out_features"):
            raise TypeError(f"bottleneck adapters wrap linear layers, not {type(base).__name__}")
        self.in_features, self.out_features = base.in_features, base.out_features

    def update_layer(self, adapter_name: str, config: BottleneckConfig, inference_mode: bool = False) -> None:
        d = self.out_features
        m = config.size_for(d)
        self.bottleneck_down[adapter_name] = nn.Linear(d, m)
        self.bottleneck_up[adapter_name] = nn.Linear(m, d)
        self.bottleneck_act[adapter_name] = ACTIVATIONS[config.activation]()
        self.bottleneck_dropout[adapter_name] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.bottleneck_scaling[adapter_name] = config.scaling
        self.reset_parameters(adapter_name, config)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    @torch.no_grad()
    def reset_parameters(self, adapter_name: str, config: BottleneckConfig) -> None:
        down, up = self.bottleneck_down[adapter_name], self.bottleneck_up[adapter_name]
        nn.init.normal_(down.weight, std=config.init_std)
        nn.init.zeros_(down.bias)
        if config.init_weights:
            nn.init.zeros_(up.weight)
        else:
            nn.init.kaiming_uniform_(up.weight, a=math.sqrt(5))
        nn.init.zeros_(up.bias)

    def _get_base_layer_device_and_dtype(self, base_layer):
        # a quantised base layer (bitsandbytes) keeps packed weights; adapters compute in float32 there
        device, dtype = super()._get_base_layer_device_and_dtype(base_layer)
        return device, (dtype if dtype is not None and dtype.is_floating_point else torch.float32)


class Linear(nn.Module, BottleneckLayer):
    def __init__(self, base_layer: nn.Module, adapter_name: str, config: BottleneckConfig, **kwargs) -> None:
        super().__init__()
        BottleneckLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        raise ValueError("bottleneck adapters are non-linear and cannot be merged into the base weights; "
                         "keep the adapter, or use unload() to drop it")

    def unmerge(self) -> None:
        return None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        base = result
        for name in self.active_adapters:  # several active adapters act side by side on the projection
            if name not in self.bottleneck_down:
                continue
            down = self.bottleneck_down[name]
            h = self.bottleneck_dropout[name](base.to(down.weight.dtype))
            h = self.bottleneck_up[name](self.bottleneck_act[name](down(h)))
            result = result + self.bottleneck_scaling[name] * h.to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()


class BottleneckModel(BaseTuner):
    """The peft tuner that puts :class:`Linear` adapters on the configured modules."""

    prefix: str = "bottleneck_"
    tuner_layer_cls = BottleneckLayer
    target_module_mapping: dict = {}  # targets depend on the variant: see _prepare_adapter_config

    def _prepare_adapter_config(self, peft_config: BottleneckConfig, model_config: dict) -> BottleneckConfig:
        if peft_config.target_modules is None:
            model_type = model_config.get("model_type")
            targets = default_targets(model_type, peft_config.variant)
            if targets is None:
                raise ValueError(f"Please specify `target_modules` in `peft_config`: no default bottleneck targets "
                                 f"for model type {model_type!r}")
            peft_config.target_modules = targets
        return peft_config

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, BottleneckLayer):
            target.update_layer(adapter_name, peft_config, inference_mode=peft_config.inference_mode)
            return
        new_module = Linear(target, adapter_name, peft_config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)


def _register_method() -> None:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import register_peft_method

    if PeftType.BOTTLENECK not in PEFT_TYPE_TO_CONFIG_MAPPING:
        register_peft_method(name=NAME, config_cls=BottleneckConfig, model_cls=BottleneckModel, prefix="bottleneck_")


_register_method()
