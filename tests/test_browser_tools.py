"""Tools in a real browser: talk, pick a tool in the sidebar while the call runs (session.update), ask
again, and see the call in the transcript in conversation order.

The app's local backend answers through a chat-endpoint stub (tests/chat_stub.py): "Okay." to the
first question, then (the tool now offered) a `current_time` call, then the tool's result in words.
Chromium runs in Asia/Tokyo, so the answer proves the visitor's own time zone reached the tool.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from chat_stub import ChatStub, Reply, ToolCalls
from test_browser import chromium, serve, start_talking, write_wav


def _answer(body: dict) -> str:
    result = json.loads(body["messages"][-1]["content"])
    return f"It is {result['time']} in {result['timezone']}."


@pytest.fixture
def stub():
    stub = ChatStub(script=[Reply("Okay."), ToolCalls([("current_time", "{}")]), Reply(_answer)]).start()
    yield stub
    stub.stop()


@pytest.fixture(scope="module")
def two_questions(tmp_path_factory, models):
    """Silence to connect, a question, 15 s to choose the tool, the question again: 48 kHz mono."""
    speech = models.tts.synthesize("What time is it now?")
    silence = np.zeros(48_000, np.int16)
    return write_wav(tmp_path_factory.mktemp("mic") / "two.wav",
                     np.concatenate([silence] * 3 + [speech] + [silence] * 15 + [speech] + [silence] * 3))


def test_a_tool_chosen_in_the_sidebar_is_called_and_shown(tmp_path, stub, two_questions):
    data = tmp_path / "data"
    data.mkdir()
    for url, _ in serve(data, KOE_CHAT_BASE_URL=stub.url, KOE_CHAT_MODEL="tool-model"):
        with chromium(tmp_path / "profile", two_questions, timezone_id="Asia/Tokyo") as browser:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(url)
            start_talking(page, data)
            sidebar = page.locator('[data-testid="stSidebar"]')
            picker = sidebar.locator('[data-testid="stMultiSelect"] input')
            picker.click()
            picker.fill("current_time")
            page.get_by_role("option", name="current_time", exact=False).first.wait_for()
            page.get_by_role("option", name="current_time", exact=False).first.click()
            page.keyboard.press("Escape")  # closes the list; the next click, on Apply, must count
            page.get_by_role("listbox").wait_for(state="hidden")
            sidebar.get_by_role("button", name="Apply").click()
            sidebar.get_by_text("session.updated: the server confirmed tools.").wait_for(timeout=20_000)
            try:
                page.get_by_text("in Asia/Tokyo.", exact=False).last.wait_for(timeout=90_000)
            finally:
                rows = page.locator('[data-testid="stMarkdown"] table tbody tr').all_inner_texts()
                sent = [{k: v for k, v in r.body.items() if k != "messages"} for r in stub.requests]
            calls = [i for i, r in enumerate(rows) if "Tool call" in r]
            assert len(calls) == 1 and "current_time({})" in rows[calls[0]], (rows, sent)
            result = rows[calls[0] + 1]
            assert "Tool result" in result and "Asia/Tokyo" in result and "error" not in result, rows
            assert "AI" in rows[-1] and "in Asia/Tokyo." in rows[-1], rows
            assert "You" in rows[0] and "Okay." in rows[1], rows
    assert stub.requests[1].body["tools"][0]["function"]["name"] == "current_time"
