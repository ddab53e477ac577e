"""The stock Hugging Face recipe for character-span tagging, as a reference row.

What a user writes from the transformers token-classification example: ``Trainer`` + peft LoRA
r=8 on query/value, the characters of a title as words (``is_split_into_words``), the label on
each character's first sub-token, dynamic padding (``DataCollatorForTokenClassification``),
``Trainer.predict`` for scoring. Spans are scored with the same character-span micro-F1 as
peft-tags. The output directory looks like a ``run_recipe.py`` one where it matters to the
benchmarks: ``metrics.json`` (same keys) and the adapter in peft format.

    python -m benchmarks.stock_recipe --out /tmp/stock [--epochs 3] [--lr 1e-3] [--max-train N]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

DESCRIPTION = "stock HF: Trainer + peft LoRA r=8 on query/value, characters as words, first sub-token labelled"


def run(out: Path, *, data_root: str | None, train: str, dev: str | None, test: str | None, backbone_name: str,
        epochs: float, lr: float, batch_size: int, seed: int, max_train: int | None = None, max_dev: int | None = None,
        max_test: int | None = None) -> dict:
    import numpy as np
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForTokenClassification, DataCollatorForTokenClassification, Trainer,
                              TrainingArguments)

    from peft_tags.backbones import resolve_backbone
    from peft_tags.data import label_set, read_examples, resolve_data_path
    from peft_tags.metrics import span_f1
    from peft_tags.model import load_tokenizer, quiet_transformers
    from peft_tags.tasks.tagging import bio_labels, char_labels_to_spans, spans_to_char_labels
    from peft_tags.publish import peak_memory_mb, versions as _versions

    quiet_transformers()

    def read(rel, limit, key):
        return read_examples(resolve_data_path(rel, data_root, key=key), "conll", max_examples=limit)

    splits = {"train": read(train, max_train, "--train")}
    for name, rel, limit in (("dev", dev, max_dev), ("test", test, max_test)):
        if rel:
            splits[name] = read(rel, limit, f"--{name}")
    labels = bio_labels(label_set(splits["train"]))
    index = {label: i for i, label in enumerate(labels)}
    backbone = resolve_backbone(backbone_name)
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

    torch.manual_seed(seed)
    train_set = [encode(e)[0] for e in splits["train"]]
    model = AutoModelForTokenClassification.from_pretrained(backbone, num_labels=len(labels))
    model = get_peft_model(model, LoraConfig(task_type=TaskType.TOKEN_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                                             target_modules=["query", "value"]))
    adapter = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(output_dir=scratch, per_device_train_batch_size=batch_size, per_device_eval_batch_size=batch_size,
                                 num_train_epochs=epochs, learning_rate=lr, eval_strategy="no", save_strategy="no", report_to=[],
                                 logging_steps=50, seed=seed, use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=DataCollatorForTokenClassification(tok))
        result = trainer.train()
        scores, eval_titles, eval_seconds = {}, 0, 0.0
        for name in ("dev", "test"):
            if name not in splits:
                continue
            encoded = [encode(e) for e in splits[name]]
            t0 = time.perf_counter()
            logits = trainer.predict([f for f, _ in encoded]).predictions
            eval_seconds += time.perf_counter() - t0
            eval_titles += len(encoded)
            preds = []
            for ex, (_, word_ids), row in zip(splits[name], encoded, logits):
                char, seen = ["O"] * len(ex.text), set()
                for t, w in enumerate(word_ids):
                    if w is not None and w not in seen:
                        seen.add(w)
                        char[w] = labels[int(np.argmax(row[t]))]
                preds.append(char_labels_to_spans(char))
            scores[name] = span_f1(preds, [e.spans for e in splits[name]])

    n_tok = sum(len(x["input_ids"]) for x in train_set)
    metrics = {
        "recipe": "benchmarks/stock_recipe.py", "description": DESCRIPTION, "task": "tagging", "method": "stock-hf-lora",
        "backbone": backbone_name,
        **{f"{s}_micro_f1": r["micro_f1"] for s, r in scores.items()},
        **{f"{s}_macro_f1": r["macro_f1"] for s, r in scores.items()},
        "scores": {s: {k: v for k, v in r.items() if k != "report"} for s, r in scores.items()},
        "best": None, "history": [],
        "parameters": {"adapter": adapter, "head": trainable - adapter, "trainable": trainable, "all": total,
                       "trainable_pct": round(100.0 * trainable / total, 4)},
        "train_seconds": round(result.metrics["train_runtime"], 2),
        "train_titles_per_s": round(len(train_set) * epochs / result.metrics["train_runtime"], 2),
        "eval_titles_per_s": round(eval_titles / max(eval_seconds, 1e-9), 2),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "tokens_per_char": round(n_tok / max(1, sum(len(e.text) for e in splits["train"])), 3),
        "settings": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed, "r": 8, "lora_alpha": 16,
                     "lora_dropout": 0.1, "target_modules": ["query", "value"]},
        "processes": 1, "device": str(model.device), "threads": torch.get_num_threads(), "mixed_precision": "no",
        "versions": _versions(),
    }
    from peft_tags import owned

    owned.check_replaceable(out, "--out")  # replaces only an earlier output of this script
    with owned.Staged(out, "stock-run", replace=True, key="--out") as tmp:
        model.save_pretrained(str(tmp))
        (tmp / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=1), encoding="utf-8")
    return metrics


def main(argv: list[str] | None = None) -> int:
    from peft_tags.errors import UserError

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output directory (replaced if it exists)")
    p.add_argument("--data-root", default=None, help="default: $PEFT_TAGS_DATA, else ../shared/data")
    p.add_argument("--train", default="jd-ner/train.txt")
    p.add_argument("--dev", default="jd-ner/dev.txt")
    p.add_argument("--test", default="jd-ner/test.txt")
    p.add_argument("--backbone", default="me5-small")
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-dev", type=int, default=None)
    p.add_argument("--max-test", type=int, default=None)
    a = p.parse_args(argv)
    try:
        m = run(a.out, data_root=a.data_root, train=a.train, dev=a.dev or None, test=a.test or None, backbone_name=a.backbone,
                epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, seed=a.seed, max_train=a.max_train, max_dev=a.max_dev,
                max_test=a.max_test)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: m[k] for k in ("dev_micro_f1", "test_micro_f1", "train_titles_per_s") if k in m}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
