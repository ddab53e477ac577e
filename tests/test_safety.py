"""Safe runs: nothing a user owns is deleted, one run per output, swaps that survive a kill,
resume state without pickle, and every check done before the first step (also by validate)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_recipe
from helpers import REPO, one_line, snapshot, train_in_subprocess
from peft_tags import owned
from peft_tags.cli import main as cli_main
from peft_tags.lock import OutputLock
from peft_tags.preflight import latest_checkpoint


@pytest.fixture
def user_folder(tmp_path) -> Path:
    d = tmp_path / "my-files"
    d.mkdir()
    (d / "thesis.txt").write_text("years of work")
    (d / "sub").mkdir()
    (d / "sub" / "photo.jpg").write_bytes(b"\xff\xd8")
    return d


# ----------------------------------------------------------------------------- overwrite
def test_overwrite_refuses_a_folder_peft_tags_did_not_write(tmp_path, tiny_backbone, toy_data, user_folder, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, user_folder, epochs=1)
    before = snapshot(tmp_path)
    assert cli_main(["train", str(recipe), "output.overwrite=true"]) == 2
    one_line(capsys.readouterr().err, "output.dir", str(user_folder), "not written by peft-tags")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["/", "home", "cwd", "repo", "data-root", "inside-data-root", "holds-data-root"])
def test_overwrite_refuses_protected_places(where, tmp_path, tiny_backbone, toy_data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = {"/": Path("/"), "home": Path.home(), "cwd": tmp_path, "repo": REPO, "data-root": toy_data,
              "inside-data-root": toy_data / "toy", "holds-data-root": toy_data.parent}[where]
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, target, epochs=1)
    before = snapshot(toy_data, tmp_path)
    assert cli_main(["train", str(recipe), "output.overwrite=true"]) == 2
    one_line(capsys.readouterr().err, "output.dir")
    assert snapshot(toy_data, tmp_path) == before


def test_a_new_output_inside_the_data_root_is_refused(tmp_path, tiny_backbone, toy_data, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, toy_data / "runs" / "x", epochs=1)
    assert cli_main(["validate", str(recipe)]) == 2
    one_line(capsys.readouterr().err, "output.dir", "inside the data root")
    assert not (toy_data / "runs").exists()


def test_overwrite_refuses_a_symbolic_link(tmp_path, tiny_backbone, toy_data, user_folder, capsys):
    link = tmp_path / "link"
    link.symlink_to(user_folder)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, link, epochs=1)
    assert cli_main(["train", str(recipe), "output.overwrite=true"]) == 2
    one_line(capsys.readouterr().err, "symbolic link")
    assert (user_folder / "thesis.txt").read_text() == "years of work" and link.is_symlink()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, tiny_backbone, toy_data) -> Path:
    tmp = tmp_path_factory.mktemp("small")
    recipe = write_recipe(tmp / "r.yaml", tiny_backbone, toy_data, tmp / "run", epochs=1)
    assert cli_main(["train", str(recipe)]) == 0
    return tmp / "run"


def test_export_and_derive_overwrite_only_their_own_folders(small_run, tmp_path, toy_data, user_folder, capsys):
    before = snapshot(tmp_path)
    assert cli_main(["export", str(small_run), str(user_folder), "--overwrite"]) == 2
    one_line(capsys.readouterr().err, str(user_folder), "not written by peft-tags")
    assert cli_main(["derive-tags", str(toy_data / "toy"), str(user_folder), "--types", "16", "--overwrite"]) == 2
    one_line(capsys.readouterr().err, str(user_folder), "not written by peft-tags")
    assert snapshot(tmp_path) == before
    # what they wrote themselves they replace, and leave nothing beside it
    for args in (["export", str(small_run), str(tmp_path / "e")], ["derive-tags", str(toy_data / "toy"), str(tmp_path / "d"),
                                                                    "--types", "16", "--min-count", "1"]):
        assert cli_main(args) == 0
        assert cli_main(args + ["--overwrite"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "e", "my-files"]


def test_output_names_with_glob_characters_touch_no_sibling(tmp_path, tiny_backbone, toy_data):
    for name in ("run-a", "runXb", ".run*.tmp-1", ".runa.peft-tags-new-1", "run*.work2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep").write_text("mine")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "run*?", epochs=1)
    assert cli_main(["train", str(recipe)]) == 0
    assert cli_main(["train", str(recipe), "output.overwrite=true"]) == 0
    for name in ("run-a", "runXb", ".run*.tmp-1", ".runa.peft-tags-new-1", "run*.work2"):
        assert (tmp_path / name / "keep").read_text() == "mine", name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["r.yaml", "run*?", "run-a", "runXb", ".run*.tmp-1", ".runa.peft-tags-new-1", "run*.work2"])


def test_a_foreign_work_folder_is_refused_not_cleared(tmp_path, tiny_backbone, toy_data, capsys):
    (tmp_path / "out.work").mkdir()
    (tmp_path / "out.work" / "notes.txt").write_text("mine")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", epochs=1)
    assert cli_main(["train", str(recipe)]) == 2
    one_line(capsys.readouterr().err, "out.work", "not written by peft-tags")
    assert (tmp_path / "out.work" / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- lock
def test_a_second_run_on_the_same_output_fails_fast_and_touches_nothing(tmp_path, tiny_backbone, toy_data, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", epochs=1)
    with OutputLock(tmp_path / "out"):  # the first run
        before = snapshot(tmp_path)
        tick = time.perf_counter()
        assert cli_main(["train", str(recipe)]) == 2
        line = one_line(capsys.readouterr().err, "output.dir", "in use by another run", f"pid {os.getpid()}")
        assert time.perf_counter() - tick < 30, line
        assert snapshot(tmp_path) == before
    assert not (tmp_path / "out.lock").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, tiny_backbone, toy_data):
    (tmp_path / "out.lock").write_text(json.dumps({"format": "peft-tags-lock/1", "pid": _dead_pid(), "host": "h",
                                                   "since": "then"}))
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", epochs=1)
    assert cli_main(["train", str(recipe)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.yaml"]


def test_a_file_in_the_lock_place_that_is_not_a_lock_is_left_alone(tmp_path, tiny_backbone, toy_data, capsys):
    (tmp_path / "out.lock").write_text("my shopping list")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", epochs=1)
    assert cli_main(["train", str(recipe)]) == 2
    one_line(capsys.readouterr().err, "out.lock", "not a peft-tags lock file")
    assert (tmp_path / "out.lock").read_text() == "my shopping list"


# ----------------------------------------------------------------------------- resume state
@pytest.fixture
def crashed(tmp_path, tiny_backbone, toy_data) -> Path:
    """A run killed (-9) before its 9th step, with checkpoints at steps 4 and 8."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out", epochs=2,
                          checkpoint_every_steps=4)
    assert train_in_subprocess(recipe, kill_at=9).returncode == -9
    return recipe


