"""Run ``run_recipe.py`` under fault injection (tests only): ``python killpoints.py RECIPE [key=value ...]``.

Every optimizer step and every file-system operation a run relies on for its safety (each
``os.replace``/``os.rename``, ``os.fsync``, ``os.unlink`` and ``os.rmdir``) is an *event*. With ``KILL_AT=N`` the
process sends itself SIGKILL just before its N-th event, the way a power cut or the OOM
killer would stop it (``KILL_KIND=step`` counts optimizer steps only); with ``EVENTS=FILE`` it appends one line per event to FILE. Nothing
of this lives in peft-tags itself: the test wraps the real entry point from outside.
"""
import os
import signal
import sys

KILL_AT = int(os.environ.get("KILL_AT", "0"))
KILL_KIND = os.environ.get("KILL_KIND")  # count only events of this kind (e.g. step) towards KILL_AT
_log = os.open(os.environ["EVENTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if os.environ.get("EVENTS") else None
_count = _counted = 0


def _event(kind: str, what: str) -> None:
    global _count, _counted
    _count += 1
    _counted += KILL_KIND in (None, kind)
    if _log is not None:
        os.write(_log, f"{_count}\t{kind}\t{what}\n".encode())
    if _counted == KILL_AT and KILL_KIND in (None, kind):
        os.kill(os.getpid(), signal.SIGKILL)


def _wrap(module, name: str, kind: str, describe):
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        _event(kind, describe(*args))
        return original(*args, **kwargs)

    setattr(module, name, wrapped)


def _fd_path(fd) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return str(fd)


_wrap(os, "replace", "rename", lambda a, b, *_: f"{a} -> {b}")
_wrap(os, "rename", "rename", lambda a, b, *_: f"{a} -> {b}")
_wrap(os, "fsync", "fsync", lambda fd, *_: _fd_path(fd))
_wrap(os, "unlink", "delete", lambda path, *_, **kw: str(path))  # shutil.rmtree deletes through these
_wrap(os, "rmdir", "delete", lambda path, *_, **kw: str(path))

import torch  # noqa: E402

_wrap(torch.optim.AdamW, "step", "step", lambda *_: "optimizer step")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from peft_tags.cli import train_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
