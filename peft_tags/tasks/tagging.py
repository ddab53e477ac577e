"""Task `tagging`: character-exact span extraction with a token-classification head.

The codec (titles and spans <-> per-token label slots, Viterbi decoding) is in :mod:`.slots`;
this module is the task: its recipe options, data formats, loss, prediction, scores, model-card
line and ``labels.json``.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np

from ..config.validate import opt
from . import Task, TaskOptions, distinct_names, is_int, log, register
from .slots import (  # noqa: F401  (the codec's names, importable from the task)
    IGNORE, Encoded, TaggingCodec, _past_last_slot, bio_labels, char_labels_to_spans, collate, loss_fn, pad_ids, spans_to_char_labels,
    viterbi)


HEADS = ("bio", "global-pointer")
#: the data formats that hold character spans (the tagging and generation tasks read them)
SPAN_FORMATS = ("conll", "jsonl", "attribute-value", "hf-spans")


@dataclass(kw_only=True)
class TaggingOptions(TaskOptions):
    slots: int = opt(4, "how many characters one token can label (1..16)", ge=1, le=16)
    head: str = opt("bio", "the span head: bio (a label per character, best valid sequence by Viterbi) or "
                    "global-pointer (every start, end and type scored; a threshold tuned on dev)", choices=HEADS)
    pointer_size: int = opt(64, "global-pointer: size of the start and end vectors (even, 2..512)", ge=2, le=512)

    def check(self) -> list[tuple[str, str]]:
        return [("pointer_size", f"must be even (rotary positions rotate pairs), got {self.pointer_size}")] \
            if self.pointer_size % 2 else []


@dataclass(frozen=True)
class Tag:
    """A span found in a title: its type, its text and its character offsets (end exclusive);
    ``score``: the geometric mean of the probability of its characters' labels; ``name``: the
    type's name where the run knows it. Tags compare by type, text and offsets."""

    label: str
    text: str
    start: int
    end: int
    score: float | None = field(default=None, compare=False)
    name: str | None = field(default=None, compare=False)

    def as_dict(self) -> dict:
        out = {"label": self.label, "text": self.text, "start": self.start, "end": self.end}
        if self.name is not None:
            out["name"] = self.name
        if self.score is not None:
            out["score"] = round(self.score, 4)
        return out

    def line(self) -> str:
        return f"{self.label}\t{self.text}\t{self.start}\t{self.end}" + (f"\t{self.name}" if self.name else "")


def log_probs_rows(codec: TaggingCodec, logits, attention_mask) -> list[np.ndarray]:
    """Per title of a batch, log-probabilities [n_tokens, slots, labels] of its real tokens."""
    import torch

    n_labels = len(codec.labels)
    lp = torch.log_softmax(logits.float().reshape(*logits.shape[:2], codec.slots, n_labels), -1).cpu().numpy()
    lengths = attention_mask.sum(1).tolist()
    return [lp[row, : int(n)] for row, n in enumerate(lengths)]


def predict_log_probs(model, codec: TaggingCodec, encoded: list[Encoded], batch_size: int, device) -> list[np.ndarray]:
    """Log-probabilities [n_tokens, slots, labels] for each encoded title; batches sorted by length."""
    from .batches import forward_batches

    return forward_batches(model, encoded, batch_size, codec.tokenizer.pad_token_id,
                           lambda logits, mask: log_probs_rows(codec, logits, mask), device)


def span_score(codec: TaggingCodec, enc: Encoded, log_probs: np.ndarray, start: int, end: int, label: str,
               past: np.ndarray | None = None) -> float:
    """exp of the mean log-probability of the labels (B- then I-) of the span's characters that
    own a slot (characters past a token's last slot follow the character before them; ``past``
    marks them, computed here when not given)."""
    past = _past_last_slot(enc.char_token, codec.slots) if past is None else past
    own = (enc.char_token[start:end] >= 0) & ~past[start:end]
    chars = np.nonzero(own)[0] + start
    if not len(chars):
        return 0.0
    ids = np.where(chars == start, codec.label_index[f"B-{label}"], codec.label_index[f"I-{label}"])
    return float(np.exp(log_probs[enc.char_token[chars], enc.char_slot[chars], ids].mean()))


_CUT: "weakref.WeakKeyDictionary[TaggingCodec, list]" = weakref.WeakKeyDictionary()  # [last warning, cut, titles]


