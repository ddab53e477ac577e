"""The span head and the training regularisers on jd-ner: BIO against global pointer, with and
without FGM or R-Drop, for LoRA under 1% of the model and for full fine-tuning, on one budget
of the benchmark grid.

    python -m benchmarks.harness --budget cpu --task jd-ner --method lora-small,lora-small-gp,...
    python -m benchmarks.span_head --budget cpu

Reads the grid's cells (``benchmarks/results/grid/<budget>/jd-ner/cells``): per row the rate with
the best dev micro-F1 (seed means where a rate has several seeds) is chosen and only its test
scores are reported, as in the grid's own report. The macro-F1 over frequent types (at least
``--min-support`` test spans; the types where a per-type F1 means something) is computed from
each chosen cell's run directory (``benchmarks/runs/<budget>/jd-ner/<cell>/metrics.json``), and
the per-type scores it used are kept in the JSON. Speeds are ratios against the ``lora-small``
row: cells run one at a time on one machine, so they compare only when their provenance names
the same CPU. Writes ``benchmarks/results/span-head-<budget>.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cells import write_json
from .grid import load_grid
from .harness import current_cells
from .provenance import REPO, provenance
from .report import choose, read_cells, short_float

#: (grid method, head, regulariser, the row its speed is compared with) of each row, in order
ROWS = [
    ("lora-small", "BIO", "-", None), ("lora-small-fgm", "BIO", "FGM", "lora-small"),
    ("lora-small-rdrop", "BIO", "R-Drop", "lora-small"),
    ("lora-small-gp", "global pointer", "-", "lora-small"), ("lora-small-gp-fgm", "global pointer", "FGM", "lora-small-gp"),
    ("lora-small-gp-rdrop", "global pointer", "R-Drop", "lora-small-gp"),
    ("lora", "BIO", "- (r=16, reference)", None),
    ("full", "BIO", "-", None), ("full-gp", "global pointer", "-", "full"),
]


def frequent_macro(metrics: dict, min_support: int) -> tuple[float | None, dict]:
    """Macro-F1 of test over the types with at least ``min_support`` test spans, and those types' F1."""
    per_type = ((metrics.get("scores") or {}).get("test") or {}).get("per_type") or {}
    kept = {t: round(v["f1"], 4) for t, v in per_type.items() if v.get("support", 0) >= min_support}
    return (sum(kept.values()) / len(kept) if kept else None), kept


def row_of(row: dict, runs: Path, min_support: int, by_name: dict) -> dict:
    """One table row from the grid's chosen cell (and its seed cells' run directories). Its speed
    is the fastest of its seed cells (a machine's noise only ever slows a run down) and the day
    that cell ran."""
    macros, per_type = [], {}
    for name in row.get("seed_cells") or [row["cell"]]:
        path = runs / name / "metrics.json"
        if path.is_file():
            macro, kept = frequent_macro(json.loads(path.read_text(encoding="utf-8")), min_support)
            if macro is not None:
                macros.append(macro)
                per_type[name] = kept
    p = row["parameters"]
    tests = [t for _, t in row.get("test_by_seed", [])] or [row["test_micro_f1"]]
    fastest = max((by_name[n] for n in row.get("seed_cells") or [row["cell"]] if n in by_name),
                  key=lambda c: c["train_titles_per_s"], default=row)
    return {
        "method": row["method"], "chosen": {row["sweep_key"]: row["chosen"]}, "dev_by_value": row["dev_by_value"],
        "seeds": row["seeds"], "dev_micro_f1": row["dev_micro_f1"], "test_micro_f1": row["test_micro_f1"],
        "test_micro_f1_range": [min(tests), max(tests)], "test_macro_f1": row["test_macro_f1"],
        "test_macro_f1_frequent": sum(macros) / len(macros) if macros else None,
        "frequent_types_f1": per_type, "trainable": p["trainable"], "head": p["head"],
        "trainable_pct": p["trainable_pct"], "train_titles_per_s": fastest["train_titles_per_s"],
        "train_titles_per_s_by_seed": [by_name[n]["train_titles_per_s"] for n in row.get("seed_cells", []) if n in by_name],
        "speed_of": fastest["cell"], "ran_on": ((fastest.get("provenance") or {}).get("date") or "")[:10],
        "cpu": (row.get("provenance") or {}).get("cpu"), "commit": (row.get("provenance") or {}).get("git_commit"),
        "command": row["command"],
    }


