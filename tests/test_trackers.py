"""training.log_with: every tracker accelerate knows, refused before training when its package is
missing, and mlflow (offline, a file store under the run's logs/) read back through its own API."""
from __future__ import annotations

import json
import os

import pytest

from conftest import write_recipe
from helpers import cli_fails, snapshot
from peft_tags.cli import main as cli_main
from peft_tags.recipe import RecipeError, load_recipe


def test_log_with_takes_every_tracker_accelerate_knows_by_name(tmp_path, tiny_backbone, toy_data):
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    path = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out")
    for name in [*LOGGER_TYPE_TO_CLASS, "all"]:
        assert load_recipe(path, [f"training.log_with={name}"]).training.log_with == name
    assert load_recipe(path, ["training.log_with=none"]).training.log_with is None
    with pytest.raises(RecipeError, match=r"training\.log_with: must be one of .*mlflow.*; got 'mlfow' "
                                          r"\(did you mean 'mlflow'\?\)"):
        load_recipe(path, ["training.log_with=mlfow"])
    with pytest.raises(RecipeError, match=r"training\.log_with: must be one of .*; got \['tensorboard', 'mlflow'\]"):
        load_recipe(path, ["training.log_with=[tensorboard,mlflow]"])  # one name (or all), not a list


def test_a_tracker_that_is_not_installed_is_refused_before_anything_is_written(tmp_path, tiny_backbone, toy_data,
                                                                                 capsys, monkeypatch):
    from accelerate import tracking
    from accelerate.utils import LoggerType

    # accelerate itself would drop the missing tracker without a word and train unlogged
    monkeypatch.setattr(tracking, "get_available_trackers", lambda: [LoggerType.TENSORBOARD])
    path = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", epochs=1)
    before = snapshot(tmp_path)
    for command in (["validate", path, "--set"], ["train", path]):
        cli_fails([*command, "training.log_with=mlflow"], capsys, "training.log_with", "'mlflow'", "pip install mlflow")
        cli_fails([*command, "training.log_with=comet_ml"], capsys, "training.log_with", "pip install comet-ml")
    assert snapshot(tmp_path) == before


def _mlflow_client(monkeypatch, store):
    """An mlflow client on the file store ``store``."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # recent mlflow opens file stores only when told to
    return MlflowClient(tracking_uri=store.as_uri())


@pytest.fixture
def mlflow_env(monkeypatch, tmp_path):
    """mlflow installed, no store named by the environment, no telemetry; run from ``tmp_path``."""
    pytest.importorskip("mlflow")
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # no test reaches the network
    monkeypatch.chdir(tmp_path)  # where mlflow's default store would appear


def test_mlflow_logs_to_a_file_store_in_the_runs_logs(tmp_path, tiny_backbone, toy_data, monkeypatch, mlflow_env):
    out = tmp_path / "out"
    path = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, out, epochs=2, batch_size=16)
    assert cli_main(["train", str(path), "training.log_with=mlflow"]) == 0
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_ALLOW_FILE_STORE" not in os.environ, "environment kept"
    assert not out.with_name("out.work").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.yaml"]  # no mlruns/ or mlflow.db beside it
    store = out / "logs" / "mlruns"
    assert store.is_dir(), sorted(p.name for p in (out / "logs").iterdir())

    client = _mlflow_client(monkeypatch, store)
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "out"
    assert run.data.params["training.lr"] == "0.005" and run.data.params["method.name"] == "lora"
    m = json.loads((out / "metrics.json").read_text())
    dev = client.get_metric_history(run.info.run_id, "dev/micro_f1")
    assert [(x.step, x.value) for x in dev] == [(h["step"], h["micro_f1"]) for h in m["history"]]
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    # 160 titles / 16 = 10 optimizer steps per epoch, one loss each
    assert sorted(x.step for x in loss) == list(range(1, m["history"][-1]["step"] + 1)) == list(range(1, 21))
    assert all(x.value > 0 for x in loss)
    assert len(client.get_metric_history(run.info.run_id, "train/lr")) == 20


def test_a_failed_run_ends_its_mlflow_run_in_its_own_store(tmp_path, tiny_backbone, toy_data, monkeypatch, mlflow_env):
    """Left open, the run would be ended by mlflow at exit, in its default store in the working
    directory by then (a stray mlflow.db)."""
    from peft_tags.train import TrainRun

    def bug(self):
        raise RuntimeError("a bug in the loop")

    monkeypatch.setattr(TrainRun, "_checkpoint", bug)
    path = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", epochs=1, batch_size=16)
    with pytest.raises(RuntimeError, match="a bug in the loop"):
        cli_main(["train", str(path), "training.log_with=mlflow"])
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_ALLOW_FILE_STORE" not in os.environ
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.work", "r.yaml"]
    client = _mlflow_client(monkeypatch, tmp_path / "out.work" / "logs" / "mlruns")
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "train/loss")) == 10
