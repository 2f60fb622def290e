"""koe.local's model scheduler: what runs next, one job per model at a time, lanes never idle on a busy model."""

from __future__ import annotations

import threading
import time

import pytest

from koe.local.scheduler import ModelScheduler, Urgency


def _gate(scheduler: ModelScheduler, model: str | None = None) -> threading.Event:
    """Occupy a lane (and `model`) until the returned event is set."""
    release, started = threading.Event(), threading.Event()
    scheduler.submit(Urgency.SPEAK, model, lambda: (started.set(), release.wait(10)))
    assert started.wait(5)
    return release


def test_the_playing_reply_goes_first_then_new_replies_by_deadline_then_listening() -> None:
    scheduler = ModelScheduler(workers=1)
    ran: list[str] = []
    release = _gate(scheduler)
    now = time.monotonic()
    jobs = [(Urgency.LISTEN, now - 5, "early transcript"), (Urgency.REPLY, now + 1, "B's first token"),
            (Urgency.SPEAK, now + 0.3, "A's next piece"), (Urgency.REPLY, now - 1, "C's first token (older turn)")]
    futures = [scheduler.submit(urgency, None, ran.append, name, deadline=deadline) for urgency, deadline, name in jobs]
    release.set()
    for future in futures:
        future.result(5)
    assert ran == ["A's next piece", "C's first token (older turn)", "B's first token", "early transcript"]
    scheduler.shutdown()


def test_one_job_per_model_and_a_free_lane_takes_other_work_meanwhile() -> None:
    scheduler = ModelScheduler(workers=2)
    release = _gate(scheduler, "llm")  # one reply streaming on the reply model
    second_reply = scheduler.submit(Urgency.SPEAK, "llm", lambda: "second reply")  # most urgent, but its model is busy
    speech = scheduler.submit(Urgency.LISTEN, "tts", lambda: "speech")
    assert speech.result(5) == "speech"  # the other lane did not wait behind the busy model
    assert not second_reply.done()
    release.set()
    assert second_reply.result(5) == "second reply"
    scheduler.shutdown()


def test_a_job_is_alone_only_while_nothing_else_runs_or_waits() -> None:
    scheduler = ModelScheduler(workers=2)
    assert scheduler.submit(Urgency.REPLY, "llm", scheduler.alone).result(5)
    release = _gate(scheduler, "tts")  # audio being made for a caller in the other lane
    assert not scheduler.submit(Urgency.REPLY, "llm", scheduler.alone).result(5)
    release.set()
    scheduler.shutdown()
    scheduler = ModelScheduler(workers=1)
    release = _gate(scheduler)
    scheduler.submit(Urgency.LISTEN, "stt", lambda: None)  # waits behind the gate
    asked = scheduler.submit(Urgency.SPEAK, None, scheduler.alone)  # runs first once the gate goes: stt still waits
    release.set()
    assert asked.result(5) is False
    scheduler.shutdown()


def test_a_queued_job_can_be_cancelled_and_errors_reach_the_caller() -> None:
    scheduler = ModelScheduler(workers=1)
    release = _gate(scheduler)
    dropped = scheduler.submit(Urgency.LISTEN, "stt", lambda: "never")
    failing = scheduler.submit(Urgency.REPLY, None, lambda: 1 / 0)
    assert dropped.cancel()
    release.set()
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    assert dropped.cancelled()
    scheduler.shutdown()
