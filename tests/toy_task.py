"""A toy task, written as a new task would be: one module and one registration (``@register``).

``first-type``: the type of a title's first span (or ``none``), one class per title, from the
span files the tagging task reads. The head is the stock token-classification head; its
per-token logits are averaged over the title (the head is affine, so this is the head on the
mean token vector), and cross-entropy trains it. Scored by accuracy, reported as micro-F1 (for
one class per title the two are the same).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from peft_tags.config.validate import opt
from peft_tags.tasks import Task, TaskOptions, distinct_names, register

NONE = "none"


@dataclass(kw_only=True)
class FirstTypeOptions(TaskOptions):
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy, in [0, 1)", ge=0, lt=1)


@dataclass(frozen=True)
class Kind:
    kind: str
    score: float

    def as_dict(self) -> dict:
        return {"kind": self.kind, "score": round(self.score, 4)}

    def line(self) -> str:
        return f"{self.kind}\t{self.score:.3f}"


@dataclass
class Encoded:
    input_ids: list[int]
    label: int


class Codec:
    def __init__(self, tokenizer, classes: list[str], max_length: int):
        self.tokenizer, self.classes, self.max_length = tokenizer, list(classes), max_length

    @property
    def num_outputs(self) -> int:
        return len(self.classes)

    def encode(self, texts, examples=None):
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        labels = [self.classes.index(_first(e)) if examples is not None and _first(e) in self.classes else -1
                  for e in (examples or [None] * len(texts))]
        return [Encoded(list(i), lab) for i, lab in zip(ids, labels)]

    def scores(self, model, encoded, batch_size, device) -> np.ndarray:
        import torch

        from peft_tags.model import token_logits
        from peft_tags.tasks.slots import pad_ids

        model.eval()
        out = np.zeros((len(encoded), self.num_outputs), dtype=np.float32)
        with torch.no_grad():
            for b in range(0, len(encoded), batch_size):
                batch = pad_ids([e.input_ids for e in encoded[b:b + batch_size]], self.tokenizer.pad_token_id)
                ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                out[b:b + batch_size] = torch.softmax(_pool(token_logits(model(input_ids=ids, attention_mask=mask).logits, ids),
                                                            mask), -1).cpu().numpy()
        return out


def _first(example) -> str:
    return min(example.spans).label if example.spans else NONE


def _pool(logits, mask):
    m = mask.to(logits.dtype).unsqueeze(-1)
    return (logits.float() * m).sum(1) / m.sum(1).clamp(min=1.0)


@register
class FirstTypeTask(Task):
    name = "first-type"
    options_cls = FirstTypeOptions
    formats = ("conll", "jsonl")
    unit = "span"
    help = "the type of a title's first span"
    default_head_bias = "zero"

    @classmethod
    def card_line(cls, recipe, metrics: dict) -> str:
        return f"first span type of a title ({metrics['classes']} classes)"

    @classmethod
    def check_meta(cls, meta, need, path) -> int:
        need("classes", distinct_names, "a list of distinct classes")
        return len(meta["classes"])

    @classmethod
    def codec_from_meta(cls, tokenizer, meta):
        return Codec(tokenizer, meta["classes"], meta["max_length"])

    @classmethod
    def tag(cls, predictor, titles, normalized, batch_size, **options):
        p = predictor.codec.scores(predictor.model, predictor.codec.encode(normalized), batch_size, predictor.device)
        return [[Kind(predictor.codec.classes[int(row.argmax())], float(row.max()))] for row in p]

    def __init__(self, recipe, tokenizer, train_examples):
        super().__init__(recipe, tokenizer, train_examples)
        classes = sorted({_first(e) for e in train_examples} | {NONE})
        self.codec = Codec(tokenizer, classes, recipe.backbone.max_length)

    def collate(self, batch, pad_id):
        import torch

        from peft_tags.tasks.slots import pad_ids

        out = pad_ids([e.input_ids for e in batch], pad_id)
        out["labels"] = torch.tensor([e.label for e in batch])
        return out

    def loss(self, logits, batch):
        import torch

        from peft_tags.model import token_logits

        pooled = _pool(token_logits(logits, batch["input_ids"]), batch["attention_mask"])
        return torch.nn.functional.cross_entropy(pooled, batch["labels"], ignore_index=-1,
                                                 label_smoothing=self.recipe.task.label_smoothing)

    def predict(self, model, examples, encoded, batch_size, device):
        return [self.codec.classes[int(r.argmax())] for r in self.codec.scores(model, encoded, batch_size, device)]

    def score(self, split, predictions, examples, final):
        right = sum(p == _first(e) for p, e in zip(predictions, examples))
        acc = right / max(len(examples), 1)
        return {"micro_f1": acc, "micro_precision": acc, "micro_recall": acc, "macro_f1": acc, "accuracy": acc,
                "report": f"accuracy {acc:.4f} ({right} of {len(examples)})\n"}

    def meta(self) -> dict:
        return {"task": self.name, "classes": self.codec.classes, "max_length": self.codec.max_length,
                "num_outputs": self.codec.num_outputs}

    def metrics(self) -> dict:
        return {"classes": len(self.codec.classes)}
