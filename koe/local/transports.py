"""How one local session meets its client: the two transports OpenAI's Realtime API offers.

The session engine (`koe.local.session`) holds all the turn logic and talks to a `Transport`
only: it hands it server events (already named in the session's dialect) and, where the
transport plays reply audio itself, writes that audio to its `playback` track.

- WebRTC (`DataChannelTransport`): events on the `oai-events` data channel; reply audio on an
  Opus track the server paces in real time, so the server knows what was heard and sends
  `output_audio_buffer.*` events.
- WebSocket (`SocketTransport`): events as JSON text messages; reply audio travels inside
  `response.output_audio.delta` events (`playback` is None) and the client, which plays it,
  truncates with `conversation.item.truncate` on barge-in.

Client events come the other way: the transport's owner (the server) feeds each message to
`LocalSession.handle`, and WebRTC audio to `LocalSession.listen`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from koe.audio import PcmQueueTrack

log = logging.getLogger("koe.local")

REPLY_TRACK_MS = 20_000  # reply audio a WebRTC call may hold ahead of playback (TTS runs faster than real time)
SOCKET_QUEUE = 2048  # server events waiting for a slow WebSocket client; past this the client is dropped


class Transport(Protocol):
    """One client link of a session. `send` never blocks; `playback` is None when audio goes in events."""

    playback: PcmQueueTrack | None

    def send(self, event: dict[str, Any]) -> None:
        """Deliver one server event (a JSON object with `type` and `event_id`)."""
        ...


class DataChannelTransport:
    """WebRTC: events on the `oai-events` channel once the client opened it; reply audio on a track."""

    def __init__(self) -> None:
        # Encoded here: aiortc's sender would measure every frame's level in Python on the loop (koe.opus).
        self.playback: PcmQueueTrack | None = PcmQueueTrack(capacity_ms=REPLY_TRACK_MS, encode=True)
        self._channel = None

    def open(self, channel) -> None:
        """Take the client's data channel: events sent before it opened were for nobody."""
        self._channel = channel

    def send(self, event: dict[str, Any]) -> None:
        if self._channel is not None and self._channel.readyState == "open":
            self._channel.send(json.dumps(event))


class SocketTransport:
    """WebSocket: server events as text messages, written by one task so a slow client never
    blocks the session; bounded (`SOCKET_QUEUE` events), and a client that falls that far behind
    is disconnected rather than let the queue grow."""

    playback: PcmQueueTrack | None = None

    def __init__(self, websocket: WebSocket, queue_size: int = SOCKET_QUEUE) -> None:
        self.websocket = websocket
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(queue_size)
        self._writer = asyncio.ensure_future(self._write())
        self.closed = asyncio.Event()

    def send(self, event: dict[str, Any]) -> None:
        if self.closed.is_set():
            return
        try:
            self._queue.put_nowait(json.dumps(event))
        except asyncio.QueueFull:
            log.warning("WebSocket client too slow: %d events unread, disconnecting", self._queue.qsize())
            self.close()

    async def messages(self):
        """The client's text messages until it disconnects (binary messages are not part of the API)."""
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None and message.get("bytes") is not None:
                    text = message["bytes"].decode(errors="replace")
                if text is not None:
                    yield text
        except (WebSocketDisconnect, RuntimeError):  # RuntimeError: receive after the socket closed
            return

    def close(self) -> None:
        """Stop sending: what is queued still goes out, then the socket closes."""
        if not self.closed.is_set():
            self.closed.set()
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)
            if self._queue.full():  # the client is not reading: do not wait for it
                self._writer.cancel()

    async def wait_closed(self) -> None:
        """Until the writer has sent what was queued and closed the socket."""
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    async def _write(self) -> None:
        try:
            while (text := await self._queue.get()) is not None:
                await self.websocket.send_text(text)
        except Exception:  # the client went away: nothing more to send
            pass
        finally:
            self.closed.set()
            if self.websocket.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await self.websocket.close()
