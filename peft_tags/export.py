"""Export a trained run as one standalone transformers model, the adapter merged in.

``peft-tags export RUN DEST`` writes DEST as an output directory of method ``full``:
``DEST/model`` is an ordinary ``*ForTokenClassification`` (a generation run: an ordinary
``*ForCausalLM``; tokenizer included) that needs neither peft nor peft_tags, and
``Tagger.load(DEST)`` tags with it like with RUN.

A quantised backbone (QLoRA) is *de-quantised* first: its 4-bit or 8-bit weights are expanded
to float32 and the adapter is merged into those, so the exported model computes what the
trained model computed. (peft's ``merge_and_unload`` on a 4-bit model merges and then
quantises again, which throws the adapter's small updates back into the 4-bit grid.)

Methods that cannot be merged (bottleneck adapters, prefix and prompt tuning: they add
computation, not a weight delta) are refused with a clear error.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from . import owned, tasks
from .errors import UserError
from .hub import label_config
from .methods.full import NAME as FULL, FullOptions

log = logging.getLogger("peft_tags.export")

FORMATS = ("hf", "onnx")
MODELING_FILE = "modeling_peft_tags.py"
MODELING = '''"""A multi-label tagger exported by peft-tags: {base} whose head gives each token a logit
per tag; the title's logits are their {pooling} over the tokens (the pooling it was trained
with), one sigmoid per tag. The tags of a title are those whose probability reaches
config.tag_thresholds[tag] (tuned on dev), at most config.tag_top_k of them (null: no limit).

    AutoModelForSequenceClassification.from_pretrained(<this folder>, trust_remote_code=True)
"""
import torch
from transformers import {base}
from transformers.modeling_outputs import SequenceClassifierOutput


class PeftTagsForSequenceClassification({base}):
    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        kwargs.pop("return_dict", None)
        logits = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
        if attention_mask is None:
            attention_mask = torch.ones(logits.shape[:2], dtype=torch.long, device=logits.device)
        if self.config.tag_pooling == "first":
            pooled = logits[:, 0]
        else:
            mask = attention_mask.to(logits.dtype).unsqueeze(-1)
            pooled = (logits * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(pooled, labels.to(pooled.dtype))
        return SequenceClassifierOutput(loss=loss, logits=pooled)
'''


def sequence_classifier(folder: Path, model, meta: dict, problem_type: str) -> None:
    """Make the saved token classifier in ``folder`` a ``*ForSequenceClassification`` that stock
    transformers loads (with ``trust_remote_code``): the same weights, the run's pooling in a
    small modelling file, ``problem_type`` multi-label and the tuned thresholds in its config.
    No built-in class pools a head's per-token outputs the way the run was trained."""
    base, th = type(model).__name__, meta["thresholds"]
    (folder / MODELING_FILE).write_text(MODELING.format(base=base, pooling=meta["pooling"]), encoding="utf-8")
    # after save_pretrained, which sets ``architectures`` to the class it saves
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    per_tag = th.get("per_tag") if th["rule"] == "per-tag" else None
    config.update({
        "architectures": ["PeftTagsForSequenceClassification"],
        "auto_map": {"AutoModelForSequenceClassification": MODELING_FILE[:-3] + ".PeftTagsForSequenceClassification"},
        "problem_type": problem_type, "tag_pooling": meta["pooling"],
        "tag_thresholds": {t: float(per_tag[t] if per_tag else th["global"]) for t in meta["tags"]},
        "tag_top_k": th.get("top_k"),
    })
    (folder / "config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")


def dequantized_linears(quantized_model) -> dict[str, torch.Tensor]:
    """Float32 weights of every bitsandbytes linear layer, by module name."""
    from peft.utils.integrations import dequantize_bnb_weight

    out = {}
    for name, module in quantized_model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is not None and type(weight).__name__ in ("Params4bit", "Int8Params"):
            state = getattr(module, "state", None) if type(weight).__name__ == "Int8Params" else weight.quant_state
            out[name] = dequantize_bnb_weight(weight, state=state).to(torch.float32).cpu()
    return out


