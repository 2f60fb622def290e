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
from aiortc import RTCIceServer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from koe.audio import RATE, FrameQueueTrack, frame_to_mono, rms_dbfs
from koe.client import Backend, RateLimitError, RealtimeConnection, RealtimeError
from koe.ice import stun_urls, unanswered_stun, upstream_ice_servers
from koe.limits import SessionGuard
from koe.protocol import ServerEvent, SessionSettings, SettingsError
from koe.tool_runner import ToolRunner

log = logging.getLogger("koe.relay")

QUEUE_FRAMES = 10  # 200 ms each way: more than that behind means a loop stalled, and old audio goes
VOICE_DBFS = -50.0  # a frame louder than this is speech (for the latency and turn-wait figures)
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


@dataclass
class RelayStatus:
    state: str = "idle"  # idle | connecting | live | ended | failed
    message: str = ""
    input_dbfs: float = -100.0
    output_dbfs: float = -100.0
    notice: str = ""  # the backend's latest error or warning, in its own words


# App event: the time from the user's last voiced frame to the backend's speech_stopped, as the relay saw it.
TURN_WAITED = "koe.turn_waited"


class Relay:
    """Relays one browser conversation to a backend and records it.

    Set `on_end(reason)` to learn when the call ended (by the user or the backend), and
    `on_event(direction, event_dict, at)` to receive every event both ways (the session store's
    `record_event`, bound to the conversation) and `on_latency(item_id, ms)` for the reply latency the
    relay measures where it matters: end of the user's speech to the first voiced frame for the browser.
    At each `speech_stopped` an app event TURN_WAITED {item_id, waited_ms} says how long the backend's
    turn detection waited after the user's last voiced frame. A `SessionGuard` given to `start` ends the
    call when a limit is reached (time, idleness, cost).
    """

    def __init__(self, backend: Backend, settings: SessionSettings, loop_thread: LoopThread, *,
                 ice_servers: list[RTCIceServer] | None = None, extra_voices: tuple[str, ...] = ()) -> None:
        self.backend = backend
        self.settings = settings
        self.status = RelayStatus()
        self.to_browser = FrameQueueTrack(QUEUE_FRAMES)
        self._loop_thread = loop_thread
        self.on_event: Callable[[str, dict, float], None] = lambda direction, event, at: None
        self.on_latency: Callable[[str, int], None] = lambda item_id, ms: None
        self.on_end: Callable[[str], None] = lambda reason: None
        self._ice_servers = ice_servers
        self._extra_voices = extra_voices
        self._browser_loop: asyncio.AbstractEventLoop | None = None
        self._upstream: FrameQueueTrack | None = None
        self._connection: RealtimeConnection | None = None
        self._reply_item: str | None = None
        self._reply_playing = False  # between output_audio_buffer.started and .stopped/.cleared
        self._reply_start = 0  # to_browser sample index where the current reply's audio began
        self._speech_stopped_at: float | None = None
        self._user_voice_at: float | None = None  # monotonic time of the latest voiced browser frame
        self._assistant_spoke = False
        self.guard: SessionGuard | None = None
        self._tools: ToolRunner | None = None

    @property
    def assistant_spoke(self) -> bool:
        return self._assistant_spoke

    # -- browser side (called on the browser peer's loop) ----------------------------------------
    def on_browser_frame(self, frame: av.AudioFrame) -> None:
        """Sink callback: every browser frame in order (s16 stereo 48 kHz, 20 ms)."""
        self._browser_loop = self._browser_loop or asyncio.get_running_loop()
        self.status.input_dbfs = rms_dbfs(frame.to_ndarray())
        if self.status.input_dbfs >= VOICE_DBFS:
            self._user_voice_at = time.monotonic()
        upstream = self._upstream
        if upstream is not None:
            self._loop_thread.loop.call_soon_threadsafe(upstream.put, frame)

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

    def restart(self, settings: SessionSettings, history: list[tuple[str, str]]) -> concurrent.futures.Future:
        """A new upstream session with new settings (the voice is fixed once the assistant spoke),
        seeded with the conversation so far as text, while the browser's call goes on."""
        self.settings = settings
        self.status.state, self.status.message = "connecting", "Starting a new session with the new voice…"
        return self._loop_thread.submit(self._restart(history))

    async def _restart(self, history: list[tuple[str, str]]) -> None:
        old, self._connection = self._connection, None
        if old is not None:
            await old.close("restarted with new settings")
        if self._upstream is not None:
            self._upstream.stop()
        self._assistant_spoke = False
        await self._start()
        connection = self._connection
        if connection is None:
            self._release()
            return
        text_type = {"user": "input_text", "assistant": "output_text" if connection.dialect == "ga" else "text"}
        for role, text in history:
            await connection.send({"type": "conversation.item.create", "item": {
                "type": "message", "role": role, "content": [{"type": text_type[role], "text": text}]}})

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
        self.on_event("app", {"type": "koe.limit_reached", "reason": reason}, time.time())
        await self._stop(reason)

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
        self._upstream = FrameQueueTrack(QUEUE_FRAMES)
        # A backend on this machine needs no STUN/TURN, and an unreachable one would only slow START down.
        ice_servers = await upstream_ice_servers(self._ice_servers or [], self.backend.base_url)
        # Reply packets go straight to the decoder instead of waiting 80 ms for reordering: the
        # hop is server to server, where a rare late packet (dropped, 20 ms) costs less than 80 ms
        # added to every reply (bench/relay.py measures what the relay adds).
        connection = self._connection = RealtimeConnection(
            self.backend, self.settings, audio=self._upstream, on_audio=self._on_upstream_audio,
            ice_servers=ice_servers, in_order_audio=True, extra_voices=self._extra_voices)
        connection.add_listener(self._on_server_event)
        try:
            await connection.connect()
        except RateLimitError as exc:  # a full backend refused before any media: say when to come back
            wait = f" in {exc.retry_after_s:.0f} s" if exc.retry_after_s else " later"
            told = exc.message if "try again" in exc.message.lower() else f"{exc.message} Try again{wait}."
            self.status.state, self.status.message = "failed", f"Not started: {told}"
            self._connection = None
            return
        except (RealtimeError, SettingsError) as exc:
            self.status.state, self.status.message = "failed", f"Could not connect: {exc}"
            self._connection = None
            return
        except Exception as exc:  # anything else still ends as a message, never a traceback in the UI
            log.exception("upstream connect failed")
            self.status.state, self.status.message = "failed", f"Could not connect: {exc}"
            self._connection = None
            return
        self.settings = connection.settings or self.settings
        self.status.state, self.status.message = "live", "Connected: speak now."
        asyncio.ensure_future(self._watch(connection))

    async def _watch(self, connection: RealtimeConnection) -> None:
        await connection.closed.wait()
        if self.status.state == "live":  # not our own stop: the backend ended the call
            self.status.state = "ended"
            self.status.message = f"The backend ended the session: {connection.close_reason}."
            self.on_event("app", {"type": "koe.session_ended", "reason": connection.close_reason}, time.time())
            self.on_end(connection.close_reason or "ended by the backend")
            self._release()

    async def _stop(self, reason: str) -> None:
        connection, self._connection = self._connection, None
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
        self._release()

    def _on_upstream_audio(self, frame: av.AudioFrame) -> None:
        level = rms_dbfs(frame_to_mono(frame))
        self.status.output_dbfs = level
        if self._browser_loop is not None:
            self._browser_loop.call_soon_threadsafe(self._to_browser, frame, level, time.monotonic())

    def _to_browser(self, frame: av.AudioFrame, level: float, received_at: float) -> None:
        """On the browser loop: hand the reply frame on, and time the first voiced one of a reply."""
        if level >= VOICE_DBFS and self._speech_stopped_at is not None and self._reply_item is not None:
            self.on_latency(self._reply_item, round(1000 * (received_at - self._speech_stopped_at)))
            self._speech_stopped_at = None
        self.to_browser.put(frame)

    def _on_server_event(self, event: ServerEvent) -> None:
        at = time.time()
        payload = event.model_dump(mode="json")
        self.on_event("server", payload, at)
        if self.guard is not None and (reason := self.guard.observe(payload)) is not None:
            asyncio.ensure_future(self._limit_reached(reason))
        if self._tools is not None:
            self._tools.observe(payload)
        kind = event.type
        if kind == "input_audio_buffer.speech_stopped":
            self._speech_stopped_at = time.monotonic()
            if self._user_voice_at is not None:  # how long the backend's turn detection waited after the user
                waited = round(1000 * (self._speech_stopped_at - self._user_voice_at))
                self.on_event("app", {"type": TURN_WAITED, "item_id": getattr(event, "item_id", None),
                                      "waited_ms": waited}, at)
        elif kind == "response.output_item.added":
            self._reply_item = (getattr(event, "item", None) or {}).get("id")
        elif kind == "output_audio_buffer.started":
            self._assistant_spoke = self._reply_playing = True
            if self._browser_loop is not None:
                self._browser_loop.call_soon_threadsafe(self._mark_reply_start)
        elif kind == "output_audio_buffer.stopped":
            self._reply_playing = False
        elif kind == "error":
            info = getattr(event, "error", None)  # a malformed error event arrives as an unknown event
            if getattr(info, "message", None) and getattr(info, "code", None) not in QUIET_ERRORS:
                self.status.notice = info.message
        elif kind in ("input_audio_buffer.speech_started", "output_audio_buffer.cleared"):
            # Barge-in: drop what we still hold and tell the server what the browser really heard.
            if self._browser_loop is not None:
                item = self._reply_item if self._reply_playing else None  # a finished reply stays whole
                self._browser_loop.call_soon_threadsafe(self._barge_in, item)
            self._reply_playing = False

    def _mark_reply_start(self) -> None:
        self._reply_start = self.to_browser.played_samples + self.to_browser.queued_samples

    def _barge_in(self, item_id: str | None) -> None:
        track = self.to_browser
        track.clear()
        if item_id is None:
            return
        heard_ms = max(0, track.played_samples - self._reply_start) * 1000 // RATE
        event = {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                 "audio_end_ms": heard_ms}
        connection = self._connection
        if connection is not None:
            self._loop_thread.loop.call_soon_threadsafe(asyncio.ensure_future, self._send_quietly(connection, event))

    async def _send_quietly(self, connection: RealtimeConnection, event: dict) -> None:
        with contextlib.suppress(RealtimeError):
            await connection.send(event)
            self.on_event("client", event, time.time())
