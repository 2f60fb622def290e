"""Tools in a real browser: pick one in the sidebar, talk, and see the call in the transcript.

The app's local backend answers through a chat-endpoint stub (tests/chat_stub.py) that calls
`current_time` whatever is said, then speaks the tool's result; Chromium runs in Asia/Tokyo, so the
answer proves the visitor's own time zone reached the tool.
"""

from __future__ import annotations

import json
import time

import pytest

from chat_stub import ChatStub, Reply, ToolCalls
from test_browser import WEBRTC_IFRAME, chromium, mic_wav, serve, wait_for_models  # noqa: F401 (fixture)


def _answer(body: dict) -> str:
    result = json.loads(body["messages"][-1]["content"])
    return f"It is {result['time']} in {result['timezone']}."


@pytest.fixture
def stub():
    stub = ChatStub(script=[ToolCalls([("current_time", "{}")]), Reply(_answer)]).start()
    yield stub
    stub.stop()


def test_a_tool_chosen_in_the_sidebar_is_called_and_shown(tmp_path, stub, mic_wav):  # noqa: F811
    data = tmp_path / "data"
    data.mkdir()
    for url, _ in serve(data, KOE_CHAT_BASE_URL=stub.url, KOE_CHAT_MODEL="tool-model"):
        with chromium(tmp_path / "profile", mic_wav, timezone_id="Asia/Tokyo") as browser:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(url)
            sidebar = page.locator('[data-testid="stSidebar"]')
            sidebar.get_by_text("Tools the AI may use").wait_for()
            sidebar.locator('[data-testid="stMultiSelect"]').click()
            page.get_by_role("option", name="current_time", exact=False).click()
            page.keyboard.press("Escape")
            sidebar.get_by_role("button", name="Apply").click()
            webrtc = page.frame_locator(WEBRTC_IFRAME)
            webrtc.get_by_role("button", name="Start").wait_for()
            wait_for_models(data)
            webrtc.get_by_role("button", name="Start").click()
            page.get_by_text("Connected: speak now.").wait_for(timeout=90_000)
            # You, (the empty first reply), Tool call, Tool result, AI: in conversation order.
            page.get_by_text("It is ", exact=False).last.wait_for(timeout=90_000)
            time.sleep(1)
            rows = [r for r in page.locator('[data-testid="stTable"] tbody tr').all_inner_texts()]
            calls = [i for i, r in enumerate(rows) if "Tool call" in r]
            assert len(calls) == 1 and "current_time({})" in rows[calls[0]], rows
            assert "Tool result" in rows[calls[0] + 1] and "Asia/Tokyo" in rows[calls[0] + 1], rows
            assert "AI" in rows[-1] and "in Asia/Tokyo." in rows[-1], rows
            assert "You" in rows[0], rows
    assert stub.requests[0].body["tools"][0]["function"]["name"] == "current_time"
