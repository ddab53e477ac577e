"""The report of one task of the benchmark grid: a Markdown table, a JSON summary and a plot of
test F1 against trainable parameters with the Pareto front.

Per method, the sweep value with the best dev micro-F1 is chosen and only its test scores are
reported; every dev score stays in the table and in the JSON. A value trained with several seeds
is judged and reported by its seed means, with the range of its test scores beside them. Called
by benchmarks/harness.py; alone: ``python -m benchmarks.report benchmarks/results/grid/cpu/jd-ner``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_cells(task_dir: Path, current: dict[str, str] | None = None) -> tuple[list[dict], list[dict], list[str]]:
    """(finished cells, failed cells, excluded cell names). With ``current`` (cell name ->
    recipe fingerprint of the grid as it is now), cells no longer in the grid or made with
    another recipe are excluded; unreadable files are excluded too."""
    ok, failed, excluded = [], [], []
    for p in sorted((task_dir / "cells").glob("*.json")):
        try:
            c = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            excluded.append(p.stem)
            continue
        if current is not None and current.get(c.get("cell")) != c.get("fingerprint"):
            excluded.append(p.stem)
        elif c.get("status") == "ok" and c.get("dev_micro_f1") is not None and c.get("test_micro_f1") is not None:
            ok.append(c)
        else:
            failed.append(c)
    return ok, failed, excluded


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def merge_seeds(group: list[dict]) -> dict:
    """One sweep value's cells (one per seed) as one: scores and speeds are the seed means, peak
    memory the largest; the cell trained with the recipe's own seed stands for the rest (command,
    parameters, provenance). A single cell is returned as it is, with its seed listed."""
    group = sorted(group, key=lambda c: ("," in c["cell"], c.get("seed") if isinstance(c.get("seed"), int) else 0))
    first = group[0]
    merged = {**first, "seeds": [c.get("seed") for c in group], "seed_cells": [c["cell"] for c in group]}
    if len(group) == 1:
        return merged
    for key in ("dev_micro_f1", "dev_macro_f1", "test_micro_f1", "test_macro_f1"):
        merged[key] = _mean([c[key] for c in group]) if all(c.get(key) is not None for c in group) else None
    merged["test_by_seed"] = [[c.get("seed"), c["test_micro_f1"]] for c in group]
    merged["dev_by_seed"] = [[c.get("seed"), c["dev_micro_f1"]] for c in group]
    for key, digits in (("train_titles_per_s", 1), ("eval_titles_per_s", 1), ("train_seconds", 1)):
        merged[key] = round(_mean([c[key] for c in group]), digits)
    merged["peak_memory_mb"] = max(c["peak_memory_mb"] for c in group)
    return merged


def choose(cells: list[dict]) -> list[dict]:
    """One row per method: the sweep value with the best dev micro-F1, over its seeds' mean where
    it has several (ties: the smaller value), with every value's dev score and seed count attached."""
    by_method: dict[str, dict[float, list[dict]]] = {}
    for c in cells:
        by_method.setdefault(c["method"], {}).setdefault(next(iter(c["sweep"].values())), []).append(c)
    rows = []
    for method, by_value in by_method.items():
        group = [merge_seeds(by_value[v]) for v in sorted(by_value)]
        best = max(group, key=lambda c: (c["dev_micro_f1"] if c["dev_micro_f1"] is not None else -1.0,
                                         -next(iter(c["sweep"].values()))))
        key = next(iter(best["sweep"]))
        rows.append({**best, "sweep_key": key, "chosen": best["sweep"][key],
                     "dev_by_value": [[next(iter(c["sweep"].values())), c["dev_micro_f1"], len(c["seeds"])] for c in group]})
    rows.sort(key=lambda r: (r["parameters"]["trainable"], r["method"]))
    return rows


def pareto(rows: list[dict]) -> list[dict]:
    """The rows that score higher than every row with fewer or as many trainable parameters
    (of rows tied on both, the first)."""
    front, best = [], -1.0
    for r in sorted(rows, key=lambda r: (r["parameters"]["trainable"], -r["test_micro_f1"])):
        if r["test_micro_f1"] > best:
            front.append(r)
            best = r["test_micro_f1"]
    return front


def short_float(v: float) -> str:
    """1e-3, 2.5e-4, 0.1 -> 1e-1: learning rates as people write them."""
    mantissa, exponent = f"{v:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _size(b: int) -> str:
    return f"{b / 2**20:.2f} MB" if b >= 2**20 else f"{b / 2**10:.0f} kB"


def _when(cells: list[dict]) -> str:
    """When the cells ran: from the first start to the last finish where cells record it."""
    started = min(c["provenance"]["date"] for c in cells)
    if all(c.get("finished") for c in cells):
        return f"cells ran from {started} to {max(c['finished'] for c in cells)}"
    return f"the run started {started}"


