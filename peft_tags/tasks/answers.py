"""The generation task's text side: the answer form, its strict parser, the codec of prompts and
answers, and batched decoding (:mod:`.generation` is the task that uses them).

An answer lists (type, value) pairs in one form, ``type: value; type: value``; a type is written
by its name. :func:`parse_answer` reads an answer back and says whether all of it parsed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

#: between two items of an answer, and between a type and its value
SEP, KV = "; ", ": "
IGNORE = -100


# ----------------------------------------------------------------------------- answer text
def format_answer(pairs, names: dict[str, str]) -> str:
    """``type: value; ...`` of (type, value) pairs, a type by its name."""
    return SEP.join(f"{names.get(t, t)}{KV}{v}" for t, v in pairs)


def parse_answer(text: str, by_name: dict[str, str]) -> tuple[list[tuple[str, str]], bool]:
    """(type, value) pairs of an answer and whether all of it parsed. ``by_name``: written name ->
    type. Items are split at ``;`` and each at its first ``:`` (so a value may hold a colon, not a
    semicolon); white space around both is dropped. An item without a colon, with a name that
    is no type's, or with an empty value is dropped and makes the answer count as unparsed; an
    empty answer is no tags, parsed."""
    text = text.strip()
    if not text:
        return [], True
    pairs, ok, seen = [], True, set()
    for item in text.split(SEP.strip()):
        name, sep, value = item.strip().partition(KV.strip())
        name, value = name.strip(), value.strip()
        if not sep or name not in by_name or not value:
            ok = False
            continue
        pair = (by_name[name], value)
        if pair not in seen:
            seen.add(pair)
            pairs.append(pair)
    return pairs, ok


def locate(title: str, pairs) -> list[tuple[str, str, int | None, int | None]]:
    """(type, value, start, end) of each pair: the value's place in the title as the
    attribute-value reader finds it (exact before case-insensitive, whole-token first, longest
    value first, no overlap); start/end None where the title does not hold it."""
    from ..data.spans import _occurrences

    taken = [False] * len(title)
    found: dict[int, tuple[int, int]] = {}
    for i in sorted(range(len(pairs)), key=lambda i: -len(pairs[i][1])):
        value = pairs[i][1]
        for ignore_case in (False, True):
            place = next(((s, e) for s, e in _occurrences(title, value, ignore_case) if not any(taken[s:e])), None)
            if place:
                found[i] = place
                taken[place[0]:place[1]] = [True] * (place[1] - place[0])
                break
    return [(t, v, *found.get(i, (None, None))) for i, (t, v) in enumerate(pairs)]


# ----------------------------------------------------------------------------- codec
@dataclass
class GenEncoded:
    """A title's prompt and (training) answer: ``input_ids`` = prompt + answer + end token,
    ``labels`` the answer's ids (IGNORE on the prompt), ``prompt_len`` the prompt's length."""

    input_ids: np.ndarray
    labels: np.ndarray
    prompt_len: int
    title_cut: bool = False  # the title was shortened to fit backbone.max_length


class GenerationCodec:
    """Titles -> prompt ids, pairs -> answer ids, for one tokenizer."""

    def __init__(self, tokenizer, types: list[str], names: dict[str, str], instruction: str, chat: bool,
                 max_length: int, max_new_tokens: int, num_beams: int = 1):
        self.tokenizer, self.types, self.instruction, self.chat = tokenizer, list(types), instruction, chat
        self.names = {t: names.get(t, t) for t in self.types}
        self.by_name = {n: t for t, n in self.names.items()}
        self.max_length, self.max_new_tokens, self.num_beams = max_length, max_new_tokens, num_beams
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    num_outputs = 0  # no head

    def render(self, title: str) -> list[int]:
        text = self.instruction.replace("{types}", ", ".join(self.names[t] for t in self.types)).replace("{title}", title)
        tok = self.tokenizer
        if self.chat:
            text = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                           tokenize=False)
            return tok(text, add_special_tokens=False)["input_ids"]
        return tok(text + "\n", add_special_tokens=True)["input_ids"]

    def prompt_ids(self, title: str) -> tuple[list[int], bool]:
        """The prompt's ids, the title shortened from its end where prompt and answer would not fit
        ``max_length`` (then True)."""
        budget = self.max_length - self.max_new_tokens
        ids, keep = self.render(title), len(title)
        while len(ids) > budget and keep > 0:
            keep = max(0, keep - max(1, len(ids) - budget))
            ids = self.render(title[:keep])
        if len(ids) > budget:
            from ..errors import UserError

            raise UserError(f"backbone.max_length: {self.max_length} tokens leave {budget} for the prompt after "
                            f"task.max_new_tokens {self.max_new_tokens}, and the prompt alone takes {len(ids)}")
        return ids, keep < len(title)

    def answer_ids(self, pairs) -> list[int]:
        return self.tokenizer(format_answer(pairs, self.names), add_special_tokens=False)["input_ids"] + [self.eos_id]

    def encode(self, texts: list[str], examples=None) -> list[GenEncoded]:
        out = []
        for i, text in enumerate(texts):
            prompt, cut = self.prompt_ids(text)
            answer = self.answer_ids(gold_pairs(examples[i], self.types)) if examples is not None else []
            ids = (prompt + answer)[: self.max_length]
            labels = ([IGNORE] * len(prompt) + answer)[: self.max_length]
            out.append(GenEncoded(np.asarray(ids, np.int64), np.asarray(labels, np.int64), len(prompt), cut))
        return out


def gold_pairs(example, types) -> list[tuple[str, str]]:
    """The (type, value) pairs of an example's spans of ``types`` (None: of every type), in title order."""
    keep = None if types is None else set(types)
    return [(s.label, example.text[s.start:s.end]) for s in sorted(example.spans) if keep is None or s.label in keep]


