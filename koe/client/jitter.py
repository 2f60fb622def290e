"""Receive-side buffering of audio packets, in place of aiortc's fixed one.

aiortc holds four Opus frames (80 ms) back on every receive hop so it can reorder packets. A hop
whose packets arrive in order anyway (a relay's own, on one machine or a LAN) can hand each packet
on at once: an Opus packet is a whole frame.
"""

from __future__ import annotations

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtp import RtpPacket


class InOrderAudio:
    """Each audio packet as a frame the moment it arrives; a late or repeated one is dropped."""

    capacity = 16

    def __init__(self) -> None:
        self._last: int | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        if self._last is not None and not 0 < (packet.sequence_number - self._last) % 65536 < 32768:
            return False, None  # older than what was already played on
        self._last = packet.sequence_number
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]


def hand_on_at_once(receiver: RTCRtpReceiver) -> None:
    """Make an audio receiver pass packets straight to its decoder (no reordering delay).

    aiortc has no public setting for this, so it replaces the receiver's private buffer; the
    aiortc version is pinned in requirements.txt.
    """
    receiver._RTCRtpReceiver__jitter_buffer = InOrderAudio()  # noqa: SLF001
