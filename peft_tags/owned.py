"""Paths peft-tags owns: marked directories, a lock per output, and crash-safe swaps.

Every directory that peft-tags creates to write into (a run's output and ``.work`` folder, an
export, a derived tag set, a staging folder) holds :data:`MARKER`, a small JSON file with the
kind and identity of what wrote it. Nothing is ever deleted or replaced unless it is a real
directory (not a symbolic link) holding that marker, and never one of the protected places
(``/``, the home directory, the repository, the data root and anything inside it).

:class:`Staged` writes a directory beside its destination and swaps it in; every step leaves
a state that :func:`recover` finishes or rolls back when the next command for that
destination starts, so a ``kill -9`` at any moment loses nothing and hides nothing.

The exclusive lock on an output (``<dir>.lock``) is :class:`peft_tags.lock.OutputLock`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

from .errors import UserError

MARKER = ".peft-tags.json"
FORMAT = "peft-tags-dir/1"
REPO_ROOT = Path(__file__).resolve().parent.parent


def new_id() -> str:
    return uuid.uuid4().hex


# ----------------------------------------------------------------------------- durable writes
def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (not following links), then ``root``."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if not p.is_symlink():
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(Path(dirpath))


def write_json_atomic(path: Path, data) -> None:
    """Write ``data`` as JSON into ``path`` through a fsynced temporary file and one rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, ensure_ascii=False, indent=1))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


