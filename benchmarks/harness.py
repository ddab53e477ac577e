"""Run the benchmark grid: every method of every task at a few learning rates, side by side.

    python benchmarks/harness.py --budget cpu                   # whole grid (about two hours here)
    python benchmarks/harness.py --budget smoke                 # minutes: does every cell run?
    python benchmarks/harness.py --budget cpu --dry-run         # the cells and their commands
    python benchmarks/harness.py --budget cpu --method lora,full   # some methods only
    python benchmarks/harness.py --budget cpu --report-only     # rebuild the reports from the results
    python benchmarks/harness.py --budget full --cell full@lr=3e-4 --seeds 42,43   # one cell, two seeds
    python benchmarks/harness.py --budget long --method bottleneck-houlsby,adalora,full   # 12 epochs

Each cell trains ``run_recipe.py RECIPE <budget overrides> <sweep value>`` in a fresh process
and leaves one JSON under ``benchmarks/results/grid/<budget>/<task>/cells/`` (scores, parameters,
speed, memory, adapter size, provenance). A finished cell is not run again unless its resolved
recipe or the peft-tags code it ran (by content) changed; an interrupted cell resumes from its
last checkpoint. ``--seeds`` trains cells again with other seeds (``training.seed``); a
value trained with several seeds is judged on its seed means in the report. A tree with
uncommitted changes, or a grid file outside the commit, writes under
``benchmarks/results/grid-dirty/`` instead, apart from the official results. At the end, each
task gets ``<task>.md``, ``<task>.json`` and ``<task>.png`` (see benchmarks/report.py).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from provenance import code_fingerprint, committed_unchanged, provenance, tree_state  # noqa: E402
from report import short_float, write_reports  # noqa: E402

from peft_tags.preflight import latest_checkpoint  # noqa: E402
from peft_tags.recipe import yaml_load  # noqa: E402  (recipes: the loader with the alias-bomb caps)

STOCK_ARGS = {"data.max_train_examples": "--max-train", "data.max_dev_examples": "--max-dev",
              "data.max_test_examples": "--max-test", "training.epochs": "--epochs"}


class GridError(Exception):
    """A mistake in the grid file or the command line: one line, exit 2."""


# ---------------------------------------------------------------------------------------------
# the grid


@dataclass
class Cell:
    task: str
    method: str
    kind: str                  # "recipe" or "stock"
    recipe: str | None         # repo-relative recipe path (kind == "recipe")
    overrides: list[str]       # budget overrides, then the sweep value
    sweep_key: str
    sweep_value: float
    stock: dict = field(default_factory=dict)
    seed: int | None = None    # None: the recipe's own seed (the stock recipe's: 42)

    @property
    def base_name(self) -> str:
        return f"{self.method}@{self.sweep_key.rsplit('.', 1)[-1]}={short_float(self.sweep_value)}"

    @property
    def name(self) -> str:
        return self.base_name + ("" if self.seed is None else f",seed={self.seed}")

    def with_seed(self, seed: int) -> "Cell":
        """This cell trained with ``seed``; the cell itself where that is its own seed already."""
        if seed == own_seed(self):
            return self
        if self.kind == "stock":
            return replace(self, stock={**self.stock, "seed": seed}, seed=seed)
        return replace(self, overrides=[*self.overrides, f"training.seed={seed}"], seed=seed)


STOCK_SEED = 42  # benchmarks/stock_recipe.py --seed default


def own_seed(cell: Cell) -> int:
    """The seed a cell trains with when none is asked for: its resolved recipe's."""
    if cell.kind == "stock":
        return STOCK_SEED
    from peft_tags.errors import UserError
    from peft_tags.recipe import load_recipe, recipe_to_dict
    try:
        return int(recipe_to_dict(load_recipe(REPO / cell.recipe, cell.overrides))["training"]["seed"])
    except UserError as e:
        raise GridError(f"{cell.task}/{cell.name}: {str(e).splitlines()[0]}") from None


