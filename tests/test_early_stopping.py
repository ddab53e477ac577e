"""training.early_stopping_patience: the run stops on a dev plateau, says so (log, metrics.json,
model card), keeps the best weights, needs a dev split, and stops at the same point after a
crash and a resume as without one.

A min_delta of 1 makes every evaluation after the first a non-improvement (F1 cannot rise by
more than 1), so the stopping point does not depend on how well the toy model learns."""
from __future__ import annotations

import json

import pytest

from conftest import write_recipe
from helpers import cli_fails, snapshot, train_in_subprocess
from peft_tags.cli import main as cli_main
from peft_tags.preflight import latest_checkpoint

# 160 titles / 16 = 10 optimizer steps per epoch; patience 2 and min_delta 1: epoch 1 counts,
# epochs 2 and 3 do not, so the run stops after epoch 3 (step 30) of 4
PLATEAU = {"epochs": 4, "batch_size": 16, "early_stopping_patience": 2, "early_stopping_min_delta": 1.0}


def test_a_plateau_stops_the_run_and_the_best_weights_are_kept(tmp_path, tiny_backbone, toy_data, capsys):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, out, **PLATEAU)
    assert cli_main(["train", str(recipe)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3]
    # min_delta only counts patience: the best weights are still those of the highest dev micro-F1
    best = max(m["history"], key=lambda h: h["micro_f1"])
    assert m["best"] == {"epoch": best["epoch"], "step": best["step"], "micro_f1": best["micro_f1"]}
    assert m["dev_micro_f1"] == pytest.approx(best["micro_f1"])
    assert m["stopped_early"] == {"epoch": 3, "step": 30, "best_epoch": best["epoch"]}
    err = capsys.readouterr().err
    assert err.count("early stopping after epoch 3 of 4 (step 30): 2 evaluation(s) without") == 1, err[-2000:]
    assert "| early stopping | after epoch 3 of 4 (step 30): 2 dev evaluation(s) without improvement |" in (
        (out / "README.md").read_text())


def test_patience_running_out_at_the_last_epoch_is_no_early_stop(tmp_path, tiny_backbone, toy_data):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, out, **{**PLATEAU, "epochs": 3})
    assert cli_main(["train", str(recipe)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3] and m["stopped_early"] is None
    assert "early stopping" not in (out / "README.md").read_text()


def test_early_stopping_needs_a_dev_split(tmp_path, tiny_backbone, toy_data, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", **PLATEAU)
    before = snapshot(tmp_path)
    cli_fails(["validate", recipe, "--set", "data.dev=null"], capsys, "training.early_stopping_patience", "data.dev")
    cli_fails(["train", recipe, "data.dev=null"], capsys, "training.early_stopping_patience", "data.dev")
    assert snapshot(tmp_path) == before
    with pytest.raises(Exception, match=r"training\.early_stopping_patience: must be >= 1, got 0"):
        from peft_tags.recipe import load_recipe

        load_recipe(recipe, ["training.early_stopping_patience=0"])


@pytest.mark.slow  # 42 s; test_a_run_resumed_after_it_stopped_trains_no_further stays in the default run
def test_a_resumed_run_stops_where_an_uninterrupted_one_does(tmp_path, tiny_backbone, toy_data):
    """Killed in epoch 3 after two evaluations (one without improvement), resumed from the
    checkpoint of step 24: the patience count comes back with the loop state, so the resumed run
    stops after epoch 3 too, not a whole patience later, with the same scores."""
    straight = write_recipe(tmp_path / "a.yaml", tiny_backbone, toy_data, tmp_path / "a", checkpoint_every_steps=4,
                            **PLATEAU)
    broken = write_recipe(tmp_path / "b.yaml", tiny_backbone, toy_data, tmp_path / "b", checkpoint_every_steps=4,
                          **PLATEAU)
    assert train_in_subprocess(straight).returncode == 0
    crashed = train_in_subprocess(broken, kill_at=26)  # killed after 25 steps
    assert crashed.returncode == -9
    assert latest_checkpoint(tmp_path / "b.work").name == "checkpoint-6"  # steps 4, 8, ..., 24
    resumed = train_in_subprocess(broken, "training.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr and "early stopping after epoch 3 of 4 (step 30)" in resumed.stderr
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in "ab")
    assert a["stopped_early"] == {"epoch": 3, "step": 30, "best_epoch": a["best"]["epoch"]}
    assert b["stopped_early"] == a["stopped_early"]
    assert b["history"] == a["history"] and b["scores"] == a["scores"]


def test_a_run_resumed_after_it_stopped_trains_no_further(tmp_path, tiny_backbone, toy_data, capsys):
    """Stopped, its last checkpoint written, and interrupted before it published: the resumed
    run starts from that checkpoint and publishes what the stopped run had."""
    from peft_tags.recipe import load_recipe
    from peft_tags.train import TrainRun

    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", checkpoint_every_steps=4,
                          **PLATEAU)
    run = TrainRun(load_recipe(recipe))
    run.setup()
    run.train()  # and no save(): as if killed just after the checkpoint of the stop
    run.lock.release()
    stopped = run.state
    assert stopped["stopped_early"] == {"epoch": 3, "step": 30, "best_epoch": stopped["best"]["epoch"]}
    assert latest_checkpoint(tmp_path / "out.work").name == "checkpoint-8"  # steps 4, ..., 28 and the stop at 30
    capsys.readouterr()
    assert cli_main(["train", str(recipe), "training.resume=true"]) == 0
    err = capsys.readouterr().err
    assert "epoch 3, batch 0, step 30" in err and "dev micro-F1" not in err, err[-2000:]
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["stopped_early"] == stopped["stopped_early"] and m["history"] == stopped["history"]
