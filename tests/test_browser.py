"""The app in a real browser: Debian's Chromium, headless, a fake microphone playing synthesized speech.

`streamlit run app.py` on the local backend; START, talk, see the transcript, hear the reply (read from
the page's RTCPeerConnection stats), change a setting, STOP, reload, find it in History.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"  # ignored by git: for a person to look at
WEBRTC_IFRAME = 'iframe[title="streamlit_webrtc.component.webrtc_streamer"]'
# Keep every RTCPeerConnection the page makes, so the test can read its stats.
RECORD_PEERS = """
(() => {
  const Native = window.RTCPeerConnection;
  if (!Native || Native.__koe) return;
  window.__koePeers = [];
  const Recording = function (...args) { const pc = new Native(...args); window.__koePeers.push(pc); return pc; };
  Recording.prototype = Native.prototype;
  Recording.__koe = true;
  Object.setPrototypeOf(Recording, Native);
  window.RTCPeerConnection = Recording;
})();
"""
INBOUND_AUDIO = """
async () => {
  let energy = 0, samples = 0;
  for (const pc of window.__koePeers || []) {
    const stats = await pc.getStats();
    stats.forEach(s => { if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      energy += s.totalAudioEnergy || 0; samples += s.totalSamplesReceived || 0; } });
  }
  return {energy, samples};
}
"""

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory, models) -> Path:
    """3 s of silence (time to connect), the question, then silence: 48 kHz mono 16-bit."""
    speech = models.tts.synthesize("Please count from one to five.")
    silence = np.zeros(48_000 * 3, np.int16)
    return write_wav(tmp_path_factory.mktemp("mic") / "question.wav", np.concatenate([silence, speech, silence, silence]))


def write_wav(path: Path, samples: np.ndarray) -> Path:
    """48 kHz mono int16 samples as the WAV file Chromium's fake microphone plays."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48_000)
        out.writeframes(samples.tobytes())
    return path


SERVER_LOGS: dict[str, Path] = {}  # url -> the log of the app serving it, for a failed test to save


def serve(data: Path, **settings: str):
    """`streamlit run app.py` with `settings` in its environment; yields (url, data dir), log in data/streamlit.log."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY" and not k.startswith("KOE_")}
    env.update(KOE_DATA_DIR=str(data), HF_HUB_OFFLINE="1", **settings)
    log = open(data / "streamlit.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                                "--server.address", "127.0.0.1", "--server.headless", "true"],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    SERVER_LOGS[url] = data / "streamlit.log"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError((data / "streamlit.log").read_text()[-3000:])
            time.sleep(0.5)
    yield url, data
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def wait_for_models(data: Path, timeout_s: float = 180) -> None:
    """Until the app's local models are warm (the page starts them). The fake microphone plays its file
    once, from START: pressed earlier, the question may be spoken while the call still waits for them."""
    deadline = time.monotonic() + timeout_s
    while "warmed the models" not in (data / "streamlit.log").read_text():
        assert time.monotonic() < deadline, "the local models did not warm up"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    yield from serve(tmp_path_factory.mktemp("data"))


@contextlib.contextmanager
def chromium(profile: Path, mic_wav: Path | None, **options):
    """Debian's Chromium, headless, its microphone playing `mic_wav` once (None: the browser refuses the
    microphone, as when a person blocks it); the page's peers recorded. `options` go to Playwright's
    launch_persistent_context (timezone_id, locale...)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True,
            ignore_default_args=["--mute-audio"],
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required",
                  *(["--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={mic_wav}%noloop"]
                    if mic_wav is not None else ["--deny-permission-prompts"])],
            **options,
        )
        context.add_init_script(RECORD_PEERS)
        yield context
        context.close()


def shoot(page, name: str) -> None:
    """A full-page screenshot, tests/screenshots/`name`.png."""
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def start_talking(page, data: Path | None = None, live: str | None = "Listening") -> float:
    """Press START once, as a person would, and wait for the call: the button turns to Stop, then (unless
    `live` is None) the page shows the `live` status line. With `data` (the app's data dir), first wait for
    the local models to be warm, since the fake microphone plays its file once, from START. A press that
    does not take fails the test, with what the page showed saved (failed-start.png, .html). Returns when
    (monotonic) the button turned to Stop: the microphone is playing by then."""
    webrtc = page.frame_locator(WEBRTC_IFRAME)
    try:
        webrtc.get_by_role("button", name="Start").wait_for(timeout=120_000)
        if data is not None:
            wait_for_models(data)
        webrtc.get_by_role("button", name="Start").click()
        webrtc.get_by_role("button", name="Stop").wait_for(timeout=15_000)
        began = time.monotonic()
        if live is not None:
            page.get_by_text(live).first.wait_for(timeout=90_000)
    except Exception:
        shoot(page, "failed-start")
        (SCREENSHOTS / "failed-start.html").write_text(page.content())
        raise
    return began


def stop_talking(page) -> None:
    """Press STOP once; returns when the page says the user ended the call."""
    page.frame_locator(WEBRTC_IFRAME).get_by_role("button", name="Stop").click()
    page.get_by_text("Ended: stopped by the user").first.wait_for(timeout=20_000)


@pytest.fixture
def browser(tmp_path, mic_wav):
    with chromium(tmp_path / "profile", mic_wav) as context:
        yield context


def test_talk_in_the_browser_then_find_it_in_history(app, browser):
    url, data = app
    page = browser.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    start_talking(page, data)

    # The user's words, then the AI's reply, appear in the live transcript.
    table = page.locator('[data-testid="stMarkdown"] table')
    # Two rows, the reply's with words in it ("…" marks a row still waiting for them).
    page.wait_for_function("() => { const rows = document.querySelectorAll('[data-testid=\"stMarkdown\"] table tbody tr');"
                           " return rows.length >= 2 && !rows[1].innerText.includes('…'); }", timeout=60_000)
    rows = table.locator("tbody tr").all_inner_texts()
    # Whisper tiny hears the browser-processed voice as "count from 1 to 5", now and then "come 1 to 5".
    assert "You" in rows[0] and any(word in rows[0].lower() for word in ("five", "5")), rows
    assert "AI" in rows[1], rows

    # The browser received the AI's voice: audio energy on the inbound track.
    iframe = next(f for f in page.frames if "webrtc_streamer" in f.url)
    deadline = time.monotonic() + 30
    stats = {"energy": 0}
    while time.monotonic() < deadline and stats["energy"] <= 0.01:
        stats = iframe.evaluate(INBOUND_AUDIO)
        time.sleep(0.5)
    assert stats["samples"] > 48_000 and stats["energy"] > 0.01, stats

    # A sidebar change is applied to the running session and confirmed by the server.
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_label("Instructions", exact=True).fill("Answer in one short sentence, like a pirate.")
    sidebar.get_by_role("button", name="Apply").click()
    sidebar.get_by_text("session.updated").wait_for(timeout=20_000)

    # STOP ends cleanly.
    stop_talking(page)

    # After a reload, History holds the conversation.
    page.goto(url + "/History")
    page.get_by_text("You:", exact=False).first.wait_for(timeout=30_000)
    conversation = "\n".join(page.locator('[data-testid="stText"]').all_inner_texts())  # shown as text
    said = next(line for line in conversation.splitlines() if line.startswith("You: "))
    assert any(word in said.lower() for word in ("five", "5")) and "AI: " in conversation, conversation
