"""Run a model over encoded titles in batches sorted by length, for every task and backend.

A task's prediction is three steps: its codec encodes titles (:meth:`Task.encode_titles`), a
model turns padded batches into logits, and the task reduces each row to what its decoding
needs (:meth:`Task.reduce`) and decodes (:meth:`Task.decode`). Only the middle step differs
between a torch model, an ONNX session and a service batching many runs on one backbone, so
the decoding (slots, Viterbi, thresholds) is the same code for all of them.
"""
from __future__ import annotations

from typing import Callable


def forward_batches(model, encoded: list, batch_size: int, pad_id: int, reduce: Callable, device=None) -> list:
    """``reduce(logits, attention_mask)`` of each encoded title (each has ``input_ids``), in the
    titles' order. ``model(input_ids=..., attention_mask=...)`` returns an object with
    ``logits`` [batch, positions, outputs]; positions a prompt method puts in front are dropped.
    Batches are sorted by length, so little is padded."""
    import torch

    from ..model import token_logits
    from .slots import pad_ids

    model.eval()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    out: list = [None] * len(encoded)
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            batch = pad_ids([encoded[i].input_ids for i in idx], pad_id)
            input_ids, mask = batch["input_ids"], batch["attention_mask"]
            if device is not None:
                input_ids, mask = input_ids.to(device), mask.to(device)
            logits = token_logits(model(input_ids=input_ids, attention_mask=mask).logits, input_ids)
            for i, row in zip(idx, reduce(logits, mask)):
                out[i] = row
    return out
