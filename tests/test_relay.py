"""The relay between a browser's frames and an upstream call, against the local server (real peers)."""

from __future__ import annotations

import asyncio
import threading
import time

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterFrame

from koe.audio import FRAME_SAMPLES, RATE, FrameQueueTrack, PcmQueueTrack, frames, mono_to_frame, rms_dbfs
from koe.opus import keep_payloads, payload_of
from koe.recording import Recorder
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
        decoder = OpusDecoder()  # the relay passes Opus packets on (koe.opus): decode them as a browser would
        while True:
            item = await self.relay.to_browser.recv()
            decoded = decoder.decode(JitterFrame(bytes(item), item.pts)) if isinstance(item, av.Packet) else [item]
            for frame in decoded:
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


async def test_stop_while_connecting_ends_as_stopped_not_failed(backend, loop_thread):
    """STOP pressed right after START: the page says the user stopped it, not that connecting failed."""
    for delay_s in (0.0, 0.3):  # before the call is asked for, and while it is being negotiated
        relay = Relay(backend, SETTINGS, loop_thread)
        started_call = relay.start()
        await asyncio.sleep(delay_s)
        relay.stop()
        await asyncio.wrap_future(started_call)
        assert relay.status.state == "ended" and relay.status.message == "Ended: stopped by the user.", relay.status


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
    ended: list[str] = []
    relay.on_end = ended.append  # the conversation START stored ends too (History would say running)
    relay.start().result(timeout=30)
    assert relay.status.state == "failed"
    assert "Could not connect" in relay.status.message and "127.0.0.1:9" in relay.status.message
    assert ended == [relay.status.message]


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


def test_passthrough_hands_payloads_on_restamped_and_encodes_only_frames_made_here():
    keep_payloads()
    encoder, decoder = OpusEncoder(), OpusDecoder()
    tone = (np.sin(np.arange(FRAME_SAMPLES) / 8) * 12000).astype(np.int16)
    payload = encoder.encode(mono_to_frame(tone, 0))[0][0]
    received = get_decoder_of_the_receivers()(JitterFrame(payload, 777))  # as a receiver decodes it
    assert len(received) == 1 and payload_of(received[0]) == payload
    track = FrameQueueTrack(QUEUE_FRAMES, passthrough=True)
    track.put(received[0])
    track.put(mono_to_frame(np.zeros(FRAME_SAMPLES, np.int16), 5))  # made here (silence while muted)
    passed, made = asyncio.run(track.recv()), asyncio.run(track.recv())
    assert isinstance(passed, av.Packet) and bytes(passed) == payload and passed.pts == 0
    assert isinstance(made, av.Packet) and made.pts == FRAME_SAMPLES and track.packets.encoded == 1
    assert decoder.decode(JitterFrame(bytes(made), made.pts))[0].samples == FRAME_SAMPLES  # valid Opus


def get_decoder_of_the_receivers():
    """The decoder aiortc's receivers now pick for Opus (`rtcrtpreceiver.get_decoder`), as a function."""
    from aiortc import rtcrtpreceiver
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    return rtcrtpreceiver.get_decoder(RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2)).decode


async def test_real_peers_through_the_passthrough_relay_carry_both_ways_and_record(backend, speech, loop_thread,
                                                                                   tmp_path):
    """browser peer -> app peer (sink, as streamlit-webrtc) -> Relay -> local server, and back, all real aiortc
    peers on loopback: the Opus packets pass through unencoded, the backend understands them, the browser
    hears the reply, and the recording has both sides."""
    relay = Relay(backend, SETTINGS, loop_thread)
    relay.recorder = Recorder(tmp_path / "call.ogg")
    started(relay, loop_thread)
    upstream = relay._upstream  # the track the relay's upstream sender reads (an internal, for its counters)
    mic = PcmQueueTrack(capacity_ms=60_000)
    config = RTCConfiguration(iceServers=[])
    browser, app = RTCPeerConnection(config), RTCPeerConnection(config)
    heard: list[tuple[float, float]] = []
    kept: list[bool] = []  # per frame at the app's sink: did it arrive with its Opus payload
    tasks: list[asyncio.Task] = []

    async def sink(track):
        async for frame in frames(track):
            kept.append(payload_of(frame) is not None)
            relay.on_browser_frame(frame)

    async def listen(track):
        async for frame in frames(track):
            heard.append((time.monotonic(), rms_dbfs(frame.to_ndarray())))

    browser.addTrack(mic)
    browser.on("track", lambda track: tasks.append(asyncio.ensure_future(listen(track))))
    app.on("track", lambda track: tasks.append(asyncio.ensure_future(sink(track))))
    try:
        await browser.setLocalDescription(await browser.createOffer())
        await app.setRemoteDescription(browser.localDescription)
        app.addTrack(relay.to_browser)  # streamlit-webrtc's source_audio_track
        await app.setLocalDescription(await app.createAnswer())
        await browser.setRemoteDescription(app.localDescription)
        relay.set_muted(True)  # muted frames are made here: encoded on the same track, the call goes on
        await wait_until(lambda: upstream.packets.encoded > 10, 30, "muted silence to go upstream")
        relay.set_muted(False)
        t0 = time.monotonic()
        mic.push(speech("Please count from one to five."))
        mic.push(np.zeros(RATE, np.int16))
        await wait_until(lambda: "output_audio_buffer.stopped" in types(relay), 90, "the reply's end")
        heard_text = next(e["transcript"] for _, e in relay.events
                          if e["type"] == "conversation.item.input_audio_transcription.completed")
        assert "count" in heard_text.lower()  # the backend decoded the browser's own packets
        assert max(level for at, level in heard if at > t0) > -40  # the browser heard the AI
        assert kept and sum(kept) / len(kept) > 0.99
        encoded = upstream.packets.encoded
        assert relay.to_browser.packets.encoded == 0  # the reply's packets went on as they came
        assert upstream.played_samples > (encoded + 100) * FRAME_SAMPLES  # and the user's, once unmuted
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await browser.close()
        await app.close()
        relay.stop()
    relay.recorder.close(wait_s=10)
    with av.open(str(tmp_path / "call.ogg")) as container:
        audio = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    voiced = lambda channel: float(np.sqrt(np.mean(np.square(channel)))) > 0.01  # noqa: E731 (float samples)
    assert audio.shape[0] == 2 and voiced(audio[0]) and voiced(audio[1])  # the user left, the AI right


def test_an_encoding_pcm_track_gives_continuous_valid_opus_packets():
    track = PcmQueueTrack(capacity_ms=1000, encode=True)
    track.push((np.sin(np.arange(3 * FRAME_SAMPLES) / 8) * 12000).astype(np.int16))
    decoder = OpusDecoder()

    async def three():
        return [await track.recv() for _ in range(3)]

    packets = asyncio.run(three())
    assert all(isinstance(p, av.Packet) for p in packets) and [p.pts for p in packets] == [0, 960, 1920]
    decoded = decoder.decode(JitterFrame(bytes(packets[2]), packets[2].pts))[0]
    assert rms_dbfs(decoded.to_ndarray()) > -30  # the tone, through a real Opus decoder