def test_resume_state_loads_without_running_code_and_a_damaged_file_is_one_line(crashed, capsys):
    """A checkpoint is accelerator.save_state's files (the model's trainable weights as
    safetensors; optimizer, schedule and random states as torch files that load weights-only,
    so nothing in them can run code) and peft-tags' own safetensors/JSON."""
    from accelerate.utils import load
    from safetensors import safe_open

    ckpt = latest_checkpoint(crashed.parent / "out.work")
    assert ckpt.name == "checkpoint-2"
    assert {p.suffix for p in ckpt.iterdir()} <= {".json", ".safetensors", ".bin", ".pkl"}, sorted(ckpt.iterdir())
    for path in ckpt.iterdir():
        if path.suffix in (".bin", ".pkl"):
            load(path, weights_only=True)  # torch's weights-only unpickler (numpy's RNG state allowed): data only
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert saved and all("lora_" in k or "classifier" in k for k in saved)  # trainable weights only, no backbone
    (ckpt / "optimizer.bin").write_bytes(b"\x80\x04not a pickle")
    assert cli_main(["train", str(crashed), "training.resume=true"]) == 2
    one_line(capsys.readouterr().err, "training.resume", "optimizer.bin")
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 7)
    assert cli_main(["train", str(crashed), "training.resume=true"]) == 2
    one_line(capsys.readouterr().err, "training.resume", "model.safetensors")


