"""A tiny LoRA run's first losses are pinned: a silent change in the maths (data order, head
initialisation, loss, optimizer, schedule) shows here before it shows in a benchmark.

The values were recorded on the CPU with torch 2.13 (tiny backbone, toy data, seed 7); a change
that moves them must say why in its commit, and update them.
"""
from __future__ import annotations

import pytest

from conftest import write_recipe
from peft_tags.cli import main as cli_main

FIRST_LOSSES = [2.077491, 2.042551, 2.021025, 1.857811, 1.853327, 1.761831]


def test_the_first_six_losses_of_a_tiny_lora_run_are_unchanged(tmp_path, tiny_backbone, toy_data, monkeypatch):
    from peft_tags.tasks.tagging import TaggingTask

    seen = []
    loss = TaggingTask.loss

    def recording(self, logits, batch):
        value = loss(self, logits, batch)
        seen.append(value.item())
        return value

    monkeypatch.setattr(TaggingTask, "loss", recording)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", epochs=1)
    assert cli_main(["train", str(recipe)]) == 0
    assert seen[:6] == pytest.approx(FIRST_LOSSES, rel=1e-4, abs=1e-5)
