"""Task `multilabel`: the tags of a title from a fixed vocabulary, one sigmoid per tag.

The codec, the loss's positive weights and the decision rules (thresholds tuned on dev, top-k)
are in :mod:`.multihot`; this module is the task: its recipe options, data format, loss,
prediction, scores, model-card line and ``labels.json``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config.validate import opt
from . import Task, TaskOptions, distinct_names, is_int, log, register
from .multihot import (  # noqa: F401  (the codec's names, importable from the task)
    GRID, EncodedTitle, MultiLabelCodec, collate, decide, held_out_check, multi_hot, positive_weights, predict_probs,
    prior_logits, probs_rows, tune_global, tune_per_tag)

POOLING = ("mean", "first")
POS_WEIGHT = ("none", "sqrt", "balanced")
THRESHOLDS = ("auto", "per-tag", "global")


@dataclass(kw_only=True)
class MultiLabelOptions(TaskOptions):
    pooling: str = opt("mean", "the title's representation, " + " or ".join(POOLING)
                       + " (mean over its tokens, or the first token)", choices=POOLING)
    pos_weight: str = opt("none", "weight of a tag's positives in the loss: none, sqrt or balanced "
                          "((titles without / with the tag in train), or its square root), capped at pos_weight_cap",
                          choices=POS_WEIGHT)
    pos_weight_cap: float = opt(50.0, "the largest positive weight (>= 1)", ge=1)
    thresholds: str = opt("auto", "decision thresholds tuned on dev: per-tag (a tag with fewer than min_tag_support "
                          "dev titles uses the global one), one global, or auto (per-tag only if they beat the global "
                          "one on held-out dev folds)", choices=THRESHOLDS)
    min_tag_support: int = opt(5, "dev titles a tag needs for a threshold of its own (>= 1)", ge=1)
    top_k: int | None = opt(None, "at most this many tags per title (the highest scores); null: no limit", ge=1)


@dataclass(frozen=True)
class ScoredTag:
    """A tag of a title from the run's vocabulary, with its probability."""

    tag: str
    score: float

    def as_dict(self) -> dict:
        return {"tag": self.tag, "score": round(self.score, 4)}

    def line(self) -> str:
        return f"{self.tag}\t{self.score:.3f}"


