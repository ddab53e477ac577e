"""The splits of a recipe: its files, and a dev split held out of train (``data.dev_from_train``)
for data sets that come without one (OA-Mine, AE-110K)."""
from __future__ import annotations

from ..errors import UserError
from . import read_split


def hold_out(examples: list, share: float) -> tuple[list, list]:
    """(kept, held out): the examples whose title hashes into the first ``share`` of the range
    are held out. The choice depends on the title alone, so every run (and every process, and
    a resumed run) holds out the same titles, and a title listed twice lands on one side."""
    import hashlib

    def out(e) -> bool:
        return int.from_bytes(hashlib.sha256(e.text.encode("utf-8")).digest()[:8], "big") < share * 2**64

    return [e for e in examples if not out(e)], [e for e in examples if out(e)]


def read_splits(d) -> dict[str, list]:
    """The splits of a recipe's ``data`` section: train, dev (a file, or ``dev_from_train`` held
    out of train, then cut to ``max_dev_examples``) and test, those it names."""
    data = {split: read_split(d, split) for split in ("train", "dev", "test") if getattr(d, split) is not None}
    if getattr(d, "dev_from_train", None):
        data["train"], dev = hold_out(data["train"], d.dev_from_train)
        data["dev"] = dev[: d.max_dev_examples] if d.max_dev_examples else dev
        if not data["dev"] or not data["train"]:
            raise UserError(f"data.dev_from_train: {d.dev_from_train} of the {len(data['train']) + len(dev)} training "
                            f"titles leaves {'no dev' if not data['dev'] else 'no training'} title; change the share")
    return data
