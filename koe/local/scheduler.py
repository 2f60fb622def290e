"""Which model work runs next, for every conversation of one koe.local process.

All model work (speech to text, the turn model, the reply model, text to speech) is a job with an urgency
and a deadline, queued here and served by a few worker threads ("lanes"):

- SPEAK: the next piece of a reply that is already playing. Its audio is promised to a caller; the
  deadline is when what the caller already has runs out.
- REPLY: what a new reply waits on before its first audio: the turn's transcript, the turn model's
  verdict, the reply model's tokens, the first clause's speech.
- LISTEN: transcribing a turn that may still be going on (the pass started when a silence began).

A free lane takes the most urgent job (then the earliest deadline, then the oldest) whose model is not
already running: each model runs one job at a time (a llama.cpp context, a Whisper model and Piper's
phonemizer are not shared by two threads), and a lane never sits waiting on a model's lock while other
work is ready. Jobs are not pre-empted: a reply model streaming a long reply keeps its lane.

Threads: `lanes()` jobs run at once, and each model is built with `model_threads()` threads of its own
(llama.cpp, CTranslate2, ONNX Runtime), so that together they use the cores without oversubscribing them.
A job that finds itself `alone()` (no other job running or waiting) may use every core for a step: the reply
model evaluates a prompt so.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

LANES_ENV = "KOE_MODEL_LANES"
CORES_ENV = "KOE_LOCAL_CORES"


class Urgency(IntEnum):
    """How soon a job's result is heard (lower runs first)."""

    SPEAK = 0
    REPLY = 1
    LISTEN = 2


def cores() -> int:
    """The cores this process may use: $KOE_LOCAL_CORES when set (a worker's share of the machine, given by
    the front of `python -m koe.local --workers N`), else its CPU affinity (so a container's limit counts)."""
    share = os.environ.get(CORES_ENV, "").strip()
    if share:
        return max(1, int(share))
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def lanes() -> int:
    """How many model jobs run at once: $KOE_MODEL_LANES, else 2 (a reply's tokens and the speech of its
    previous clause overlap), never more than the cores."""
    raw = os.environ.get(LANES_ENV, "").strip()
    wanted = int(raw) if raw else 2
    if wanted < 1:
        raise ValueError(f"{LANES_ENV} must be 1 or more")
    return min(wanted, cores())


def model_threads() -> int:
    """Threads each model computes with: the cores shared among the lanes (at least one)."""
    return max(1, cores() // lanes())


@dataclass(order=True)
class _Job:
    urgency: int
    deadline: float
    seq: int
    model: str | None = field(compare=False)
    fn: Callable[..., Any] = field(compare=False)
    args: tuple = field(compare=False)
    future: concurrent.futures.Future = field(compare=False)


class ModelScheduler:
    """The queue of model jobs and its lanes (threads). Thread-safe; `submit` from any thread.

    `model` names the model a job runs ("stt", "llm", "tts", "turn"...): one job per model at a time;
    None for work that needs no model of its own. `deadline` is a `time.monotonic()` time (default: now).
    """

    def __init__(self, workers: int | None = None, name: str = "koe-models") -> None:
        self.workers = workers or lanes()
        self._queue: list[_Job] = []
        self._busy: set[str] = set()  # models running a job now
        self._running = 0  # jobs running now, with or without a model
        self._ready = threading.Condition()
        self._seq = itertools.count()
        self._closed = False
        self.late_pieces = 0  # SPEAK jobs that started after their caller's audio had run out
        self._threads = [threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True)
                         for i in range(self.workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, urgency: Urgency, model: str | None, fn: Callable[..., Any], *args: Any,
               deadline: float | None = None) -> concurrent.futures.Future:
        """Queue `fn(*args)`; its future can be cancelled until it starts. Raises RuntimeError once shut down."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        job = _Job(int(urgency), time.monotonic() if deadline is None else deadline, next(self._seq), model, fn,
                   args, future)
        with self._ready:
            if self._closed:
                raise RuntimeError("the model scheduler is shut down")
            self._queue.append(job)
            self._ready.notify()
        return future

    def run(self, urgency: Urgency, model: str | None, fn: Callable[..., Any], *args: Any,
            deadline: float | None = None) -> asyncio.Future:
        """`submit`, awaitable on the running loop (cancelling it cancels the job if not yet started)."""
        return asyncio.wrap_future(self.submit(urgency, model, fn, *args, deadline=deadline))

    @property
    def queued(self) -> int:
        return len(self._queue)

    def alone(self) -> bool:
        """Called from a running job: whether it is the only job running and none waits, so that it may use
        every core for its next step. Ask again before each step: a job queued a moment later takes a lane."""
        with self._ready:
            return self._running <= 1 and not self._queue

    def shutdown(self) -> None:
        """Stop taking jobs; queued ones are cancelled, running ones finish."""
        with self._ready:
            self._closed = True
            for job in self._queue:
                job.future.cancel()
            self._queue.clear()
            self._ready.notify_all()

    def _take(self) -> _Job | None:
        """The most urgent queued job whose model is free (under the lock); None when there is none."""
        ready = [job for job in self._queue if job.model is None or job.model not in self._busy]
        if not ready:
            return None
        job = min(ready)  # (urgency, deadline, order of arrival)
        self._queue.remove(job)
        return job

    def _serve(self) -> None:
        while True:
            with self._ready:
                while (job := self._take()) is None:
                    if self._closed:
                        return
                    self._ready.wait()
                if job.model is not None:
                    self._busy.add(job.model)
                self._running += 1
            try:
                if job.future.set_running_or_notify_cancel():
                    if job.urgency == Urgency.SPEAK and time.monotonic() > job.deadline:
                        self.late_pieces += 1
                    try:
                        job.future.set_result(job.fn(*job.args))
                    except BaseException as exc:  # handed to whoever awaits the job
                        job.future.set_exception(exc)
            finally:
                with self._ready:
                    if job.model is not None:
                        self._busy.discard(job.model)
                    self._running -= 1
                    self._ready.notify_all()
