"""The structure that keeps each change in one room: no module outside ``methods/`` asks for a
method by its name (it asks the method's record: ``Method.saves``, ``merge_refusal``, ...), no
module outside ``tasks/`` asks for a task by its name (it asks the task class), no module is over
400 lines, and the import graph has no upward arrows."""
from __future__ import annotations

import re

from conftest import REPO


def test_no_method_name_is_spelt_outside_the_methods_package():
    from peft_tags import methods

    names = sorted(methods.REGISTRY)
    pattern = re.compile(r"""["'](%s)["']""" % "|".join(re.escape(n) for n in names))
    package = REPO / "peft_tags"
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.startswith(("methods/", "tuners/")):  # our peft tuners register their peft type names
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"peft_tags/{rel}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def test_no_task_name_is_spelt_outside_the_tasks_package():
    from peft_tags import tasks

    pattern = re.compile(r"""["'](%s)["']""" % "|".join(re.escape(n) for n in tasks.names()))
    package = REPO / "peft_tags"
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.startswith("tasks/"):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"peft_tags/{rel}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def test_no_module_is_over_400_lines():
    long = [f"{p.relative_to(REPO)}: {n}" for p in sorted([*REPO.joinpath("peft_tags").rglob("*.py"),
                                                          *REPO.joinpath("benchmarks").rglob("*.py")])
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400]
    assert not long, "\n".join(long)


# Each module's layer, lowest first (the longest matching prefix wins). A module may import
# (at the top or inside a function) only from its own layer or the ones below: the arrows of
# the import graph point down.
LAYERS = [
    ("base", ["errors", "version"]),
    ("files", ["config.validate", "config.yamlio", "config.overrides", "data", "owned", "lock", "statefile", "metrics",
               "precision", "sampler", "tablefiles"]),
    ("schema", ["config.schema"]),
    ("methods", ["methods", "tuners", "backbones"]),
    ("model", ["model", "onnxio"]),
    ("tasks", ["tasks"]),
    ("recipes", ["config", "recipe"]),
    ("checks", ["preflight", "rundir", "card", "derive", "hub"]),
    ("runs", ["checkpoint", "predict", "stream", "publish", "train", "regularize", "export", "retune", "serve"]),
    ("commands", ["cli", "__main__", ""]),
]


def _layer(module: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if module == p or module.startswith(p + ".") or p == "":
                if best is None or len(p) > best[1]:
                    best = (i, len(p))
    return best[0]


def import_edges() -> set[tuple[str, str]]:
    """(importer, imported) between peft_tags modules, names relative to the package ('' is the
    package itself), function-level imports included."""
    import ast

    package = REPO / "peft_tags"

    def name(p):
        parts = list(p.relative_to(package).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name(p): p for p in package.rglob("*.py")}
    edges = set()
    for mod, path in modules.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level:
                base = [x for x in pkg.split(".") if x]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                subs = [f"{target}.{a.name}".strip(".") for a in node.names]
                targets = [s for s in subs if s in modules] or [target]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("peft_tags"):
                targets = [node.module[len("peft_tags"):].lstrip(".")]
            elif isinstance(node, ast.Import):
                targets = [a.name[len("peft_tags"):].lstrip(".") for a in node.names if a.name.startswith("peft_tags")]
            edges.update((mod, t) for t in targets if t != mod)
    return edges


def test_the_import_graph_has_no_upward_arrows():
    upward = sorted(f"{a or 'peft_tags'} ({LAYERS[_layer(a)][0]}) -> {b or 'peft_tags'} ({LAYERS[_layer(b)][0]})"
                    for a, b in import_edges() if _layer(b) > _layer(a))
    assert not upward, "\n".join(upward)
