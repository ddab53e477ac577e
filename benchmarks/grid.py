"""The grid file (``benchmarks/grid.yaml``) and the cells it makes.

The file has two sections, each a mapping of names to settings:

- ``budgets.<name>``: :class:`Budget`, the overrides every cell of the budget takes (and a
  task's ``budgets.<name>``, its own after them);
- ``tasks.<name>``: :class:`Task`, the task's ``methods`` (``<name>``: :class:`Method`, a recipe
  and a learning-rate sweep) and an optional ``reference`` (:class:`Reference`: the stock
  Hugging Face recipe as :class:`StockReference`).

Every section is checked by the recipes' validator (:func:`peft_tags.config.validate.build`):
unknown keys (with a 'did you mean'), missing keys, types, ranges and each section's own
``check``; keys given twice are found as in recipes. The whole file is checked, whichever budget
and tasks are run. A grid with mistakes raises :class:`GridError` with one line: the first
problem in the file's order, as ``<file>:<line>: <dotted key>: <problem>``, and how many more
there are.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from peft_tags.config.overrides import problem_lines
from peft_tags.config.validate import Problems, build, opt, show, suggest
from peft_tags.config.yamlio import YamlTooBig, duplicates, positions, yaml_load, yaml_problem

from .report import short_float

REPO = Path(__file__).resolve().parents[1]


class GridError(Exception):
    """A mistake in the grid file or the command line: one line, exit 2."""


# ---------------------------------------------------------------------------------------------
# cells


@dataclass
class Cell:
    task: str
    method: str
    kind: str                  # "recipe" or "stock"
    recipe: str | None         # repo-relative recipe path (kind == "recipe")
    overrides: list[str]       # budget overrides, then the sweep value
    sweep_key: str
    sweep_value: float
    stock: dict = field(default_factory=dict)
    seed: int | None = None    # None: the recipe's own seed (the stock recipe's: 42)
    score: str = "own"         # tasks.<task>.score: which F1 the cell reports as its micro-F1

    @property
    def base_name(self) -> str:
        return f"{self.method}@{self.sweep_key.rsplit('.', 1)[-1]}={short_float(self.sweep_value)}"

    @property
    def name(self) -> str:
        return self.base_name + ("" if self.seed is None else f",seed={self.seed}")

    def with_seed(self, seed: int) -> "Cell":
        """This cell trained with ``seed``; the cell itself where that is its own seed already."""
        if seed == own_seed(self):
            return self
        if self.kind == "stock":
            return replace(self, stock={**self.stock, "seed": seed}, seed=seed)
        return replace(self, overrides=[*self.overrides, f"training.seed={seed}"], seed=seed)


STOCK_SEED = 42  # the --seed default of benchmarks/stock_recipe.py


def own_seed(cell: Cell) -> int:
    """The seed a cell trains with when none is asked for: its resolved recipe's."""
    if cell.kind == "stock":
        return STOCK_SEED
    from peft_tags.config import load_recipe, recipe_to_dict
    from peft_tags.errors import UserError
    try:
        return int(recipe_to_dict(load_recipe(REPO / cell.recipe, cell.overrides))["training"]["seed"])
    except UserError as e:
        raise GridError(f"{cell.task}/{cell.name}: {str(e).splitlines()[0]}") from None


# ---------------------------------------------------------------------------------------------
# the sections of the grid file

#: a budget, task or method name: it names folders and files
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SECTIONS = ("budgets", "tasks")
STOCK_ROW = "stock-hf"  # the reference row's method name
SCORES = ("own", "pair")  # tasks.<task>.score


def _not_key_value(overrides: list[str] | None) -> list[tuple[str, str]]:
    bad = next((o for o in overrides or [] if "=" not in o), None)
    return [] if bad is None else [("overrides", f"'{bad}' is not key=value")]


@dataclass
class Budget:
    """``budgets.<name>``: how much every cell trains."""

    overrides: list[str] | None = opt(None, "key=value overrides of every cell (data sizes, epochs), before "
                                            "the method's own and its sweep value")
    sweep: bool = opt(True, "false: only the first value of each method's sweep")

    def check(self) -> list[tuple[str, str]]:
        return _not_key_value(self.overrides)


