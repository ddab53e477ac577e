"""training.gradient_checkpointing: really on (each layer runs again in the backward pass), the
same loss and gradients as without it, with peft adapters, our own tuner and a quantised
backbone, a run trains with it, and a method that cannot use it is refused before training."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from conftest import write_recipe
from helpers import cli_fails, snapshot

LORA = {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}
CASES = {  # name -> (method, options, backbone options)
    "lora": ("lora", LORA, None),
    "bottleneck": ("bottleneck", {"variant": "houlsby", "bottleneck_size": 4}, None),
    "qlora": ("lora", LORA, {"quantization": "nf4"}),
}


def _setup(tmp_path, backbone, data, name: str, checkpointing: bool):
    from peft_tags.recipe import load_recipe
    from peft_tags.train import TrainRun

    method, options, backbone_options = CASES[name]
    out = tmp_path / f"{name}-{checkpointing}"
    recipe = write_recipe(tmp_path / f"{out.name}.yaml", backbone, data, out, method=method, method_options=options,
                          backbone_options=backbone_options, epochs=1, batch_size=16,
                          gradient_checkpointing=str(checkpointing).lower())
    run = TrainRun(load_recipe(recipe))
    run.setup()
    return run


def _one_step(run):
    """Loss, gradients and forward calls of the first layer's attention for the first batch,
    with dropout off (checkpointing recomputes a layer; dropout would have to draw alike)."""
    model = run.model
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    attention = next(m for n, m in model.named_modules() if n.endswith("encoder.layer.0.attention"))
    calls = []
    hook = attention.register_forward_hook(lambda *_: calls.append(1))
    model.train()
    batch = next(iter(run.loader))
    loss = run.task.loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch)
    loss.backward()
    hook.remove()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads, len(calls)


@pytest.mark.parametrize("name", list(CASES))
def test_one_step_matches_without_checkpointing_and_the_layers_run_twice(name, tmp_path, tiny_backbone,
                                                                         tiny_backbone_64, toy_data):
    from peft_tags.model import is_checkpointing

    if CASES[name][2] and importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed")
    backbone = tiny_backbone_64 if CASES[name][2] else tiny_backbone  # 4-bit CPU kernels want rows of >= 64
    results = {}
    for checkpointing in (False, True):
        run = _setup(tmp_path, backbone, toy_data, name, checkpointing)
        try:
            assert is_checkpointing(run.model) is checkpointing
            results[checkpointing] = _one_step(run)
            if checkpointing and name == "lora":  # and the whole (tiny) run trains and publishes with it
                run.train()
                run.save()
        finally:
            run.lock.release()
    (loss_off, grads_off, calls_off), (loss_on, grads_on, calls_on) = results[False], results[True]
    assert (calls_off, calls_on) == (1, 2)  # recomputed in the backward pass: checkpointing is on
    torch.testing.assert_close(loss_on, loss_off, rtol=1e-5, atol=1e-6)
    assert grads_on.keys() == grads_off.keys()
    # gradients reach the adapters inside the checkpointed layers, not only the head
    assert any("encoder.layer.0." in n for n in grads_on), sorted(grads_on)
    for n in grads_off:
        torch.testing.assert_close(grads_on[n], grads_off[n], rtol=1e-4, atol=1e-6, msg=n)
    if name == "lora":
        m = json.loads((tmp_path / "lora-True" / "metrics.json").read_text())
        assert [h["epoch"] for h in m["history"]] == [1] and m["test_micro_f1"] is not None


def test_a_method_that_cannot_checkpoint_is_refused_before_training(tmp_path, tiny_backbone, toy_data, capsys):
    # peft's prefix tuning hands a cache from layer to layer, which checkpointing cannot recompute
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", method="prefix",
                          method_options={"num_virtual_tokens": 5}, epochs=1)
    before = snapshot(tmp_path)
    cli_fails(["validate", recipe, "--set", "training.gradient_checkpointing=true"], capsys,
              "training.gradient_checkpointing", "method 'prefix'", "set training.gradient_checkpointing: false")
    cli_fails(["train", recipe, "training.gradient_checkpointing=true"], capsys, "training.gradient_checkpointing")
    assert snapshot(tmp_path) == before


def test_checkpointing_a_backbone_nothing_trains_in_is_refused(tmp_path, tiny_backbone, toy_data, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", method="head-only", epochs=1)
    cli_fails(["validate", recipe, "--set", "training.gradient_checkpointing=true"], capsys,
              "training.gradient_checkpointing", "method 'head-only' trains nothing inside the backbone")
