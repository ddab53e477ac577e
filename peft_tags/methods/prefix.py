"""Prefix tuning: learned keys and values at every layer (P-tuning v2).

A causal language model (the generation task) takes peft's prefix tuning as it is: the
prefixes enter as the generation cache. Its prefix may start from the keys and values the
frozen model computes for real tokens (``init: text`` or ``vocab``), as the prefix-tuning paper
found best with little data (Li and Liang, 2021, section 7.2): the model then starts out
reading the title as if that text came before the prompt, instead of behind random keys and
values of the wrong scale. The rest of this module is for encoders.

peft's prefix tuning hands its prefixes to the backbone as ``past_key_values``; encoders of
transformers 5 (BERT, XLM-R, ...) no longer take them, and peft refuses. We keep peft's
config, prompt encoder and file format (``PeftModel.from_pretrained`` reads the adapter back)
and deliver the prefixes through an attention function of our own instead: it prepends
layer i's learned keys and values to the keys and values the backbone computes, and opens
the attention mask for them. Every position of the title attends to the prefix; no position
is added to the output, so the token-classification head sees the title's tokens only.

A model loaded with plain peft needs :func:`enable` once before its first forward.
"""
from __future__ import annotations

import contextvars
import types
from dataclasses import dataclass, field

from ..errors import UserError
from . import Context, register
from ._common import allow_disable_adapter

ATTENTION = "peft_tags_prefix"
INITS = ("random", "text", "vocab")
_PREFIX: contextvars.ContextVar = contextvars.ContextVar("peft_tags_prefix", default=None)


@dataclass
class PrefixOptions:
    num_virtual_tokens: int = field(default=16, metadata={"help": "prefix length: learned key/value pairs per layer"})
    prefix_projection: bool = field(default=False, metadata={
        "help": "reparameterise the prefixes through a two-layer MLP while training (peft's prefix_projection)"})
    encoder_hidden_size: int = field(default=512, metadata={"help": "hidden size of that MLP"})
    init: str = field(default="random", metadata={
        "help": "how the prefix starts: random (peft's), text (the keys and values the frozen model computes for "
                "init_text, repeated to the prefix's length) or vocab (those of randomly drawn vocabulary tokens); "
                "text and vocab need a causal language model (task generation)", "choices": INITS})
    init_text: str | None = field(default=None, metadata={"help": "the text of init: text"})

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.num_virtual_tokens < 1:
            problems.append(("num_virtual_tokens", f"must be a positive integer, got {self.num_virtual_tokens}"))
        if self.encoder_hidden_size < 1:
            problems.append(("encoder_hidden_size", f"must be a positive integer, got {self.encoder_hidden_size}"))
        if self.init == "text" and not (self.init_text or "").strip():
            problems.append(("init_text", "init: text needs the text whose keys and values start the prefix"))
        if self.init != "text" and self.init_text is not None:
            problems.append(("init_text", f"is read only with init: text (init is {self.init})"))
        if self.init != "random" and self.prefix_projection:
            problems.append(("init", f"{self.init} sets the prefix itself, which prefix_projection computes through "
                                     "an MLP; use one or the other"))
        return problems


def _attention(module, query, key, value, attention_mask, **kwargs):
    """sdpa attention with this layer's prefix keys and values in front of the title's."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    prefix = _PREFIX.get()
    layer = getattr(module, "_peft_tags_layer", None)
    if prefix is None or layer is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    batch, kv_heads, length, head_dim = key.shape
    pk = prefix[2 * layer].to(key.dtype).reshape(kv_heads, -1, head_dim).expand(batch, -1, -1, -1)
    pv = prefix[2 * layer + 1].to(value.dtype).reshape(kv_heads, -1, head_dim).expand(batch, -1, -1, -1)
    n = pk.shape[2]
    if attention_mask is None and getattr(module, "is_causal", False):  # a decoder: keep its causal pattern
        q = query.shape[2]
        attention_mask = torch.ones(q, length, dtype=torch.bool, device=query.device).tril(length - q)[None, None]
    if attention_mask is not None:
        open_ = (torch.ones if attention_mask.dtype == torch.bool else torch.zeros)(
            *attention_mask.shape[:-1], n, dtype=attention_mask.dtype, device=attention_mask.device)
        attention_mask = torch.cat([open_, attention_mask], dim=-1)
    return sdpa_attention_forward(module, query, torch.cat([pk, key], 2), torch.cat([pv, value], 2), attention_mask,
                                  **kwargs)


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION, _attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)


def _attention_modules(model) -> list:
    """The self-attention modules of the backbone, in layer order."""
    found = []
    for _, m in model.named_modules():
        names = set(dict(m.named_children()))
        if {"query", "key", "value"} <= names or {"q_proj", "k_proj", "v_proj"} <= names:
            found.append(m)
    return found


def _prefix_states(peft_model):
    """[2 x layers, heads x prefix x head_dim]-shaped keys and values of the active adapter."""
    name = peft_model.active_adapter
    config = peft_model.peft_config[name]
    encoder = peft_model.prompt_encoder[name]
    if config.inference_mode:  # loaded for inference: peft stores the (projected) prefixes themselves
        states = encoder.embedding.weight  # [n, layers x 2 x token_dim]
    else:
        tokens = peft_model.prompt_tokens[name][None, : config.num_virtual_tokens].to(encoder.embedding.weight.device)
        states = encoder(tokens)[0]
    n, heads = config.num_virtual_tokens, config.num_attention_heads
    states = states.view(n, config.num_layers * 2, heads, -1)  # peft's layout of past_key_values
    return states.permute(1, 2, 0, 3)  # [layers x 2, heads, n, head_dim]


def _forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs):
    token = _PREFIX.set(_prefix_states(self))
    try:
        return self.base_model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs)
    finally:
        _PREFIX.reset(token)


def enable(peft_model):
    """Route a peft prefix-tuning model's prefixes through our attention (in place; returns it).
    A causal language model keeps peft's own route (its prefixes as the generation cache)."""
    config = peft_model.peft_config[peft_model.active_adapter]
    if str(getattr(config.task_type, "value", config.task_type)) == "CAUSAL_LM":
        return peft_model
    _register_attention()
    base = peft_model.base_model
    layers = _attention_modules(base)
    if len(layers) != config.num_layers:
        raise UserError(f"method: prefix tuning found {len(layers)} self-attention modules in this backbone but it has "
                        f"{config.num_layers} layers; this architecture is not supported")
    for i, m in enumerate(layers):
        m._peft_tags_layer = i
    base.set_attn_implementation(ATTENTION)
    peft_model.forward = types.MethodType(_forward, peft_model)
    return allow_disable_adapter(peft_model)