def markdown(budget: str, rows: list[dict], min_support: int, command: str) -> str:
    by_method = {r["method"]: r for r in rows}
    lines = [f"# jd-ner: the span head and the regularisers (budget `{budget}`)", "",
             f"Made by `{command}` from the grid's cells. Per row the rate with the best dev micro-F1 is chosen "
             "(seed means where a rate has several seeds); only its test scores are reported. Macro-F1 (frequent) "
             f"averages the F1 of the test types with at least {min_support} test spans. Train titles/s is the "
             "fastest of the row's seed cells; the ratio compares it with the row it extends (FGM and R-Drop with "
             "their plain row, the span head with BIO) where both ran on the same day, one cell at a time.", "",
             "| row | head | regulariser | rate: dev micro-F1 | seeds | test micro-F1 | test macro-F1 (frequent) | "
             "test macro-F1 (all) | trainable (head) | % | train titles/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        key = next(iter(r["chosen"]))
        rates = ", ".join((f"**{short_float(v)}: {f:.3f}**" if v == r["chosen"][key] else f"{short_float(v)}: {f:.3f}")
                          + (f" (×{n})" if n > 1 else "") for v, f, n in r["dev_by_value"])
        lo, hi = r["test_micro_f1_range"]
        spread = f" ({lo:.4f}–{hi:.4f})" if len(r["seeds"]) > 1 else ""
        speed = f"{r['train_titles_per_s']:.1f}"
        base = by_method.get(r["compare_with"] or "")
        if base is not None and base["ran_on"] == r["ran_on"]:
            speed += f" ({r['train_titles_per_s'] / base['train_titles_per_s']:.2f}× {base['method']})"
        freq = "—" if r["test_macro_f1_frequent"] is None else f"{r['test_macro_f1_frequent']:.4f}"
        lines.append(f"| {r['method']} | {r['head_name']} | {r['regulariser']} | {rates} | {len(r['seeds'])} | "
                     f"**{r['test_micro_f1']:.4f}**{spread} | {freq} | {r['test_macro_f1']:.4f} | "
                     f"{r['trainable']:,} ({r['head']:,}) | {r['trainable_pct']:.2f}% | {speed} |")
    missing = [m for m, *_ in ROWS if m not in by_method]
    if missing:
        lines += ["", "Rows without a finished cell on this budget: " + ", ".join(missing) + "."]
    lines += ["", "Each row's command is in the JSON beside this file."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", default="cpu")
    ap.add_argument("--min-support", type=int, default=50)
    ap.add_argument("--grid", type=Path, default=REPO / "benchmarks" / "grid.yaml")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "grid")
    ap.add_argument("--runs", type=Path, default=REPO / "benchmarks" / "runs")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    wanted = {m: rest for m, *rest in ROWS}
    grid_cells = load_grid(args.grid, args.budget, ["jd-ner"], list(wanted))
    cells, _, _ = read_cells(args.results / args.budget / "jd-ner",
                             current_cells(grid_cells, args.results / args.budget).get("jd-ner", {}))
    chosen = {r["method"]: r for r in choose([c for c in cells if c["method"] in wanted])}
    by_name = {c["cell"]: c for c in cells}
    rows = []
    for method, head, reg, compare_with in ROWS:
        if method in chosen:
            rows.append({**row_of(chosen[method], args.runs / args.budget / "jd-ner", args.min_support, by_name),
                         "head_name": head, "regulariser": reg, "compare_with": compare_with})
    if not rows:
        print(f"no finished cells of {', '.join(wanted)} under {args.results / args.budget / 'jd-ner'}", file=sys.stderr)
        return 2
    out = args.out or REPO / "benchmarks" / "results" / f"span-head-{args.budget}"
    command = f"python -m benchmarks.span_head --budget {args.budget}"
    write_json(out.with_suffix(".json"), {"budget": args.budget, "min_support": args.min_support, "command": command,
                                          "rows": rows, "provenance": provenance()})
    out.with_suffix(".md").write_text(markdown(args.budget, rows, args.min_support, command), encoding="utf-8")
    print(out.with_suffix(".md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
