"""Shared fixtures: the models (loaded once), speech made with the project's own TTS, a local server.

Every server event any local session sends during the suite, over any transport to any client
(koe's own, OpenAI's SDKs, the agents SDK in Chromium), is checked against the `openai` package's
event types; a test during which one fails to validate fails (`conforming_events`).
"""

from __future__ import annotations

import os
import secrets
import shlex
import subprocess
from pathlib import Path

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
    try:  # the check must never break the session it watches
        problem = check_server_event(event, self.dialect)
    except Exception as exc:
        problem = f"{self.dialect} {event.get('type')}: could not be checked: {exc!r}"
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
    """The shared models, their English voice steady: a test hears the same speech on every run."""
    loaded = get_models()
    loaded.tts.variation = False
    return loaded


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
    # No capacity limit: tests share it and may leave a call closing; tests/test_admission.py sets one.
    server = LocalServer(port=0, api_key=LOCAL_KEY, models=models, max_calls=0).start()
    yield server
    server.stop()


@pytest.fixture
def backend(local_server) -> Backend:
    return Backend(local_server.url, api_key=LOCAL_KEY)


# -- databases: every store and limits test runs on SQLite and on a real PostgreSQL --------------------
@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server URL: $KOE_TEST_DATABASE_URL (scripts/test.sh starts one), else a throwaway
    cluster started here when PostgreSQL is installed; None without either (the tests say so)."""
    if os.environ.get("KOE_TEST_DATABASE_URL"):
        yield os.environ["KOE_TEST_DATABASE_URL"]
        return
    script = Path(__file__).resolve().parents[1] / "scripts" / "postgres.sh"
    if not any(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        yield None
        return
    exports = subprocess.run(["bash", str(script), "start"], check=True, capture_output=True, text=True).stdout
    found = dict(word.split("=", 1) for word in shlex.split(exports) if "=" in word)
    try:
        yield found["KOE_TEST_DATABASE_URL"]
    finally:
        subprocess.run(["bash", str(script), "stop", found["KOE_TEST_PGDIR"]], check=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> str:
    """Where a store keeps its data: a SQLite file, or a fresh schema of its own on PostgreSQL (the
    cluster starts with the first test that needs it)."""
    if request.param == "sqlite":
        return str(tmp_path / "data" / "koe.sqlite3")
    postgres_url = request.getfixturevalue("postgres_url")
    if postgres_url is None:
        pytest.skip("PostgreSQL is not installed (scripts/test.sh installs and starts it)")
    import sqlalchemy

    from koe.db import database_url

    schema = "t_" + secrets.token_hex(6)
    admin = sqlalchemy.create_engine(database_url(postgres_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()

    request.addfinalizer(drop)
    return f"{postgres_url}?options=-csearch_path%3D{schema}"
