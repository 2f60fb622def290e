"""OpenAI's `@openai/agents-realtime` (pinned, from the npm registry) in Chromium, on a page served
from another origin than koe.local, holds a spoken turn through its WebRTC transport and its
WebSocket transport: only the server's address differs from a page talking to OpenAI.

The fake microphone says the question; the test reads what the SDK reports: the user's transcript,
a non-empty `agent_end` text, and reply audio that is not silence. Every event koe.local sent is
checked against OpenAI's types (conftest's `conforming_events`)."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import LOCAL_KEY
from test_browser import CHROMIUM, INBOUND_AUDIO, chromium, write_wav

AGENTS_REALTIME = "@openai/agents-realtime@0.20.0"
MODEL = "gpt-realtime"
AUDIBLE = 0.01  # totalAudioEnergy of a second of speech at -20 dBFS (squared amplitude times seconds)
PAGE = Path(__file__).parent / "agents_page"
NPM = shutil.which("npm")

pytestmark = [pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
              pytest.mark.skipif(NPM is None, reason="npm (Node 20) is not installed")]


@pytest.fixture(scope="session")
def agents_bundle() -> Path:
    """The package's self-contained ESM bundle, installed once into a cache dir with npm."""
    cache = Path(os.environ.get("KOE_NPM_CACHE", Path.home() / ".cache" / "koe" / "npm"))
    prefix = cache / AGENTS_REALTIME.replace("/", "+")
    bundle = prefix / "node_modules" / "@openai" / "agents-realtime" / "dist" / "bundle"
    if not (bundle / "openai-realtime-agents.mjs").exists():
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run([NPM, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--no-save",
                        AGENTS_REALTIME], check=True, timeout=300, capture_output=True)
    return bundle


@pytest.fixture(scope="module")
def page_origin(tmp_path_factory, agents_bundle):
    """A second loopback HTTP server: the page and the bundle, on an origin of their own."""
    root = tmp_path_factory.mktemp("page")
    shutil.copy(PAGE / "index.html", root / "index.html")
    (root / "bundle").symlink_to(agents_bundle, target_is_directory=True)
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://localhost:{server.server_address[1]}"
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript"}

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory, speech) -> Path:
    """3 s to connect, the question, then silence for the reply."""
    silence = np.zeros(48_000 * 3, np.int16)
    clip = np.concatenate([silence, speech("Please count from one to five."), silence, silence, silence])
    return write_wav(tmp_path_factory.mktemp("mic") / "question.wav", clip)


@pytest.mark.parametrize("transport", ["webrtc", "websocket"])
def test_agents_realtime_holds_a_spoken_turn(local_server, page_origin, question_wav, tmp_path, transport):
    assert not page_origin.endswith(str(local_server.port))  # another origin: CORS is part of the test
    secret = httpx.post(local_server.url + "/v1/realtime/client_secrets", headers={"Authorization": f"Bearer {LOCAL_KEY}"},
                        json={"session": {"type": "realtime", "model": MODEL}}).json()["value"]
    with chromium(tmp_path / "profile", question_wav) as context:
        page = context.new_page()
        page.goto(page_origin + "/index.html")
        page.wait_for_function("typeof window.talk === 'function'", timeout=30_000)
        page.evaluate("args => window.talk(args)",
                      {"transport": transport, "key": secret, "server": local_server.url, "model": MODEL})
        page.wait_for_function("window.result.agentEnd.length > 0 || window.result.errors.length > 0", timeout=90_000)
        result = page.evaluate("window.result")
        audio = result.get("audio")
        deadline = time.monotonic() + 20  # the reply's text can be done before its audio has played
        while transport == "webrtc" and time.monotonic() < deadline:
            audio = page.evaluate(INBOUND_AUDIO)
            if audio["energy"] > AUDIBLE:
                break
            time.sleep(0.5)
        page.evaluate("window.session.close()")
    assert not result["errors"], result
    assert any("count" in t.lower() for t in result["userTranscripts"]), result
    assert result["agentEnd"][0].strip(), result  # the reply's text: content typed as the SDK expects
    assert audio["samples"] > 0 and audio["energy"] > AUDIBLE, audio
    assert "response.done" in result["events"]
