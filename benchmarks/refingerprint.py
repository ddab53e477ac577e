"""Carry finished grid cells across recipe-schema changes that do not change what they trained.

A finished cell is reused (and reported) while its fingerprint matches the grid's
(:func:`benchmarks.cells.fingerprint`). Fingerprints are now taken over the keys of the resolved
recipe that are away from their defaults, so a key added to the schema later, at its default,
leaves them alone. Cells fingerprinted before that (over every key, so every added key made them
stale) are checked here, once per cell: its recipe and overrides are resolved with the code of
the commit that trained it and with today's code, and it gets today's fingerprint only where

- every key both have holds the same value,
- every key only today's code has is at today's default, and
- every key only the old code had is at the old code's default (options of another task, say),

that is, where the cell trained what it would train today. The old fingerprint is kept in
``fingerprint_before``; a cell that fails the check is listed and left alone.

    python -m benchmarks.refingerprint --budget cpu [--dry-run]
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from .cells import flat_recipe, recipe_fingerprint, write_json
from .grid import REPO

_OLD = """
import json, sys
{walker}
try:
    from peft_tags.config import load_recipe
except ImportError:
    from peft_tags.recipe import load_recipe
print(json.dumps(flat_recipe(load_recipe(sys.argv[1], json.loads(sys.argv[2])))))
"""


def resolved_at(commit: str, recipe: str, overrides: list[str], trees: dict, tmp: Path) -> dict:
    """:func:`flat_recipe` of ``recipe`` with ``overrides`` under the code of ``commit``."""
    if commit not in trees:
        tree = tmp / commit[:12]
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), commit], check=True,
                       capture_output=True)
        trees[commit] = tree
    tree = trees[commit]
    code = _OLD.format(walker=inspect.getsource(flat_recipe))
    # -S: no .pth files, so an editable install of today's package cannot answer for the old one
    paths = dict.fromkeys([str(tree), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    done = subprocess.run([sys.executable, "-S", "-c", code, recipe, json.dumps(overrides)], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
    return json.loads(done.stdout)


def differences(old: dict, new: dict) -> list[str]:
    """Why a cell made with ``old`` would not train the same today (empty: it would)."""
    out = []
    for key in sorted(old.keys() | new.keys()):
        if key in old and key in new:
            if old[key][0] != new[key][0]:
                out.append(f"{key}: {old[key][0]!r} then, {new[key][0]!r} now")
        elif key in new and new[key][0] != new[key][1]:
            out.append(f"{key}: added since, at {new[key][0]!r}, not its default {new[key][1]!r}")
        elif key in old and old[key][0] != old[key][1]:
            out.append(f"{key}: removed since, was {old[key][0]!r}, not its default {old[key][1]!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    from peft_tags.config import load_recipe

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", action="append", help="grid budgets to check (default: all)")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "grid")
    ap.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    args = ap.parse_args(argv)
    budgets = args.budget or sorted(p.name for p in args.results.iterdir() if p.is_dir())
    trees: dict[str, Path] = {}
    moved = kept = 0
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for path in sorted(p for b in budgets for p in (args.results / b).glob("*/cells/*.json")):
                cell = json.loads(path.read_text(encoding="utf-8"))
                if cell.get("kind") != "recipe" or cell.get("status") != "ok":
                    continue
                recipe, overrides = cell["recipe"], cell["overrides"]
                today = load_recipe(REPO / recipe, overrides)
                now = recipe_fingerprint(today)
                if cell["fingerprint"] == now:
                    continue
                commit = cell["provenance"]["git_commit"]
                try:
                    why = differences(resolved_at(commit, recipe, overrides, trees, Path(tmp)), flat_recipe(today))
                except (RuntimeError, subprocess.CalledProcessError) as e:
                    why = [f"cannot resolve at {commit[:10]}: {e}"]
                name = path.relative_to(args.results)
                if why:
                    kept += 1
                    print(f"left   {name}: {'; '.join(why)}")
                    continue
                moved += 1
                print(f"{'would' if args.dry_run else 'moved'}  {name}: {cell['fingerprint']} -> {now} "
                      f"(resolved alike at {commit[:10]} and today)")
                if not args.dry_run:
                    cell = {**cell, "fingerprint": now, "fingerprint_before": cell["fingerprint"]}
                    write_json(path, cell)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
    print(f"{moved} cell(s) {'would get' if args.dry_run else 'got'} today's fingerprint, {kept} left as they were")
    return 0


if __name__ == "__main__":
    sys.exit(main())
