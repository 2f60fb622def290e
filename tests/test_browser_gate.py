"""The access-code back-off in a real browser (Debian's Chromium): wrong codes typed in one tab make
that tab wait, and say so, while a visitor in another tab on the same host gets in at once."""

from __future__ import annotations

import time

import numpy as np
import pytest

from test_browser import chromium, pytestmark, serve, write_wav  # noqa: F401  (skip mark)

CODE = "let-me-in"
WAITS = "before it is checked"


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    yield from serve(tmp_path_factory.mktemp("gate"), KOE_ACCESS_CODE=CODE)


@pytest.fixture
def browser(tmp_path):
    with chromium(tmp_path / "profile", write_wav(tmp_path / "silence.wav", np.zeros(48_000, np.int16))) as context:
        yield context


def enter(page, code: str) -> None:
    page.get_by_label("Access code").fill(code)
    page.get_by_role("button", name="Enter").click()


def logged(log, line: str, count: int) -> None:
    """Wait until the server's log holds `line` `count` times (the page may still show the last try)."""
    deadline = time.monotonic() + 30
    while log.read_text().count(line) < count:
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)


def test_wrong_codes_in_one_browser_do_not_make_another_wait(gated, browser):
    url, data = gated
    log = data / "streamlit.log"
    mallory, alice = browser.new_page(), browser.new_page()  # two browser sessions, one address (loopback)
    for page in (mallory, alice):
        page.set_default_timeout(30_000)
        page.goto(url + "/History")
        page.get_by_text("This demo needs an access code.").wait_for()
    for attempt in range(3):
        enter(mallory, f"guess-{attempt}")
        logged(log, "wrong access code", attempt + 1)
    mallory.get_by_text(WAITS, exact=False).wait_for()  # from the second wrong try on, the page says so
    assert log.read_text().count("access code try waits") == 2
    enter(alice, CODE)
    alice.get_by_text("No conversation yet").wait_for()
    assert alice.get_by_text(WAITS, exact=False).count() == 0
    assert log.read_text().count("access code try waits") == 2  # Alice's try waited for nothing
    enter(mallory, "guess-again")  # while Mallory's next try still waits
    logged(log, "access code try waits 2.0 s", 1)
