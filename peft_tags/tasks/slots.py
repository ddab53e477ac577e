"""The codec of task `tagging`: character-exact spans <-> per-token label slots.

Titles are tokenized whole (about 0.76 tokens per character on Chinese titles with
me5-small), not one character at a time (2 tokens per character with
``is_split_into_words``). A token can hold several characters, and a gold span boundary can
fall inside one (2.4% of boundaries on jd-ner test). So the head gives every token ``slots``
label distributions, one per character position inside the token: character j of a token
is labelled by slot min(j, slots - 1). The head is an ordinary ``Linear(hidden, slots x
labels)``, so the model stays a stock ``AutoModelForTokenClassification`` and the adapter
loads with plain ``PeftModel.from_pretrained``.

Characters past the last slot share it: they continue its span (I-) or stay outside (O).
:func:`TaggingCodec.alignment_stats` counts the gold spans that this encoding (and
truncation at ``max_length``) cannot represent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch loads on first use: recipes are checked without it
    import torch

from ..data import Example, Span

IGNORE = -100


def bio_labels(types: list[str]) -> list[str]:
    """Label vocabulary: O, then B-/I- per type in the given order."""
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def spans_to_char_labels(n_chars: int, spans: list[Span], label_index: dict[str, int]) -> np.ndarray:
    out = np.zeros(n_chars, dtype=np.int64)  # 0 = O
    for s in spans:
        b, i = label_index.get(f"B-{s.label}"), label_index.get(f"I-{s.label}")
        if b is None:  # a type unseen in training: it stays O (counted by the caller)
            continue
        out[s.start] = b
        out[s.start + 1 : s.end] = i
    return out


def char_labels_to_spans(labels: list[str]) -> list[Span]:
    """BIO decoding; an I- that does not continue its type opens a new span."""
    spans, start, kind = [], None, None
    for i, lab in enumerate(labels + ["O"]):
        prefix, _, t = lab.partition("-")
        if prefix == "I" and kind == t:
            continue
        if kind is not None:
            spans.append(Span(start, i, kind))
            start = kind = None
        if prefix in ("B", "I"):
            start, kind = i, t
    return spans


@dataclass
class Encoded:
    input_ids: list[int]
    char_token: np.ndarray  # [n_chars] token index of each character, -1 when truncated away
    char_slot: np.ndarray  # [n_chars] slot inside that token
    labels: np.ndarray | None  # [n_tokens, slots] label ids, IGNORE where no character


class TaggingCodec:
    """Maps titles and spans to model inputs and targets, and logits back to spans."""

    def __init__(self, tokenizer, types: list[str], slots: int, max_length: int):
        self.tokenizer = tokenizer
        self.types = list(types)
        self.labels = bio_labels(self.types)
        self.label_index = {lab: i for i, lab in enumerate(self.labels)}
        self.slots = slots
        self.max_length = max_length
        # BIO continuation: the I- label for each label (O stays O), used past the last slot
        self._continue = np.array(
            [0] + [self.label_index[f"I-{lab[2:]}"] for lab in self.labels[1:]], dtype=np.int64
        )

    @property
    def num_outputs(self) -> int:
        return self.slots * len(self.labels)

    def encode(self, texts: list[str], examples: list[Example] | None = None) -> list[Encoded]:
        enc = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, return_offsets_mapping=True
        )
        out = []
        for k, text in enumerate(texts):
            ids, offsets = enc["input_ids"][k], enc["offset_mapping"][k]
            char_token = np.full(len(text), -1, dtype=np.int64)
            for t, (s, e) in enumerate(offsets):
                if e > s:  # special tokens and a bare '▁' cover nothing; later tokens win
                    char_token[s:e] = t
            _fill_gaps(char_token, text)
            char_slot = _slots_of(char_token, self.slots)
            labels = None
            if examples is not None:
                char_labels = spans_to_char_labels(len(text), examples[k].spans, self.label_index)
                labels = np.full((len(ids), self.slots), IGNORE, dtype=np.int64)
                keep = char_token >= 0
                # reversed so that the first character of a shared last slot sets its label
                for c in np.nonzero(keep)[0][::-1]:
                    labels[char_token[c], char_slot[c]] = char_labels[c]
            out.append(Encoded(ids, char_token, char_slot, labels))
        return out

    def decode(self, text: str, enc: Encoded, label_ids: np.ndarray | None = None,
               log_probs: np.ndarray | None = None) -> list[Span]:
        """Character spans from ``label_ids`` [n_tokens, slots] (argmax) or from
        ``log_probs`` [n_tokens, slots, labels] (the best valid BIO sequence, by Viterbi)."""
        n = len(text)
        char_ids = np.zeros(n, dtype=np.int64)
        keep = enc.char_token >= 0
        shared = keep & _past_last_slot(enc.char_token, self.slots)
        if log_probs is not None:
            own = keep & ~shared
            char_ids[own] = viterbi(log_probs[enc.char_token[own], enc.char_slot[own]], *self._bio_constraints())
            # a character past the last slot continues the character before it
            for i in np.nonzero(shared)[0]:
                char_ids[i] = self._continue[char_ids[i - 1]]
        else:
            char_ids[keep] = label_ids[enc.char_token[keep], enc.char_slot[keep]]
            # characters past the last slot of their token continue that slot's span
            char_ids[shared] = self._continue[char_ids[shared]]
        return char_labels_to_spans([self.labels[i] for i in char_ids])

    def _bio_constraints(self) -> tuple[np.ndarray, np.ndarray]:
        """(allowed[prev, cur], allowed_first[cur]): I-x only after B-x or I-x."""
        if not hasattr(self, "_constraints"):
            n = len(self.labels)
            allowed = np.ones((n, n), dtype=bool)
            first = np.ones(n, dtype=bool)
            for cur, lab in enumerate(self.labels):
                if lab.startswith("I-"):
                    t = lab[2:]
                    allowed[:, cur] = False
                    allowed[self.label_index[f"B-{t}"], cur] = allowed[cur, cur] = True
                    first[cur] = False
            self._constraints = (allowed, first)
        return self._constraints

    def alignment_stats(self, texts: list[str], examples: list[Example], encoded: list[Encoded] | None = None) -> dict:
        """How many gold spans survive encode -> decode (tokenization, slots, truncation),
        beside what one label per token would lose and what one token per character costs.
        ``encoded``: this codec's ``encode(texts, examples)``, when the caller has it already."""
        lost, total, tokens = self._spans_lost(texts, examples, encoded)
        one_slot = self if self.slots == 1 else TaggingCodec(self.tokenizer, self.types, 1, self.max_length)
        lost_one, _, _ = one_slot._spans_lost(texts, examples)
        char_split = self.tokenizer([list(t) for t in texts], is_split_into_words=True)["input_ids"]
        chars = max(sum(len(t) for t in texts), 1)
        return {
            "spans": total,
            "spans_lost": lost,
            "spans_lost_pct": round(100.0 * lost / max(total, 1), 3),
            "slots": self.slots,
            "tokens_per_char": round(tokens / chars, 4),
            "one_label_per_token_spans_lost_pct": round(100.0 * lost_one / max(total, 1), 3),
            "one_token_per_char_tokens_per_char": round(sum(map(len, char_split)) / chars, 4),
        }

    def _spans_lost(self, texts: list[str], examples: list[Example],
                    encoded: list[Encoded] | None = None) -> tuple[int, int, int]:
        """(gold spans lost, gold spans, tokens) after encode -> decode of the gold labels."""
        lost = total = tokens = 0
        for text, ex, enc in zip(texts, examples, encoded or self.encode(texts, examples)):
            gold = {s for s in ex.spans if f"B-{s.label}" in self.label_index}
            labels = np.where(enc.labels == IGNORE, 0, enc.labels)
            lost += len(gold - set(self.decode(text, enc, labels)))
            total += len(gold)
            tokens += len(enc.input_ids)
        return lost, total, tokens


