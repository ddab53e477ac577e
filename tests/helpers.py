"""Helpers shared by the test modules; fixtures live in conftest.py.

- places: ``REPO``, ``SHARED_DATA`` (the shipped data sets), ``KILLPOINTS``;
- a refused command: ``one_line`` (its stderr is one clear line naming the culprits, without a
  traceback), ``run_cli`` and ``cli_fails`` (the CLI in-process), ``snapshot`` (every path under
  some folders, to prove that nothing was touched);
- child processes: ``child_env``, ``train_in_subprocess`` (through tests/killpoints.py, which can
  SIGKILL the run at a chosen event);
- bad inputs: damaging a copied run directory (``rm``, ``overwrite``, ``truncate``,
  ``edit_json``), ``run_argv``, ``yaml_bomb``;
- ``drop_log_handlers``.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PEFT_TAGS_DATA") or REPO.parent / "shared" / "data").resolve()
KILLPOINTS = Path(__file__).with_name("killpoints.py")
TITLE = "华为黑色手机壳"  # a toy title for predict


# ============================================================================= a refused command
def one_line(err: str, *culprits, exact: bool = False) -> str:
    """The one non-empty line of ``err``, which must name every culprit, with no traceback in
    ``err``; ``exact``: ``err`` holds nothing else, not even a blank line."""
    assert "Traceback" not in err, err
    lines = err.splitlines() if exact else [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].strip(), f"expected one line, got {err!r}"
    for culprit in culprits:
        assert str(culprit) in lines[0], (culprit, lines[0])
    return lines[0]


def run_cli(argv) -> int:
    """``peft-tags ARGV`` in-process; an argparse exit returns its code."""
    from peft_tags.cli import main

    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def cli_fails(argv, capsys, *culprits, exact: bool = False) -> str:
    """Run the CLI in-process: exit code 2, and stderr (of this call only) ``one_line`` naming
    every culprit. Returns that line."""
    capsys.readouterr()
    rc = run_cli(argv)
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    return one_line(err, *culprits, exact=exact)


def _state(p: Path):
    if p.is_symlink():  # where it points, and whether that is a folder
        return "symlink", os.readlink(p), p.is_dir()
    return -1 if p.is_dir() else p.lstat().st_size


def snapshot(*roots: Path) -> dict:
    """Every path under the roots, and each root itself, with its size (-1 for a folder, None for
    a root that does not exist; a symbolic link by its target): what a refused command must
    leave as it was."""
    out = {}
    for root in roots:
        out[str(root)] = _state(Path(root)) if os.path.lexists(root) else None
        for dirpath, dirs, files in os.walk(root):
            for name in dirs + files:
                p = Path(dirpath) / name
                out[str(p)] = _state(p)
    return out


# ============================================================================= child processes
def child_env(**extra: str) -> dict:
    """The environment of a child process: this checkout importable, one thread, no tokenizer
    threads; ``extra`` on top."""
    return dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **extra)


def train_in_subprocess(recipe: Path, *overrides: str, kill_at: int = 0, kind: str | None = "step",
                        events: Path | None = None, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """Train ``recipe`` in a child process (in the recipe's folder) through tests/killpoints.py,
    which SIGKILLs it just before its ``kill_at``-th event (0: never) of ``kind`` (optimizer
    steps by default; None: any event) and with ``events`` lists every event in that file.
    With ``launcher`` (e.g. ``accelerate launch ...``) it runs run_recipe.py instead."""
    env = child_env(KILL_AT=str(kill_at))
    if kind is not None:
        env["KILL_KIND"] = kind
    if events is not None:
        env["EVENTS"] = str(events)
    script = KILLPOINTS if launcher is None else REPO / "run_recipe.py"
    return subprocess.run([*(launcher or [sys.executable]), str(script), str(recipe), *overrides], capture_output=True,
                          text=True, env=env, cwd=recipe.parent, timeout=600)


# ============================================================================= bad inputs
# Damaging a copied run directory: each returns ``damage(run, *rest)``, which changes the file
# ``name`` of the run in place (``rest``, such as a temporary folder, is passed on to ``change``).
def rm(name: str):
    return lambda run, *rest: (run / name).unlink()


def overwrite(name: str, content: str | bytes):
    def damage(run, *rest):
        (run / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return damage


def truncate(name: str, keep: int | None = None):
    """The file cut to ``data[:keep]``; to its first half without ``keep``."""
    def damage(run, *rest):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 2 if keep is None else keep])
    return damage


def edit_json(name: str, change):
    """The JSON file read, ``change(data, run, *rest)`` applied, written back."""
    def damage(run, *rest):
        data = json.loads((run / name).read_text(encoding="utf-8"))
        change(data, run, *rest)
        (run / name).write_text(json.dumps(data), encoding="utf-8")
    return damage


def run_argv(command: str, run, tmp) -> list:
    """The command line of predict, export (to ``tmp / "dest"``) or retune on the run directory."""
    return {"predict": ["predict", run, TITLE], "export": ["export", run, tmp / "dest"], "retune": ["retune", run]}[command]


def yaml_bomb(levels: int) -> str:
    """A billion-laughs YAML document: each of ``levels`` lists holds the previous one twice."""
    return "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 2) if i else 'lol, lol'}]\n" for i in range(levels))


# ============================================================================= logging
def drop_log_handlers() -> None:
    """Remove the root logger's handlers: a training run points them at the stderr pytest
    captured for it, and later tests would log into a closed stream."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)


# ============================================================================= recipe files
def write_dedented(path: Path, text: str) -> Path:
    """``text`` (dedented) into ``path``, its folder made; returns ``path``."""
    import textwrap

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def recipe_problems(path, overrides=()) -> list[str]:
    """The problem lines of a recipe that does not load (its message is exactly those lines)."""
    import pytest

    from peft_tags.config.validate import RecipeError
    from peft_tags.recipe import load_recipe

    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    assert str(info.value).splitlines() == info.value.problems
    return info.value.problems
