"""Tag titles with a trained output directory, from Python.

>>> from peft_tags import Tagger
>>> tagger = Tagger.load("runs/jd-ner-lora")
>>> tagger.tag(["华为P30手机壳硅胶防摔"])
[[Tag(label='37', text='华为', start=0, end=2), ...]]

A multi-label run loads as a :class:`TagClassifier` (a Tagger whose ``tag`` returns
:class:`ScoredTag` lists, highest score first, decided by the thresholds tuned on dev):

>>> Tagger.load("runs/jd-tags/lora").tag(["儿童防水手表"])
[[ScoredTag(tag='防水', score=0.93), ScoredTag(tag='儿童', score=0.88)]]
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import normalize_text
from .errors import UserError
from .model import token_logits
from .rundir import check_run_dir, loading
from .tasks.tagging import Encoded, TaggingCodec, collate

log = logging.getLogger("peft_tags.predict")


@dataclass(frozen=True)
class Tag:
    label: str
    text: str
    start: int
    end: int

    def as_dict(self) -> dict:
        return {"label": self.label, "text": self.text, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class ScoredTag:
    tag: str
    score: float

    def as_dict(self) -> dict:
        return {"tag": self.tag, "score": round(self.score, 4)}


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
        input_ids = batch["input_ids"].to(device)
        logits = token_logits(model(input_ids=input_ids, attention_mask=batch["attention_mask"].to(device)).logits, input_ids)
        lp = torch.log_softmax(logits.float().reshape(*logits.shape[:2], codec.slots, n_labels), -1).cpu().numpy()
        for row, i in enumerate(idx):
            out[i] = lp[row, : len(encoded[i].input_ids)]
    return out


class Tagger:
    """A trained tagger loaded from an output directory of ``peft-tags train``."""

    def __init__(self, model, codec: TaggingCodec, recipe, device):
        self.model, self.codec, self.recipe, self.device = model, codec, recipe, device
        self.meta: dict = {}  # labels.json of the run

    @classmethod
    def load(cls, output_dir: str | Path, device: str | None = None) -> "Tagger":
        """Load an output directory; raises UserError (one line naming the file) when its files are
        missing, damaged or do not fit together (:func:`peft_tags.rundir.check_run_dir`)."""
        from .backbones import resolve_backbone
        from .model import HEAD_NAME, load_tokenizer, quiet_transformers

        out = Path(output_dir)
        recipe, meta = check_run_dir(out)
        quiet_transformers()
        backbone = resolve_backbone(recipe.backbone.name, recipe.backbone.cache_dir)
        if meta.get("task", "tagging") == "multilabel":
            from .tasks.multilabel import MultiLabelCodec

            cls = TagClassifier
            codec = MultiLabelCodec(load_tokenizer(backbone), meta["tags"], meta["max_length"], meta["pooling"])
        else:
            cls = Tagger
            codec = TaggingCodec(load_tokenizer(backbone), meta["types"], meta["slots"], meta["max_length"])
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        with torch.random.fork_rng(devices=[]):  # building a model seeds torch; not the caller's RNG
            model = _build(out, recipe, backbone, codec.num_outputs, device)
        _load_head(model, out / "head.safetensors", HEAD_NAME)
        if recipe.backbone.quantization == "none":  # a quantised model is placed on the device as it loads
            model.to(device)
        model.eval()
        tagger = cls(model, codec, recipe, device)
        tagger.meta = meta
        return tagger

    def tag(self, titles: list[str], batch_size: int = 32) -> list[list[Tag]]:
        """Tags of each title, as label, text, start, end (character offsets into the title).

        Characters past ``backbone.max_length`` tokens are not tagged (a warning says how many
        titles were cut)."""
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        if not titles:
            return []
        d = self.recipe.data
        norm = [normalize_text(t, d.fullwidth_to_halfwidth, d.lowercase) for t in titles]
        encoded = self.codec.encode(norm)
        cut = sum(bool((e.char_token < 0).any()) for e in encoded)
        if cut:
            log.warning("%d of %d titles are longer than %d tokens; their ends are not tagged", cut, len(titles),
                        self.codec.max_length)
        scores = predict_log_probs(self.model, self.codec, encoded, batch_size, self.device)
        spans = [self.codec.decode(t, e, log_probs=lp) for t, e, lp in zip(norm, encoded, scores)]
        return [[Tag(s.label, title[s.start : s.end], s.start, s.end) for s in ss] for title, ss in zip(titles, spans)]


class TagClassifier(Tagger):
    """A trained multi-label tagger: the tags of a title from the run's vocabulary, with scores."""

    def tag(self, titles: list[str], batch_size: int = 32, top_k: int | None = None,
            threshold: float | None = None) -> list[list[ScoredTag]]:
        """Tags of each title, highest score first. By default the run's decision rule: the
        thresholds tuned on dev (per tag or global, as the recipe said) and its top-k;
        ``threshold`` replaces them by one value, ``top_k`` caps the tags per title."""
        import numpy as np

        from .tasks.multilabel import decide, predict_probs

        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        if top_k is not None and top_k < 1:
            raise UserError(f"top_k must be at least 1, got {top_k}")
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise UserError(f"threshold must be between 0 and 1, got {threshold}")
        if not titles:
            return []
        d = self.recipe.data
        encoded = self.codec.encode([normalize_text(t, d.fullwidth_to_halfwidth, d.lowercase) for t in titles])
        probs = predict_probs(self.model, self.codec, encoded, batch_size, self.device)
        th = self.meta["thresholds"]
        if threshold is not None:
            rule = threshold
        elif th["rule"] == "per-tag":
            rule = np.array([th["per_tag"][t] for t in self.codec.tags])
        else:
            rule = th["global"]
        picked = decide(probs, rule, top_k or th.get("top_k"))
        return [[ScoredTag(self.codec.tags[j], float(p[j])) for j in row] for row, p in zip(picked, probs)]


def _build(out: Path, recipe, backbone: str, num_outputs: int, device=None):
    from .model import build_token_classifier

    from . import methods

    method, b = recipe.method.name, recipe.backbone
    if methods.get(method).saves == "model":  # the whole fine-tuned model
        with loading(out / "model"):
            return build_token_classifier(str(out / "model"), num_outputs, seed=0)
    model = build_token_classifier(backbone, num_outputs, 0, b.quantization, b.double_quantization, b.compute_dtype,
                                   device=device)
    return attach_adapter(model, out, method)


def attach_adapter(model, out: Path, method: str):
    """The saved peft adapter of ``out`` on ``model`` (unchanged for head-only), ready to run."""
    from . import methods

    if methods.get(method).saves != "adapter":
        return model
    import importlib

    from peft import PeftModel

    importlib.import_module("peft_tags.bottleneck")  # registers the BOTTLENECK peft type
    with loading(f"{out}: the adapter (adapter_config.json, adapter_model.safetensors)"):
        model = PeftModel.from_pretrained(model, str(out))
        hook = methods.get(method).on_load
        return model if hook is None else hook(model)


def head_module(model, head_name: str):
    """The live head module (inside peft's ModulesToSaveWrapper when there is one)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, head_name)
    saved = getattr(head, "modules_to_save", None)
    return saved["default"] if saved is not None and "default" in saved else head


def _load_head(model, path: Path, head_name: str) -> None:
    from safetensors.torch import load_file

    head = head_module(model, head_name)
    with loading(path):
        head.load_state_dict(load_file(str(path)))
