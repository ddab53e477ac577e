"""Every method on the tiny backbone: it learns, it switches off, it counts right, it reloads.

For each method:
- a few optimizer steps on one batch, with the head frozen, lower the loss (so the adapter
  itself learns, not the head);
- with the adapter disabled the logits equal the untouched base model's;
- the trainable-parameter count matches the method's formula;
- a trained run saved to disk and loaded in a fresh process gives identical log-probabilities.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, write_recipe

D, INTER, LAYERS = 32, 64, 2  # the tiny backbone: hidden, feed-forward, layers

# name -> (recipe method name, options, adapter parameter formula)
METHODS = {
    "lora": ("lora", {"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
             LAYERS * 2 * 4 * (D + D)),  # r·(d_in + d_out) per wrapped matrix
    "adalora": ("adalora", {"init_r": 6, "target_r": 2, "target_modules": ["query", "value"]},
                LAYERS * 2 * 6 * (D + D + 1)),  # A, B and the singular values E, at init_r
    "ia3": ("ia3", {},
            LAYERS * (D + D + D + INTER)),  # key, value: output vectors; both output.dense: input vectors
    "bottleneck-houlsby": ("bottleneck", {"variant": "houlsby", "bottleneck_size": 4},
                           LAYERS * 2 * (2 * D * 4 + 4 + D)),  # down d·m + m, up m·d + d; two per block
    "bottleneck-houlsby-ln": ("bottleneck", {"variant": "houlsby", "bottleneck_size": 4, "layer_norms": True},
                              LAYERS * 2 * (2 * D * 4 + 4 + D)  # the adapters, and a weight and a bias
                              + (1 + 2 * LAYERS) * 2 * D),      # per LayerNorm: embeddings, two per block
    "bottleneck-pfeiffer": ("bottleneck", {"variant": "pfeiffer", "reduction_factor": 8},
                            LAYERS * (2 * D * 4 + 4 + D)),  # m = 32 / 8; one per block
    "prefix": ("prefix", {"num_virtual_tokens": 5},
               5 * LAYERS * 2 * D),  # a key and a value per virtual token and layer
    "prompt": ("prompt", {"num_virtual_tokens": 5},
               5 * D),  # one input embedding per virtual token
    "loha": ("loha", {"r": 2, "alpha": 4, "target_modules": ["query", "value"]},
             LAYERS * 2 * 2 * 2 * (D + D)),  # two rank-r pairs per wrapped matrix
}


def _batch(tiny_backbone, toy_data):
    from peft_tags.data import label_set, read_examples
    from peft_tags.model import load_tokenizer
    from peft_tags.tasks.tagging import TaggingCodec, collate

    examples = read_examples(toy_data / "toy" / "train.txt", "conll")[:16]
    tok = load_tokenizer(str(tiny_backbone))
    codec = TaggingCodec(tok, label_set(examples), 4, 64)
    batch = collate(codec.encode([e.text for e in examples], examples), tok.pad_token_id)
    return codec, batch


def _apply(tiny_backbone, codec, name):
    from peft_tags.model import apply_method, build_token_classifier
    from peft_tags.config.load import build_method as _build_method
    from peft_tags.config.validate import Problems as _Problems

    method, options, _ = METHODS[name]
    problems = _Problems()
    section = _build_method({"name": method, **options}, problems)
    assert section is not None, problems.items
    base = build_token_classifier(str(tiny_backbone), codec.num_outputs, seed=0)
    with torch.no_grad():  # a head that reads the features strongly: the frozen-head test then moves quickly
        base.classifier.weight.mul_(30)
    reference = copy.deepcopy(base).eval()
    model = apply_method(base, method, section.options, total_steps=20)
    return model, reference


@pytest.mark.parametrize("name", list(METHODS))
def test_adapter_learns_switches_off_and_counts_right(name, tiny_backbone, toy_data):
    from peft_tags.model import is_head_param, parameter_counts, token_logits
    from peft_tags.tasks.tagging import loss_fn

    codec, batch = _batch(tiny_backbone, toy_data)
    model, reference = _apply(tiny_backbone, codec, name)

    counts = parameter_counts(model)
    assert counts["adapter"] == METHODS[name][2]
    assert counts["head"] == D * codec.num_outputs + codec.num_outputs
    assert counts["backbone"] == 0

    for n, p in model.named_parameters():  # the adapter alone must lower the loss
        if is_head_param(n):
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    # vectors and prompts are few parameters with little leverage each: they take larger steps (as in practice)
    lr = 0.3 if METHODS[name][0] in ("ia3", "prefix", "prompt") else 3e-2
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.eval()  # no dropout: the loss curve is the adapter's alone
    losses = []
    for _ in range(12):
        logits = token_logits(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                              batch["input_ids"])
        loss = loss_fn(logits, batch["labels"], len(codec.labels))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    print(name, [round(x, 3) for x in losses])
    assert losses[-1] == min(losses) and losses[-1] < losses[0] - 0.02, losses

    with torch.no_grad():
        adapted = token_logits(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                               batch["input_ids"])
        with model.disable_adapter():
            off = token_logits(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                               batch["input_ids"])
        base = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not torch.allclose(adapted, base, atol=1e-4), "training changed nothing"
    torch.testing.assert_close(off, base, rtol=0, atol=1e-6)


def _quantized_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


# name -> (method, options, backbone options): every method of METHODS, and variants
ROUND_TRIP = {name: (m, opts, None) for name, (m, opts, _) in METHODS.items()}
ROUND_TRIP.update({
    "prefix-projection": ("prefix", {"num_virtual_tokens": 5, "prefix_projection": True, "encoder_hidden_size": 16}, None),
    "p_tuning": ("p_tuning", {"num_virtual_tokens": 4, "encoder_hidden_size": 16}, None),
    "lora-nf4": ("lora", METHODS["lora"][1], {"quantization": "nf4"}),  # 2 epochs: it trains after an evaluation
})


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory, tiny_backbone, tiny_backbone_64, toy_data):
    """One short training run per method; the log-probs of the live model after save()."""
    from peft_tags.tasks.tagging import predict_log_probs
    from peft_tags.recipe import load_recipe
    from peft_tags.train import TrainRun

    root = tmp_path_factory.mktemp("methods")
    runs = {}
    for name, (method, options, backbone) in ROUND_TRIP.items():
        if backbone and not _quantized_available():
            continue
        out = root / name
        model_dir = tiny_backbone_64 if backbone else tiny_backbone
        path = write_recipe(root / f"{name}.yaml", model_dir, toy_data, out, method=method, method_options=options,
                            backbone_options=backbone, epochs=2 if backbone else 1, lr=1e-2)
        run = TrainRun(load_recipe(path))
        run.setup()
        run.train()
        run.save()
        model = run.acc.unwrap_model(run.model)
        texts = [e.text for e in run.data["test"][:12]]
        scores = predict_log_probs(model, run.task.codec, run.task.codec.encode(texts), 4, torch.device("cpu"))
        runs[name] = (out, texts, scores)
    return runs


def test_round_trip_in_a_fresh_process(trained_runs, tmp_path):
    """Every method's output directory, loaded by a new interpreter, scores like the live model."""
    job = {name: {"dir": str(out), "texts": texts, "npz": str(tmp_path / f"{name}.npz")}
           for name, (out, texts, _) in trained_runs.items()}
    (tmp_path / "job.json").write_text(json.dumps(job, ensure_ascii=False), encoding="utf-8")
    script = (
        "import json, sys, numpy as np, torch\n"
        "from peft_tags.predict import Tagger\nfrom peft_tags.tasks.tagging import predict_log_probs\n"
        "job = json.load(open(sys.argv[1], encoding='utf-8'))\n"
        "for name, j in job.items():\n"
        "    t = Tagger.load(j['dir'], device='cpu')\n"
        "    s = predict_log_probs(t.model, t.codec, t.codec.encode(j['texts']), 4, torch.device('cpu'))\n"
        "    np.savez(j['npz'], *s)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "job.json")], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name, (out, texts, live) in trained_runs.items():
        loaded = np.load(job[name]["npz"])
        for i, expected in enumerate(live):
            np.testing.assert_allclose(loaded[f"arr_{i}"], expected, rtol=0, atol=1e-5, err_msg=name)
        assert (out / "adapter_config.json").is_file(), name
    if _quantized_available():
        assert "lora-nf4" in trained_runs


def test_adalora_makes_up_a_skipped_final_allocation(tiny_backbone, toy_data):
    """fp16 loss scaling can skip the optimizer step at which peft fixes the ranks; the next
    step must still fix them, to the target budget."""
    from peft_tags.methods import get
    from peft_tags.model import token_logits
    from peft_tags.tasks.tagging import loss_fn

    codec, batch = _batch(tiny_backbone, toy_data)
    model, _ = _apply(tiny_backbone, codec, "adalora")  # 20 steps: ranks fixed at step 14
    config = model.peft_config["default"]
    boundary = config.total_step - config.tfinal
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(1, config.total_step + 1):
        logits = token_logits(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                              batch["input_ids"])
        loss_fn(logits, batch["labels"], len(codec.labels)).backward()
        opt.step()
        if step != boundary:  # the skipped step
            get("adalora").on_step(model, step)
        opt.zero_grad()
    pattern = config.rank_pattern
    assert pattern is not None and sum(sum(v) for v in pattern.values()) == config.target_r * len(pattern)


@pytest.mark.parametrize("steps", [2, 3, 5, 14, 1000])
def test_adalora_schedule_scores_before_it_allocates(steps):
    from peft_tags.methods.adalora import AdaLoraOptions, schedule

    tinit, tfinal, total = schedule(AdaLoraOptions(), steps)
    boundary = total - tfinal
    assert total == steps and 0 <= tinit < boundary <= total and boundary >= 2  # step 1 scores importance
    if steps == 1000:
        assert (tinit, boundary) == (100, 700)


def test_adalora_on_two_steps_trains_and_fixes_ranks(tmp_path, tiny_backbone, toy_data):
    """The shortest run (the benchmark's smoke budget) allocates the budget once and finishes."""
    from conftest import write_recipe
    from peft_tags.cli import main as cli_main

    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", method="adalora",
                          method_options={"init_r": 4, "target_r": 2, "target_modules": ["query", "value"]}, epochs=1,
                          batch_size=16)
    assert cli_main(["train", str(recipe), "data.max_train_examples=32"]) == 0
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    ranks = [sum(v) for v in config["rank_pattern"].values()]
    assert sum(ranks) == 2 * len(ranks)  # average rank target_r


