"""The tasks a recipe can train, behind one interface the training loop uses.

A task turns examples into model inputs and targets, computes the loss from the model's
per-token logits, predicts a split (each process a shard; the predictions are gathered) and
scores it, and says what goes into ``labels.json`` and ``metrics.json``.

- ``tagging`` (:mod:`.tagging`): character spans, scored by span micro-F1.
- ``multilabel`` (:mod:`.multilabel`): tags from a vocabulary, scored by tag micro-F1 with
  thresholds tuned on dev.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger("peft_tags.train")


class _Task:
    """What both tasks do the same way: the codec sizes the head and encodes the examples."""

    codec = None

    @property
    def num_outputs(self) -> int:
        return self.codec.num_outputs

    def encode(self, examples):
        return self.codec.encode([e.text for e in examples], examples)

    # From a zero bias the first updates push every title towards the most common answer ("O"
    # for tagging, "no tag" for multi-label), and at a short budget the encoder can settle there:
    # on jd-ner at 189 steps LoRA (2e-3) and Houlsby (3e-3) stayed at dev micro-F1 0.001 from a
    # zero bias and reached 0.659 / 0.632 from the prior one; LoRA on jd-tags stayed at 0.12 for
    # 4 epochs from zero and had 0.58 after one from the prior.
    default_head_bias = "prior"

    def init_head(self, model, train_encoded) -> None:
        """Start the freshly built head (before the method wraps the model) at the bias the
        recipe asks for: ``task.head_bias`` prior, zero, or auto (the task's default). With the
        prior bias the first predictions are the labels' base rates, so the first updates need
        not push every title towards the most common answer, which the encoder can settle on."""
        from ..model import HEAD_NAME

        how = self.recipe.task.head_bias
        if (self.default_head_bias if how == "auto" else how) == "zero":
            return
        head = getattr(model, HEAD_NAME)
        with torch.no_grad():
            head.bias.copy_(torch.from_numpy(self.prior_bias(train_encoded)).to(head.bias))

    def prior_bias(self, train_encoded) -> np.ndarray:
        raise NotImplementedError


class TaggingTask(_Task):
    name = "tagging"

    def __init__(self, recipe, tokenizer, train_examples):
        from ..data import label_set
        from .tagging import TaggingCodec

        self.recipe = recipe
        self.codec = TaggingCodec(tokenizer, label_set(train_examples), recipe.task.slots, recipe.backbone.max_length)
        self.stats: dict = {}

    def prior_bias(self, train_encoded) -> np.ndarray:
        """Per slot, the log share of each label among the characters in that slot in train
        (smoothed), laid out as the head's outputs: slot-major, one block of labels per slot."""
        from .tagging import IGNORE

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
        from .tagging import collate

        return collate(batch, pad_id)

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        from ..model import token_logits
        from .tagging import loss_fn

        return loss_fn(token_logits(logits, batch["input_ids"]), batch["labels"], len(self.codec.labels))

    def predict(self, model, examples, encoded, batch_size: int, device) -> list:
        """The decoded spans of each example."""
        from ..predict import predict_log_probs

        scores = predict_log_probs(model, self.codec, encoded, batch_size, device)
        return [self.codec.decode(ex.text, enc, log_probs=lp) for ex, enc, lp in zip(examples, encoded, scores)]

    def score(self, split: str, predictions: list, examples, final: bool) -> dict:
        from ..metrics import span_f1

        return span_f1(predictions, [e.spans for e in examples])

    def meta(self) -> dict:
        c = self.codec
        return {"task": "tagging", "types": c.types, "labels": c.labels, "slots": c.slots, "max_length": c.max_length,
                "num_outputs": c.num_outputs}

    def metrics(self) -> dict:
        return {"alignment": self.stats,
                "spans_of_unseen_types": {k: v["spans_of_unseen_types"] for k, v in self.stats.items()}}


class MultiLabelTask(_Task):
    name = "multilabel"

    def __init__(self, recipe, tokenizer, train_examples):
        from ..data import tag_set
        from .multilabel import MultiLabelCodec, positive_weights, prior_logits

        t = recipe.task
        tags = tag_set(train_examples)
        if not tags:
            from ..errors import UserError
            raise UserError(f"data.train: no title in {train_examples[0].source.rsplit(':', 1)[0]} has a tag; "
                            "a multi-label task needs tags to learn")
        weights = positive_weights(train_examples, tags, t.pos_weight, t.pos_weight_cap)
        self._setup(recipe, MultiLabelCodec(tokenizer, tags, recipe.backbone.max_length, t.pooling),
                    None if weights is None else torch.from_numpy(weights))
        self.prior = prior_logits(train_examples, tags)

    def prior_bias(self, train_encoded) -> np.ndarray:
        """Each tag's log-odds in train."""
        return self.prior

    @classmethod
    def for_codec(cls, recipe, codec) -> "MultiLabelTask":
        """The task of a trained run (its codec, as loaded), to score and tune thresholds again."""
        task = cls.__new__(cls)
        task._setup(recipe, codec, None)
        return task

    def _setup(self, recipe, codec, pos_weight) -> None:
        self.recipe = recipe
        self.codec = codec
        self.pos_weight = pos_weight
        tags = codec.tags
        self.global_threshold = 0.5
        self.per_tag = None  # tuned at the end, on dev
        self.tuned_per_tag = 0  # tags with enough dev titles for a threshold of their own
        self.rule = "global" if recipe.task.thresholds == "auto" else recipe.task.thresholds  # auto: decided at the end
        self.rule_check = None  # auto: both rules' micro-F1 on held-out dev folds
        self.stats: dict = {"vocabulary": len(tags)}

    def describe(self, data: dict, encoded: dict) -> None:
        """Log and keep per split: tags per title, tags outside the training vocabulary (they count
        as misses), titles cut at max_length."""
        vocab = set(self.codec.tags)
        for split, examples in data.items():
            n_tags = sum(len(e.tags) for e in examples)
            outside = [t for e in examples for t in e.tags if t not in vocab]
            cut = sum(e.truncated for e in encoded[split])
            st = {"titles": len(examples), "tags": n_tags, "tags_per_title": round(n_tags / len(examples), 3),
                  "titles_without_tags": sum(not e.tags for e in examples),
                  "tags_outside_vocabulary": len(outside), "distinct_tags_outside_vocabulary": len(set(outside)),
                  "titles_cut_at_max_length": cut}
            self.stats[split] = st
            log.info("%s: %d titles, %.2f tags per title, %d without tags; %d tag occurrences (%d distinct) outside the "
                     "%d-tag training vocabulary%s; %d titles cut at %d tokens", split, len(examples), st["tags_per_title"],
                     st["titles_without_tags"], len(outside), len(set(outside)), len(vocab),
                     " (they count as misses)" if split != "train" and outside else "", cut, self.codec.max_length)

    def collate(self, batch, pad_id: int):
        from .multilabel import collate

        return collate(batch, pad_id)

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        from ..model import token_logits

        pooled = self.codec.pool(token_logits(logits, batch["input_ids"]).float(), batch["attention_mask"])
        weight = None if self.pos_weight is None else self.pos_weight.to(pooled.device)
        return torch.nn.functional.binary_cross_entropy_with_logits(pooled, batch["labels"].float(), pos_weight=weight)

    def predict(self, model, examples, encoded, batch_size: int, device) -> list:
        """The tag probabilities of each example (a row of the vocabulary's size)."""
        from .multilabel import predict_probs

        return list(predict_probs(model, self.codec, encoded, batch_size, device))

    def _decide(self, probs: np.ndarray, thresholds) -> list[list[str]]:
        from .multilabel import decide

        return [[self.codec.tags[j] for j in row] for row in decide(probs, thresholds, self.recipe.task.top_k)]

    def score(self, split: str, predictions: list, examples, final: bool) -> dict:
        """Dev: the global threshold is tuned on it and dev is scored at that one number (model
        selection, also across learning rates); at the end the per-tag thresholds are tuned too,
        and kept. Test (and anything not dev) is scored with the recipe's decision rule
        (task.thresholds, task.top_k). Per-tag thresholds tuned on dev would flatter dev, so dev
        reports them only under ``by_rule``."""
        from ..metrics import tag_f1
        from .multilabel import held_out_check, multi_hot, tune_global, tune_per_tag

        t = self.recipe.task
        probs = np.stack(predictions) if predictions else np.zeros((0, self.num_outputs), dtype=np.float32)
        gold = [e.tags for e in examples]
        vocab = set(self.codec.tags)
        if split == "dev":
            y = multi_hot(examples, self.codec.tags)
            missed = np.array([sum(1 for tag in g if tag not in vocab) for g in gold], dtype=np.int64)
            self.global_threshold, _ = tune_global(probs, y, int(missed.sum()))
            if final:
                self.per_tag = tune_per_tag(probs, y, self.global_threshold, t.min_tag_support)
                self.tuned_per_tag = int((y.sum(0) >= t.min_tag_support).sum())
                if t.thresholds == "auto":
                    self._choose_rule(held_out_check(probs, y, missed, t.min_tag_support))
        per_tag_rule = final and split != "dev" and self.rule == "per-tag" and self.per_tag is not None
        rule = self.per_tag if per_tag_rule else self.global_threshold
        scores = tag_f1(self._decide(probs, rule), gold)
        if final:  # the other rules, for the record
            scores["by_rule"] = {
                name: {k: tag_f1(self._decide(probs, th), gold)[k] for k in ("micro_f1", "macro_f1", "example_f1")}
                for name, th in (("per-tag", self.per_tag), ("global", self.global_threshold), ("0.5", 0.5))
                if th is not None
            }
        return scores

    def _choose_rule(self, check: dict | None) -> None:
        """``thresholds: auto`` takes per-tag thresholds only where they beat the global one on
        held-out dev folds: with few dev titles per tag, tuning each tag's own threshold can fit
        dev's noise and lose on new titles."""
        self.rule_check = check
        if check is None:
            self.rule = "global"
            log.info("thresholds: dev has too few titles to check per-tag thresholds on held-out folds; one global threshold")
        else:
            self.rule = "per-tag" if check["per-tag"] > check["global"] else "global"
            log.info("thresholds: on held-out dev titles (%d-fold), per-tag thresholds give micro-F1 %.4f, one global "
                     "threshold %.4f: using %s", check["folds"], check["per-tag"], check["global"],
                     "per-tag thresholds" if self.rule == "per-tag" else "the global threshold")

    def thresholds(self) -> dict:
        per_tag = self.per_tag if self.per_tag is not None else np.full(self.num_outputs, self.global_threshold)
        return {"rule": self.rule, "asked": self.recipe.task.thresholds, "held_out_dev": self.rule_check,
                "global": self.global_threshold,
                "per_tag": {tag: float(th) for tag, th in zip(self.codec.tags, per_tag)},
                "tuned_per_tag": self.tuned_per_tag,
                "min_tag_support": self.recipe.task.min_tag_support, "top_k": self.recipe.task.top_k}

    def meta(self) -> dict:
        c = self.codec
        return {"task": "multilabel", "tags": c.tags, "pooling": c.pooling, "max_length": c.max_length,
                "num_outputs": c.num_outputs, "thresholds": self.thresholds()}

    def metrics(self) -> dict:
        th = self.thresholds()
        return {"tag_stats": self.stats, "thresholds": {k: v for k, v in th.items() if k != "per_tag"}}


TASKS = {"tagging": TaggingTask, "multilabel": MultiLabelTask}


def make_task(recipe, tokenizer, train_examples):
    return TASKS[recipe.task.type](recipe, tokenizer, train_examples)
