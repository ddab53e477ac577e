"""The recipe's sections as dataclasses: every key, its type, default, help and checks."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .validate import opt

SCHEDULES = ("linear", "cosine", "constant")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")


def _trackers() -> tuple:
    """training.log_with's choices: every tracker accelerate knows by name (its registry, so a newer
    accelerate brings its new trackers), 'all' (each of them that is installed) and 'none'."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return (*LOGGER_TYPE_TO_CLASS, "all", "none")


LOG_WITH = _trackers  # read when a recipe is checked


QUANTIZATION = ("none", "nf4", "fp4", "int8")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class BackboneSection:
    name: str = opt(help="backbone: an alias (me5-small, minilm-l6), a Hugging Face hub id, or a local directory")
    cache_dir: str | None = opt(None, "conversion cache; null -> $PEFT_TAGS_CACHE or ~/.cache/peft-tags")
    max_length: int = opt(160, "maximum sequence length in tokens (>= 8); longer inputs are cut", ge=8)
    quantization: str = opt("none", "load the frozen backbone quantised through bitsandbytes (QLoRA): "
                           + ", ".join(QUANTIZATION), choices=QUANTIZATION)
    double_quantization: bool = opt(True, "4-bit only: quantise the quantisation constants too")
    compute_dtype: str = opt("float32", "4-bit only: dtype the de-quantised weights compute in: " + ", ".join(COMPUTE_DTYPES),
                            choices=COMPUTE_DTYPES)

    def check(self) -> list[tuple[str, str]]:
        return [("name", "must not be empty")] if not self.name.strip() else []


HEAD_BIAS = ("auto", "prior", "zero")


def _data_formats() -> tuple:
    from ..data import FORMATS

    return tuple(FORMATS)


@dataclass(kw_only=True)
class TaskOptions:
    """The keys every task section has; a task's options dataclass (peft_tags.tasks) extends it."""

    type: str = opt(None, "task type: one of peft_tags.tasks.names() (tagging, multilabel, ...); "
                         "not given: peft_tags.tasks.DEFAULT")
    head_bias: str = opt("auto", "the head's starting bias: prior (the log base rate of each label, or log-odds of each "
                         "tag, in train), zero, or auto (the task's default)", choices=HEAD_BIAS)


