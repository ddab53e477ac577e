"""The registry of tasks: what a model learns to predict from a title.

A task is one module in this package holding a :class:`Task` subclass, registered with
:func:`register`. The class is the whole task, so the core asks it instead of branching on its
name:

- recipe side (no torch): its options (the keys under ``task:`` beside ``type``, an options
  dataclass), the data formats it reads, its cross-section checks, its model-card line and
  the checks of its ``labels.json``;
- training side (an instance per run): codec (examples -> model inputs and targets), head
  start, loss, prediction and scoring of a split, what goes into ``labels.json`` and
  ``metrics.json``;
- prediction side: rebuilding the codec from ``labels.json`` and tagging new titles.

Registered: ``tagging`` (:mod:`.tagging`: character spans, span micro-F1), ``multilabel``
(:mod:`.multilabel`: tags from a vocabulary, tag micro-F1 with thresholds tuned on dev) and
``generation`` (:mod:`.generation`: a causal language model writes the tags, (type, value)
pair F1).
Adding a task is one module and one line at the end of this file.

This package stays free of torch at import: recipes are checked before anything heavy loads.
"""
from __future__ import annotations

import logging

from ..config.schema import TaskOptions

log = logging.getLogger("peft_tags.train")

class Task:
    """A task. Class attributes and class methods describe it; an instance trains one run."""

    name: str = ""
    options_cls: type = TaskOptions
    formats: tuple[str, ...] = ()  # data formats it reads (peft_tags.data.FORMATS)
    unit: str = "label"  # what a training example must hold at least one of ("span", "tag")
    help: str = ""
    pipeline_tag: str = ""  # the Hugging Face task of such a model (model card metadata); "" when none fits
    #: the model it trains (peft_tags.model.KINDS): "token", a stock token classifier whose head
    #: (``classifier``) is the task's; "causal", a stock causal language model, no head of its own
    model_kind: str = "token"
    # From a zero bias the first updates push every title towards the most common answer ("O"
    # for tagging, "no tag" for multi-label), and at a short budget the encoder can settle there:
    # on jd-ner at 189 steps LoRA (2e-3) and Houlsby (3e-3) stayed at dev micro-F1 0.001 from a
    # zero bias and reached 0.659 / 0.632 from the prior one; LoRA on jd-tags stayed at 0.12 for
    # 4 epochs from zero and had 0.58 after one from the prior.
    default_head_bias = "prior"

    # ------------------------------------------------------------------ recipe side
    @classmethod
    def variant(cls, head: str | None) -> type["Task"]:
        """The class that trains and reads a run of this task with ``head`` (``task.head`` of a
        recipe, ``head`` of a run's labels.json; None: the task's own): a task with several heads
        (tagging: BIO or global pointer) keeps one name and picks its class here."""
        return cls

    @classmethod
    def check_recipe(cls, recipe) -> list[tuple[str, str]]:
        """(dotted key, problem) pairs of the recipe as a whole; the data format is checked here."""
        if recipe.data.format not in cls.formats:
            return [("data.format", f"task {cls.name} reads {' or '.join(repr(f) for f in cls.formats)} files, "
                                    f"not '{recipe.data.format}'")]
        return []

    @classmethod
    def card_line(cls, recipe, metrics: dict) -> str:
        """What the model predicts, for the model card's task row."""
        return cls.help

    @classmethod
    def check_meta(cls, meta: dict, need, path) -> int:
        """Check the task's keys of a run's labels.json (at ``path``) with ``need(key, ok, what)``
        or a UserError naming ``path``; return the number of head outputs they imply."""
        raise NotImplementedError

    @classmethod
    def codec_from_meta(cls, tokenizer, meta: dict):
        """The codec of a trained run, from its labels.json."""
        raise NotImplementedError

    @classmethod
    def hf_labels(cls, meta: dict) -> list[str] | None:
        """The name of each head output, for ``id2label`` in the configs transformers reads;
        None: transformers' own ``LABEL_<n>``."""
        return None

    #: ``problem_type`` of a transformers config for such a head ("" for none)
    hf_problem_type: str = ""

    @classmethod
    def check_options(cls, **options) -> None:
        """Refuse (UserError) a prediction option this task does not have or a bad value."""
        if options:
            from ..errors import UserError

            name = next(iter(options))
            raise UserError(f"--{name.replace('_', '-')}: not an option of {cls.name} runs")

    @classmethod
    def tag(cls, predictor, titles: list[str], normalized: list[str], batch_size: int, **options) -> list[list]:
        """The tags of each title with a loaded run (:class:`peft_tags.predict.Tagger`), read
        from its ``normalized`` form (same length); each tag has ``as_dict()`` and ``line()``.
        ``options`` (checked by :meth:`check_options`): the task's own prediction options.

        By default: :meth:`encode_titles`, the run's model over length-sorted batches
        (:func:`.batches.forward_batches`), :meth:`reduce` per batch and :meth:`decode`. A task
        that defines ``reduce`` and ``decode`` is also batched across runs by ``peft-tags serve``."""
        from .batches import forward_batches

        codec = predictor.codec
        encoded = cls.encode_titles(codec, normalized)
        outputs = forward_batches(predictor.model, encoded, batch_size, codec.tokenizer.pad_token_id,
                                  lambda logits, mask: cls.reduce(codec, logits, mask), predictor.device)
        return cls.decode(predictor, titles, normalized, encoded, outputs, **options)

    @classmethod
    def encode_titles(cls, codec, normalized: list[str]) -> list:
        """The model inputs of titles to tag (each with ``input_ids``)."""
        return codec.encode(normalized)

    #: reduce(codec, logits [batch, tokens, outputs], attention_mask) -> one numpy row per title;
    #: None: the task has its own ``tag`` and is not batched across runs
    reduce = None

    @classmethod
    def decode(cls, predictor, titles: list[str], normalized: list[str], encoded: list, outputs: list,
               **options) -> list[list]:
        """The tags of each title from its encoding and its reduced model output."""
        raise NotImplementedError

    # ------------------------------------------------------------------ retune (a decision rule tuned on dev)
    #: the task.* keys ``peft-tags retune`` may change; empty: the task has no rule to tune again
    retune_keys: tuple[str, ...] = ()

    @classmethod
    def for_codec(cls, recipe, codec) -> "Task":
        """The task of a trained run (its codec, as loaded), to score and tune again."""
        raise NotImplementedError

    def retuned_metrics(self) -> dict:
        """The metrics.json keys that retune replaces."""
        return {}

    def retuned_meta(self) -> dict:
        """The labels.json keys that retune replaces."""
        return {}

    # ------------------------------------------------------------------ training side
    codec = None

    def __init__(self, recipe, tokenizer, train_examples):
        self.recipe = recipe

    @property
    def num_outputs(self) -> int:
        return self.codec.num_outputs

    def encode(self, examples):
        return self.codec.encode([e.text for e in examples], examples)

    def init_head(self, model, train_encoded) -> None:
        """Start the freshly built head (before the method wraps the model) at the bias the
        recipe asks for: ``task.head_bias`` prior, zero, or auto (the task's default). With the
        prior bias the first predictions are the labels' base rates, so the first updates need
        not push every title towards the most common answer, which the encoder can settle on."""
        import torch

        from ..model import HEAD_NAME

        how = self.recipe.task.head_bias
        if (self.default_head_bias if how == "auto" else how) == "zero":
            return
        head = getattr(model, HEAD_NAME)
        with torch.no_grad():
            head.bias.copy_(torch.from_numpy(self.prior_bias(train_encoded)).to(head.bias))

    def prior_bias(self, train_encoded):
        raise NotImplementedError

    def describe(self, data: dict, encoded: dict) -> None:
        """Log (and keep for metrics.json) what the data looks like to this task."""

    def collate(self, batch, pad_id: int):
        raise NotImplementedError

    def loss(self, logits, batch: dict):
        raise NotImplementedError

    def forward_options(self, batch: dict) -> dict:
        """Extra keyword arguments of training's forward pass over ``batch`` (for example the
        positions whose logits the loss reads); a key the model's forward does not take is
        dropped, so :meth:`loss` must also accept the full output."""
        return {}

    def divergence(self, logits_a, logits_b, batch: dict):
        """R-Drop (``training.rdrop_alpha``): the symmetric KL divergence between the task's output
        distributions of two passes over ``batch`` (a scalar tensor)."""
        raise NotImplementedError

    def predict(self, model, examples, encoded, batch_size: int, device) -> list:
        raise NotImplementedError

    def score(self, split: str, predictions: list, examples, final: bool) -> dict:
        raise NotImplementedError

    def meta(self) -> dict:
        """labels.json: ``task`` (the name), ``max_length``, ``num_outputs`` and the task's own keys."""
        raise NotImplementedError

    def metrics(self) -> dict:
        return {}


