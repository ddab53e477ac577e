"""YAML for recipes and grids: a loader with caps against alias bombs, and where each key stands."""
from __future__ import annotations

import yaml

#: caps on a recipe file, so that an alias bomb ("billion laughs") fails at once
MAX_BYTES = 1 << 20
MAX_ALIASES = 100
MAX_NODES = 10_000  # with every alias expanded
MAX_DEPTH = 100


# --------------------------------------------------------------------------- YAML


class YamlTooBig(yaml.YAMLError):
    """A YAML text over the caps (aliases, nodes with aliases expanded, nesting)."""


class CappedLoader(yaml.SafeLoader):
    """SafeLoader that counts alias uses, nodes (every alias expanded) and nesting as it composes."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases, self._depth, self._sizes = 0, 0, {}

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlTooBig(f"too many YAML aliases (more than {MAX_ALIASES} uses of '*name'); "
                                 "a recipe needs few or none")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise YamlTooBig(f"YAML nested more than {MAX_DEPTH} levels deep")
        node = super().compose_node(parent, index)
        self._depth -= 1
        if id(node) not in self._sizes:
            children = node.value if isinstance(node, yaml.SequenceNode) else \
                [n for kv in node.value for n in kv] if isinstance(node, yaml.MappingNode) else []
            self._sizes[id(node)] = 1 + sum(self._sizes.get(id(c), 1) for c in children)
            if self._sizes[id(node)] > MAX_NODES:
                raise YamlTooBig(f"too many YAML nodes (more than {MAX_NODES} with aliases expanded; too many YAML "
                                 "aliases or values)")
        return node


def yaml_load(text: str):
    """``yaml.safe_load`` under the caps of :class:`CappedLoader` (raises :class:`YamlTooBig` past them):
    for any YAML a user hands over, recipes first."""
    return yaml.load(text, Loader=CappedLoader)




def positions(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line of the key in the YAML text (best effort)."""
    try:
        root = yaml.compose(text, Loader=CappedLoader)
    except yaml.YAMLError:
        return {}
    found: dict[str, int] = {}

    def walk(node, prefix):
        if not isinstance(node, yaml.MappingNode):
            return
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            dotted = f"{prefix}{key_node.value}"
            found.setdefault(dotted, key_node.start_mark.line + 1)
            walk(value_node, dotted + ".")

    walk(root, "")
    return found


def duplicates(text: str) -> list[tuple[str, int, int]]:
    """(dotted key, first line, repeated line) for keys given twice in one mapping."""
    try:
        root = yaml.compose(text, Loader=CappedLoader)
    except yaml.YAMLError:
        return []
    out = []

    def walk(node, prefix):
        if not isinstance(node, yaml.MappingNode):
            return
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            dotted = f"{prefix}{key_node.value}"
            line = key_node.start_mark.line + 1
            if dotted in seen:
                out.append((dotted, seen[dotted], line))
            else:
                seen[dotted] = line
            walk(value_node, dotted + ".")

    walk(root, "")
    return out


def yaml_problem(err: yaml.YAMLError) -> str:
    return str(getattr(err, "problem", None) or err).strip()

