"""The runs a service tags with, and how they share backbones.

Runs whose adapters are peft adapters of one type (LoRA, IA3, LoHa, ...) on the same backbone
are loaded onto **one** copy of the frozen backbone, each adapter under its run's name (peft
multi-adapter). The backbone's own head is replaced by an identity, so the shared model gives
token states, and each run applies its own head (``head.safetensors``) to its rows. LoRA
groups run one forward pass over rows of several adapters (peft's ``adapter_names``); other
types switch the active adapter per sub-batch. Everything else (full fine-tuning, head-only,
methods that need a hook after loading, tasks without ``reduce``, the ONNX backend) is
served by a plain :class:`~peft_tags.predict.Tagger` of its own.

:func:`tag_requests` tags the titles of many requests of one group together: each run's task
encodes, one padded forward pass per batch, the run's head and ``reduce``, then the task's
``decode``. So the service returns exactly what ``Tagger.tag`` returns.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from .. import tasks
from ..data import normalize_text
from ..errors import UserError

log = logging.getLogger("peft_tags.serve")

#: peft types whose adapters share a backbone copy (several adapters of one type in a peft model)
SHARED_TYPES = ("LORA", "IA3", "LOHA", "LOKR")
#: of those, the ones whose rows of several adapters go through one forward pass (adapter_names)
MIXED_BATCH_TYPES = ("LORA",)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(eq=False)
class Group:
    """One model in memory and the runs it serves. Only the batcher's one worker thread runs it:
    ``set_adapter`` and peft's ``adapter_names`` change state of the whole model."""

    model: torch.nn.Module
    shared: bool  # a peft model with each run's adapter; the runs apply their own heads
    mixed: bool = False  # rows of several adapters in one forward pass
    pad_id: int = 0
    device: torch.device = torch.device("cpu")
    tokenizer: object = None  # of a shared group's backbone, for every run on it
    runs: list = field(default_factory=list)

    def hidden(self, input_ids, attention_mask, adapters: list[str]):
        """Token states [batch, positions, hidden] of a shared group, row i with adapter ``adapters[i]``."""
        if self.mixed and len(set(adapters)) > 1:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, adapter_names=adapters).logits
        out = None
        for name in dict.fromkeys(adapters):
            rows = [i for i, a in enumerate(adapters) if a == name]
            self.model.set_adapter(name, inference_mode=True)  # by default peft makes it trainable
            h = self.model(input_ids=input_ids[rows], attention_mask=attention_mask[rows]).logits
            if out is None:
                out = h.new_zeros((len(adapters), *h.shape[1:]))
            out[rows] = h
        return out


@dataclass(eq=False)
class ServedRun:
    """A run as the service knows it: its name in requests, its task and where it runs."""

    name: str
    path: Path
    tagger: object  # a Tagger: codec, meta, recipe, device, and a model callable for this run alone
    group: Group
    head: torch.nn.Module | None = None  # its own head, in a shared group
    adapter: str | None = None  # its adapter's name in the shared peft model

    @property
    def task(self):
        return self.tagger.task

    def describe(self) -> dict:
        r, meta = self.tagger.recipe, self.tagger.meta
        out = {"name": self.name, "task": self.task.name, "method": r.method.name, "backbone": r.backbone.name,
               "backend": self.tagger.backend, "shared_backbone": self.group.shared,
               "served_with": [x.name for x in self.group.runs if x is not self]}
        for key in ("types", "tags"):
            if key in meta:
                out[key] = meta[key]
        if meta.get("type_names"):
            out["type_names"] = meta["type_names"]
        return out


class RunView:
    """One run of a shared group, called like a transformers model (for ``Tagger``)."""

    def __init__(self, group: Group, adapter: str, head: torch.nn.Module):
        self.group, self.adapter, self.head = group, adapter, head

    def eval(self):
        return self

    def __call__(self, input_ids, attention_mask):
        h = self.group.hidden(input_ids, attention_mask, [self.adapter] * len(input_ids))
        return SimpleNamespace(logits=self.head(h))


