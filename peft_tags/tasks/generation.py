"""Task `generation`: a causal language model reads a title and writes its tags.

The model is a stock ``AutoModelForCausalLM`` (no head of its own; ``model_kind`` causal) with
any method over it. Each title becomes a prompt (``task.instruction``, in the model's chat template
where it has one) and the answer lists the title's spans in title order, in one strict form::

    brand: 华为; product word: 手机壳; colour: 黑色

(a type by its name where the data set names it, ``types.tsv``; else by its label). The loss is
on the answer's tokens only, ending with the end-of-text token. Prediction is greedy (or beam)
decoding up to ``task.max_new_tokens``; :func:`parse_answer` turns the text back into (type,
value) pairs and says whether every item parsed. Scores (:mod:`peft_tags.metrics.pairs`): pair
P/R/F1 over (type, normalised value), micro and per type, the share of answers that did not
parse or were cut at the cap, and the span F1 of the values found in the title, so the same
numbers exist for the span taggers. Generation titles/s and tokens/s are kept with each split.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config.validate import opt
from . import Task, TaskOptions, distinct_names, is_int, log, register
from .tagging import SPAN_FORMATS
from .answers import (  # noqa: F401  (the answer side's names, importable from the task)
    IGNORE, KV, SEP, Answer, GenEncoded, GenerationCodec, answers, format_answer, generate, gold_pairs, locate,
    parse_answer)

CHAT = ("auto", "yes", "no")
DEFAULT_INSTRUCTION = ("Extract the product's attributes from this title. Answer as 'attribute: value' items "
                  "separated by '; ', in title order.\nTitle: {title}")


@dataclass(kw_only=True)
class GenerationOptions(TaskOptions):
    types: list[str] | None = opt(None, "the span types the model writes (as the data names them); null: every type "
                                        "in data.train", nonempty=True)
    instruction: str = opt(DEFAULT_INSTRUCTION, "what the model is asked; {title} is replaced by the title and {types} "
                                                "by the types' names, joined by ', '")
    chat_template: str = opt("auto", "wrap the prompt in the tokenizer's chat template: auto (where it has one), yes, "
                                     "no", choices=CHAT)
    max_new_tokens: int = opt(96, "longest answer in tokens (1..2048); decoding stops there", ge=1, le=2048)
    num_beams: int = opt(1, "beams of the decoding (1: greedy)", ge=1, le=16)

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if "{title}" not in self.instruction:
            problems.append(("instruction", "must contain {title}, where the title goes"))
        return problems


@dataclass(frozen=True)
class GenTag:
    """A (type, value) pair written by the model; ``start``/``end``: where the value is in the title
    (None when it is not there); ``name``: how the answer wrote the type."""

    label: str
    text: str
    start: int | None = None
    end: int | None = None
    name: str | None = field(default=None, compare=False)

    def as_dict(self) -> dict:
        out = {"label": self.label, "text": self.text}
        if self.start is not None:
            out.update(start=self.start, end=self.end)
        if self.name is not None and self.name != self.label:
            out["name"] = self.name
        return out

    def line(self) -> str:
        where = f"{self.start}\t{self.end}" if self.start is not None else "\t"
        return f"{self.label}\t{self.text}\t{where}" + (f"\t{self.name}" if self.name and self.name != self.label else "")


@register
class GenerationTask(Task):
    name = "generation"
    options_cls = GenerationOptions
    formats = SPAN_FORMATS
    unit = "span"
    help = "generated 'type: value' tags, scored by (type, value) pair F1"
    pipeline_tag = "text-generation"
    model_kind = "causal"

    # ------------------------------------------------------------------ recipe side
    @classmethod
    def check_recipe(cls, recipe) -> list[tuple[str, str]]:
        from .. import methods

        problems = super().check_recipe(recipe)
        t = recipe.training
        for key, value in (("rdrop_alpha", t.rdrop_alpha), ("fgm_epsilon", t.fgm_epsilon)):
            if value:
                problems.append((f"training.{key}", "applies to the span and tag heads, not to generation; set it to 0"))
        if methods.lookup(recipe.method.name) is not None and methods.get(recipe.method.name).saves == "head":
            problems.append(("method.name", f"'{recipe.method.name}' trains only a task head, and generation has none: "
                                            "choose a method that trains the model (lora, prefix, prompt, ia3, full)"))
        if recipe.backbone.max_length <= recipe.task.max_new_tokens:
            problems.append(("backbone.max_length", f"{recipe.backbone.max_length} leaves no room for the prompt before "
                                                    f"task.max_new_tokens {recipe.task.max_new_tokens}"))
        return problems

    @classmethod
    def card_line(cls, recipe, metrics: dict) -> str:
        which = f"{len(recipe.task.types)} chosen types" if recipe.task.types else "every type of its training data"
        return f"generative tagging: the model writes `type{KV}value{SEP}...` for {which}, scored by (type, value) pair F1"

    @classmethod
    def check_meta(cls, meta: dict, need, path) -> int:
        need("types", distinct_names, "a list of distinct span types")
        need("type_names", lambda v: isinstance(v, dict) and set(v) == set(meta["types"])
             and distinct_names(list(v.values())), "a distinct name for each of 'types'")
        need("instruction", lambda v: isinstance(v, str) and "{title}" in v, "a text holding {title}")
        need("chat_template", lambda v: isinstance(v, bool), "true or false")
        need("max_new_tokens", lambda v: is_int(v, 1, 2048), "an integer in [1, 2048]")
        need("num_beams", lambda v: is_int(v, 1, 16), "an integer in [1, 16]")
        return 0

    @classmethod
    def codec_from_meta(cls, tokenizer, meta: dict) -> GenerationCodec:
        return GenerationCodec(tokenizer, meta["types"], meta["type_names"], meta["instruction"], meta["chat_template"],
                               meta["max_length"], meta["max_new_tokens"], meta["num_beams"])

    @classmethod
    def tag(cls, predictor, titles: list[str], normalized: list[str], batch_size: int, **options) -> list[list[GenTag]]:
        """The pairs the model writes for each title, each placed in the title where it occurs."""
        codec = predictor.codec
        decoded, _ = generate(predictor.model, codec, [codec.prompt_ids(t)[0] for t in normalized], batch_size,
                              predictor.device)
        out = []
        for title, norm, answer in zip(titles, normalized, answers(codec, decoded)):
            out.append([GenTag(t, title[s:e] if s is not None else v, s, e, codec.names.get(t))
                        for t, v, s, e in locate(norm, answer.pairs)])
        return out

    # ------------------------------------------------------------------ training side
    def __init__(self, recipe, tokenizer, train_examples):
        from ..data import label_set
        from ..errors import UserError

        super().__init__(recipe, tokenizer, train_examples)
        o = recipe.task
        present = label_set(train_examples)
        types = list(o.types) if o.types else present
        missing = [t for t in types if t not in present]
        if missing:
            raise UserError(f"task.types: {', '.join(repr(t) for t in missing)} not among the span types of "
                            f"data.train ({', '.join(present[:12])}{' ...' if len(present) > 12 else ''})")
        names = self._names(recipe, types)
        chat = o.chat_template == "yes" or (o.chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None)))
        if o.chat_template == "yes" and not getattr(tokenizer, "chat_template", None):
            raise UserError("task.chat_template: yes, but this backbone's tokenizer has no chat template; use auto or no")
        if tokenizer.eos_token_id is None:
            raise UserError("backbone.name: its tokenizer has no end-of-text token, which ends every answer")
        self.codec = GenerationCodec(tokenizer, types, names, o.instruction, chat, recipe.backbone.max_length,
                                     o.max_new_tokens, o.num_beams)
        self.stats: dict = {}
        self.speed: dict = {}
        self._last_speed: dict = {}

    @staticmethod
    def _names(recipe, types: list[str]) -> dict[str, str]:
        """Each type's written name: its name in the data set's types.tsv where it has one that is
        distinct and fits the answer form, else the type itself."""
        from ..data import resolve_data_path
        from ..data.names import type_names_beside

        names = {} if getattr(recipe.data, "hub", None) else \
            type_names_beside(resolve_data_path(recipe.data.train, recipe.data.root, key="data.train"))
        chosen = {t: names.get(t, t) for t in types}
        counts: dict[str, int] = {}
        for n in chosen.values():
            counts[n] = counts.get(n, 0) + 1
        bad = {t for t, n in chosen.items() if counts[n] > 1 or KV.strip() in n or SEP.strip() in n or not n.strip()}
        return {t: (t if t in bad else n) for t, n in chosen.items()}

    @property
    def num_outputs(self) -> int:
        return 0

    def encode(self, examples):
        return self.codec.encode([e.text for e in examples], examples)

    def init_head(self, model, train_encoded) -> None:
        """No head: the answer is written by the language model's own output layer."""

    def describe(self, data: dict, encoded: dict) -> None:
        for split, enc in encoded.items():
            answer = [int((e.labels != IGNORE).sum()) for e in enc]
            over = sum(a > self.codec.max_new_tokens for a in answer)
            st = {"titles": len(enc), "titles_cut": sum(e.title_cut for e in enc),
                  "prompt_tokens_mean": round(float(np.mean([e.prompt_len for e in enc])), 1) if enc else 0.0,
                  "answer_tokens_mean": round(float(np.mean(answer)), 1) if enc else 0.0,
                  "answers_over_cap": over}
            self.stats[split] = st
            log.info("%s: %d titles, prompts %.1f tokens and answers %.1f tokens on average; %d answers longer than "
                     "task.max_new_tokens %d%s", split, st["titles"], st["prompt_tokens_mean"], st["answer_tokens_mean"],
                     over, self.codec.max_new_tokens,
                     f"; {st['titles_cut']} titles shortened to fit backbone.max_length" if st["titles_cut"] else "")
            if over and split == "train":
                log.warning("%d training answers are longer than task.max_new_tokens %d: such answers can never be "
                            "written whole; raise it", over, self.codec.max_new_tokens)

    def collate(self, batch, pad_id: int):
        import torch

        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), self.codec.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, e in enumerate(batch):
            n = len(e.input_ids)
            ids[row, :n] = torch.from_numpy(e.input_ids)
            labels[row, :n] = torch.from_numpy(e.labels)
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def forward_options(self, batch: dict) -> dict:
        """Logits only from the position before the batch's earliest answer token on: the prompt's
        own logits are never scored, and with a large vocabulary (Gemma's 262k) the output layer
        is most of a forward pass."""
        labels = batch["labels"]
        answer = (labels != IGNORE).float().argmax(dim=1)  # each row's first answer position
        return {"logits_to_keep": int(labels.shape[1] - int(answer.min()) + 1)}

    def loss(self, logits, batch: dict):
        """Cross-entropy of each answer token given everything before it (mean over answer tokens).
        ``logits`` cover the last positions of the batch (all of them, or those that
        :meth:`forward_options` kept)."""
        import torch

        from ..model import token_logits

        width = batch["input_ids"].shape[1]
        if logits.shape[1] > width:  # a prompt method's virtual positions come first
            logits = token_logits(logits, batch["input_ids"])
        target = batch["labels"][:, width - logits.shape[1] + 1:]
        return torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                 target.reshape(-1), ignore_index=IGNORE)

    def divergence(self, logits_a, logits_b, batch: dict):
        raise NotImplementedError("R-Drop is refused for generation when the recipe is checked")

    def predict(self, model, examples, encoded, batch_size: int, device) -> list[Answer]:
        decoded, self._last_speed = generate(model, self.codec, [e.input_ids[: e.prompt_len].tolist() for e in encoded],
                                             min(batch_size, 32), device)
        return answers(self.codec, decoded)

    def score(self, split: str, predictions: list[Answer], examples, final: bool) -> dict:
        from ..data import Span
        from ..metrics import span_f1
        from ..metrics.pairs import pair_f1

        # with task.types null the run answers for every type and is scored on every gold pair, as a span
        # tagger is (pairs of types unseen in train count as missed); else on the types it was given
        scored = self.recipe.task.types or None
        gold = [gold_pairs(e, scored) for e in examples]
        result = pair_f1([a.pairs for a in predictions], gold)
        placed = [locate(e.text, a.pairs) for e, a in zip(examples, predictions)]
        spans = span_f1([[Span(s, e, t) for t, _, s, e in p if s is not None] for p in placed],
                        [[s for s in ex.spans if scored is None or s.label in scored] for ex in examples])
        n = max(len(predictions), 1)
        speed = self._last_speed
        result.update({
            **{f"pair_{k}": result[k] for k in ("micro_precision", "micro_recall", "micro_f1", "macro_f1")},
            "unparsed": round(sum(not a.parsed for a in predictions) / n, 4),
            "cut_at_cap": round(sum(not a.ended for a in predictions) / n, 4),
            "values_not_in_title": sum(s is None for p in placed for _, _, s, _ in p),
            "span_micro_f1": spans["micro_f1"], "span_macro_f1": spans["macro_f1"],
            "generation": {"titles_per_s": round(speed.get("titles", 0) / max(speed.get("seconds", 0), 1e-9), 2),
                           "tokens_per_s": round(speed.get("new_tokens", 0) / max(speed.get("seconds", 0), 1e-9), 1),
                           "new_tokens": speed.get("new_tokens", 0)},
        })
        if final:
            self.speed[split] = result["generation"]
            self.samples = getattr(self, "samples", {})
            self.samples[split] = [{"title": e.text, "answer": a.text} for e, a in zip(examples[:5], predictions[:5])]
        result["report"] += (f"\n\nanswers not parsed: {result['unparsed']:.2%}; cut at {self.codec.max_new_tokens} "
                             f"tokens: {result['cut_at_cap']:.2%}; span micro-F1 of the values placed in the title: "
                             f"{result['span_micro_f1']:.4f}")
        return result

    def meta(self) -> dict:
        c = self.codec
        return {"task": self.name, "types": c.types, "type_names": c.names, "instruction": c.instruction, "chat_template": c.chat,
                "max_new_tokens": c.max_new_tokens, "num_beams": c.num_beams, "max_length": c.max_length,
                "num_outputs": 0}

    def metrics(self) -> dict:
        return {"generation": {"encoding": self.stats, "speed": self.speed, "samples": getattr(self, "samples", {})}}