def viterbi(log_probs: np.ndarray, allowed: np.ndarray, allowed_first: np.ndarray) -> np.ndarray:
    """The highest-scoring label sequence under the transition constraints.

    ``log_probs`` [n, labels]; returns label ids [n]."""
    n = len(log_probs)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    penalty = np.where(allowed, 0.0, -np.inf)
    score = np.where(allowed_first, log_probs[0], -np.inf)
    back = np.zeros((n, log_probs.shape[1]), dtype=np.int64)
    for i in range(1, n):
        total = score[:, None] + penalty  # [prev, cur]
        back[i] = total.argmax(0)
        score = total.max(0) + log_probs[i]
    out = np.empty(n, dtype=np.int64)
    out[-1] = int(score.argmax())
    for i in range(n - 1, 0, -1):
        out[i - 1] = back[i, out[i]]
    return out


def _fill_gaps(char_token: np.ndarray, text: str) -> None:
    """Characters no token covers (spaces folded into '▁', dropped control characters)
    belong to the next covered character's token, or the previous one at the end. Text cut
    off by truncation (anything but blanks after the last token) stays at -1."""
    n = len(char_token)
    nxt = -1
    last_covered = max((i for i in range(n) if char_token[i] >= 0), default=-1)
    truncated = bool(text[last_covered + 1 :].strip())
    for i in range(n - 1, -1, -1):
        if char_token[i] >= 0:
            nxt = char_token[i]
        elif i < last_covered:
            char_token[i] = nxt
        elif not truncated and last_covered >= 0:
            char_token[i] = char_token[last_covered]


def _positions_in_token(char_token: np.ndarray) -> np.ndarray:
    """Index of each character inside its token (0 for the token's first character)."""
    pos = np.zeros(len(char_token), dtype=np.int64)
    for i in range(1, len(char_token)):
        if char_token[i] >= 0 and char_token[i] == char_token[i - 1]:
            pos[i] = pos[i - 1] + 1
    return pos


def _slots_of(char_token: np.ndarray, slots: int) -> np.ndarray:
    return np.minimum(_positions_in_token(char_token), slots - 1)


def _past_last_slot(char_token: np.ndarray, slots: int) -> np.ndarray:
    """True for characters at position >= slots inside their token."""
    return _positions_in_token(char_token) >= slots


def pad_ids(id_lists: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask``, padded to the longest title of the batch."""
    import torch

    width = max(len(ids) for ids in id_lists)
    ids = torch.full((len(id_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(id_lists), width), dtype=torch.long)
    for i, row in enumerate(id_lists):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def collate(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Dynamic padding to the longest title of the batch."""
    import torch

    out = pad_ids([e.input_ids for e in batch], pad_id)
    if batch[0].labels is not None:
        out["labels"] = torch.full((*out["input_ids"].shape, batch[0].labels.shape[1]), IGNORE, dtype=torch.long)
        for i, e in enumerate(batch):
            out["labels"][i, : len(e.input_ids)] = torch.from_numpy(e.labels)
    return out


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Cross-entropy over every (token, slot) that holds a character (0 for a batch of
    empty titles, where the mean over no targets would be NaN)."""
    import torch

    if not (labels != IGNORE).any():
        return logits.sum() * 0.0
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, num_labels).float(), labels.reshape(-1), ignore_index=IGNORE
    )
