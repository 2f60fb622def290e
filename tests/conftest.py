"""Shared fixtures: the models (loaded once), speech made with the project's own TTS, a local server.

Every server event any local session sends during the suite, over any transport to any client
(koe's own, OpenAI's SDKs, the agents SDK in Chromium), is checked against the `openai` package's
event types; a test during which one fails to validate fails (`conforming_events`).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach for a model hub
# The suite talks through the fast reply model (the app started by browser tests inherits it); the default
# profile's answers are tested on their own (test_reply_models.py), loading it once.
os.environ.setdefault("KOE_REPLY_MODEL", "fast")

import numpy as np
import pytest

from koe.client import Backend
from koe.local import LocalServer
from koe.local.session import LocalSession
from koe.local.stages.models import LocalModels, get_models

from openai_oracle import check_server_event

LOCAL_KEY = "sk-local-test-key"

# Events that did not validate, from any thread that runs a local server in this process.
NONCONFORMING: list[str] = []
_deliver = LocalSession._deliver


def _checked_deliver(self: LocalSession, event: dict, transports: list) -> None:
    problem = check_server_event(event, self.dialect)
    if problem is not None:
        NONCONFORMING.append(problem)
    _deliver(self, event, transports)


LocalSession._deliver = _checked_deliver


@pytest.fixture(autouse=True)
def conforming_events():
    """Fail the test if a local session sent it (or anyone) an event OpenAI's types reject."""
    start = len(NONCONFORMING)
    yield
    found = NONCONFORMING[start:]
    assert not found, f"{len(found)} server events do not match OpenAI's types:\n" + "\n".join(dict.fromkeys(found))


@pytest.fixture(scope="session")
def models() -> LocalModels:
    return get_models()


@pytest.fixture(scope="session")
def speech(models):
    """speech(text) -> int16 mono 48 kHz samples of the project's TTS saying `text`."""
    cache: dict[str, np.ndarray] = {}

    def make(text: str) -> np.ndarray:
        if text not in cache:
            cache[text] = models.tts.synthesize(text)
        return cache[text]

    return make


@pytest.fixture(scope="session")
def local_server(models):
    server = LocalServer(port=0, api_key=LOCAL_KEY, models=models).start()
    yield server
    server.stop()


@pytest.fixture
def backend(local_server) -> Backend:
    return Backend(local_server.url, api_key=LOCAL_KEY)
