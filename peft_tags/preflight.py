"""Everything a run checks before its first step, shared by ``validate`` and ``train``.

:func:`check` raises one :class:`~peft_tags.errors.UserError` line for the first problem it
finds and logs nothing, so a run that cannot start prints exactly one line. In order: the
training options that need more than their section (early stopping a dev split, the tracker
its package), the output directory is allowed (and, for resume, holds a checkpoint of this
recipe, this data and this code), the backbone resolves without a hub, its tokenizer loads,
the method's target modules exist in it (with gradient checkpointing, if asked for, which the
method must allow) and ``max_length`` fits its positions, every data file exists
and parses (the culprit named by ``path:line``), and the run is long enough for its method
(AdaLoRA's budget schedule needs two optimizer steps).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import owned
from .errors import UserError

CHECKPOINT = re.compile(r"checkpoint-(\d+)")


@dataclass
class Preflight:
    backbone: str
    tokenizer: object
    data: dict
    fingerprint: dict
    checkpoint: Path | None = None  # resume: the checkpoint to continue from
    finished: bool = False  # resume: output.dir already holds this very run
    notes: list[str] = field(default_factory=list)


def output_path(recipe) -> Path:
    """output.dir as a normal path (``~`` expanded, ``..`` and trailing slashes folded)."""
    return Path(os.path.normpath(Path(recipe.output.dir).expanduser()))


def work_dir(out: Path) -> Path:
    return out.parent / (out.name + ".work")


def latest_checkpoint(work: Path) -> Path | None:
    """The newest complete ``checkpoint-N`` of a work directory (a checkpoint appears in one rename)."""
    best = None
    try:
        names = os.listdir(work)
    except OSError:
        return None
    for name in names:
        m = CHECKPOINT.fullmatch(name)
        if m and (work / name / "state.json").is_file() and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), work / name)
    return best[1] if best else None


def check(recipe, read_data: bool = True) -> Preflight:
    from .backbones import resolve_backbone
    from .model import load_tokenizer, quiet_transformers

    quiet_transformers()
    check_training(recipe)
    check_output(recipe)
    backbone = resolve_backbone(recipe.backbone.name, recipe.backbone.cache_dir)
    tokenizer = load_tokenizer(backbone)
    check_model(recipe, backbone)
    data = load_data(recipe) if read_data else {}
    if read_data:
        check_steps(recipe, len(data["train"]))
    pre = Preflight(backbone, tokenizer, data, fingerprint(recipe))
    check_run_state(recipe, pre)
    return pre


def check_run_state(recipe, pre: Preflight) -> None:
    """The output checks again (for resume: which checkpoint, or whether the run is already out)."""
    pre.checkpoint, pre.finished = None, False
    check_output(recipe)
    if recipe.training.resume:
        _check_resume(recipe, output_path(recipe), pre)


def check_output(recipe) -> None:
    """output.dir may be written: allowed place, absent or replaceable, its work folder ours."""
    o, t = recipe.output, recipe.training
    out = output_path(recipe)
    owned.check_target(out, "output.dir", _data_roots(recipe))
    work = work_dir(out)
    if os.path.lexists(work) and not owned.is_owned(work) and not owned.is_empty_dir(work):
        raise UserError(f"output.dir: '{work}' exists and was not written by peft-tags; it is left as it is: "
                        "move it away or choose another output directory")
    if os.path.lexists(out):
        if t.resume and owned.read_marker(out) is not None:
            return  # resume: the output may be this run, published just before a crash (checked later)
        if not o.overwrite:
            raise UserError(f"output.dir: '{out}' already exists; set output.overwrite=true or choose another directory")
        owned.check_replaceable(out, "output.dir", _data_roots(recipe))
    if not out.parent.is_dir() and os.path.lexists(out.parent):
        raise UserError(f"output.dir: '{out.parent}' is not a directory")


def _data_roots(recipe) -> list[Path]:
    return [Path(recipe.data.root)] if recipe.data.root else []


def _check_resume(recipe, out: Path, pre: Preflight) -> None:
    marker = owned.read_marker(out)
    if marker is not None and marker.get("kind") == "run" and marker.get("fingerprint") == fingerprint_hash(pre.fingerprint):
        pre.finished = True  # published by an earlier attempt of this very run
        return
    if os.path.lexists(out):
        if not recipe.output.overwrite:
            raise UserError(f"output.dir: '{out}' already exists and holds another run; set output.overwrite=true "
                            "to replace it when the resumed run ends")
        owned.check_replaceable(out, "output.dir", _data_roots(recipe))
    work = work_dir(out)
    ckpt = latest_checkpoint(work)
    if ckpt is None:  # stopped before its first checkpoint (or never started): it starts from the beginning
        pre.notes.append(f"training.resume: no checkpoint under '{work}' yet; starting from the beginning")
        return
    try:
        saved = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"training.resume: '{ckpt / 'state.json'}' is damaged; start afresh (without resume)") from None
    differs = first_difference(saved, pre.fingerprint)
    if differs:
        raise UserError(f"training.resume: the checkpoint in '{work}' was made with {_what_changed(differs)}; "
                        "resume with the same recipe, data and code, or start afresh")
    from .statefile import check_state

    for name in ("run_state", f"rng{os.environ.get('RANK', '0')}"):
        check_state(ckpt / name, "training.resume")
    _check_accelerate_state(ckpt)
    pre.checkpoint = ckpt


def _check_accelerate_state(ckpt: Path) -> None:
    """The files accelerator.save_state wrote: readable, and loadable without running code
    (weights-only loading, as accelerate loads them)."""
    from accelerate.utils import load
    from safetensors import safe_open

    if not any(ckpt.glob("optimizer*.bin")) and not any(p.is_dir() for p in ckpt.iterdir()):
        raise UserError(f"training.resume: '{ckpt}' holds no optimizer state; start afresh (without resume)")
    for path in sorted(ckpt.iterdir()):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), "pt"):
                    pass
            elif path.suffix in (".bin", ".pkl", ".pt"):
                load(path, map_location="cpu")
        except Exception as e:  # noqa: BLE001  (any way a damaged file fails to load: one line)
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"training.resume: '{path}' does not load ({text[:200]}); start afresh "
                            "(without resume)") from None


def _what_changed(key: str) -> str:
    if key.startswith("data_hash."):
        split = key.split(".", 1)[1]
        return f"another content of the data file of data.{split} (the file changed)"
    if key.startswith("code"):
        return f"another version of the peft-tags code ('{key}' differs)"
    return f"another recipe ('{key.split('.', 1)[1] if key.startswith('recipe.') else key}' differs)"


# ----------------------------------------------------------------------------- training options
#: pip packages of accelerate's trackers whose names differ from the tracker's (with accelerate's bounds)
TRACKER_PACKAGES = {"comet_ml": "comet-ml", "aim": "'aim<4'", "mlflow": "mlflow (or the lighter mlflow-skinny)"}


def check_training(recipe) -> None:
    """Keys that need more than their section: a dev split to stop early on, the tracker's package,
    a token to push with."""
    t = recipe.training
    if t.early_stopping_patience is not None and not recipe.data.has_dev:
        raise UserError("training.early_stopping_patience: early stopping watches the dev score, and data.dev is null; "
                        "set data.dev, or training.early_stopping_patience: null")
    check_tracker(t.log_with)
    if recipe.output.push_to_hub:  # refused now, not after the training it would upload
        from .hub import token_problem

        problem = token_problem()
        if problem:
            raise UserError(f"output.push_to_hub: cannot push to '{recipe.output.push_to_hub}': {problem}")


def check_tracker(name: str | None) -> None:
    """training.log_with names a tracker whose package is installed (accelerate would drop it silently)."""
    if name in (None, "none", "all"):
        return
    from accelerate import tracking

    known = {str(kind) for kind in tracking.LoggerType}  # not custom trackers registered with accelerate
    if name in known and name not in {str(kind) for kind in tracking.get_available_trackers()}:
        raise UserError(f"training.log_with: tracker '{name}' is not installed here: pip install "
                        f"{TRACKER_PACKAGES.get(name, name)}, or set training.log_with: none")


# ----------------------------------------------------------------------------- backbone and method
def check_model(recipe, backbone: str) -> None:
    """Apply the method to a weightless skeleton of the backbone: unknown target modules and a
    max_length past the positions fail here, the same way they would at the first step."""
    import torch
    from transformers import AutoConfig

    from . import tasks
    from .model import apply_method, auto_class, check_max_length, enable_gradient_checkpointing

    kind = tasks.of_recipe(recipe).model_kind

    try:
        config = AutoConfig.from_pretrained(backbone, num_labels=4)
    except (OSError, ValueError) as e:
        raise UserError(f"backbone.name: cannot load the configuration of '{recipe.backbone.name}': {_first(e)}") from None
    try:
        with torch.device("meta"):
            model = auto_class(kind).from_config(config)
    except (ValueError, KeyError) as e:
        what = "causal language" if kind == "causal" else "token-classification"
        raise UserError(f"backbone.name: '{recipe.backbone.name}' has no {what} model (task {recipe.task.type} needs "
                        f"one): {_first(e)}") from None
    from . import methods

    if recipe.training.gradient_checkpointing and methods.get(recipe.method.name).saves == "head":
        raise UserError(f"training.gradient_checkpointing: method '{recipe.method.name}' trains nothing inside the "
                        "backbone, so checkpointing would only add a backward pass through it; set it to false")
    if recipe.training.gradient_checkpointing:  # the backbone supports it and the method trains with it
        enable_gradient_checkpointing(model)

    if methods.get(recipe.method.name).saves == "adapter":
        try:
            model = apply_method(model, recipe.method.name, recipe.method.options, total_steps=1000, kind=kind)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - a method that cannot build on the meta device is checked at train time
            logging.getLogger("peft_tags.preflight").debug("skeleton check skipped: %s", e)
            return
    check_max_length(model, recipe.backbone.max_length)


def steps_per_epoch(recipe, n_train: int, processes: int) -> int:
    """Optimizer steps of one epoch: batches of the training set shared by the processes, per accumulation."""
    t = recipe.training
    return math.ceil(math.ceil(math.ceil(n_train / t.batch_size) / processes) / t.grad_accum)


def check_steps(recipe, n_train: int) -> None:
    """A method that needs a number of optimizer steps (AdaLoRA's budget schedule) checks the run's, from the data."""
    from . import methods

    check = methods.get(recipe.method.name).check_steps
    if check is not None:
        processes = int(os.environ.get("WORLD_SIZE", "1") or 1)
        check(recipe.method.options, steps_per_epoch(recipe, n_train, processes) * recipe.training.epochs)


def _first(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# ----------------------------------------------------------------------------- data
def load_data(recipe) -> dict:
    """Every split of the recipe, read and checked (logging of the reads is held back)."""
    from . import tasks
    from .data.splits import read_splits

    d = recipe.data
    data_log = logging.getLogger("peft_tags.data")
    before = data_log.level
    data_log.setLevel(logging.WARNING)
    try:
        data = read_splits(d)
    finally:
        data_log.setLevel(before)
    train = data["train"]
    if not any(getattr(e, "spans", None) or getattr(e, "tags", None) for e in train):
        raise UserError(f"data.train: '{d.train}' holds no {tasks.get(recipe.task.type).unit} "
                        f"in any of its {len(train)} examples; there is nothing to learn")
    return data


# ----------------------------------------------------------------------------- fingerprint
def fingerprint(recipe) -> dict:
    """What a checkpoint must agree with to be resumed: recipe (less resume/overwrite), the data
    files' contents and the code."""
    from .version import __version__
    from .backbones import file_hash
    from .data import resolve_data_path
    from .config import recipe_to_dict

    d = recipe_to_dict(recipe)
    d["training"] = {k: v for k, v in d["training"].items() if k != "resume"}
    d["output"] = {k: v for k, v in d["output"].items() if k not in ("overwrite", "push_to_hub", "hub_private")}
    hashes = {}
    for split in ("train", "dev", "test"):
        rel = getattr(recipe.data, split)
        if rel is not None and getattr(recipe.data, "hub", None):  # a hub split: named, its revision pinned or not
            hashes[split] = f"hub:{recipe.data.hub}@{recipe.data.hub_revision or 'main'}:{recipe.data.hub_config}/{rel}"
        elif rel is not None:
            hashes[split] = file_hash(resolve_data_path(rel, recipe.data.root, key=f"data.{split}"))
    return json.loads(json.dumps({"recipe": d, "data_hash": hashes,
                                  "code": {"version": __version__, "source": source_hash()}}))


def fingerprint_hash(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


_SOURCE_HASH: list[str] = []


def source_hash() -> str:
    """Hash of the peft_tags package's Python sources (the code a checkpoint was made by)."""
    if not _SOURCE_HASH:
        root = Path(__file__).resolve().parent
        h = hashlib.sha256()
        for p in sorted(root.rglob("*.py")):
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
        _SOURCE_HASH.append(h.hexdigest()[:16])
    return _SOURCE_HASH[0]


def first_difference(a, b, prefix: str = "") -> str | None:
    """Dotted key of the first difference between two nested dicts, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            found = first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
            if found:
                return found
        return None
    return prefix.rstrip(".") if a != b else None