def _commits(cells: list[dict]) -> str:
    seen: dict[str, int] = {}
    for c in cells:
        p = c["provenance"]
        key = p["git_commit"][:10] + (" (dirty)" if p["git_dirty"] else "")
        seen[key] = seen.get(key, 0) + 1
    return ", ".join(f"{k} ({n} cells)" for k, n in seen.items())


def markdown(task: str, budget: str, command: str, grid: dict, rows: list[dict], cells: list[dict], failed: list[dict],
             excluded: list[str]) -> str:
    stock = next((r for r in rows if r["kind"] == "stock"), None)
    front = {r["method"] for r in pareto(rows)}
    p0 = cells[0]["provenance"]
    lines = [f"# {task}: F1 against trainable parameters (budget `{budget}`)", "",
             f"Made by `{command}`.", "",
             f"- Budget overrides on every recipe: {', '.join(f'`{o}`' for o in grid.get('overrides') or []) or 'none'}"
             f"{'; sweep: first value only' if grid.get('sweep') is False else ''}.",
             "- Per method, the learning rate (head-only: the head's) with the best dev micro-F1 is chosen; only its test "
             "scores are reported. Every dev score is listed; the chosen one is in bold."
             + (" A rate trained with several seeds (×n) is judged and reported by its seed means; its test scores' "
                "range follows the mean." if any(n > 1 for r in rows for _, _, n in r["dev_by_value"]) else ""),
             f"- Code: {_commits(cells)}. {p0['cpu']}, {p0['cores']} cores, {p0['threads']} threads"
             f"{', GPU ' + p0['gpu'] if p0.get('gpu') else ''}; torch {p0['torch']}, transformers {p0['transformers']}, "
             f"peft {p0['peft']}; {_when(cells)}, one cell at a time.",
             *(["- F1 is (type, value) pair F1 (values normalised: NFKC, case folded, white space collapsed), on "
                "which span taggers and generating models compare; a span tagger's exact-span F1 is in each cell's "
                "JSON (`test_own_micro_f1`)."] if any(c.get("score") == "pair" for c in cells) else []),
             "- Trainable = adapter (full fine-tuning: backbone) + head parameters while training; % of all parameters of the model. "
             "Speed ratios are against the stock row of the same run.", "",
             "| method | swept value: dev micro-F1 | trainable (adapter + head) | % | test micro-F1 | test macro-F1 "
             "| dev micro-F1 | train titles/s (× stock) | inference titles/s | train time | peak memory | saved file |",
             "|" + "---|" * 12]
    for r in rows:
        p = r["parameters"]
        tried = ", ".join((f"**{short_float(v)}: {f:.3f}**" if v == r["chosen"] else f"{short_float(v)}: {f:.3f}")
                          + (f" (×{n})" if n > 1 else "") for v, f, n in r["dev_by_value"])
        spread = ""
        if len(r["seeds"]) > 1:
            tests = [t for _, t in r["test_by_seed"]]
            spread = f" ({min(tests):.4f}–{max(tests):.4f}, {len(tests)} seeds)"
        ratio = f" ({r['train_titles_per_s'] / stock['train_titles_per_s']:.2f}×)" if stock else ""
        name = f"{r['method']}{' †' if r['method'] in front else ''}"
        lines.append(f"| {name} | {r['sweep_key'].rsplit('.', 1)[-1]} {tried} | {p['trainable']:,} ({p['adapter'] or p.get('backbone', 0):,} + {p['head']:,}) "
                     f"| {p['trainable_pct']:.2f}% | **{r['test_micro_f1']:.4f}**{spread} | {'-' if r['test_macro_f1'] is None else format(r['test_macro_f1'], '.4f')} | {r['dev_micro_f1']:.4f} "
                     f"| {r['train_titles_per_s']}{ratio} | {r['eval_titles_per_s']} | {r['train_seconds'] / 60:.1f} min "
                     f"| {r['peak_memory_mb'] / 1024:.2f} GB | {_size(r['saved_file_bytes'])} |")
    lines += ["", "† on the Pareto front: it scores a higher test micro-F1 than every row with fewer or as many trainable "
              "parameters.",
              f"Memory is the {rows[0]['memory_kind']} of the cell's process. The saved file is the adapter in peft format "
              "with the head (full fine-tuning: the whole model).", ""]
    if stock:
        lines += ["The stock row is `benchmarks/stock_recipe.py`: Trainer + peft LoRA r=8 on query/value, characters as "
                  "words, the first sub-token labelled, dynamic padding, Trainer's own schedule (linear decay, no "
                  "warmup). It differs from our rows on purpose, as a user's first attempt would: one learning rate (no "
                  "sweep), the last epoch's model (no selection on dev), and in the `full` budget its own 3 epochs.", ""]
    lines += [f"![test micro-F1 against trainable parameters]({task}.png)", "",
              "Each cell re-runs alone with its command (in the JSON beside this file), e.g.:", "",
              f"    {max(rows, key=lambda r: (r['kind'] == 'recipe', r['test_micro_f1']))['command']}", ""]
    if failed:
        lines += ["Failed or unscored cells (not in the table): "
                  + "; ".join(f"{c.get('cell')}: {c.get('error', 'no dev or test score')}" for c in failed), ""]
    if excluded:
        lines += ["Cells left out (no longer in the grid, made with another recipe, or unreadable): "
                  + ", ".join(excluded), ""]
    return "\n".join(lines)


