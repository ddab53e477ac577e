"""The codec and decision rules of task `multilabel`: the tags of a title from a fixed vocabulary,
one sigmoid per tag.

The model is y = sigmoid(W h(x) + b) with h(x) the title's pooled representation: the mean of
its token vectors, or the first token's. The head is the same ``Linear(hidden, tags)`` that a
stock ``AutoModelForTokenClassification`` has, applied to every token; pooling its per-token
logits is exactly the head applied to the pooled vector (the head is affine), so the model
stays a stock transformers model and the adapter loads with plain ``PeftModel.from_pretrained``.

Training minimises binary cross-entropy, optionally with positive weights for rare tags.
Decisions use thresholds tuned on dev (:func:`tune_global`, :func:`tune_per_tag`) and an
optional top-k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch loads on first use: recipes are checked without it
    import torch

from ..data import TagExample
from .slots import pad_ids

#: candidate thresholds searched on dev
GRID = np.round(np.arange(0.02, 0.981, 0.01), 2)


@dataclass
class EncodedTitle:
    input_ids: list[int]
    labels: np.ndarray | None  # [tags] 0/1, None when predicting
    truncated: bool


class MultiLabelCodec:
    """Maps titles and their tags to model inputs and multi-hot targets."""

    def __init__(self, tokenizer, tags: list[str], max_length: int, pooling: str):
        self.tokenizer = tokenizer
        self.tags = list(tags)
        self.index = {t: i for i, t in enumerate(self.tags)}
        self.max_length = max_length
        self.pooling = pooling

    @property
    def num_outputs(self) -> int:
        return len(self.tags)

    def encode(self, texts: list[str], examples: list[TagExample] | None = None) -> list[EncodedTitle]:
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        full = self.tokenizer(texts, truncation=False)["input_ids"] if texts else []
        out = []
        for k, ids in enumerate(enc["input_ids"]):
            labels = None
            if examples is not None:
                labels = np.zeros(len(self.tags), dtype=np.float32)
                for t in examples[k].tags:
                    if t in self.index:  # a tag outside the vocabulary cannot be predicted (counted by the caller)
                        labels[self.index[t]] = 1.0
            out.append(EncodedTitle(list(ids), labels, len(full[k]) > len(ids)))
        return out

    def pool(self, token_logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[batch, tokens, tags] -> [batch, tags]: the head applied to the pooled title vector."""
        if self.pooling == "first":
            return token_logits[:, 0]
        mask = attention_mask.to(token_logits.dtype).unsqueeze(-1)
        return (token_logits * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def collate(batch: list[EncodedTitle], pad_id: int) -> dict[str, torch.Tensor]:
    import torch

    out = pad_ids([e.input_ids for e in batch], pad_id)
    if batch[0].labels is not None:
        out["labels"] = torch.from_numpy(np.stack([e.labels for e in batch]))
    return out


def positive_weights(examples: list[TagExample], tags: list[str], how: str, cap: float) -> np.ndarray | None:
    """Per tag: (titles without it / titles with it) in train, or its square root, capped."""
    if how == "none":
        return None
    index = {t: i for i, t in enumerate(tags)}
    pos = np.zeros(len(tags))
    for ex in examples:
        for t in ex.tags:
            if t in index:
                pos[index[t]] += 1
    ratio = (len(examples) - pos) / np.maximum(pos, 1.0)
    w = np.sqrt(ratio) if how == "sqrt" else ratio
    return np.clip(w, 1.0, cap).astype(np.float32)


def prior_logits(examples: list[TagExample], tags: list[str]) -> np.ndarray:
    """Per tag, log(p / (1 - p)) with p its share of the titles (smoothed: never 0 or 1)."""
    y = multi_hot(examples, tags)
    p = (y.sum(0) + 0.5) / (len(examples) + 1.0)
    return np.log(p / (1 - p)).astype(np.float32)


def multi_hot(examples: list[TagExample], tags: list[str]) -> np.ndarray:
    index = {t: i for i, t in enumerate(tags)}
    y = np.zeros((len(examples), len(tags)), dtype=bool)
    for r, ex in enumerate(examples):
        for t in ex.tags:
            if t in index:
                y[r, index[t]] = True
    return y


def _f1(tp, n_pred, n_gold):
    return np.where(n_pred + n_gold > 0, 2 * tp / np.maximum(n_pred + n_gold, 1), 0.0)


def tune_global(probs: np.ndarray, gold: np.ndarray, missed: int = 0) -> tuple[float, float]:
    """The threshold of :data:`GRID` with the best micro-F1 (ties: the one closest to 0.5) and
    that F1. ``missed`` counts gold tags outside the vocabulary (always false negatives)."""
    n_gold = gold.sum() + missed
    best = (-1.0, 0.0, 0.5)
    for t in GRID:
        pred = probs >= t
        tp = (pred & gold).sum()
        f1 = 2 * tp / max(pred.sum() + n_gold, 1)
        key = (f1, -abs(t - 0.5))
        if key > best[:2]:
            best = (f1, -abs(t - 0.5), float(t))
    return best[2], float(best[0])


def tune_per_tag(probs: np.ndarray, gold: np.ndarray, global_threshold: float, min_support: int) -> np.ndarray:
    """Per tag, the threshold of :data:`GRID` with the best F1 on that tag; a tag with fewer than
    ``min_support`` positive dev titles keeps the global threshold (too few to tune on)."""
    thresholds = np.full(probs.shape[1], global_threshold, dtype=np.float64)
    support = gold.sum(0)
    for j in np.flatnonzero(support >= min_support):
        p, g = probs[:, j], gold[:, j]
        best = (-1.0, 0.0)
        for t in GRID:
            pred = p >= t
            f1 = float(_f1((pred & g).sum(), pred.sum(), g.sum()))
            key = (f1, -abs(t - global_threshold))
            if key > best:
                best = key
                thresholds[j] = float(t)
    return thresholds


def held_out_check(probs: np.ndarray, gold: np.ndarray, missed: np.ndarray, min_support: int, folds: int = 5,
                   seed: int = 0) -> dict | None:
    """Would per-tag thresholds beat one global threshold on titles they were not tuned on?

    Cross-fitting on dev: the titles are dealt into ``folds`` folds (a fixed shuffle); both
    rules are tuned on the other folds and decide the held-out one; true positives,
    predictions and gold tags (``missed[i]``: title i's gold tags outside the vocabulary) are
    summed over the folds into one micro-F1 per rule. None when dev has too few titles."""
    n = len(probs)
    if n < 2 * folds:
        return None
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    counts = {"per-tag": np.zeros(3), "global": np.zeros(3)}  # tp, predicted, gold
    for k in range(folds):
        fit, held = fold_of != k, fold_of == k
        g, _ = tune_global(probs[fit], gold[fit], int(missed[fit].sum()))
        rules = {"global": g, "per-tag": tune_per_tag(probs[fit], gold[fit], g, min_support)}
        for name, th in rules.items():
            pred = probs[held] >= th
            counts[name] += (int((pred & gold[held]).sum()), int(pred.sum()), int(gold[held].sum() + missed[held].sum()))
    out = {name: float(_f1(*c)) for name, c in counts.items()}
    return {**out, "folds": folds}


def decide(probs: np.ndarray, thresholds: np.ndarray | float, top_k: int | None) -> list[list[int]]:
    """Tag indices per title, highest score first: scores at or over their threshold, at most top_k."""
    out = []
    for row in probs:
        idx = np.flatnonzero(row >= thresholds)
        idx = idx[np.argsort(-row[idx], kind="stable")]
        out.append(idx[:top_k].tolist() if top_k else idx.tolist())
    return out


def probs_rows(codec: MultiLabelCodec, logits: "torch.Tensor", attention_mask: "torch.Tensor") -> list[np.ndarray]:
    """Per title of a batch, its tag probabilities."""
    import torch

    return list(torch.sigmoid(codec.pool(logits.float(), attention_mask)).cpu().numpy())


def predict_probs(model, codec: MultiLabelCodec, encoded: list[EncodedTitle], batch_size: int, device) -> np.ndarray:
    """Tag probabilities [titles, tags]; batches sorted by length."""
    from .batches import forward_batches

    rows = forward_batches(model, encoded, batch_size, codec.tokenizer.pad_token_id,
                           lambda logits, mask: probs_rows(codec, logits, mask), device)
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, codec.num_outputs), dtype=np.float32)