@register("prefix", PrefixOptions, help="prefix tuning: learned keys and values at every layer (P-tuning v2) + trained head",
          on_load=enable, merge_refusal="adds keys and values to attention",
          card_note="Then call `peft_tags.methods.prefix.enable(model)`: transformers 5 encoders take the prefixes "
                    "through peft-tags' attention function, not as `past_key_values`.")
def apply(model, options: PrefixOptions, ctx: Context):
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    if options.init != "random" and not ctx.causal:
        raise UserError(f"method.init: {options.init} starts the prefix from a causal language model's own keys and "
                        "values (task generation); an encoder's prefix starts random")
    config = PrefixTuningConfig(task_type=TaskType(ctx.task_type), num_virtual_tokens=options.num_virtual_tokens,
                                prefix_projection=options.prefix_projection,
                                encoder_hidden_size=options.encoder_hidden_size)
    model = get_peft_model(model, config)  # marks the head (classifier) trainable and saved
    if options.init != "random" and not any(p.is_meta for p in model.parameters()):  # not a skeleton being checked
        init_from_tokens(model, _init_ids(model, options, ctx.tokenizer))
    return enable(model)


def _init_ids(peft_model, options: PrefixOptions, tokenizer) -> list[int]:
    """The token ids whose keys and values start the prefix: init_text's, repeated to the
    prefix's length, or randomly drawn vocabulary ids (torch's generator: the run's seed)."""
    import torch

    n = options.num_virtual_tokens
    if options.init == "vocab":
        vocab = peft_model.get_base_model().get_input_embeddings().weight.shape[0]
        return torch.randint(0, vocab, (n,)).tolist()
    if tokenizer is None:
        raise ValueError("init: text needs the backbone's tokenizer")
    ids = tokenizer(options.init_text, add_special_tokens=False)["input_ids"]
    if not ids or len(ids) > n:
        raise UserError(f"method.init_text: {len(ids)} tokens for a prefix of num_virtual_tokens {n}; "
                        "shorten the text or lengthen the prefix")
    return (ids * (n // len(ids) + 1))[:n]


def init_from_tokens(peft_model, ids: list[int]) -> None:
    """Set a causal language model's prefix (peft's prefix encoder, no projection) to the keys
    and values the frozen model computes at every layer for ``ids`` at positions 0..n-1, where
    the prefix sits: the model then reads what follows as it reads it after those tokens."""
    import torch

    name = peft_model.active_adapter
    config = peft_model.peft_config[name]
    embedding = peft_model.prompt_encoder[name].embedding
    if len(ids) != config.num_virtual_tokens or config.prefix_projection:
        raise ValueError("one id per virtual token, and a prefix without projection")
    base = peft_model.get_base_model()
    device = embedding.weight.device
    was_training = base.training
    base.eval()
    try:
        with torch.no_grad():
            out = base(input_ids=torch.tensor([ids], device=device), use_cache=True)
    finally:
        base.train(was_training)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    layers = [(layer.keys, layer.values) for layer in cache.layers]
    shape = (1, config.num_attention_heads, len(ids), config.token_dim // config.num_attention_heads)
    if len(layers) != config.num_layers or any(k is None or v is None or tuple(k.shape) != shape
                                               or tuple(v.shape) != shape for k, v in layers):
        # layers that share or window their keys and values, or differ in size (Gemma 3n, 4), or
        # a prefix longer than a sliding window: the cache does not hold the prefix of every layer
        raise UserError(f"method.init: this backbone's cache does not keep {len(ids)} keys and values of one size at "
                        f"each of its {config.num_layers} layers, so the prefix cannot start from real tokens; "
                        "use init: random")
    # peft reads the embedding [n, layers x 2 x kv_heads x head_dim] as past key values: view it as
    # [n, layers x 2, kv_heads, head_dim] and move the token axis to the front of each head's part
    states = torch.stack([torch.stack([k[0], v[0]]) for k, v in layers])  # [layers, 2, kv_heads, n, head_dim]
    weight = states.permute(3, 0, 1, 2, 4).reshape(len(ids), -1)
    with torch.no_grad():
        embedding.weight.copy_(weight.to(embedding.weight.dtype))