def label_offsets(rows: list[dict], height_pt: float = 300.0, near_decades: float = 0.3, line_pt: float = 10.0) -> list[int]:
    """Vertical label offsets (points) so that the labels of points close together are
    stacked instead of printed over each other. From the highest point down, a label sits
    just above its point unless it would come within a line of a label already placed
    nearby (within ``near_decades`` on the log parameter axis); then it moves down a line at
    a time. ``height_pt`` is about the axes' height, to turn F1 into points."""
    import math

    ys = [r["test_micro_f1"] for r in rows]
    per_f1 = height_pt / max(max(ys) - min(ys), 0.05) if rows else 0.0
    placed: list[tuple[float, float]] = []  # (log10 x, label y in points)
    offsets = {}
    for i in sorted(range(len(rows)), key=lambda i: -ys[i]):
        x = math.log10(max(rows[i]["parameters"]["trainable"], 1))
        dy = 4
        while any(abs(px - x) < near_decades and abs(py - (ys[i] * per_f1 + dy)) < line_pt for px, py in placed):
            dy -= line_pt
        offsets[i] = int(dy)
        placed.append((x, ys[i] * per_f1 + dy))
    return [offsets[i] for i in range(len(rows))]


def plot(rows: list[dict], path: Path, title: str, metric: str = "test micro-F1") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for r, dy in zip(rows, label_offsets(rows)):
        stock = r["kind"] == "stock"
        ax.scatter(r["parameters"]["trainable"], r["test_micro_f1"], marker="x" if stock else "o", s=40,
                   color="grey" if stock else "tab:blue", zorder=3)
        ax.annotate(r["method"] + (" (reference)" if stock else ""), (r["parameters"]["trainable"], r["test_micro_f1"]),
                    textcoords="offset points", xytext=(5, dy), fontsize=8)
    front = pareto(rows)
    xs = [r["parameters"]["trainable"] for r in front]
    ys = [r["test_micro_f1"] for r in front]
    ax.step(xs + [max(r["parameters"]["trainable"] for r in rows) * 1.5], ys + ys[-1:], where="post", color="tab:red",
            linewidth=1.2, label="Pareto front", zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (adapter + head, log scale)")
    ax.set_ylabel(f"{metric} (learning rate chosen on dev)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def write_reports(task_dir: Path, *, task: str, budget: str, command: str, grid: dict,
                  current: dict[str, str] | None = None) -> list[Path]:
    cells, failed, excluded = read_cells(task_dir, current)
    if not cells:
        return []
    rows = choose(cells)
    base = task_dir.parent / task
    summary = {"task": task, "budget": budget, "command": command, "budget_settings": grid,
               "pareto_front": [r["method"] for r in pareto(rows)],
               "rows": [{k: v for k, v in r.items() if k != "history"} for r in rows],
               "cells": [c["cell"] for c in cells], "failed": [c.get("cell") for c in failed], "excluded": excluded}
    outputs = [base.with_suffix(".json"), base.with_suffix(".md"), base.with_suffix(".png")]
    tmp = base.with_name(f".{task}.json.tmp")
    tmp.write_text(json.dumps(summary, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(outputs[0])
    tmp = base.with_name(f".{task}.md.tmp")
    tmp.write_text(markdown(task, budget, command, grid, rows, cells, failed, excluded), encoding="utf-8")
    tmp.replace(outputs[1])
    metric = "test pair F1" if any(c.get("score") == "pair" for c in cells) else "test micro-F1"
    plot(rows, outputs[2], f"{task}, budget {budget}: {metric} against trainable parameters", metric)
    return outputs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("task_dir", type=Path, help="results/<budget>/<task>, the folder that holds cells/")
    args = ap.parse_args()
    if not (args.task_dir / "cells").is_dir():
        print(f"error: {args.task_dir}: no cells/ folder (run python -m benchmarks.harness first)", file=sys.stderr)
        return 2
    summary = args.task_dir.parent / f"{args.task_dir.name}.json"
    old = json.loads(summary.read_text(encoding="utf-8")) if summary.is_file() else {}
    for p in write_reports(args.task_dir, task=args.task_dir.name, budget=args.task_dir.parent.name,
                           command=old.get("command", "python -m benchmarks.report " + str(args.task_dir)),
                           grid=old.get("budget_settings") or {}):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
