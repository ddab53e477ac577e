"""Several processes the standard ways, on CPUs: ``accelerate launch`` (flags, a config file)
and ``torchrun``; the mixed precision a launcher configures against the recipe's; and a launch
that would start one process where several were asked for, refused in one line.

Each child gets its own HF_HOME, so no accelerate config of the machine's takes part.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_recipe
from helpers import REPO, child_env
from peft_tags import cli
from peft_tags.errors import UserError
from peft_tags.precision import choose_precision, hardware_precision

BIN = Path(sys.executable).parent
# --main_process_port 0: a free port, as other runs on this machine may hold accelerate's 29500
ACCELERATE = [str(BIN / "accelerate"), "launch", "--main_process_port", "0"]
TORCHRUN = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]
ONE_PROCESS = "accelerate launch started one process where several were asked for"


def _config(path: Path, **fields) -> Path:
    """An accelerate config file, as ``accelerate config`` writes one."""
    config = {"compute_environment": "LOCAL_MACHINE", "debug": False, "num_machines": 1, "machine_rank": 0,
              "main_training_function": "main", "rdzv_backend": "static", "same_network": True, "use_cpu": False,
              **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()), encoding="utf-8")
    return path


def _train(tmp_path: Path, launcher: list[str], *overrides: str,
           tiny_backbone: Path, toy_data: Path) -> tuple[subprocess.CompletedProcess, dict | None]:
    """One epoch of the toy recipe under ``launcher``: the finished process and metrics.json (None if absent)."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", epochs=1, batch_size=16)
    done = subprocess.run([*launcher, str(REPO / "run_recipe.py"), str(recipe), *overrides], capture_output=True,
                          text=True, env=child_env(HF_HOME=str(tmp_path / "hf")), cwd=tmp_path, timeout=600)
    metrics = tmp_path / "out" / "metrics.json"
    return done, json.loads(metrics.read_text()) if metrics.is_file() else None


# ----------------------------------------------------------------------------- two processes
def test_accelerate_launch_flags_start_two_processes_and_the_recipe_precision_wins(tmp_path, tiny_backbone, toy_data):
    launcher = [*ACCELERATE, "--multi_gpu", "--num_processes", "2", "--mixed_precision", "fp16"]
    done, m = _train(tmp_path, launcher, "training.mixed_precision=no", tiny_backbone=tiny_backbone, toy_data=toy_data)
    assert done.returncode == 0, done.stderr[-3000:]
    assert m["processes"] == 2 and m["mixed_precision"] == "no"
    assert "2 process(es) on cpu" in done.stderr
    assert "precision no: as the recipe asks (training.mixed_precision), not accelerate launch's fp16" in done.stderr


@pytest.mark.slow  # 21 s; the launch flags test starts two processes in the default run
def test_an_accelerate_config_file_sets_processes_and_precision(tmp_path, tiny_backbone, toy_data):
    # bf16 autocast on a CPU without native bf16 is slow, but the toy model is tiny
    config = _config(tmp_path / "accelerate.yaml", distributed_type="MULTI_GPU", num_processes=2,
                     mixed_precision="bf16", main_process_port=0)
    done, m = _train(tmp_path, [*ACCELERATE, "--config_file", str(config)], tiny_backbone=tiny_backbone,
                     toy_data=toy_data)
    assert done.returncode == 0, done.stderr[-3000:]
    assert m["processes"] == 2 and m["mixed_precision"] == "bf16"  # the recipe's auto takes the config's
    assert "precision bf16: from accelerate launch (ACCELERATE_MIXED_PRECISION=bf16" in done.stderr


@pytest.mark.slow  # 19 s; as above
def test_torchrun_starts_two_processes_on_cpus(tmp_path, tiny_backbone, toy_data):
    done, m = _train(tmp_path, TORCHRUN, tiny_backbone=tiny_backbone, toy_data=toy_data)
    assert done.returncode == 0, done.stderr[-3000:]
    assert m["processes"] == 2 and m["mixed_precision"] == hardware_precision()[0]
    assert "2 process(es) on cpu" in done.stderr