def _is_prob(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0


@register
class MultiLabelTask(Task):
    name = "multilabel"
    options_cls = MultiLabelOptions
    formats = ("tags", "hf-tags")
    unit = "tag"
    help = "tags from the training vocabulary, one sigmoid per tag, thresholds tuned on dev"
    pipeline_tag = "text-classification"
    retune_keys = ("thresholds", "min_tag_support", "top_k")

    # ------------------------------------------------------------------ recipe side
    @classmethod
    def check_recipe(cls, recipe) -> list[tuple[str, str]]:
        problems = super().check_recipe(recipe)
        if problems:
            problems = [("data.format", problems[0][1] + " ({\"text\": ..., \"tags\": [...]} per line)")]
        if not recipe.data.has_dev:
            problems.append(("data.dev", "task multilabel tunes its decision thresholds on dev; give a dev file (or "
                                         "data.dev_from_train)"))
        return problems

    @classmethod
    def card_line(cls, recipe, m: dict) -> str:
        t, th = recipe.task, m.get("thresholds", {})
        return (f"multi-label tags ({m['tag_stats']['vocabulary']} in the vocabulary), {t.pooling} pooling, sigmoid per tag; "
                f"decision: {th.get('rule', t.thresholds)} thresholds tuned on dev (global {th.get('global')}"
                + (f"; asked for auto: held-out dev micro-F1 per-tag {th['held_out_dev']['per-tag']:.4f}, global "
                   f"{th['held_out_dev']['global']:.4f}" if th.get("held_out_dev") else "") + ")"
                + (f", at most {t.top_k} tags" if t.top_k else ""))

    @classmethod
    def check_meta(cls, meta: dict, need, path) -> int:
        from ..errors import UserError

        need("tags", lambda v: distinct_names(v) and v, "a non-empty list of distinct tags")
        need("pooling", lambda v: v in POOLING, " or ".join(POOLING))
        need("thresholds", lambda v: isinstance(v, dict), "an object")
        th = meta["thresholds"]
        if th.get("rule") not in ("per-tag", "global"):
            raise UserError(f"{path}: 'thresholds.rule' must be per-tag or global, got {th.get('rule')!r}")
        if not _is_prob(th.get("global")):
            raise UserError(f"{path}: 'thresholds.global' must be a number in [0, 1], got {th.get('global')!r}")
        per_tag = th.get("per_tag")
        if th["rule"] == "per-tag" or per_tag is not None:
            bad = next((t for t in meta["tags"] if not isinstance(per_tag, dict) or not _is_prob(per_tag.get(t))), None)
            if bad is not None:
                raise UserError(f"{path}: 'thresholds.per_tag' must hold a number in [0, 1] for every tag "
                                f"(not for '{bad}')")
        if th.get("top_k") is not None and not is_int(th["top_k"]):
            raise UserError(f"{path}: 'thresholds.top_k' must be null or an integer >= 1, got {th['top_k']!r}")
        return len(meta["tags"])

    hf_problem_type = "multi_label_classification"

    @classmethod
    def hf_labels(cls, meta: dict) -> list[str]:
        return list(meta["tags"])

    @classmethod
    def codec_from_meta(cls, tokenizer, meta: dict) -> MultiLabelCodec:
        return MultiLabelCodec(tokenizer, meta["tags"], meta["max_length"], meta["pooling"])

    @classmethod
    def check_options(cls, top_k: int | None = None, threshold: float | None = None, **options) -> None:
        """``top_k`` caps the tags per title; ``threshold`` replaces the tuned thresholds by one value."""
        from ..errors import UserError

        super().check_options(**options)
        if top_k is not None and not is_int(top_k):
            raise UserError(f"top_k must be at least 1, got {top_k}")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                      or not 0.0 < threshold < 1.0):
            raise UserError(f"threshold must be between 0 and 1, got {threshold}")

    @classmethod
    def reduce(cls, codec, logits, attention_mask) -> list[np.ndarray]:
        return probs_rows(codec, logits, attention_mask)

    @classmethod
    def decode(cls, predictor, titles, normalized, encoded, outputs, top_k: int | None = None,
               threshold: float | None = None) -> list[list[ScoredTag]]:
        """Tags of each title, highest score first. By default the run's decision rule: the
        thresholds tuned on dev (per tag or global, as the recipe said) and its top-k."""
        codec = predictor.codec
        probs = np.stack(outputs) if outputs else np.zeros((0, codec.num_outputs), dtype=np.float32)
        th = predictor.meta["thresholds"]
        if threshold is not None:
            rule = threshold
        elif th["rule"] == "per-tag":
            rule = np.array([th["per_tag"][t] for t in codec.tags])
        else:
            rule = th["global"]
        picked = decide(probs, rule, top_k or th.get("top_k"))
        return [[ScoredTag(codec.tags[j], float(p[j])) for j in row] for row, p in zip(picked, probs)]

    # ------------------------------------------------------------------ training side
    def __init__(self, recipe, tokenizer, train_examples):
        import torch

        from ..data import tag_set

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
        return collate(batch, pad_id)

    def loss(self, logits, batch: dict):
        import torch

        from ..model import token_logits

        pooled = self.codec.pool(token_logits(logits, batch["input_ids"]).float(), batch["attention_mask"])
        weight = None if self.pos_weight is None else self.pos_weight.to(pooled.device)
        return torch.nn.functional.binary_cross_entropy_with_logits(pooled, batch["labels"].float(), pos_weight=weight)

    def divergence(self, logits_a, logits_b, batch: dict):
        """Symmetric KL between the two passes' tag probabilities (a Bernoulli per tag), averaged."""
        import torch

        from ..model import token_logits

        a, b = (self.codec.pool(token_logits(x, batch["input_ids"]).float(), batch["attention_mask"])
                for x in (logits_a, logits_b))
        return ((torch.sigmoid(a) - torch.sigmoid(b)) * (a - b)).mean() / 2

    def predict(self, model, examples, encoded, batch_size: int, device) -> list:
        """The tag probabilities of each example (a row of the vocabulary's size)."""
        return list(predict_probs(model, self.codec, encoded, batch_size, device))

    def _decide(self, probs: np.ndarray, thresholds) -> list[list[str]]:
        return [[self.codec.tags[j] for j in row] for row in decide(probs, thresholds, self.recipe.task.top_k)]

    def score(self, split: str, predictions: list, examples, final: bool) -> dict:
        """Dev: the global threshold is tuned on it and dev is scored at that one number (model
        selection, also across learning rates); at the end the per-tag thresholds are tuned too,
        and kept. Test (and anything not dev) is scored with the recipe's decision rule
        (task.thresholds, task.top_k). Per-tag thresholds tuned on dev would flatter dev, so dev
        reports them only under ``by_rule``."""
        from ..metrics import tag_f1

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
        return {"task": self.name, "tags": c.tags, "pooling": c.pooling, "max_length": c.max_length,
                "num_outputs": c.num_outputs, "thresholds": self.thresholds()}

    def retuned_metrics(self) -> dict:
        return {"thresholds": self.metrics()["thresholds"]}

    def retuned_meta(self) -> dict:
        return {"thresholds": self.thresholds()}

    def metrics(self) -> dict:
        th = self.thresholds()
        return {"tag_stats": self.stats, "thresholds": {k: v for k, v in th.items() if k != "per_tag"}}
