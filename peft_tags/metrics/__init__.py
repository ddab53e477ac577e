"""Metrics: exact-match span F1 and multi-label tag F1, as plain Python and as an offline ``evaluate`` module.

:func:`span_f1` scores through the ``evaluate`` module loaded from :data:`SPAN_F1_DIR`
(:func:`load_span_f1`); it never touches the network, but importing ``evaluate`` costs a few
seconds once per process. :func:`compute_span_f1` is the same computation in plain Python.
"""
from __future__ import annotations

import functools
from pathlib import Path

from .span_f1.span_f1 import compute_span_f1, decode_span, encode_span, format_report

SPAN_F1_DIR = Path(__file__).resolve().parent / "span_f1"

__all__ = [
    "SPAN_F1_DIR",
    "compute_span_f1",
    "decode_span",
    "encode_span",
    "encode_spans",
    "format_report",
    "load_span_f1",
    "span_f1",
    "tag_f1",
]


def encode_spans(spans) -> list[str]:
    """``[Span, ...]`` -> ``["label\\tstart\\tend", ...]``, the metric's input form."""
    return [encode_span(s.label, s.start, s.end) for s in spans]


@functools.lru_cache(maxsize=1)
def load_span_f1():
    """The span F1 ``evaluate`` module, loaded once per process from :data:`SPAN_F1_DIR`.

    Kept in memory (no Arrow cache files). ``evaluate.load`` copies the script into the
    Hugging Face modules cache (``$HF_MODULES_CACHE``), which must be writable.
    """
    import evaluate

    return evaluate.load(str(SPAN_F1_DIR), keep_in_memory=True)


def span_f1(pred_spans, gold_spans, *, digits: int = 4) -> dict:
    """Span P/R/F1 of ``pred_spans`` against ``gold_spans`` (lists, one per example, of
    :class:`~peft_tags.data.Span`), computed by the offline ``evaluate`` module."""
    if len(pred_spans) != len(gold_spans):
        raise ValueError(f"{len(pred_spans)} examples of predictions but {len(gold_spans)} of gold spans")
    return load_span_f1().compute(
        predictions=[encode_spans(p) for p in pred_spans], references=[encode_spans(g) for g in gold_spans], digits=digits
    )


def tag_f1(pred_tags, gold_tags, *, digits: int = 4) -> dict:
    """Multi-label P/R/F1 of ``pred_tags`` against ``gold_tags`` (lists, one per example, of tag
    strings): micro, macro (over the tags in the references), example-based and per tag
    (``per_tag``), through the same offline ``evaluate`` module; tags are items without offsets."""
    if len(pred_tags) != len(gold_tags):
        raise ValueError(f"{len(pred_tags)} examples of predictions but {len(gold_tags)} of gold tags")
    scores = load_span_f1().compute(
        predictions=[[encode_span(t, 0, 0) for t in p] for p in pred_tags],
        references=[[encode_span(t, 0, 0) for t in g] for g in gold_tags], digits=digits,
    )
    scores["per_tag"] = scores.pop("per_type")
    return scores