@dataclass(kw_only=True)
class DataSection:
    root: str | None = opt(None, "data root; null -> $PEFT_TAGS_DATA, else ../shared/data if it exists")
    format: str = opt("conll", "file format: one of peft_tags.data.FORMATS (conll, jsonl, attribute-value, tags, "
                               "hf-spans, hf-tags); the task says which it reads", choices=_data_formats)
    train: str = opt(help="training file, relative to data.root (or absolute); with data.hub: a split name")
    dev: str | None = opt(None, "dev file (model selection), relative to data.root; with data.hub: a split name; "
                                "null: none")
    test: str | None = opt(None, "test file (final scores), relative to data.root; with data.hub: a split name; "
                                 "null: none")
    columns: dict[str, str] | None = opt(None, "hf-spans / hf-tags: our name -> the source's column, e.g. "
                                               "{text: title, tags: labels}; null: columns named text and spans "
                                               "(hf-spans) or tags (hf-tags); BIO per character: map bio")
    hub: str | None = opt(None, "hf-spans / hf-tags: a Hugging Face hub dataset (owner/name) to read instead of "
                                "files; data.train, dev and test are then its split names; null: files")
    hub_config: str | None = opt(None, "the hub dataset's configuration (subset); null: its default")
    hub_revision: str | None = opt(None, "the hub dataset's branch, tag or commit (a commit pins the data); "
                                         "null: main")
    fullwidth_to_halfwidth: bool = opt(True, "map full-width characters (ＡＢＣ１２３) to half-width before tokenizing")
    lowercase: bool = opt(False, "lowercase the text before tokenizing")
    dev_from_train: float | None = opt(None, "a data set without a dev file: hold out this share (0 < x < 0.5) of the "
                                             "training titles as dev, chosen by a hash of each title (the same titles "
                                             "every run, duplicates together); null: none", gt=0, lt=0.5)
    max_train_examples: int | None = opt(None, "use only N training examples (> 0, see data.subset); null: all", gt=0)
    max_dev_examples: int | None = opt(None, "use only N dev examples (> 0, see data.subset); null: all", gt=0)
    max_test_examples: int | None = opt(None, "use only N test examples (> 0, see data.subset); null: all", gt=0)
    subset: str = opt("first", "which N examples the max_*_examples keys keep: first (the first N of the file) or "
                               "spread (N spread evenly over it: a file sorted by category gives each its share)",
                      choices=("first", "spread"))

    def check(self) -> list[tuple[str, str]]:
        problems = []
        for key in ("train", "dev", "test"):
            if getattr(self, key) is not None and not getattr(self, key).strip():
                problems.append((key, "must not be empty (use null for none)"))
        if self.dev_from_train is not None and self.dev is not None:
            problems.append(("dev_from_train", f"holds dev out of data.train, and data.dev names a dev file "
                                               f"('{self.dev}'); set one of them to null"))
        for key in ("dev", "test"):
            value = getattr(self, key)
            if value and value.strip() and Path(value) == Path(self.train):
                problems.append((key, f"is the same {'split' if self.hub else 'file'} as data.train ('{self.train}'); "
                                      f"its scores would be training scores"))
        return problems + self._source_problems()

    @property
    def has_dev(self) -> bool:
        """Whether the runs of this data have a dev split (a file, or held out of train)."""
        return self.dev is not None or self.dev_from_train is not None

    def _source_problems(self) -> list[tuple[str, str]]:
        """The keys of the formats read through Hugging Face datasets (peft_tags.data.hf)."""
        from ..data import SOURCE_FORMATS
        from ..data.hf import column_problems

        problems = column_problems(self.format, self.columns)
        if self.hub is not None and self.format not in SOURCE_FORMATS:
            problems.append(("hub", f"format '{self.format}' reads files; a hub dataset is read by format "
                                    f"{' or '.join(sorted(SOURCE_FORMATS))}"))
        elif self.hub is not None and not self.hub.strip():
            problems.append(("hub", "must not be empty (use null to read files)"))
        for key in ("hub_config", "hub_revision"):
            if getattr(self, key) is not None and self.hub is None:
                problems.append((key, "applies to a hub dataset; set data.hub too"))
        return problems


@dataclass
class MethodSection:
    name: str = opt(help="fine-tuning method (peft_tags.methods.names(): ours, or any peft method by its peft name); "
                        "the other keys of this section are its options")
    options: Any = opt(None, "the method's options dataclass instance")


