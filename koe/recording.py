"""A conversation's audio, both sides, as one Ogg/Opus file: the user on the left, the AI on the right.

The relay hands every browser frame (`user`) and every reply frame it passes to the browser
(`assistant`) as they go by, on the media loop. Those calls only copy samples and put a block onto a
bounded queue; a writer thread encodes and writes. The user's frames set the clock (the microphone
sends a frame every 20 ms while the call runs); each one takes as much reply audio as it has
samples, so both sides stay aligned without a clock of the recorder's own. What the queue cannot
hold (a stalled disk) is dropped, and the recording stops at `max_seconds`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from pathlib import Path

import av
import numpy as np

from koe.audio import RATE, frame_to_mono

__all__ = ["Recorder", "recording_path"]

log = logging.getLogger("koe.recording")

QUEUE_BLOCKS = 500  # 10 s of 20 ms blocks
MAX_HELD_REPLY_S = 2.0  # reply audio waiting for the user's clock; more means the mic stopped


def recording_path(data_dir: Path, conversation_id: str) -> Path:
    """Where a conversation's recording lives: `<data dir>/recordings/<id>.ogg`."""
    return Path(data_dir) / "recordings" / f"{conversation_id}.ogg"


class Recorder:
    """Writes `path` (Ogg/Opus, 48 kHz stereo) from frames handed to `user` and `assistant`.

    `user` and `assistant` must be called from one thread (the media loop); `close` from any.
    """

    def __init__(self, path: Path, max_seconds: float = 3600.0, bit_rate: int = 48_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._max_samples = int(max_seconds * RATE)
        self._bit_rate = bit_rate
        self._written = 0  # samples per channel handed to the writer
        self._reply = np.zeros(0, np.int16)
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(QUEUE_BLOCKS)
        self._closed = False
        self.dropped_blocks = 0
        self._thread = threading.Thread(target=self._write, name="koe-recorder", daemon=True)
        self._thread.start()

    def user(self, frame: av.AudioFrame) -> None:
        """A browser frame (any layout, 48 kHz): written with the reply audio of the same moment."""
        if self._closed or self._written >= self._max_samples:
            return
        mine = frame_to_mono(frame).astype(np.int16, copy=False)
        n = mine.size
        reply, self._reply = self._reply[:n], self._reply[n:]
        block = np.empty((n, 2), np.int16)
        block[:, 0] = mine
        block[:, 1] = 0
        block[:reply.size, 1] = reply
        self._written += n
        try:
            self._queue.put_nowait(block)
        except queue.Full:
            self.dropped_blocks += 1

    def assistant(self, frame: av.AudioFrame) -> None:
        """A reply frame as it goes to the browser."""
        if self._closed:
            return
        self._reply = np.concatenate([self._reply, frame_to_mono(frame).astype(np.int16, copy=False)])
        if self._reply.size > MAX_HELD_REPLY_S * RATE:  # nobody is taking it: keep the latest
            self._reply = self._reply[-int(MAX_HELD_REPLY_S * RATE):]

    def close(self, wait_s: float = 0.0) -> None:
        """Finish the file (idempotent, never blocks beyond `wait_s`: safe on an event loop); the
        writer writes what is queued, then the file's end."""
        self._closed = True
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if wait_s:
            self._thread.join(wait_s)

    def _blocks(self):
        """Queued blocks until close (a full queue at close time is drained too)."""
        while True:
            try:
                block = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self._closed:
                    return
                continue
            if block is None:
                return
            yield block

    def _write(self) -> None:
        try:
            with av.open(str(self.path), "w", format="ogg") as out:
                stream = out.add_stream("libopus", rate=RATE, layout="stereo")
                stream.bit_rate = self._bit_rate
                pts = 0
                for block in self._blocks():
                    frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="stereo")
                    frame.sample_rate, frame.pts = RATE, pts
                    pts += block.shape[0]
                    for packet in stream.encode(frame):
                        out.mux(packet)
                for packet in stream.encode(None):
                    out.mux(packet)
        except Exception:  # a recording must never take the call down
            log.exception("recording %s failed", self.path.name)
            self._closed = True
