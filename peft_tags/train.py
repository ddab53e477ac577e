"""Train a recipe with Accelerate: one process or many, CPU or GPU.

``TrainRun(recipe)`` follows setup -> train -> save: the loop reads top to bottom. The run
works in ``<output.dir>.work/`` (checkpoints, best weights, logs) and only at the very end
moves a finished directory to ``output.dir`` in one rename, so a crash never leaves a
directory that looks complete but is not.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import resource
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import __version__, owned, preflight
from .data import read_examples, resolve_data_path
from .errors import UserError
from . import methods
from .model import (HEAD_NAME, apply_method, build_token_classifier, check_max_length, is_head_param,
                    parameter_counts, quiet_transformers)
from .predict import head_module
from .recipe import Recipe, dump_recipe, recipe_to_dict
from .tasks import make_task

log = logging.getLogger("peft_tags.train")


# ----------------------------------------------------------------------------- helpers
def choose_precision(requested: str) -> tuple[str, str]:
    """Return (accelerate mixed_precision, why)."""
    if requested != "auto":
        return requested, "as the recipe asks (training.mixed_precision)"
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bf16", f"{torch.cuda.get_device_name()} computes bf16 natively"
        return "fp16", f"{torch.cuda.get_device_name()} has no bf16; fp16 with loss scaling"
    if {"avx512_bf16", "amx_bf16"} & _cpu_flags():
        # measured here (2 cores, me5-small LoRA step): bf16 autocast 28 titles/s vs fp32 27;
        # the matmuls gain, the rest (casts, small ops) loses it: not worth the precision
        return "no", "CPU: bf16 autocast trains no faster than fp32 on CPUs (set bf16 to force it): fp32"
    return "no", "CPU without native bf16 (bf16 matmuls run ~60x slower than fp32): fp32"


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


class LengthBucketBatches(torch.utils.data.Sampler):
    """Shuffled batches of titles of similar length: less padding, same randomness per epoch.

    Titles are shuffled, cut into pools of 50 batches, each pool is sorted by length and cut
    into batches, and the batches are shuffled. The order depends only on (seed, epoch).
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, bucketing: bool):
        self.lengths, self.batch_size, self.seed, self.bucketing = lengths, batch_size, seed, bucketing
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        idx = rng.permutation(len(self.lengths))
        if self.bucketing:
            pool = self.batch_size * 50
            idx = np.concatenate([sorted(idx[i : i + pool], key=lambda j: self.lengths[j]) for i in range(0, len(idx), pool)])
        batches = [idx[i : i + self.batch_size].tolist() for i in range(0, len(idx), self.batch_size)]
        short = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        # the short batch stays last: accelerate's sharding over processes assumes full batches
        return [batches[i] for i in rng.permutation(len(batches))] + short

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def _load_trainable(model, state: dict[str, torch.Tensor]) -> None:
    """Copy a ``_trainable_state`` back into the model's parameters."""
    for n, p in model.named_parameters():
        if n in state:
            p.copy_(state[n])


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- the run
def read_split(d, split: str) -> list:
    """The examples of one split of a recipe's ``data`` section, read as training reads them."""
    path = resolve_data_path(getattr(d, split), d.root, key=f"data.{split}")
    return read_examples(path, d.format, fullwidth_to_halfwidth=d.fullwidth_to_halfwidth, lowercase=d.lowercase,
                         max_examples=getattr(d, f"max_{split}_examples"))