def parse_run_args(items: list[str]) -> list[tuple[str, Path]]:
    """``RUN`` or ``NAME=RUN`` -> (name, path); a run's name defaults to its folder's name."""
    out, seen = [], {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not NAME.match(name):
            name, path = Path(item).name or Path(item).resolve().name, item
        if not NAME.match(name):
            raise UserError(f"{item}: a model name is letters, digits, '.', '_' or '-' (give one as NAME=RUN)")
        if name in seen:
            raise UserError(f"{item}: the model name '{name}' is taken by {seen[name]}; name them as NAME=RUN")
        seen[name] = path
        out.append((name, Path(path)))
    if not out:
        raise UserError("serve: give at least one trained output directory")
    return out


def check_runs(items: list[tuple[str, Path]]) -> None:
    """The checks of every run's files, before anything heavy loads (one line naming the file)."""
    from ..rundir import check_run_dir

    for _, path in items:
        check_run_dir(path)


def load_runs(items: list[tuple[str, Path]], backend: str = "torch", device: str | None = None,
              threads: int | None = None) -> dict[str, ServedRun]:
    """Load the runs, sharing a backbone copy wherever the adapters allow it."""
    from ..predict import Tagger
    from ..rundir import check_run_dir

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    runs: dict[str, ServedRun] = {}
    groups: dict[tuple, Group] = {}
    tokenizers: dict[str, object] = {}  # one per backbone: me5-small's takes about 300 MB
    for name, path in items:
        recipe, meta = check_run_dir(path)
        key = _share_key(path, recipe, meta) if backend == "torch" else None
        if key is None:
            tagger = Tagger.load(path, device=str(device), backend=backend, threads=threads)
            group = Group(tagger.model, shared=False, pad_id=tagger.codec.tokenizer.pad_token_id, device=tagger.device)
            run = ServedRun(name, path, tagger, group)
        else:
            group = groups.get(key)
            if group is None:
                group = groups[key] = _new_group(recipe, key, device, tokenizers)
            run = _join(group, name, path, recipe, meta, device)
        group.runs.append(run)
        runs[name] = run
        log.info("loaded %s (%s, %s%s)", name, recipe.method.name, recipe.backbone.name,
                 f", sharing its backbone with {', '.join(r.name for r in group.runs[:-1])}"
                 if group.shared and len(group.runs) > 1 else "")
    return runs


def _share_key(path: Path, recipe, meta: dict):
    """What runs must have in common to share a backbone copy; None: the run is served alone."""
    import json

    from .. import methods

    m = methods.get(recipe.method.name)
    if m.saves != "adapter" or m.on_load is not None or tasks.of_meta(meta).reduce is None:
        return None
    peft_type = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get("peft_type")
    b = recipe.backbone
    if peft_type not in SHARED_TYPES:
        return None  # our own tuner, the prompt methods and untested types keep one adapter per model
    return (b.name, b.cache_dir, b.quantization, b.double_quantization, b.compute_dtype, peft_type)


def _tokenizer(backbone: str, cache: dict):
    from ..model import load_tokenizer

    if backbone not in cache:
        cache[backbone] = load_tokenizer(backbone)
    return cache[backbone]


def _new_group(recipe, key, device, tokenizers: dict) -> Group:
    from ..backbones import resolve_backbone
    from ..model import HEAD_NAME, build_token_classifier, quiet_transformers

    quiet_transformers()
    b = recipe.backbone
    backbone = resolve_backbone(b.name, b.cache_dir)
    with torch.random.fork_rng(devices=[]):
        model = build_token_classifier(backbone, 1, 0, b.quantization, b.double_quantization, b.compute_dtype,
                                       device=device)
    setattr(model, HEAD_NAME, torch.nn.Identity())  # token states out; each run has its own head
    if b.quantization == "none":
        model.to(device)
    tokenizer = _tokenizer(backbone, tokenizers)
    return Group(model.eval(), shared=True, mixed=key[-1] in MIXED_BATCH_TYPES, pad_id=tokenizer.pad_token_id,
                 device=device, tokenizer=tokenizer)


def _join(group: Group, name: str, path: Path, recipe, meta: dict, device) -> ServedRun:
    """Add the run's adapter (its weights only: the head is the run's own) to a shared group."""
    from peft import PeftConfig, PeftModel, set_peft_model_state_dict
    from peft.utils import load_peft_weights
    from safetensors.torch import load_file

    from ..model import HEAD_NAME
    from ..predict import Tagger
    from ..rundir import loading

    adapter = f"run{len(group.runs)}"  # a run's name may hold '.', which torch refuses in module names
    with loading(f"{path}: the adapter (adapter_config.json, adapter_model.safetensors)"):
        config = PeftConfig.from_pretrained(str(path))
        config.modules_to_save, config.inference_mode = None, True
        if isinstance(group.model, PeftModel):
            group.model.add_adapter(adapter, config)
        else:
            group.model = PeftModel(group.model, config, adapter_name=adapter)
        weights = {k: v for k, v in load_peft_weights(str(path), device="cpu").items()
                   if f".{HEAD_NAME}." not in f".{k}"}
        result = set_peft_model_state_dict(group.model, weights, adapter_name=adapter)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise UserError(f"{path / 'adapter_model.safetensors'}: weights that fit no layer ({unexpected[0]})")
    if recipe.backbone.quantization == "none":
        group.model.to(device)
    group.model.eval()
    with loading(path / "head.safetensors"):
        head_state = load_file(str(path / "head.safetensors"))
        head = torch.nn.Linear(head_state["weight"].shape[1], head_state["weight"].shape[0])
        head.load_state_dict(head_state)
    head = head.to(device).eval()
    codec = tasks.of_meta(meta).codec_from_meta(group.tokenizer, meta)
    view = RunView(group, adapter, head)
    return ServedRun(name, path, Tagger(view, codec, recipe, device, meta, "torch"), group, head, adapter)


def tag_requests(group: Group, requests: list, max_batch: int) -> list:
    """The tags of each request ``(run, titles, options)`` of one group, in one set of forward
    passes: at most ``max_batch`` titles each, sorted by length, runs mixed where the group can."""
    from ..model import token_logits
    from ..tasks.slots import pad_ids

    prepared, rows = [], []
    for k, (run, titles, options) in enumerate(requests):
        d = run.tagger.recipe.data
        norm = [normalize_text(t, d.fullwidth_to_halfwidth, d.lowercase) for t in titles]
        if run.task.reduce is None:  # a task with its own tag: alone, through Tagger
            prepared.append((run, titles, norm, None, None, options))
            continue
        enc = run.task.encode_titles(run.tagger.codec, norm)
        prepared.append((run, titles, norm, enc, [None] * len(enc), options))
        rows += [(len(e.input_ids), k, i) for i, e in enumerate(enc)]
    rows.sort()
    with torch.no_grad():
        for b in range(0, len(rows), max_batch):
            chunk = rows[b : b + max_batch]
            batch = pad_ids([prepared[k][3][i].input_ids for _, k, i in chunk], group.pad_id)
            ids, mask = batch["input_ids"].to(group.device), batch["attention_mask"].to(group.device)
            if group.shared:
                h = group.hidden(ids, mask, [prepared[k][0].adapter for _, k, _ in chunk])
            else:
                logits = token_logits(group.model(input_ids=ids, attention_mask=mask).logits, ids)
            for k in dict.fromkeys(k for _, k, _ in chunk):
                sel = [j for j, (_, kk, _) in enumerate(chunk) if kk == k]
                r = prepared[k][0]
                out = token_logits(r.head(h[sel]), ids) if group.shared else logits[sel]
                for j, row in zip(sel, r.task.reduce(r.tagger.codec, out, mask[sel])):
                    prepared[k][4][chunk[j][2]] = row
    results = []
    for run, titles, norm, enc, outputs, options in prepared:
        if enc is None:
            results.append(run.task.tag(run.tagger, titles, norm, max_batch, **options))
        else:
            results.append(run.task.decode(run.tagger, titles, norm, enc, outputs, **options))
    return results