def merged_model(run_dir: Path):
    """The run's model with its adapter merged into float32 weights (and the trained head)."""
    from .backbones import resolve_backbone
    from .model import HEAD_NAME, build_token_classifier
    from .predict import _load_head, attach_adapter
    from .rundir import check_run_dir, loading

    from . import methods

    recipe, meta = check_run_dir(run_dir)
    method, b = recipe.method.name, recipe.backbone
    kind = tasks.of_meta(meta).model_kind
    saves, why = methods.get(method).saves, methods.get(method).merge_refusal
    if why:
        raise UserError(f"{run_dir}: method '{method}' {why} and cannot be merged into the backbone; "
                        "use the output directory as it is (standard peft files)")
    backbone = resolve_backbone(b.name, b.cache_dir)
    with torch.random.fork_rng(devices=[]):  # building models seeds torch; not the caller's RNG
        if saves == "model":
            with loading(run_dir / "model"):
                model = build_token_classifier(str(run_dir / "model"), meta["num_outputs"], seed=0, kind=kind)
        else:
            model = build_token_classifier(backbone, meta["num_outputs"], seed=0, kind=kind)
        if b.quantization != "none":
            quantized = build_token_classifier(backbone, meta["num_outputs"], 0, b.quantization, b.double_quantization,
                                               b.compute_dtype, kind=kind)
            weights = dequantized_linears(quantized)
            del quantized
            modules = dict(model.named_modules())
            with torch.no_grad():
                for name, w in weights.items():
                    modules[name].weight.copy_(w)
            log.info("de-quantised %d %s linear layers to float32", len(weights), b.quantization)
    model = attach_adapter(model, run_dir, method)
    if kind == "token":
        _load_head(model, run_dir / "head.safetensors", HEAD_NAME)
    if saves == "adapter":
        try:
            model = model.merge_and_unload()
        except (NotImplementedError, ValueError, AttributeError, TypeError) as e:
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{run_dir}: peft cannot merge method '{method}': {text}") from None
    return model, recipe, backbone


def export(run_dir: str | Path, dest: str | Path, overwrite: bool = False, format: str = "hf",
           quantize: str = "none") -> Path:
    """Write DEST: the merged model (``format='hf'``), and with ``format='onnx'`` also
    ``onnx/model.onnx`` (int8 weights with ``quantize='int8'``) for ``--backend onnx``."""
    from transformers import AutoTokenizer

    from .model import quiet_transformers
    from .config import dump_recipe
    from .rundir import check_run_dir

    quiet_transformers()
    if format not in FORMATS:
        raise UserError(f"--format: expected {' or '.join(FORMATS)}, got '{format}'")
    if quantize != "none" and format != "onnx":
        raise UserError("--quantize: only with --format onnx")
    if format == "onnx":
        from .onnxio import QUANTIZE, require

        require("--format onnx")
        if quantize not in QUANTIZE:
            raise UserError(f"--quantize: expected {' or '.join(QUANTIZE)}, got '{quantize}'")
    run_dir, dest = Path(run_dir), Path(dest)
    _, meta = check_run_dir(run_dir)
    task = tasks.of_meta(meta)
    if format == "onnx" and task.model_kind != "token":
        raise UserError(f"--format onnx: a {task.name} run writes its answer token by token; export it with --format hf "
                        "(a merged causal language model)")
    if dest.resolve() == run_dir.resolve() or run_dir.resolve().is_relative_to(dest.resolve()):
        raise UserError(f"{dest}: is (or holds) the run being exported; choose another directory")
    if os.path.lexists(dest) and not overwrite:
        raise UserError(f"{dest}: already exists; pass --overwrite or choose another directory")
    owned.check_replaceable(dest, str(dest))
    if not dest.resolve().parent.is_dir():
        raise UserError(f"{dest}: no directory '{dest.parent}' to write into")
    model, recipe, backbone = merged_model(run_dir)

    for key, value in (label_config(task, meta) if task.model_kind == "token" else {}).items():  # names, not LABEL_<n>
        setattr(model.config, key, value)
    with owned.Staged(dest, "export", replace=overwrite) as tmp:
        model.save_pretrained(str(tmp / "model"))
        if task.hf_problem_type:  # multi-label: a sequence classifier
            sequence_classifier(tmp / "model", model, meta, task.hf_problem_type)
        tokenizer = AutoTokenizer.from_pretrained(backbone)
        tokenizer.save_pretrained(str(tmp / "model"))
        onnx_done = {}
        if format == "onnx":
            from .onnxio import ONNX_FILE, export_onnx

            onnx_done = export_onnx(model, tokenizer, tmp / ONNX_FILE, quantize)
        if (run_dir / "head.safetensors").is_file():
            shutil.copy2(run_dir / "head.safetensors", tmp / "head.safetensors")
        shutil.copy2(run_dir / "labels.json", tmp / "labels.json")
        for name in ("metrics.json", "test_report.txt", "dev_report.txt"):
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, tmp / name)
        exported = dataclasses.replace(
            recipe, method=dataclasses.replace(recipe.method, name=FULL, options=FullOptions()),
            backbone=dataclasses.replace(recipe.backbone, quantization="none"),
        )
        dump_recipe(exported, tmp / "recipe.yaml")
        (tmp / "export.json").write_text(json.dumps({
            "from": str(run_dir.resolve()), "method": recipe.method.name, "backbone": recipe.backbone.name,
            "quantization": recipe.backbone.quantization,
            "merge": "adapter merged into float32 weights" + (" de-quantised from " + recipe.backbone.quantization
                                                              if recipe.backbone.quantization != "none" else ""),
            **({"onnx": onnx_done} if onnx_done else {}),
        }, indent=1), encoding="utf-8")
    return dest
