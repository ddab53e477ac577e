"""``peft-tags serve RUN [RUN ...]``: tag titles over HTTP, many runs on shared backbones.

:mod:`.models` loads the runs (one backbone copy per group of adapters that can share it),
:mod:`.batcher` gathers requests into micro-batches off the event loop, :mod:`.app` is the
FastAPI app (routes, limits, metrics, the page). :func:`serve` runs it with uvicorn; SIGINT
or SIGTERM stop taking connections, finish the queued requests, then exit.
"""
from __future__ import annotations

import logging

from ..errors import UserError

log = logging.getLogger("peft_tags.serve")


def require() -> None:
    import importlib.util

    for module, package in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("prometheus_client", "prometheus-client")):
        if importlib.util.find_spec(module) is None:
            raise UserError(f"serve: needs {package} (pip install 'peft-tags[serve]')")


def _check_address(host: str, port: int) -> None:
    """One line now, rather than uvicorn's exit after the models have loaded."""
    import socket

    try:  # uvicorn binds IPv4 unless the host is an IPv6 address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        infos = socket.getaddrinfo(host, port, family, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host: cannot resolve '{host}' ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise UserError(f"--port: cannot listen on {host}:{port} ({e.strerror})") from None


def serve(items: list[str], host: str = "127.0.0.1", port: int = 8000, backend: str = "torch",
          threads: int | None = None, limits=None, device: str | None = None) -> int:
    """Check the runs, start the server, load the runs in the background (``/readyz`` says when)."""
    require()
    import torch
    import uvicorn

    from .app import Limits, create_app
    from .models import check_runs, load_runs, parse_run_args

    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    _check_address(host, port)
    runs = parse_run_args(items)
    check_runs(runs)
    if backend == "onnx":
        from ..onnxio import ONNX_FILE, require as need_onnx

        need_onnx()
        for _, path in runs:
            if not (path / ONNX_FILE).is_file():
                raise UserError(f"{path}: no ONNX model ({ONNX_FILE}); write one with "
                                f"'peft-tags export {path} DEST --format onnx' and serve DEST")
    if backend == "onnx":
        from ..onnxio import split_threads

        threads = split_threads(threads)
    elif threads:
        torch.set_num_threads(threads)
    failed: list[str] = []

    def fatal(message: str) -> None:
        failed.append(message)
        server.should_exit = True

    app = create_app(lambda: load_runs(runs, backend, device, threads), limits or Limits(), on_fatal=fatal)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=30)
    server = uvicorn.Server(config)
    log.info("serving %s on http://%s:%d (%s backend)", ", ".join(n for n, _ in runs), host, port, backend)
    server.run()
    if failed:
        raise UserError(failed[0])
    return 0
