"""The relay: a browser's peer on one side, an upstream Realtime call on the other.

Browser frames arrive on the loop that serves the browser's peer (Streamlit's, under
streamlit-webrtc). The upstream call runs on a loop of its own (`LoopThread`), so a slow UI rerun
on Streamlit's loop cannot stall the upstream jitter buffer and vice versa. Each track is touched
only on its own loop; frames cross with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

import aioice.ice
import av
import numpy as np
from aiortc import RTCIceServer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from koe.audio import RATE, FrameQueueTrack, rms_dbfs
from koe.client import Backend, RateLimitError, RealtimeConnection, RealtimeError
from koe.ice import stun_urls, unanswered_stun, upstream_ice_servers
from koe.limits import SessionGuard
from koe.opus import keep_payloads
from koe.protocol import ServerEvent, SessionSettings, SettingsError, new_id
from koe.tool_runner import ToolRunner

log = logging.getLogger("koe.relay")

QUEUE_FRAMES = 10  # 200 ms each way: more than that behind means a loop stalled, and old audio goes
VOICE_DBFS = -50.0  # a frame louder than this is speech (for the latency and turn-wait figures)
HEARD_DBFS = -45.0  # a push-to-talk turn with no browser frame louder than this had nothing said in it
LIMIT_TICK_S = 0.5  # how often the session's time limits are checked
SLOW_CONNECT_S = 4.0  # a connection not up by then is said to take longer than expected, with why

# Errors that are part of normal play (a cancel with nothing to cancel), not news for the user.
QUIET_ERRORS = {"response_cancel_not_active"}

T = TypeVar("T")

# A peer that vanishes without a goodbye (a closed tab, a dropped network) is noticed by ICE consent
# checks (RFC 7675): aioice sends one every 5 s and gives up after 6 missed, ~30 s in which the
# upstream call and its slot stay taken. One a second, 5 missed: ~6 s.
CONSENT_INTERVAL_S = 1
CONSENT_FAILURES = 5


def notice_lost_peers_quickly() -> None:
    """Every aiortc peer of this process fails within ~6 s of its remote going silent (process-wide;
    the browser's track then ends, and with it the upstream call)."""
    aioice.ice.CONSENT_INTERVAL = CONSENT_INTERVAL_S
    aioice.ice.CONSENT_FAILURES = CONSENT_FAILURES


class LoopThread:
    """An event loop on a daemon thread, shared by all relays of the process."""

    def __init__(self, name: str = "koe-relay") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


# What the conversation is doing, from the events (RelayStatus.phase while live).
LISTENING, HEARING, THINKING, SPEAKING = "listening", "hearing you", "thinking", "speaking"
CHARS_PER_S = 14.0  # speech rate assumed for a cut reply until a whole reply has played (then measured)
COMMIT_EMPTY = "input_audio_buffer_commit_empty"
NOTHING_HEARD = "Nothing was heard, so nothing was sent: hold the Talk button (or the space bar) while you speak."


@dataclass
class RelayStatus:
    state: str = "idle"  # idle | connecting | live | ended | failed
    message: str = ""
    input_dbfs: float = -100.0
    output_dbfs: float = -100.0
    notice: str = ""  # the backend's latest error or warning, in its own words (cleared by the next turn)
    hint: str = ""  # the relay's own word to the user about the last turn (e.g. nothing was heard)
    phase: str = LISTENING  # while live: listening | hearing you | thinking | speaking
    muted: bool = False
    ended_by: str = ""  # "user" when STOP ended it; "limit" / "backend" when the session ended on its own


# App event: the time from the user's last voiced frame to the backend's speech_stopped, as the relay saw it.
TURN_WAITED = "koe.turn_waited"


class Relay:
    """Relays one browser conversation to a backend and records it.

    Set `on_end(reason)` to learn when the call ended (by the user or the backend), and
    `on_event(direction, event_dict, at)` to receive every event both ways (the session store's
    `record_event`, bound to the conversation) and `on_latency(item_id, ms)` for the reply latency the
    relay measures where it matters: end of the user's speech (`speech_stopped`, or the push-to-talk release)
    to the first voiced frame for the browser.
    At each `speech_stopped` an app event TURN_WAITED {item_id, waited_ms} says how long the backend's
    turn detection waited after the user's last voiced frame. A `SessionGuard` given to `start` ends the
    call when a limit is reached (time, idleness, cost).
    """

    def __init__(self, backend: Backend, settings: SessionSettings, loop_thread: LoopThread, *,
                 ice_servers: list[RTCIceServer] | None = None, extra_voices: tuple[str, ...] = (),
                 passthrough: bool = True) -> None:
        self.backend = backend
        self.settings = settings
        self.status = RelayStatus()
        # The audio passes through as the Opus packets it came in (koe.opus): no encoding on either
        # side; the frames the receivers decode anyway serve the meters, the figures and the recording.
        # False: every frame is encoded again (what aiortc does by default; bench/relay.py compares).
        self.passthrough = passthrough
        if passthrough:
            keep_payloads()
        self.to_browser = FrameQueueTrack(QUEUE_FRAMES, passthrough)
        self._loop_thread = loop_thread
        self.on_event: Callable[[str, dict, float], None] = lambda direction, event, at: None
        self.on_latency: Callable[[str, int], None] = lambda item_id, ms: None
        self.on_end: Callable[[str], None] = lambda reason: None
        self._ice_servers = ice_servers
        self.extra_voices = extra_voices  # voices the backend has beyond OpenAI's
        self._browser_loop: asyncio.AbstractEventLoop | None = None
        self._upstream: FrameQueueTrack | None = None
        self._connection: RealtimeConnection | None = None
        self._reply_item: str | None = None
        self._reply_playing = False  # between output_audio_buffer.started and .stopped/.cleared
        self._reply_start = 0  # to_browser sample index where the current reply's audio began
        self._speech_stopped_at: float | None = None
        self._user_voice_at: float | None = None  # monotonic time of the latest voiced browser frame
        self._assistant_spoke = False
        self._response_active = False  # between response.created and response.done
        self._reply_text = ""  # the current reply's transcript so far (to say how much of it was heard)
        self._chars_per_s = CHARS_PER_S
        self._awaiting_commit = False  # a manual turn ended: ask for a reply once the commit is confirmed
        self._turn_peak_dbfs = -100.0  # the loudest browser frame since the manual turn began
        self.recorder = None  # a koe.recording.Recorder, set before start to keep both sides' audio
        self.guard: SessionGuard | None = None
        self._tools: ToolRunner | None = None

    @property
    def assistant_spoke(self) -> bool:
        return self._assistant_spoke

    # -- browser side (called on the browser peer's loop) ----------------------------------------
    def on_browser_frame(self, frame: av.AudioFrame) -> None:
        """Sink callback: every browser frame in order (s16 stereo 48 kHz, 20 ms)."""
        self._browser_loop = self._browser_loop or asyncio.get_running_loop()
        if self.status.muted:  # the backend hears silence: its clock and turn detection go on
            frame = silent_like(frame)
        self.status.input_dbfs = level = rms_dbfs(frame.to_ndarray())
        self._turn_peak_dbfs = max(self._turn_peak_dbfs, level)
        if level >= VOICE_DBFS:
            self._user_voice_at = time.monotonic()
        if self.recorder is not None:
            self.recorder.user(frame)
        upstream = self._upstream
        if upstream is not None:
            self._loop_thread.loop.call_soon_threadsafe(upstream.put, frame)

    def set_muted(self, muted: bool) -> None:
        """Mute the microphone: silence goes upstream instead of the user's frames (any thread)."""
        self.status.muted = muted

    # -- lifecycle (any thread) ------------------------------------------------------------------
    def start(self, guard: SessionGuard | None = None) -> concurrent.futures.Future:
        self.guard = guard
        self.status.state, self.status.message = "connecting", "Negotiating with the backend…"
        return self._loop_thread.submit(self._begin())

    def refuse(self, reason: str) -> None:
        """Say why the session may not start (a limit); nothing was connected."""
        self.status.state, self.status.message = "failed", f"Not started: {reason}."

    def close(self, reason: str) -> concurrent.futures.Future:
        """Close the upstream call without waiting (safe on any loop)."""
        return self._loop_thread.submit(self._stop(reason))

    def stop(self, reason: str = "stopped by the user") -> None:
        """Close the upstream call; waits a few seconds at most (not for use on an event loop)."""
        if self.status.state in ("live", "connecting"):
            self.status.ended_by = "user"
        with contextlib.suppress(concurrent.futures.TimeoutError):
            self.close(reason).result(timeout=5)

    def call(self, coro_fn: Callable[[RealtimeConnection], Awaitable[T]], timeout_s: float = 10.0) -> T:
        """Run `coro_fn(connection)` on the relay's loop and wait for its result (for the UI thread)."""
        connection = self._connection
        if connection is None or self.status.state != "live":
            raise RealtimeError("the conversation is not connected")
        return self._loop_thread.submit(coro_fn(connection)).result(timeout=timeout_s)

    def update(self, settings: SessionSettings, only: set[str] | None = None) -> SessionSettings:
        """Apply settings to the running session; returns what the server confirmed."""
        if settings.voice != self.settings.voice and self.assistant_spoke:
            raise SettingsError("voice", "cannot change once the assistant has spoken: "
                                         "stop and start again to use the new voice")
        dialect = self._connection.dialect if self._connection else "ga"
        self.on_event("client", {"type": "session.update", "session": settings.to_wire(dialect, only=only)},
                       time.time())
        confirmed = self.call(lambda connection: connection.update(settings, only=only))
        self.settings = confirmed
        return confirmed

    def send(self, event: dict) -> None:
        """Send one client event (push to talk, response.create, ...)."""
        self.call(lambda connection: connection.send(event))
        self.on_event("client", event, time.time())

    def stop_reply(self) -> None:
        """Stop the AI: cancel the reply being made, drop its unplayed audio, and cut it where the
        browser stopped playing it (`response.cancel`, `output_audio_buffer.clear`,
        `conversation.item.truncate`). Raises RealtimeError when not connected."""
        self.call(lambda connection: self._end_ai_turn(connection))

    def begin_turn(self) -> None:
        """Push to talk pressed: end the AI's turn, then start a new input buffer
        (`input_audio_buffer.clear`). Raises RealtimeError when not connected."""

        async def begin(connection: RealtimeConnection) -> None:
            await self._end_ai_turn(connection)
            self._awaiting_commit = False
            self.status.phase, self.status.notice, self.status.hint = HEARING, "", ""
            await self._send(connection, {"type": "input_audio_buffer.clear"})
            self._turn_peak_dbfs = -100.0

        self.call(begin)

    def end_turn(self) -> None:
        """Push to talk released: `input_audio_buffer.commit`; the reply is asked for
        (`response.create`) once `input_audio_buffer.committed` confirms the words are in. When
        nothing was heard the server answers `input_audio_buffer_commit_empty` and the status says so."""

        async def end(connection: RealtimeConnection) -> None:
            if self._turn_peak_dbfs < HEARD_DBFS:  # silence (or muted): no turn, and no reply to nothing
                await self._send(connection, {"type": "input_audio_buffer.clear"})
                self.status.phase, self.status.hint = LISTENING, NOTHING_HEARD
                return
            self._awaiting_commit = True
            self.status.phase = THINKING
            # The release ends the user's speech, as speech_stopped does under VAD: the reply latency counts from here.
            self._speech_stopped_at = time.monotonic()
            await self._send(connection, {"type": "input_audio_buffer.commit"})

        self.call(end)

    def say(self, text: str) -> None:
        """A typed message: ends the AI's turn, then `conversation.item.create` (an `input_text`
        user message) and `response.create`. Raises RealtimeError when not connected."""

        async def typed(connection: RealtimeConnection) -> None:
            await self._end_ai_turn(connection)
            await self._send(connection, {"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
            self.status.phase = THINKING
            await self._send(connection, {"type": "response.create"})

        self.call(typed)

    async def _send(self, connection: RealtimeConnection, event: dict) -> None:
        event.setdefault("event_id", new_id("event"))
        self.on_event("client", event, time.time())
        await connection.send(event)

    async def _end_ai_turn(self, connection: RealtimeConnection) -> None:
        """Cancel the active reply and cut the one playing where the browser stopped hearing it."""
        if self._response_active:
            await self._send(connection, {"type": "response.cancel"})
        playing, active, item = self._reply_playing, self._response_active, self._reply_item
        self._reply_playing = self._response_active = False
        self.status.phase = LISTENING
        if playing:
            await self._send(connection, {"type": "output_audio_buffer.clear"})
        if (playing or active) and self._browser_loop is not None:
            self._browser_loop.call_soon_threadsafe(self._barge_in, item, playing)

    def restart(self, settings: SessionSettings, history: list[dict]) -> concurrent.futures.Future:
        """A new upstream session with new settings (the voice is fixed once the assistant spoke),
        seeded with the conversation so far while the browser's call goes on.

        `history`: `{"id", "role": "user" | "assistant", "text"}` per item, in order. The copies keep
        their item ids, so the new session's `conversation.item.added/done` name items the
        transcript already holds and no row is added twice.
        """
        self.settings = settings
        self.status.state, self.status.message = "connecting", "Starting a new session with the new voice…"
        return self._loop_thread.submit(self._restart(history))

    async def _restart(self, history: list[dict]) -> None:
        old, self._connection = self._connection, None
        if old is not None:
            self._cut_reply()  # the old session's reply ends here, as far as it was heard
            await old.close("restarted with new settings")
        if self._upstream is not None:
            self._upstream.stop()
        self._reset_turn()
        self._assistant_spoke = False
        self.status.notice = ""
        await self._start()
        connection = self._connection
        if connection is None:
            self._release()
            return
        text_type = {"user": "input_text", "assistant": "output_text" if connection.dialect == "ga" else "text"}
        previous = None
        for entry in history:
            role = entry["role"]
            event = {"type": "conversation.item.create", "item": {
                "id": entry["id"], "type": "message", "role": role,
                "content": [{"type": text_type[role], "text": entry["text"]}]}}
            if previous is not None:
                event["previous_item_id"] = previous
            previous = entry["id"]
            with contextlib.suppress(RealtimeError):
                await self._send(connection, event)

    def _reset_turn(self) -> None:
        self._reply_item, self._reply_playing, self._response_active = None, False, False
        self._reply_text, self._awaiting_commit = "", False
        self.status.phase = LISTENING

    def use_tools(self, runner: ToolRunner) -> None:
        """Run the model's function calls here, on the relay's loop (koe.tool_runner): each result goes
        upstream as a `function_call_output` item, recorded like every client event."""
        self._tools = runner
        runner.send = self._send_upstream
        runner.offered = lambda: [tool.name for tool in self.settings.tools if tool.type == "function"]

    async def _send_upstream(self, event: dict) -> None:
        connection = self._connection
        if connection is None:
            raise RealtimeError("the conversation is not connected")
        await connection.send(event)
        self.on_event("client", event, time.time())

    # -- upstream side (on the relay loop) -------------------------------------------------------
    async def _begin(self) -> None:
        watch = asyncio.ensure_future(self._say_when_slow())
        await self._start()
        watch.cancel()
        if self.status.state != "live":
            self._release()
        elif self.guard is not None:
            asyncio.ensure_future(self._enforce_limits(self.guard))

    async def _enforce_limits(self, guard: SessionGuard) -> None:
        """The limits no event announces (session minutes, idle time), on a timer; ends with the call."""
        while self.status.state in ("live", "connecting"):
            reason = guard.check()
            if reason is not None:
                await self._limit_reached(reason)
                return
            await asyncio.sleep(LIMIT_TICK_S)

    async def _limit_reached(self, reason: str) -> None:
        if self.status.state not in ("live", "connecting"):
            return  # already ending
        log.info("ending a session: %s", reason)
        self.status.ended_by = "limit"
        self.on_event("app", {"type": "koe.limit_reached", "reason": reason}, time.time())
        await self._stop(reason)

    def _not_started(self, message: str) -> None:
        """The call did not come up: say why, unless STOP (or a limit) ended it first, which is why it failed.
        The conversation START stored ends here (History would list it as running for good) and its
        concurrency slot is given back."""
        self._connection = None
        if self.status.state != "ended":
            self.status.state, self.status.message = "failed", message
            self.on_end(message)
        self._release()

    def _release(self) -> None:
        if self.guard is not None:
            self.guard.release()

    async def _say_when_slow(self) -> None:
        """If the call is not up after SLOW_CONNECT_S, say so on the status line, and why."""
        await asyncio.sleep(SLOW_CONNECT_S)
        silent = await unanswered_stun(stun_urls(self._ice_servers or []))
        if self.status.state != "connecting":
            return
        why = [f"the STUN server {', '.join(silent)} does not answer (check KOE_STUN_URLS; no peer waits for it "
               "more than briefly)"] if silent else []
        why.append("the backend has not finished connecting (a local backend may still be loading its models)")
        self.status.message = f"Connecting takes longer than expected: {'; '.join(why)}…"

    async def _start(self) -> None:
        self._upstream = FrameQueueTrack(QUEUE_FRAMES, self.passthrough)
        # A backend on this machine needs no STUN/TURN, and an unreachable one would only slow START down.
        ice_servers = await upstream_ice_servers(self._ice_servers or [], self.backend.base_url)
        # Reply packets go straight to the decoder instead of waiting 80 ms for reordering: the
        # hop is server to server, where a rare late packet (dropped, 20 ms) costs less than 80 ms
        # added to every reply (bench/relay.py measures what the relay adds).
        connection = self._connection = RealtimeConnection(
            self.backend, self.settings, audio=self._upstream, on_audio=self._on_upstream_audio,
            ice_servers=ice_servers, in_order_audio=True, extra_voices=self.extra_voices)
        connection.add_listener(self._on_server_event)
        try:
            await connection.connect()
        except RateLimitError as exc:  # a full backend refused before any media: say when to come back
            wait = f" in {exc.retry_after_s:.0f} s" if exc.retry_after_s else " later"
            told = exc.message if "try again" in exc.message.lower() else f"{exc.message} Try again{wait}."
            self._not_started(f"Not started: {told}")
            return
        except (RealtimeError, SettingsError) as exc:
            self._not_started(f"Could not connect: {exc}")
            return
        except Exception as exc:  # anything else still ends as a message, never a traceback in the UI
            log.exception("upstream connect failed")
            self._not_started(f"Could not connect: {exc}")
            return
        if self.status.state == "ended":  # STOP came while connecting, before the call existed: end it now
            self._connection = None
            await connection.close("stopped while connecting")
            return
        self.settings = connection.settings or self.settings
        self.status.state, self.status.message = "live", "Connected: speak now."
        self.status.phase = LISTENING
        asyncio.ensure_future(self._watch(connection))

    async def _watch(self, connection: RealtimeConnection) -> None:
        await connection.closed.wait()
        if self.status.state == "live":  # not our own stop: the backend ended the call
            self._cut_reply()
            self.status.state, self.status.ended_by = "ended", "backend"
            self.status.message = f"The backend ended the session: {connection.close_reason}."
            self.on_event("app", {"type": "koe.session_ended", "reason": connection.close_reason}, time.time())
            self.on_end(connection.close_reason or "ended by the backend")
            self._release()

    async def _stop(self, reason: str) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._cut_reply()
        if self._tools is not None:
            self._tools.cancel("the conversation ended")
        if self.status.state in ("live", "connecting"):
            self.status.state, self.status.message = "ended", f"Ended: {reason}."
        if connection is not None:
            await connection.close(reason)
            self.on_end(reason)
        if self._upstream is not None:
            self._upstream.stop()
            self._upstream = None
        if self.recorder is not None:
            self.recorder.close()
        self._release()

    def _on_upstream_audio(self, frame: av.AudioFrame) -> None:
        level = rms_dbfs(frame.to_ndarray())  # both channels at once: a mono voice has the same level
        self.status.output_dbfs = level
        if self._browser_loop is not None:
            self._browser_loop.call_soon_threadsafe(self._to_browser, frame, level, time.monotonic())

    def _to_browser(self, frame: av.AudioFrame, level: float, received_at: float) -> None:
        """On the browser loop: hand the reply frame on, and time the first voiced one of a reply."""
        if level >= VOICE_DBFS and self._speech_stopped_at is not None and self._reply_item is not None:
            self.on_latency(self._reply_item, round(1000 * (received_at - self._speech_stopped_at)))
            self._speech_stopped_at = None
        self.to_browser.put(frame)
        if self.recorder is not None:
            self.recorder.assistant(frame)

    def _on_server_event(self, event: ServerEvent) -> None:
        at = time.time()
        payload = event.model_dump(mode="json")
        self.on_event("server", payload, at)
        if self.guard is not None and (reason := self.guard.observe(payload)) is not None:
            asyncio.ensure_future(self._limit_reached(reason))
        if self._tools is not None:
            self._tools.observe(payload)
        kind = event.type
        status = self.status
        if kind == "input_audio_buffer.speech_started":
            status.phase, status.notice, status.hint = HEARING, "", ""
        elif kind == "input_audio_buffer.speech_stopped":
            self._speech_stopped_at = time.monotonic()
            status.phase = THINKING if self._auto_reply() else LISTENING
            if self._user_voice_at is not None:  # how long the backend's turn detection waited after the user
                waited = round(1000 * (self._speech_stopped_at - self._user_voice_at))
                self.on_event("app", {"type": TURN_WAITED, "item_id": getattr(event, "item_id", None),
                                      "waited_ms": waited}, at)
        elif kind == "input_audio_buffer.committed" and self._awaiting_commit:
            # The words are in the conversation now: only now may the reply be asked for.
            self._awaiting_commit = False
            asyncio.ensure_future(self._send_quietly(self._connection, {"type": "response.create"}))
        elif kind == "response.created":
            self._response_active, self._reply_text = True, ""
            status.phase, status.notice, status.hint = THINKING, "", ""
        elif kind == "response.output_item.added":
            self._reply_item = (getattr(event, "item", None) or {}).get("id")
        elif kind in ("response.output_audio_transcript.delta", "response.audio_transcript.delta"):
            if getattr(event, "item_id", None) == self._reply_item:
                self._reply_text += getattr(event, "delta", "") or ""
        elif kind == "response.done":
            self._response_active = False
            if not self._reply_playing and status.phase == THINKING:
                status.phase = LISTENING
        elif kind == "output_audio_buffer.started":
            self._assistant_spoke = self._reply_playing = True
            status.phase = SPEAKING
            if self._browser_loop is not None:
                self._browser_loop.call_soon_threadsafe(self._mark_reply_start)
        elif kind == "output_audio_buffer.stopped":
            if self._reply_playing and self._browser_loop is not None:
                self._browser_loop.call_soon_threadsafe(self._measure_speech_rate, len(self._reply_text))
            self._reply_playing = False
            if status.phase == SPEAKING:
                status.phase = LISTENING
        elif kind == "error":
            info = getattr(event, "error", None)  # a malformed error event arrives as an unknown event
            code = getattr(info, "code", None)
            if code == COMMIT_EMPTY and self._awaiting_commit:
                self._awaiting_commit = False
                status.phase, status.hint = LISTENING, NOTHING_HEARD
            elif getattr(info, "message", None) and code not in QUIET_ERRORS:
                status.notice = info.message
        if kind == "output_audio_buffer.cleared" and status.phase == SPEAKING:
            status.phase = LISTENING
        if kind in ("input_audio_buffer.speech_started", "output_audio_buffer.cleared"):
            # Barge-in: drop what we still hold and tell the server what the browser really heard.
            if self._browser_loop is not None:
                item = self._reply_item if self._reply_playing else None  # a finished reply stays whole
                self._browser_loop.call_soon_threadsafe(self._barge_in, item, True)
            self._reply_playing = False

    def _auto_reply(self) -> bool:
        vad = self.settings.turn_detection
        return vad is not None and getattr(vad, "create_response", True) is not False

    def _mark_reply_start(self) -> None:
        self._reply_start = self.to_browser.played_samples + self.to_browser.queued_samples

    def _heard_ms(self) -> int:
        return max(0, self.to_browser.played_samples - self._reply_start) * 1000 // RATE

    def _measure_speech_rate(self, chars: int) -> None:
        """A reply that played whole tells how fast this voice speaks (characters per second)."""
        seconds = self._heard_ms() / 1000
        if seconds >= 1.0 and chars >= 10:
            self._chars_per_s = chars / seconds

    def _cut_reply(self) -> None:
        """The reply in progress ends here (STOP, a new session): record how much of it was heard."""
        item_id, playing, active = self._reply_item, self._reply_playing, self._response_active
        self._reply_item, self._reply_playing, self._response_active = None, False, False
        if item_id is not None and (playing or active):
            self._record_cut(item_id, self._heard_ms() if playing else 0)

    def _record_cut(self, item_id: str, heard_ms: int) -> None:
        """`koe.reply_cut` {item_id, audio_end_ms, heard_chars}: the transcript keeps the heard text
        and marks the rest as not heard."""
        self.on_event("app", {"type": "koe.reply_cut", "item_id": item_id, "audio_end_ms": heard_ms,
                              "heard_chars": heard_prefix(self._reply_text, heard_ms, self._chars_per_s)}, time.time())

    def _barge_in(self, item_id: str | None, playing: bool) -> None:
        """On the browser loop: drop the reply audio still held; cut the reply `item_id` (None: it
        had finished) where the browser stopped playing it (0 ms when not `playing` yet), upstream
        and in the transcript."""
        track = self.to_browser
        heard_ms = self._heard_ms() if playing else 0
        track.clear()
        if item_id is None:
            return
        if self._reply_item == item_id:
            self._reply_item = None
        self._record_cut(item_id, heard_ms)
        event = {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                 "audio_end_ms": heard_ms}
        connection = self._connection
        if connection is not None:
            self._loop_thread.loop.call_soon_threadsafe(asyncio.ensure_future, self._send_quietly(connection, event))

    async def _send_quietly(self, connection: RealtimeConnection | None, event: dict) -> None:
        if connection is None:
            return
        with contextlib.suppress(RealtimeError):
            await connection.send(event)
            self.on_event("client", event, time.time())


def heard_prefix(text: str, heard_ms: int, chars_per_s: float) -> int:
    """How many characters of a reply's `text` were spoken in its first `heard_ms` of audio, at
    `chars_per_s`, ended at a word boundary (0..len(text))."""
    estimate = int(heard_ms / 1000 * chars_per_s)
    if estimate >= len(text):
        return len(text)
    cut = text.rfind(" ", 0, estimate + 1)
    return max(0, cut if cut > 0 else estimate if " " not in text else 0)


def silent_like(frame: av.AudioFrame) -> av.AudioFrame:
    """A frame of silence with `frame`'s format, layout, rate and timing."""
    silent = av.AudioFrame.from_ndarray(np.zeros_like(frame.to_ndarray()), format=frame.format.name,
                                        layout=frame.layout.name)
    silent.sample_rate, silent.pts = frame.sample_rate, frame.pts
    if frame.time_base is not None:
        silent.time_base = frame.time_base
    return silent
