"""Names of span types, from a file the data set carries.

Tag types are often ids (jd-ner's 52 are numbers). A data set may hold ``types.tsv`` in the
folder of its training file: a header line ``type<TAB>name``, then one type and its name per
line; types not listed have no name. A run keeps the names of its types in ``labels.json``
(``type_names``), and every output that shows a type shows its name beside the id: ``predict``,
``Tagger.tag`` (``Tag.name``), the service and its page.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError

FILE = "types.tsv"
HEADER = ["type", "name"]


def read_type_names(path: Path) -> dict[str, str]:
    """type -> name from ``path``; a UserError naming file and line for anything else."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 (byte {e.start + 1})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    lines = text.splitlines()
    if not lines or lines[0].split("\t") != HEADER:
        raise UserError(f"{path}:1: expected the header line 'type<TAB>name'")
    names: dict[str, str] = {}
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != 2 or not cells[0].strip() or not cells[1].strip():
            raise UserError(f"{path}:{n}: expected a type and its name, separated by one tab")
        kind, name = cells[0].strip(), cells[1].strip()
        if kind in names:
            raise UserError(f"{path}:{n}: type '{kind}' is named twice")
        names[kind] = name
    return names


def type_names_beside(train_file: Path) -> dict[str, str]:
    """The names in ``types.tsv`` beside the training file, or none when there is no such file."""
    path = Path(train_file).parent / FILE
    return read_type_names(path) if path.is_file() else {}