def test_adalora_on_one_step_is_a_clear_error(tmp_path, tiny_backbone, toy_data, capsys):
    from conftest import write_recipe
    from peft_tags.cli import main as cli_main

    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", method="adalora",
                          method_options={"init_r": 4, "target_r": 2}, epochs=1, batch_size=16)
    capsys.readouterr()
    rc = cli_main(["train", str(recipe), "data.max_train_examples=16"])
    from test_errors import _assert_clean_failure
    _assert_clean_failure(rc, capsys.readouterr().err, "adalora needs at least 2 optimizer steps (one to score", tmp_path)


# recipe key -> (default, peft config field or None for a key of our own), in field order
OPTION_KEYS = {
    "lora": {"r": (8, "r"), "alpha": (16.0, "lora_alpha"), "dropout": (0.1, "lora_dropout"),
             "target_modules": (["query", "value"], "target_modules")},
    "adalora": {"init_r": (12, "init_r"), "target_r": (8, "target_r"), "alpha": (32.0, "lora_alpha"),
                "dropout": (0.1, "lora_dropout"), "target_modules": (None, "target_modules"),
                "budget_start": (0.1, None), "budget_end": (0.7, None), "allocate_every": (10, "deltaT"),
                "beta1": (0.85, "beta1"), "beta2": (0.85, "beta2"), "orth_reg_weight": (0.5, "orth_reg_weight")},
    "bottleneck": {"variant": ("houlsby", "variant"), "bottleneck_size": (None, "bottleneck_size"),
                   "reduction_factor": (16.0, "reduction_factor"), "activation": ("relu", "activation"),
                   "scaling": (1.0, "scaling"), "dropout": (0.0, "dropout"), "init_std": (0.01, "init_std"),
                   "layer_norms": (False, None), "target_modules": (None, "target_modules")},
}


