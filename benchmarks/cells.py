"""One cell of the grid: the command that trains it, what it must still match to be reused, and
the result file it leaves."""
from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

from peft_tags.config.yamlio import yaml_load  # the capped loader (recipes' alias-bomb caps)

from .grid import REPO, Cell, GridError

STOCK_SCRIPT = "benchmarks/stock_recipe.py"
STOCK_ARGS = {"data.max_train_examples": "--max-train", "data.max_dev_examples": "--max-dev",
              "data.max_test_examples": "--max-test", "training.epochs": "--epochs"}


def stock_args(cell: Cell, out: Path) -> list[str]:
    """The stock recipe's arguments for a cell (its settings, then the budget's sizes and epochs)."""
    opts = {f"--{key}": str(cell.stock[key]) for key in ("train", "dev", "test", "backbone", "epochs", "seed")
            if key in cell.stock}
    for o in cell.overrides:  # the budget's sizes and epochs apply to the stock recipe too
        key, value = o.split("=", 1)
        if key in STOCK_ARGS:
            opts[STOCK_ARGS[key]] = value
    opts["--lr"] = repr(cell.sweep_value)
    return ["--out", str(out), *(x for kv in opts.items() for x in kv)]


def cell_command(cell: Cell, out: Path) -> list[str]:
    """The command that trains ``cell`` into ``out``, run from the repository root."""
    if cell.kind == "stock":
        return [sys.executable, "-m", "benchmarks.stock_recipe", *stock_args(cell, out)]
    return [sys.executable, "run_recipe.py", cell.recipe, *cell.overrides, f"output.dir={out}", "output.overwrite=true",
            "training.log_with=none"]


def shown_command(cell: Cell, out: Path) -> str:
    """The command that re-runs a cell alone, from the repository root."""
    if out.is_absolute() and out.is_relative_to(REPO):
        out = out.relative_to(REPO)
    return " ".join(shlex.quote(a) for a in ["python", *cell_command(cell, out)[1:]])


#: keys of a resolved recipe that do not change what a cell trains
NOT_TRAINING = ("output.", "training.resume", "training.log_with")


def flat_recipe(recipe) -> dict:
    """Every key of a loaded recipe (dotted, ``method.options.r``) -> [value, default]; a key
    without a default has the default ``"<required>"``. Self-contained: it also runs, as source,
    against the code of older commits (:mod:`benchmarks.refingerprint`)."""
    import dataclasses
    import json

    out = {}

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            if f.name == "source" and not prefix:
                continue
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, prefix + f.name + ".")
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = "<required>"
            out[prefix + f.name] = json.loads(json.dumps([value, default], default=str))

    walk(recipe, "")
    return out


def recipe_fingerprint(recipe) -> str:
    """The keys of a resolved recipe that are not at their default (less where the run is
    written), hashed: a key added to the schema later, at its default, changes no fingerprint."""
    what = {k: v for k, (v, default) in flat_recipe(recipe).items()
            if v != default and not k.startswith(NOT_TRAINING)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(cell: Cell) -> str:
    """What a finished cell must still match to be reused: the resolved recipe's keys away from
    their defaults (less where it is written; :func:`recipe_fingerprint`), or the stock recipe's
    file and arguments (not how the script is started)."""
    if cell.kind == "stock":
        what = [STOCK_SCRIPT, *stock_args(cell, Path("OUT"))]
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]
    from peft_tags.config import load_recipe
    from peft_tags.errors import UserError
    try:
        return recipe_fingerprint(load_recipe(REPO / cell.recipe, cell.overrides))
    except UserError as e:
        raise GridError(f"{cell.task}/{cell.name}: {str(e).splitlines()[0]}") from None


def saved_file(run: Path) -> tuple[str, int]:
    """The file a run saved its weights in (adapter, whole model or head), and its size."""
    for rel in ("adapter_model.safetensors", "model/model.safetensors", "head.safetensors"):
        if (run / rel).is_file():
            return rel, (run / rel).stat().st_size
    return "", 0


def scores(m: dict, score: str) -> dict:
    """``dev_micro_f1`` ... ``test_macro_f1`` of a run's metrics.json: its own F1, or with ``score``
    pair its (type, value) pair F1 (``scores.<split>.pair_*``, which span and generation runs
    both report), the own F1 then kept as ``<split>_own_micro_f1``."""
    own = {k: m.get(k) for k in ("dev_micro_f1", "dev_macro_f1", "test_micro_f1", "test_macro_f1")}
    if score != "pair":
        return own
    out = {f"{k.split('_', 1)[0]}_own_{k.split('_', 1)[1]}": v for k, v in own.items()}
    for split in ("dev", "test"):
        s = (m.get("scores") or {}).get(split) or {}
        out.update({f"{split}_micro_f1": s.get("pair_micro_f1"), f"{split}_macro_f1": s.get("pair_macro_f1")})
    return out


def collect(cell: Cell, run: Path, fp: str, wall: float, prov: dict) -> dict:
    """The result file of a finished cell: its scores, parameters, speed, memory, saved file and provenance."""
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    seed = None
    if (run / "recipe.yaml").is_file():
        seed = (yaml_load((run / "recipe.yaml").read_text(encoding="utf-8")).get("training") or {}).get("seed")
    else:
        seed = (m.get("settings") or {}).get("seed")
    rel, size = saved_file(run)
    on_gpu = str(m.get("device", "cpu")).startswith("cuda")
    return {
        "status": "ok", "task": cell.task, "method": cell.method, "cell": cell.name, "kind": cell.kind,
        "recipe": cell.recipe or m.get("recipe"), "overrides": cell.overrides, "sweep": {cell.sweep_key: cell.sweep_value},
        "seed": seed, "fingerprint": fp,
        "command": shown_command(cell, run),
        **scores(m, cell.score), "score": cell.score,
        "best_epoch": (m.get("best") or {}).get("epoch"), "history": m.get("history"),
        "parameters": m["parameters"],
        "train_seconds": m["train_seconds"], "wall_seconds": round(wall, 1),
        "train_titles_per_s": m["train_titles_per_s"], "eval_titles_per_s": m["eval_titles_per_s"],
        "peak_memory_mb": m["peak_memory_mb"], "memory_kind": "cuda max allocated" if on_gpu else "process peak RSS",
        "saved_file": rel, "saved_file_bytes": size,
        "device": m.get("device"), "mixed_precision": m.get("mixed_precision"), "processes": m.get("processes"),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "provenance": {**prov, "threads": m.get("threads", prov["threads"])},
    }


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)

