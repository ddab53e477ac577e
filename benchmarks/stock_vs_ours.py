"""Side by side, in one run: the stock Hugging Face recipe against a peft-tags recipe.

Stock recipe (what a user writes from the transformers token-classification example):
``Trainer`` + peft LoRA r=8 on query/value, characters as words (``is_split_into_words``),
the label on each character's first sub-token, dynamic padding
(``DataCollatorForTokenClassification``), me5-small, batch 16, lr 1e-3, 3 epochs.
Ours: ``run_recipe.py RECIPE`` as a user runs it. Both are scored with the same
character-span micro-F1 on the same test split.

    python benchmarks/stock_vs_ours.py                       # full comparison (~45 min on 2 cores)
    python benchmarks/stock_vs_ours.py --max-train 320 --stock-epochs 1 --ours training.epochs=1   # quick look

Writes ``benchmarks/results/stock_vs_ours[-dirty].json`` and ``.md`` with provenance.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def provenance() -> dict:
    import torch, transformers, peft, accelerate

    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), platform.processor())
    return {
        "git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "accelerate": accelerate.__version__, "cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def run_stock(data_root: Path, max_train: int | None, epochs: float, seed: int) -> dict:
    """The stock recipe; returns test micro-F1 and training titles/s."""
    import numpy as np
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForTokenClassification, DataCollatorForTokenClassification, Trainer,
                              TrainingArguments)

    from peft_tags.backbones import resolve_backbone
    from peft_tags.data import label_set, read_examples
    from peft_tags.metrics import span_f1
    from peft_tags.model import load_tokenizer, quiet_transformers
    from peft_tags.tasks.tagging import bio_labels, char_labels_to_spans, spans_to_char_labels

    quiet_transformers()
    train = read_examples(data_root / "jd-ner/train.txt", "conll", max_examples=max_train)
    test = read_examples(data_root / "jd-ner/test.txt", "conll")
    labels = bio_labels(label_set(train))
    index = {l: i for i, l in enumerate(labels)}
    backbone = resolve_backbone("me5-small")
    tok = load_tokenizer(backbone)

    def encode(ex):
        enc = tok(list(ex.text), is_split_into_words=True, truncation=True, max_length=512)
        char_labels = spans_to_char_labels(len(ex.text), ex.spans, index)
        seen, lab = set(), []
        for w in enc.word_ids():
            lab.append(-100 if w is None or w in seen else int(char_labels[w]))
            if w is not None:
                seen.add(w)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": lab}, enc.word_ids()

    train_set = [encode(e)[0] for e in train]
    model = AutoModelForTokenClassification.from_pretrained(backbone, num_labels=len(labels))
    model = get_peft_model(model, LoraConfig(task_type=TaskType.TOKEN_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                                             target_modules=["query", "value"]))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=16, num_train_epochs=epochs, learning_rate=1e-3,
                                 eval_strategy="no", save_strategy="no", report_to=[], logging_steps=50, seed=seed,
                                 use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=train_set,
                          data_collator=DataCollatorForTokenClassification(tok))
        result = trainer.train()
    model.eval()
    preds = []
    with torch.no_grad():
        for ex in test:
            feats, word_ids = encode(ex)
            logits = model(input_ids=torch.tensor([feats["input_ids"]], device=model.device)).logits[0].cpu().numpy()
            char = ["O"] * len(ex.text)
            seen = set()
            for t, w in enumerate(word_ids):
                if w is not None and w not in seen:
                    seen.add(w)
                    char[w] = labels[int(np.argmax(logits[t]))]
            preds.append(char_labels_to_spans(char))
    scores = span_f1(preds, [e.spans for e in test])
    n_tok = sum(len(x["input_ids"]) for x in train_set)
    return {"test_micro_f1": scores["micro_f1"], "test_macro_f1": scores["macro_f1"],
            "train_titles_per_s": round(len(train_set) * epochs / result.metrics["train_runtime"], 2),
            "train_seconds": round(result.metrics["train_runtime"], 1), "epochs": epochs,
            "tokens_per_char": round(n_tok / sum(len(e.text) for e in train), 3)}


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
    result = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "provenance": prov,
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
