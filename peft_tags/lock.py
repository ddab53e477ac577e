"""One run per output: an exclusive lock on ``<dir>.lock``, holding pid, host and start time.

A second run on the same output fails at once with one line naming the holder. The lock is a
``flock`` on that file: the kernel drops it when its holder dies, so a lock file left by a
killed run is recognised and taken over. A file in that place that is not a peft-tags lock is
left alone and refused.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .errors import UserError


class OutputLock:
    """``with OutputLock(out, key):`` holds ``<out>.lock`` exclusively, or raises one UserError line."""

    def __init__(self, out: Path, key: str = "output.dir"):
        self.out, self.path = out, out.with_name(out.name + ".lock")
        self.key, self.fd = key, None

    def acquire(self) -> "OutputLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{self.key}: cannot create '{self.path.parent}': {e.strerror}") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                created = True
            except FileExistsError:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW)
                except FileNotFoundError:  # released between the two calls
                    continue
                except OSError as e:
                    raise UserError(f"{self.key}: cannot open the lock file '{self.path}': {e.strerror}") from None
                created = False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _describe_holder(fd)
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    raise UserError(f"{self.key}: '{self.out}' is in use by another run ({holder}; lock file "
                                    f"{self.path})") from None
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder released (and removed) it while we waited: try again
                os.close(fd)
                continue
            if not created and not _is_lock_file(fd):
                os.close(fd)
                raise UserError(f"{self.key}: '{self.path}' exists and is not a peft-tags lock file; "
                                "it is left as it is: move it away or choose another output directory")
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"format": "peft-tags-lock/1", "pid": os.getpid(), "host": socket.gethostname(),
                                      "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
            os.fsync(fd)
            self.fd = fd
            return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_fd(fd: int) -> bytes:
    return os.pread(fd, 4096, 0)


def _is_lock_file(fd: int) -> bool:
    try:
        data = json.loads(_read_fd(fd) or b"null")
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("format") == "peft-tags-lock/1"


def _describe_holder(fd: int) -> str:
    try:
        data = json.loads(_read_fd(fd))
        return f"pid {data['pid']} on {data['host']}, since {data['since']}"
    except (ValueError, KeyError, TypeError):
        return "a process that is starting"
