"""History and Events in a real browser (Debian's Chromium), on conversations written to the app's store.

- What was said is shown as text: a transcript line holding a Markdown image or an HTML <img> pointing
  at a loopback server makes Chromium request nothing from it, on History or Events; and tables offer
  no CSV download of their own (Streamlit's would not neutralise formulas).
- Events updates live: events written while the page is open appear without a reload.
- Screenshots of both pages are saved in screenshots/ (git ignores it) for a person to look at.
"""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from koe.store import SessionStore

from test_browser import ROOT, chromium, free_port, pytestmark, serve, write_wav  # noqa: F401  (skip mark)
from test_store import USAGE, reply_done, reply_events, user_words

SCREENSHOTS = ROOT / "screenshots"


class Probe(http.server.ThreadingHTTPServer):
    """A loopback HTTP server that only counts the requests it gets."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        probe = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                probe.requests.append(self.path)
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def probe():
    server = Probe()
    yield server
    server.shutdown()


def record(store: SessionStore, conversation_id: str, events) -> None:
    for event, at in events:
        store.record_event(conversation_id, "server", event, at)


def a_conversation(store: SessionStore, said: str, reply: str, *, end: bool = True) -> str:
    """One voice turn, a measured latency, usage and a settings change; ended unless `end` is False."""
    c = store.start_conversation(backend="local", model="gpt-realtime", dialect="ga",
                                 settings={"voice": "marin", "instructions": "Be brief."})
    t = time.time() - 30
    record(store, c, reply_events("ga", "item_u1", "item_a1", "resp_1", None, t))
    record(store, c, user_words("ga", "item_u1", said, t + 2))
    record(store, c, reply_done("ga", "item_a1", "resp_1", reply, t + 4, usage=USAGE))
    store.set_latency(c, "item_a1", 840)
    store.record_event(c, "client", {"type": "session.update", "session": {"instructions": "Talk like a pirate."}},
                       t + 10)
    store.record_event(c, "server", {"type": "session.updated", "event_id": "event_1",
                                     "session": {"instructions": "Talk like a pirate."}}, t + 10.1)
    if end:
        store.end_conversation(c, "stopped by the user")
    assert store.flush()
    return c


@pytest.fixture(scope="module")
def app(tmp_path_factory, probe):
    data = tmp_path_factory.mktemp("history")
    store = SessionStore(data / "koe.sqlite3")
    image = f"![x]({probe.url}/markdown.png)"
    tag = f'<img src="{probe.url}/html.png">'
    hostile = a_conversation(store, f"{image} Show me {tag} please", f"Sure: {image} and [a link]({probe.url}/l)")
    store.close()
    for url, _ in serve(data):
        yield url, data, hostile


@pytest.fixture
def browser(tmp_path):
    silence = write_wav(tmp_path / "silence.wav", np.zeros(48_000, np.int16))
    with chromium(tmp_path / "profile", silence) as context:
        yield context


def test_what_was_said_is_text_and_fetches_nothing(app, browser, probe):
    url, _, hostile = app
    page = browser.new_page()
    page.set_default_timeout(60_000)
    for path in ("/History", "/Events"):
        page.goto(f"{url}{path}?id={hostile}")
        page.get_by_text("Conversation", exact=True).wait_for()
        if path == "/History":
            page.get_by_text(f"You: ![x]({probe.url}/markdown.png) Show me", exact=False).wait_for()
            shown = "\n".join(page.locator('[data-testid="stText"]').all_inner_texts())
            assert f'<img src="{probe.url}/html.png">' in shown and "[a link](" in shown, shown
            # Streamlit's own CSV download of a table (it does not neutralise formulas) is off.
            page.locator('[data-testid="stDataFrame"]').first.hover()
            toolbar = page.locator('[data-testid="stElementToolbar"] button')
            toolbar.first.wait_for()
            labels = [button.get_attribute("aria-label") for button in toolbar.all()]
            assert "Search" in labels and not [label for label in labels if "ownload" in (label or "")], labels
        else:
            page.get_by_text("Event log").wait_for()
        page.wait_for_timeout(2_000)  # time for any image to be requested
    assert probe.requests == []
    # The probe does answer: a request the test makes itself is counted (the check can fail).
    page.evaluate(f"fetch('{probe.url}/control').catch(() => null)")
    deadline = time.monotonic() + 10
    while not probe.requests and time.monotonic() < deadline:
        time.sleep(0.1)
    assert probe.requests == ["/control"]


def test_events_update_live_and_screenshots_are_saved(app, browser):
    url, data, _ = app
    SCREENSHOTS.mkdir(exist_ok=True)
    page = browser.new_page()
    page.set_viewport_size({"width": 1280, "height": 1400})
    page.set_default_timeout(60_000)
    page.goto(url + "/History")  # the app opens its store first: a store opened later keeps its conversations
    page.get_by_text("Conversation", exact=True).wait_for()
    store = SessionStore(data / "koe.sqlite3")
    try:
        finished = a_conversation(store, "What is the capital of Japan?", "Tokyo is the capital of Japan.")
        page.goto(f"{url}/History?id={finished}")
        page.get_by_text("You: What is the capital of Japan?").wait_for()
        page.screenshot(path=SCREENSHOTS / "history.png", full_page=True)

        running = a_conversation(store, "Tell me about Kyoto.", "Kyoto was the capital for a thousand years.",
                                 end=False)
        page.goto(f"{url}/Events?id={running}")
        caption = page.get_by_text("events · live", exact=False)
        caption.wait_for()
        before = int(caption.inner_text().split()[0])
        for n in range(5):
            store.record_event(running, "server", {"type": "input_audio_buffer.speech_started",
                                                   "event_id": f"event_live_{n}", "audio_start_ms": n * 100,
                                                   "item_id": f"item_u{n + 2}"})
        assert store.flush()
        # No reload: the fragment sees the store's new version and redraws.
        page.get_by_text(f"{before + 5} events · live", exact=False).wait_for(timeout=20_000)
        page.screenshot(path=SCREENSHOTS / "events.png", full_page=True)
        store.end_conversation(running, "stopped by the user")
        assert store.flush()
        page.get_by_text("the conversation has ended", exact=False).wait_for(timeout=20_000)
    finally:
        store.close()
    assert (SCREENSHOTS / "history.png").stat().st_size > 10_000 and (SCREENSHOTS / "events.png").stat().st_size > 10_000
