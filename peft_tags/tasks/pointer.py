"""Task `tagging` with a span head (``task.head: global-pointer``): every (start, end, type)
scored at once, as in Efficient GlobalPointer (Su et al., 2022).

A span's score is ``q_i . k_j / sqrt(d) + start_t(i) + end_t(j)``: a start vector ``q`` and an
end vector ``k`` (size ``d``, rotary position encoding, shared by all types) and a start and an
end bias per type. Spans are decided by one threshold tuned on dev; nested and adjacent spans
are scored alike, and when train holds no overlapping spans the decoding keeps the best of
overlapping ones.

Character-exact, as the BIO head: the scored positions are characters, not tokens. A token's
characters take its ``slots`` cells (character j of a token is cell min(j, slots - 1), as the BIO
head's slots), and each cell has its own q, k and biases. So the head is still one
``Linear(hidden, slots x (2d + 2 types))`` over the token states: the model stays a stock
``AutoModelForTokenClassification`` whose per-token outputs this module turns into spans. A
group of characters sharing a token's last cell starts and ends spans as one unit; the spans
that this cannot represent are counted (``alignment`` in metrics.json) as for the BIO head.

The loss is the multi-label categorical cross-entropy over all (start <= end) pairs of a title,
per type: ``log(1 + sum_neg e^s) + log(1 + sum_pos e^-s)``, so 0 is the natural threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import distinct_names, is_int, log
from .slots import TaggingCodec
from .tagging import Tag, TaggingTask, _warn_cut

HEAD = "global-pointer"
#: thresholds tried on dev (the loss puts the boundary at 0)
GRID = tuple(round(x, 2) for x in np.arange(-2.0, 2.001, 0.25))
FLOOR = min(GRID)  # candidates below every threshold tried are not kept
MAX_CANDIDATES = 2000  # per title, the best ones (an untrained head can score everything high)


@dataclass
class PointerEncoded:
    input_ids: list[int]
    char_token: np.ndarray  # [n_chars] token of each character, -1 when truncated away
    char_slot: np.ndarray  # [n_chars] its slot (cell) inside the token
    cells: np.ndarray  # [groups] cell (token * slots + slot) of each group of characters
    starts: np.ndarray  # [groups] first character of the group
    ends: np.ndarray  # [groups] one past its last character
    gold: np.ndarray | None  # [spans, 3] (type, start group, end group) of the representable gold spans


class PointerCodec(TaggingCodec):
    """Titles and spans <-> cells of the span head; per-title candidate spans back to spans."""

    def __init__(self, tokenizer, types: list[str], slots: int, max_length: int, size: int):
        super().__init__(tokenizer, types, slots, max_length)
        self.size = size
        self.type_index = {t: i for i, t in enumerate(self.types)}

    @property
    def width(self) -> int:
        """Outputs per cell: q, k, a start bias and an end bias per type."""
        return 2 * self.size + 2 * len(self.types)

    @property
    def num_outputs(self) -> int:
        return self.slots * self.width

    def encode(self, texts: list[str], examples=None) -> list[PointerEncoded]:
        out = []
        for k, e in enumerate(super().encode(texts)):
            cells, starts, ends = _groups(e.char_token, e.char_slot, self.slots)
            gold = None
            if examples is not None:
                first = {int(s): g for g, s in enumerate(starts)}
                last = {int(x): g for g, x in enumerate(ends)}
                rows = [(self.type_index[s.label], first[s.start], last[s.end]) for s in examples[k].spans
                        if s.label in self.type_index and s.start in first and s.end in last]
                gold = np.array(sorted(set(rows)), dtype=np.int64).reshape(-1, 3)
            out.append(PointerEncoded(e.input_ids, e.char_token, e.char_slot, cells, starts, ends, gold))
        return out

    def gold_spans(self, enc: PointerEncoded) -> set:
        from ..data import Span

        return {Span(int(enc.starts[i]), int(enc.ends[j]), self.types[t]) for t, i, j in enc.gold}

    def _spans_lost(self, texts, examples, encoded=None) -> tuple[int, int, int]:
        """(gold spans lost, gold spans, tokens): gold spans of train's types whose start or end
        falls inside a group of characters, or past the truncation."""
        lost = total = tokens = 0
        for ex, enc in zip(examples, encoded or self.encode(texts, examples)):
            gold = {s for s in ex.spans if s.label in self.type_index}
            lost += len(gold - self.gold_spans(enc))
            total += len(gold)
            tokens += len(enc.input_ids)
        return lost, total, tokens

    def candidates(self, enc: PointerEncoded, feats: np.ndarray, floor: float = FLOOR) -> np.ndarray:
        """[n, 4] rows (score, type, start char, end char) of every span scoring above ``floor``,
        best first, from ``feats`` (the title's reduced head outputs, :func:`cell_features`)."""
        if not len(enc.cells):
            return np.zeros((0, 4), dtype=np.float64)
        d, n_types = self.size, len(self.types)
        f = feats[enc.cells].astype(np.float64)
        q, k, sb, eb = f[:, :d], f[:, d : 2 * d], f[:, 2 * d : 2 * d + n_types], f[:, 2 * d + n_types :]
        scores = (q @ k.T)[None] + sb.T[:, :, None] + eb.T[:, None, :]  # [types, start group, end group]
        scores = np.where(np.triu(np.ones(scores.shape[1:], dtype=bool))[None], scores, -np.inf)
        t, i, j = np.nonzero(scores > floor)
        s = scores[t, i, j]
        order = np.argsort(-s, kind="stable")[:MAX_CANDIDATES]
        return np.stack([s, t, enc.starts[i], enc.ends[j]], 1)[order]

    def spans(self, cands: np.ndarray, threshold: float, nested: bool) -> list:
        """The spans above ``threshold``; unless ``nested``, a span overlapping a better one is dropped."""
        from ..data import Span

        out, taken = [], []
        for score, t, a, b in cands:
            if score <= threshold:
                break
            a, b = int(a), int(b)
            if not nested and any(a < y and x < b for x, y in taken):
                continue
            taken.append((a, b))
            out.append((Span(a, b, self.types[int(t)]), float(score)))
        return sorted(out, key=lambda p: (p[0].start, p[0].end))


def _groups(char_token: np.ndarray, char_slot: np.ndarray, slots: int):
    """Runs of consecutive characters in one cell: (cells, first characters, ends)."""
    keep = np.nonzero(char_token >= 0)[0]
    cell = char_token[keep] * slots + char_slot[keep]
    if not len(keep):
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    new = np.ones(len(keep), dtype=bool)
    new[1:] = (cell[1:] != cell[:-1]) | (keep[1:] != keep[:-1] + 1)
    first = np.nonzero(new)[0]
    last = np.append(first[1:], len(keep)) - 1
    return cell[first], keep[first], keep[last] + 1


def rotary(x, positions):
    """Rotary position encoding of ``x`` [..., n, d] at ``positions`` [..., n] (d even)."""
    import torch

    d = x.shape[-1]
    freq = 10000.0 ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angle = positions.to(torch.float32)[..., None] * freq  # [..., n, d/2]
    cos, sin = angle.cos().repeat_interleave(2, -1), angle.sin().repeat_interleave(2, -1)
    pairs = torch.stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape)
    return x * cos + pairs * sin