SEED_FILE = re.compile(r",seed=(\d+)\.json$")


def parse_seeds(text: str | None) -> list[int] | None:
    if not text:
        return None
    seeds = []
    for part in (x.strip() for x in text.split(",") if x.strip()):
        if not re.fullmatch(r"[0-9]+", part) or int(part) >= 2**32:
            raise GridError(f"--seeds: '{part}' is not a whole number from 0 to 2**32-1")
        if int(part) in seeds:
            raise GridError(f"--seeds: {part} is listed twice")
        seeds.append(int(part))
    return seeds or None


def _number(value, where: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise GridError(f"{where}: '{value}' is not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise GridError(f"{where}: {value} must be a positive number")
    return v


def load_grid(path: Path, budget: str, tasks: list[str] | None = None, methods: list[str] | None = None) -> list[Cell]:
    """The cells of ``path`` for ``budget``: ordered so that every method's first sweep value runs
    before any second one (a grid cut short still has a row per method)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise GridError(f"{path}: cannot read the grid file ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise GridError(f"{path}{f':{mark.line + 1}' if mark else ''}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict) or set(raw) - {"budgets", "tasks"} or "tasks" not in raw or "budgets" not in raw:
        raise GridError(f"{path}: the grid needs exactly the keys 'budgets' and 'tasks'")
    budgets = raw["budgets"] or {}
    if not isinstance(budgets, dict):
        raise GridError(f"{path}: 'budgets' must map budget names (smoke, cpu, full) to their settings")
    bad = next((b for b in budgets if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", str(b))), None)
    if bad is not None:
        raise GridError(f"{path}: budgets.{bad}: a budget name is letters, digits, '.', '_' and '-' (it names folders)")
    if budget not in budgets:
        raise GridError(f"{path}: budgets.{budget} is not defined (defined: {', '.join(budgets) or 'none'})")
    b = budgets[budget] or {}
    if not isinstance(b, dict) or set(b) - {"overrides", "sweep"}:
        raise GridError(f"{path}: budgets.{budget} takes 'overrides' (a list of key=value) and 'sweep' (true/false)")
    budget_overrides = [str(o) for o in (b.get("overrides") or [])]
    for o in budget_overrides:
        if "=" not in o:
            raise GridError(f"{path}: budgets.{budget}.overrides: '{o}' is not key=value")
    sweep_all = b.get("sweep", True)
    if not isinstance(sweep_all, bool):
        raise GridError(f"{path}: budgets.{budget}.sweep must be true or false")
    all_tasks = raw["tasks"] or {}
    if not isinstance(all_tasks, dict) or not all_tasks:
        raise GridError(f"{path}: 'tasks' must map task names to their methods")
    for t in tasks or []:
        if t not in all_tasks:
            raise GridError(f"--task: no task '{t}' in {path} (tasks: {', '.join(all_tasks)})")
    rounds: list[list[Cell]] = []
    seen_methods = set()
    safe = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    for task, spec in all_tasks.items():
        if tasks and task not in tasks:
            continue
        where = f"{path}: tasks.{task}"
        if not safe.match(str(task)):
            raise GridError(f"{where}: a task name is letters, digits, '.', '_' and '-' (it names files)")
        if not isinstance(spec, dict) or set(spec) - {"methods", "reference"} or not isinstance(spec.get("methods"), dict):
            raise GridError(f"{where}: needs 'methods' (name -> recipe and sweep) and may have 'reference'")
        entries = []
        reference = spec.get("reference") or {}
        if not isinstance(reference, dict):
            raise GridError(f"{where}.reference: expected {{stock: {{...}}}}")
        for name, ref in reference.items():
            if name != "stock" or not isinstance(ref, dict):
                raise GridError(f"{where}.reference: only 'stock' (the stock Hugging Face recipe) is known, got '{name}'")
            unknown = set(ref) - {"train", "dev", "test", "backbone", "epochs", "lr"}
            if unknown:
                raise GridError(f"{where}.reference.stock: unknown key '{sorted(unknown)[0]}'")
            entries.append(("stock-hf", None, "stock.lr", [_number(ref.get("lr", 1e-3), f"{where}.reference.stock.lr")], ref))
        for name, m in spec["methods"].items():
            w = f"{where}.methods.{name}"
            if not safe.match(str(name)) or name == "stock-hf":
                raise GridError(f"{w}: a method name is letters, digits, '.', '_' and '-' (it names files), "
                                f"and not 'stock-hf' (the reference row)")
            if not isinstance(m, dict) or set(m) - {"recipe", "sweep", "overrides"} or not isinstance(m.get("recipe"), str):
                raise GridError(f"{w}: needs 'recipe' (a path) and may have 'sweep' ({{key: [values]}}) and 'overrides'")
            recipe = REPO / m["recipe"]
            if not recipe.is_file():
                raise GridError(f"{w}.recipe: no such file: {m['recipe']}")
            sweep = m.get("sweep") or {"training.lr": [None]}
            if not isinstance(sweep, dict) or len(sweep) != 1:
                raise GridError(f"{w}.sweep: one key with a list of positive numbers, e.g. {{training.lr: [1.0e-3, 3.0e-3]}}")
            (key, values), = sweep.items()
            if not isinstance(values, list) or not values:
                raise GridError(f"{w}.sweep.{key}: a non-empty list of values")
            if values == [None]:
                from peft_tags.errors import UserError
                from peft_tags.recipe import load_recipe, recipe_to_dict
                try:
                    values = [recipe_to_dict(load_recipe(recipe))["training"]["lr"]]
                except UserError as e:
                    raise GridError(f"{w}.recipe: {str(e).splitlines()[0]}") from None
            values = [_number(v, f"{w}.sweep.{key}") for v in values]
            if len(set(values)) != len(values):
                raise GridError(f"{w}.sweep.{key}: a value is listed twice")
            extra = [str(o) for o in (m.get("overrides") or [])]
            entries.append((name, m["recipe"], key, values, extra))
        for method, recipe, key, values, extra in entries:
            if methods and method not in methods:
                continue
            seen_methods.add(method)
            for i, v in enumerate(values if sweep_all else values[:1]):
                while len(rounds) <= i:
                    rounds.append([])
                if recipe is None:
                    rounds[i].append(Cell(task, method, "stock", None, list(budget_overrides), key, v, stock=dict(extra)))
                else:
                    rounds[i].append(Cell(task, method, "recipe", recipe, [*budget_overrides, *extra, f"{key}={v!r}"], key, v))
    for m in methods or []:
        if m not in seen_methods:
            raise GridError(f"--method: no method '{m}' in the chosen tasks of {path}")
    return [c for r in rounds for c in r]


# ---------------------------------------------------------------------------------------------
# one cell


def cell_command(cell: Cell, out: Path) -> list[str]:
    if cell.kind == "stock":
        opts = {f"--{key}": str(cell.stock[key]) for key in ("train", "dev", "test", "backbone", "epochs", "seed")
                if key in cell.stock}
        for o in cell.overrides:  # the budget's sizes and epochs apply to the stock recipe too
            key, value = o.split("=", 1)
            if key in STOCK_ARGS:
                opts[STOCK_ARGS[key]] = value
        opts["--lr"] = repr(cell.sweep_value)
        return [sys.executable, "benchmarks/stock_recipe.py", "--out", str(out), *(x for kv in opts.items() for x in kv)]
    return [sys.executable, "run_recipe.py", cell.recipe, *cell.overrides, f"output.dir={out}", "output.overwrite=true",
            "training.log_with=none"]


def shown_command(cell: Cell, out: Path) -> str:
    """The command that re-runs a cell alone, from the repository root."""
    if out.is_absolute() and out.is_relative_to(REPO):
        out = out.relative_to(REPO)
    return " ".join(shlex.quote(a) for a in ["python", *cell_command(cell, out)[1:]])


def fingerprint(cell: Cell) -> str:
    """What a finished cell must still match to be reused: the resolved recipe (less where it is
    written), or the stock recipe's command line."""
    if cell.kind == "stock":
        what = cell_command(cell, Path("OUT"))[1:]
    else:
        from peft_tags.recipe import load_recipe, recipe_to_dict
        from peft_tags.errors import UserError
        try:
            d = recipe_to_dict(load_recipe(REPO / cell.recipe, cell.overrides))
        except UserError as e:
            raise GridError(f"{cell.task}/{cell.name}: {str(e).splitlines()[0]}") from None
        d.pop("output", None)
        d["training"].pop("resume", None)
        d["training"].pop("log_with", None)
        what = d
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def saved_file(run: Path) -> tuple[str, int]:
    for rel in ("adapter_model.safetensors", "model/model.safetensors", "head.safetensors"):
        if (run / rel).is_file():
            return rel, (run / rel).stat().st_size
    return "", 0


def collect(cell: Cell, run: Path, fp: str, wall: float, prov: dict) -> dict:
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
        **{k: m.get(k) for k in ("dev_micro_f1", "dev_macro_f1", "test_micro_f1", "test_macro_f1")},
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# progress


def fmt_s(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """Which cell runs, how far it is, and how long the rest will take: a remaining cell is
    estimated by the finished cells of the same method (any sweep value), else by the mean of
    all finished cells."""

    def __init__(self, total: int, stream=sys.stdout):
        self.total, self.stream, self.tty = total, stream, stream.isatty()
        self.seconds: dict[str, list[float]] = {}

    def learn(self, method: str, seconds: float) -> None:
        self.seconds.setdefault(method, []).append(seconds)

    def estimate(self, method: str) -> float | None:
        if self.seconds.get(method):
            return sum(self.seconds[method]) / len(self.seconds[method])
        every = [s for v in self.seconds.values() for s in v]
        return sum(every) / len(every) if every else None

    def eta(self, methods: list[str]) -> float | None:
        est = [self.estimate(m) for m in methods]
        return None if any(e is None for e in est) else sum(est)

    def say(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def status(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()


EPOCH = re.compile(r"epoch (\d+): dev micro-F1 ([0-9.]+)")


def _launch(cmd: list[str], log: Path, progress: Progress, est: float | None, t0: float) -> int:
    """Run one cell's command, its output to ``log``; report each epoch's dev score as it comes."""
    last_epoch = None
    with open(log, "a", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None:
                time.sleep(2)
                epochs = EPOCH.findall(log.read_text(encoding="utf-8", errors="replace")[-200_000:])
                if epochs and epochs[-1] != last_epoch:
                    last_epoch = epochs[-1]
                    progress.say(f"    epoch {last_epoch[0]}: dev micro-F1 {float(last_epoch[1]):.4f} ({fmt_s(time.time() - t0)})")
                progress.status(f"    running {fmt_s(time.time() - t0)} of ~{fmt_s(est)}")
        except KeyboardInterrupt:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    return proc.returncode


def run_cell(cell: Cell, out: Path, log: Path, progress: Progress, position: str, later: list[str]) -> tuple[int, float]:
    """Train one cell into ``out``. A checkpoint left by an interrupted run of the same cell is
    resumed; one that cannot be (another recipe, another process count) is dropped and the cell
    starts afresh."""
    cmd = cell_command(cell, out)
    work = out.with_name(out.name + ".work")
    resumed = cell.kind == "recipe" and latest_checkpoint(work) is not None
    est = progress.estimate(cell.method)
    rest = progress.eta(later)
    progress.say(f"{position} {cell.task} {cell.name}{' (resuming)' if resumed else ''} · estimated {fmt_s(est)}"
                 f" · then {len(later)} more cells, {fmt_s(rest)}"
                 + (f" (all done about {time.strftime('%H:%M', time.localtime(time.time() + (est or 0) + rest))})"
                    if rest is not None and est is not None else ""))
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("", encoding="utf-8")
    t0 = time.time()
    if resumed:  # an older finished run of the cell in ``out`` is replaced when the resumed one ends
        rc = _launch(cmd + ["training.resume=true"], log, progress, est, t0)
        if rc != 2:  # 2: the checkpoint was refused (one line in the log says why)
            return rc, time.time() - t0
        progress.say(f"    cannot resume ({last_error(log)}); starting afresh")  # a fresh run clears the work folder
    return _launch(cmd, log, progress, est, t0), time.time() - t0


def last_error(log: Path) -> str:
    lines = [l.strip() for l in log.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or "Error" in line:
            return line[:500]
    return lines[-1][:500] if lines else "no output"


# ---------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--budget", required=True, help="a budget of the grid file (the shipped grid: smoke, cpu, full, long)")
    ap.add_argument("--grid", type=Path, default=REPO / "benchmarks" / "grid.yaml")
    ap.add_argument("--task", default=None, help="comma-separated task names (default: all)")
    ap.add_argument("--method", default=None, help="comma-separated method names (default: all)")
    ap.add_argument("--cell", default=None,
                    help="comma-separated cell names, e.g. full@lr=3e-4,lora@lr=2e-3 (default: every cell of the sweeps)")
    ap.add_argument("--seeds", default=None,
                    help="comma-separated seeds to train each chosen cell with (default: the recipe's own seed); "
                         "the report averages whatever seeds a cell has")
    ap.add_argument("--results", type=Path, default=None,
                    help="results root (default benchmarks/results/grid, or grid-dirty for a tree with changes)")
    ap.add_argument("--runs", type=Path, default=REPO / "benchmarks" / "runs", help="where the cells' output directories go")
    ap.add_argument("--dry-run", action="store_true", help="list the cells, their state and commands; run nothing")
    ap.add_argument("--report-only", action="store_true", help="rebuild the reports from the finished cells")
    ap.add_argument("--rerun", action="store_true", help="run finished cells again")
    args = ap.parse_args(argv)
    try:
        return _main(args)
    except GridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing or half-written: the cell runs again


def _main(args) -> int:
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    grid_cells = load_grid(args.grid, args.budget, split(args.task), split(args.method))
    cells = grid_cells
    if args.cell:
        names = {c.base_name for c in grid_cells}
        for n in split(args.cell):
            if n not in names:
                raise GridError(f"--cell: no cell '{n}' in the chosen tasks and methods of {args.grid} "
                                f"(e.g. {', '.join(sorted(names)[:3])})")
        cells = [c for c in grid_cells if c.base_name in split(args.cell)]
    seeds = parse_seeds(args.seeds)
    if seeds:
        cells = [c.with_seed(s) for s in seeds for c in cells]  # every cell's first seed before any second one
    commit, dirty = tree_state()
    dirty = dirty or not committed_unchanged(args.grid)  # a grid file outside the commit cannot be reproduced from it
    root = args.results or (REPO / "benchmarks" / "results" / ("grid-dirty" if dirty else "grid"))
    results = root / args.budget
    command = " ".join(["python benchmarks/harness.py", f"--budget {args.budget}"]
                       + ([f"--grid {args.grid}"] if args.grid != REPO / "benchmarks" / "grid.yaml" else [])
                       + ([f"--task {args.task}"] if args.task else []) + ([f"--method {args.method}"] if args.method else [])
                       + ([f"--cell {args.cell}"] if args.cell else []) + ([f"--seeds {args.seeds}"] if args.seeds else []))
    if dirty and not args.dry_run and not args.report_only:
        print(f"note: uncommitted changes (or a grid file outside the commit); results go to {root}, not the official ones",
              flush=True)

    def cell_json(c: Cell) -> Path:
        return results / c.task / "cells" / f"{c.name}.json"

    code = code_fingerprint()
    # what the reports may use: every cell of the grid (within --task/--method), with each seed it
    # was trained with; a cell file of another recipe or of a cell no longer swept is left out
    current: dict[str, dict[str, str]] = {}
    for c in grid_cells:
        current.setdefault(c.task, {})[c.name] = fingerprint(c)
        for f in (results / c.task / "cells").glob(f"{glob.escape(c.base_name)},seed=*.json"):
            m = SEED_FILE.search(f.name)
            if m and f.name == f"{c.base_name},seed={m.group(1)}.json":
                other = c.with_seed(int(m.group(1)))
                current[c.task][f.name[:-5]] = fingerprint(other) if other is not c else ""
    todo, progress = [], Progress(len(cells))
    running = {c.name for c in cells}
    for c in grid_cells:  # cells not chosen this time still inform the estimates
        done = _read_json(cell_json(c)) if c.name not in running and cell_json(c).is_file() else None
        if done and done.get("status") == "ok" and done.get("wall_seconds"):
            progress.learn(c.method, done["wall_seconds"])
    for c in cells:
        fp = current.setdefault(c.task, {}).get(c.name) or fingerprint(c)  # resolved above for the grid's cells
        current[c.task][c.name] = fp
        done = _read_json(cell_json(c)) if cell_json(c).is_file() else None
        ok = bool(done) and done.get("status") == "ok"
        state = ("todo" if not done else "failed" if not ok else "stale" if done.get("fingerprint") != fp else
                 "code" if done.get("code") != code else "done")
        if state == "done" and not args.rerun:
            progress.learn(c.method, done["wall_seconds"])
        else:
            todo.append((c, fp, state))
        if args.dry_run:
            out = args.runs / args.budget / c.task / c.name
            print(f"{state:6} {c.task} {c.name}\n       {shown_command(c, out)}")
    if args.dry_run:
        print(f"{len(cells)} cells, {len(todo)} to run (stale: the recipe changed; code: peft-tags changed); "
              f"results in {results}")
        return 0

    failed = []
    if not args.report_only:
        prov = {**provenance(), "git_dirty": dirty}
        for i, (c, fp, state) in enumerate(todo):
            out = args.runs / args.budget / c.task / c.name
            later = [t[0].method for t in todo[i + 1:]]
            try:
                rc, wall = run_cell(c, out, out.with_name(out.name + ".log"), progress, f"[{i + 1}/{len(todo)}]", later)
            except KeyboardInterrupt:
                print(f"\ninterrupted; the same command continues where this stopped ({c.name} resumes from its "
                      f"last checkpoint)", file=sys.stderr)
                return 130
            if rc == 0 and (out / "metrics.json").is_file():
                write_json(cell_json(c), {**collect(c, out, fp, wall, prov), "code": code})
                progress.learn(c.method, wall)
                r = _read_json(cell_json(c))
                progress.say(f"    done in {fmt_s(wall)}: dev micro-F1 {_f4(r['dev_micro_f1'])}, test {_f4(r['test_micro_f1'])}")
            else:
                err = last_error(out.with_name(out.name + ".log"))
                write_json(cell_json(c), {"status": "failed", "task": c.task, "method": c.method, "cell": c.name,
                                          "fingerprint": fp, "code": code, "error": err, "exit_code": rc, "provenance": prov})
                failed.append(c)
                progress.say(f"    FAILED (exit {rc}): {err}  [log: {out.with_name(out.name + '.log')}]")
    budget_settings = yaml.safe_load(args.grid.read_text(encoding="utf-8"))["budgets"][args.budget] or {}
    for task in sorted(current):
        for p in write_reports(results / task, task=task, budget=args.budget, command=command, grid=budget_settings,
                               current=current[task]):
            print(f"wrote {p}")
    if failed:
        print(f"error: {len(failed)} cell(s) failed: {', '.join(c.task + '/' + c.name for c in failed)}; "
              f"run the same command again to retry them", file=sys.stderr)
        return 1
    return 0


def _f4(x) -> str:
    return "-" if x is None else f"{x:.4f}"


if __name__ == "__main__":
    sys.exit(main())
