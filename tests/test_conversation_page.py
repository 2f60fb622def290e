"""The conversation page as a person uses it, in Debian's Chromium with a fake microphone, on the local backend.

One app server for the module; each test its own browser profile and microphone recording. The
flows are issue 11's: a voice change after the AI spoke, push to talk chosen before START, a manual
turn over the AI's reply, preset + edited text in one Apply, instructions too long for the context,
one bad value among good ones, mute, stop the AI, a typed message and the audio download. Checks read
the page and, for what was sent, the event log the app stores (SQLite). Screenshots of the first
screen, a conversation and History go to tests/screenshots/ (ignored by git) for a person to look at.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from pathlib import Path

import av
import numpy as np
import pytest

from koe.local.stages.llm import PROFILES

from conftest import LOCAL_KEY
from test_browser import (
    CHROMIUM, SCREENSHOTS, SERVER_LOGS, WEBRTC_IFRAME, chromium, serve, shoot, start_talking, stop_talking,
    write_wav,
)

STORYTELLER = "You are a storyteller. Always answer with a long story of at least ten sentences."
TABLE_ROWS = '[data-testid="stMarkdown"] table tbody tr'

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    # The fast reply model (SmolLM2): these tests check the page, not the answers, and CI time counts.
    yield from serve(tmp_path_factory.mktemp("data"), KOE_REPLY_MODEL="fast")


def mic(tmp_path: Path, speech, *parts) -> Path:
    """A microphone recording: floats are seconds of silence, strings are spoken."""
    pieces = [np.zeros(int(48_000 * p), np.int16) if isinstance(p, (int, float)) else speech(p) for p in parts]
    return write_wav(tmp_path / "mic.wav", np.concatenate(pieces))


@contextlib.contextmanager
def opened(tmp_path: Path, wav: Path | None, url: str):
    """The app in Chromium with `wav` as its microphone (None: one the browser refuses); what the page
    showed (screenshot, HTML, and the page's console errors, uncaught exceptions, crashes and closed
    websockets, in order) and the end of the app's log are saved if the test fails."""
    with chromium(tmp_path / "profile", wav) as context:
        seen: list[str] = []
        context.on("console", lambda m: seen.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        context.on("page", lambda p: (p.on("websocket", lambda ws: ws.on("close", lambda w: seen.append(
            f"websocket closed: {w.url}"))), p.on("crash", lambda _: seen.append("the page crashed")),
            p.on("pageerror", lambda e: seen.append(f"page error: {e}"))))
        page = open_app(context, url)
        try:
            yield page
        except BaseException:
            name = f"failed-{os.environ.get('PYTEST_CURRENT_TEST', 'test').split('::')[-1].split(' ')[0]}"
            with contextlib.suppress(Exception):
                shoot(page, name)
                (SCREENSHOTS / f"{name}.html").write_text(page.content())
                (SCREENSHOTS / f"{name}.log").write_text("\n".join(seen))
                # The app's own log (script errors, its warnings) from the same run, the last of it.
                (SCREENSHOTS / f"{name}.server.log").write_bytes(SERVER_LOGS[url].read_bytes()[-200_000:])
            raise


def open_app(context, url: str):
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.get_by_text("Press START").first.wait_for(timeout=90_000)
    return page


def sidebar(page):
    return page.locator('[data-testid="stSidebar"]')


def choose(page, label: str, option: str) -> None:
    """Pick `option` in the sidebar selectbox labelled `label`: one click to open it, one on the option.

    The box is scrolled into view first and the scroll let settle, as a person scrolls, then clicks: the
    list (a React Aria non-modal popover) closes on any scroll of the sidebar, and Playwright's own
    scroll-into-view dispatches its scroll event a frame after the click it makes, which closed the list
    it had just opened (the "lost" first click)."""
    box = sidebar(page).get_by_label(label, exact=True)
    box.scroll_into_view_if_needed()
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    box.click()
    page.get_by_role("option", name=option, exact=True).click(timeout=10_000)


def apply(page) -> None:
    sidebar(page).get_by_role("button", name="Apply").click()


def rows(page) -> list[list[str]]:
    """The live transcript: [time, speaker, text, status, latency] per row."""
    return [[cell.strip() for cell in row.split("\t")] for row in page.locator(TABLE_ROWS).all_inner_texts()]


def poll(read, check, what: str, timeout_s: float, every_s: float = 0.5):
    """read() once check(read()) holds; AssertionError naming `what` (and what was read last) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check(found := read()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {found}")
        time.sleep(every_s)
    return found


def wait_rows(page, check, what: str, timeout_s: float = 90) -> list[list[str]]:
    return poll(lambda: rows(page), check, what, timeout_s)


def events(data: Path) -> list[tuple[str, str, dict]]:
    """(direction, type, payload) of every stored event of the latest conversation, in order."""
    with sqlite3.connect(data / "koe.sqlite3") as db:
        latest = db.execute("SELECT id FROM conversations ORDER BY started_at DESC LIMIT 1").fetchone()[0]
        found = db.execute("SELECT direction, type, payload FROM events WHERE conversation_id = ? ORDER BY id",
                           (latest,)).fetchall()
    return [(d, t, json.loads(p)) for d, t, p in found]


def stored(data: Path, check, what: str, timeout_s: float = 15) -> list[tuple[str, str, dict]]:
    """events(data) once check(events) holds: the store writes events on its own thread, a moment after
    the page showed their effect."""
    return poll(lambda: events(data), check, f"{what} in the stored events", timeout_s, every_s=0.2)


def index(log, direction: str, kind: str, after: int = -1, **fields) -> int:
    """The position of the first matching event after `after`; -1 when none."""
    for i, (d, t, payload) in enumerate(log):
        if i > after and d == direction and t == kind and all(payload.get(k) == v for k, v in fields.items()):
            return i
    return -1


def settle(page, seconds: float) -> None:
    page.wait_for_timeout(seconds * 1000)


def type_message(page, text: str) -> None:
    page.get_by_placeholder("Type instead of speaking…").fill(text)
    page.get_by_role("button", name="Send").click()


def set_instructions(page, text: str) -> None:
    sidebar(page).get_by_label("Instructions", exact=True).fill(text)


def test_voice_change_during_a_reply_keeps_one_row_per_turn(app, tmp_path, speech):
    """Flow 1: a new voice after the AI spoke starts a new session seeded with the conversation; the
    reply cut off by it is closed as interrupted, nothing is stored twice, no stale error stays."""
    url, data = app
    wav = mic(tmp_path, speech, 120.0)  # typed turns: the machine's speed cannot make them early or late
    with opened(tmp_path, wav, url) as page:
        set_instructions(page, STORYTELLER)
        # A Japanese session: the local backend's English has one voice, its Japanese several.
        choose(page, "Transcription language", "Japanese")
        choose(page, "Voice", "mei (Japanese sessions)")
        apply(page)
        start_talking(page)
        type_message(page, "Please tell me a story about a dragon.")
        page.get_by_text("Speaking…").first.wait_for(timeout=90_000)
        choose(page, "Voice", "jf_alpha (Japanese sessions)")
        apply(page)
        # The cut-off reply is closed at once, as interrupted, with the words that were played.
        first = wait_rows(page, lambda r: len(r) >= 2 and "interrupted" in r[1][3], "the cut reply")
        assert first[0][1] == "You" and "dragon" in first[0][2].lower(), first
        page.get_by_text("Listening").first.wait_for(timeout=90_000)  # the new session is live
        sidebar(page).get_by_text("a new session starts with the new voice").wait_for(timeout=10_000)
        type_message(page, "What color is the sky?")
        # The second question is answered in the new session (the storyteller's answer is long: its start will do).
        found = wait_rows(page, lambda r: len(r) >= 4 and r[3][1] == "AI" and any(c.isalnum() for c in r[3][2]),  # not "…"
                           "the second answer")
        assert [r[1] for r in found] == ["You", "AI", "You", "AI"], found
        assert "sky" in found[2][2].lower(), found
        assert page.get_by_text("item_id not found").count() == 0
        stop_talking(page)
        assert [r[1] for r in rows(page)] == ["You", "AI", "You", "AI"]
        log = events(data)
        # The history was copied into the new session under the items' own ids.
        copies = [p["item"]["id"] for d, t, p in log
                  if d == "client" and t == "conversation.item.create" and "id" in p["item"]]
        with sqlite3.connect(data / "koe.sqlite3") as db:
            stored = [r[0] for r in db.execute("SELECT item_id FROM items")]
        assert len(copies) == 2 and set(copies) <= set(stored), (copies, stored)
        assert not [p for d, t, p in log if t == "error" and p["error"]["code"] == "item_not_found"]
        page.goto(url + "/History")
        page.get_by_text("You:", exact=False).first.wait_for(timeout=30_000)
        said = [line for line in page.locator('[data-testid="stText"]').all_inner_texts() if ":" in line]
        assert sum(line.startswith("You:") for line in said) == 2, said
        assert sum(line.startswith("AI:") for line in said) == 2, said


def test_push_to_talk_chosen_before_start(app, tmp_path, speech):
    """Flows 2–4: push to talk chosen before START shows the hold-to-talk button; holding the space
    bar over the AI's reply ends that reply first; the reply is asked for only once the words are in;
    a turn with nothing said is not sent, and the page says so."""
    url, data = app
    wav = mic(tmp_path, speech, 9.0, "What is the capital of Japan?", 40.0)
    with opened(tmp_path, wav, url) as page:
        set_instructions(page, STORYTELLER)
        sidebar(page).get_by_text("Push to talk (manual)").click()
        apply(page)
        sidebar(page).get_by_text("apply when you press START").wait_for()
        began = start_talking(page, live="Push to talk")
        button = page.get_by_text("Hold to talk")
        button.wait_for(timeout=60_000)
        assert time.monotonic() - began < 9, "connected too late for this recording"
        page.locator("h1").first.click()  # focus on the page, as a person clicking around would
        page.keyboard.down("Space")
        page.get_by_text("Hearing you").first.wait_for(timeout=10_000)
        settle(page, max(0.0, began + 14 - time.monotonic()))  # the question is over at ~12 s
        page.keyboard.up("Space")
        found = wait_rows(page, lambda r: len(r) >= 2 and r[1][1] == "AI" and r[0][2] != "…", "the reply")
        assert found[0][1] == "You" and "japan" in found[0][2].lower(), found
        page.get_by_text("Speaking…").first.wait_for(timeout=60_000)
        # A manual turn has its reply latency too (no speech_stopped: counted from the release).
        wait_rows(page, lambda r: len(r) >= 2 and r[1][4].replace(",", "").isdigit(), "the reply latency", 30)
        log = events(data)
        committed = index(log, "server", "input_audio_buffer.committed")
        user_item = log[committed][2]["item_id"]
        create = index(log, "client", "response.create")
        assert committed < create, "the reply was asked for before the commit was confirmed"
        heard = index(log, "server", "conversation.item.input_audio_transcription.completed", item_id=user_item)
        first_word = index(log, "server", "response.output_audio_transcript.delta")
        assert -1 < heard < first_word, "the reply was written before the words were in"

        # A new turn over the AI's reply ends that reply first (mouse this time), then nothing is said.
        box = button.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.get_by_text("Hearing you").first.wait_for(timeout=10_000)
        wait_rows(page, lambda r: len(r) >= 2 and "interrupted" in r[1][3], "the reply cut by the new turn", 20)
        settle(page, 1.5)
        page.mouse.up()
        page.get_by_text("Nothing was heard").first.wait_for(timeout=10_000)
        settle(page, 2)
        log = events(data)
        after = index(log, "client", "input_audio_buffer.clear", after=create)
        assert after > -1
        sent = [t for d, t, _ in log[create + 1:after] if d == "client"]
        assert "response.cancel" in sent or "output_audio_buffer.clear" in sent, sent
        assert index(log, "client", "conversation.item.truncate", after=create) > -1
        assert not [p for d, t, p in log
                    if t == "error" and p["error"]["code"] == "conversation_already_has_active_response"]
        assert index(log, "client", "input_audio_buffer.commit", after=after) == -1, "silence was sent as a turn"
        assert len(rows(page)) == 2, rows(page)
        stop_talking(page)


def test_one_apply_applies_every_valid_change_and_names_each_refused_one(app, tmp_path, speech):
    """Flows 5–7: a preset fills the box at once and the edited box is what is sent; one bad value
    is named while the others apply; instructions longer than the local model's context are refused
    before sending, with the limit in words."""
    url, data = app
    wav = mic(tmp_path, speech, 60.0)
    with opened(tmp_path, wav, url) as page:
        choose(page, "Instructions preset", "English tutor")
        box = sidebar(page).get_by_label("Instructions", exact=True)
        page.wait_for_function("() => [...document.querySelectorAll('textarea')].some(t => t.value.includes('tutor'))")
        edited = box.input_value() + " Mention cats often."
        box.fill(edited)
        sidebar(page).get_by_label("Max output tokens (1–4096 or inf)").fill("lots")
        apply(page)
        sidebar(page).get_by_text("Not applied — max output tokens").wait_for()
        sidebar(page).get_by_text("Saved (instructions)").wait_for()
        start_talking(page)
        first = next(p for d, t, p in events(data) if d == "server" and t == "session.updated")
        assert first["session"]["instructions"] == edited  # what the box showed, confirmed by the server
        assert first["session"]["max_output_tokens"] == "inf"

        box.fill("Tell me everything. " * 1000)  # 20,000 characters
        sidebar(page).get_by_label("Max output tokens (1–4096 or inf)").fill("300")
        apply(page)
        refusal = sidebar(page).get_by_text("Not applied — instructions")
        refusal.wait_for()
        assert "holds 2,048 tokens in all" in refusal.inner_text()  # the fast reply model's context
        assert f"too long for {PROFILES['fast'].model}: " in refusal.inner_text()
        assert ": about " not in refusal.inner_text()  # counted by the backend's tokenizer, not estimated
        sidebar(page).get_by_text("the server confirmed max output tokens").wait_for()
        log = stored(data, lambda log: index(log, "client", "session.update") > -1, "the session.update")
        updates = [p for d, t, p in log if d == "client" and t == "session.update"]
        assert updates[-1]["session"] == {"type": "realtime", "max_output_tokens": 300}
        assert all(len(u["session"].get("instructions", "")) < 1000 for u in updates)
        stop_talking(page)


def test_mute_typed_message_stop_the_ai_and_the_recording(app, tmp_path, speech):
    """Mute: the AI hears silence. A typed message is answered. Stop the AI cuts the reply where it was
    heard (the rest struck through). History offers the conversation's audio, both sides."""
    url, data = app
    wav = mic(tmp_path, speech, 20.0, "Please count from one to five.", 30.0)  # room for a slow connection
    with opened(tmp_path, wav, url) as page:
        assert page.locator("video").count() == 0 or not page.locator("video").first.is_visible()
        shoot(page, "first-screen")
        set_instructions(page, STORYTELLER)
        apply(page)
        began = start_talking(page)
        page.get_by_text("Mute microphone").click()
        page.get_by_text("microphone muted").first.wait_for(timeout=10_000)
        assert time.monotonic() - began < 20, "connected too late for this recording"
        settle(page, max(0.0, began + 26 - time.monotonic()))  # the spoken question has passed
        assert index(events(data), "server", "input_audio_buffer.speech_started") == -1, "the AI heard a muted mic"
        page.get_by_text("Mute microphone").click()

        type_message(page, "Tell me a story about a brave dragon.")
        page.get_by_text("Speaking…").first.wait_for(timeout=60_000)
        settle(page, 2)
        page.get_by_role("button", name="Stop the AI").click()
        found = wait_rows(page, lambda r: len(r) >= 2 and "interrupted" in r[1][3], "the stopped reply", 20)
        assert found[0][1] == "You" and "brave dragon" in found[0][2], found
        page.get_by_text("Listening").first.wait_for(timeout=10_000)
        log = events(data)
        # Only what was played stands as said: the rest is struck through, or (the local backend cuts
        # its own transcript at the clauses it played) left out. (tests/test_store.py checks the strike.)
        reply = "".join(p["delta"] for d, t, p in log if t == "response.output_audio_transcript.delta")
        assert found[1][2] and reply.startswith(found[1][2].split(" ")[0]), (found, reply)
        typed = index(log, "client", "conversation.item.create")
        assert log[typed][2]["item"]["content"][0] == {"type": "input_text",
                                                       "text": "Tell me a story about a brave dragon."}
        assert index(log, "client", "response.create", after=typed) > typed
        assert index(log, "client", "response.cancel", after=typed) > -1 or \
            index(log, "client", "output_audio_buffer.clear", after=typed) > -1
        shoot(page, "conversation")
        stop_talking(page)

        page.reload()  # a new browser session: the page points to the conversation just had
        page.get_by_text("Your last conversation").wait_for(timeout=30_000)
        for _ in range(3):  # a click that lands while the page redraws is lost: click again
            page.get_by_role("link", name="Open it in History").click()
            with contextlib.suppress(Exception):
                page.wait_for_url("**/History?**", timeout=10_000)
                break
        download = page.get_by_role("button", name="Download audio")
        download.wait_for(timeout=30_000)
        # The header names the model that answered (the local reply model), not the protocol's model name.
        page.get_by_text(f"local · {PROFILES['fast'].model} · stopped by the user").wait_for()
        shoot(page, "history")
        with page.expect_download() as caught:
            download.click()
        saved = tmp_path / "conversation.ogg"
        caught.value.save_as(saved)
    with av.open(str(saved)) as container:
        stream = container.streams.audio[0]
        assert stream.channels == 2
        audio = np.concatenate([frame.to_ndarray() for frame in container.decode(stream)], axis=1)
    assert audio.shape[1] > 48_000 * 10  # the whole call, not just the replies
    you, ai = np.sqrt((audio.astype(np.float64) ** 2).mean(axis=1))
    assert ai > 0.005, (you, ai)  # the AI's voice is on the right


@pytest.fixture(scope="module")
def short_app(tmp_path_factory):
    """An app whose sessions end after 20 s without speech, or after 45 s in all."""
    yield from serve(tmp_path_factory.mktemp("short"), KOE_REPLY_MODEL="fast", KOE_IDLE_TIMEOUT_S="20",
                     KOE_MAX_SESSION_MINUTES="0.75")


def test_an_idle_end_is_counted_down_then_the_button_and_clock_stop(short_app, tmp_path, speech):
    url, _ = short_app
    with opened(tmp_path, mic(tmp_path, speech, 90.0), url) as page:
        start_talking(page)
        page.get_by_text("The session ends in").first.wait_for(timeout=30_000)
        page.get_by_text("Ended: no speech for 20 seconds").first.wait_for(timeout=60_000)
        # The browser's call stopped with it: the button offers START again, and the clock stands still.
        page.frame_locator(WEBRTC_IFRAME).get_by_role("button", name="Start").wait_for(timeout=30_000)
        clock = page.get_by_text("This session:").first
        first = clock.inner_text()
        settle(page, 3)
        assert clock.inner_text() == first


def test_the_session_minutes_are_counted_down_then_end_the_call(short_app, tmp_path, speech):
    """Kept busy (a typed message every few seconds: no idle end), the session meets its time limit: the
    page counts down to it, naming it, then ends the call and says why."""
    url, data = short_app
    with opened(tmp_path, mic(tmp_path, speech, 120.0), url) as page:
        start_talking(page)
        countdown = page.get_by_text("the 0.75-minute limit", exact=False)
        deadline = time.monotonic() + 60
        while not countdown.count():  # the idle countdown is the nearer one until ~25 s have passed
            assert time.monotonic() < deadline, "no countdown to the session's time limit"
            type_message(page, "Say yes.")
            settle(page, 4)
        assert "The session ends in" in countdown.first.inner_text()
        page.get_by_text("Ended: the session reached its 0.75-minute limit").first.wait_for(timeout=60_000)
        page.frame_locator(WEBRTC_IFRAME).get_by_role("button", name="Start").wait_for(timeout=30_000)
    with sqlite3.connect(data / "koe.sqlite3") as db:
        reason = db.execute("SELECT end_reason FROM conversations ORDER BY started_at DESC LIMIT 1").fetchone()[0]
    assert "0.75-minute limit" in reason


@pytest.fixture(scope="module")
def openai_like_app(tmp_path_factory, local_server):
    """The app offering OpenAI's models (its OpenAI base URL is the tests' local server, which speaks the
    same protocol and accepts the same model names) and the local backend (that server too)."""
    yield from serve(tmp_path_factory.mktemp("openai"), OPENAI_API_KEY=LOCAL_KEY, OPENAI_BASE_URL=local_server.url,
                     KOE_LOCAL_URL=local_server.url, KOE_LOCAL_API_KEY=LOCAL_KEY)


def test_reasoning_effort_is_offered_for_reasoning_models_only_and_sent(openai_like_app, tmp_path, speech):
    url, data = openai_like_app
    with opened(tmp_path, mic(tmp_path, speech, 60.0), url) as page:
        reasoning = sidebar(page).get_by_label("Reasoning effort", exact=True)
        sidebar(page).get_by_text("Local (offline)").click()
        sidebar(page).get_by_text("Koe's own offline backend").wait_for()
        assert reasoning.count() == 0  # the local backend: no reasoning
        sidebar(page).get_by_text("OpenAI", exact=True).click()
        choose(page, "Model", "gpt-realtime")
        sidebar(page).get_by_label("Voice", exact=True).wait_for()
        assert reasoning.count() == 0  # gpt-realtime does not reason
        choose(page, "Model", "gpt-realtime-2")
        reasoning.wait_for()
        start_talking(page)
        choose(page, "Reasoning effort", "high")
        apply(page)
        sidebar(page).get_by_text("the server confirmed reasoning effort").wait_for(timeout=30_000)
        stop_talking(page)
    log = events(data)
    updates = [p["session"] for d, t, p in log if d == "client" and t == "session.update"]
    assert updates[-1] == {"type": "realtime", "reasoning": {"effort": "high"}}, updates
    confirmed = [p["session"] for d, t, p in log if d == "server" and t == "session.updated"]
    assert confirmed[-1]["reasoning"] == {"effort": "high"}, confirmed[-1]
    with sqlite3.connect(data / "koe.sqlite3") as db:
        assert db.execute("SELECT model FROM conversations").fetchone()[0] == "gpt-realtime-2"


def test_a_refused_microphone_is_explained(app, tmp_path):
    """When the browser refuses the microphone, the page says so in words."""
    url, _ = app
    with opened(tmp_path, None, url) as page:
        # One press, as a person would; the refusal comes at once, so Stop never shows.
        page.frame_locator(WEBRTC_IFRAME).get_by_role("button", name="Start").click(timeout=120_000)
        page.get_by_text("the browser blocked the microphone").wait_for(timeout=30_000)
