"""Publish a finished training run: its metrics and the output directory, in one rename.

``run`` is the :class:`peft_tags.train.TrainRun` that trained the model.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import resource
import shutil
import warnings
from pathlib import Path

import torch

from . import hub, owned, preflight
from .card import model_card
from .config import dump_recipe
from .errors import UserError
from .model import HEAD_NAME
from .predict import head_module
from .version import __version__

log = logging.getLogger("peft_tags.train")


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_metrics(run, results: dict, eval_titles_per_s: float) -> dict:
    st = run.state
    summary = {split: {k: v for k, v in r.items() if k != "report"} for split, r in results.items()}
    return {
        "recipe": run.recipe.source,
        "task": run.recipe.task.type,
        "method": run.recipe.method.name,
        "backbone": run.recipe.backbone.name,
        **{f"{split}_micro_f1": r["micro_f1"] for split, r in results.items()},
        **{f"{split}_macro_f1": r["macro_f1"] for split, r in results.items()},
        "scores": summary,
        "best": st["best"],
        "history": st["history"],
        "stopped_early": st["stopped_early"],  # {epoch, step, best_epoch} where early stopping ended the run
        "parameters": run.params,
        **run.task.metrics(),
        "train_seconds": round(st["train_seconds"], 2),
        "train_titles_per_s": round(st["train_titles"] / max(st["train_seconds"], 1e-9), 2),
        "eval_titles_per_s": round(eval_titles_per_s, 2),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "processes": run.acc.num_processes,
        "device": str(run.acc.device),
        "threads": torch.get_num_threads(),
        "mixed_precision": run.acc.mixed_precision,
        "versions": versions(),
    }


def publish(run, model, metrics: dict, reports: dict[str, str]) -> None:
    from safetensors.torch import save_file

    # the recipe as it ran, made to load from anywhere: a local backbone by absolute path
    resolved = dataclasses.replace(run.recipe, training=dataclasses.replace(run.recipe.training, resume=False))
    if Path(resolved.backbone.name).expanduser().is_dir():
        resolved.backbone = dataclasses.replace(resolved.backbone, name=str(Path(resolved.backbone.name).expanduser().resolve()))

    with owned.Staged(run.out, "run", run.state["run_id"], replace=run.recipe.output.overwrite, key="output.dir",
                      fingerprint=preflight.fingerprint_hash(run.pre.fingerprint)) as tmp:
        labels = run.task.meta()
        if hasattr(model, "peft_config"):
            # the original model id (or the local directory): what transformers and peft can resolve
            model.peft_config["default"].base_model_name_or_path = hub.original_id(run.recipe.backbone.name)
            with warnings.catch_warnings():
                # AdaLoRA may prune a matrix to rank 0; peft takes the empty tensors for unsharded DeepSpeed ones
                warnings.filterwarnings("ignore", message=r"Adapter '.*': \d+ LoRA tensor\(s\) have invalid shape")
                model.save_pretrained(str(tmp), save_embedding_layers=False)  # adapter_config.json + adapter_model.safetensors (with head)
            hub.write_hf_dir(tmp / hub.HF_DIR, model.get_base_model(), run.pre.tokenizer, run.task, labels)
        elif run.method.saves == "model":
            for key, value in hub.label_config(run.task, labels).items():
                setattr(model.config, key, value)
            model.save_pretrained(str(tmp / "model"))
        if run.task.model_kind == "token":  # a causal language model writes its answer with its own output layer
            head = {k: v.detach().cpu().contiguous() for k, v in head_module(model, HEAD_NAME).state_dict().items()}
            save_file(head, str(tmp / "head.safetensors"))
        (tmp / "labels.json").write_text(json.dumps(labels, ensure_ascii=False, indent=1), encoding="utf-8")
        dump_recipe(resolved, tmp / "recipe.yaml")
        owned.write_json_atomic(tmp / hub.BACKBONE_FILE, hub.backbone_record(run.recipe.backbone.name, run.pre.backbone))
        (tmp / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=1), encoding="utf-8")
        for split, report in reports.items():
            (tmp / f"{split}_report.txt").write_text(report, encoding="utf-8")
        (tmp / "README.md").write_text(model_card(run.recipe, metrics, labels), encoding="utf-8")
        if (run.work / "logs").is_dir():
            shutil.copytree(run.work / "logs", tmp / "logs")
    owned.remove_owned(run.work)
    log.info("wrote %s: test micro-F1 %s, %s titles/s in training", run.out,
             metrics.get("test_micro_f1"), metrics["train_titles_per_s"])


def push(out: Path, output) -> None:
    """``output.push_to_hub``: upload the published run (main process, after the other processes
    are done: an upload can take longer than they would wait at a barrier)."""
    try:
        log.info("pushed %s to %s", out, hub.push(out, output.push_to_hub, output.hub_private, key="output.push_to_hub"))
    except UserError as e:  # the run is kept: say how to push it again
        raise UserError(f"{e}; the run is in {out}: push it with  peft-tags push {out} {output.push_to_hub}") from None


def versions() -> dict:
    import accelerate, peft, transformers

    return {"peft_tags": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__}
