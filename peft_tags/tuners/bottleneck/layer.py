"""The bottleneck adapter layer: a wrapped output projection plus a residual MLP per adapter."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from peft.tuners.tuners_utils import BaseTunerLayer

from .config import ACTIVATIONS, BottleneckConfig


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
        """Add (or replace) the adapter ``adapter_name`` as ``config`` describes it."""
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
        """Initialise an adapter: a small random down-projection, an up-projection at zero (or random)."""
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
    """A linear output projection with bottleneck adapters on its output."""

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
