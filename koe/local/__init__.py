"""Koe's offline backend: OpenAI's Realtime WebRTC protocol over a local VAD → STT → LLM → TTS cascade."""

from koe.local.server import LocalServer

__all__ = ["LocalServer"]
