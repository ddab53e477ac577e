"""Collect finished jd-ner runs of every method into one table (Markdown + JSON).

    python -m benchmarks.methods_table RUN_DIR [RUN_DIR ...] --out OUT \\
        [--note "free text kept with the results"]

Each RUN_DIR is an output directory of ``run_recipe.py``; everything in the table is read from
its ``metrics.json``, ``recipe.yaml`` and the files on disk (adapter file size). Runs of the
same recipe at several learning rates are grouped: the one with the best dev micro-F1 is the
row, the others are listed with their dev scores (selection on dev, report on test). Writes
``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from peft_tags.config.yamlio import yaml_load  # the capped loader (recipes' alias-bomb caps)

from .provenance import provenance


def read_run(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    recipe = yaml_load((run / "recipe.yaml").read_text(encoding="utf-8"))
    adapter = run / "adapter_model.safetensors"
    model = run / "model" / "model.safetensors"
    p = m["parameters"]
    return {
        "run": str(run), "recipe": m["recipe"], "method": m["method"],
        "quantization": recipe["backbone"].get("quantization", "none"),
        "lr": recipe["training"]["lr"], "head_lr": recipe["training"].get("head_lr"), "epochs": recipe["training"]["epochs"],
        "dev_micro_f1": m.get("dev_micro_f1"), "test_micro_f1": m.get("test_micro_f1"), "test_macro_f1": m.get("test_macro_f1"),
        "adapter_params": p["adapter"], "backbone_params": p["backbone"], "head_params": p["head"],
        "trainable_params": p["trainable"], "trainable_pct": p["trainable_pct"],
        "train_titles_per_s": m["train_titles_per_s"], "eval_titles_per_s": m["eval_titles_per_s"],
        "train_seconds": m["train_seconds"], "peak_memory_mb": m["peak_memory_mb"],
        # the peft file holds the adapter and the head (modules_to_save); full FT saves the whole model
        "saved_file_bytes": (adapter.stat().st_size if adapter.is_file() else model.stat().st_size if model.is_file() else
                             (run / "head.safetensors").stat().st_size),
        "saved_file": adapter.name if adapter.is_file() else ("model/model.safetensors" if model.is_file() else "head.safetensors"),
        "best_epoch": (m.get("best") or {}).get("epoch"), "versions": m.get("versions"),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="path without suffix; .json and .md are written")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args()
    rows = [read_run(r) for r in args.runs]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["recipe"], []).append(r)
    chosen = []
    for recipe, runs in groups.items():
        best = max(runs, key=lambda r: r["dev_micro_f1"])
        best = {**best, "lr_tried": sorted({r["lr"] for r in runs}),
                "dev_by_lr": {str(r["lr"]): r["dev_micro_f1"] for r in sorted(runs, key=lambda r: r["lr"])}}
        chosen.append(best)
    chosen.sort(key=lambda r: r["trainable_params"])
    result = {"provenance": provenance(), "notes": args.note, "rows": chosen, "all_runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")

    def mb(b):
        return f"{b / 2**20:.2f} MB"

    lines = ["| recipe | lr (dev micro-F1 per lr tried) | adapter params | head params | trainable | test micro-F1 | test macro-F1 "
             "| dev micro-F1 | train titles/s | peak RSS | saved file |", "|" + "---|" * 11]
    for r in chosen:
        tried = ", ".join(f"{lr}: {f:.3f}" for lr, f in r["dev_by_lr"].items())
        params = r["adapter_params"] or r["backbone_params"]
        lines.append(f"| `{r['recipe']}` | {r['lr']} ({tried}) | {params:,} | {r['head_params']:,} | {r['trainable_pct']:.2f}% "
                     f"| **{r['test_micro_f1']:.4f}** | {r['test_macro_f1']:.4f} | {r['dev_micro_f1']:.4f} "
                     f"| {r['train_titles_per_s']} | {r['peak_memory_mb'] / 1024:.2f} GB | {mb(r['saved_file_bytes'])} |")
    prov = result["provenance"]
    lines += ["", f"Made by `python -m benchmarks.methods_table {' '.join(str(r) for r in args.runs)} --out {args.out}` "
              f"on {prov['date']}; table code at {prov['git_commit'][:10]}{' (dirty)' if prov['git_dirty'] else ''}; "
              f"{prov['cpu']}, {prov['cores']} cores."]
    lines += [f"- {n}" for n in args.note]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