@dataclass
class TrainingSection:
    epochs: int = opt(3, "passes over the training data (>= 1)", ge=1)
    batch_size: int = opt(16, "examples per step, per process (>= 1)", ge=1)
    grad_accum: int = opt(1, "steps whose gradients are summed before one update (>= 1)", ge=1)
    lr: float = opt(1e-3, "peak learning rate (> 0)", gt=0)
    head_lr: float | None = opt(None, "learning rate of the task head (> 0); null -> training.lr", gt=0)
    weight_decay: float = opt(0.01, "AdamW weight decay (>= 0)", ge=0)
    warmup_ratio: float = opt(0.06, "fraction of the updates spent warming up, in [0, 1)", ge=0, lt=1)
    schedule: str = opt("linear", "learning-rate schedule after warmup: " + ", ".join(SCHEDULES),
                       choices=SCHEDULES)
    max_grad_norm: float | None = opt(1.0, "clip gradients to this norm (> 0); null: no clipping", gt=0)
    seed: int = opt(42, "random seed (data order, dropout, head init)")
    mixed_precision: str = opt("auto", "mixed precision: " + ", ".join(MIXED_PRECISION)
                              + " (auto: accelerate launch's --mixed_precision or config where it set one, else bf16 "
                                "where the hardware has it, else no)", choices=MIXED_PRECISION,
                              bool_word={False: "no"})
    eval_every_epochs: int = opt(1, "score the dev set every N epochs (>= 1)", ge=1)
    checkpoint_every_steps: int | None = opt(None, "write a checkpoint every N updates (>= 1); "
                                                  "null -> at the end of each epoch", ge=1)
    resume: bool = opt(False, "continue from the last checkpoint in <output.dir>.work (with the same recipe, data "
                             "and code)")
    num_threads: int | None = opt(None, "torch CPU threads (>= 1); null -> all cores of this process's share", ge=1)
    length_bucketing: bool = opt(True, "batch examples of similar length together (less padding)")
    log_with: str | None = opt("tensorboard", "metrics tracker: any accelerate supports, by name (tensorboard, "
                              "mlflow, wandb, aim, ...: accelerate.tracking.LOGGER_TYPE_TO_CLASS), all (every one "
                              "installed), or none (null); one name, its package installed. Written under the run's "
                              "logs/ (mlflow: a file store, logs/mlruns, unless MLFLOW_TRACKING_URI is set)",
                              choices=LOG_WITH, none_word="none")
    early_stopping_patience: int | None = opt(None, "stop after N dev evaluations in a row (>= 1) that do not beat "
                                             "the best dev micro-F1 that counted so far by more than "
                                             "training.early_stopping_min_delta (the first evaluation counts); needs "
                                             "data.dev; null: off. The weights kept are still those of the highest dev "
                                             "micro-F1, and the learning-rate schedule stays the one planned for all "
                                             "training.epochs", ge=1)
    early_stopping_min_delta: float = opt(0.0, "the dev micro-F1 gain (>= 0) an evaluation needs to reset the "
                                               "early-stopping patience; it does not affect which weights are kept", ge=0)
    gradient_checkpointing: bool = opt(False, "recompute the backbone's layer activations in the backward pass instead "
                                              "of keeping them: less memory for about a third more compute; with any "
                                              "method whose gradients pass through the backbone (not prefix tuning), "
                                              "on a quantised backbone too")
    rdrop_alpha: float = opt(0.0, "R-Drop: each batch passes twice (different dropout) and alpha (>= 0) times the "
                                  "symmetric KL between the two outputs joins the loss; 0: off", ge=0)
    fgm_epsilon: float = opt(0.0, "FGM: a second pass with the input embeddings moved by epsilon (>= 0) along the "
                                  "loss gradient (per title) trains against that perturbation too; 0: off", ge=0)

    @property
    def effective_head_lr(self) -> float:
        return self.lr if self.head_lr is None else self.head_lr


@dataclass
class OutputSection:
    dir: str = opt(help="directory the run is written to")
    overwrite: bool = opt(False, "replace an existing output.dir at the end, if peft-tags wrote it")
    push_to_hub: str | None = opt(None, "after training, upload the output directory to this Hugging Face hub "
                                        "repository (owner/name; created if missing); null: no upload")
    hub_private: bool = opt(True, "a repository that push_to_hub creates is private")

    def check(self) -> list[tuple[str, str]]:
        import re

        problems = [("dir", "must not be empty")] if not self.dir.strip() else []
        repo = self.push_to_hub
        if repo is not None and not re.fullmatch(r"(?:[\w.-]+/)?[\w.-]{1,96}", repo) or repo and (
                "--" in repo or ".." in repo or repo.endswith((".", "-")) or repo.startswith(("-", "."))):
            problems.append(("push_to_hub", f"'{repo}' is not a hub repository id (owner/name: letters, digits, "
                                            "'-', '_', '.')"))
        return problems


@dataclass
class Recipe:
    backbone: BackboneSection = opt(help="the pretrained encoder")
    task: Any = opt(help="what the model predicts: the options dataclass of the task named by task.type")
    data: DataSection = opt(help="where the examples are and how to read them")
    method: MethodSection = opt(help="the fine-tuning method and its options")
    training: TrainingSection = opt(help="the optimisation loop")
    output: OutputSection = opt(help="where the run goes")
    source: str = field(default="", compare=False, metadata={"help": "file the recipe came from (not a YAML key)"})


SECTIONS: dict[str, type] = {
    "backbone": BackboneSection,
    "task": TaskOptions,  # extended by the task's own options dataclass (peft_tags.tasks)
    "data": DataSection,
    "method": MethodSection,
    "training": TrainingSection,
    "output": OutputSection,
}
