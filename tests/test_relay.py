"""The relay between a browser's frames and an upstream call, against the local server (real peers)."""

from __future__ import annotations

import asyncio
import threading
import time

import av
import numpy as np
import pytest

from koe.audio import FRAME_SAMPLES, RATE, FrameQueueTrack, mono_to_frame, rms_dbfs
from koe.client import Backend
from koe.protocol import SessionSettings
from koe.relay import QUEUE_FRAMES, TURN_WAITED, LoopThread, Relay

SETTINGS = SessionSettings(instructions="You are a helpful assistant. Answer briefly.", voice="alloy")


@pytest.fixture(scope="module")
def loop_thread():
    return LoopThread()


class FakeBrowser:
    """Plays the browser's part on this test's loop: 20 ms stereo frames in, the relay's reply track out."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.heard: list[tuple[float, np.ndarray]] = []
        self._mic = np.zeros(0, np.int16)
        self._tasks = [asyncio.ensure_future(self._speak()), asyncio.ensure_future(self._listen())]

    def say(self, speech: np.ndarray, silence_s: float = 1.0) -> None:
        self._mic = np.concatenate([self._mic, speech, np.zeros(int(silence_s * RATE), np.int16)])

    async def _speak(self) -> None:
        pts, start = 0, time.monotonic()
        while True:
            chunk, self._mic = self._mic[:FRAME_SAMPLES], self._mic[FRAME_SAMPLES:]
            chunk = np.pad(chunk, (0, FRAME_SAMPLES - chunk.size))
            stereo = np.repeat(chunk, 2)  # what streamlit-webrtc hands over: s16 stereo
            frame = av.AudioFrame.from_ndarray(stereo.reshape(1, -1), format="s16", layout="stereo")
            frame.sample_rate, frame.pts = RATE, pts
            self.relay.on_browser_frame(frame)
            pts += FRAME_SAMPLES
            await asyncio.sleep(max(0.0, start + pts / RATE - time.monotonic()))

    async def _listen(self) -> None:
        while True:
            frame = await self.relay.to_browser.recv()
            self.heard.append((time.monotonic(), frame.to_ndarray().reshape(-1)))

    def voiced_since(self, t: float) -> float:
        parts = [samples for at, samples in self.heard if at > t]
        return rms_dbfs(np.concatenate(parts)) if parts else -100.0

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def wait_until(condition, timeout_s: float, what: str) -> None:
    """Polls `condition` until it holds; TimeoutError naming `what` after `timeout_s` (bench/relay.py uses it too)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def started(relay: Relay, loop_thread) -> Relay:
    events: list[tuple[str, dict]] = []
    relay.on_event = lambda direction, event, at: events.append((direction, event))
    relay.events = events
    relay.start().result(timeout=30)
    assert relay.status.state == "live", relay.status.message
    return relay


def types(relay: Relay) -> list[str]:
    return [event["type"] for _, event in relay.events]


async def test_a_conversation_through_the_relay(local_server, backend, speech, loop_thread):
    relay = started(Relay(backend, SETTINGS, loop_thread), loop_thread)
    latencies: list[int] = []
    relay.on_latency = lambda item_id, ms: latencies.append(ms)
    browser = FakeBrowser(relay)
    try:
        t0 = time.monotonic()
        browser.say(speech("Please count from one to five."))
        await wait_until(lambda: "response.done" in types(relay), 60, "a reply")
        await wait_until(lambda: "output_audio_buffer.stopped" in types(relay), 30, "the reply's end")
        heard = next(e["transcript"] for _, e in relay.events
                     if e["type"] == "conversation.item.input_audio_transcription.completed")
        assert "count" in heard.lower()
        assert browser.voiced_since(t0) > -40  # the browser received the AI's voice
        assert latencies and 0 < latencies[0] < 60_000  # measured, not a speed goal (bench/relay.py has those)
        # How long turn detection waited after the user's last voiced frame: server VAD's 500 ms window and more.
        committed = next(e["item_id"] for _, e in relay.events if e["type"] == "input_audio_buffer.committed")
        waited = [e for d, e in relay.events if d == "app" and e["type"] == TURN_WAITED]
        assert [e["item_id"] for e in waited] == [committed] and 300 < waited[0]["waited_ms"] < 3000
        # Live settings: confirmed by the server, and refused before sending when invalid.
        confirmed = relay.update(SETTINGS.changed(instructions="Answer in French.", speed=1.25),
                                 only={"instructions", "speed"})
        assert confirmed.speed == 1.25 and confirmed.instructions == "Answer in French."
        assert ("client", "session.update") in [(d, e["type"]) for d, e in relay.events]
        with pytest.raises(Exception, match="voice"):
            relay.update(SETTINGS.changed(voice="echo"))  # the assistant spoke: needs a new session
    finally:
        await browser.close()
        relay.stop()
    assert relay.status.state == "ended"


