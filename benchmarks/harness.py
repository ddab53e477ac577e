"""Run the benchmark grid: every method of every task at a few learning rates, side by side.

    python -m benchmarks.harness --budget cpu                   # whole grid (about two hours here)
    python -m benchmarks.harness --budget smoke                 # minutes: does every cell run?
    python -m benchmarks.harness --budget cpu --dry-run         # the cells and their commands
    python -m benchmarks.harness --budget cpu --method lora,full   # some methods only
    python -m benchmarks.harness --budget cpu --report-only     # rebuild the reports from the results
    python -m benchmarks.harness --budget full --cell full@lr=3e-4 --seeds 42,43   # one cell, two seeds
    python -m benchmarks.harness --budget long --method bottleneck-houlsby,adalora,full   # 12 epochs

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
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from peft_tags.preflight import latest_checkpoint

from .cells import cell_command, collect, fingerprint, shown_command, write_json
from .grid import REPO, Cell, GridError, budget_settings, load_grid
from .provenance import code_fingerprint, committed_unchanged, provenance, tree_state
from .report import write_reports

SEED_FILE = re.compile(r",seed=(\d+)\.json$")


def parse_seeds(text: str | None) -> list[int] | None:
    """The seeds of ``--seeds`` (comma-separated whole numbers), or None."""
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


def current_cells(grid_cells: list[Cell], results: Path) -> dict[str, dict[str, str]]:
    """What the reports may use, per task: every cell of the grid (within --task/--method), with
    each seed it was trained with, by name -> recipe fingerprint; a cell file of another recipe or
    of a cell no longer swept is left out by :func:`benchmarks.report.read_cells`."""
    current: dict[str, dict[str, str]] = {}
    for c in grid_cells:
        current.setdefault(c.task, {})[c.name] = fingerprint(c)
        for f in (results / c.task / "cells").glob(f"{glob.escape(c.base_name)},seed=*.json"):
            m = SEED_FILE.search(f.name)
            if m and f.name == f"{c.base_name},seed={m.group(1)}.json":
                other = c.with_seed(int(m.group(1)))
                current[c.task][f.name[:-5]] = fingerprint(other) if other is not c else ""
    return current


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
    command = " ".join(["python -m benchmarks.harness", f"--budget {args.budget}"]
                       + ([f"--grid {args.grid}"] if args.grid != REPO / "benchmarks" / "grid.yaml" else [])
                       + ([f"--task {args.task}"] if args.task else []) + ([f"--method {args.method}"] if args.method else [])
                       + ([f"--cell {args.cell}"] if args.cell else []) + ([f"--seeds {args.seeds}"] if args.seeds else []))
    if dirty and not args.dry_run and not args.report_only:
        print(f"note: uncommitted changes (or a grid file outside the commit); results go to {root}, not the official ones",
              flush=True)

    def cell_json(c: Cell) -> Path:
        return results / c.task / "cells" / f"{c.name}.json"

    code = code_fingerprint()
    current = current_cells(grid_cells, results)
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
    for task in sorted(current):
        settings = budget_settings(args.grid, args.budget, task)
        for p in write_reports(results / task, task=task, budget=args.budget, command=command, grid=settings,
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