@dataclass
class StockReference:
    """``tasks.<task>.reference.stock``: the stock Hugging Face recipe (benchmarks/stock_recipe.py)
    as a reference row. Its values are passed to the script as written; the budget's
    ``data.max_*_examples`` and ``training.epochs`` apply to it too."""

    train: str | None = opt(None, "training file under the data root (the script's default: jd-ner/train.txt)")
    dev: str | None = opt(None, "dev file under the data root")
    test: str | None = opt(None, "test file under the data root")
    backbone: str | None = opt(None, "backbone name or path (the script's default: me5-small)")
    epochs: float | None = opt(None, "epochs where the budget sets none", gt=0)
    lr: float = opt(1e-3, "its one learning rate (not swept)", gt=0)


@dataclass
class Reference:
    """``tasks.<task>.reference``: reference rows beside the methods."""

    stock: dict | None = opt(None, "the stock Hugging Face recipe's settings (see StockReference)")


@dataclass
class Method:
    """``tasks.<task>.methods.<name>``: a recipe and the values it is swept over."""

    recipe: str = opt(help="the recipe file, relative to the repository root")
    sweep: dict | None = opt(None, "one key with a list of positive numbers, e.g. {training.lr: [1.0e-3, 3.0e-3]}; "
                                   "none: the recipe's own training.lr")
    overrides: list[str] | None = opt(None, "key=value overrides of this method's cells, after the budget's")

    def check(self) -> list[tuple[str, str]]:
        problems = _not_key_value(self.overrides)
        if not (REPO / self.recipe).is_file():
            problems.append(("recipe", f"no such file: {self.recipe}"))
        if not self.sweep:
            return problems
        if not isinstance(self.sweep, dict) or len(self.sweep) != 1:
            return problems + [("sweep", "one key with a list of positive numbers, e.g. {training.lr: [1.0e-3, 3.0e-3]}")]
        (key, values), = self.sweep.items()
        if not isinstance(values, list) or not values:
            return problems + [(f"sweep.{key}", "a non-empty list of values")]
        bad = next((why for why in map(_not_positive, values) if why), None)
        if bad:
            return problems + [(f"sweep.{key}", bad)]
        if len({float(v) for v in values}) != len(values):
            return problems + [(f"sweep.{key}", "a value is listed twice")]
        return problems


@dataclass
class Task:
    """``tasks.<name>``: the methods compared on one task."""

    methods: dict = opt(help="method name -> Method")
    reference: dict | None = opt(None, "reference rows (see Reference)")
    score: str = opt("own", "the F1 that picks rates and ranks rows: own (each run's micro-F1: exact spans for span "
                            "tagging) or pair ((type, value) pairs, on which span taggers and generating models "
                            "compare)", choices=SCORES)
    budgets: dict | None = opt(None, "budget name -> key=value overrides of this task's cells after the budget's own "
                                     "(a task whose models train slower takes fewer titles), e.g. "
                                     "{cpu: [data.max_train_examples=400]}")

    def check(self) -> list[tuple[str, str]]:
        problems = [("methods", "must map method names to their recipe and sweep, got null")] if self.methods is None else []
        if self.budgets is None:
            return problems
        if not isinstance(self.budgets, dict):
            return problems + [("budgets", f"must map budget names to lists of key=value overrides, got {show(self.budgets)}")]
        for name, overrides in self.budgets.items():
            if not isinstance(overrides, list):
                problems.append((f"budgets.{name}", f"a list of key=value overrides, got {show(overrides)}"))
            else:
                problems += [(f"budgets.{name}", why) for _, why in _not_key_value(overrides)]
        return problems