@pytest.mark.parametrize("name", list(OPTION_KEYS))
def test_options_derive_from_the_peft_config_with_our_keys_and_defaults(name):
    """The recipe keys, their order and defaults stay ours whatever peft's defaults are; each
    key sets its peft field, with its help and (unless a key says otherwise) its type."""
    import dataclasses
    import typing

    from peft_tags import methods

    module = __import__(f"peft_tags.methods.{name}", fromlist=["OPTIONS"])
    cls, spec = methods.get(name).options_cls, module.OPTIONS
    assert getattr(module, cls.__name__) is cls and cls.__module__ == module.__name__  # importable, picklable
    keys = OPTION_KEYS[name]
    assert dataclasses.asdict(cls()) == {k: default for k, (default, _) in keys.items()}
    assert [f.name for f in dataclasses.fields(cls)] == list(keys)
    assert {k: s.field for k, s in spec.keys.items()} == {k: field for k, (_, field) in keys.items()}
    config_fields = {f.name: f for f in dataclasses.fields(spec.config_class())}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        assert f.metadata["help"], f.name
        source = config_fields.get(spec.keys[f.name].field)
        if source is not None and spec.keys[f.name].type is None:
            assert hints[f.name] == typing.get_type_hints(spec.config_class())[source.name], f.name
    config = spec.config(cls(), modules_to_save=["classifier"], **({"total_step": 10} if name == "adalora" else {}))
    for key, (default, field) in keys.items():
        if field is not None:
            value = getattr(config, field)
            assert (set(value) if isinstance(value, set) else value) == (set(default) if isinstance(default, list) else default)


def test_a_peft_refusal_names_the_recipe_key():
    from peft_tags.methods import adalora, lora

    assert lora.OPTIONS.rejected(ValueError("`lora_alpha` must be > 0"))[0] == "alpha"
    key, text = adalora.OPTIONS.rejected(ValueError("`orth_reg_weight` should be greater than or equal to 0"))
    assert key == "orth_reg_weight" and text.startswith("peft AdaLoraConfig rejects these options: ")
    assert lora.OPTIONS.rejected(ValueError("something else"))[0] == "name"
