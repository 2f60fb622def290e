"""The Talk page (app.py) under Streamlit's AppTest with streamlit-webrtc's own bookkeeping of the call: reruns
in quick succession on a busy server keep the call; leaving the page and coming back starts afresh."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import streamlit as st
import streamlit_webrtc.component as webrtc_component
import streamlit_webrtc.shutdown as webrtc_shutdown
from streamlit.testing.v1 import AppTest
from streamlit_webrtc.component import WebRtcStreamerState

from components.conversation import PAGE_SHOWN
from conftest import LOCAL_KEY

ROOT = Path(__file__).resolve().parents[1]


class Worker:
    """Stands in for the running call's WebRTC worker: streamlit-webrtc stops it when it resets the call."""
    backend = "aiortc"
    local_description = None  # its answer was sent long ago

    def __init__(self) -> None:
        self.stopped = False

    def stop(self, timeout: float | None = None) -> None:
        self.stopped = True


@pytest.fixture
def talk(tmp_path, monkeypatch, local_server):
    """Run the Talk page with Streamlit's count of finished runs set by the test (`count.value`)."""
    monkeypatch.setenv("KOE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KOE_LOCAL_URL", local_server.url)
    monkeypatch.setenv("KOE_LOCAL_API_KEY", LOCAL_KEY)
    for name in ("KOE_ACCESS_CODE", "KOE_ADMIN_CODE", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    count = types.SimpleNamespace(value=0)
    # AppTest has no browser connection, so no count of its own: streamlit-webrtc reads this one.
    monkeypatch.setattr(webrtc_component, "get_this_session_info", lambda: types.SimpleNamespace(
        script_run_count=count.value))
    monkeypatch.setattr(webrtc_shutdown, "get_this_session_info", lambda: None)  # no session to watch
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    yield at, count
    st.cache_resource.clear()


def calling(at: AppTest) -> Worker:
    """As when the browser's call is up: streamlit-webrtc's context holds a live worker, playing."""
    worker = Worker()
    context = at.session_state["talk"]
    context._set_worker(worker)
    context._set_state(WebRtcStreamerState(playing=True, signalling=False))
    return worker


def test_quick_reruns_keep_the_call(talk):
    # Streamlit counts a run as finished only when its last message is sent: on a busy server the next run can
    # start before that and read the same count. Then streamlit-webrtc took the run after for a return to the
    # page and stopped the call (seen in a browser as the call ending by itself, "the browser disconnected").
    at, count = talk
    at.run()
    assert not at.exception
    worker = calling(at)
    for seen in (1, 1, 3, 4, 4, 6):  # each run's reading of the count: twice one short
        count.value = seen
        at.run()
        assert not at.exception
    assert not worker.stopped and at.session_state["talk"].state.playing


def test_coming_back_from_another_page_starts_afresh(talk):
    # The browser's component was gone while History was shown, and its call with it: streamlit-webrtc's reset of
    # what it kept still happens on the way back.
    at, count = talk
    at.run()
    worker = calling(at)
    # History's full run, as app.py notes it (AppTest's switch_page runs pages/ files without app.py's navigation).
    at.session_state[PAGE_SHOWN] = ("", "History")
    count.value = 2
    at.run()
    assert not at.exception
    assert worker.stopped and not at.session_state["talk"].state.playing
