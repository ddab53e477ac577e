"""Checks of a trained output directory, before ``predict``, ``export`` or ``retune`` build a model.

:func:`check_run_dir` reads the small files and the headers of the safetensors files (no
tensor data, no model) and raises one :class:`~peft_tags.errors.UserError` line naming the
file at fault: missing files, damaged JSON or YAML, truncated safetensors, a head or adapter
whose shapes disagree with ``labels.json`` or ``adapter_config.json``, an adapter made for
another backbone than the recipe's. :func:`loading` turns what torch, peft or safetensors
still raise while loading into such a line too.
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError, one_line
from .hub import same_id
from .statefile import tensor_shapes
from .tasks import is_int, task_of

OUTPUT_FILES = ("labels.json", "recipe.yaml")  # and head.safetensors, for a task with a head
#: what a method saves besides the head (``Method.saves``) -> the files that must be there
SAVED_FILES = {"adapter": ("adapter_config.json", "adapter_model.safetensors"), "model": ("model/config.json",),
               "head": ()}
LORA_KEY = re.compile(r"(?:base_model\.model\.)?(.*)\.lora_(?:embedding_)?([ABE])(?:\.weight)?")


def check_run_dir(path: str | Path) -> tuple:
    """(recipe, labels.json) of the output directory ``path``, once its files make sense."""
    from .model import HEAD_NAME
    from .config import RecipeError, load_recipe

    out = Path(path)
    if not out.is_dir():
        raise UserError(f"{out}: not a peft-tags output directory (no such directory)")
    missing = [f for f in OUTPUT_FILES if not (out / f).is_file()]
    if missing:
        raise UserError(f"{out}: not a peft-tags output directory (missing {', '.join(missing)})")
    try:
        recipe = load_recipe(out / "recipe.yaml")
    except RecipeError as e:  # one line for the run, however many problems
        more = len(e.problems) - 1
        raise UserError(e.problems[0] + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")) from None
    from . import methods, tasks

    method = recipe.method.name
    saves = methods.get(method).saves
    needed = SAVED_FILES[saves]
    missing = [f for f in needed if not (out / f).is_file()]
    if missing:
        raise UserError(f"{out}: incomplete output of method '{method}' (missing {', '.join(missing)})")
    meta = _check_labels(out / "labels.json")
    if task_of(meta) != recipe.task.type:
        raise UserError(f"{out / 'labels.json'}: a {task_of(meta)} run, but recipe.yaml says "
                        f"task.type {recipe.task.type}")
    n = meta["num_outputs"]
    head = out / "head.safetensors"
    has_head = tasks.of_meta(meta).model_kind == "token"
    if has_head and not head.is_file():
        raise UserError(f"{out}: not a peft-tags output directory (missing head.safetensors)")
    shapes = tensor_shapes(head) if has_head else {}
    for name, rank in (("weight", 2), ("bias", 1)) if has_head else ():
        if name not in shapes or len(shapes[name]) != rank:
            raise UserError(f"{head}: expected a {rank}-d tensor '{name}' (holds {', '.join(shapes) or 'none'})")
        if shapes[name][0] != n:
            raise UserError(f"{head}: '{name}' has {shapes[name][0]} outputs, but labels.json says num_outputs {n}")
    if "adapter_config.json" in needed:
        config = read_json(out / "adapter_config.json")
        weights = tensor_shapes(out / "adapter_model.safetensors")
        _check_adapter(out, config, weights, recipe.backbone.name)
        for key, shape in weights.items():
            if key.endswith((f"{HEAD_NAME}.weight", f"{HEAD_NAME}.bias")) and shape[:1] != [n]:
                raise UserError(f"{out / 'adapter_model.safetensors'}: '{key}' has {(shape or [0])[0]} outputs, but "
                                f"labels.json says num_outputs {n}")
    if saves == "model":
        read_json(out / "model" / "config.json")
        for f in sorted((out / "model").glob("*.safetensors")):
            tensor_shapes(f)
    return recipe, meta


@contextmanager
def loading(what):
    """Errors of torch, peft, safetensors or json while loading ``what`` as one UserError line."""
    from safetensors import SafetensorError

    try:
        yield
    except UserError:
        raise
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError, OSError, EOFError, SafetensorError) as e:
        if type(e).__name__ == "OutOfMemoryError":
            raise
        raise UserError(f"{what}: cannot be loaded: {one_line(e)}") from None


def read_json(path: Path, kind: type = dict):
    """The JSON value of ``path`` (an object by default), or one UserError line naming file and line."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data":  # cut inside a character: a JSON text cut short
            raise UserError(f"{path}: invalid JSON (the file ends inside a character; it was cut short)") from None
        raise UserError(f"{path}: not UTF-8; the file is damaged") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    if not isinstance(value, kind):
        raise UserError(f"{path}: expected a JSON {'object' if kind is dict else kind.__name__}, "
                        f"got {type(value).__name__}")
    return value