def _not_positive(value) -> str | None:
    """Why ``value`` is not a positive number (a YAML string such as 1e-3 counts), or None."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        return f"'{value}' is not a number"
    return None if math.isfinite(number) and number > 0 else f"{value} must be a positive number"


def _named(raw, key: str, what: str, noun: str, problems: Problems, names: str = "files",
           reserved: str | None = None) -> dict:
    """The names -> settings mapping at ``key``, less the names that cannot name a file."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add(key, f"{key}: must map {what}, got {show(raw)}")
        return {}
    good = {}
    for name, spec in raw.items():
        if NAME.fullmatch(str(name)) and str(name) != reserved:
            good[str(name)] = spec
        else:
            problems.add(f"{key}.{name}", f"{key}.{name}: a {noun} name is letters, digits, '.', '_' and '-' "
                                          f"(it names {names})" + (f", and not '{reserved}' (the reference row)"
                                                                   if reserved else ""))
    return good


@dataclass
class _Row:
    """One row of a task, checked: a method (or the stock reference) and the values it is swept over."""

    method: str
    recipe: str | None         # None: the stock recipe
    key: str                   # the swept key
    values: list[float]
    overrides: list[str] = field(default_factory=list)  # the method's own, after the budget's
    stock: dict = field(default_factory=dict)           # the stock recipe's settings as written
    score: str = "own"                                  # the task's score
    budgets: dict = field(default_factory=dict)         # the task's own overrides per budget


def _method_row(name: str, method: Method, where: str, problems: Problems) -> _Row | None:
    """A method's row: its sweep, or without one its recipe's own training.lr."""
    if method.sweep:
        (key, values), = method.sweep.items()
        return _Row(name, method.recipe, str(key), [float(v) for v in values], list(method.overrides or []))
    from peft_tags.config import load_recipe, recipe_to_dict
    from peft_tags.errors import UserError
    try:
        lr = float(recipe_to_dict(load_recipe(REPO / method.recipe))["training"]["lr"])
    except UserError as e:
        problems.add(f"{where}.recipe", f"{where}.recipe: {str(e).splitlines()[0]}")
        return None
    return _Row(name, method.recipe, "training.lr", [lr], list(method.overrides or []))


def _check(raw, budget: str, problems: Problems) -> tuple[Budget | None, dict[str, list[_Row]]]:
    """The chosen budget and the rows of every task, with every problem of the file in ``problems``."""
    if not isinstance(raw, dict):
        problems.add("", "the grid needs the keys 'budgets' and 'tasks'" + ("" if raw is None else f", got {show(raw)}"))
        return None, {}
    meant = set()
    for key in raw:
        if key not in SECTIONS:
            hint = suggest(str(key), SECTIONS)
            meant.add(hint)
            problems.add(str(key), f"unknown key '{key}'" + (f" (did you mean '{hint}'?)" if hint else ""))
    for key in SECTIONS:
        if key not in raw and key not in meant:
            problems.add(key, f"missing required key '{key}'")

    budgets = {name: build(Budget, spec, f"budgets.{name}", problems) for name, spec in
               _named(raw.get("budgets"), "budgets", "budget names (smoke, cpu, full, long) to their settings", "budget",
                      problems, names="folders").items()}
    defined = raw.get("budgets") or {}
    if "budgets" in raw and isinstance(defined, dict) and budget not in defined:
        problems.add("budgets", f"budgets.{budget} is not defined (defined: {', '.join(map(str, defined)) or 'none'})")

    tasks = {}
    if "tasks" in raw and raw["tasks"] in (None, {}):
        problems.add("tasks", "tasks: must map task names to their methods; it names none")
    for name, spec in _named(raw.get("tasks"), "tasks", "task names to their methods", "task", problems).items():
        where = f"tasks.{name}"
        task = build(Task, spec, where, problems)
        if task is None:
            continue
        rows = tasks[name] = []
        reference = build(Reference, task.reference, f"{where}.reference", problems)
        if reference is not None and "stock" in (task.reference or {}):
            settings = reference.stock or {}
            stock = build(StockReference, settings, f"{where}.reference.stock", problems)
            if stock is not None:
                rows.append(_Row(STOCK_ROW, None, "stock.lr", [stock.lr], stock=dict(settings)))
        for method, spec in _named(task.methods, f"{where}.methods", "method names to their recipe and sweep", "method",
                                   problems, reserved=STOCK_ROW).items():
            m = build(Method, spec, f"{where}.methods.{method}", problems)
            row = None if m is None else _method_row(method, m, f"{where}.methods.{method}", problems)
            if row is not None:
                rows.append(row)
        for unknown in set(task.budgets or {}) - set(defined if isinstance(defined, dict) else {}):
            problems.add(f"{where}.budgets.{unknown}", f"{where}.budgets.{unknown}: no such budget "
                                                       f"(defined: {', '.join(map(str, defined or {})) or 'none'})")
        for row in rows:
            row.score = task.score
            row.budgets = dict(task.budgets or {})
    return budgets.get(budget), tasks


