"""Tag titles with a trained output directory, from Python.

>>> from peft_tags import Tagger
>>> tagger = Tagger.load("runs/jd-ner-lora")
>>> tagger.tag(["华为P30手机壳硅胶防摔"])
[[Tag(label='37', text='华为', start=0, end=2), ...]]

What ``tag`` returns is the run's task's to say (:mod:`peft_tags.tasks`): spans for a tagging
run; for a multi-label run the tags with scores, highest first, decided by the thresholds
tuned on dev, with the options ``top_k`` and ``threshold``:

>>> Tagger.load("runs/jd-tags/lora").tag(["儿童防水手表"], top_k=3)
[[ScoredTag(tag='防水', score=0.93), ScoredTag(tag='儿童', score=0.88)]]
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from . import tasks
from .data import normalize_text
from .errors import UserError
from .rundir import check_run_dir, loading

log = logging.getLogger("peft_tags.predict")

BACKENDS = ("torch", "onnx")


class Tagger:
    """A trained run loaded from an output directory of ``peft-tags train``."""

    def __init__(self, model, codec, recipe, device, meta: dict | None = None, backend: str = "torch"):
        self.model, self.codec, self.recipe, self.device, self.backend = model, codec, recipe, device, backend
        self.meta: dict = meta or {}  # labels.json of the run
        self.task = tasks.of_meta(self.meta) if self.meta else tasks.of_recipe(recipe)

    @classmethod
    def load(cls, output_dir: str | Path, device: str | None = None, backend: str = "torch",
             threads: int | None = None) -> "Tagger":
        """Load an output directory; raises UserError (one line naming the file) when its files are
        missing, damaged or do not fit together (:func:`peft_tags.rundir.check_run_dir`).

        ``backend``: ``torch`` (the run as trained, adapter and all), or ``onnx`` (the ONNX model
        of an output directory written by ``peft-tags export RUN DEST --format onnx``, run by
        onnxruntime on the CPU with ``threads`` threads). Decoding is the same for both."""
        from .backbones import resolve_backbone
        from .model import HEAD_NAME, load_tokenizer, quiet_transformers

        if backend not in BACKENDS:
            raise UserError(f"--backend: expected {' or '.join(BACKENDS)}, got '{backend}'")
        out = Path(output_dir)
        recipe, meta = check_run_dir(out)
        quiet_transformers()
        task = tasks.of_meta(meta)
        if backend == "onnx":
            from .onnxio import ONNX_FILE, OnnxModel

            if not (out / ONNX_FILE).is_file():
                raise UserError(f"{out}: no ONNX model ({ONNX_FILE}); write one with "
                                f"'peft-tags export {out} DEST --format onnx' and load DEST")
            if device not in (None, "cpu"):
                raise UserError(f"device: the onnx backend runs on the CPU, not '{device}'")
            with loading(out / "model"):  # the export's own tokenizer: no backbone to resolve
                codec = task.codec_from_meta(load_tokenizer(str(out / "model")), meta)
            return cls(OnnxModel(out / ONNX_FILE, threads), codec, recipe, torch.device("cpu"), meta, backend)
        backbone = resolve_backbone(recipe.backbone.name, recipe.backbone.cache_dir)
        codec = task.codec_from_meta(load_tokenizer(backbone), meta)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        with torch.random.fork_rng(devices=[]):  # building a model seeds torch; not the caller's RNG
            model = _build(out, recipe, backbone, codec.num_outputs, device, task.model_kind)
        if task.model_kind == "token":
            _load_head(model, out / "head.safetensors", HEAD_NAME)
        if recipe.backbone.quantization == "none":  # a quantised model is placed on the device as it loads
            model.to(device)
        model.eval()
        return cls(model, codec, recipe, device, meta, backend)

    def tag(self, titles: list[str], batch_size: int = 32, **options) -> list[list]:
        """The tags of each title, as the run's task gives them (each with ``as_dict()``); for a
        tagging run: label, text, start, end (character offsets into the title). ``options``:
        the task's own (a multi-label run: ``top_k``, ``threshold``); another is an error."""
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        self.task.check_options(**options)
        if not titles:
            return []
        d = self.recipe.data
        norm = [normalize_text(t, d.fullwidth_to_halfwidth, d.lowercase) for t in titles]
        return self.task.tag(self, titles, norm, batch_size, **options)


def _build(out: Path, recipe, backbone: str, num_outputs: int, device=None, kind: str = "token"):
    from .model import build_token_classifier

    from . import methods

    method, b = recipe.method.name, recipe.backbone
    if methods.get(method).saves == "model":  # the whole fine-tuned model
        with loading(out / "model"):
            return build_token_classifier(str(out / "model"), num_outputs, seed=0, kind=kind)
    model = build_token_classifier(backbone, num_outputs, 0, b.quantization, b.double_quantization, b.compute_dtype,
                                   device=device, kind=kind)
    return attach_adapter(model, out, method)


def attach_adapter(model, out: Path, method: str):
    """The saved peft adapter of ``out`` on ``model`` (unchanged for head-only), ready to run."""
    from . import methods

    if methods.get(method).saves != "adapter":
        return model
    import importlib

    from peft import PeftModel

    importlib.import_module("peft_tags.tuners")  # registers our own peft types (BOTTLENECK)
    with loading(f"{out}: the adapter (adapter_config.json, adapter_model.safetensors)"):
        model = PeftModel.from_pretrained(model, str(out))
        hook = methods.get(method).on_load
        return model if hook is None else hook(model)


def head_module(model, head_name: str):
    """The live head module (inside peft's ModulesToSaveWrapper when there is one)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, head_name)
    saved = getattr(head, "modules_to_save", None)
    return saved["default"] if saved is not None and "default" in saved else head


def _load_head(model, path: Path, head_name: str) -> None:
    from safetensors.torch import load_file

    head = head_module(model, head_name)
    with loading(path):
        head.load_state_dict(load_file(str(path)))
