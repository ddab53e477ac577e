"""Dynamic micro-batching: requests that arrive within a few milliseconds share forward passes.

Requests wait in one bounded queue (counted in titles). A worker thread, off the event loop,
takes the oldest request, then keeps taking requests until ``max_batch`` titles are gathered
or ``max_wait`` has passed since the first one arrived, and hands the lot to ``compute``
(:func:`.models.tag_requests` per backbone group). It waits only while other requests are
on their way in (:attr:`MicroBatcher.arriving`, counted by the app between a request's arrival
and its submission): a lone request is tagged at once instead of waiting ``max_wait`` for
company that is not coming, and under load the batches fill while the model is busy. A full queue refuses at once (the service
answers 503 with Retry-After) instead of growing without bound. :meth:`MicroBatcher.stop`
finishes what is queued before the worker ends, for a graceful shutdown.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("peft_tags.serve")


@dataclass(eq=False)
class Job:
    run: object  # a ServedRun
    titles: list[str]
    options: dict
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(self, compute: Callable[[list[Job]], list], max_batch: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 1024, on_batch: Callable[[int], None] | None = None):
        self.compute, self.max_batch, self.max_wait = compute, max_batch, max_wait_ms / 1000.0
        self.max_queue, self.on_batch = max_queue, on_batch
        self.queue: collections.deque[Job] = collections.deque()
        self.queued_titles = 0
        self.cond = threading.Condition()
        self.stopping = False
        self.arriving = 0  # requests being read and checked, soon submitted (written by the event loop only)
        self.worker = threading.Thread(target=self._work, name="peft-tags-batcher", daemon=True)

    def start(self) -> "MicroBatcher":
        self.worker.start()
        return self

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False when the queue is full or the service is stopping (nothing queued)."""
        with self.cond:
            if self.stopping or not self.worker.is_alive() or (self.queued_titles and self.queued_titles + len(job.titles) > self.max_queue):
                return False
            self.queue.append(job)
            self.queued_titles += len(job.titles)
            self.cond.notify()
        return True

    def stop(self, timeout: float | None = None) -> None:
        """Take no more jobs, finish the queued ones, end the worker."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self.worker.is_alive():
            self.worker.join(timeout)

    def _take(self) -> list[Job] | None:
        with self.cond:
            while not self.queue:
                if self.stopping:
                    return None
                self.cond.wait()
            jobs = [self.queue.popleft()]
            n = len(jobs[0].titles)
            deadline = jobs[0].arrived + self.max_wait
            while n < self.max_batch:
                if self.queue:
                    if n + len(self.queue[0].titles) > self.max_batch:
                        break
                    jobs.append(self.queue.popleft())
                    n += len(jobs[-1].titles)
                    continue
                left = deadline - time.perf_counter()
                if left <= 0 or self.stopping or self.arriving <= 0:
                    break
                self.cond.wait(left)
            self.queued_titles -= n
            return jobs

    def _work(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            try:
                if self.on_batch is not None:
                    self.on_batch(sum(len(j.titles) for j in jobs))
                results = self.compute(jobs)
                for job, result in zip(jobs, results):
                    job.loop.call_soon_threadsafe(_settle, job.future, result, None)
            except Exception as e:  # a bug must reach the waiting requests, not kill the worker
                log.exception("tagging failed")
                for job in jobs:
                    try:
                        job.loop.call_soon_threadsafe(_settle, job.future, None, e)
                    except RuntimeError:  # its event loop has closed
                        pass


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