# ----------------------------------------------------------------------------- one process for several
@pytest.mark.parametrize("how", ["--cpu", pytest.param("default config MULTI_CPU", marks=pytest.mark.slow)])
def test_a_launch_that_starts_one_process_for_two_is_one_line(how, tmp_path, tiny_backbone, toy_data):
    if how == "--cpu":
        launcher = [*ACCELERATE, "-q", "--cpu", "--num_processes", "2"]
    else:  # $HF_HOME/accelerate/default_config.yaml, read without --config_file
        _config(tmp_path / "hf" / "accelerate" / "default_config.yaml", distributed_type="MULTI_CPU", num_processes=2,
                mixed_precision="no", use_cpu=True)
        launcher = [*ACCELERATE, "-q"]
    done, m = _train(tmp_path, launcher, tiny_backbone=tiny_backbone, toy_data=toy_data)
    assert done.returncode != 0 and m is None
    ours = [line for line in done.stderr.splitlines() if ONE_PROCESS in line]
    assert len(ours) == 1 and "torchrun --nproc_per_node N" in ours[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out.work").exists()


# ----------------------------------------------------------------------------- the decisions, in-process
@pytest.mark.parametrize("requested, env, expected, why", [
    ("auto", "bf16", "bf16", "from accelerate launch (ACCELERATE_MIXED_PRECISION=bf16"),
    ("auto", "no", "no", "from accelerate launch (ACCELERATE_MIXED_PRECISION=no"),
    ("auto", None, hardware_precision()[0], hardware_precision()[1]),
    ("no", "bf16", "no", "as the recipe asks (training.mixed_precision), not accelerate launch's bf16"),
    ("bf16", "bf16", "bf16", "as the recipe asks (training.mixed_precision)"),
    ("fp16", None, "fp16", "as the recipe asks (training.mixed_precision)"),
])
def test_auto_precision_takes_the_launchers_and_an_explicit_one_wins(requested, env, expected, why, monkeypatch):
    if env is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", env)
    precision, reason = choose_precision(requested)
    assert precision == expected and reason.startswith(why), reason
    if requested == env:
        assert "not accelerate launch's" not in reason


def test_an_unknown_launcher_precision_is_one_line(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp17")
    with pytest.raises(UserError, match="ACCELERATE_MIXED_PRECISION='fp17' is not a mixed precision accelerate knows"):
        cli._join_launched_processes()


@pytest.mark.parametrize("env", [
    {"ACCELERATE_USE_CPU": "True"},  # accelerate launch --cpu --num_processes 2
    {"ACCELERATE_USE_CPU": "False"},  # accelerate launch --num_processes 2 without GPUs: not multi-GPU
])
def test_one_process_where_accelerate_launch_was_asked_for_several_is_refused(env, monkeypatch):
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in dict(env, ACCELERATE_DYNAMO_BACKEND="NO", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=ONE_PROCESS):
        cli._join_launched_processes()


@pytest.mark.parametrize("env, use_cpu", [
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "localhost"}, "true"),  # torchrun
    ({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}, "false"),  # torchrun --nproc_per_node 1
    ({}, "false"),  # python run_recipe.py
    ({"MASTER_ADDR": "10.0.0.1"}, "false"),  # not started by accelerate launch
])
def test_processes_without_gpus_join_on_the_cpu(env, use_cpu, monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "ACCELERATE_DYNAMO_BACKEND",
                 "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "false")  # restored after the test, whatever the code sets
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cli, "_has_accelerator", lambda: False)
    cli._join_launched_processes()
    assert os.environ["ACCELERATE_USE_CPU"] == use_cpu


def test_fp8_from_the_launcher_is_one_line(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(UserError, match="ACCELERATE_MIXED_PRECISION=fp8: peft-tags trains in no, fp16 or bf16"):
        cli._join_launched_processes()


@pytest.mark.parametrize("name", ["PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"])
def test_an_mpirun_launch_without_rank_is_refused(name, monkeypatch):
    """mpirun sets no RANK, so every process would take itself for the main one (lock, work folder)."""
    for var in ("WORLD_SIZE", "RANK", "ACCELERATE_DYNAMO_BACKEND", "MASTER_ADDR", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(name, "2")
    with pytest.raises(UserError, match="mpirun: peft-tags takes each process's number from RANK"):
        cli._join_launched_processes()
