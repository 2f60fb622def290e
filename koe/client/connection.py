"""One Realtime call over WebRTC: an aiortc peer with one audio track each way and `oai-events`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from typing import AsyncIterator, Callable

import av
import httpx
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from pydantic import BaseModel

from koe.audio import frames
from koe.client.errors import BackendTimeout, ConnectionClosed, RealtimeError
from koe.client.jitter import hand_on_at_once
from koe.client.signaling import Backend, exchange_sdp, hang_up
from koe.protocol import (
    Dialect, ServerEvent, SessionSettings, SettingsError, dialect_for_model, new_id, parse_server_event,
    validate_for_dialect,
)

log = logging.getLogger("koe.client")

Listener = Callable[[ServerEvent], None]


class RealtimeConnection:
    """A call to a Realtime backend (OpenAI or Koe's local server): same code for both.

    `audio` is the track sent upstream (the user's voice); `on_audio` receives every frame of the
    backend's voice. The remote track is always read, even without `on_audio`: a received track
    that nobody reads keeps growing in memory.
    """

    def __init__(self, backend: Backend, settings: SessionSettings, *, audio: MediaStreamTrack | None = None,
                 on_audio: Callable[[av.AudioFrame], None] | None = None,
                 ice_servers: list[RTCIceServer] | None = None, event_queue_size: int = 4096,
                 extra_voices: Iterable[str] = (), in_order_audio: bool = False) -> None:
        self.backend = backend
        self.dialect: Dialect = dialect_for_model(settings.model)
        self.requested = settings
        self.settings: SessionSettings | None = None  # what the server confirmed last
        self.call_id: str | None = None
        self.closed = asyncio.Event()
        self.close_reason: str | None = None
        self._audio = audio
        self._on_audio = on_audio
        self._ice_servers = ice_servers or []  # never the implicit public STUN server
        self._in_order_audio = in_order_audio  # hand reply packets on at once (see koe.client.jitter)
        self.extra_voices = tuple(extra_voices)  # voices this backend offers beyond OpenAI's
        self._listeners: list[Listener] = []
        self._queues: list[asyncio.Queue[ServerEvent | None]] = []
        self._queue_size = event_queue_size
        self._pc: RTCPeerConnection | None = None
        self._channel = None
        self._reader: asyncio.Task | None = None
        self._http = httpx.AsyncClient(timeout=backend.timeout_s)

    # -- lifecycle ---------------------------------------------------------------------------
    async def connect(self, timeout_s: float = 30.0) -> "RealtimeConnection":
        """Negotiate, then wait until the server confirms the session (`session.updated`)."""
        try:
            validate_for_dialect(self.requested, self.dialect, self.extra_voices)
        except SettingsError:
            await self.close()
            raise
        try:
            await asyncio.wait_for(self._negotiate(), timeout_s)
        except asyncio.TimeoutError as exc:
            await self.close("timeout")
            raise BackendTimeout(f"the call was not established within {timeout_s:.0f} s") from exc
        except BaseException:
            await self.close("failed to connect")
            raise
        return self

    async def _negotiate(self) -> None:
        pc = self._pc = RTCPeerConnection(RTCConfiguration(iceServers=self._ice_servers))
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)
        if self._audio is not None:
            pc.addTrack(self._audio)
        else:
            pc.addTransceiver("audio", direction="sendrecv")
        if self._in_order_audio:
            for transceiver in pc.getTransceivers():
                hand_on_at_once(transceiver.receiver)
        channel = self._channel = pc.createDataChannel("oai-events")
        channel.on("message", self._on_message)
        channel.on("close", lambda: self._mark_closed("the event channel closed"))
        created = self._waiter(lambda e: e.type == "session.created")
        await pc.setLocalDescription(await pc.createOffer())
        answer = await exchange_sdp(self._http, self.backend, pc.localDescription.sdp, self.requested)
        self.call_id = answer.call_id
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
        await self._until(created)
        # The careful path of PROTOCOL.md: restate the session, live once the server confirms it.
        await self.update(self.requested)

    async def close(self, reason: str = "closed by the client") -> None:
        """Hang up: close the peer, stop the reader, release the HTTP client. Safe to call twice."""
        already = self.closed.is_set()
        self._mark_closed(reason)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._pc is not None:
            await self._pc.close()
        if self.call_id and not already:
            with contextlib.suppress(RealtimeError):
                await hang_up(self._http, self.backend, self.call_id)
        await self._http.aclose()

    async def __aenter__(self) -> "RealtimeConnection":
        return await self.connect()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- events --------------------------------------------------------------------------------
    async def send(self, event: BaseModel | dict) -> str:
        """Send one client event; returns its event_id (one is assigned when missing)."""
        data = event.model_dump(mode="json", exclude_none=True) if isinstance(event, BaseModel) else dict(event)
        data.setdefault("event_id", new_id("event"))
        if self.closed.is_set() or self._channel is None or self._channel.readyState != "open":
            raise ConnectionClosed(self.close_reason or "the event channel is not open")
        self._channel.send(json.dumps(data))
        return data["event_id"]

    async def update(self, settings: SessionSettings, only: set[str] | None = None,
                     timeout_s: float = 10.0) -> SessionSettings:
        """Apply settings with `session.update` and return what the server confirmed.

        Invalid values are refused here, before anything is sent; a server-side refusal raises
        the server's error.
        """
        validate_for_dialect(settings, self.dialect, self.extra_voices)
        session = settings.to_wire(self.dialect, only=only)
        session.pop("model", None)  # the model cannot change within a call
        event_id = new_id("event")
        done = self._waiter(lambda e: e.type == "session.updated"
                            or (e.type == "error" and getattr(e.error, "event_id", None) == event_id))
        await self.send({"type": "session.update", "event_id": event_id, "session": session})
        event = await self._until(done, timeout_s)
        if event.type == "error":
            raise RealtimeError(event.error.message, code=event.error.code, param=event.error.param)
        return self.settings

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every server event, on the event loop; returns a remover."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    async def events(self) -> AsyncIterator[ServerEvent]:
        """Every server event from now on, until the call ends."""
        queue: asyncio.Queue[ServerEvent | None] = asyncio.Queue(self._queue_size)
        self._queues.append(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._queues.remove(queue)

    async def wait_for(self, type_: str, timeout_s: float = 30.0,
                       where: Callable[[ServerEvent], bool] = lambda e: True) -> ServerEvent:
        return await self._until(self._waiter(lambda e: e.type == type_ and where(e)), timeout_s)

    def _waiter(self, match: Callable[[ServerEvent], bool]) -> asyncio.Future:
        future: asyncio.Future = asyncio.get_running_loop().create_future()

        def listener(event: ServerEvent) -> None:
            if not future.done() and match(event):
                future.set_result(event)

        remove = self.add_listener(listener)
        future.add_done_callback(lambda _: remove())
        return future

    async def _until(self, future: asyncio.Future, timeout_s: float | None = None) -> ServerEvent:
        closed = asyncio.ensure_future(self.closed.wait())
        try:
            done, _ = await asyncio.wait({future, closed}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if future in done:
            return future.result()
        future.cancel()
        if self.closed.is_set():
            raise ConnectionClosed(self.close_reason or "the call ended")
        raise BackendTimeout(f"no answer from the backend within {timeout_s:.0f} s")

    def _on_message(self, message: str | bytes) -> None:
        try:
            data = json.loads(message)
        except ValueError:
            log.warning("dropped a non-JSON message on oai-events")
            return
        event = parse_server_event(data)
        if event.type in ("session.created", "session.updated"):
            with contextlib.suppress(SettingsError):
                self.settings = SessionSettings.from_wire(self.dialect, event.session)
        elif event.type == "error" and getattr(event.error, "code", None) == "session_expired":
            self.close_reason = "the session expired"
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken listener must not break the call
                log.exception("event listener failed")
        for queue in self._queues:
            if queue.full():
                log.warning("event subscriber too slow: dropping its oldest event")
                queue.get_nowait()
            queue.put_nowait(event)

    # -- media ---------------------------------------------------------------------------------
    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._reader is None:
            self._reader = asyncio.ensure_future(self._read_audio(track))

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        async for frame in frames(track):
            if self._on_audio is not None:
                self._on_audio(frame)

    def _on_state(self) -> None:
        if self._pc is not None and self._pc.connectionState in ("failed", "closed"):
            self._mark_closed(f"the peer connection {self._pc.connectionState}")

    def _mark_closed(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = self.close_reason or reason
        self.closed.set()
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
