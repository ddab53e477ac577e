"""Reading, overriding, validating and writing recipes.

A recipe may name another as its ``base:`` (relative to the recipe's file): the base is read first
(bases can have bases) and the recipe merged over it, mappings key by key and anything else
replacing the base's value; a ``method`` section that names another method replaces the base's. Every file is read under the same caps, and each problem line names
the file and line where its key was written."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import yaml

from ..errors import UserError
from .overrides import apply_overrides, deep_copy, problem_lines
from .schema import SECTIONS, MethodSection, Recipe
from .validate import Problems, RecipeError, build, show, suggest
from .yamlio import MAX_BYTES, YamlTooBig, duplicates, positions, yaml_load, yaml_problem


def build_method(raw: Any, problems: Problems):
    """The ``method`` section: ``name`` picks the method, whose options dataclass checks the other keys."""
    from .. import methods

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.add("method", f"method: expected a mapping of keys, got {show(raw)}")
        return None
    if "name" not in raw:
        typo = next((k for k in raw if suggest(str(k), ["name"]) == "name"), None)
        if typo is not None:  # one problem: the misspelt key
            problems.add(f"method.{typo}", f"unknown key 'method.{typo}' (did you mean 'method.name'?)")
        else:
            problems.add("method.name", "missing required key 'method.name'")
        return None
    name = raw["name"]
    if not isinstance(name, str):
        problems.add("method.name", f"method.name: expected a string, got {show(name)}")
        return None
    method = methods.lookup(name)
    if method is None:
        from ..methods import peft_any

        ours = sorted(methods.REGISTRY)
        hint = peft_any.ours_for(name) or suggest(name, methods.names())
        problems.add("method.name", f"method.name: unknown method '{name}'"
                     + (f" (did you mean '{hint}'?)" if hint else "")
                     + f"; choose from {', '.join(ours)}, or another peft method by its peft name "
                       f"({', '.join(n for n in peft_any.names() if n not in ours)})")
        return None
    options_cls = method.options_cls
    opts = {k: v for k, v in raw.items() if k != "name"}
    takes_none = name if not dataclasses.fields(options_cls) else None
    options = build(options_cls, opts, "method", problems, extra_keys=("name",), no_options_of=takes_none)
    return None if options is None else MethodSection(name=name, options=options)


def cross_checks(recipe: Recipe) -> list[tuple[str, str]]:
    """Checks across sections: (dotted key, problem) pairs. The method says whether it trains over a
    quantised backbone; the task checks the data it is given."""
    from .. import methods, tasks

    problems = []
    if recipe.backbone.quantization != "none" and not methods.get(recipe.method.name).quantizable:
        problems.append(("backbone.quantization", "a quantised backbone is frozen; it cannot be combined with "
                                                  f"method '{recipe.method.name}', which trains the backbone's "
                                                  "weights (use a method over a frozen backbone, or quantization: none)"))
    return problems + tasks.of_recipe(recipe).check_recipe(recipe)


#: the first line of a recipe that peft-tags resolved and wrote into a run (dump_recipe)
RESOLVED = "# Resolved peft-tags recipe"


def build_task(raw: Any, problems: Problems, resolved: bool = False):
    """The ``task`` section: ``type`` picks the task, whose options dataclass checks every key.

    ``resolved``: the recipe of a run, as peft-tags wrote it. Runs written before each task had its
    own section list every task's keys under ``task:``; the keys of the other tasks are dropped."""
    from .. import tasks

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.add("task", f"task: expected a mapping of keys, got {show(raw)}")
        return None
    name = raw.get("type", tasks.DEFAULT)
    if not isinstance(name, str) or name not in tasks.REGISTRY:
        hint = suggest(str(name), tasks.names()) if isinstance(name, str) else None
        problems.add("task.type", f"task.type: must be one of {', '.join(tasks.names())}; got {show(name)}"
                     + (f" (did you mean '{hint}'?)" if hint else ""))
        return None
    options_cls = tasks.get(name).options_cls
    if resolved:
        own = {f.name for f in dataclasses.fields(options_cls)}
        others = {f.name for n in tasks.names() for f in dataclasses.fields(tasks.get(n).options_cls)} - own
        raw = {k: v for k, v in raw.items() if k not in others}
    return build(options_cls, {**raw, "type": name}, "task", problems)


