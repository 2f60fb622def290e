"""Whether an SDP offer is one the local server can serve, said in words when it is not.

A Realtime call is one audio m-line each way (Opus, or G.711 PCMU/PCMA) and, optionally, one data
channel (`oai-events`). aiortc would try to answer anything it can parse, an offer with fifty audio
m-lines included, so the server checks the shape before it builds a peer.
"""

from __future__ import annotations

from aiortc.sdp import SessionDescription

__all__ = ["AUDIO_CODECS", "MAX_SDP_CHARS", "OfferError", "check_offer"]

AUDIO_CODECS = ("opus", "pcmu", "pcma")
MAX_SDP_CHARS = 64 * 1024  # a real audio + data channel offer is 2–6 KB


class OfferError(ValueError):
    """An offer the server refuses; `str(e)` says what is wrong with it."""


def check_offer(sdp: str) -> None:
    """Raise OfferError unless `sdp` is an offer of exactly one audio m-line with a codec this
    server speaks, and at most one data channel m-line (SCTP), nothing else."""
    if len(sdp) > MAX_SDP_CHARS:
        raise OfferError(f"The SDP offer is {len(sdp)} characters long; at most {MAX_SDP_CHARS} are accepted.")
    if not sdp.startswith("v=0"):
        raise OfferError("The body must be an SDP offer (it starts with 'v=0').")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises ValueError, KeyError, IndexError... on bad lines
        raise OfferError(f"The SDP offer could not be parsed ({type(exc).__name__}: {exc}).") from None
    kinds = [media.kind for media in parsed.media]
    audio = [media for media in parsed.media if media.kind == "audio"]
    other = sorted({kind for kind in kinds if kind not in ("audio", "application")})
    if len(audio) != 1:
        raise OfferError(f"The SDP offer has {len(audio)} audio m-lines; a Realtime call carries exactly one.")
    if kinds.count("application") > 1:
        raise OfferError(f"The SDP offer has {kinds.count('application')} data channel m-lines; at most one is used.")
    if other:
        raise OfferError(f"The SDP offer has {', '.join(other)} m-lines; a Realtime call carries audio only.")
    codecs = [codec.mimeType.split("/")[-1].lower() for codec in audio[0].rtp.codecs]
    if not any(codec in AUDIO_CODECS for codec in codecs):
        offered = ", ".join(sorted(set(codecs))) or "none"
        raise OfferError(f"The SDP offer's audio m-line has no codec this server speaks (Opus, PCMU or PCMA); "
                         f"it offers: {offered}.")
    for media in parsed.media:
        if media.kind == "application" and media.sctp_port is None and not media.sctpmap:
            raise OfferError("The SDP offer's application m-line is not an SCTP data channel.")
