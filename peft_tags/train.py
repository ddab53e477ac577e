"""Train a recipe with Accelerate: one process or many, CPU or GPU.

``TrainRun(recipe)`` follows setup -> train -> save: the loop reads top to bottom. The run
works in ``<output.dir>.work/`` (checkpoints, best weights, logs) and only at the very end
moves a finished directory to ``output.dir`` in one rename, so a crash never leaves a
directory that looks complete but is not.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch

from . import checkpoint, methods, owned, preflight, publish
from .version import __version__
from .lock import OutputLock
from .model import (apply_method, build_token_classifier, check_max_length, is_checkpointing, is_head_param,
                    parameter_counts, quiet_transformers)
from .precision import choose_precision
from .regularize import StepLoss
from .config import Recipe, recipe_to_dict
from .sampler import LengthBucketBatches, fenced_batches
from .tasks import make_task

log = logging.getLogger("peft_tags.train")
#: accelerate trackers that write locally, and the init keyword that says where (under the run's logs/)
TRACKER_DIR_KEYS = {"wandb": "dir", "dvclive": "dir", "swanlab": "logdir"}


# ----------------------------------------------------------------------------- the run
class TrainRun:
    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.out = preflight.output_path(recipe)
        self.work = preflight.work_dir(self.out)
        self.lock = None
        self.finished = False  # resume found this very run already published
        self.acc = None  # the Accelerator, made in setup
        self.saved_env: dict[str, str | None] = {}  # what the trackers' setup changed in os.environ

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
            self.lock = OutputLock(self.out).acquire()
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
        self._prepare_training(backbone, tokenizer)
        if t.resume and pre.checkpoint is not None:
            self._restore()

    def _prepare_data(self, tokenizer) -> None:
        """Tokenize every split once; report what the encoding cannot represent."""
        self.task = make_task(self.recipe, tokenizer, self.data["train"])
        self.encoded = {k: self.task.encode(v) for k, v in self.data.items()}
        self.task.describe(self.data, self.encoded)

    def _prepare_training(self, backbone: str, tokenizer) -> None:
        """Model with its method, the one ``prepare`` call, the schedule and the loop state."""
        from transformers import get_scheduler

        r, t, pad_id = self.recipe, self.recipe.training, tokenizer.pad_token_id
        b = r.backbone
        kind = self.task.model_kind
        model = build_token_classifier(backbone, self.task.num_outputs, t.seed, b.quantization, b.double_quantization,
                                       b.compute_dtype, gradient_checkpointing=t.gradient_checkpointing, kind=kind)
        self.task.init_head(model, self.encoded["train"])
        self.method = methods.get(r.method.name)
        lengths = [len(e.input_ids) for e in self.encoded["train"]]
        self.sampler = LengthBucketBatches(lengths, t.batch_size, t.seed, t.length_bucketing)
        # 3314 titles / 16 per batch = 208 batches, split over the processes; / grad_accum = optimizer steps
        self.steps_per_epoch = preflight.steps_per_epoch(r, len(lengths), self.acc.num_processes)
        self.total_steps = self.steps_per_epoch * t.epochs
        model = apply_method(model, r.method.name, r.method.options, total_steps=self.total_steps, kind=kind,
                             tokenizer=tokenizer)
        check_max_length(model, r.backbone.max_length)
        self.params = parameter_counts(model)
        p = self.params
        log.info("trainable parameters: adapter %s + backbone %s + head %s = %s of %s (%.3f%%)%s", f"{p['adapter']:,}",
                 f"{p['backbone']:,}", f"{p['head']:,}", f"{p['trainable']:,}", f"{p['all']:,}", p["trainable_pct"],
                 "; gradient checkpointing on" if is_checkpointing(model) else "")
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
        checkpoint.keep_trainable_weights(self.acc)
        if self.acc.is_main_process and self.acc.log_with:
            self._start_trackers()
        # early_stopping: the dev micro-F1 that last counted as an improvement, and evaluations since
        self.state = {"epoch": 0, "batch_in_epoch": 0, "step": 0, "best": None, "history": [], "checkpoints": 0,
                      "early_stopping": {"best": None, "waited": 0}, "stopped_early": None,
                      "train_seconds": 0.0, "train_titles": 0, "run_id": self.run_id,
                      "fingerprint": self.pre.fingerprint}

    def _start_trackers(self) -> None:
        """Each tracker writes under the work folder's logs/ (published as the run's logs/) where it
        can be told to; mlflow, unless MLFLOW_TRACKING_URI names a store, into a file store
        logs/mlruns (which recent mlflow opens only with MLFLOW_ALLOW_FILE_STORE; both are set
        for this run and put back by :meth:`cleanup`)."""
        logs = (self.work / "logs").resolve()
        names = {str(name) for name in self.acc.log_with}
        kwargs = {name: {key: str(logs / name)} for name, key in TRACKER_DIR_KEYS.items() if name in names}
        for name in kwargs:
            (logs / name).mkdir(parents=True, exist_ok=True)
        if "mlflow" in names:
            kwargs["mlflow"] = {"run_name": self.out.name}
            if not os.environ.get("MLFLOW_TRACKING_URI"):
                self.saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE")}
                os.environ["MLFLOW_TRACKING_URI"] = (logs / "mlruns").as_uri()
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.acc.init_trackers("train", config=_flat_scalars(recipe_to_dict(self.recipe)), init_kwargs=kwargs)

    def cleanup(self) -> None:
        """Close the trackers a failed run left open while the environment still names their store
        (mlflow would end its run at exit, in its default store by then), and put back the
        environment :meth:`_start_trackers` changed. Safe to call again."""
        for tracker in self.acc.trackers if self.acc is not None else []:
            tracker.finish()
        if self.acc is not None:
            self.acc.trackers.clear()
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self.saved_env = {}

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
        on_step = self.method.on_step
        step_loss = StepLoss(acc, self.model, self.task, t, self.method.regularizer)
        try:
            self._epochs(bar, unwrapped, on_step, step_loss)
        finally:
            step_loss.close()
        bar.close()

    def _epochs(self, bar, unwrapped, on_step, step_loss) -> None:
        t, acc, st = self.recipe.training, self.acc, self.state
        for epoch in range(st["epoch"], t.epochs):
            if st["stopped_early"]:  # a run resumed from the checkpoint written when it stopped
                break
            loader = acc.skip_first_batches(self.loader, st["batch_in_epoch"]) if st["batch_in_epoch"] else self.loader
            # accelerate's loaders count their own iterations and pass them to the sampler as the
            # epoch; a resumed run must hand over the true epoch, or it replays epoch 0's order
            loader.set_epoch(epoch)
            self.sampler.set_epoch(epoch)
            self.model.train()
            tick = time.perf_counter()
            for batch in fenced_batches(loader):
                with acc.accumulate(self.model):
                    loss = step_loss(batch)  # forward and backward, with R-Drop / FGM where asked
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
            if not t.checkpoint_every_steps or epoch + 1 == t.epochs or st["stopped_early"]:
                self._checkpoint()

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
                checkpoint.save_best(self.work, st["step"], self._weights())
        if self.recipe.training.early_stopping_patience is not None:
            self._count_patience(epoch, scores["micro_f1"])

    def _count_patience(self, epoch: int, score: float) -> None:
        """Early stopping: an evaluation counts when it beats the last one that counted by more
        than min_delta (every process scores all of dev, so all of them decide alike)."""
        t, st = self.recipe.training, self.state
        es = st["early_stopping"]
        if es["best"] is None or score > es["best"] + t.early_stopping_min_delta:
            es["best"], es["waited"] = score, 0
            return
        es["waited"] += 1
        if es["waited"] >= t.early_stopping_patience and epoch < t.epochs:  # at the last epoch it ends anyway
            st["stopped_early"] = {"epoch": epoch, "step": st["step"], "best_epoch": st["best"]["epoch"]}
            log.info("early stopping after epoch %d of %d (step %d): %d evaluation(s) without a dev micro-F1 above "
                     "%.4f + %g; the weights of epoch %d are kept", epoch, t.epochs, st["step"], es["waited"],
                     es["best"], t.early_stopping_min_delta, st["best"]["epoch"])

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
        return {"params": checkpoint.trainable_state(model), "method": self.method.state(model) if self.method.state else None}

    def _load_weights(self, weights: dict) -> None:
        model = self.acc.unwrap_model(self.model)
        checkpoint.load_trainable(model, weights["params"])
        if self.method.load_state and weights.get("method") is not None:
            self.method.load_state(model, weights["method"])

    def _method_state(self):
        return self.method.state(self.acc.unwrap_model(self.model)) if self.method.state else None

    def _load_method_state(self, state) -> None:
        if self.method.load_state:
            self.method.load_state(self.acc.unwrap_model(self.model), state)

    def _checkpoint(self) -> None:
        checkpoint.write(self.acc, self.work, self.state, self._method_state, self.scheduler)

    def _restore(self) -> None:
        self.state = checkpoint.restore(self.pre.checkpoint, self.acc, self._load_method_state, self.scheduler)
        log.info("resumed from %s: epoch %d, batch %d, step %d", self.pre.checkpoint, self.state["epoch"],
                 self.state["batch_in_epoch"], self.state["step"])

    # ------------------------------------------------------------------ save
    def save(self) -> Path:
        """Restore the best-on-dev weights, score test, and publish the output directory."""
        acc = self.acc
        model = acc.unwrap_model(self.model)
        acc.wait_for_everyone()
        if self.state["best"]:
            self._load_weights(checkpoint.load_best(self.work, self.state["best"]["step"]))
        tick = time.perf_counter()
        results = {split: self.evaluate(split, final=True) for split in ("dev", "test") if split in self.data}
        eval_seconds = time.perf_counter() - tick
        eval_titles = sum(len(self.data[s]) for s in results)
        if acc.is_main_process:
            metrics = publish.run_metrics(self, results, eval_titles / max(eval_seconds, 1e-9))
            for tracker in acc.trackers:  # flushed and closed (mlflow: the run finished) before logs/ is copied
                tracker.finish()
            acc.trackers.clear()
            publish.publish(self, model, metrics, {split: r.get("report", "") for split, r in results.items()})
        acc.wait_for_everyone()
        acc.end_training()
        self.cleanup()
        if acc.is_main_process and self.recipe.output.push_to_hub:
            publish.push(self.out, self.recipe.output)
        return self.out

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
        r.cleanup()
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


def _configure_logging(main: bool) -> None:
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", level=logging.INFO if main else logging.WARNING,
                        force=True)
