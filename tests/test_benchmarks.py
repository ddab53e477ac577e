"""The benchmark harness: a tiny grid end to end (cells, resume, report, plot), its selection and
Pareto rules, and its errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks import harness, report
from benchmarks.cells import cell_command, fingerprint
from benchmarks.grid import Cell, load_grid
from conftest import REPO, write_recipe


def _grid(path: Path, lora: Path, head: Path, backbone: Path, lora_lrs=(5e-3, 3e-2)) -> Path:
    path.write_text(f"""
budgets:
  smoke: {{overrides: [training.epochs=1], sweep: false}}
  cpu:   {{overrides: [training.epochs=2, data.max_train_examples=96]}}
tasks:
  toy:
    reference:
      stock: {{train: toy/train.txt, dev: toy/dev.txt, test: toy/test.txt, backbone: {backbone}, epochs: 1, lr: 1.0e-2}}
    methods:
      head-only: {{recipe: {head}, sweep: {{training.head_lr: [1.0e-2]}}}}
      lora: {{recipe: {lora}, sweep: {{training.lr: [{', '.join(repr(v) for v in lora_lrs)}]}}}}
""", encoding="utf-8")
    return path


def _harness(*args, env_data: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PEFT_TAGS_DATA": str(env_data), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "benchmarks.harness", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.integration
@pytest.mark.slow  # 2.7 min: seven cells trained in subprocesses; test_an_interrupted_cell_resumes stays in the default run
def test_grid_end_to_end_resume_and_report(tmp_path, tiny_backbone, toy_data):
    lora = write_recipe(tmp_path / "lora.yaml", tiny_backbone, toy_data, tmp_path / "unused", epochs=3)
    head = write_recipe(tmp_path / "head.yaml", tiny_backbone, toy_data, tmp_path / "unused", method="head-only", epochs=3)
    grid = _grid(tmp_path / "grid.yaml", lora, head, tiny_backbone)
    results, runs = tmp_path / "results", tmp_path / "runs"
    common = ("--budget", "cpu", "--grid", grid, "--results", results, "--runs", runs)

    done = _harness(*common, env_data=toy_data)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    # progress: which cell runs, and an estimate for the rest once one cell has finished
    assert "[1/4] toy stock-hf@lr=1e-2" in done.stdout
    assert "[4/4] toy lora@lr=3e-2" in done.stdout
    assert "then 0 more cells" in done.stdout and "all done about" in done.stdout

    cells = {p.stem: json.loads(p.read_text()) for p in (results / "cpu" / "toy" / "cells").glob("*.json")}
    assert set(cells) == {"stock-hf@lr=1e-2", "head-only@head_lr=1e-2", "lora@lr=5e-3", "lora@lr=3e-2"}
    for c in cells.values():
        assert c["status"] == "ok"
        for key in ("dev_micro_f1", "dev_macro_f1", "test_micro_f1", "test_macro_f1", "train_titles_per_s",
                    "eval_titles_per_s", "peak_memory_mb", "train_seconds", "seed"):
            assert c[key] is not None, key
        assert c["saved_file_bytes"] > 0
        p = c["parameters"]
        assert p["trainable"] == p["adapter"] + p["head"] > 0
        for key in ("git_commit", "git_dirty", "torch", "peft", "cpu", "threads"):
            assert key in c["provenance"]
    assert cells["lora@lr=5e-3"]["overrides"][-1] == "training.lr=0.005"
    assert "data.max_train_examples=96" in cells["lora@lr=3e-2"]["command"]
    assert cells["head-only@head_lr=1e-2"]["parameters"]["adapter"] == 0
    assert len(cells["lora@lr=5e-3"]["history"]) == 2  # the budget's epochs, not the recipe's 3

    summary = json.loads((results / "cpu" / "toy.json").read_text())
    rows = {r["method"]: r for r in summary["rows"]}
    lora_cells = [cells["lora@lr=5e-3"], cells["lora@lr=3e-2"]]
    best = max(lora_cells, key=lambda c: c["dev_micro_f1"])
    assert rows["lora"]["cell"] == best["cell"]  # chosen on dev
    assert rows["lora"]["test_micro_f1"] == best["test_micro_f1"]
    assert sorted(f for _, f, _ in rows["lora"]["dev_by_value"]) == sorted(c["dev_micro_f1"] for c in lora_cells)
    md = (results / "cpu" / "toy.md").read_text()
    assert md.count("\n| ") == 1 + 3 and "(1.00×)" in md and "toy.png" in md
    assert (results / "cpu" / "toy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    front = summary["pareto_front"]
    assert front and front[0] == min(summary["rows"], key=lambda r: r["parameters"]["trainable"])["method"]

    # resume: nothing finished runs again; a new sweep value runs alone; a value no longer swept
    # leaves the report
    stamps = {p: p.stat().st_mtime_ns for p in (results / "cpu" / "toy" / "cells").glob("*.json")}
    again = _harness(*common, "--dry-run", env_data=toy_data)
    assert again.returncode == 0 and "4 cells, 0 to run" in again.stdout
    _grid(grid, lora, head, tiny_backbone, lora_lrs=(5e-3, 1e-2))
    more = _harness(*common, env_data=toy_data)
    assert more.returncode == 0, more.stderr[-3000:]
    assert "[1/1] toy lora@lr=1e-2" in more.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    summary = json.loads((results / "cpu" / "toy.json").read_text())
    rows = {r["method"]: r for r in summary["rows"]}
    assert [v for v, _, _ in rows["lora"]["dev_by_value"]] == [5e-3, 1e-2]
    assert summary["excluded"] == ["lora@lr=3e-2"]
    assert "left out" in (results / "cpu" / "toy.md").read_text()

    # a second seed of one cell: trained with training.seed, kept apart, and averaged in the report
    seeded = _harness(*common, "--cell", "lora@lr=5e-3", "--seeds", "7,42", env_data=toy_data)
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    assert "[1/1] toy lora@lr=5e-3,seed=42" in seeded.stdout, seeded.stdout  # seed 7 is the recipe's own: already done
    extra = json.loads((results / "cpu" / "toy" / "cells" / "lora@lr=5e-3,seed=42.json").read_text())
    assert extra["seed"] == 42 and "training.seed=42" in extra["command"]
    first = cells["lora@lr=5e-3"]
    assert first["seed"] == 7
    report_only = _harness(*common, "--report-only", env_data=toy_data)  # without --seeds: the seed stays in
    assert report_only.returncode == 0, report_only.stderr[-3000:]
    summary = json.loads((results / "cpu" / "toy.json").read_text())
    assert "lora@lr=5e-3,seed=42" in summary["cells"] and summary["excluded"] == ["lora@lr=3e-2"]
    dev = {v: (f, n) for v, f, n in {r["method"]: r for r in summary["rows"]}["lora"]["dev_by_value"]}
    assert dev[5e-3] == (pytest.approx((first["dev_micro_f1"] + extra["dev_micro_f1"]) / 2), 2) and dev[1e-2][1] == 1


@pytest.mark.integration
def test_an_interrupted_cell_resumes(tmp_path, tiny_backbone, toy_data):
    lora = write_recipe(tmp_path / "lora.yaml", tiny_backbone, toy_data, tmp_path / "unused")
    head = write_recipe(tmp_path / "head.yaml", tiny_backbone, toy_data, tmp_path / "unused", method="head-only")
    grid = _grid(tmp_path / "grid.yaml", lora, head, tiny_backbone, lora_lrs=(5e-3,))
    common = ("--budget", "cpu", "--grid", grid, "--results", tmp_path / "results", "--runs", tmp_path / "runs",
              "--method", "lora")
    # the cell's own command, killed (-9) in epoch 2 after epoch 1's checkpoint: 96 titles / 8 per batch = 12 steps
    cell = next(c for c in load_grid(grid, "cpu") if c.method == "lora")
    cmd = cell_command(cell, tmp_path / "runs" / "cpu" / cell.task / cell.name)
    cmd[1] = str(REPO / "tests" / "killpoints.py")
    env = dict(os.environ, PEFT_TAGS_DATA=str(toy_data), KILL_AT="16", KILL_KIND="step", PYTHONPATH=str(REPO))
    crashed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert crashed.returncode == -9, crashed.stderr[-3000:]
    resumed = _harness(*common, env_data=toy_data)
    cell = tmp_path / "results" / "cpu" / "toy" / "cells" / "lora@lr=5e-3.json"
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "lora@lr=5e-3 (resuming)" in resumed.stdout and "starting afresh" not in resumed.stdout
    done = json.loads(cell.read_text())
    assert done["status"] == "ok" and [h["epoch"] for h in done["history"]] == [1, 2]


def test_a_changed_recipe_makes_its_cells_stale(tmp_path, tiny_backbone, toy_data):
    lora = write_recipe(tmp_path / "lora.yaml", tiny_backbone, toy_data, tmp_path / "unused")
    head = write_recipe(tmp_path / "head.yaml", tiny_backbone, toy_data, tmp_path / "unused", method="head-only")
    grid = _grid(tmp_path / "grid.yaml", lora, head, tiny_backbone)
    cell = next(c for c in load_grid(grid, "cpu") if c.method == "lora")
    before = fingerprint(cell)
    assert fingerprint(cell) == before
    write_recipe(lora, tiny_backbone, toy_data, tmp_path / "elsewhere")  # only the output dir differs
    assert fingerprint(cell) == before
    write_recipe(lora, tiny_backbone, toy_data, tmp_path / "unused", batch_size=4)
    assert fingerprint(cell) != before


def test_a_key_added_to_the_schema_at_its_default_leaves_fingerprints_alone(tmp_path, tiny_backbone, toy_data,
                                                                           monkeypatch):
    """Fingerprints hash the keys away from their defaults: a recipe option added later (at its
    default, the behaviour before it) does not make every finished cell stale; written at that
    default it changes nothing either, and at another value it does."""
    import dataclasses

    from peft_tags.config import schema

    lora = write_recipe(tmp_path / "lora.yaml", tiny_backbone, toy_data, tmp_path / "unused")
    head = write_recipe(tmp_path / "head.yaml", tiny_backbone, toy_data, tmp_path / "unused", method="head-only")
    cell = next(c for c in load_grid(_grid(tmp_path / "grid.yaml", lora, head, tiny_backbone), "cpu")
                if c.method == "lora")
    before = fingerprint(cell)
    fields = [(f.name, f.type, f) for f in dataclasses.fields(schema.TrainingSection)]
    widened = dataclasses.make_dataclass("TrainingSection", fields + [("new_knob", float, dataclasses.field(
        default=0.0, metadata={"help": "a knob added later"}))])
    monkeypatch.setattr(schema, "TrainingSection", widened)
    monkeypatch.setitem(schema.SECTIONS, "training", widened)
    assert fingerprint(cell) == before
    write_recipe(lora, tiny_backbone, toy_data, tmp_path / "unused", new_knob=0.0)
    assert fingerprint(cell) == before
    write_recipe(lora, tiny_backbone, toy_data, tmp_path / "unused", new_knob=0.5)
    assert fingerprint(cell) != before


def test_refingerprint_carries_a_cell_only_where_it_trained_what_it_would_today():
    from benchmarks.refingerprint import differences

    old = {"training.lr": [0.001, 0.001], "task.pooling": ["mean", "mean"], "method.options.r": [16, 8]}
    same = {"training.lr": [0.001, 0.001], "training.fgm_epsilon": [0.0, 0.0], "method.options.r": [16, 8]}
    assert differences(old, same) == []  # a key added at its default, another task's key removed at its default
    assert differences(old, {**same, "training.fgm_epsilon": [1.0, 0.0]}) == [
        "training.fgm_epsilon: added since, at 1.0, not its default 0.0"]
    assert differences(old, {**same, "method.options.r": [8, 8]}) == ["method.options.r: 16 then, 8 now"]
    assert differences({**old, "task.pooling": ["first", "mean"]}, same) == [
        "task.pooling: removed since, was 'first', not its default 'mean'"]


def test_cells_are_ordered_round_robin_and_smoke_takes_the_first_value(tmp_path, tiny_backbone, toy_data):
    lora = write_recipe(tmp_path / "lora.yaml", tiny_backbone, toy_data, tmp_path / "o")
    head = write_recipe(tmp_path / "head.yaml", tiny_backbone, toy_data, tmp_path / "o", method="head-only")
    grid = _grid(tmp_path / "grid.yaml", lora, head, tiny_backbone)
    assert [c.name for c in load_grid(grid, "cpu")] == [
        "stock-hf@lr=1e-2", "head-only@head_lr=1e-2", "lora@lr=5e-3", "lora@lr=3e-2"]
    smoke = load_grid(grid, "smoke", methods=["lora"])
    assert [c.name for c in smoke] == ["lora@lr=5e-3"]
    assert smoke[0].overrides == ["training.epochs=1", "training.lr=0.005"]
    stock = load_grid(grid, "cpu", methods=["stock-hf"])[0]
    cmd = cell_command(stock, tmp_path / "out")
    assert cmd[cmd.index("--epochs") + 1] == "2" and cmd[cmd.index("--max-train") + 1] == "96"


def test_a_stock_cell_runs_as_a_module_and_keeps_its_fingerprint():
    # the fingerprint covers the stock recipe's file and arguments, not how the script is started,
    # so finished stock cells stay valid
    cell = Cell("toy", "stock-hf", "stock", None, ["training.epochs=2", "data.max_train_examples=96"], "stock.lr", 1e-2,
                stock={"train": "toy/train.txt", "backbone": "me5-small", "epochs": 1, "lr": 1e-2})
    assert cell_command(cell, Path("out"))[1:5] == ["-m", "benchmarks.stock_recipe", "--out", "out"]
    assert fingerprint(cell) == "31a648f8ba35b41b"


@pytest.mark.parametrize("script", ["harness", "report", "stock_recipe", "stock_vs_ours", "span_vs_multilabel",
                                    "methods_table"])
def test_every_script_runs_as_a_module_from_the_repository_root(script):
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{script}", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("usage: "), done.stderr[-3000:]
    assert "sys.path" not in (REPO / "benchmarks" / f"{script}.py").read_text(encoding="utf-8")


def test_the_shipped_grid_names_real_recipes_for_every_budget():
    names = set()
    budgets = yaml.safe_load((REPO / "benchmarks" / "grid.yaml").read_text(encoding="utf-8"))["budgets"]
    assert {"smoke", "cpu", "full", "long"} <= set(budgets)
    for budget in budgets:
        cells = load_grid(REPO / "benchmarks" / "grid.yaml", budget)
        names |= {c.method for c in cells}
        for c in cells:
            fingerprint(c)  # every cell's recipe resolves with its overrides
    assert {"stock-hf", "head-only", "lora", "full", "adalora", "qlora", "ia3", "prefix", "prompt",
            "bottleneck-houlsby", "bottleneck-pfeiffer"} <= names


@pytest.mark.parametrize("text, message", [
    ("budgets: {cpu: {}}\n", "grid.yaml: missing required key 'tasks'"),
    ("budget: {cpu: {}}\ntasks: {t: {methods: {}}}\n", "grid.yaml:1: unknown key 'budget' (did you mean 'budgets'?)"),
    ("budgets: {smoke: {}}\ntasks: {t: {methods: {}}}\n", "grid.yaml:1: budgets.cpu is not defined (defined: smoke)"),
    ("budgets: {cpu: {}, ../up: {}}\ntasks: {t: {methods: {}}}\n", "budgets.../up: a budget name is letters"),
    ("budgets: {cpu: {overrides: [epochs]}}\ntasks: {t: {methods: {}}}\n", "grid.yaml:1: budgets.cpu.overrides: 'epochs' is not key=value"),
    ("budgets: {cpu: {}}\ntasks: {t: {methods: {m: {recipe: nope.yaml}}}}\n", "tasks.t.methods.m.recipe: no such file: nope.yaml"),
    ("budgets: {cpu: {}}\ntasks: {t: {methods: {m: {recipe: recipes/jd-ner/lora.yaml, sweep: {training.lr: [fast]}}}}}\n",
     "tasks.t.methods.m.sweep.training.lr: 'fast' is not a number"),
    ("budgets: {cpu: {}}\ntasks: {t: {methods: {m: {recipe: recipes/jd-ner/lora.yaml, sweep: {training.lr: [1.0e-3, 1.0e-3]}}}}}\n",
     "a value is listed twice"),
    ("budgets: {cpu: {}}\ntasks: {t: {methods: {m: {recipe: recipes/jd-ner/lora.yaml, sweep: {training.nope: [1.0e-3]}}}}}\n",
     "training.nope"),
    ("budgets: {cpu: {}}\ntasks:\n  t:\n    budgets: {cpu: [epochs]}\n    methods: {}\n",
     "grid.yaml:4: tasks.t.budgets.cpu: 'epochs' is not key=value"),
    ("budgets: {cpu: {}}\ntasks:\n  t:\n    budgets: {gpu: [training.epochs=1]}\n    methods: {}\n",
     "tasks.t.budgets.gpu: no such budget (defined: cpu)"),
    ("budgets: {cpu: {}}\ntasks:\n  t:\n    budgets: [cpu]\n    methods: {}\n",
     "tasks.t.budgets: must map budget names to lists of key=value overrides"),
    ("budgets: [cpu\n", "grid.yaml:2: not valid YAML"),
    ("budgets: [cpu]\ntasks: {t: {methods: {}}}\n", "grid.yaml:1: budgets: must map budget names"),
    ("budgets: {cpu: {}}\ntasks: {t: {reference: [stock], methods: {}}}\n", "grid.yaml:2: tasks.t.reference: expected a mapping of keys, got ['stock']"),
    ("budgets: {cpu: {}}\ntasks: {t: {methods: {m: {recipe: 3}}}}\n", "grid.yaml:2: tasks.t.methods.m.recipe: expected a string, got 3"),
    ("budgets: {cpu: {}}\ntasks: {t: {methods: {stock-hf: {recipe: recipes/jd-ner/lora.yaml}}}}\n", "not 'stock-hf'"),
    ("budgets: {cpu: {}}\ntasks: {t: {methods: {a/b: {recipe: recipes/jd-ner/lora.yaml}}}}\n", "it names files"),
    # every section goes through the recipes' validator: unknown keys, types, ranges, keys given twice; the
    # first problem in the file's order is named with its line, and the others are counted
    ("budgets: {cpu: {}}\ntasks:\n  t:\n    methods:\n      m: {recipe: recipes/jd-ner/lora.yaml, sweeps: {training.lr: [1.0e-3]}}\n",
     "grid.yaml:5: unknown key 'tasks.t.methods.m.sweeps' (did you mean 'tasks.t.methods.m.sweep'?)"),
    ("budgets:\n  cpu: {sweep: maybe}\ntasks: {t: {methods: {}}}\n", "grid.yaml:2: budgets.cpu.sweep: expected true or false, got 'maybe'"),
    ("budgets: {cpu: {}}\ntasks:\n  t:\n    reference:\n      stock: {lr: -1}\n    methods: {}\n",
     "grid.yaml:5: tasks.t.reference.stock.lr: must be > 0, got -1"),
    ("budgets: {cpu: {}}\ntasks:\n  t:\n    methods:\n      m: {recipe: recipes/jd-ner/lora.yaml}\n      m: {recipe: recipes/jd-ner/ia3.yaml}\n",
     "grid.yaml:5: key 'tasks.t.methods.m' is given twice (lines 5 and 6)"),
    ("budgets: {cpu: {sweep: 3}}\ntasks:\n  t: {methods: {m: {recipe: nope.yaml}}}\n",
     "grid.yaml:1: budgets.cpu.sweep: expected true or false, got 3 (and 1 more problem)"),
])
def test_grid_mistakes_end_in_one_line(tmp_path, capsys, text, message):
    grid = tmp_path / "grid.yaml"
    grid.write_text(text, encoding="utf-8")
    assert harness.main(["--budget", "cpu", "--grid", str(grid), "--dry-run", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err


def test_an_unknown_method_filter_is_named(capsys):
    assert harness.main(["--budget", "cpu", "--method", "lora,lorax", "--dry-run"]) == 2
    assert "--method: no method 'lorax'" in capsys.readouterr().err


def test_a_dirty_tree_writes_apart(monkeypatch, capsys):
    # the grid file's own state also marks a run dirty; pin it so that a grid.yaml being
    # edited in this checkout does not decide this test
    monkeypatch.setattr(harness, "committed_unchanged", lambda path: True)
    monkeypatch.setattr(harness, "tree_state", lambda: ("abc", True))
    assert harness.main(["--budget", "smoke", "--method", "lora", "--dry-run"]) == 0
    assert str(Path("benchmarks/results/grid-dirty/smoke")) in capsys.readouterr().out
    monkeypatch.setattr(harness, "tree_state", lambda: ("abc", False))
    assert harness.main(["--budget", "smoke", "--method", "lora", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert str(Path("benchmarks/results/grid/smoke")) in out and "grid-dirty" not in out


def test_a_grid_file_outside_the_commit_writes_apart(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(harness, "tree_state", lambda: ("abc", False))
    grid = tmp_path / "grid.yaml"
    grid.write_text((REPO / "benchmarks" / "grid.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    assert harness.main(["--budget", "smoke", "--method", "lora", "--grid", str(grid), "--dry-run"]) == 0
    assert str(Path("benchmarks/results/grid-dirty/smoke")) in capsys.readouterr().out


def test_a_cell_made_by_other_code_runs_again(tmp_path, monkeypatch, capsys):
    cell = load_grid(REPO / "benchmarks" / "grid.yaml", "smoke", methods=["lora"])[0]
    path = tmp_path / "smoke" / cell.task / "cells" / f"{cell.name}.json"
    path.parent.mkdir(parents=True)
    args = ["--budget", "smoke", "--method", "lora", "--results", str(tmp_path), "--dry-run"]
    for code, state in ((harness.code_fingerprint(), "done"), ("0123456789abcdef", "code")):
        path.write_text(json.dumps({"status": "ok", "cell": cell.name, "fingerprint": fingerprint(cell),
                                    "code": code, "wall_seconds": 1.0}))
        assert harness.main(args) == 0
        assert capsys.readouterr().out.startswith(f"{state:6} {cell.task} {cell.name}")
    path.write_text("{half a file")
    assert harness.main(args) == 0
    assert capsys.readouterr().out.startswith(f"todo   {cell.task} {cell.name}")


def _row(method, trainable, test, dev=0.5, kind="recipe"):
    return {"method": method, "kind": kind, "parameters": {"trainable": trainable}, "test_micro_f1": test, "dev_micro_f1": dev}


def test_pareto_front_keeps_only_rows_nothing_beats():
    rows = [_row("a", 10, 0.5), _row("b", 100, 0.4), _row("c", 100, 0.7), _row("d", 1000, 0.65), _row("e", 5000, 0.72)]
    assert [r["method"] for r in report.pareto(rows)] == ["a", "c", "e"]


def test_labels_of_close_points_are_stacked_not_overprinted():
    # the cpu grid: lora, qlora, adalora a few thousand parameters and 0.01 F1 apart (0.01 is about 9 points
    # on an axis from 0.32 to 0.65); ia3 and head-only stand alone
    rows = [_row("lora", 1_458_004, 0.618), _row("qlora", 1_458_004, 0.608), _row("adalora", 1_459_156, 0.628),
            _row("ia3", 163_156, 0.552), _row("head-only", 130_900, 0.321)]
    assert report.label_offsets(rows) == [-6, -16, 4, 4, 4]
    assert report.label_offsets(rows[:1]) == [4] and report.label_offsets([]) == []


def test_selection_is_on_dev_not_test():
    cells = [{**_row("m", 10, test=0.9, dev=0.6), "sweep": {"training.lr": 1e-3}, "cell": "m@1"},
             {**_row("m", 10, test=0.5, dev=0.7), "sweep": {"training.lr": 3e-3}, "cell": "m@3"}]
    (row,) = report.choose(cells)
    assert row["cell"] == "m@3" and row["test_micro_f1"] == 0.5 and row["dev_by_value"] == [[1e-3, 0.6, 1], [3e-3, 0.7, 1]]


def _seeded(value, seed, dev, test, own=False):
    name = f"m@lr={value}" + ("" if own else f",seed={seed}")
    return {**_row("m", 10, test=test, dev=dev), "sweep": {"training.lr": value}, "cell": name, "seed": seed,
            "train_titles_per_s": 10.0, "eval_titles_per_s": 100.0, "train_seconds": 60.0, "peak_memory_mb": 100 + seed}


def test_a_rate_with_several_seeds_is_judged_on_its_mean():
    # 3e-3 wins on its first seed alone, but its mean over two seeds loses to 1e-3's single cell
    cells = [_seeded(1e-3, 42, dev=0.70, test=0.60, own=True),
             _seeded(3e-3, 42, dev=0.72, test=0.62, own=True), _seeded(3e-3, 43, dev=0.66, test=0.58)]
    (row,) = report.choose(cells)
    assert row["chosen"] == 1e-3 and row["seeds"] == [42]
    assert row["dev_by_value"] == [[1e-3, 0.70, 1], [3e-3, pytest.approx(0.69), 2]]
    cells.append(_seeded(1e-3, 43, dev=0.60, test=0.50))
    (row,) = report.choose(cells)
    assert row["chosen"] == 3e-3 and row["cell"] == "m@lr=0.003"  # the recipe's own seed stands for the rest
    assert row["test_micro_f1"] == pytest.approx(0.60) and row["test_by_seed"] == [[42, 0.62], [43, 0.58]]
    assert row["seeds"] == [42, 43] and row["peak_memory_mb"] == 143


def test_seeds_and_cells_on_the_command_line(tmp_path, capsys):
    args = ["--budget", "full", "--method", "lora", "--results", str(tmp_path), "--dry-run"]
    assert harness.main([*args, "--cell", "lora@lr=2e-3", "--seeds", "42,43"]) == 0
    out = capsys.readouterr().out
    assert "todo   jd-ner lora@lr=2e-3\n" in out and "lora@lr=2e-3,seed=43" in out and "training.seed=43 " in out
    assert "2 cells, 2 to run" in out and "training.seed=42" not in out  # 42 is the recipe's own seed
    for extra, message in ((["--cell", "lora@lr=9e-9"], "--cell: no cell 'lora@lr=9e-9'"),
                           (["--seeds", "1,x"], "--seeds: 'x' is not"), (["--seeds", "²"], "--seeds: '²' is not"),
                           (["--seeds", str(2**32)], f"--seeds: '{2**32}' is not"), (["--seeds", "3,3"], "--seeds: 3 is listed twice")):
        assert harness.main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_progress_estimates_by_method_then_by_all():
    p = harness.Progress(5)
    assert p.estimate("lora") is None and p.eta(["lora"]) is None
    p.learn("lora", 100.0)
    p.learn("lora", 200.0)
    p.learn("full", 600.0)
    assert p.estimate("lora") == 150.0 and p.estimate("ia3") == 300.0
    assert p.eta(["lora", "full", "ia3"]) == 150.0 + 600.0 + 300.0


def test_short_float():
    assert [report.short_float(v) for v in (1e-3, 2.5e-4, 0.1, 3e-2, 1.0)] == ["1e-3", "2.5e-4", "1e-1", "3e-2", "1e0"]


def test_a_pair_scored_task_reports_pair_f1_and_keeps_the_runs_own():
    from benchmarks.cells import scores

    m = {"dev_micro_f1": 0.61, "dev_macro_f1": 0.4, "test_micro_f1": 0.6, "test_macro_f1": 0.41,
         "scores": {"dev": {"pair_micro_f1": 0.7, "pair_macro_f1": 0.5}, "test": {"pair_micro_f1": 0.68, "pair_macro_f1": 0.52}}}
    assert scores(m, "own") == {"dev_micro_f1": 0.61, "dev_macro_f1": 0.4, "test_micro_f1": 0.6, "test_macro_f1": 0.41}
    pair = scores(m, "pair")
    assert (pair["dev_micro_f1"], pair["test_micro_f1"], pair["test_macro_f1"]) == (0.7, 0.68, 0.52)
    assert (pair["test_own_micro_f1"], pair["dev_own_micro_f1"]) == (0.6, 0.61)


def test_the_shipped_grid_scores_the_generation_tasks_by_pairs():
    from benchmarks.grid import load_grid

    cells = load_grid(REPO / "benchmarks" / "grid.yaml", "cpu", ["oa-mine", "jd-ner"])
    assert {c.score for c in cells if c.task == "oa-mine"} == {"pair"}
    assert {c.score for c in cells if c.task == "jd-ner"} == {"own"}
    assert {c.method for c in cells if c.task == "oa-mine"} == {"tagger", "tagger-6ep", "smollm2-lora", "smollm2-prefix"}


def test_a_task_s_own_budget_overrides_come_after_the_budget_s(tmp_path, tiny_backbone, toy_data):
    from benchmarks.grid import budget_settings

    lora = write_recipe(tmp_path / "lora.yaml", tiny_backbone, toy_data, tmp_path / "o")
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"""
budgets:
  cpu: {{overrides: [training.epochs=2, data.max_train_examples=96]}}
  full: {{overrides: []}}
tasks:
  slow:
    budgets: {{cpu: [data.max_train_examples=40, data.subset=spread]}}
    methods: {{lora: {{recipe: {lora}, sweep: {{training.lr: [1.0e-3]}}}}}}
  fast:
    methods: {{lora: {{recipe: {lora}, sweep: {{training.lr: [1.0e-3]}}}}}}
""", encoding="utf-8")
    cells = {c.task: c for c in load_grid(grid, "cpu")}
    assert cells["slow"].overrides == ["training.epochs=2", "data.max_train_examples=96", "data.max_train_examples=40",
                                       "data.subset=spread", "training.lr=0.001"]
    assert cells["fast"].overrides == ["training.epochs=2", "data.max_train_examples=96", "training.lr=0.001"]
    assert [c.overrides for c in load_grid(grid, "full", ["slow"])] == [["training.lr=0.001"]]
    assert fingerprint(cells["slow"]) != fingerprint(cells["fast"])  # the overrides are part of what a cell trained
    # the report names every override a task's cells took
    assert budget_settings(grid, "cpu", "slow")["overrides"][-1] == "data.subset=spread"
    assert budget_settings(grid, "cpu", "fast")["overrides"] == ["training.epochs=2", "data.max_train_examples=96"]
