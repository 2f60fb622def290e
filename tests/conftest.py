"""Shared fixtures: the models (loaded once), speech made with the project's own TTS, a local server."""

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
from koe.local.stages.models import LocalModels, get_models

LOCAL_KEY = "sk-local-test-key"


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
