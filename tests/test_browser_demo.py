"""A shared demo in a real browser: the access code gate, and the OpenAI key never leaving the server.

The app runs with an access code and `OPENAI_API_KEY=sk-test-<random>`, its OpenAI backend pointed
(`OPENAI_BASE_URL`) at a local server in this process that demands exactly that key: so a real
conversation uses the key, and the test then searches everything the browser received (page HTML,
every HTTP response, every websocket frame), the server's log, the database and every export for it.
"""

from __future__ import annotations

import csv
import io
import secrets
import urllib.parse

import pytest

from koe.local import LocalServer

from test_browser import (  # noqa: F401  (fixtures, skip)
    WEBRTC_IFRAME, browser, mic_wav, pytestmark, serve, start_talking, stop_talking,
)

ACCESS_CODE = "let-me-talk"
KEY = f"sk-test-{secrets.token_hex(16)}"


@pytest.fixture(scope="module")
def keyed_server(models):
    server = LocalServer(port=0, api_key=KEY, models=models).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def demo(tmp_path_factory, keyed_server):
    yield from serve(tmp_path_factory.mktemp("demo"), KOE_ACCESS_CODE=ACCESS_CODE, OPENAI_API_KEY=KEY,
                     OPENAI_BASE_URL=keyed_server.url)


def enter_code(page, code: str) -> None:
    page.get_by_label("Access code").fill(code)
    page.get_by_role("button", name="Enter").click()


def assert_every_page_gated(page, url: str, prompt: str, absent: tuple[str, ...] = ()) -> None:
    """Each page shows `prompt` and nothing of the conversations: no START, no list, none of `absent`."""
    for path in ("", "/History", "/Events"):
        page.goto(url + path)
        page.get_by_text(prompt).wait_for()
        assert page.frame_locator(WEBRTC_IFRAME).get_by_role("button", name="Start").count() == 0
        assert page.get_by_text("Conversation", exact=True).count() == 0
        assert not [text for text in absent if text in page.content()], path


def test_the_access_code_gate(demo, browser):
    url, _ = demo
    page = browser.new_page()
    page.set_default_timeout(30_000)
    assert_every_page_gated(page, url, "This demo needs an access code.")
    enter_code(page, "wrong-code")
    page.get_by_text("That code is not right").wait_for()
    enter_code(page, ACCESS_CODE)
    page.get_by_text("No conversation yet").wait_for()
    # The pass in the URL survives a reload: no second code entry.
    page.wait_for_url("**pass=*")
    page.reload()
    page.get_by_text("No conversation yet").wait_for()
    assert page.get_by_text("This demo needs an access code.").count() == 0
    # A bad id in the link is refused with a message.
    page.goto(page.url + "&id=" + urllib.parse.quote("<b>nope</b>"))
    page.get_by_text("The link's conversation id is not valid.", exact=False).wait_for()


def test_the_openai_key_never_reaches_the_browser_the_log_or_an_export(demo, browser, keyed_server):
    url, data = demo
    page = browser.new_page()
    page.set_default_timeout(60_000)
    responses, frames = [], []
    page.on("response", lambda response: responses.append(response))
    page.on("websocket", lambda ws: (ws.on("framereceived", lambda frame: frames.append(frame)),
                                     ws.on("framesent", lambda frame: frames.append(frame))))
    page.goto(url)
    enter_code(page, ACCESS_CODE)
    start_talking(page)
    # Two rows, the reply's with words in it ("…" marks a row still waiting for them).
    page.wait_for_function("() => { const rows = document.querySelectorAll('[data-testid=\"stMarkdown\"] table tbody tr');"
                           " return rows.length >= 2 && !rows[1].innerText.includes('…'); }", timeout=90_000)
    page.get_by_text("This session:", exact=False).wait_for(timeout=10_000)  # the live cost meter
    stop_talking(page)
    assert keyed_server.call_count == 0  # the call really went through the keyed server, and ended

    pass_token = urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)["pass"][0]
    page.goto(f"{url}/History?pass={pass_token}")
    page.get_by_text("You:", exact=False).first.wait_for(timeout=30_000)
    exports = []
    for label in ("Download CSV", "Download JSON", "Download Markdown"):
        with page.expect_download() as download:
            page.get_by_role("button", name=label).click()
        exports.append(open(download.value.path(), "rb").read())
    speakers = {row["speaker"] for row in csv.DictReader(io.StringIO(exports[0].decode()))}
    assert {"You", "AI"} <= speakers  # the exports hold the conversation
    page.goto(f"{url}/Events?pass={pass_token}")
    page.get_by_text("Event log").wait_for()

    seen = {"page HTML": [page.content().encode()] + [frame.content().encode() for frame in page.frames]}
    seen["HTTP responses"] = []
    for response in responses:
        try:
            seen["HTTP responses"].append(response.url.encode() + b"\n" + response.body())
        except Exception:  # redirects and aborted loads have no body
            seen["HTTP responses"].append(response.url.encode())
    seen["websocket frames"] = [f.encode() if isinstance(f, str) else f for f in frames]
    seen["server log"] = [(data / "streamlit.log").read_bytes()]
    seen["database"] = [path.read_bytes() for path in data.glob("koe.sqlite3*")]
    seen["exports"] = exports
    assert len(seen["websocket frames"]) > 50 and len(seen["HTTP responses"]) > 5
    needle = KEY.encode()
    leaks = [where for where, blobs in seen.items() for blob in blobs if needle in blob or KEY[8:].encode() in blob]
    assert not leaks, f"the OpenAI key reached: {sorted(set(leaks))}"