def _finish(raw: Any, source: str, overrides: Sequence[str], positions: dict, resolved: bool = False,
            in_file: dict | None = None, files: Sequence[str] = ()) -> Recipe:
    """Validate ``raw``; ``positions``, ``in_file`` and ``files`` place each problem line (problem_lines)."""
    in_file = in_file or {}
    problems = Problems()
    for key, text in in_file:
        problems.add(key, text)
    recipe = None
    applied: dict[str, tuple[int, str]] = {}
    empty = raw is None or raw == {}
    empty_line = f"{source}: the recipe is empty; expected a mapping with sections " + ", ".join(SECTIONS)
    if empty:
        raw = {}
        if not overrides:  # one line, not one per missing section
            raise RecipeError([empty_line])
    if not isinstance(raw, dict):
        problems.add("", f"the top level must be a mapping with sections {', '.join(SECTIONS)}, got {show(raw)}")
        raw = None
    else:
        raw = deep_copy(raw)
        applied = apply_overrides(raw, overrides, problems)
        meant = set()  # sections a misspelt one is taken for: their keys are not missing, they are misplaced
        for key in raw:
            if key not in SECTIONS:
                hint = suggest(str(key), SECTIONS)
                meant.add(hint or key)
                problems.add(str(key), f"unknown key '{key}'" + (f" (did you mean '{hint}'?)" if hint else ""))
        built = {}
        for name, cls in SECTIONS.items():
            if name in meant and name not in raw:
                built[name] = None
            elif name == "method":
                built[name] = build_method(raw.get(name), problems)
            elif name == "task":
                built[name] = build_task(raw.get(name), problems, resolved)
            else:
                built[name] = build(cls, raw.get(name), name, problems)
        if not len(problems):
            recipe = Recipe(**built, source=source)
            for key, message in cross_checks(recipe):
                problems.add(key, f"{key}: {message}")
    if len(problems):
        if empty:  # overrides alone are no recipe: one line for the file
            raise RecipeError([empty_line])
        raise RecipeError(problem_lines(problems, source, positions, applied, in_file, files))
    return recipe


# --------------------------------------------------------------------------- files and their bases


@dataclasses.dataclass
class _File:
    """One file of a recipe and its bases, read and parsed."""

    path: Path
    source: str  # the path as the messages show it
    text: str
    raw: Any
    lines: dict[str, int]  # dotted key -> line (yamlio.positions)


def _read(path: Path, source: str, named_by: str | None = None) -> _File:
    """Read and parse one recipe file under the caps (size, UTF-8, YAML aliases and nesting).

    ``named_by``: ``<file>:<line>: base '<name>'`` of the recipe that names this file as its base;
    a base that cannot be read is reported there. Raises RecipeError, or UserError for a top-level
    file that cannot be read."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise RecipeError([f"{source}: {size} bytes; a recipe is at most {MAX_BYTES >> 20} MiB"])
        data = path.read_bytes()
    except FileNotFoundError:
        if named_by:
            raise RecipeError([f"{named_by}: no such recipe file (looked for {path.resolve()})"]) from None
        raise UserError(f"{source}: no such recipe file") from None
    except OSError as err:
        if named_by:
            raise RecipeError([f"{named_by}: cannot read the recipe ({err.strerror or err})"]) from None
        raise UserError(f"{source}: cannot read the recipe ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise RecipeError([f"{source}:{line}: not UTF-8 (byte 0x{data[err.start]:02x}); save the recipe as UTF-8"]) from None
    try:
        raw = yaml_load(text)
    except YamlTooBig as err:
        raise RecipeError([f"{source}: {err}"]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise RecipeError([f"{source}: {where}invalid YAML: {yaml_problem(err)}"]) from None
    if named_by and not isinstance(raw, dict):  # the recipe naming it is merged over it key by key
        got = "it is empty" if raw is None else f"got {show(raw)}"
        raise RecipeError([f"{named_by}: {source} must be a mapping with sections {', '.join(SECTIONS)}; {got}"])
    return _File(path, source, text, raw, positions(text))


def _chain(path: Path, source: str) -> list[_File]:
    """The recipe at ``path`` and its bases, the recipe first; raises RecipeError for a ``base:`` that
    is not a string, a base that cannot be read or parsed, and bases that form a cycle."""
    files = [_read(path, source)]
    while isinstance(files[-1].raw, dict) and "base" in files[-1].raw:
        child = files[-1]
        line = child.lines.get("base")
        at = f"{child.source}:{line}" if line else child.source
        name = child.raw["base"]
        if not isinstance(name, str) or not name.strip():
            raise RecipeError([f"{at}: base: expected the path of a recipe file (relative to this one), "
                               f"got {show(name)}"])
        base = Path(name) if Path(name).is_absolute() else child.path.parent / name
        shown = os.path.normpath(base)
        seen = [f.path.resolve() for f in files]
        if base.resolve() in seen:
            cycle = " -> ".join([f.source for f in files[seen.index(base.resolve()):]] + [shown])
            raise RecipeError([f"{at}: base '{name}': the bases form a cycle ({cycle})"])
        files.append(_read(base, shown, named_by=f"{at}: base '{name}'"))
    return files


def _merge(base: Any, child: Any) -> Any:
    """``child`` over ``base``: mappings merge key by key; anything else in the child (a scalar, a
    list, null) replaces the base's value. Neither argument is changed."""
    if not isinstance(base, dict) or not isinstance(child, dict):
        return deep_copy(child)
    out = deep_copy(base)
    for key, value in child.items():
        out[key] = _merge(out.get(key), value)
    return out