def _decoder_inputs(model, ids, mask, codec: GenerationCodec):
    """(the model to call generate on, its inputs, how many leading output positions are not new
    tokens). A peft prompt-learning model is decoded through its base model, given the learned
    prompt as training gives it: peft's own generate hands prefix tuning's cache and prompt
    tuning's embeddings to the model under a name that newer transformers ignore, so the model
    would decode as if untuned. Real tokens sit at the positions training gave them, after the
    virtual ones (positions follow the attention mask, whose virtual part is all ones)."""
    import torch

    from peft import PeftType

    config = getattr(model, "active_peft_config", None)
    if getattr(config, "peft_type", None) not in (PeftType.PREFIX_TUNING, PeftType.PROMPT_TUNING):
        return model, {"input_ids": ids, "attention_mask": mask}, ids.shape[1]
    base, n, rows = model.get_base_model(), config.num_virtual_tokens, ids.shape[0]
    wide = torch.cat([torch.ones((rows, n), dtype=mask.dtype, device=mask.device), mask], dim=1)
    if config.peft_type == PeftType.PREFIX_TUNING:
        # the prefix is the cache of n positions; placeholder ids stand for them (generate feeds only
        # the ids past the cache), and each of a row's beams gets the same prefix
        full = torch.cat([torch.full((rows, n), codec.pad_id, dtype=ids.dtype, device=ids.device), ids], dim=1)
        cache = model.get_prompt(rows * max(codec.num_beams, 1))
        return base, {"input_ids": full, "attention_mask": wide, "cache": cache}, n + ids.shape[1]
    embeds = base.get_input_embeddings()(ids)
    prompt = model.get_prompt(rows).to(embeds.dtype)
    return base, {"inputs_embeds": torch.cat([prompt, embeds], dim=1), "attention_mask": wide}, 0


def generate(model, codec: GenerationCodec, prompts: list[list[int]], batch_size: int, device) -> tuple[list, dict]:
    """Decode an answer for each prompt (greedy, or beams): [(text, ended)] in the prompts'
    order, ended False where the cap cut it; and the speed {titles, new_tokens, seconds}.
    Batches are sorted by length and padded on the left."""
    import torch
    from transformers import GenerationConfig

    model.eval()
    config = GenerationConfig(max_new_tokens=codec.max_new_tokens, do_sample=False, num_beams=codec.num_beams,
                              eos_token_id=codec.eos_id, pad_token_id=codec.pad_id)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list = [None] * len(prompts)
    new_tokens, tick = 0, time.perf_counter()
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), codec.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]):] = 1
            ids, mask = ids.to(device), mask.to(device)
            runner, inputs, skip = _decoder_inputs(model, ids, mask, codec)
            generated = runner.generate(**inputs, generation_config=config)[:, skip:]
            for row, i in enumerate(idx):
                seq = generated[row].tolist()
                ended = codec.eos_id in seq
                seq = seq[: seq.index(codec.eos_id)] if ended else seq
                new_tokens += len(seq) + ended
                out[i] = (codec.tokenizer.decode(seq, skip_special_tokens=True), ended)
    return out, {"titles": len(prompts), "new_tokens": new_tokens, "seconds": time.perf_counter() - tick}


@dataclass
class Answer:
    """What the model wrote for one title, parsed."""

    text: str
    pairs: list[tuple[str, str]]
    parsed: bool
    ended: bool


def answers(codec: GenerationCodec, decoded) -> list[Answer]:
    out = []
    for text, ended in decoded:
        pairs, ok = parse_answer(text, codec.by_name)
        out.append(Answer(text, pairs, ok, ended))
    return out