class TrainRun:
    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.out = preflight.output_path(recipe)
        self.work = preflight.work_dir(self.out)
        self.lock = None
        self.finished = False  # resume found this very run already published

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        r, t = self.recipe, self.recipe.training
        main = int(os.environ.get("RANK", "0")) == 0  # before the Accelerator exists
        # everything a user can get wrong is checked before anything is written or logged
        self.pre = pre = preflight.check(r)
        _configure_logging(main)
        quiet_transformers()
        if main:
            self.lock = owned.OutputLock(self.out).acquire()
            recovered = owned.recover(self.out)
            for line in recovered:
                log.info("%s", line)
            if recovered:  # a publish was finished or rolled back: look again
                preflight.check_run_state(r, pre)
        if pre.finished:
            self.finished = True
            return
        backbone, tokenizer, self.data = pre.backbone, pre.tokenizer, pre.data
        if main:
            self._prepare_work_dir()
        precision, why = choose_precision(t.mixed_precision)
        self.acc = Accelerator(
            mixed_precision=precision, gradient_accumulation_steps=t.grad_accum,
            log_with=None if t.log_with in (None, "none") else t.log_with, project_dir=str(self.work / "logs"),
        )
        threads = t.num_threads or max(1, (os.cpu_count() or 1) // self.acc.num_processes)
        if self.acc.device.type == "cpu":
            torch.set_num_threads(threads)
        log.info("peft-tags %s | %s | %d process(es) on %s, %d thread(s) each | precision %s: %s",
                 __version__, r.source, self.acc.num_processes, self.acc.device, torch.get_num_threads(), precision, why)
        set_seed(t.seed)

        self._prepare_data(tokenizer)
        self._prepare_training(backbone, tokenizer.pad_token_id)
        if t.resume and pre.checkpoint is not None:
            self._restore()

    def _prepare_data(self, tokenizer) -> None:
        """Tokenize every split once; report what the encoding cannot represent."""
        self.task = make_task(self.recipe, tokenizer, self.data["train"])
        self.encoded = {k: self.task.encode(v) for k, v in self.data.items()}
        self.task.describe(self.data, self.encoded)

    def _prepare_training(self, backbone: str, pad_id: int) -> None:
        """Model with its method, the one ``prepare`` call, the schedule and the loop state."""
        from transformers import get_scheduler

        r, t = self.recipe, self.recipe.training
        b = r.backbone
        model = build_token_classifier(backbone, self.task.num_outputs, t.seed, b.quantization, b.double_quantization,
                                       b.compute_dtype)
        self.task.init_head(model, self.encoded["train"])
        self.method = methods.get(r.method.name)
        lengths = [len(e.input_ids) for e in self.encoded["train"]]
        self.sampler = LengthBucketBatches(lengths, t.batch_size, t.seed, t.length_bucketing)
        # 3314 titles / 16 per batch = 208 batches, split over the processes; / grad_accum = optimizer steps
        self.steps_per_epoch = preflight.steps_per_epoch(r, len(lengths), self.acc.num_processes)
        self.total_steps = self.steps_per_epoch * t.epochs
        model = apply_method(model, r.method.name, r.method.options, total_steps=self.total_steps)
        check_max_length(model, r.backbone.max_length)
        self.params = parameter_counts(model)
        p = self.params
        log.info("trainable parameters: adapter %s + backbone %s + head %s = %s of %s (%.3f%%)", f"{p['adapter']:,}",
                 f"{p['backbone']:,}", f"{p['head']:,}", f"{p['trainable']:,}", f"{p['all']:,}", p["trainable_pct"])
        loader = torch.utils.data.DataLoader(self.encoded["train"], batch_sampler=self.sampler,
                                             collate_fn=lambda b: self.task.collate(b, pad_id))
        optimizer = torch.optim.AdamW(self._param_groups(model), lr=t.lr)
        self.model, self.optimizer, self.loader = self.acc.prepare(model, optimizer, loader)
        if math.ceil(len(self.loader) / t.grad_accum) != self.steps_per_epoch:  # the schedule AdaLoRA was given
            raise RuntimeError(f"{len(self.loader)} batches per process after sharding; expected "
                               f"{self.steps_per_epoch * t.grad_accum}")
        # stepped by hand once per optimizer step, so it is not handed to prepare()
        name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[t.schedule]
        self.scheduler = get_scheduler(name, self.optimizer.optimizer, num_warmup_steps=int(t.warmup_ratio * self.total_steps),
                                       num_training_steps=self.total_steps)
        if self.acc.is_main_process and self.acc.log_with:
            self.acc.init_trackers("train", config=_flat_scalars(recipe_to_dict(r)))
        self.state = {"epoch": 0, "batch_in_epoch": 0, "step": 0, "best": None, "history": [], "checkpoints": 0,
                      "train_seconds": 0.0, "train_titles": 0, "run_id": self.run_id,
                      "fingerprint": self.pre.fingerprint}

    def _param_groups(self, model) -> list[dict]:
        t = self.recipe.training
        groups = {}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            head = is_head_param(name)
            decay = p.ndim >= 2 and "LayerNorm" not in name
            lr = (t.head_lr or t.lr) if head else t.lr
            groups.setdefault((head, decay), {"params": [], "lr": lr, "weight_decay": t.weight_decay if decay else 0.0})
            groups[(head, decay)]["params"].append(p)
        return list(groups.values())

    @property
    def run_id(self) -> str:
        """The run's identity: kept in its work folder's marker, its checkpoints and its output's marker."""
        marker = owned.read_marker(self.work)  # written by the main process, the only one that publishes
        return marker["id"] if marker else ""

    def _prepare_work_dir(self) -> None:
        """A fresh run starts from nothing: an earlier crashed run's work folder (checkpoints, best
        weights, logs; peft-tags' own, checked before) is removed and a marked one made."""
        owned.recover(self.work)
        if self.recipe.training.resume and self.pre.checkpoint is not None:
            return
        for note in self.pre.notes:
            log.warning("%s", note)
        owned.remove_owned(self.work)
        owned.make_dir(self.work, "work", owned.new_id(), fingerprint=preflight.fingerprint_hash(self.pre.fingerprint))

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        from tqdm.auto import tqdm

        t, acc, st = self.recipe.training, self.acc, self.state
        log.info("training: %d epoch(s) x %d optimizer steps (%d titles x %d accumulation x %d process(es) per step)",
                 t.epochs, self.steps_per_epoch, t.batch_size, t.grad_accum, acc.num_processes)
        bar = tqdm(total=self.total_steps, initial=st["step"], disable=not acc.is_local_main_process, desc="train", unit="step")
        unwrapped = acc.unwrap_model(self.model)
        regularizer, on_step = self.method.regularizer, self.method.on_step
        for epoch in range(st["epoch"], t.epochs):
            loader = acc.skip_first_batches(self.loader, st["batch_in_epoch"]) if st["batch_in_epoch"] else self.loader
            # accelerate's loaders count their own iterations and pass them to the sampler as the
            # epoch; a resumed run must hand over the true epoch, or it replays epoch 0's order
            loader.set_epoch(epoch)
            self.sampler.set_epoch(epoch)
            self.model.train()
            tick = time.perf_counter()
            for batch in _batches(loader):
                with acc.accumulate(self.model):
                    logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    loss = self.task.loss(logits, batch)
                    if regularizer is not None:
                        extra = regularizer(unwrapped)
                        loss = loss if extra is None else loss + extra
                    acc.backward(loss)
                    if acc.sync_gradients and t.max_grad_norm:
                        acc.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
                    self.optimizer.step()
                    if acc.sync_gradients and on_step is not None and not self.optimizer.step_was_skipped:
                        on_step(unwrapped, st["step"] + 1)  # AdaLoRA: after the step, before zero_grad
                    self.optimizer.zero_grad(set_to_none=True)
                st["batch_in_epoch"] += 1
                n = torch.tensor(len(batch["input_ids"]), device=acc.device)
                st["train_titles"] += int(acc.reduce(n, "sum")) if acc.num_processes > 1 else int(n)
                if acc.sync_gradients:
                    if not self.optimizer.step_was_skipped:  # fp16 loss scaling skips overflowing steps
                        self.scheduler.step()
                    st["step"] += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch + 1)
                    acc.log({"train/loss": loss.item(), "train/lr": self.scheduler.get_last_lr()[0]}, step=st["step"])
                    if t.checkpoint_every_steps and st["step"] % t.checkpoint_every_steps == 0:
                        st["train_seconds"] += time.perf_counter() - tick
                        self._checkpoint()
                        tick = time.perf_counter()
            st["train_seconds"] += time.perf_counter() - tick
            st["epoch"], st["batch_in_epoch"] = epoch + 1, 0
            if "dev" in self.data and ((epoch + 1) % t.eval_every_epochs == 0 or epoch + 1 == t.epochs):
                self._evaluate_dev(epoch + 1)
            if not t.checkpoint_every_steps or epoch + 1 == t.epochs:
                self._checkpoint()
        bar.close()

    def _evaluate_dev(self, epoch: int) -> None:
        scores = self.evaluate("dev")
        st = self.state
        st["history"].append({"epoch": epoch, "step": st["step"], **{k: scores[k] for k in ("micro_f1", "macro_f1")}})
        self.acc.log({"dev/micro_f1": scores["micro_f1"], "dev/macro_f1": scores["macro_f1"]}, step=st["step"])
        improved = st["best"] is None or scores["micro_f1"] > st["best"]["micro_f1"]
        log.info("epoch %d: dev micro-F1 %.4f macro-F1 %.4f%s", epoch, scores["micro_f1"], scores["macro_f1"],
                 "  (best so far)" if improved else "")
        if improved:
            st["best"] = {"epoch": epoch, "step": st["step"], "micro_f1": scores["micro_f1"]}
            if self.acc.is_main_process:
                self._save_best()

    def evaluate(self, split: str, final: bool = False) -> dict:
        """The task's scores on a split; each process predicts a shard, every process scores all
        (so every process holds what scoring tunes, such as thresholds). ``final``: the scores
        of the chosen model."""
        from accelerate.utils import gather_object

        examples, encoded = self.data[split], self.encoded[split]
        rank, world = self.acc.process_index, self.acc.num_processes
        mine = list(range(rank, len(examples), world))
        model = self.acc.unwrap_model(self.model)
        raw = self.task.predict(model, [examples[i] for i in mine], [encoded[i] for i in mine], 64, self.acc.device)
        preds = list(zip(mine, raw))
        preds = sorted(gather_object(preds) if world > 1 else preds, key=lambda p: p[0])
        self.model.train()
        return self.task.score(split, [p for _, p in preds], examples, final)

    # ------------------------------------------------------------------ checkpoints
    def _weights(self) -> dict:
        """Trainable weights and the method's own state (AdaLoRA: scores and rank pattern)."""
        model = self.acc.unwrap_model(self.model)
        return {"params": _trainable_state(model), "method": self.method.state(model) if self.method.state else None}

    def _load_weights(self, weights: dict) -> None:
        model = self.acc.unwrap_model(self.model)
        _load_trainable(model, weights["params"])
        if self.method.load_state and weights.get("method") is not None:
            self.method.load_state(model, weights["method"])

    def _checkpoint(self) -> None:
        """Trainable weights, optimizer, schedule, loss scale, RNG and loop state (no pickle), written
        to ``checkpoint-N.tmp`` by every process and published by the main one in one rename.
        Resume takes the newest complete ``checkpoint-N``; a kill at any moment leaves one."""
        from .statefile import save_state

        acc, work, st = self.acc, self.work, self.state
        st["checkpoints"] += 1
        tmp, final = work / f"checkpoint-{st['checkpoints']}.tmp", work / f"checkpoint-{st['checkpoints']}"
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        acc.wait_for_everyone()
        save_state(_rng_state(), tmp / f"rng{acc.process_index}")  # dropout differs per rank
        acc.wait_for_everyone()
        if acc.is_main_process:
            save_state(self._weights(), tmp / "trainable")
            save_state({"optimizer": self.optimizer.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "scaler": acc.scaler.state_dict() if acc.scaler is not None else None}, tmp / "optim")
            owned.write_json_atomic(tmp / "state.json", st)
            owned.fsync_dir(tmp)
            if final.exists():  # left by an attempt killed after this point; same content
                shutil.rmtree(final)
            os.replace(tmp, final)
            owned.fsync_dir(work)
            self._prune(keep=final.name)
        acc.wait_for_everyone()

    def _prune(self, keep: str) -> None:
        """Remove older checkpoints, unfinished ones and best weights the state no longer names."""
        best = self.state["best"]
        keep_best = f"best-{best['step']}" if best else None
        for name in sorted(os.listdir(self.work)):
            stale = ((preflight.CHECKPOINT.fullmatch(name) and name != keep) or name.endswith(".tmp")
                     or (name.startswith("best-") and name != keep_best))
            if stale and (self.work / name).is_dir() and not (self.work / name).is_symlink():
                shutil.rmtree(self.work / name)

    def _save_best(self) -> None:
        from .statefile import save_state

        name = f"best-{self.state['step']}"
        tmp = self.work / (name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_state(self._weights(), tmp / "weights")
        owned.fsync_dir(tmp)
        if (self.work / name).exists():
            shutil.rmtree(self.work / name)
        os.replace(tmp, self.work / name)
        owned.fsync_dir(self.work)

    def _restore(self) -> None:
        from .statefile import load_state

        ckpt = self.pre.checkpoint
        weights = load_state(ckpt / "trainable", "training.resume")
        model = self.acc.unwrap_model(self.model)
        params = weights.get("params") if isinstance(weights, dict) else None
        missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in (params or {})]
        if missing:
            raise UserError(f"training.resume: checkpoint in '{ckpt}' does not match this recipe (no '{missing[0]}')")
        try:
            self._load_weights(weights)
            optim = load_state(ckpt / "optim", "training.resume")
            self.optimizer.optimizer.load_state_dict(optim["optimizer"])
            self.scheduler.load_state_dict(optim["scheduler"])
            if optim.get("scaler") is not None and self.acc.scaler is not None:
                self.acc.scaler.load_state_dict(optim["scaler"])
            self.state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
        except UserError:
            raise
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"training.resume: the checkpoint '{ckpt}' does not load: {text}") from None
        rng = ckpt / f"rng{self.acc.process_index}.json"
        if not rng.is_file():
            raise UserError(f"training.resume: '{ckpt}' holds no random state for process {self.acc.process_index} "
                            "(was it written with another number of processes?)")
        try:
            _set_rng_state(load_state(ckpt / f"rng{self.acc.process_index}", "training.resume"))
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise UserError(f"training.resume: the random state in '{ckpt}' does not load: {e}") from None
        log.info("resumed from %s: epoch %d, batch %d, step %d", ckpt, self.state["epoch"], self.state["batch_in_epoch"], self.state["step"])

    # ------------------------------------------------------------------ save
    def save(self) -> Path:
        """Restore the best-on-dev weights, score test, and publish the output directory."""
        from .statefile import load_state

        acc = self.acc
        model = acc.unwrap_model(self.model)
        acc.wait_for_everyone()
        if self.state["best"]:
            self._load_weights(load_state(self.work / f"best-{self.state['best']['step']}" / "weights", "best weights"))
        tick = time.perf_counter()
        results = {split: self.evaluate(split, final=True) for split in ("dev", "test") if split in self.data}
        eval_seconds = time.perf_counter() - tick
        eval_titles = sum(len(self.data[s]) for s in results)
        if acc.is_main_process:
            metrics = self._metrics(results, eval_titles / max(eval_seconds, 1e-9))
            self._publish(model, metrics, {split: r.get("report", "") for split, r in results.items()})
        acc.wait_for_everyone()
        acc.end_training()
        return self.out

    def _metrics(self, results: dict, eval_titles_per_s: float) -> dict:
        st = self.state
        summary = {split: {k: v for k, v in r.items() if k != "report"} for split, r in results.items()}
        return {
            "recipe": self.recipe.source,
            "task": self.recipe.task.type,
            "method": self.recipe.method.name,
            "backbone": self.recipe.backbone.name,
            **{f"{split}_micro_f1": r["micro_f1"] for split, r in results.items()},
            **{f"{split}_macro_f1": r["macro_f1"] for split, r in results.items()},
            "scores": summary,
            "best": st["best"],
            "history": st["history"],
            "parameters": self.params,
            **self.task.metrics(),
            "train_seconds": round(st["train_seconds"], 2),
            "train_titles_per_s": round(st["train_titles"] / max(st["train_seconds"], 1e-9), 2),
            "eval_titles_per_s": round(eval_titles_per_s, 2),
            "peak_memory_mb": round(peak_memory_mb(), 1),
            "processes": self.acc.num_processes,
            "device": str(self.acc.device),
            "threads": torch.get_num_threads(),
            "mixed_precision": self.acc.mixed_precision,
            "versions": _versions(),
        }

    def _publish(self, model, metrics: dict, reports: dict[str, str]) -> None:
        from safetensors.torch import save_file

        # the recipe as it ran, made to load from anywhere: a local backbone by absolute path
        resolved = dataclasses.replace(self.recipe, training=dataclasses.replace(self.recipe.training, resume=False))
        if Path(resolved.backbone.name).expanduser().is_dir():
            resolved.backbone = dataclasses.replace(resolved.backbone, name=str(Path(resolved.backbone.name).expanduser().resolve()))

        with owned.Staged(self.out, "run", self.state["run_id"],
                          fingerprint=preflight.fingerprint_hash(self.pre.fingerprint)) as tmp:
            if hasattr(model, "peft_config"):
                model.peft_config["default"].base_model_name_or_path = self.recipe.backbone.name
                with warnings.catch_warnings():
                    # AdaLoRA may prune a matrix to rank 0; peft takes the empty tensors for unsharded DeepSpeed ones
                    warnings.filterwarnings("ignore", message=r"Adapter '.*': \d+ LoRA tensor\(s\) have invalid shape")
                    model.save_pretrained(str(tmp), save_embedding_layers=False)  # adapter_config.json + adapter_model.safetensors (with head)
            elif self.recipe.method.name == "full":
                model.save_pretrained(str(tmp / "model"))
            head = {k: v.detach().cpu().contiguous() for k, v in head_module(model, HEAD_NAME).state_dict().items()}
            save_file(head, str(tmp / "head.safetensors"))
            labels = self.task.meta()
            (tmp / "labels.json").write_text(json.dumps(labels, ensure_ascii=False, indent=1), encoding="utf-8")
            dump_recipe(resolved, tmp / "recipe.yaml")
            (tmp / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=1), encoding="utf-8")
            for split, report in reports.items():
                (tmp / f"{split}_report.txt").write_text(report, encoding="utf-8")
            (tmp / "README.md").write_text(model_card(self.recipe, metrics), encoding="utf-8")
            if (self.work / "logs").is_dir():
                shutil.copytree(self.work / "logs", tmp / "logs")
        owned.remove_owned(self.work)
        log.info("wrote %s: test micro-F1 %s, %s titles/s in training", self.out,
                 metrics.get("test_micro_f1"), metrics["train_titles_per_s"])


