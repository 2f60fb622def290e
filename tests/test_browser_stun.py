"""START in a real browser (Debian's Chromium) with an unreachable STUN server configured: a loopback UDP
port nobody reads. No peer waits for it longer than the gathering bound, so the call is up in seconds
(each server-side peer used to wait 5 s for it: ~10 s more per START)."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from test_browser import (  # noqa: F401  (pytestmark: the skip)
    WEBRTC_IFRAME, chromium, pytestmark, serve, start_talking, stop_talking, wait_for_models, write_wav,
)

CONNECTED = "Listening"  # the status line once the call is live


@pytest.fixture(scope="module")
def silent_stun():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"stun:127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def app(tmp_path_factory, silent_stun):
    yield from serve(tmp_path_factory.mktemp("stun"), KOE_STUN_URLS=silent_stun, KOE_REPLY_MODEL="fast")


def test_start_connects_in_seconds_with_an_unreachable_stun_server(app, tmp_path):
    url, data = app
    with chromium(tmp_path / "profile", write_wav(tmp_path / "silence.wav", np.zeros(48_000 * 60, np.int16))) as browser:
        page = browser.new_page()
        page.set_default_timeout(120_000)
        page.goto(url)
        page.frame_locator(WEBRTC_IFRAME).get_by_role("button", name="Start").wait_for()
        wait_for_models(data)  # START is timed once the models are warm
        took = []
        for _ in range(2):  # the better of two: the machine is shared, and a loaded moment costs seconds
            started = time.monotonic()
            start_talking(page, live=CONNECTED)
            took.append(time.monotonic() - started)
            stop_talking(page)
        print(f"START to connected with a silent STUN server: {', '.join(f'{t:.1f}' for t in took)} s (noisy)")
        # Without the bound both server-side peers waited 5 s each for the STUN server: 10 s more than this.
        assert min(took) < 8, took
