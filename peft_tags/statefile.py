"""Resume state without pickle: tensors in safetensors, everything else in JSON.

``save_state(obj, path)`` writes ``path.safetensors`` and ``path.json``; ``load_state(path)``
reads them back. ``obj`` may nest dicts (any int/str/float/bool/None keys), lists, tuples,
tensors, numpy arrays and plain scalars: an optimizer's ``state_dict``, a scheduler's, the
trainable weights, the random generators' states. Nothing in either file can run code when
read, so a doctored checkpoint can at worst fail to load; it then fails with one line.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from .errors import UserError, one_line

FORMAT = "peft-tags-state/1"


class _Tensors:
    def __init__(self):
        self.items: dict[str, torch.Tensor] = {}

    def add(self, t: torch.Tensor) -> str:
        key = f"t{len(self.items)}"
        self.items[key] = t.detach().cpu().contiguous().clone()
        return key


def _encode(obj, tensors: _Tensors):
    if isinstance(obj, torch.Tensor):
        return {"__tensor__": tensors.add(obj)}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.dtype.str, "shape": list(obj.shape), "data": obj.ravel().tolist()}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), tensors)
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        for k in obj:
            if not (k is None or isinstance(k, (bool, int, float, str))):
                raise TypeError(f"state key of type {type(k).__name__} cannot be stored")
        return {"__dict__": [[k, _encode(v, tensors)] for k, v in obj.items()]}
    raise TypeError(f"state value of type {type(obj).__name__} cannot be stored")


def _decode(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.asarray(obj["data"], dtype=np.dtype(obj["__ndarray__"])).reshape(obj["shape"])
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {k: _decode(v, tensors) for k, v in obj["__dict__"]}
    raise ValueError(f"unknown entry {sorted(obj)[:3]}")


def save_state(obj, path: str | Path) -> list[Path]:
    """Write ``obj`` to ``path.json`` and ``path.safetensors``, each fsynced; return both paths."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = _Tensors()
    tree = {"format": FORMAT, "tree": _encode(obj, tensors)}
    st, js = path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")
    save_file(tensors.items, str(st))
    js.write_text(json.dumps(tree), encoding="utf-8")
    for p in (st, js):
        fsync_file(p)
    return [st, js]


def load_state(path: str | Path, what: str = "checkpoint"):
    """Read what :func:`save_state` wrote; a missing, truncated or doctored file is one UserError line."""
    from safetensors.torch import load_file

    path = Path(path)
    st, js = path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")
    try:
        tree = json.loads(js.read_text(encoding="utf-8"))
        if not isinstance(tree, dict) or tree.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        tensors = load_file(str(st))
        return _decode(tree["tree"], tensors)
    except FileNotFoundError as e:
        raise UserError(f"{what}: '{e.filename}' is missing") from None
    except Exception as e:  # noqa: BLE001 - any damage to the files is the same user-facing problem
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what}: cannot read '{js.name}'/'{st.name}' in '{path.parent}': {text}") from None


def check_state(path: str | Path, what: str = "checkpoint") -> None:
    """Check what :func:`load_state` would read without reading the tensors: the JSON parses, the
    safetensors file is whole, and every tensor the JSON names is in it. One UserError line if not."""

    path = Path(path)
    st, js = path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")
    try:
        tree = json.loads(js.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what}: '{js}' is missing") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{what}: '{js}' is damaged ({e})") from None
    if not isinstance(tree, dict) or tree.get("format") != FORMAT:
        raise UserError(f"{what}: '{js}' is not a {FORMAT} file")
    if not st.is_file():
        raise UserError(f"{what}: '{st}' is missing")
    try:
        names = set(tensor_shapes(st))
    except UserError as e:
        raise UserError(f"{what}: {e}") from None
    missing = sorted(_refs(tree.get("tree")) - names)
    if missing:
        raise UserError(f"{what}: '{js}' names tensor '{missing[0]}', which '{st.name}' does not hold")


def _refs(obj) -> set[str]:
    if isinstance(obj, list):
        return set().union(*map(_refs, obj)) if obj else set()
    if isinstance(obj, dict):
        own = {obj["__tensor__"]} if isinstance(obj.get("__tensor__"), str) else set()
        return own.union(*map(_refs, obj.values()))
    return set()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        raise UserError(f"{path}: not a valid safetensors file: {one_line(e)}") from None
    return shapes
