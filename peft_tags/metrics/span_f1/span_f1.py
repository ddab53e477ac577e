"""Span-level precision, recall and F1 for tagging, as an ``evaluate`` metric.

Load it from this directory (no network needed)::

    import evaluate
    metric = evaluate.load("/abs/path/to/peft_tags/metrics/span_f1", keep_in_memory=True)
    metric.compute(predictions=[["4\\t0\\t3"]], references=[["4\\t0\\t3", "1\\t5\\t7"]])

Each example is a list of spans encoded as ``"label\\tstart\\tend"``. A predicted span counts
only if an identical (label, start, end) span is in the references of the same example;
duplicates within an example count once. Zero divisions give 0.0. Multi-label tags are
scored as spans without offsets (``"tag\\t0\\t0"``): then micro, macro and per-type scores
are the usual multi-label ones and the example scores are the example-based ones.

The computation is plain Python (:func:`compute_span_f1`), usable without ``evaluate``. This
file must keep working as a stand-alone script: ``evaluate.load`` copies it alone into its
module cache, so it imports nothing from ``peft_tags``. ``evaluate`` is slow to import, so it
is imported only when the metric class is wanted: eagerly if ``evaluate`` is already loaded
(as it is when ``evaluate.load`` runs this file), else on first access to ``SpanF1``.
"""
from __future__ import annotations

import sys
from collections import Counter

_DESCRIPTION = """Exact-match span precision, recall and F1 (micro, macro over reference types,
per type) with a classification-report text table."""

_CITATION = ""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list (one per example) of lists of predicted spans, each "label\\tstart\\tend".
    references: list (one per example) of lists of gold spans, same encoding.
    digits: decimals in the report table (default 4).
Returns:
    micro_precision, micro_recall, micro_f1,
    macro_precision, macro_recall, macro_f1: unweighted mean over the types in the references,
    example_precision, example_recall, example_f1: mean over examples of each example's scores
        (an example with no reference and no predicted span scores 1),
    per_type: {label: {precision, recall, f1, support}} for every type in references or predictions,
    report: text table like sklearn's classification_report.
"""


def encode_span(label: str, start: int, end: int) -> str:
    return f"{label}\t{start}\t{end}"


def decode_span(s: str) -> tuple[str, int, int]:
    """``"label\\tstart\\tend"`` -> ``(label, start, end)``; the label may itself hold tabs."""
    parts = s.rsplit("\t", 2)
    if len(parts) != 3:
        raise ValueError(f"span {s!r} is not 'label<TAB>start<TAB>end'")
    try:
        return parts[0], int(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError(f"span {s!r}: start and end must be integers") from None


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def compute_span_f1(predictions, references, digits: int = 4) -> dict:
    """The metric on spans given as ``"label\\tstart\\tend"`` strings or ``(label, start, end)``
    tuples, one list per example."""
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} examples of predictions but {len(references)} of references"
        )
    tp: Counter = Counter()
    n_pred: Counter = Counter()
    n_gold: Counter = Counter()
    per_example = []  # (precision, recall, f1) of each example; an example with nothing to find and nothing found is right
    for pred, gold in zip(predictions, references):
        p = {decode_span(s) if isinstance(s, str) else tuple(s) for s in pred}
        g = {decode_span(s) if isinstance(s, str) else tuple(s) for s in gold}
        per_example.append((1.0, 1.0, 1.0) if not p and not g else _prf(len(p & g), len(p), len(g)))
        for label, _, _ in p:
            n_pred[label] += 1
        for label, _, _ in g:
            n_gold[label] += 1
        for label, _, _ in p & g:
            tp[label] += 1

    per_type = {}
    for label in sorted(set(n_gold) | set(n_pred)):
        pr, rc, f1 = _prf(tp[label], n_pred[label], n_gold[label])
        per_type[label] = {"precision": pr, "recall": rc, "f1": f1, "support": n_gold[label]}

    micro = _prf(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values()))
    gold_types = [t for t in per_type if n_gold[t] > 0]
    if gold_types:
        macro = tuple(sum(per_type[t][k] for t in gold_types) / len(gold_types) for k in ("precision", "recall", "f1"))
    else:
        macro = (0.0, 0.0, 0.0)
    total = sum(n_gold.values())
    if total:
        weighted = tuple(
            sum(per_type[t][k] * n_gold[t] for t in gold_types) / total for k in ("precision", "recall", "f1")
        )
    else:
        weighted = (0.0, 0.0, 0.0)

    return {
        "micro_precision": micro[0],
        "micro_recall": micro[1],
        "micro_f1": micro[2],
        "macro_precision": macro[0],
        "macro_recall": macro[1],
        "macro_f1": macro[2],
        **{f"example_{k}": (sum(e[i] for e in per_example) / len(per_example) if per_example else 0.0)
           for i, k in enumerate(("precision", "recall", "f1"))},
        "per_type": per_type,
        "report": format_report(per_type, micro, macro, weighted, total, digits),
    }


def format_report(per_type: dict, micro, macro, weighted, total: int, digits: int = 4) -> str:
    """A table in the layout of sklearn's ``classification_report``: one row per type (most
    support first), then micro, macro (over reference types) and weighted averages."""
    avg_names = ("micro avg", "macro avg", "weighted avg")
    width = max([len(t) for t in per_type] + [len(n) for n in avg_names])
    headers = ("precision", "recall", "f1-score", "support")
    head_fmt = "{:>{width}s} " + " {:>9}" * len(headers)
    row_fmt = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    report = head_fmt.format("", *headers, width=width) + "\n\n"
    for t in sorted(per_type, key=lambda t: (-per_type[t]["support"], t)):
        m = per_type[t]
        report += row_fmt.format(t, m["precision"], m["recall"], m["f1"], m["support"], width=width, digits=digits)
    report += "\n"
    for name, vals in zip(avg_names, (micro, macro, weighted)):
        report += row_fmt.format(name, *vals, total, width=width, digits=digits)
    return report


def _define_metric_class():
    import datasets
    import evaluate

    class SpanF1(evaluate.Metric):
        """Exact-match span P/R/F1; see the module docstring."""

        def _info(self):
            return evaluate.MetricInfo(
                description=_DESCRIPTION,
                citation=_CITATION,
                inputs_description=_KWARGS_DESCRIPTION,
                features=datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("string")),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
            )

        def _compute(self, predictions, references, digits: int = 4):
            return compute_span_f1(predictions, references, digits=digits)

    SpanF1.__module__ = __name__
    SpanF1.__qualname__ = "SpanF1"
    return SpanF1


if "evaluate" in sys.modules:
    SpanF1 = _define_metric_class()
else:

    def __getattr__(name: str):
        if name == "SpanF1":
            cls = _define_metric_class()
            globals()["SpanF1"] = cls
            return cls
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