async def test_a_push_to_talk_turn_gets_a_reply_latency(backend, speech, loop_thread):
    """Hold, speak, release: no speech_stopped comes (manual turns), yet the reply's latency is measured
    from the release, as a VAD turn's is from speech_stopped."""
    relay = started(Relay(backend, SETTINGS.changed(turn_detection=None), loop_thread), loop_thread)
    latencies: list[tuple[str, int]] = []
    relay.on_latency = lambda item_id, ms: latencies.append((item_id, ms))
    browser = FakeBrowser(relay)
    try:
        relay.begin_turn()
        question = speech("What is the capital of Japan?")
        browser.say(question, silence_s=0.3)
        await asyncio.sleep(question.size / RATE + 0.3)
        released = time.monotonic()
        relay.end_turn()
        await wait_until(lambda: latencies, 60, "the reply's first voiced frame")
        reply = next(e["item"]["id"] for d, e in relay.events if e["type"] == "response.output_item.added")
        assert latencies[0][0] == reply
        assert 0 < latencies[0][1] <= round(1000 * (time.monotonic() - released)), latencies
        assert "input_audio_buffer.speech_stopped" not in types(relay)
    finally:
        await browser.close()
        relay.stop()


async def test_barge_in_drops_held_audio_and_truncates_at_what_was_played(backend, speech, loop_thread):
    story = SETTINGS.changed(instructions="You tell long, detailed stories. Never stop early.", max_output_tokens=400)
    relay = started(Relay(backend, story, loop_thread), loop_thread)
    browser = FakeBrowser(relay)
    try:
        browser.say(speech("Tell me a long story about a dragon and a knight."))
        await wait_until(lambda: "output_audio_buffer.started" in types(relay), 60, "the reply audio")
        await asyncio.sleep(1.5)
        browser.say(speech("Stop, please."), silence_s=0.5)
        await wait_until(lambda: "input_audio_buffer.speech_started" in types(relay)[types(relay).index(
            "output_audio_buffer.started"):], 20, "the barge-in")
        await wait_until(lambda: any(d == "client" and e["type"] == "conversation.item.truncate"
                                     for d, e in relay.events), 10, "the relay's truncate")
        truncate = next(e for d, e in relay.events if d == "client" and e["type"] == "conversation.item.truncate")
        assert 500 < truncate["audio_end_ms"] < 20_000  # what the browser heard, not what was generated
        assert relay.to_browser.queued_samples <= QUEUE_FRAMES * FRAME_SAMPLES
        await wait_until(lambda: "conversation.item.truncated" in types(relay), 10, "the server's truncated")
    finally:
        await browser.close()
        relay.stop()


async def test_a_failing_backend_ends_with_a_message(loop_thread):
    relay = Relay(Backend("http://127.0.0.1:9", api_key="x"), SETTINGS, loop_thread)
    relay.start().result(timeout=30)
    assert relay.status.state == "failed"
    assert "Could not connect" in relay.status.message and "127.0.0.1:9" in relay.status.message


async def test_start_stop_cycles_leave_nothing_behind(local_server, backend, loop_thread):
    def relay_loop_tasks() -> int:
        return loop_thread.submit(_count_tasks()).result(timeout=5)

    async def _count_tasks() -> int:
        return len([t for t in asyncio.all_tasks() if not t.done()]) - 1

    base_tasks, base_threads = relay_loop_tasks(), threading.active_count()
    for _ in range(3):
        relay = started(Relay(backend, SETTINGS, loop_thread), loop_thread)
        browser = FakeBrowser(relay)
        await asyncio.sleep(0.5)
        await browser.close()
        relay.stop()
    await wait_until(lambda: local_server.call_count == 0, 10, "the server to drop its calls")
    await wait_until(lambda: relay_loop_tasks() <= base_tasks, 10, "the relay loop's tasks to finish")
    assert threading.active_count() <= base_threads + 1  # aioice may keep one resolver thread


def test_relayed_audio_is_bounded_and_restamped():
    track = FrameQueueTrack(QUEUE_FRAMES)
    for pts in range(0, 100 * FRAME_SAMPLES, FRAME_SAMPLES):
        track.put(mono_to_frame(np.ones(FRAME_SAMPLES, np.int16), pts=pts + 12345))
    assert track.queued_samples == QUEUE_FRAMES * FRAME_SAMPLES  # the oldest went
    first = asyncio.run(track.recv())
    assert first.pts == 0 and track.played_samples == FRAME_SAMPLES
    assert track.clear() == (QUEUE_FRAMES - 1) * FRAME_SAMPLES and track.queued_samples == 0


def test_in_order_audio_hands_packets_on_at_once_and_drops_late_ones():
    from aiortc.rtp import RtpPacket

    from koe.client.jitter import InOrderAudio

    def packet(seq: int) -> RtpPacket:
        p = RtpPacket(sequence_number=seq, timestamp=seq * 960)
        p._data = bytes([seq % 256])
        return p

    buffer = InOrderAudio()
    assert buffer.add(packet(65534))[1].data == bytes([254])
    assert buffer.add(packet(65535))[1] is not None
    assert buffer.add(packet(1))[1].timestamp == 960  # across the wrap, one lost: still handed on
    assert buffer.add(packet(0))[1] is None  # late: already past it
    assert buffer.add(packet(1))[1] is None  # repeated