def _merged(files: Sequence[_File]) -> Any:
    """The data of a recipe with its bases merged in, ``base`` dropped; a lone file's as it is."""
    if len(files) == 1:
        return files[0].raw
    raw: Any = {}
    for f in reversed(files):  # the furthest base first, the recipe itself last
        child = {k: v for k, v in f.raw.items() if k != "base"}
        if _other_method(raw.get("method"), child.get("method")):
            raw = {k: v for k, v in raw.items() if k != "method"}  # another method: none of the base's options apply
        raw = _merge(raw, child)
    return raw


def _other_method(base: Any, child: Any) -> bool:
    """Whether a recipe's ``method`` names another method than its base's (then it replaces the
    base's section whole instead of merging into it)."""
    return isinstance(base, dict) and isinstance(child, dict) and "name" in child and child["name"] != base.get("name")


def _origins(files: Sequence[_File], raw: Any) -> dict[str, tuple[str, int]]:
    """Dotted key -> (file, line) of every key of the merged ``raw``: the file nearest the recipe
    that writes the key is the one whose value ``raw`` holds."""
    found: dict[str, tuple[str, int]] = {}

    def walk(node, prefix):
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            at = next(((f.source, f.lines[dotted]) for f in files if dotted in f.lines), None)
            if at is not None:
                found[dotted] = at
            if isinstance(value, dict):
                walk(value, dotted + ".")

    if isinstance(raw, dict):
        walk(raw, "")
    return found


# --------------------------------------------------------------------------- public API


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override and validate the recipe at ``path`` (its ``base:`` files merged in, each
    problem line naming the file and line of its key); raise RecipeError listing every problem."""
    source = str(path)
    files = _chain(Path(path), source)
    raw = _merged(files)
    twice = {(key, f"key '{key}' is given twice (lines {first} and {again})"): (f.source, first)
             for f in files for key, first, again in duplicates(f.text)}
    return _finish(raw, source, overrides, _origins(files, raw), files[0].text.startswith(RESOLVED), twice,
                   [f.source for f in files])


def recipe_mapping(path: str | Path) -> Any:
    """The recipe at ``path`` as plain data, its ``base:`` files merged in and ``base`` dropped; not
    validated. Raises RecipeError (UserError) for files that cannot be read or parsed."""
    return _merged(_chain(Path(path), str(path)))


def recipe_from_dict(raw: Any, source: str = "<dict>", overrides: Sequence[str] = ()) -> Recipe:
    """Validate an already-parsed recipe mapping (same rules as :func:`load_recipe`)."""
    return _finish(raw, source, overrides, {})


def recipe_to_dict(recipe: Recipe) -> dict:
    """Plain data of the resolved recipe; ``method`` flattened to ``{name, **options}``."""
    out = {}
    for name in SECTIONS:
        section = getattr(recipe, name)
        if name == "method":
            out[name] = {"name": section.name, **dataclasses.asdict(section.options)}
        else:
            out[name] = dataclasses.asdict(section)
    return out


def dump_recipe(recipe: Recipe, path: str | Path) -> Path:
    """Write the resolved recipe (every default filled in) as YAML; return the path."""
    from ..version import __version__

    path = Path(path)
    data = recipe_to_dict(recipe)
    header = (f"{RESOLVED} (every default filled in), written by peft-tags {__version__}\n"
              f"# from {recipe.source or '<unknown>'}. Train the same again (into another directory) with:\n"
              f"#   peft-tags train {path.name} output.dir=<new directory>\n")
    blocks = [yaml.safe_dump({k: v}, sort_keys=False, allow_unicode=True, default_flow_style=False)
              for k, v in data.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "\n".join(blocks), encoding="utf-8")
    return path

