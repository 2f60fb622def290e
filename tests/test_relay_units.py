"""Pieces of the relay and recorder that need no peer: how much of a cut reply was heard, the
recording's two channels, and the local backend's capabilities endpoint."""

from __future__ import annotations

import av
import httpx
import numpy as np
import pytest

from koe.audio import RATE
from koe.client import Backend, count_tokens, estimate_tokens, fetch_capabilities, openai_capabilities
from koe.recording import Recorder
from koe.relay import heard_prefix, silent_like
from conftest import LOCAL_KEY


def test_heard_prefix_ends_at_a_word_and_never_passes_the_text() -> None:
    text = "Once upon a time there was a dragon."
    assert heard_prefix(text, 0, 14.0) == 0
    assert text[:heard_prefix(text, 500, 14.0)] == "Once"  # 7 characters' worth, cut back to a word
    assert heard_prefix(text, 60_000, 14.0) == len(text)
    assert heard_prefix("日本語の文です", 500, 4.0) == 2  # no spaces: characters


def _frame(samples: np.ndarray, layout: str) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout=layout)
    frame.sample_rate = RATE
    return frame


def test_silent_like_keeps_the_frame_shape() -> None:
    loud = _frame(np.full(1920, 9000, np.int16), "stereo")
    loud.pts = 960
    quiet = silent_like(loud)
    assert quiet.samples == 960 and quiet.pts == 960 and quiet.layout.name == "stereo"
    assert not quiet.to_ndarray().any()


def test_the_recording_has_the_user_left_and_the_ai_right(tmp_path) -> None:
    recorder = Recorder(tmp_path / "rec" / "c.ogg")
    tone = (np.sin(np.arange(960) / 8) * 12000).astype(np.int16)
    for i in range(150):  # 3 s of microphone; the AI speaks during the second half
        recorder.user(_frame(np.repeat(tone, 2), "stereo"))
        if i >= 75:
            recorder.assistant(_frame(tone, "mono"))
    recorder.close(wait_s=10)
    with av.open(str(tmp_path / "rec" / "c.ogg")) as container:
        audio = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    assert audio.shape[0] == 2 and abs(audio.shape[1] - 3 * RATE) < RATE // 10
    half = audio.shape[1] // 2
    rms = lambda x: float(np.sqrt((x.astype(np.float64) ** 2).mean()))  # noqa: E731
    assert rms(audio[0]) > 0.1 and rms(audio[1, :half - 4800]) < 0.01 < rms(audio[1, half + 4800:])


def test_the_local_backend_says_what_it_offers(local_server) -> None:
    found = fetch_capabilities(Backend(local_server.url, api_key=LOCAL_KEY))  # the reply model's context
    assert found is not None and found.context_tokens and found.context_tokens >= 512
    assert found.voices["en"] and "noise_reduction" in found.ignored
    assert fetch_capabilities(Backend("http://127.0.0.1:9")) is None  # nobody there: OpenAI-like, no extras
    assert estimate_tokens("word " * 400) >= 400


def test_the_local_backend_counts_tokens_with_its_reply_models_tokenizer(local_server, models) -> None:
    backend = Backend(local_server.url, api_key=LOCAL_KEY)
    found = fetch_capabilities(backend)
    assert found is not None and found.reply_model == models.llm.profile.model  # the model that answers, by name
    for text in ("Tell me everything. " * 50, "こんにちは、元気ですか。" * 20, "7 " * 300):
        assert count_tokens(backend, text) == models.llm.count_tokens(text)  # llama.cpp's own tokenizer
    assert count_tokens(backend, "7 " * 300) > 1.5 * estimate_tokens("7 " * 300)  # where the estimate falls short
    with pytest.raises(httpx.HTTPStatusError):  # the key is needed: counting loads and runs the model's tokenizer
        count_tokens(Backend(local_server.url, api_key="sk-wrong"), "hello")


def test_openai_models_are_checked_against_their_documented_context() -> None:
    assert openai_capabilities("gpt-realtime-2025-08-28").context_tokens == 32_000  # a dated snapshot: its base
    assert openai_capabilities("gpt-realtime-2.1").context_tokens == 128_000
    assert openai_capabilities("gpt-realtime-2.1").max_reply_tokens == 32_000
    assert openai_capabilities("gpt-realtime-unknown").context_tokens is None  # not read: not checked
