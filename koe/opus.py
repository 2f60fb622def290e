"""Opus packets handed from one aiortc peer to another as they came, instead of decoded and encoded again.

aiortc's receivers always decode (in a thread of their own), and its senders encode every `av.AudioFrame`
a track gives them, in an executor, after measuring its level sample by sample in Python for the RTP
audio-level header (`aiortc.rtp.compute_audio_level_dbov`, ~0.6 ms a frame on the loop: most of what a
relayed session cost). A sender given an `av.Packet` instead only packetizes it (`OpusEncoder.pack`).

So a relay keeps each received frame's Opus payload on the frame (`keep_payloads`: the receiving side
still decodes, off the loop, for the meters, the turn figures and the recording) and sends the payload on
(`PacketOut`). Opus packets describe themselves (mode, channels, duration in their TOC byte), and every
aiortc hop negotiates the same `opus/48000/2`, so a payload from one peer is valid as it is on another;
only the RTP timing is the sender's own, restamped from the decoded frame's length.
"""

from __future__ import annotations

import fractions

import av
from aiortc import rtcrtpreceiver
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterFrame

__all__ = ["PacketOut", "keep_payloads", "payload_of"]

TIME_BASE = fractions.Fraction(1, 48_000)  # Opus's RTP clock, whatever the sampling rate inside


class _PayloadKeepingDecoder:
    """aiortc's Opus decoder, leaving on each frame (`frame.opaque`) the payload it was decoded from."""

    def __init__(self, decoder: OpusDecoder) -> None:
        self._decoder = decoder

    def decode(self, encoded_frame: JitterFrame) -> list[av.AudioFrame]:
        frames = self._decoder.decode(encoded_frame)
        if len(frames) == 1:  # one packet, one frame: the payload stands for the frame exactly
            frames[0].opaque = encoded_frame.data
        return frames


def keep_payloads() -> None:
    """From now on, every Opus frame any aiortc receiver of this process decodes carries its payload
    (`payload_of`). Idempotent. Process-wide because streamlit-webrtc owns the browser's peer: aiortc
    picks decoders through `rtcrtpreceiver.get_decoder` in the receiver's thread, with no per-receiver
    setting (the aiortc version is pinned in requirements.txt). Frames nobody forwards only hold a
    reference to bytes the receiver had anyway."""
    original = rtcrtpreceiver.get_decoder
    if getattr(original, "keeps_payloads", False):
        return

    def get_decoder(codec):
        decoder = original(codec)
        return _PayloadKeepingDecoder(decoder) if isinstance(decoder, OpusDecoder) else decoder

    get_decoder.keeps_payloads = True  # type: ignore[attr-defined]
    rtcrtpreceiver.get_decoder = get_decoder


def payload_of(frame: av.AudioFrame) -> bytes | None:
    """The Opus payload a received frame was decoded from (None: a frame made here, or a decoder that
    split a packet)."""
    payload = frame.opaque
    return payload if isinstance(payload, bytes) else None


class PacketOut:
    """What an outgoing track gives its sender in place of frames: each frame's own Opus payload as an
    `av.Packet`, and for a frame without one (made here: silence while muted, a test's frames) a packet
    encoded here, so one sender never mixes encoded frames and packets (their RTP clocks differ)."""

    def __init__(self) -> None:
        self._encoder: OpusEncoder | None = None
        self.encoded = 0  # frames that had no payload and were encoded here

    def packet(self, frame: av.AudioFrame, pts: int) -> av.Packet | None:
        """`frame` as a packet stamped `pts` (48 kHz samples); None while the encoder is still filling."""
        payload = payload_of(frame)
        if payload is None:
            if self._encoder is None:
                self._encoder = OpusEncoder()
            payloads, _ = self._encoder.encode(frame)  # ~0.13 ms for 20 ms: only for frames made here
            if not payloads:
                return None
            payload = payloads[0]
            self.encoded += 1
        packet = av.Packet(payload)
        packet.pts, packet.time_base = pts, TIME_BASE
        return packet