def cell_features(codec: PointerCodec, logits):
    """[batch, tokens * slots, width] head outputs per cell, q and k rotated to their cell's
    position and q scaled by 1/sqrt(d); the cell index is the position."""
    import torch

    x = logits.float().reshape(logits.shape[0], -1, codec.width)
    d = codec.size
    pos = torch.arange(x.shape[1], device=x.device)
    q, k = rotary(x[..., :d], pos) / d ** 0.5, rotary(x[..., d : 2 * d], pos)
    return torch.cat([q, k, x[..., 2 * d :]], -1)


def pair_scores(codec: PointerCodec, logits, cells, cell_mask):
    """[batch, types, groups, groups] span scores of the gathered cells; pairs with end before
    start or a padded group are -inf."""
    import torch

    feats = cell_features(codec, logits)
    f = torch.gather(feats, 1, cells[..., None].expand(-1, -1, feats.shape[-1]))
    d, n_types = codec.size, len(codec.types)
    q, k = f[..., :d], f[..., d : 2 * d]
    sb, eb = f[..., 2 * d : 2 * d + n_types], f[..., 2 * d + n_types :]
    scores = (q @ k.transpose(1, 2))[:, None] + sb.transpose(1, 2)[..., None] + eb.transpose(1, 2)[:, :, None]
    g = cells.shape[1]
    ok = torch.triu(torch.ones(g, g, dtype=torch.bool, device=cells.device))[None] & cell_mask[:, :, None] \
        & cell_mask[:, None, :]
    return scores.masked_fill(~ok[:, None], float("-inf"))


def pointer_loss(scores, gold):
    """Multi-label categorical cross-entropy per (title, type), averaged: ``scores`` and ``gold``
    (0/1) [batch, types, g, g]; -inf scores are pairs that do not exist."""
    import torch

    s = scores.float().flatten(2)
    y = gold.flatten(2).bool()
    zero = torch.zeros_like(s[..., :1])
    neg = torch.cat([zero, s.masked_fill(y, float("-inf"))], -1)
    pos = torch.cat([zero, (-s).masked_fill(~y, float("-inf"))], -1)
    return (torch.logsumexp(neg, -1) + torch.logsumexp(pos, -1)).mean()


