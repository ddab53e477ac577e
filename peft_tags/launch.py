"""Several CPU processes from ``accelerate launch --cpu --num_processes N``.

Accelerate's launcher starts a single process for ``--cpu`` unless it is given an MPI host
file, so ``--num_processes`` would be silently ignored. When a training script finds itself
in that situation it starts the N workers itself, as ``torchrun`` would (same environment
variables, gloo over loopback), and waits for them; Accelerate in each worker then runs DDP.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def requested_cpu_processes() -> int:
    """N when started by ``accelerate launch --cpu --num_processes N`` as one process, else 1."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() != "true" or "RANK" in os.environ:
        return 1
    try:
        args = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return 1
    if not any(a.endswith("accelerate") or "accelerate.commands" in a or a == "launch" for a in args):
        return 1
    for i, a in enumerate(args):
        value = a.split("=", 1)[1] if a.startswith("--num_processes=") else (args[i + 1] if a == "--num_processes" and i + 1 < len(args) else None)
        if value is not None and value.isdigit():
            return int(value)
    return 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(n: int, argv: list[str]) -> int:
    """Start ``n`` copies of this script as ranks 0..n-1 and return the first failing exit code."""
    base = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(n),
                LOCAL_WORLD_SIZE=str(n), ACCELERATE_USE_CPU="true")
    procs = [subprocess.Popen([sys.executable, *argv], env=dict(base, RANK=str(r), LOCAL_RANK=str(r))) for r in range(n)]
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:  # one rank failed: the others would wait for it forever
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
                for p in procs:
                    p.wait()
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        return 130
