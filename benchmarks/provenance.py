"""Where a benchmark number came from: commit, tree state, packages, hardware, threads."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# results written by the benchmarks themselves do not make the code that produced them "dirty"
RESULTS_PATHSPEC = ":(exclude)benchmarks/results"


def git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


#: the code a benchmark cell's result depends on (recipes are fingerprinted resolved, separately)
CODE_PATHS = ("peft_tags", "run_recipe.py", "benchmarks/stock_recipe.py")


def tree_state() -> tuple[str, bool]:
    """(commit, dirty): dirty when a file outside benchmarks/results differs from the commit or is
    not in it (ignored files excepted)."""
    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = commit == "unknown" or bool(git("status", "--porcelain", "--untracked-files=normal", "--", ".", RESULTS_PATHSPEC))
    return commit, dirty


def committed_unchanged(path: Path) -> bool:
    """Whether ``path`` is a file of this repository, committed and unchanged."""
    try:
        rel = Path(path).resolve().relative_to(REPO)
    except ValueError:
        return False
    return bool(git("ls-files", "--", str(rel))) and not git("status", "--porcelain", "--", str(rel))


def code_fingerprint() -> str:
    """A hash of the Python files a result depends on (:data:`CODE_PATHS`), by content, so that a
    commit touching only docs or results keeps finished benchmark cells valid."""
    import hashlib

    h = hashlib.sha256()
    for base in CODE_PATHS:
        root = REPO / base
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for f in files:
            if "__pycache__" in f.parts:
                continue
            h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance() -> dict:
    import accelerate
    import peft
    import torch
    import transformers

    try:
        import bitsandbytes
        bnb = bitsandbytes.__version__
    except Exception:  # noqa: BLE001 - an optional package that fails to import is reported as absent
        bnb = None
    commit, dirty = tree_state()
    return {
        "git_commit": commit, "git_dirty": dirty, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "accelerate": accelerate.__version__, "bitsandbytes": bnb,
        "cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