def collate(batch: list[PointerEncoded], pad_id: int, n_types: int):
    import torch

    from .slots import pad_ids

    out = pad_ids([e.input_ids for e in batch], pad_id)
    g = max(1, max(len(e.cells) for e in batch))
    out["cells"] = torch.zeros((len(batch), g), dtype=torch.long)
    out["cell_mask"] = torch.zeros((len(batch), g), dtype=torch.bool)
    if batch[0].gold is not None:
        out["gold"] = torch.zeros((len(batch), n_types, g, g), dtype=torch.bool)
    for b, e in enumerate(batch):
        out["cells"][b, : len(e.cells)] = torch.from_numpy(e.cells)
        out["cell_mask"][b, : len(e.cells)] = True
        if e.gold is not None and len(e.gold):
            gold = torch.from_numpy(e.gold)
            out["gold"][b, gold[:, 0], gold[:, 1], gold[:, 2]] = True
    return out


def micro_f1(predicted: list, gold: list) -> float:
    """Span micro-F1 of sets of spans per title, without the report (for tuning)."""
    tp = sum(len(p & g) for p, g in zip(predicted, gold))
    n_pred, n_gold = sum(map(len, predicted)), sum(map(len, gold))
    return 0.0 if tp == 0 else 2 * tp / (n_pred + n_gold)


