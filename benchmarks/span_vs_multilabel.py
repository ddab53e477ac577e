"""Which answers "what are this title's tags?" better: the span tagger or the tag classifier?

The span tagger's answer: the normalised values of its predicted spans of the tag set's types
(as ``peft-tags derive-tags`` builds the gold tags), kept if they are in the tag vocabulary
(the classifier cannot name anything else). Both are scored with the same multi-label
micro/macro/example F1 on the tag set's test split. A last row scores every value the tagger
finds against every gold value (``tags`` and ``other_tags``): the long tail the classifier
cannot reach.

    python -m benchmarks.span_vs_multilabel --tags data/jd-tags --tagger RUN [--tagger RUN ...] \\
        --classifier RUN [--classifier RUN ...] [--out benchmarks/results/jd-tags-span-vs-multilabel]

Writes ``<out>.json`` and ``<out>.md`` with provenance.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .provenance import REPO, provenance


def _load(run: Path, task: str):
    from peft_tags.errors import UserError
    from peft_tags.predict import Tagger

    model = Tagger.load(run)
    if model.meta.get("task", "tagging") != task:
        raise UserError(f"{run}: a {model.meta.get('task', 'tagging')} run, expected a {task} run")
    return model


def tagger_tags(run: Path, titles: list[str], types: set[str], vocab: set[str] | None) -> tuple[list[list[str]], float]:
    from peft_tags.derive import normalize_tag

    tagger = _load(run, "tagging")
    t0 = time.perf_counter()
    spans = tagger.tag(titles, batch_size=64)
    seconds = time.perf_counter() - t0
    out = []
    for ss in spans:
        tags = {normalize_tag(s.text) for s in ss if s.label in types} - {""}
        out.append(sorted(tags if vocab is None else tags & vocab))
    return out, len(titles) / seconds


def classifier_tags(run: Path, titles: list[str]) -> tuple[list[list[str]], float]:
    clf = _load(run, "multilabel")
    t0 = time.perf_counter()
    tags = clf.tag(titles, batch_size=64)
    return [sorted(t.tag for t in ts) for ts in tags], len(titles) / (time.perf_counter() - t0)


def main() -> int:
    from peft_tags.errors import UserError

    try:
        return _main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main() -> int:
    from peft_tags.data import read_examples
    from peft_tags.errors import UserError
    from peft_tags.metrics import tag_f1

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tags", type=Path, required=True, help="folder written by peft-tags derive-tags")
    ap.add_argument("--tagger", type=Path, action="append", default=[], help="a jd-ner span-tagging run")
    ap.add_argument("--classifier", type=Path, action="append", default=[], help="a multi-label run on the tag set")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "jd-tags-span-vs-multilabel")
    args = ap.parse_args()
    for name in ("stats.json", "vocab.json", "test.jsonl"):
        if not (args.tags / name).is_file():
            raise UserError(f"--tags: no {name} in {args.tags} (make the set with peft-tags derive-tags)")
    stats = json.loads((args.tags / "stats.json").read_text(encoding="utf-8"))
    vocab = {v["tag"] for v in json.loads((args.tags / "vocab.json").read_text(encoding="utf-8"))}
    test = read_examples(args.tags / "test.jsonl", "tags", fullwidth_to_halfwidth=False)
    titles, gold = [e.text for e in test], [e.tags for e in test]
    # every tag value of each title, the vocabulary's and the rest (derive-tags keeps them in other_tags)
    lines = [json.loads(line) for line in (args.tags / "test.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    gold_all = [sorted(set(g) | set(obj.get("other_tags", []))) for g, obj in zip(gold, lines)]
    rows = []

    def row(kind: str, run: Path, pred: list[list[str]], speed: float, note: str = "", against=None) -> None:
        m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        s = tag_f1(pred, gold if against is None else against)
        rows.append({"kind": kind, "run": str(run), "method": m["method"], "recipe": m["recipe"], "note": note,
                     "trainable_params": m["parameters"]["trainable"], "train_seconds": m["train_seconds"],
                     "predict_titles_per_s": round(speed, 1),
                     **{k: s[k] for k in ("micro_precision", "micro_recall", "micro_f1", "macro_f1", "example_f1")}})

    for run in args.tagger:
        pred, speed = tagger_tags(run, titles, set(stats["types"]), vocab)
        row("span tagger", run, pred, speed, "values in the vocabulary")
        pred, speed = tagger_tags(run, titles, set(stats["types"]), None)
        row("span tagger", run, pred, speed, "every value, against every gold value (not comparable with the rows above)",
            against=gold_all)
    for run in args.classifier:
        pred, speed = classifier_tags(run, titles)
        row("classifier", run, pred, speed)
    prov = provenance()
    result = {"command": " ".join(["python -m benchmarks.span_vs_multilabel", *sys.argv[1:]]), "provenance": prov,
              "tag_set": stats, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    lines = [f"# Span tagger vs tag classifier on `{args.tags.name}` test ({len(test)} titles, {stats['vocabulary']} tags)", "",
             f"`{result['command']}` at {prov['git_commit'][:10]}{' (dirty)' if prov['git_dirty'] else ''}, {prov['date']}, "
             f"{prov['cpu']}, {prov['threads']} threads.", "",
             "| answer | method | trainable params | train time | tag micro-P | micro-R | **micro-F1** | macro-F1 | example-F1 "
             "| predict titles/s |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['kind']}{' (' + r['note'] + ')' if r['note'] else ''} | {r['method']} | {r['trainable_params']:,} "
                     f"| {r['train_seconds'] / 60:.1f} min | {r['micro_precision']:.4f} | {r['micro_recall']:.4f} "
                     f"| **{r['micro_f1']:.4f}** | {r['macro_f1']:.4f} | {r['example_f1']:.4f} | {r['predict_titles_per_s']} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