class _Planted:
    """A pickle that would create a file when unpickled with full unpickling."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_with_planted_code_is_refused_and_the_code_never_runs(crashed, tmp_path, capsys):
    import pickle

    ckpt = latest_checkpoint(crashed.parent / "out.work")
    planted = tmp_path / "planted"
    for victim in sorted(p for p in ckpt.iterdir() if p.suffix in (".bin", ".pkl")):
        original = victim.read_bytes()
        victim.write_bytes(pickle.dumps(_Planted(planted)))
        assert cli_main(["train", str(crashed), "training.resume=true"]) == 2
        one_line(capsys.readouterr().err, "training.resume", victim.name)
        assert not planted.exists(), f"unpickling {victim.name} ran code"
        victim.write_bytes(original)


def test_resume_refuses_changed_data_or_code_and_says_which(crashed, toy_data, capsys, monkeypatch):
    dev = toy_data / "toy" / "dev.txt"
    original = dev.read_bytes()
    try:
        dev.write_bytes(original + "新 O\n\n".encode())
        assert cli_main(["train", str(crashed), "training.resume=true"]) == 2
        one_line(capsys.readouterr().err, "data.dev", "changed")
    finally:
        dev.write_bytes(original)
    import peft_tags.preflight as pf

    monkeypatch.setattr(pf, "source_hash", lambda: "0" * 16)
    assert cli_main(["train", str(crashed), "training.resume=true"]) == 2
    one_line(capsys.readouterr().err, "code", "code.source")


# ----------------------------------------------------------------------------- recovery of half-done swaps
def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def _stage(dest: Path, role: str, pid: int, content: str, complete: bool = True) -> Path:
    d = dest.with_name(f".{dest.name}.peft-tags-{role}-{pid}")
    d.mkdir()
    owned.write_marker(d, "run", "x", complete=complete)
    (d / "f").write_text(content)
    return d


def _mine(dest: Path, content: str) -> None:
    owned.make_dir(dest, "run", "y")
    (dest / "f").write_text(content)


@pytest.mark.parametrize("state", ["before-first-rename", "between-renames", "after-renames", "unfinished-new",
                                   "old-without-new"])
def test_recover_finishes_or_rolls_back_every_half_done_swap(state, tmp_path):
    dest, pid = tmp_path / "out", _dead_pid()
    if state == "before-first-rename":
        _mine(dest, "old")
        _stage(dest, "new", pid, "new")
    elif state == "between-renames":
        _stage(dest, "old", pid, "old")
        _stage(dest, "new", pid, "new")
    elif state == "after-renames":
        _mine(dest, "new")
        _stage(dest, "old", pid, "old")
    elif state == "unfinished-new":
        _mine(dest, "old")
        _stage(dest, "new", pid, "half", complete=False)
    else:
        _stage(dest, "old", pid, "old")
    assert owned.recover(dest)
    want = "old" if state in ("unfinished-new", "old-without-new") else "new"
    assert (dest / "f").read_text() == want
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_recover_leaves_folders_of_live_processes_and_unmarked_ones(tmp_path):
    dest = tmp_path / "out"
    live = _stage(dest, "new", os.getppid(), "theirs")  # a process that is alive
    unmarked = tmp_path / f".out.peft-tags-new-{_dead_pid()}"
    unmarked.mkdir()
    (unmarked / "f").write_text("someone's")
    assert owned.recover(dest) == []
    assert (live / "f").read_text() == "theirs" and (unmarked / "f").read_text() == "someone's"


def test_recover_removes_a_stage_killed_before_its_marker_was_in(tmp_path):
    dest = tmp_path / "out"
    for pid in (_dead_pid(), _dead_pid()):
        stage = tmp_path / f".out.peft-tags-new-{pid}"
        stage.mkdir()
        if pid % 2:  # killed after mkdir, or while the marker's temporary file was written
            (stage / ".peft-tags.json.tmp").write_text('{"format": "peft-tags-di')
    owned.recover(dest)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("replace", [False, True])
def test_a_folder_that_appears_at_the_destination_meanwhile_is_left_alone(replace, tmp_path, user_folder):
    from peft_tags.errors import UserError

    dest = tmp_path / "out"
    with pytest.raises(UserError, match="left as it is" if not replace else "not written by peft-tags"):
        with owned.Staged(dest, "run", replace=replace) as stage:
            (stage / "f").write_text("new")
            user_folder.rename(dest)  # a user's folder lands there while the run writes
    assert (dest / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ----------------------------------------------------------------------------- validate = the checks before step 1
def test_validate_passes_a_good_recipe(tmp_path, tiny_backbone, toy_data, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out")
    assert cli_main(["validate", str(recipe)]) == 0
    assert capsys.readouterr().out.startswith("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


@pytest.mark.parametrize("override,culprit", [
    ("data.train=toy/missing.txt", "data.train"),
    ("data.test=toy/nope.txt", "data.test"),
    ("method.target_modules=[querry]", "method.target_modules"),
    ("backbone.max_length=4096", "backbone.max_length"),
    ("backbone.name=nosuch-org/nosuch-model", "backbone.name"),
    ("output.dir=/", "output.dir"),
])
def test_validate_and_train_report_what_training_would_hit_in_one_line(override, culprit, tmp_path, tiny_backbone,
                                                                       toy_data, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out")
    for command in ("validate", "train"):
        tick = time.perf_counter()
        args = [command, str(recipe), *(["--set", override] if command == "validate" else [override])]
        assert cli_main(args) == 2
        one_line(capsys.readouterr().err, culprit)
        assert time.perf_counter() - tick < 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_data_with_a_bad_line_is_named_by_validate(tmp_path, tiny_backbone, toy_data, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("华 B-1\n为 I-1\n\n小 B-1\n米 I-9\n\n", encoding="utf-8")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_backbone, toy_data, tmp_path / "out")
    assert cli_main(["validate", str(recipe), "--set", f"data.train={bad}"]) == 2
    one_line(capsys.readouterr().err, f"{bad}:5")
