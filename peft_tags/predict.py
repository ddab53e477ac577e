"""Tag titles with a trained output directory, from Python.

>>> from peft_tags import Tagger
>>> tagger = Tagger.load("runs/jd-ner-lora")
>>> tagger.tag(["华为P30手机壳硅胶防摔"])
[[Tag(label='37', text='华为', start=0, end=2), ...]]
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import normalize_text
from .errors import UserError
from .tasks.tagging import Encoded, TaggingCodec, collate

OUTPUT_FILES = ("labels.json", "recipe.yaml", "head.safetensors")


@dataclass(frozen=True)
class Tag:
    label: str
    text: str
    start: int
    end: int

    def as_dict(self) -> dict:
        return {"label": self.label, "text": self.text, "start": self.start, "end": self.end}


@torch.no_grad()
def predict_log_probs(model, codec: TaggingCodec, encoded: list[Encoded], batch_size: int, device) -> list[np.ndarray]:
    """Log-probabilities [n_tokens, slots, labels] for each encoded title; batches sorted by length."""
    model.eval()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    out: list[np.ndarray | None] = [None] * len(encoded)
    pad = codec.tokenizer.pad_token_id
    n_labels = len(codec.labels)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        batch = collate([Encoded(encoded[i].input_ids, encoded[i].char_token, encoded[i].char_slot, None) for i in idx], pad)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        lp = torch.log_softmax(logits.float().reshape(*logits.shape[:2], codec.slots, n_labels), -1).cpu().numpy()
        for row, i in enumerate(idx):
            out[i] = lp[row, : len(encoded[i].input_ids)]
    return out


def predict_spans(model, codec: TaggingCodec, texts: list[str], batch_size: int, device) -> list:
    encoded = codec.encode(texts)
    scores = predict_log_probs(model, codec, encoded, batch_size, device)
    return [codec.decode(t, e, log_probs=lp) for t, e, lp in zip(texts, encoded, scores)]


class Tagger:
    """A trained tagger loaded from an output directory of ``peft-tags train``."""

    def __init__(self, model, codec: TaggingCodec, recipe, device):
        self.model, self.codec, self.recipe, self.device = model, codec, recipe, device

    @classmethod
    def load(cls, output_dir: str | Path, device: str | None = None) -> "Tagger":
        from .model import build_token_classifier, load_tokenizer, quiet_transformers, HEAD_NAME
        from .backbones import resolve_backbone
        from .recipe import load_recipe

        out = Path(output_dir)
        missing = [f for f in OUTPUT_FILES if not (out / f).is_file()]
        if missing:
            raise UserError(f"{out}: not a peft-tags output directory (missing {', '.join(missing)})")
        quiet_transformers()
        recipe = load_recipe(out / "recipe.yaml")
        meta = json.loads((out / "labels.json").read_text(encoding="utf-8"))
        backbone = resolve_backbone(recipe.backbone.name, recipe.backbone.cache_dir)
        tokenizer = load_tokenizer(backbone)
        codec = TaggingCodec(tokenizer, meta["types"], meta["slots"], meta["max_length"])
        if (out / "model" / "config.json").is_file():  # full fine-tuning: the whole model
            model = build_token_classifier(str(out / "model"), codec.num_outputs, seed=0)
        else:
            model = build_token_classifier(backbone, codec.num_outputs, seed=0)
            if (out / "adapter_config.json").is_file():
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(out))
        _load_head(model, out / "head.safetensors", HEAD_NAME)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model.to(device).eval()
        return cls(model, codec, recipe, device)

    def tag(self, titles: list[str], batch_size: int = 32) -> list[list[Tag]]:
        """Tags of each title, as label, text, start, end (character offsets into the title)."""
        d = self.recipe.data
        norm = [normalize_text(t, d.fullwidth_to_halfwidth, d.lowercase) for t in titles]
        spans = predict_spans(self.model, self.codec, norm, batch_size, self.device)
        return [[Tag(s.label, title[s.start : s.end], s.start, s.end) for s in ss] for title, ss in zip(titles, spans)]


def head_module(model, head_name: str):
    """The live head module (inside peft's ModulesToSaveWrapper when there is one)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, head_name)
    saved = getattr(head, "modules_to_save", None)
    return saved["default"] if saved is not None and "default" in saved else head


def _load_head(model, path: Path, head_name: str) -> None:
    from safetensors.torch import load_file

    head = head_module(model, head_name)
    state = load_file(str(path))
    head.load_state_dict(state)