def _batches(loader):
    """Iterate ``loader`` without touching the global torch RNG.

    A DataLoader draws a seed from the global RNG whenever an iterator starts. A resumed run
    starts its iterator mid-epoch, after restoring the RNG, so the draw would shift every
    dropout mask after it; with the draws fenced off, resume matches an uninterrupted run.
    """
    it = iter(loader)
    while True:
        with torch.random.fork_rng(devices=[]):
            batch = next(it, None)
        if batch is None:
            return
        yield batch


def run(recipe: Recipe) -> Path:
    r = TrainRun(recipe)
    try:
        r.setup()
        if r.finished:
            if r.lock is not None:
                owned.remove_owned(r.work)
            log.info("%s already holds this run (published before the last interruption); nothing to resume", r.out)
            return r.out
        r.train()
        return r.save()
    finally:
        if r.lock is not None:
            r.lock.release()


# ----------------------------------------------------------------------------- small helpers
def _flat_scalars(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_scalars(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        elif isinstance(v, list):
            out[key] = ",".join(map(str, v))
    return out


def _versions() -> dict:
    import accelerate, peft, transformers

    return {"peft_tags": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__}


def _configure_logging(main: bool) -> None:
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", level=logging.INFO if main else logging.WARNING,
                        force=True)


def _plain_peft_note(method: str) -> list[str]:
    if method == "bottleneck":
        return ["`import peft_tags.bottleneck` first: it registers the BOTTLENECK peft type."]
    if method == "prefix":
        return ["Then call `peft_tags.methods.prefix.enable(model)`: transformers 5 encoders take the prefixes "
                "through peft-tags' attention function, not as `past_key_values`."]
    return []


def _task_line(recipe: Recipe, m: dict) -> str:
    t = recipe.task
    if t.type == "multilabel":
        th = m.get("thresholds", {})
        return (f"multi-label tags ({m['tag_stats']['vocabulary']} in the vocabulary), {t.pooling} pooling, sigmoid per tag; "
                f"decision: {th.get('rule', t.thresholds)} thresholds tuned on dev (global {th.get('global')}"
                + (f"; asked for auto: held-out dev micro-F1 per-tag {th['held_out_dev']['per-tag']:.4f}, global "
                   f"{th['held_out_dev']['global']:.4f}" if th.get("held_out_dev") else "") + ")"
                + (f", at most {t.top_k} tags" if t.top_k else ""))
    return f"character-span tagging (BIO), {t.slots} label slots per token"


def model_card(recipe: Recipe, m: dict) -> str:
    p = m["parameters"]
    test = m["scores"].get("test", {})
    lines = [
        f"# peft-tags {m['task']} model: {m['method']} on {m['backbone']}",
        "",
        f"Trained by peft-tags {__version__} from `{m['recipe']}` (resolved recipe: `recipe.yaml`).",
        "",
        "| | |", "|---|---|",
        f"| task | {_task_line(recipe, m)} |",
        f"| data | train `{recipe.data.train}`, dev `{recipe.data.dev}`, test `{recipe.data.test}` |",
        f"| trainable parameters | adapter {p['adapter']:,} + backbone {p['backbone']:,} + head {p['head']:,} = {p['trainable']:,} ({p['trainable_pct']}% of {p['all']:,}) |",
        f"| test micro P / R / F1 | {test.get('micro_precision', float('nan')):.4f} / {test.get('micro_recall', float('nan')):.4f} / {test.get('micro_f1', float('nan')):.4f} |",
        f"| test macro F1 | {test.get('macro_f1', float('nan')):.4f} |",
        *([f"| test example-based F1 | {test['example_f1']:.4f} |"] if "example_f1" in test else []),
        f"| best dev epoch | {m['best']['epoch'] if m['best'] else '-'} |",
        f"| training | {m['train_seconds']} s, {m['train_titles_per_s']} titles/s, {m['processes']} process(es) on {m['device']}, precision {m['mixed_precision']} |",
        "",
        "## Use",
        "",
        "```python",
        "from peft_tags import Tagger",
        f"Tagger.load('{recipe.output.dir}').tag(['<a product title>'])",
        "```",
        "",
        "or `peft-tags predict <this directory> \"<title>\"`. The adapter files are standard PEFT:",
        "`PeftModel.from_pretrained(AutoModelForTokenClassification.from_pretrained(<backbone>, "
        "num_labels=<labels.json: num_outputs>), <this directory>)` restores adapter and head.",
        *_plain_peft_note(recipe.method.name),
        "",
    ]
    return "\n".join(lines)
