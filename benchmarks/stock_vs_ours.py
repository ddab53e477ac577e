"""Side by side, in one run: the stock Hugging Face recipe against a peft-tags recipe.

Stock recipe (what a user writes from the transformers token-classification example):
``Trainer`` + peft LoRA r=8 on query/value, characters as words (``is_split_into_words``),
the label on each character's first sub-token, dynamic padding
(``DataCollatorForTokenClassification``), me5-small, batch 16, lr 1e-3, 3 epochs.
Ours: ``run_recipe.py RECIPE`` as a user runs it. Both are scored with the same
character-span micro-F1 on the same test split.

    python -m benchmarks.stock_vs_ours                       # full comparison (~45 min on 2 cores)
    python -m benchmarks.stock_vs_ours --max-train 320 --stock-epochs 1 --ours training.epochs=1   # quick look

Writes ``benchmarks/results/stock_vs_ours[-dirty].json`` and ``.md`` with provenance.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .provenance import REPO, provenance


def run_stock(data_root: Path, max_train: int | None, epochs: float, seed: int) -> dict:
    """The stock recipe (benchmarks/stock_recipe.py); returns test micro-F1 and training titles/s."""
    from .stock_recipe import run

    with tempfile.TemporaryDirectory() as tmp:
        m = run(Path(tmp) / "stock", data_root=str(data_root), train="jd-ner/train.txt", dev=None, test="jd-ner/test.txt",
                backbone_name="me5-small", epochs=epochs, lr=1e-3, batch_size=16, seed=seed, max_train=max_train)
    return {"test_micro_f1": m["test_micro_f1"], "test_macro_f1": m["test_macro_f1"],
            "train_titles_per_s": m["train_titles_per_s"], "train_seconds": m["train_seconds"], "epochs": epochs,
            "tokens_per_char": m["tokens_per_char"], "peak_memory_mb": m["peak_memory_mb"]}


def run_ours(recipe: str, data_root: Path, max_train: int | None, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        extra = [f"data.root={data_root}", f"output.dir={tmp}/out"] + ([f"data.max_train_examples={max_train}"] if max_train else [])
        subprocess.run([sys.executable, str(REPO / "run_recipe.py"), recipe, *extra, *overrides], check=True, cwd=REPO)
        m = json.loads(Path(tmp, "out", "metrics.json").read_text())
    return {"test_micro_f1": m["test_micro_f1"], "test_macro_f1": m["test_macro_f1"],
            "train_titles_per_s": m["train_titles_per_s"], "train_seconds": m["train_seconds"],
            "parameters": m["parameters"], "alignment": m["alignment"], "history": m["history"],
            "peak_memory_mb": m["peak_memory_mb"], "eval_titles_per_s": m["eval_titles_per_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="recipes/jd-ner/lora.yaml")
    p.add_argument("--data-root", default=os.environ.get("PEFT_TAGS_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--max-train", type=int, default=None, help="first N training titles only (quick runs)")
    p.add_argument("--stock-epochs", type=float, default=3)
    p.add_argument("--ours", nargs="*", default=[], help="overrides for our recipe, key=value")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()
    root = Path(args.data_root)
    prov = provenance()
    stock = run_stock(root, args.max_train, args.stock_epochs, args.seed)
    print("stock:", json.dumps(stock), flush=True)
    ours = run_ours(args.recipe, root, args.max_train, args.ours)
    print("ours:", json.dumps({k: v for k, v in ours.items() if k != "history"}), flush=True)
    result = {"command": " ".join(["python -m benchmarks.stock_vs_ours", *sys.argv[1:]]), "provenance": prov,
              "stock": stock, "ours": {"recipe": args.recipe, "overrides": args.ours, **ours},
              "speed_ratio": round(ours["train_titles_per_s"] / stock["train_titles_per_s"], 2),
              "f1_delta": round(ours["test_micro_f1"] - stock["test_micro_f1"], 4)}
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stem = "stock_vs_ours" + ("-dirty" if prov["git_dirty"] else "") + ("-quick" if args.max_train else "")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    md = [f"# Stock Hugging Face recipe vs peft-tags ({args.recipe})", "",
          f"`{result['command']}` at {prov['git_commit'][:10]}{' (dirty tree)' if prov['git_dirty'] else ''}, "
          f"{prov['date']}, {prov['cpu']}, {prov['threads']} threads, torch {prov['torch']}", "",
          "| | test micro-F1 | test macro-F1 | train titles/s | train s | epochs |", "|---|---|---|---|---|---|",
          f"| stock (Trainer, LoRA r=8 q/v, chars as words) | {stock['test_micro_f1']:.4f} | {stock['test_macro_f1']:.4f} | "
          f"{stock['train_titles_per_s']} | {stock['train_seconds']} | {stock['epochs']} |",
          f"| peft-tags `{args.recipe}` {' '.join(args.ours)} | {ours['test_micro_f1']:.4f} | {ours['test_macro_f1']:.4f} | "
          f"{ours['train_titles_per_s']} | {ours['train_seconds']} | {len(ours['history'])} |", "",
          f"Speed ratio (titles/s, ours / stock): **{result['speed_ratio']}x**; micro-F1 difference: {result['f1_delta']:+.4f}.", ""]
    (out / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