# ----------------------------------------------------------------------------- markers
def write_marker(d: Path, kind: str, run_id: str, complete: bool = False, **extra) -> dict:
    data = {"format": FORMAT, "kind": kind, "id": run_id, "complete": complete, "host": socket.gethostname(),
            "pid": os.getpid(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    write_json_atomic(d / MARKER, data)
    return data


def read_marker(d: Path) -> dict | None:
    """The marker of directory ``d``, or None when ``d`` is not a real directory holding a valid one."""
    try:
        if d.is_symlink() or not d.is_dir():
            return None
        data = json.loads((d / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def is_owned(d: Path) -> bool:
    return read_marker(d) is not None


# ----------------------------------------------------------------------------- protected places
def _data_root() -> Path | None:
    from .data import DATA_ENV, DEFAULT_DATA_ROOT

    root = os.environ.get(DATA_ENV) or DEFAULT_DATA_ROOT
    return Path(root).expanduser().resolve()


def protected(extra_roots=()) -> list[tuple[Path, str, bool]]:
    """(path, what it is, whether everything inside is protected too)."""
    places = [(Path("/"), "the file-system root", False), (Path.home().resolve(), "the home directory", False),
              (Path.cwd().resolve(), "the working directory", False)]
    if (REPO_ROOT / "pyproject.toml").is_file():
        places.append((REPO_ROOT, "the peft-tags repository", False))
    for root in [_data_root(), *extra_roots]:
        if root is not None:
            places.append((Path(root).expanduser().resolve(), "the data root", True))
    return places


def check_target(path: Path, key: str, extra_roots=()) -> None:
    """Refuse an output path that is, or holds, a protected place, or lies inside the data root."""
    where = _absolute(path)
    for place, what, inside in protected(extra_roots):
        if where == place or place.is_relative_to(where):
            raise UserError(f"{key}: '{path}' is {'' if where == place else 'a folder holding '}{what} ({place}); "
                            "choose a directory of its own for the output")
        if inside and where.is_relative_to(place):
            raise UserError(f"{key}: '{path}' lies inside {what} ({place}); write outputs elsewhere")


def _absolute(path: Path) -> Path:
    """``path`` made absolute with its parent's links resolved but not its own last part."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    return path.parent.resolve() / path.name if path.name else path


def check_replaceable(path: Path, key: str, extra_roots=()) -> None:
    """``path`` may be replaced: absent, or a directory peft-tags wrote and not a protected place."""
    check_target(path, key, extra_roots)
    if not os.path.lexists(path):
        return
    if path.is_symlink():
        raise UserError(f"{key}: '{path}' is a symbolic link; peft-tags replaces only directories it wrote itself")
    if not path.is_dir():
        raise UserError(f"{key}: '{path}' is a file; peft-tags replaces only directories it wrote itself")
    if not is_owned(path):
        raise UserError(f"{key}: '{path}' was not written by peft-tags (it has no {MARKER}); it is left as it is: "
                        "choose another directory, or move it away yourself")


def is_empty_dir(path: Path) -> bool:
    """A real, empty directory (what a removal killed after its marker went leaves; nothing to lose)."""
    try:
        return not path.is_symlink() and path.is_dir() and not os.listdir(path)
    except OSError:
        return False


def remove_owned(path: Path) -> bool:
    """Delete ``path`` if it is a directory peft-tags wrote (never through a link), or an empty one;
    True if removed."""
    if os.path.lexists(path) and is_owned(path):
        _remove_marked(path)
        return True
    if is_empty_dir(path):
        os.rmdir(path)
        return True
    return False


def _remove_marked(path: Path) -> None:
    """Delete a marked directory with its marker last: a removal killed part-way leaves a folder
    that is still marked, which the next command finishes removing."""
    if read_marker(path) is None:
        raise RuntimeError(f"refusing to delete '{path}': it has no {MARKER}")
    for entry in os.scandir(path):
        if entry.name != MARKER:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
    fsync_dir(path)
    os.unlink(path / MARKER)
    os.rmdir(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------- staged directories
_STAGE = re.compile(r"(new|old)-(\d+)")


def _stage_name(dest: Path, role: str, pid: int) -> Path:
    return dest.with_name(f".{dest.name}.peft-tags-{role}-{pid}")


def _stages(dest: Path) -> list[tuple[str, int, Path]]:
    """Staging folders of ``dest`` left by earlier processes: (role, pid, path); exact names, no globbing."""
    prefix = f".{dest.name}.peft-tags-"
    out = []
    try:
        entries = os.listdir(dest.parent)
    except OSError:
        return out
    for name in entries:
        if name.startswith(prefix):
            m = _STAGE.fullmatch(name[len(prefix):])
            if m:
                out.append((m.group(1), int(m.group(2)), dest.parent / name))
    return out


def recover(dest: Path) -> list[str]:
    """Finish or roll back a swap into ``dest`` that a killed process left half-done.

    A complete new folder whose writer is gone is swapped in (the old one, if any, is moved
    aside first); an incomplete one is removed; an old folder left aside is put back when
    nothing replaced it, and removed when something did. Returns what was done, one line each.
    """
    done = []
    host = socket.gethostname()
    for role, pid, path in sorted(_stages(dest), key=lambda s: s[0]):  # "new" before "old"
        marker = read_marker(path)
        if marker is None and not pid_alive_and_not_us(pid) and _unmarked_stage(path):
            shutil.rmtree(path)  # made, then killed before its marker was in: nothing else in it
            continue
        if marker is None or (pid != os.getpid() and marker.get("host") == host and pid_alive_and_not_us(pid)):
            continue  # not ours, or its writer still works on it
        if role == "new":
            if marker.get("complete"):
                if os.path.lexists(dest):
                    if not is_owned(dest):
                        continue
                    os.replace(dest, _stage_name(dest, "old", pid))
                os.replace(path, dest)
                fsync_dir(dest.parent)
                done.append(f"finished publishing {dest} (interrupted before)")
            else:
                _remove_marked(path)
                done.append(f"removed the unfinished {path.name}")
    for role, pid, path in _stages(dest):
        if role != "old" or read_marker(path) is None:
            continue
        if pid != os.getpid() and pid_alive_and_not_us(pid):
            continue
        if os.path.lexists(dest):
            _remove_marked(path)
            done.append(f"removed the replaced {path.name}")
        else:
            os.replace(path, dest)
            fsync_dir(dest.parent)
            done.append(f"put back {dest} (a replacement was interrupted)")
    return done


def _unmarked_stage(path: Path) -> bool:
    """A staging folder killed between its mkdir and its marker's rename: empty, or holding only
    the marker's temporary file (a plain file)."""
    try:
        if path.is_symlink() or not path.is_dir():
            return False
        entries = os.listdir(path)
    except OSError:
        return False
    temp = MARKER + ".tmp"
    return not entries or (entries == [temp] and (path / temp).is_file() and not (path / temp).is_symlink())


def make_dir(path: Path, kind: str, run_id: str, **marker) -> None:
    """Create directory ``path`` with its marker in one rename (never a directory without one)."""
    recover(path)
    stage = _stage_name(path, "new", os.getpid())
    stage.mkdir(parents=True)
    write_marker(stage, kind, run_id, complete=True, **marker)
    os.replace(stage, path)
    fsync_dir(path.parent)


def pid_alive_and_not_us(pid: int) -> bool:
    return pid != os.getpid() and _alive(pid)


class Staged:
    """Write a directory beside ``dest`` and swap it in whole::

        with Staged(dest, "export") as tmp:
            ...write into tmp...
        # dest now holds it; an exception leaves dest as it was and removes tmp

    The caller checks early that ``dest`` may be replaced (:func:`check_replaceable`); the swap
    checks again, since a folder may appear at ``dest`` while the work is done: without
    ``replace`` any folder there is left alone, with it only one peft-tags wrote is replaced.
    """

    def __init__(self, dest: Path, kind: str, run_id: str | None = None, replace: bool = False, key: str | None = None,
                 **marker):
        self.dest, self.kind, self.id, self.marker = Path(dest), kind, run_id or new_id(), marker
        self.replace, self.key = replace, key or str(dest)
        self.tmp = _stage_name(self.dest, "new", os.getpid())

    def __enter__(self) -> Path:
        recover(self.dest)
        if os.path.lexists(self.tmp):
            remove_owned(self.tmp)
        self.tmp.mkdir(parents=True)
        write_marker(self.tmp, self.kind, self.id, **self.marker)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.commit()
        finally:
            if os.path.lexists(self.tmp):  # not swapped in: an exception here or in the block
                shutil.rmtree(self.tmp, ignore_errors=True)
        return False

    def commit(self) -> None:
        if os.path.lexists(self.dest):
            if not self.replace:
                raise UserError(f"{self.key}: '{self.dest}' appeared while this was written; it is left as it is")
            check_replaceable(self.dest, self.key)
        write_marker(self.tmp, self.kind, self.id, complete=True, **self.marker)
        fsync_tree(self.tmp)
        old = _stage_name(self.dest, "old", os.getpid())
        if os.path.lexists(self.dest):
            os.replace(self.dest, old)
        os.replace(self.tmp, self.dest)
        fsync_dir(self.dest.parent)
        if os.path.lexists(old):
            _remove_marked(old)
