"""The structure that keeps each change in one room: no module outside ``methods/`` asks for a
method by its name; it asks the method's record (``Method.saves``, ``merge_refusal``, ...)."""
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
        if rel.startswith("methods/") or rel == "bottleneck.py":  # the bottleneck tuner registers its peft type name
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"peft_tags/{rel}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
