"""The HTTP service: FastAPI routes over the micro-batcher.

- ``POST /v1/tag`` ``{"model": NAME, "titles": [...], "options": {...}}`` -> per title its tags
  (what ``Tagger.tag`` gives, as ``as_dict()``: spans with label (the type id), name where the
  run knows it, text, start, end, score; multi-label runs: tag and score). ``options`` are the
  run's task's (multi-label: ``top_k``, ``threshold``).
- ``GET /v1/models``, ``GET /healthz`` (the process is up), ``GET /readyz`` (models loaded),
  ``GET /metrics`` (Prometheus text), ``GET /`` (a page to try titles in a browser).

Bad input never gets a 500: malformed JSON 400, unknown model 404, too many titles or too
large a body 413, a too-long or bad title or option 422, all as ``{"error": {"status",
"message", "limit"?}}``; a full queue 503 with Retry-After.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fastapi import Request  # module level: FastAPI reads the route's annotations from here

from ..errors import UserError
from .batcher import Job, MicroBatcher

log = logging.getLogger("peft_tags.serve")
PAGE = Path(__file__).with_name("page.html")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class Limits:
    max_titles: int = 256  # titles per request
    max_chars: int = 1000  # characters per title
    max_batch: int = 32  # titles per forward pass
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    max_queue: int = 2048  # titles waiting; beyond it, 503
    timeout_s: float = 300.0  # a request not answered by then gets 504

    @property
    def max_body_bytes(self) -> int:
        # 12 bytes a character: JSON encoders that escape non-ASCII write \\uXXXX, twice for an emoji
        return self.max_titles * (self.max_chars * 12 + 8) + 4096


class TaggingFailed:
    """The result of a request whose tagging raised (a bug; the log has its traceback)."""


class ApiError(Exception):
    def __init__(self, status: int, message: str, limit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.limit = status, message, limit


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("peft_tags_requests", "tag requests by model and HTTP status", ["model", "status"],
                                registry=r)
        self.titles = Counter("peft_tags_titles", "titles tagged, by model", ["model"], registry=r)
        self.latency = Histogram("peft_tags_request_seconds", "time from a tag request's arrival to its answer",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("peft_tags_batch_titles", "titles per micro-batch", buckets=BATCH_BUCKETS, registry=r)
        self.queue = Gauge("peft_tags_queue_titles", "titles waiting to be tagged", registry=r)
        self.ready = Gauge("peft_tags_ready", "1 once the models are loaded", registry=r)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def create_app(load: Callable[[], dict], limits: Limits = Limits(), on_fatal: Callable[[str], None] | None = None,
               load_in_background: bool = True):
    """The FastAPI app. ``load()`` returns the served runs by name (:func:`.models.load_runs`);
    it runs in a thread after startup, and ``/readyz`` says 503 until it is done. A failure to
    load is one line to ``on_fatal``."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    from .models import tag_requests

    metrics = Metrics()
    state = {"runs": None, "failed": None, "batcher": None}

    def compute(jobs: list[Job]) -> list:
        """Results (or exceptions) of the jobs, group by group. A failing group is tried again job
        by job, so one bad request fails alone, not everything batched with it."""
        by_group: dict = {}
        for j, job in enumerate(jobs):
            by_group.setdefault(id(job.run.group), []).append(j)
        out: list = [None] * len(jobs)
        for idx in by_group.values():
            group = jobs[idx[0]].run.group
            try:
                res = tag_requests(group, [(jobs[j].run, jobs[j].titles, jobs[j].options) for j in idx],
                                   limits.max_batch)
            except Exception:
                if len(idx) == 1:
                    log.exception("tagging failed (model %s)", jobs[idx[0]].run.name)
                    out[idx[0]] = TaggingFailed()
                    continue
                res = [compute([jobs[j]])[0] for j in idx]
            for j, r in zip(idx, res):
                out[j] = r
        return out

    def loader():
        try:
            state["runs"] = load()
            metrics.ready.set(1)
            log.info("ready: %s", ", ".join(state["runs"]))
        except UserError as e:
            state["failed"] = str(e)
            if on_fatal is not None:
                on_fatal(str(e))
        except Exception as e:  # a bug: keep its traceback in the log, and stop serving
            log.exception("loading failed")
            state["failed"] = f"loading failed: {type(e).__name__}: {e}"
            if on_fatal is not None:
                on_fatal(state["failed"])

    @asynccontextmanager
    async def lifespan(app):
        batcher = MicroBatcher(compute, limits.max_batch, limits.max_wait_ms, limits.max_queue,
                               on_batch=metrics.batch.observe).start()
        state["batcher"] = batcher
        if load_in_background:
            threading.Thread(target=loader, name="peft-tags-loader", daemon=True).start()
        else:
            loader()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, batcher.stop, 120)

    app = FastAPI(title="peft-tags", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.peft_tags = state

    def error(status: int, message: str, limit: str | None = None, headers: dict | None = None):
        body = {"status": status, "message": message, **({"limit": limit} if limit else {})}
        return JSONResponse({"error": body}, status_code=status, headers=headers)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if state["batcher"] is not None and not state["batcher"].worker.is_alive():
            return error(503, "the tagging worker has stopped")
        if state["runs"] is not None:
            return {"status": "ready", "models": list(state["runs"])}
        if state["failed"]:
            return error(503, state["failed"])
        return error(503, "loading models")

    @app.get("/metrics")
    async def prometheus():
        metrics.queue.set(state["batcher"].queued_titles if state["batcher"] else 0)
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models():
        if state["runs"] is None:
            return error(503, "loading models", headers={"Retry-After": "1"})
        return {"models": [r.describe() for r in state["runs"].values()]}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.post("/v1/tag")
    async def tag(request: Request):
        start = time.perf_counter()
        model = "unknown"
        batcher = state["batcher"]
        try:
            batcher.arriving += 1
            try:
                name, run, titles, options = await _parse(request, state, limits)
                model = name
                job = Job(run, titles, options, asyncio.get_running_loop().create_future(), asyncio.get_running_loop())
                queued = batcher.submit(job)
            finally:
                batcher.arriving -= 1
            if not queued:
                if batcher.stopping or not batcher.worker.is_alive():
                    raise ApiError(503, "the service is shutting down")
                raise ApiError(503, f"the queue is full ({limits.max_queue} titles waiting); retry shortly",
                               "max_queue")
            results = await asyncio.wait_for(job.future, limits.timeout_s)
            if isinstance(results, TaggingFailed):
                raise ApiError(500, "tagging failed (the service log has the details)")
        except asyncio.TimeoutError:
            metrics.requests.labels(model, "504").inc()
            return error(504, f"no answer within {limits.timeout_s:g} s")
        except ApiError as e:
            metrics.requests.labels(model, str(e.status)).inc()
            return error(e.status, e.message, e.limit, {"Retry-After": "1"} if e.status == 503 else None)
        except Exception:  # a bug, logged by the worker: still a JSON answer, and counted
            metrics.requests.labels(model, "500").inc()
            return error(500, "tagging failed (the service log has the details)")
        metrics.requests.labels(model, "200").inc()
        metrics.titles.labels(model).inc(len(titles))
        metrics.latency.labels(model).observe(time.perf_counter() - start)
        return {"model": model, "task": run.task.name,
                "results": [{"title": t, "tags": [x.as_dict() for x in tags]} for t, tags in zip(titles, results)]}

    return app


async def _parse(request, state: dict, limits: Limits):
    """(model name, run, titles, options) of a tag request, or an ApiError saying what is wrong."""
    from ..data import check_title

    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limits.max_body_bytes:
        raise ApiError(413, f"the body is over {limits.max_body_bytes} bytes", "max_body_bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise ApiError(413, f"the body is over {limits.max_body_bytes} bytes", "max_body_bytes")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the body is not JSON: {getattr(e, 'msg', 'not UTF-8')}") from None
    except RecursionError:
        raise ApiError(400, "the body is not JSON this service reads: nested too deeply") from None
    except ValueError as e:  # e.g. an integer past Python's digit limit
        raise ApiError(400, f"the body is not JSON this service reads: {str(e)[:120]}") from None
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "the body holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object with 'model' and 'titles'")
    unknown = sorted(set(data) - {"model", "titles", "options"})
    if unknown:
        raise ApiError(422, f"unknown field '{unknown[0][:40]}' (fields: model, titles, options)")
    if state["runs"] is None:
        raise ApiError(503, "loading models")
    name = data.get("model")
    if not isinstance(name, str):
        raise ApiError(422, "'model' must be a string, one of GET /v1/models")
    run = state["runs"].get(name)
    if run is None:
        raise ApiError(404, f"no model '{name[:100]}' (served: {', '.join(state['runs'])})")
    titles = data.get("titles")
    if not isinstance(titles, list) or not titles:
        raise ApiError(422, "'titles' must be a non-empty list of strings")
    if len(titles) > limits.max_titles:
        raise ApiError(413, f"{len(titles)} titles; at most {limits.max_titles} per request", "max_titles")
    for i, t in enumerate(titles):
        if not isinstance(t, str):
            raise ApiError(422, f"titles[{i}] is not a string")
        if len(t) > limits.max_chars:
            raise ApiError(422, f"titles[{i}] has {len(t)} characters; at most {limits.max_chars}", "max_chars")
        try:
            check_title(t, f"titles[{i}]")
        except UserError as e:
            raise ApiError(422, str(e)) from None
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise ApiError(422, "'options' must be an object")
    for key, value in options.items():
        if not (isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**31
                or isinstance(value, float) and math.isfinite(value)):
            raise ApiError(422, f"options.{key[:40]} must be a number")
    try:
        run.task.check_options(**options)
    except UserError as e:
        raise ApiError(422, re.sub(r"--([a-z-]+)", lambda m: "options." + m[1].replace("-", "_"), str(e))) from None
    except TypeError:
        raise ApiError(422, "bad options") from None
    return name, run, titles, options
