"""Decide again how a trained run turns scores into tags, without training again (for tasks
with a decision rule tuned on dev: ``Task.retune_keys``; the multi-label task's thresholds).

``peft-tags retune RUN [task.thresholds=auto] [task.min_tag_support=N] [task.top_k=K]``
predicts dev and test with the run's model, tunes the thresholds on dev under the new rule
(the same code as at the end of training), scores test, and rewrites the run's
``labels.json`` (used by predict), ``metrics.json``, reports, model card and ``recipe.yaml``.
The model files are not touched. ``data.root``, ``data.dev`` and ``data.test`` may be given
when the data moved since training.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from .errors import UserError

#: keys retune takes besides the task's own ``retune_keys``
DATA_KEYS = ("data.root", "data.dev", "data.test")


def retune(run: str | os.PathLike, overrides: list[str] = (), batch_size: int = 64) -> dict:
    """Re-tune and re-score ``run`` under ``overrides``; returns the new metrics."""
    from . import tasks
    from .card import model_card
    from .config import dump_recipe, load_recipe
    from .data.splits import read_splits
    from .predict import Tagger
    from .rundir import check_run_dir, read_json

    run = Path(run)
    for name in ("labels.json", "metrics.json", "recipe.yaml"):
        if not (run / name).is_file():
            raise UserError(f"{run}: not a trained output directory (no {name})")
    _, meta = check_run_dir(run)
    old = read_json(run / "metrics.json")
    task_cls = tasks.of_meta(meta)
    if not task_cls.retune_keys:
        able = [n for n in tasks.names() if tasks.get(n).retune_keys]
        raise UserError(f"{run}: a {task_cls.name} run; it has no decision rule to tune again (runs of task "
                        f"{', '.join(able)} have)")
    allowed = [f"task.{k}" for k in task_cls.retune_keys] + list(DATA_KEYS)
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if "=" not in item or key not in allowed:
            raise UserError(f"'{item}': retune takes KEY=VALUE with KEY one of {', '.join(allowed)}")
    recipe = load_recipe(run / "recipe.yaml", list(overrides))
    d = recipe.data
    if not d.has_dev:
        raise UserError("data.dev: the decision rule is tuned on dev; give a dev file")
    splits = read_splits(d)

    clf = Tagger.load(run)
    task = task_cls.for_codec(recipe, clf.codec)
    results = {}
    tick = time.perf_counter()
    for split in ("dev", "test"):  # dev first: it sets the thresholds test is decided by
        if split not in splits:
            continue
        examples = splits[split]
        predictions = task.predict(clf.model, examples, clf.codec.encode([e.text for e in examples]), batch_size, clf.device)
        results[split] = task.score(split, predictions, examples, final=True)
    seconds = time.perf_counter() - tick

    metrics = {k: v for k, v in old.items() if not k.startswith(("dev_", "test_"))}
    metrics.update({f"{split}_micro_f1": r["micro_f1"] for split, r in results.items()})
    metrics.update({f"{split}_macro_f1": r["macro_f1"] for split, r in results.items()})
    metrics["scores"] = {split: {k: v for k, v in r.items() if k != "report"} for split, r in results.items()}
    metrics.update(task.retuned_metrics())
    metrics["retuned"] = old.get("retuned", []) + [{
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "overrides": list(overrides),
        "before": {"thresholds": old.get("thresholds"), "test_micro_f1": old.get("test_micro_f1")},
        "seconds": round(seconds, 2)}]
    meta.update(task.retuned_meta())

    # everything is computed: write the small files aside, then swap each one in whole
    stage = run / f".retune-{os.getpid()}"
    stage.mkdir()
    try:
        files = {"labels.json": json.dumps(meta, ensure_ascii=False, indent=1),
                 "metrics.json": json.dumps(metrics, ensure_ascii=False, indent=1),
                 **{f"{split}_report.txt": r.get("report", "") for split, r in results.items()},
                 "README.md": model_card(recipe, metrics, meta)}
        for name, text in files.items():
            (stage / name).write_text(text, encoding="utf-8")
        dump_recipe(recipe, stage / "recipe.yaml")
        for name in [*files, "recipe.yaml"]:
            os.replace(stage / name, run / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return metrics
