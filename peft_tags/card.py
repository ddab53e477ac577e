"""The model card (README.md) of an output directory: what was trained, how well, and how to load it."""
from __future__ import annotations

from . import methods, tasks
from .version import __version__
from .config import Recipe


def model_card(recipe: Recipe, m: dict) -> str:
    p = m["parameters"]
    test = m["scores"].get("test", {})
    lines = [
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