def same_backbone(a: str, b: str) -> bool:
    """Whether two backbone names mean the same: equal as given, the same local directory, or a
    relative path that does not resolve from here and ends the other, absolute one."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.is_dir() and pb.is_dir():
        return pa.resolve() == pb.resolve()
    for rel, other in ((pa, pb), (pb, pa)):
        parts = tuple(p for p in rel.parts if p not in (".", ".."))
        if parts and not rel.is_absolute() and not rel.exists() and other.is_absolute() \
                and other.parts[-len(parts):] == parts:
            return True
    return False


# ----------------------------------------------------------------------------- helpers
def _check_labels(path: Path) -> dict:
    """labels.json, with the keys its task needs, of sane types and consistent sizes."""
    meta = read_json(path)
    task = task_of(meta)

    def need(key, ok, what):
        if key not in meta:
            raise UserError(f"{path}: missing key '{key}' (a {task} run needs it)")
        if not ok(meta[key]):
            raise UserError(f"{path}: '{key}' must be {what}, got {json.dumps(meta[key], ensure_ascii=False)[:60]}")

    from . import tasks

    if task not in tasks.REGISTRY:
        raise UserError(f"{path}: 'task' must be one of {', '.join(tasks.names())}, got {task!r}")
    expected = tasks.of_meta(meta).check_meta(meta, need, path)
    need("max_length", is_int, "an integer >= 1")
    need("num_outputs", lambda v: is_int(v, 0) and v == expected, f"{expected} (from the task's labels)")
    return meta


def _check_adapter(out: Path, config: dict, weights: dict[str, list[int]], backbone: str) -> None:
    """adapter_config.json against the recipe's backbone and the shapes in adapter_model.safetensors."""
    path = out / "adapter_config.json"
    kind = config.get("peft_type")
    if not isinstance(kind, str) or not kind:
        raise UserError(f"{path}: missing key 'peft_type'")
    base = config.get("base_model_name_or_path")
    if base and not same_backbone(str(base), backbone) and not same_id(str(base), backbone):
        raise UserError(f"{path}: the adapter was trained on backbone '{base}', but recipe.yaml's backbone.name is "
                        f"'{backbone}'")
    if kind not in ("LORA", "ADALORA"):
        return
    rank_key = "r" if kind == "LORA" else "init_r"
    if not is_int(config.get(rank_key)):
        raise UserError(f"{path}: '{rank_key}' must be an integer >= 1, got {config.get(rank_key)!r}")
    pattern = config.get("rank_pattern") or {}
    ranks: dict[str, set] = {}
    for key, shape in weights.items():
        m = LORA_KEY.fullmatch(key)
        if m and len(shape) >= 2:
            ranks.setdefault(m.group(1), set()).add(shape[1] if m.group(2) == "B" else shape[0])
    if not ranks:
        raise UserError(f"{out / 'adapter_model.safetensors'}: holds no {kind} weights, but adapter_config.json "
                        f"is a {kind} adapter")
    targets = config.get("target_modules")
    for module, found in sorted(ranks.items()):
        if isinstance(targets, (str, list)) and not _targeted(targets, module):
            raise UserError(f"{path}: target_modules {json.dumps(targets)} does not cover '{module}', which "
                            "adapter_model.safetensors holds weights for")
        if kind == "LORA":  # rank_pattern: regular expressions of module names -> rank
            allowed = {config["r"]} | {r for p, r in pattern.items() if _matches(p, module)}
        else:  # AdaLoRA: the ranks kept per matrix, as a mask over init_r
            mask = pattern.get(f"{module}.lora_E")
            allowed = {sum(map(bool, mask))} if isinstance(mask, list) else {config["init_r"]}
        if len(found) > 1 or not found <= allowed:
            want = " or ".join(map(str, sorted(allowed)))
            raise UserError(f"{path}: rank {want} (from '{rank_key}'{' and rank_pattern' if pattern else ''}), but "
                            f"adapter_model.safetensors holds rank {'/'.join(map(str, sorted(found)))} for '{module}'")


def _targeted(targets: str | list, module: str) -> bool:
    """peft's rule: a string is a regular expression of the whole name, a list names its last parts."""
    if isinstance(targets, str):
        try:
            return re.fullmatch(targets, module) is not None
        except re.error:
            return True
    return any(module == t or module.endswith(f".{t}") for t in targets)


def _matches(pattern: str, module: str) -> bool:
    try:
        return re.match(rf"(.*\.)?({pattern})$", module) is not None
    except re.error:
        return False
