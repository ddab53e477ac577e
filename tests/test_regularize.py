"""Training regularisers of the recipe: R-Drop (``training.rdrop_alpha``) and FGM
(``training.fgm_epsilon``), for every task and method."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from conftest import write_recipe
from helpers import recipe_problems
from peft_tags.cli import main as cli_main

GP = {"type": "tagging", "head": "global-pointer", "pointer_size": 8}
ML = {"type": "multilabel"}
TASKS = {"bio": None, "global-pointer": GP, "multilabel": ML}


def _setup(tmp_path, tiny_backbone, data, task_options, **training):
    """A LoRA model with its task, and a batch of training titles."""
    from accelerate import Accelerator

    from peft_tags.data import read_examples
    from peft_tags.model import apply_method, build_token_classifier, load_tokenizer
    from peft_tags.recipe import load_recipe
    from peft_tags.tasks import make_task

    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_backbone, data, tmp_path / "out",
                                      task_options=task_options, **training))
    fmt, rel = ("tags", "toy-tags/train.jsonl") if task_options == ML else ("conll", "toy/train.txt")
    train = read_examples(data / rel, fmt)[:8]
    tok = load_tokenizer(str(tiny_backbone))
    task = make_task(recipe, tok, train)
    model = build_token_classifier(str(tiny_backbone), task.num_outputs, seed=0)
    task.init_head(model, task.encode(train))
    model = apply_method(model, "lora", recipe.method.options)
    batch = task.collate(task.encode(train), tok.pad_token_id)
    return Accelerator(cpu=True), model, task, recipe.training, batch


def _grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("kind", list(TASKS))
def test_divergence_is_symmetric_zero_for_equal_outputs_and_positive_otherwise(kind, tmp_path, tiny_backbone, toy_tags):
    acc, model, task, _, batch = _setup(tmp_path, tiny_backbone, toy_tags, TASKS[kind])
    model.eval()
    a = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    b = a + 0.5 * torch.randn_like(a)
    assert float(task.divergence(a, a, batch)) == pytest.approx(0.0, abs=1e-6)
    assert float(task.divergence(a, b, batch)) > 1e-4
    assert float(task.divergence(a, b, batch)) == pytest.approx(float(task.divergence(b, a, batch)), rel=1e-5)


@pytest.mark.parametrize("kind", list(TASKS))
def test_rdrop_without_dropout_is_the_plain_loss_and_with_dropout_adds_a_positive_term(kind, tmp_path, tiny_backbone,
                                                                                      toy_tags):
    from peft_tags.regularize import StepLoss

    acc, model, task, t, batch = _setup(tmp_path, tiny_backbone, toy_tags, TASKS[kind], rdrop_alpha=1.0)
    model.eval()  # no dropout: both passes agree
    plain = dataclasses.replace(t, rdrop_alpha=0.0)
    loss = StepLoss(acc, model, task, plain)(batch)
    g_plain = _grads(model)
    model.zero_grad()
    loss_rdrop = StepLoss(acc, model, task, t)(batch)
    assert float(loss_rdrop) == pytest.approx(float(loss), rel=1e-5)
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, g_plain[name], rtol=1e-4, atol=1e-6)
    model.train()  # dropout: the passes differ and the divergence is paid
    torch.manual_seed(0)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    both = model(input_ids=torch.cat([ids, ids]), attention_mask=torch.cat([mask, mask])).logits
    assert float(task.divergence(*both.chunk(2), batch)) > 0


@pytest.mark.parametrize("kind", list(TASKS))
def test_fgm_adds_the_gradient_of_an_adversarial_pass_and_leaves_the_embeddings_alone(kind, tmp_path, tiny_backbone,
                                                                                     toy_tags):
    from peft_tags.regularize import StepLoss

    acc, model, task, t, batch = _setup(tmp_path, tiny_backbone, toy_tags, TASKS[kind])
    model.eval()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    before = model(input_ids=ids, attention_mask=mask).logits.detach()
    clean = StepLoss(acc, model, task, t)(batch)
    g_clean = _grads(model)
    model.zero_grad()
    # a vanishing perturbation: the adversarial pass is the clean one again, so the gradient doubles
    tiny = StepLoss(acc, model, task, dataclasses.replace(t, fgm_epsilon=1e-7))
    assert float(tiny(batch)) == pytest.approx(float(clean), rel=1e-6)
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, 2 * g_clean[name], rtol=1e-3, atol=1e-6)
    tiny.close()
    model.zero_grad()
    # a real one moves each title's embeddings by epsilon uphill: the adversarial loss is higher
    step = StepLoss(acc, model, task, dataclasses.replace(t, fgm_epsilon=1.0))
    seen = {}
    original = task.loss

    def spy(logits, b):
        value = original(logits, b)
        seen.setdefault("losses", []).append(float(value))
        return value

    task.loss = spy
    step(batch)
    task.loss = original
    assert len(seen["losses"]) == 2 and seen["losses"][1] > seen["losses"][0]
    step.close()
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits.detach(), before)


@pytest.mark.parametrize("kind, extra", [("bio", {"rdrop_alpha": 1.0, "fgm_epsilon": 0.5}),
                                         ("global-pointer", {"rdrop_alpha": 0.5}),
                                         ("multilabel", {"fgm_epsilon": 0.5})])
def test_a_run_trains_with_the_regularisers_and_records_its_speed(kind, extra, tmp_path, tiny_backbone, toy_tags):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_tags, tmp_path / "out", task_options=TASKS[kind],
                          epochs=2, lr=1e-2, **extra)
    assert cli_main(["train", str(recipe)]) == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["train_titles_per_s"] > 0 and m["test_micro_f1"] > 0.3, m["test_micro_f1"]
    resolved = (tmp_path / "out" / "recipe.yaml").read_text()
    for key, value in extra.items():
        assert f"{key}: {value}" in resolved


@pytest.mark.parametrize("override", ["training.rdrop_alpha=-1", "training.fgm_epsilon=-0.1"])
def test_negative_strengths_are_recipe_errors(override, tmp_path, tiny_backbone, toy_data):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out")
    problems = recipe_problems(recipe, [override])
    assert len(problems) == 1 and override.split("=")[0] in problems[0], problems
