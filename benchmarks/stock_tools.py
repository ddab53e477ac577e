"""Stock Hugging Face tools against ``peft-tags predict``, on a run's whole test split.

For each trained run given, offline:

- a tagging run: ``AutoModelForTokenClassification.from_pretrained(run, config=AutoConfig.
  from_pretrained(run + "/hf"))`` (transformers' own peft integration) and
  ``peft.AutoPeftModelForTokenClassification.from_pretrained(run, num_labels=...)`` build the
  model; their logits against peft-tags' own (largest difference), and the tags of every test
  title when those logits are decoded by the run's rules, against ``Tagger.tag``; the stock
  ``pipeline("token-classification")`` shows names from ``hf/config.json``, not ``LABEL_n``;
- a multi-label run: ``peft-tags export`` into a temporary folder, then
  ``AutoModelForSequenceClassification.from_pretrained(dest + "/model", trust_remote_code=True)``
  in ``pipeline("text-classification", top_k=None)``, the config's ``tag_thresholds`` applied:
  the tags of every test title against ``Tagger.tag``.

A backbone named by a hub id that the hub cannot give (no network here) is served from a local
copy: a Hugging Face cache in a temporary folder whose snapshot is the exact weights
``backbone.json`` names (their sha256 checked), with ``HF_HUB_OFFLINE=1``, as a user with the
model in their cache has it.

    python -m benchmarks.stock_tools runs/jd-ner/lora runs/jd-tags/lora

Writes ``benchmarks/results/stock_tools[-dirty].json`` and ``.md`` with provenance.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from .provenance import REPO, provenance


def local_hub_copy(runs: list[Path], cache: Path) -> None:
    """A Hugging Face cache holding each run's backbone (by its id) as the weights it was trained on."""
    from peft_tags.backbones import sha256

    for run in runs:
        record = json.loads((run / "backbone.json").read_text(encoding="utf-8"))
        if record["id"].startswith("/") or "weights" not in record:
            continue
        repo = cache / ("models--" + record["id"].replace("/", "--"))
        snapshot = repo / "snapshots" / ("0" * 40)
        snapshot.mkdir(parents=True, exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text("0" * 40)
        for name, digest in record["sha256"].items():
            source = Path(record["weights"]) / name
            if sha256(source) != digest:
                sys.exit(f"{source}: sha256 differs from {run / 'backbone.json'}")
            if not (snapshot / name).exists():
                os.symlink(source, snapshot / name)


def test_titles(run: Path) -> list[str]:
    from peft_tags.data import read_split
    from peft_tags.rundir import check_run_dir

    recipe, _ = check_run_dir(run)
    return [e.text for e in read_split(recipe.data, "test")]


def answers(tagger, titles: list[str]) -> list:
    return [[t.as_dict() for t in tags] for tags in tagger.tag(titles)]


def check_tagging(run: Path, titles: list[str]) -> dict:
    import torch
    from peft import AutoPeftModelForTokenClassification
    from transformers import AutoConfig, AutoModelForTokenClassification, pipeline

    from peft_tags.predict import Tagger

    tagger = Tagger.load(run, device="cpu")
    ours = answers(tagger, titles)
    own_model = tagger.model
    config = AutoConfig.from_pretrained(run / "hf")
    stock = {
        "AutoModelForTokenClassification.from_pretrained(run, config=AutoConfig.from_pretrained(run/'hf'))":
            AutoModelForTokenClassification.from_pretrained(run, config=config).eval(),
        "AutoPeftModelForTokenClassification.from_pretrained(run, num_labels=N)":
            AutoPeftModelForTokenClassification.from_pretrained(run, num_labels=config.num_labels).eval(),
    }
    rows = []
    enc = tagger.codec.tokenizer(titles[:64], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = own_model(**enc).logits
    for command, model in stock.items():
        with torch.no_grad():
            diff = float((model(**enc).logits - want).abs().max())
        tagger.model = model
        got = answers(tagger, titles)
        rows.append({"command": command, "max_abs_logit_diff": diff,
                     "titles_same_tags": sum(a == b for a, b in zip(ours, got)), "titles": len(titles)})
    pipe = pipeline("token-classification", model=stock[next(iter(stock))], tokenizer=str(run / "hf"), device="cpu")
    entities = [e["entity"] for row in pipe(titles[:64]) for e in row]
    rows.append({"command": "pipeline('token-classification', model=<the model above>, tokenizer=run/'hf')",
                 "entities": len(entities), "named": sum(not e.startswith("LABEL_") for e in entities),
                 "example": entities[:3]})
    return {"run": str(run), "task": "tagging", "rows": rows}


def check_multilabel(run: Path, titles: list[str]) -> dict:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from peft_tags.export import export
    from peft_tags.predict import Tagger

    ours = [[t.tag for t in tags] for tags in Tagger.load(run, device="cpu").tag(titles)]
    with tempfile.TemporaryDirectory() as tmp:
        dest = export(run, Path(tmp) / "exported")
        folder = dest / "model"
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
        pipe = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(folder),
                        device="cpu")
        got = []
        for row in pipe(titles, top_k=None, batch_size=32):
            kept = sorted((r for r in row if r["score"] >= config.tag_thresholds[r["label"]]), key=lambda r: -r["score"])
            got.append([r["label"] for r in kept[: config.tag_top_k or None]])
    return {"run": str(run), "task": "multilabel", "rows": [{
        "command": "pipeline('text-classification', model=AutoModelForSequenceClassification.from_pretrained("
                   "export/model, trust_remote_code=True), top_k=None) + config.tag_thresholds",
        "problem_type": config.problem_type, "titles_same_tags": sum(a == b for a, b in zip(ours, got)),
        "titles": len(titles)}]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "stock_tools"))
    args = ap.parse_args(argv)
    cache = Path(tempfile.mkdtemp(prefix="hf-cache-"))
    local_hub_copy(args.runs, cache)
    os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))  # before transformers reads them
    from peft_tags.rundir import check_run_dir

    results = []
    for run in args.runs:
        _, meta = check_run_dir(run)
        titles = test_titles(run)
        check = check_multilabel if meta["task"] == "multilabel" else check_tagging
        results.append(check(run, titles))
    result = {"results": results, "command": "python -m benchmarks.stock_tools " + " ".join(map(str, args.runs)),
              "provenance": provenance()}
    out = Path(args.out + ("-dirty" if result["provenance"]["git_dirty"] else ""))
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    lines = ["# Stock Hugging Face tools against peft-tags predict", "",
             f"`{result['command']}` at {result['provenance']['git_commit'][:10]}, {result['provenance']['date']}.", ""]
    for r in results:
        lines += [f"## {r['run']} ({r['task']})", ""]
        for row in r["rows"]:
            lines.append("- " + ", ".join(f"{k}: {v}" for k, v in row.items()))
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
