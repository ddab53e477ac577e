"""Finding recipes by name under recipes/ folders, and listing them."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from ..errors import UserError, nearest

#: method column of a :func:`list_recipes` row for a file that does not load
ERROR_MARK = "!error"

#: where bare recipe names are looked up, besides ``./recipes``
REPO_RECIPES = Path(__file__).resolve().parent.parent.parent / "recipes"


def default_dirs() -> list[Path]:
    dirs, seen = [], set()
    for d in (Path.cwd() / "recipes", REPO_RECIPES):
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            dirs.append(d)
    return dirs


def display(path: Path) -> str:
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def recipe_files(dirs: Iterable[Path]) -> list[tuple[Path, Path]]:
    """(search dir, file) for every .yaml/.yml under the dirs, each file once."""
    out, seen = [], set()
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for p in sorted(list(d.rglob("*.yaml")) + list(d.rglob("*.yml"))):
            key = p.resolve()
            if p.is_file() and key not in seen:
                seen.add(key)
                out.append((d, p))
    return out


def resolve_recipe_path(name: str, search_dirs: Sequence[str | Path] | None = None) -> Path:
    """An existing file as is; else the one recipe under the search dirs whose path ends with ``name``."""
    if Path(name).is_file():
        return Path(name)
    dirs = default_dirs() if search_dirs is None else [Path(d) for d in search_dirs]
    wanted = [Path(name)]
    if Path(name).suffix not in (".yaml", ".yml"):
        wanted += [Path(name + ".yaml"), Path(name + ".yml")]
    files = recipe_files(dirs)
    matches = []
    for _, p in files:
        parts = p.resolve().parts
        for w in wanted:
            wparts = tuple(x for x in w.parts if x not in ("", "."))
            if wparts and parts[-len(wparts):] == wparts:
                matches.append(p)
                break
    where = "recipes/" if search_dirs is None else ", ".join(display(d) + "/" for d in dirs)
    if not matches:
        rel = [p.relative_to(d).as_posix() for d, p in files]
        hint = nearest(name, rel)
        if hint is None:
            by_base = {Path(r).name: r for r in rel}
            base = nearest(Path(name).name, by_base)
            hint = by_base[base] if base else None
        raise UserError(f"no recipe '{name}' (not a file; not found under {where})"
                        + (f" (did you mean '{hint}'?)" if hint else ""))
    if len(matches) > 1:
        raise UserError(f"ambiguous recipe '{name}': {len(matches)} files under {where} match; "
                        f"give one of: {', '.join(display(p) for p in matches)}")
    return matches[0]


def _without_file(problem: str, path: Path) -> str:
    """A problem line of ``path`` without the file: '<file>: x' -> 'x', '<file>:<line>: x' -> 'line <line>: x'.
    A line naming another file (a base of the recipe) is kept whole."""
    rest = problem.removeprefix(str(path))
    if rest == problem:
        return problem
    if rest.startswith(": "):
        return rest[2:]
    line, colon, text = rest[1:].partition(": ")
    return f"line {line}: {text}" if rest.startswith(":") and line.isdigit() and colon else problem


def list_recipes(root_dirs: Sequence[str | Path] | None = None) -> list[tuple[str, str, str, str]]:
    """Rows (path, method, task, backbone) for every recipe under the dirs, sorted by path.

    A file that does not load gives ``(path, ERROR_MARK, "", first problem)``.
    """
    dirs = default_dirs() if root_dirs is None else [Path(d) for d in root_dirs]
    from .load import load_recipe

    rows = []
    for _, p in recipe_files(dirs):
        shown = display(p)
        try:
            r = load_recipe(p)
        except UserError as err:
            first = str(err).splitlines()[0] if str(err) else "error"
            rows.append((shown, ERROR_MARK, "", _without_file(first, p)))
            continue
        rows.append((shown, r.method.name, r.task.type, r.backbone.name))
    return sorted(rows)
