"""Training speed and peak memory of every method, measured side by side in one run.

Each recipe trains one epoch on the first N jd-ner titles (no dev/test scoring), one recipe
after another in fresh processes, so the numbers are comparable with each other; run it on
an otherwise idle machine.

    python benchmarks/method_speed.py                      # all recipes/jd-ner/*.yaml, N = 640
    python benchmarks/method_speed.py --titles 320 recipes/jd-ner/lora.yaml recipes/jd-ner/qlora.yaml

Writes benchmarks/results/jd-ner-method-speed[-dirty].{json,md} with provenance.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(recipe: Path, titles: int, workdir: Path) -> dict:
    out = workdir / recipe.stem
    cmd = [sys.executable, str(REPO / "run_recipe.py"), str(recipe), f"data.max_train_examples={titles}", "training.epochs=1",
           "data.dev=null", "data.test=null", f"output.dir={out}", "training.log_with=none"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{recipe}: failed\n{done.stderr[-2000:]}")
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return {"recipe": str(recipe.relative_to(REPO)) if recipe.is_relative_to(REPO) else str(recipe), "method": m["method"],
            "trainable_params": m["parameters"]["trainable"], "train_titles": titles,
            "train_seconds": m["train_seconds"], "train_titles_per_s": m["train_titles_per_s"],
            "peak_memory_mb": m["peak_memory_mb"], "threads": m["threads"]}


def main() -> int:
    from provenance import provenance

    ap = argparse.ArgumentParser()
    ap.add_argument("recipes", nargs="*", type=Path)
    ap.add_argument("--titles", type=int, default=640)
    args = ap.parse_args()
    recipes = [r.resolve() for r in args.recipes] or sorted((REPO / "recipes" / "jd-ner").glob("*.yaml"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in recipes:
            rows.append(measure(recipe, args.titles, Path(tmp)))
            print(f"{rows[-1]['recipe']}: {rows[-1]['train_titles_per_s']} titles/s, {rows[-1]['peak_memory_mb']:.0f} MB",
                  flush=True)
    prov = provenance()
    suffix = "-dirty" if prov["git_dirty"] else ""
    base = REPO / "benchmarks" / "results" / f"jd-ner-method-speed{suffix}"
    base.with_suffix(".json").write_text(json.dumps({"provenance": prov, "rows": rows}, indent=1), encoding="utf-8")
    lines = ["| recipe | method | trainable params | train titles/s | peak RSS |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['recipe']}` | {r['method']} | {r['trainable_params']:,} | {r['train_titles_per_s']} "
                     f"| {r['peak_memory_mb'] / 1024:.2f} GB |")
    lines += ["", f"`python benchmarks/method_speed.py --titles {args.titles}`: one epoch on the first {args.titles} jd-ner "
              f"titles per recipe, recipes run one after another; {prov['date']}, commit {prov['git_commit'][:10]}"
              f"{' (dirty)' if prov['git_dirty'] else ''}, {prov['cpu']}, {prov['threads']} threads."]
    base.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
