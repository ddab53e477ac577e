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

    task = tasks.of_recipe(recipe)
    name = recipe.backbone.name
    base = ALIASES[name].hub_id if name in ALIASES else (name if _hub_id(name) else "")
    data = (getattr(recipe.data, "hub", None) or PurePosixPath(str(recipe.data.train)).parent.name
            or str(recipe.data.train))
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


def model_card(recipe: Recipe, m: dict, meta: dict | None = None) -> str:
    """The card; ``meta``: the run's labels.json (type names, head size)."""
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
        f"| task | {tasks.of_recipe(recipe).card_line(recipe, m)} |",
        *([f"| type names | {', '.join(f'{k} {v}' for k, v in names.items())} |"]
          if (names := {k: v for k, v in ((meta or {}).get("type_names") or {}).items() if k != v}) else []),
        f"| data | train `{recipe.data.train}`, dev `{recipe.data.dev}`, test `{recipe.data.test}` |",
        f"| trainable parameters | adapter {p['adapter']:,} + backbone {p['backbone']:,} + head {p['head']:,} = {p['trainable']:,} ({p['trainable_pct']}% of {p['all']:,}) |",
        f"| test micro P / R / F1 | {test.get('micro_precision', float('nan')):.4f} / {test.get('micro_recall', float('nan')):.4f} / {test.get('micro_f1', float('nan')):.4f} |",
        f"| test macro F1 | {test.get('macro_f1', float('nan')):.4f} |",
        *([f"| test example-based F1 | {test['example_f1']:.4f} |"] if "example_f1" in test else []),
        f"| best dev epoch | {m['best']['epoch'] if m['best'] else '-'} |",
        *([f"| early stopping | after epoch {stop['epoch']} of {recipe.training.epochs} (step {stop['step']}): "
           f"{recipe.training.early_stopping_patience} dev evaluation(s) without improvement |"]
          if (stop := m.get("stopped_early")) else []),
        f"| training | {m['train_seconds']} s, {m['train_titles_per_s']} titles/s, {m['processes']} process(es) on {m['device']}, precision {m['mixed_precision']} |",
        "",
        "## Use",
        "",
        "```python",
        "from peft_tags import Tagger",
        f"Tagger.load('{recipe.output.dir}').tag(['<a product title>'])",
        "```",
        "",
        "or `peft-tags predict <this directory> \"<title>\"`.",
        "",
        *_stock_use(recipe, meta or {}),
        *([note] if (note := methods.get(recipe.method.name).card_note) else []),
        "",
    ]
    return "\n".join(lines)


def _stock_use(recipe: Recipe, meta: dict) -> list[str]:
    """How transformers and peft alone load the run (the adapter's ``base_model_name_or_path`` is
    the backbone's original id; ``hf/`` holds the config with the label names and the tokenizer)."""
    from .hub import original_id

    method = methods.get(recipe.method.name)
    task = tasks.of_recipe(recipe)
    base = original_id(recipe.backbone.name)
    if task.model_kind == "causal":
        return _stock_causal(recipe, method, base, meta)
    if method.saves == "model":
        return ["Stock transformers: `AutoModelForTokenClassification.from_pretrained('<this directory>/model')` "
                "(label names in its config)."]
    if method.saves != "adapter":
        return []
    n = meta.get("num_outputs", "<labels.json: num_outputs>")
    lines = [
        f"Stock transformers and peft: the adapter names its backbone `{base}` (`adapter_config.json`; the exact "
        "weights this run was trained on and their sha256 are in `backbone.json`), and `hf/` holds the config "
        "with the head's label names and the tokenizer:",
        "",
        "```python",
        *(["from transformers import AutoConfig, AutoModelForTokenClassification, pipeline",
           "run = '<this directory>'",
           "model = AutoModelForTokenClassification.from_pretrained(run, config=AutoConfig.from_pretrained(run + '/hf'))",
           *([f"tagger = pipeline('{task.pipeline_tag}', model=model, tokenizer=run + '/hf')"] if task.pipeline_tag
             else []),
           f"# or: peft.AutoPeftModelForTokenClassification.from_pretrained(run, num_labels={n})"]
          if not method.merge_refusal else  # adds computation: only peft builds it (transformers' integration does not)
          ["from peft import AutoPeftModelForTokenClassification",
           f"model = AutoPeftModelForTokenClassification.from_pretrained('<this directory>', num_labels={n})"]),
        "```",
        "",
        "The head's outputs are per token; peft-tags turns them into tags (" + task.help + ")"
        + ("." if task.pipeline_tag else "; they are span-head features, not labels, so no stock pipeline reads "
           "them as tags: tag with `peft-tags predict` or `peft_tags.predict.Tagger`."),
    ]
    if task.hf_problem_type and not method.merge_refusal:
        lines.append("`peft-tags export <this directory> <dest>` writes it as a `*ForSequenceClassification` "
                     "(`problem_type` " + task.hf_problem_type + ", the tuned thresholds in "
                     "its config) that `AutoModelForSequenceClassification.from_pretrained(dest + '/model', "
                     "trust_remote_code=True)` and `pipeline('text-classification', ...)` load.")
    if recipe.backbone.name != base and not base.startswith("/"):
        lines.append(f"`{recipe.backbone.name}` is peft-tags' offline copy of `{base}`; with the original weights "
                     "the outputs differ slightly from the trained ones (see `backbone.json`).")
    return lines


def _stock_causal(recipe: Recipe, method, base: str, meta: dict) -> list[str]:
    """A generation run: a causal language model (with its adapter) and the prompt it was trained on."""
    load = ("AutoModelForCausalLM.from_pretrained(run + '/model')" if method.saves == "model"
            else "AutoPeftModelForCausalLM.from_pretrained(run)")
    lines = [
        f"Stock transformers and peft: the model is `{base}`" + (" (fine-tuned in full, in `model/`)"
                                                              if method.saves == "model" else
                                                              " with this adapter (`adapter_config.json`)")
        + "; `hf/` holds its tokenizer. It answers the prompt made from `labels.json` (`instruction`, in the tokenizer's chat "
        "template where `chat_template` is true) with `type: value; ...`:",
        "",
        "```python",
        *(["from peft import AutoPeftModelForCausalLM"] if method.saves != "model" else
          ["from transformers import AutoModelForCausalLM"]),
        "from transformers import AutoTokenizer",
        "run = '<this directory>'",
        f"model = {load}",
        "tokenizer = AutoTokenizer.from_pretrained(run + '/hf')",
        "```",
        "",
        "peft-tags parses the answer and places each value in the title (`peft-tags predict`, "
        "`peft_tags.predict.Tagger`).",
    ]
    if recipe.backbone.name != base and not base.startswith("/"):
        lines.append(f"`{recipe.backbone.name}` is peft-tags' offline copy of `{base}` (de-quantised from a GGUF "
                     "file; see `backbone.json`).")
    return lines
