"""The bottleneck tuner: puts :class:`~.layer.Linear` adapters on a model's output projections."""
from __future__ import annotations

from peft.tuners.tuners_utils import BaseTuner

from .config import BottleneckConfig
from .layer import BottleneckLayer, Linear

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


class BottleneckModel(BaseTuner):
    """The peft tuner that puts :class:`~.layer.Linear` adapters on the configured modules."""

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