def is_int(v, lo: int = 1, hi: int | None = None) -> bool:
    """A JSON integer (not a boolean) in [lo, hi]: for the checks of labels.json."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)


def distinct_names(v) -> bool:
    """A list of distinct non-empty strings: for the checks of labels.json."""
    return isinstance(v, list) and all(isinstance(x, str) and x for x in v) and len(set(v)) == len(v)


REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: make ``cls`` the task called ``cls.name``."""
    REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type[Task]:
    return REGISTRY[name]


def names() -> list[str]:
    return list(REGISTRY)


#: the task of a recipe without task.type, and of a run whose labels.json names none
DEFAULT = "tagging"


def task_of(meta: dict) -> str:
    """The task name a run's labels.json records."""
    return meta.get("task", DEFAULT)


def of_recipe(recipe) -> type[Task]:
    """The task class a recipe trains (its task.type, and task.head where the task has heads)."""
    return get(recipe.task.type).variant(getattr(recipe.task, "head", None))


def of_meta(meta: dict) -> type[Task]:
    """The task class of a trained run, from its labels.json (``task`` and ``head``)."""
    return get(task_of(meta)).variant(meta.get("head"))


def make_task(recipe, tokenizer, train_examples) -> Task:
    return of_recipe(recipe)(recipe, tokenizer, train_examples)


from . import tagging, multilabel, generation  # noqa: E402,F401  (registration)