def _warn_cut(codec: TaggingCodec, cut: int, n: int, every_s: float = 60.0) -> None:
    """Warn that titles were cut at ``backbone.max_length``: at once for the first call, then at
    most once a minute per codec with the counts since, so a service tagging all day does not
    repeat it per batch."""
    import time

    state = _CUT.setdefault(codec, [-every_s, 0, 0])
    state[1] += cut
    state[2] += n
    now = time.monotonic()
    if now - state[0] >= every_s:
        log.warning("%d of %d titles are longer than %d tokens; their ends are not tagged", state[1], state[2],
                    codec.max_length)
        _CUT[codec] = [now, 0, 0]


@register
class TaggingTask(Task):
    name = "tagging"
    options_cls = TaggingOptions
    formats = SPAN_FORMATS
    unit = "span"
    help = "character spans (BIO), scored by span micro-F1"
    pipeline_tag = "token-classification"

    # ------------------------------------------------------------------ recipe side
    @classmethod
    def variant(cls, head: str | None) -> type[Task]:
        if head == "global-pointer":
            from .pointer import PointerTask

            return PointerTask
        return cls

    @classmethod
    def card_line(cls, recipe, metrics: dict) -> str:
        return f"character-span tagging (BIO), {recipe.task.slots} label slots per token"

    @classmethod
    def check_meta(cls, meta: dict, need, path) -> int:
        if "head" in meta:
            need("head", lambda v: v in HEADS, " or ".join(HEADS))
        need("types", distinct_names, "a list of distinct span types")
        need("slots", lambda v: is_int(v, 1, 16), "an integer in [1, 16]")
        if "type_names" in meta:  # optional: names of some types
            names = meta["type_names"]
            if not (isinstance(names, dict) and all(k in meta["types"] and isinstance(v, str) and v
                                                    for k, v in names.items())):
                from ..errors import UserError

                raise UserError(f"{path}: 'type_names' must map some of 'types' to non-empty names")
        return meta["slots"] * (1 + 2 * len(meta["types"]))

    @classmethod
    def hf_labels(cls, meta: dict) -> list[str]:
        """Output ``s * len(labels) + j`` is label ``j`` of a token's character ``s + 1``:
        ``B-4 product word`` (with the type's name where the run has one), ``@2`` onwards for a
        token's later characters."""
        names = meta.get("type_names") or {}
        named = [lab + (f" {names[lab[2:]]}" if lab[:2] in ("B-", "I-") and lab[2:] in names else "")
                 for lab in meta["labels"]]
        return [lab + (f"@{s + 1}" if s else "") for s in range(meta["slots"]) for lab in named]

    @classmethod
    def codec_from_meta(cls, tokenizer, meta: dict) -> TaggingCodec:
        return TaggingCodec(tokenizer, meta["types"], meta["slots"], meta["max_length"])

    @classmethod
    def reduce(cls, codec, logits, attention_mask) -> list[np.ndarray]:
        return log_probs_rows(codec, logits, attention_mask)

    @classmethod
    def decode(cls, predictor, titles, normalized, encoded, outputs, **options) -> list[list[Tag]]:
        """Spans of each title (the best valid BIO sequence). Characters past
        ``backbone.max_length`` tokens are not tagged (a warning says how many titles were cut)."""
        codec = predictor.codec
        cut = sum(bool((e.char_token < 0).any()) for e in encoded)
        if cut:
            _warn_cut(codec, cut, len(titles))
        names = predictor.meta.get("type_names") or {}
        out = []
        for title, norm, enc, lp in zip(titles, normalized, encoded, outputs):
            spans = codec.decode(norm, enc, log_probs=lp)
            past = _past_last_slot(enc.char_token, codec.slots)
            out.append([Tag(s.label, title[s.start : s.end], s.start, s.end,
                            span_score(codec, enc, lp, s.start, s.end, s.label, past), names.get(s.label))
                        for s in spans])
        return out

    # ------------------------------------------------------------------ training side
    def __init__(self, recipe, tokenizer, train_examples):
        from ..data import label_set

        super().__init__(recipe, tokenizer, train_examples)
        self.codec = TaggingCodec(tokenizer, label_set(train_examples), recipe.task.slots, recipe.backbone.max_length)
        self.stats: dict = {}
        self.type_names = self._type_names(recipe)

    def _type_names(self, recipe) -> dict[str, str]:
        """Names of the run's types from the data set's types.tsv (:mod:`peft_tags.data.names`)."""
        from ..data import resolve_data_path
        from ..data.names import type_names_beside

        if getattr(recipe.data, "hub", None):  # a hub dataset's splits: no folder to hold a types.tsv
            return {}
        names = type_names_beside(resolve_data_path(recipe.data.train, recipe.data.root, key="data.train"))
        if names:
            log.info("type names: %d of %d types named (types.tsv)", sum(t in names for t in self.codec.types),
                     len(self.codec.types))
        return {t: names[t] for t in self.codec.types if t in names}

    def prior_bias(self, train_encoded) -> np.ndarray:
        """Per slot, the log share of each label among the characters in that slot in train
        (smoothed), laid out as the head's outputs: slot-major, one block of labels per slot."""
        n = len(self.codec.labels)
        counts = np.full((self.codec.slots, n), 0.5)
        for e in train_encoded:
            for s in range(self.codec.slots):
                col = e.labels[:, s]
                counts[s] += np.bincount(col[col != IGNORE], minlength=n)[:n]
        return np.log(counts / counts.sum(1, keepdims=True)).reshape(-1).astype(np.float32)

    def describe(self, data: dict, encoded: dict) -> None:
        """Log and keep what the token alignment cannot represent, per scored split, and the gold
        spans of types unseen in train (never predicted: they count as missed in recall)."""
        for split, examples in data.items():
            if split == "train":
                continue
            st = self.codec.alignment_stats([e.text for e in examples], examples, encoded[split])
            unseen = [s.label for e in examples for s in e.spans if s.label not in self.codec.types]
            st["spans_of_unseen_types"], st["unseen_types"] = len(unseen), sorted(set(unseen))
            self.stats[split] = st
            if unseen:
                log.warning("%s spans of types unseen in train: %d (types %s); they count as missed", split,
                            len(unseen), ", ".join(st["unseen_types"]))
            log.info("%s: %d spans, %d (%.2f%%) lost to tokenization with %d slot(s) per token at %.3f tokens/char "
                     "(one label per token: %.2f%% lost; one token per character: %.3f tokens/char)",
                     split, st["spans"], st["spans_lost"], st["spans_lost_pct"], st["slots"], st["tokens_per_char"],
                     st["one_label_per_token_spans_lost_pct"], st["one_token_per_char_tokens_per_char"])

    def collate(self, batch, pad_id: int):
        return collate(batch, pad_id)

    def loss(self, logits, batch: dict):
        from ..model import token_logits

        return loss_fn(token_logits(logits, batch["input_ids"]), batch["labels"], len(self.codec.labels))

    def divergence(self, logits_a, logits_b, batch: dict):
        """Symmetric KL between the two passes' label distributions, per (token, slot) that holds
        a character, averaged."""
        import torch

        from ..model import token_logits

        n = len(self.codec.labels)
        a, b = (torch.log_softmax(token_logits(x, batch["input_ids"]).float().reshape(-1, n), -1)
                for x in (logits_a, logits_b))
        keep = batch["labels"].reshape(-1) != IGNORE
        if not keep.any():
            return a.sum() * 0.0
        a, b = a[keep], b[keep]
        return ((a.exp() - b.exp()) * (a - b)).sum(-1).mean() / 2

    def predict(self, model, examples, encoded, batch_size: int, device) -> list:
        """The decoded spans of each example."""
        scores = predict_log_probs(model, self.codec, encoded, batch_size, device)
        return [self.codec.decode(ex.text, enc, log_probs=lp) for ex, enc, lp in zip(examples, encoded, scores)]

    def score(self, split: str, predictions: list, examples, final: bool) -> dict:
        """Span P/R/F1 (exact offsets), and the (type, value) pair scores of the same spans
        (``pair_*``), the yardstick the generation task is scored on too."""
        from ..metrics import span_f1
        from ..metrics.pairs import pair_f1

        result = span_f1(predictions, [e.spans for e in examples])
        pairs = pair_f1([[(s.label, e.text[s.start:s.end]) for s in p] for e, p in zip(examples, predictions)],
                        [[(s.label, e.text[s.start:s.end]) for s in e.spans] for e in examples])
        result.update({f"pair_{k}": pairs[k] for k in ("micro_precision", "micro_recall", "micro_f1", "macro_f1")})
        names = getattr(self, "type_names", None)
        if names:  # the report's rows end with the type's name
            result["report"] = "\n".join(
                row + f"  {names[cells[0]]}" if len(cells := row.split()) == 5 and cells[0] in names else row
                for row in result["report"].split("\n"))
        return result

    def meta(self) -> dict:
        c = self.codec
        return {"task": self.name, "types": c.types, "labels": c.labels, "slots": c.slots, "max_length": c.max_length,
                "num_outputs": c.num_outputs, **({"type_names": self.type_names} if self.type_names else {})}

    def metrics(self) -> dict:
        return {"alignment": self.stats,
                "spans_of_unseen_types": {k: v["spans_of_unseen_types"] for k, v in self.stats.items()}}
