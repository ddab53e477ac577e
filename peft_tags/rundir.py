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

from .errors import UserError

OUTPUT_FILES = ("labels.json", "recipe.yaml", "head.safetensors")
#: what a method saves besides the head (``Method.saves``) -> the files that must be there
SAVED_FILES = {"adapter": ("adapter_config.json", "adapter_model.safetensors"), "model": ("model/config.json",),
               "head": ()}
LORA_KEY = re.compile(r"(?:base_model\.model\.)?(.*)\.lora_(?:embedding_)?([ABE])(?:\.weight)?")


def check_run_dir(path: str | Path) -> tuple:
    """(recipe, labels.json) of the output directory ``path``, once its files make sense."""
    from .model import HEAD_NAME
    from .recipe import RecipeError, load_recipe

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
    from . import methods

    method = recipe.method.name
    saves = methods.get(method).saves
    needed = SAVED_FILES[saves]
    missing = [f for f in needed if not (out / f).is_file()]
    if missing:
        raise UserError(f"{out}: incomplete output of method '{method}' (missing {', '.join(missing)})")
    meta = _check_labels(out / "labels.json")
    if meta.get("task", "tagging") != recipe.task.type:
        raise UserError(f"{out / 'labels.json'}: a {meta.get('task', 'tagging')} run, but recipe.yaml says "
                        f"task.type {recipe.task.type}")
    n = meta["num_outputs"]
    head = out / "head.safetensors"
    shapes = tensor_shapes(head)
    for name, rank in (("weight", 2), ("bias", 1)):
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
        raise UserError(f"{what}: cannot be loaded: {_one_line(e)}") from None


def read_json(path: Path, kind: type = dict):
    """The JSON value of ``path`` (an object by default), or one UserError line naming file and line."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8; the file is damaged") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    if not isinstance(value, kind):
        raise UserError(f"{path}: expected a JSON {'object' if kind is dict else kind.__name__}, "
                        f"got {type(value).__name__}")
    return value


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from the header of the safetensors file ``path``; UserError when it is
    not one, or its size disagrees with the header (truncated, or data appended)."""
    from safetensors import safe_open

    size = n = 0
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 8 + n <= size else None
    except (OSError, ValueError):
        header = None
    if size < 8 or not isinstance(header, dict):
        raise UserError(f"{path}: not a safetensors file ({'empty' if size == 0 else 'no valid header'}; "
                        "truncated or damaged)")
    try:
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        shapes = {k: [int(d) for d in v["shape"]] for k, v in tensors.items()}
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError, AttributeError):
        raise UserError(f"{path}: damaged safetensors header") from None
    if size != 8 + n + end:
        raise UserError(f"{path}: {size} bytes, but its header describes {8 + n + end}; "
                        "the file is truncated or damaged")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as e:  # noqa: BLE001 - safetensors' own checks of the header
        raise UserError(f"{path}: not a valid safetensors file: {_one_line(e)}") from None
    return shapes


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
def _one_line(e: BaseException) -> str:
    text = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()).replace(":;", ":") or type(e).__name__
    if isinstance(e, KeyError):
        text = f"missing key {text}"
    return text if len(text) <= 300 else text[:297] + "..."


def _is_int(v, lo: int = 1, hi: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)


def _is_prob(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0


def _names(v) -> bool:
    """A list of distinct non-empty strings."""
    return isinstance(v, list) and all(isinstance(x, str) and x for x in v) and len(set(v)) == len(v)


def _check_labels(path: Path) -> dict:
    """labels.json, with the keys its task needs, of sane types and consistent sizes."""
    meta = read_json(path)
    task = meta.get("task", "tagging")

    def need(key, ok, what):
        if key not in meta:
            raise UserError(f"{path}: missing key '{key}' (a {task} run needs it)")
        if not ok(meta[key]):
            raise UserError(f"{path}: '{key}' must be {what}, got {json.dumps(meta[key], ensure_ascii=False)[:60]}")

    if task == "tagging":
        need("types", _names, "a list of distinct span types")
        need("slots", lambda v: _is_int(v, 1, 16), "an integer in [1, 16]")
        expected = meta["slots"] * (1 + 2 * len(meta["types"]))
    elif task == "multilabel":
        need("tags", lambda v: _names(v) and v, "a non-empty list of distinct tags")
        need("pooling", lambda v: v in ("mean", "first"), "mean or first")
        need("thresholds", lambda v: isinstance(v, dict), "an object")
        th = meta["thresholds"]
        if th.get("rule") not in ("per-tag", "global"):
            raise UserError(f"{path}: 'thresholds.rule' must be per-tag or global, got {th.get('rule')!r}")
        if not _is_prob(th.get("global")):
            raise UserError(f"{path}: 'thresholds.global' must be a number in [0, 1], got {th.get('global')!r}")
        per_tag = th.get("per_tag")
        if th["rule"] == "per-tag" or per_tag is not None:
            bad = next((t for t in meta["tags"] if not isinstance(per_tag, dict) or not _is_prob(per_tag.get(t))), None)
            if bad is not None:
                raise UserError(f"{path}: 'thresholds.per_tag' must hold a number in [0, 1] for every tag "
                                f"(not for '{bad}')")
        if th.get("top_k") is not None and not _is_int(th["top_k"]):
            raise UserError(f"{path}: 'thresholds.top_k' must be null or an integer >= 1, got {th['top_k']!r}")
        expected = len(meta["tags"])
    else:
        raise UserError(f"{path}: 'task' must be tagging or multilabel, got {task!r}")
    need("max_length", _is_int, "an integer >= 1")
    need("num_outputs", lambda v: _is_int(v) and v == expected,
         f"{expected} (from the {'types and slots' if task == 'tagging' else 'tags'})")
    return meta


def _check_adapter(out: Path, config: dict, weights: dict[str, list[int]], backbone: str) -> None:
    """adapter_config.json against the recipe's backbone and the shapes in adapter_model.safetensors."""
    path = out / "adapter_config.json"
    kind = config.get("peft_type")
    if not isinstance(kind, str) or not kind:
        raise UserError(f"{path}: missing key 'peft_type'")
    base = config.get("base_model_name_or_path")
    if base and not same_backbone(str(base), backbone):
        raise UserError(f"{path}: the adapter was trained on backbone '{base}', but recipe.yaml's backbone.name is "
                        f"'{backbone}'")
    if kind not in ("LORA", "ADALORA"):
        return
    rank_key = "r" if kind == "LORA" else "init_r"
    if not _is_int(config.get(rank_key)):
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