def _one_line(problems: Problems, path: Path, where: dict[str, int]) -> str:
    """The first problem in the file's order as ``<file>:<line>: <problem>`` (``<file>: <problem>``
    for a key the file lacks), and how many more there are."""
    first = problem_lines(problems, str(path), where, {})[0].removeprefix(f"{path}: ")
    key = next(k for k, text in problems.items if text == first)
    while key and key not in where:
        key = key.rpartition(".")[0]
    more = len(problems) - 1
    return (f"{path}:{where[key]}: {first}" if key else f"{path}: {first}") + \
        (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def _read(path: Path) -> tuple[str, object]:
    """The grid file's text and its YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise GridError(f"{path}: cannot read the grid file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise GridError(f"{path}: not UTF-8; save the grid file as UTF-8") from None
    try:
        return text, yaml_load(text)
    except YamlTooBig as e:
        raise GridError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise GridError(f"{path}{f':{mark.line + 1}' if mark else ''}: not valid YAML ({yaml_problem(e)})") from None


def budget_settings(path: Path, budget: str, task: str | None = None) -> dict:
    """The budget's settings as written in the grid file (for the reports); with ``task``, its
    overrides are the budget's then the task's own (``tasks.<task>.budgets.<budget>``)."""
    raw = yaml_load(path.read_text(encoding="utf-8"))
    settings = dict(raw["budgets"][budget] or {})
    own = (((raw.get("tasks") or {}).get(task) or {}).get("budgets") or {}).get(budget) if task else None
    if own:
        settings["overrides"] = [*(settings.get("overrides") or []), *own]
    return settings


# ---------------------------------------------------------------------------------------------
# the cells of a grid


def load_grid(path: Path, budget: str, tasks: list[str] | None = None, methods: list[str] | None = None) -> list[Cell]:
    """The cells of ``path`` for ``budget``: ordered so that every method's first sweep value runs
    before any second one (a grid cut short still has a row per method)."""
    text, raw = _read(path)
    problems = Problems()
    for key, first, again in duplicates(text):
        problems.add(key, f"key '{key}' is given twice (lines {first} and {again})")
    chosen, checked = _check(raw, budget, problems)
    if len(problems):
        raise GridError(_one_line(problems, path, positions(text)))
    for t in tasks or []:
        if t not in checked:
            raise GridError(f"--task: no task '{t}' in {path} (tasks: {', '.join(checked)})")
    budget_overrides = list(chosen.overrides or [])
    rounds: list[list[Cell]] = []
    seen_methods = set()
    for task, rows in checked.items():
        if tasks and task not in tasks:
            continue
        for row in rows:
            if methods and row.method not in methods:
                continue
            seen_methods.add(row.method)
            mine = [*budget_overrides, *row.budgets.get(budget, [])]
            for i, v in enumerate(row.values if chosen.sweep else row.values[:1]):
                while len(rounds) <= i:
                    rounds.append([])
                if row.recipe is None:
                    rounds[i].append(Cell(task, row.method, "stock", None, list(mine), row.key, v,
                                          stock=dict(row.stock), score=row.score))
                else:
                    rounds[i].append(Cell(task, row.method, "recipe", row.recipe,
                                          [*mine, *row.overrides, f"{row.key}={v!r}"], row.key, v,
                                          score=row.score))
    for m in methods or []:
        if m not in seen_methods:
            raise GridError(f"--method: no method '{m}' in the chosen tasks of {path}")
    return [c for r in rounds for c in r]
