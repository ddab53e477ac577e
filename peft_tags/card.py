"""The model card (README.md) of an output directory: what was trained, how well, and how to load it."""
from __future__ import annotations

from . import methods, tasks
from .version import __version__
from .config import Recipe


def metadata(recipe: Recipe, m: dict) -> dict:
    """The card's YAML header: what the Hugging Face hub and huggingface_hub's ModelCard read
    (base model, library, pipeline task, tags, data, and a model-index with the test scores)."""
    from pathlib import PurePosixPath

    from .backbones import ALIASES

    task = tasks.get(recipe.task.type)
    name = recipe.backbone.name
    base = ALIASES[name].hub_id if name in ALIASES else (name if _hub_id(name) else "")
    data = PurePosixPath(str(recipe.data.train)).parent.name or str(recipe.data.train)
    meta: dict = {}
    if base:
        meta["base_model"] = base
    meta["library_name"] = "peft"
    if task.pipeline_tag:
        meta["pipeline_tag"] = task.pipeline_tag
    meta["tags"] = ["peft-tags", recipe.method.name, task.name, "product-tagging"]
    meta["datasets"] = [data]
    test = m["scores"].get("test", {})
    scores = [("f1", "micro_f1", "test micro-F1"), ("precision", "micro_precision", "test micro precision"),
              ("recall", "micro_recall", "test micro recall"), ("f1", "macro_f1", "test macro-F1")]
    metrics = [{"type": kind, "value": round(float(test[key]), 4), "name": label}
               for kind, key, label in scores if isinstance(test.get(key), (int, float))]
    if metrics:
        result = {"task": {"type": task.pipeline_tag or task.name, "name": task.name},
                  "dataset": {"name": data, "type": data, "split": "test"}, "metrics": metrics}
        meta["model-index"] = [{"name": PurePosixPath(str(recipe.output.dir)).name or "peft-tags-run",
                                "results": [result]}]
    return meta


def _hub_id(name: str) -> bool:
    """An id like owner/model (not a path on this machine)."""
    import os
    import re

    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not os.path.exists(name)


def model_card(recipe: Recipe, m: dict) -> str:
    import yaml

    p = m["parameters"]
    test = m["scores"].get("test", {})
    header = yaml.safe_dump(metadata(recipe, m), sort_keys=False, allow_unicode=True)
    lines = [
        "---", header.rstrip("\n"), "---", "",
        f"# peft-tags {m['task']} model: {m['method']} on {m['backbone']}",
        "",
        f"Trained by peft-tags {__version__} from `{m['recipe']}` (resolved recipe: `recipe.yaml`).",
        "",
        "| | |", "|---|---|",
        f"| task | {tasks.get(recipe.task.type).card_line(recipe, m)} |",
        f"| data | train `{recipe.data.train}`, dev `{recipe.data.dev}`, test `{recipe.data.test}` |",
        f"| trainable parameters | adapter {p['adapter']:,} + backbone {p['backbone']:,} + head {p['head']:,} = {p['trainable']:,} ({p['trainable_pct']}% of {p['all']:,}) |",
        f"| test micro P / R / F1 | {test.get('micro_precision', float('nan')):.4f} / {test.get('micro_recall', float('nan')):.4f} / {test.get('micro_f1', float('nan')):.4f} |",
        f"| test macro F1 | {test.get('macro_f1', float('nan')):.4f} |",
        *([f"| test example-based F1 | {test['example_f1']:.4f} |"] if "example_f1" in test else []),
        f"| best dev epoch | {m['best']['epoch'] if m['best'] else '-'} |",
        f"| training | {m['train_seconds']} s, {m['train_titles_per_s']} titles/s, {m['processes']} process(es) on {m['device']}, precision {m['mixed_precision']} |",
        "",
        "## Use",
        "",
        "```python",
        "from peft_tags import Tagger",
        f"Tagger.load('{recipe.output.dir}').tag(['<a product title>'])",
        "```",
        "",
        "or `peft-tags predict <this directory> \"<title>\"`. The adapter files are standard PEFT:",
        "`PeftModel.from_pretrained(AutoModelForTokenClassification.from_pretrained(<backbone>, "
        "num_labels=<labels.json: num_outputs>), <this directory>)` restores adapter and head.",
        *([note] if (note := methods.get(recipe.method.name).card_note) else []),
        "",
    ]
    return "\n".join(lines)
