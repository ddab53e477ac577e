"""(type, value) pair F1: the yardstick on which a generating tagger and a span tagger compare.

A title's tags are a set of (type, value) pairs; a value counts as the same after
:func:`normalize_value` (NFKC, case folded, white space collapsed), so a generated ``red`` matches
a gold ``Red`` and a span tagger's ``Red`` alike. A pair written twice for one title counts
once. Micro P/R/F1 over all pairs, macro F1 over the types that have gold pairs, and per type.
"""
from __future__ import annotations

import unicodedata


def normalize_value(value: str) -> str:
    """The form in which two values compare: NFKC, case folded, runs of white space as one space."""
    return " ".join(unicodedata.normalize("NFKC", value).casefold().split())


def pair_set(pairs) -> set[tuple[str, str]]:
    """{(type, normalised value)} of ``(type, value)`` pairs; empty values are dropped."""
    return {(t, v) for t, v in ((t, normalize_value(v)) for t, v in pairs) if v}


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def pair_f1(pred, gold, *, digits: int = 4) -> dict:
    """Pair scores of ``pred`` against ``gold`` (lists, one per title, of ``(type, value)`` pairs).

    Returns micro_precision/recall/f1, macro_f1 (over the types with gold pairs), ``per_type``
    ({type: precision, recall, f1, support}), pair counts and a text ``report``."""
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} titles of predictions but {len(gold)} of gold pairs")
    counts: dict[str, list[int]] = {}  # type -> [true positives, predicted, gold]
    for p, g in zip(pred, gold):
        ps, gs = pair_set(p), pair_set(g)
        for t, _ in ps:
            counts.setdefault(t, [0, 0, 0])[1] += 1
        for t, _ in gs:
            counts.setdefault(t, [0, 0, 0])[2] += 1
        for t, _ in ps & gs:
            counts[t][0] += 1
    tp, n_pred, n_gold = (sum(c[i] for c in counts.values()) for i in range(3))
    mp, mr, mf = _prf(tp, n_pred, n_gold)
    per_type = {}
    for t in sorted(counts, key=lambda t: (-counts[t][2], t)):
        p, r, f = _prf(*counts[t])
        per_type[t] = {"precision": round(p, digits), "recall": round(r, digits), "f1": round(f, digits),
                       "support": counts[t][2]}
    scored = [v["f1"] for v in per_type.values() if v["support"]]
    result = {"micro_precision": round(mp, digits), "micro_recall": round(mr, digits), "micro_f1": round(mf, digits),
              "macro_f1": round(sum(scored) / len(scored), digits) if scored else 0.0,
              "pairs_predicted": n_pred, "pairs_gold": n_gold, "pairs_correct": tp, "per_type": per_type}
    result["report"] = _report(result)
    return result


def _report(result: dict) -> str:
    width = max([len("micro")] + [len(t) for t in result["per_type"]])
    lines = [f"{'type':<{width}}  precision  recall      f1  support"]
    for t, v in result["per_type"].items():
        lines.append(f"{t:<{width}}  {v['precision']:9.4f}  {v['recall']:6.4f}  {v['f1']:6.4f}  {v['support']:7d}")
    lines.append(f"{'micro':<{width}}  {result['micro_precision']:9.4f}  {result['micro_recall']:6.4f}  "
                 f"{result['micro_f1']:6.4f}  {result['pairs_gold']:7d}")
    lines.append(f"{'macro':<{width}}  {'':9}  {'':6}  {result['macro_f1']:6.4f}")
    return "\n".join(lines)
