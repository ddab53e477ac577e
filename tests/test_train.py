"""End-to-end runs on the tiny backbone: output layout, round trip, resume, methods."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_recipe
from helpers import child_env, train_in_subprocess
from peft_tags.cli import main as cli_main
from peft_tags.preflight import latest_checkpoint

EXPECTED_FILES = {".peft-tags.json", "README.md", "adapter_config.json", "adapter_model.safetensors", "head.safetensors", "labels.json",
                  "recipe.yaml", "metrics.json", "dev_report.txt", "test_report.txt", "backbone.json", "hf"}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_backbone, toy_data):
    tmp = tmp_path_factory.mktemp("lora")
    recipe = write_recipe(tmp / "lora.yaml", tiny_backbone, toy_data, tmp / "out", epochs=4)
    assert cli_main(["train", str(recipe)]) == 0
    return tmp / "out"


def test_output_directory_holds_exactly_the_expected_files(lora_run):
    assert {p.name for p in lora_run.iterdir()} == EXPECTED_FILES
    assert not lora_run.with_name("out.work").exists(), "working directory left behind"


def test_metrics_report_scores_parameters_and_speed(lora_run):
    m = json.loads((lora_run / "metrics.json").read_text())
    p = m["parameters"]
    # LoRA r=4 on query and value of 2 layers, hidden 32: r * (d_in + d_out) per matrix
    assert p["adapter"] == 2 * 2 * 4 * (32 + 32)
    assert p["head"] == 32 * m_outputs(lora_run) + m_outputs(lora_run)
    assert p["backbone"] == 0 and p["trainable"] == p["adapter"] + p["head"]
    assert 0 < p["trainable_pct"] < 100
    assert m["train_titles_per_s"] > 0 and m["peak_memory_mb"] > 0
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3, 4]
    assert m["best"]["micro_f1"] == max(h["micro_f1"] for h in m["history"])
    assert m["dev_micro_f1"] == pytest.approx(m["best"]["micro_f1"])
    # the toy set is learnable: brands, colours, products and materials from small lists
    assert m["test_micro_f1"] > 0.5, m["test_micro_f1"]


def m_outputs(run: Path) -> int:
    return json.loads((run / "labels.json").read_text())["num_outputs"]


def test_round_trip_in_a_fresh_process_gives_identical_predictions(lora_run, toy_data):
    from peft_tags.predict import Tagger

    titles = ["华为黑色手机壳", "小米 硅胶支架新款", "晨光笔记本白色"]
    here = [[t.as_dict() for t in tags] for tags in Tagger.load(lora_run).tag(titles)]
    code = ("import json,sys; from peft_tags.predict import Tagger; "
            f"print(json.dumps([[t.as_dict() for t in ts] for ts in Tagger.load(sys.argv[1]).tag({titles!r})]))")
    out = subprocess.run([sys.executable, "-c", code, str(lora_run)], capture_output=True, text=True, env=child_env(),
                         check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here
    assert any(here), "the trained toy model tags nothing"


def test_plain_peft_load_restores_adapter_and_head(lora_run, tiny_backbone):
    from peft import PeftModel
    from transformers import AutoModelForTokenClassification

    from peft_tags.predict import Tagger

    n = m_outputs(lora_run)
    base = AutoModelForTokenClassification.from_pretrained(str(tiny_backbone), num_labels=n)
    plain = PeftModel.from_pretrained(base, str(lora_run)).eval()
    ours = Tagger.load(lora_run).model
    ids = torch.tensor([[0, 5, 6, 7, 8, 2]])
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, ours(input_ids=ids).logits)


def test_predict_cli_prints_and_writes_jsonl(lora_run, tmp_path, capsys):
    assert cli_main(["predict", str(lora_run), "华为黑色手机壳"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("华为黑色手机壳\n")
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "小米白色保护套"}\n\n{"text": "得力金属支架"}\n', encoding="utf-8")
    dst = tmp_path / "out.jsonl"
    assert cli_main(["predict", str(lora_run), "--input", str(src), "--output", str(dst)]) == 0
    rows = [json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == ["小米白色保护套", "得力金属支架"]
    for r in rows:
        for tag in r["tags"]:
            assert r["text"][tag["start"]:tag["end"]] == tag["text"]


@pytest.mark.parametrize("method", ["full", "head-only"])
def test_other_methods_train_and_reload(method, tmp_path, tiny_backbone, toy_data):
    from peft_tags.predict import Tagger

    recipe = write_recipe(tmp_path / f"{method}.yaml", tiny_backbone, toy_data, tmp_path / "out", method=method, epochs=2)
    assert cli_main(["train", str(recipe)]) == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    if method == "head-only":
        assert m["parameters"]["adapter"] == m["parameters"]["backbone"] == 0
        assert not (tmp_path / "out" / "adapter_config.json").exists()
    else:
        assert m["parameters"]["trainable"] == m["parameters"]["all"]
        assert m["parameters"]["adapter"] == 0 and m["parameters"]["backbone"] > 0
        assert (tmp_path / "out" / "model" / "config.json").is_file()
    tagger = Tagger.load(tmp_path / "out")
    assert len(tagger.tag(["华为黑色手机壳"])) == 1


ADALORA = {"init_r": 6, "target_r": 2, "target_modules": ["query", "value"], "budget_start": 0.1, "budget_end": 0.5,
           "allocate_every": 1}


@pytest.mark.parametrize("method", ["lora", pytest.param("adalora", marks=pytest.mark.slow)])  # 40 s each
def test_resume_after_a_crash_ends_like_an_uninterrupted_run(method, tmp_path, tiny_backbone, toy_data):
    """Crash at step 7 (checkpoints every 3 steps), resume, compare with a straight run.

    AdaLoRA (40 steps: full rank to step 4, pruning to step 20) crashes while it prunes, so
    its allocator's running scores must come back from the checkpoint too."""
    opts = ADALORA if method == "adalora" else None
    straight = write_recipe(tmp_path / "a.yaml", tiny_backbone, toy_data, tmp_path / "a", method=method, method_options=opts,
                            epochs=2, checkpoint_every_steps=3)
    broken = write_recipe(tmp_path / "b.yaml", tiny_backbone, toy_data, tmp_path / "b", method=method, method_options=opts,
                          epochs=2, checkpoint_every_steps=3)
    assert train_in_subprocess(straight).returncode == 0
    crashed = train_in_subprocess(broken, kill_at=8)  # killed after 7 steps
    assert crashed.returncode == -9
    assert not (tmp_path / "b").exists(), "a crashed run must not leave an output directory"
    assert latest_checkpoint(tmp_path / "b.work").name == "checkpoint-2"  # steps 3 and 6
    resumed = train_in_subprocess(broken, "training.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["history"] == b["history"]
    assert a["scores"] == b["scores"]
    from safetensors.torch import load_file

    wa, wb = load_file(tmp_path / "a" / "adapter_model.safetensors"), load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_without_a_checkpoint_starts_from_the_beginning(tmp_path, tiny_backbone, toy_data, capsys):
    """A run killed before its first checkpoint (or before it began) resumes by starting over."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", epochs=1)
    assert cli_main(["train", str(recipe), "training.resume=true"]) == 0
    assert "training.resume: no checkpoint under" in capsys.readouterr().err
    assert (tmp_path / "out" / "metrics.json").is_file()


@pytest.mark.parametrize("method, extra", [pytest.param("lora", {}, id="lora"),
                                           pytest.param("adalora", {}, marks=pytest.mark.slow, id="adalora"),
                                           # FGM's clean backward skips the gradient sync; R-Drop doubles the batch
                                           pytest.param("lora", {"fgm_epsilon": 0.5, "rdrop_alpha": 1.0},
                                                        marks=pytest.mark.slow, id="lora-fgm-rdrop")])
def test_two_processes_with_ddp_over_gloo(method, extra, tmp_path, tiny_backbone, toy_data):  # default run: lora
    # 160 titles in batches of 7: 22 full batches and a short one, which must not be lost;
    # AdaLoRA also accumulates 2 batches per update, so its allocator sees 6 steps per epoch
    accum = 2 if method == "adalora" else 1
    recipe = write_recipe(tmp_path / "ddp.yaml", tiny_backbone, toy_data, tmp_path / "out", epochs=2, batch_size=7,
                          method=method, method_options=ADALORA if method == "adalora" else None, grad_accum=accum,
                          **extra)
    # accelerate's torchrun path; without GPUs run_recipe.py has Accelerate join the ranks on the CPUs
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", "0", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    done = train_in_subprocess(recipe, launcher=launcher)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["processes"] == 2
    # 23 batches over 2 processes = 12 batches per process per epoch
    assert m["history"][-1]["step"] == 24 // accum
    assert "2 process(es)" in done.stderr
    if method == "adalora":  # the budget was spent: an average rank of target_r is left
        config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
        kept = sum(sum(v) for v in config["rank_pattern"].values())
        assert len(config["rank_pattern"]) == 4 and kept == 4 * ADALORA["target_r"]


def test_a_fresh_run_clears_leftovers_of_a_crashed_one(tmp_path, tiny_backbone, toy_data):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", epochs=2,
                          checkpoint_every_steps=5)
    crashed = train_in_subprocess(recipe, kill_at=12)
    assert crashed.returncode == -9 and latest_checkpoint(tmp_path / "out.work") is not None
    assert cli_main(["train", str(recipe)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.yaml"]


def test_resume_refuses_a_checkpoint_of_another_recipe(tmp_path, tiny_backbone, toy_data, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", epochs=2, checkpoint_every_steps=5)
    crashed = train_in_subprocess(recipe, kill_at=7)
    assert crashed.returncode == -9
    assert cli_main(["train", str(recipe), "training.resume=true", "training.lr=0.001"]) == 2
    assert "'training.lr' differs" in capsys.readouterr().err


def test_overwrite_replaces_the_output_and_leaves_no_temporaries(lora_run, tmp_path, tiny_backbone, toy_data):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", epochs=1)
    assert cli_main(["train", str(recipe)]) == 0
    first = (tmp_path / "out" / "metrics.json").read_text()
    assert cli_main(["train", str(recipe), "output.overwrite=true", "training.seed=8"]) == 0
    assert (tmp_path / "out" / "metrics.json").read_text() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.yaml"]


def test_incomplete_output_directory_is_refused(lora_run, tmp_path):
    import shutil

    from peft_tags.errors import UserError
    from peft_tags.predict import Tagger

    broken = tmp_path / "copy"
    shutil.copytree(lora_run, broken)
    (broken / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError, match="incomplete output of method 'lora'.*adapter_model.safetensors"):
        Tagger.load(broken)


def test_tagger_handles_empty_input_and_keeps_the_callers_rng(lora_run):
    from peft_tags.predict import Tagger

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tagger = Tagger.load(lora_run)
    assert torch.equal(torch.rand(3), expected)
    assert tagger.tag([]) == []
    assert tagger.tag([""]) == [[]]


def test_short_batch_comes_last_so_process_shards_stay_full():
    from peft_tags.sampler import LengthBucketBatches

    sampler = LengthBucketBatches(list(range(150)), batch_size=8, seed=1, bucketing=True)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = sampler.batches()
        assert [len(b) for b in batches[:-1]] == [8] * 18 and len(batches[-1]) == 6
        assert sorted(i for b in batches for i in b) == list(range(150))
    sampler.set_epoch(0)
    first = sampler.batches()
    sampler.set_epoch(1)
    assert sampler.batches() != first


def test_adalora_allocates_once_per_optimizer_step_under_accumulation(tmp_path, tiny_backbone, toy_data, monkeypatch):
    from peft.tuners.adalora.model import AdaLoraModel

    from peft_tags.recipe import load_recipe
    from peft_tags.train import TrainRun

    steps = []
    original = AdaLoraModel.update_and_allocate

    def spy(self, global_step):
        steps.append(global_step)
        return original(self, global_step)

    monkeypatch.setattr(AdaLoraModel, "update_and_allocate", spy)
    # 160 titles / 8 = 20 batches; 3 per update -> 7 updates per epoch (the last one of 2 batches)
    path = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", method="adalora",
                        method_options=ADALORA, epochs=2, grad_accum=3)
    run = TrainRun(load_recipe(path))
    run.setup()
    assert run.total_steps == 14
    config = run.acc.unwrap_model(run.model).peft_config["default"]
    assert (config.total_step, config.tinit, config.tfinal) == (14, 1, 7)  # 10% and 50% of 14 steps
    run.train()
    assert steps == list(range(1, 15))
    run.save()
    saved = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert sum(sum(v) for v in saved["rank_pattern"].values()) == 4 * ADALORA["target_r"]


def test_dev_and_test_can_be_cut_to_their_first_examples(tmp_path, tiny_backbone, toy_data):
    from peft_tags.data import read_examples

    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", method="head-only", epochs=1)
    assert cli_main(["train", str(recipe), "data.max_dev_examples=7", "data.max_test_examples=5"]) == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for split, n in (("dev", 7), ("test", 5)):
        first = read_examples(toy_data / "toy" / f"{split}.txt", "conll", max_examples=n)
        assert m["alignment"][split]["spans"] == sum(len(e.spans) for e in first)
        assert m["scores"][split]["micro_f1"] is not None