class PointerTask(TaggingTask):
    """The tagging task with the global-pointer head; same data, outputs and metrics as BIO."""

    help = "character spans (global pointer: every start, end and type scored), scored by span micro-F1"
    # the per-token outputs are span-head features, not labels: no stock pipeline reads them as tags
    pipeline_tag = ""

    @classmethod
    def card_line(cls, recipe, metrics: dict) -> str:
        th = metrics.get("pointer", {}).get("threshold")
        return (f"character-span tagging with a global-pointer head (start/end vectors of size "
                f"{recipe.task.pointer_size}, rotary positions, {recipe.task.slots} cells per token), "
                f"spans above a threshold tuned on dev" + (f" ({th:g})" if th is not None else ""))

    @classmethod
    def check_meta(cls, meta: dict, need, path) -> int:
        need("types", lambda v: distinct_names(v) and bool(v), "a non-empty list of distinct span types")
        need("slots", lambda v: is_int(v, 1, 16), "an integer in [1, 16]")
        need("pointer_size", lambda v: is_int(v, 2) and v % 2 == 0, "an even integer >= 2")
        need("threshold", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v),
             "a number")
        need("nested", lambda v: isinstance(v, bool), "true or false")
        return meta["slots"] * (2 * meta["pointer_size"] + 2 * len(meta["types"]))

    @classmethod
    def hf_labels(cls, meta: dict) -> list[str]:
        """Per cell: ``q0..``, ``k0..`` (start and end vectors), ``start <type>`` and ``end <type>``
        (with the type's name where the run has one); ``@2`` onwards for a token's later cells."""
        names = meta.get("type_names") or {}
        d, types = meta["pointer_size"], meta["types"]
        named = [t + (f" {names[t]}" if t in names else "") for t in types]
        cell = [f"q{i}" for i in range(d)] + [f"k{i}" for i in range(d)] + [f"start {t}" for t in named] \
            + [f"end {t}" for t in named]
        return [c + (f"@{s + 1}" if s else "") for s in range(meta["slots"]) for c in cell]

    @classmethod
    def codec_from_meta(cls, tokenizer, meta: dict) -> PointerCodec:
        return PointerCodec(tokenizer, meta["types"], meta["slots"], meta["max_length"], meta["pointer_size"])

    @classmethod
    def reduce(cls, codec, logits, attention_mask) -> list[np.ndarray]:
        """Per title, the cell features of its real tokens [tokens * slots, width]."""
        feats = cell_features(codec, logits).cpu().numpy()
        return [feats[row, : int(n) * codec.slots] for row, n in enumerate(attention_mask.sum(1).tolist())]

    @classmethod
    def decode(cls, predictor, titles, normalized, encoded, outputs, **options) -> list[list[Tag]]:
        """Spans above the run's threshold; the score is the sigmoid of the span's score."""
        codec, meta = predictor.codec, predictor.meta
        cut = sum(bool((e.char_token < 0).any()) for e in encoded)
        if cut:
            _warn_cut(codec, cut, len(titles))
        names = meta.get("type_names") or {}
        out = []
        for title, enc, feats in zip(titles, encoded, outputs):
            found = codec.spans(codec.candidates(enc, feats, meta["threshold"]), meta["threshold"], meta["nested"])
            out.append([Tag(s.label, title[s.start : s.end], s.start, s.end, float(1 / (1 + np.exp(-score))),
                            names.get(s.label)) for s, score in found])
        return out

    # ------------------------------------------------------------------ training side
    def __init__(self, recipe, tokenizer, train_examples):
        from ..data import label_set

        self.recipe = recipe
        t = recipe.task
        self.codec = PointerCodec(tokenizer, label_set(train_examples), t.slots, recipe.backbone.max_length,
                                  t.pointer_size)
        self.stats: dict = {}
        self.type_names = self._type_names(recipe)
        self.nested = any(a.start < b.end and b.start < a.end for e in train_examples
                          for n, a in enumerate(e.spans) for b in e.spans[n + 1 :])
        self.threshold = 0.0
        self.dev_by_threshold: dict = {}

    def prior_bias(self, train_encoded) -> np.ndarray:
        """Zero for q and k; start and end biases of type t at half the log-odds of a candidate
        span (start <= end) being one of type t in train, so the first scores are the base rates."""
        n_types, d = len(self.codec.types), self.codec.size
        counts = np.full(n_types, 0.5)
        pairs = 0
        for e in train_encoded:
            g = len(e.cells)
            pairs += g * (g + 1) // 2
            if len(e.gold):
                counts += np.bincount(e.gold[:, 0], minlength=n_types)[:n_types]
        rate = counts / max(pairs, 1)
        half = 0.5 * np.log(rate / (1 - rate))
        cell = np.concatenate([np.zeros(2 * d), half, half])
        return np.tile(cell, self.codec.slots).astype(np.float32)

    def collate(self, batch, pad_id: int):
        return collate(batch, pad_id, len(self.codec.types))

    def loss(self, logits, batch: dict):
        from ..model import token_logits

        scores = pair_scores(self.codec, token_logits(logits, batch["input_ids"]), batch["cells"], batch["cell_mask"])
        return pointer_loss(scores, batch["gold"])

    def divergence(self, logits_a, logits_b, batch: dict):
        """R-Drop: the symmetric KL between the two passes' span probabilities (sigmoid of each
        pair's score), averaged over the pairs that exist."""
        import torch

        from ..model import token_logits

        a, b = (pair_scores(self.codec, token_logits(x, batch["input_ids"]), batch["cells"], batch["cell_mask"])
                for x in (logits_a, logits_b))
        ok = torch.isfinite(a)
        a, b = a[ok].float(), b[ok].float()
        pa, pb = torch.sigmoid(a), torch.sigmoid(b)
        return ((pa - pb) * (a - b)).mean() / 2  # KL(p||q) + KL(q||p) of Bernoullis = (p - q)(logit p - logit q)

    def predict(self, model, examples, encoded, batch_size: int, device) -> list:
        """Candidate spans of each example (rows of score, type, start, end), best first."""
        from .batches import forward_batches

        feats = forward_batches(model, encoded, batch_size, self.codec.tokenizer.pad_token_id,
                                lambda logits, mask: self.reduce(self.codec, logits, mask), device)
        return [self.codec.candidates(enc, f) for enc, f in zip(encoded, feats)]

    def score(self, split: str, predictions: list, examples, final: bool) -> dict:
        """Dev: the threshold is tuned on it (each evaluation, so model selection sees the tuned
        rule); every split is then scored with that threshold."""
        def decoded(th: float) -> list[list]:
            return [[s for s, _ in self.codec.spans(c, th, self.nested)] for c in predictions]

        if split == "dev":
            gold = [set(e.spans) for e in examples]
            by_threshold = {th: decoded(th) for th in GRID}
            self.dev_by_threshold = {th: micro_f1([set(p) for p in found], gold) for th, found in by_threshold.items()}
            best = max(self.dev_by_threshold.values())
            # the threshold nearest 0 (the loss's own boundary) among the best
            self.threshold = min((th for th, f in self.dev_by_threshold.items() if f == best), key=abs)
            if final:
                log.info("global pointer: threshold %g tuned on dev (micro-F1 %.4f; at 0: %.4f)", self.threshold, best,
                         self.dev_by_threshold[0.0])
            return super().score(split, by_threshold[self.threshold], examples, final)
        return super().score(split, decoded(self.threshold), examples, final)

    def meta(self) -> dict:
        c = self.codec
        return {"task": self.name, "head": HEAD, "types": c.types, "slots": c.slots, "pointer_size": c.size,
                "threshold": self.threshold, "nested": self.nested, "max_length": c.max_length,
                "num_outputs": c.num_outputs, **({"type_names": self.type_names} if self.type_names else {})}

    def metrics(self) -> dict:
        return {**super().metrics(),
                "pointer": {"threshold": self.threshold, "nested": self.nested,
                            "dev_micro_f1_by_threshold": {str(k): round(v, 4) for k, v in self.dev_by_threshold.items()}}}
