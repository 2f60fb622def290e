"""How late Streamlit's loop runs while the page refreshes, and what the browser hears of it.

    .venv/bin/python bench/ui_loop.py [--idle 20] [--talk 40]

streamlit-webrtc runs the browser's peer on Streamlit's own event loop, the one that also serves
the page's fragment reruns (status and meters every 0.5 s, transcript every 1 s, cost every 2 s).
This starts `streamlit run app.py` on the local backend, opens it in headless Chromium with a fake
microphone that asks a few questions, and reads:
- the app's own measure of that loop (`koe.loop_watch`: how late a 20 ms wake-up runs, shown to the
  owner under the meters, read every 10 s), first with the page open and idle, then while talking,
  the transcript growing and the models answering;
- the browser's view: the share of the AI's audio it had to conceal (packets late or missing;
  inbound-rtp `concealedSamples`) while talking.
Twice in one run: with the shipped `.streamlit/config.toml`, and with `runner.postScriptGC` back
on (Streamlit's default; DESIGN.md saw it stall the loop ~150 ms of every ~190 ms) as the baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from bench.figures import percentile  # noqa: E402
from koe.client.simulated_user import QUESTIONS  # noqa: E402
from koe.local.stages.models import get_models  # noqa: E402
from test_browser import WEBRTC_IFRAME, chromium, serve, write_wav  # noqa: E402

LAG = re.compile(r"p50 (\d+) ms · p99 (\d+) ms · worst (\d+) ms")
WINDOW_S = 10  # the app's loop figures cover the last 10 s
CONCEALED = """
async () => {
  let concealed = 0, samples = 0;
  for (const pc of window.__koePeers || []) {
    (await pc.getStats()).forEach(s => { if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      concealed += s.concealedSamples || 0; samples += s.totalSamplesReceived || 0; } });
  }
  return {concealed, samples};
}
"""


def microphone(path: Path, questions: int) -> Path:
    """3 s to connect, then questions 8 s apart (time for each reply): the fake microphone's WAV."""
    tts = get_models().tts
    gap = np.zeros(48_000 * 8, np.int16)
    parts = [np.zeros(48_000 * 3, np.int16)]
    for text in QUESTIONS[:questions]:
        parts += [tts.synthesize(text), gap]
    return write_wav(path, np.concatenate(parts))


def read_windows(page, seconds: float) -> list[tuple[int, int, int]]:
    """(p50, p99, worst) ms of the loop's lateness, one reading per 10 s window."""
    readings = []
    for _ in range(max(1, round(seconds / WINDOW_S))):
        time.sleep(WINDOW_S)
        match = LAG.search(page.get_by_text("Media loop late by").inner_text())
        readings.append(tuple(int(x) for x in match.groups()))
    return readings


def run(label: str, settings: dict[str, str], wav: Path, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        with contextlib.contextmanager(serve)(data, **settings) as (url, _), chromium(Path(tmp) / "profile", wav) as browser:
            page = browser.new_page()
            page.set_default_timeout(90_000)
            page.goto(url)
            page.get_by_text("Media loop late by").wait_for()
            deadline = time.monotonic() + 120  # the models load in the background at the first visit
            while "warmed the models" not in (data / "streamlit.log").read_text() and time.monotonic() < deadline:
                time.sleep(1)
            idle = read_windows(page, args.idle)
            page.frame_locator(WEBRTC_IFRAME).get_by_role("button", name="Start").click()
            page.get_by_text("Listening").first.wait_for()
            iframe = next(f for f in page.frames if "webrtc_streamer" in f.url)
            before = iframe.evaluate(CONCEALED)
            talk = read_windows(page, args.talk)
            after = iframe.evaluate(CONCEALED)
            replies = page.locator('[data-testid="stMarkdown"] table tbody tr').count()
            page.frame_locator(WEBRTC_IFRAME).get_by_role("button", name="Stop").click()
    received = after["samples"] - before["samples"]
    return {"label": label, "idle": idle, "talk": talk, "rows": replies,
            "concealed": (after["concealed"] - before["concealed"]) / received if received else float("nan")}


def summary(readings: list[tuple[int, int, int]]) -> str:
    p99s = [r[1] for r in readings]
    return (f"p50 {percentile([r[0] for r in readings], 0.5):3d} ms · p99 {percentile(p99s, 0.5):4d} ms "
            f"(worst window {max(p99s):4d}) · worst {max(r[2] for r in readings):4d} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=float, default=20, help="seconds with the page open, not talking")
    parser.add_argument("--talk", type=float, default=40, help="seconds talking")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wav = microphone(Path(tmp) / "questions.wav", questions=max(1, int(args.talk // 11)))
        results = [run("shipped config (postScriptGC off)", {}, wav, args),
                   run("baseline: postScriptGC on", {"STREAMLIT_RUNNER_POST_SCRIPT_GC": "true"}, wav, args)]
    print("Streamlit's loop, lateness of a 20 ms wake-up (per 10 s window: median p50, median p99, worst):")
    for r in results:
        print(f"  {r['label']}")
        print(f"    page open, idle   {summary(r['idle'])}")
        print(f"    talking           {summary(r['talk'])}  · transcript rows {r['rows']}")
        print(f"    browser concealed {r['concealed']:.1%} of the AI's audio while talking")
    shipped, baseline = results
    worst = [max(x[2] for x in r["talk"]) for r in results]
    print(f"worst stall while talking: {worst[0]} ms shipped vs {worst[1]} ms baseline "
          f"({worst[1] / max(worst[0], 1):.1f}x); concealed {shipped['concealed']:.1%} vs {baseline['concealed']:.1%}")


if __name__ == "__main__":
    main()
