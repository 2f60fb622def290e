"""Japanese sessions: Whisper base joined from its part packages, Kokoro's voices, a spoken round trip."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from chat_stub import ChatStub, Reply
from koe.audio import rms_dbfs
from koe.client import Backend
from koe.client.simulated_user import SimulatedUser
from koe.local import LocalServer
from koe.local.session import JAPANESE_REPLY_NOTE
from koe.local.stages.assets import whisper_base_dir
from koe.local.stages.joined import PackageFile, joined
from koe.local.stages.models import JapaneseModels, get_japanese_models
from koe.local.stages.stt import Transcriber, _window_frames
from koe.audio import resample, to_float32
from koe.local.voices import DEFAULT_JAPANESE_VOICE, JAPANESE_VOICES, japanese_voice
from koe.protocol import SessionSettings, SettingsError, TranscriptionSettings, validate_for_dialect

QUESTION = "東京駅までの行き方を教えてください。"
ANSWER = "東京駅へは電車で行けます。今日はWebRTCのテストです。"


# -- voices and the protocol -----------------------------------------------------------------------
def test_japanese_voices_are_accepted_only_where_offered():
    assert DEFAULT_JAPANESE_VOICE in JAPANESE_VOICES and "jm_kumo" in JAPANESE_VOICES
    kumo = SessionSettings(voice="jm_kumo")
    with pytest.raises(SettingsError, match="voice"):
        validate_for_dialect(kumo, "ga")
    validate_for_dialect(kumo, "ga", extra_voices=JAPANESE_VOICES)
    validate_for_dialect(kumo.changed(model="gpt-4o-realtime-preview-2024-12-17"), "beta", JAPANESE_VOICES)
    assert japanese_voice("jm_kumo") == "jm_kumo"
    assert japanese_voice("marin") == DEFAULT_JAPANESE_VOICE


# -- joining split model files ---------------------------------------------------------------------
def part(path, data: bytes) -> PackageFile:
    path.write_bytes(data)
    return PackageFile(path, hashlib.sha256(data).hexdigest())


def test_parts_are_joined_once_verified_and_rebuilt_when_damaged(tmp_path):
    parts = [part(tmp_path / "a", b"first half "), part(tmp_path / "b", b"second half")]
    target = tmp_path / "cache" / "model.bin"
    assert joined(target, parts).read_bytes() == b"first half second half"
    built_at = target.stat().st_mtime_ns
    assert joined(target, parts).stat().st_mtime_ns == built_at  # reused, not rebuilt
    record = json.loads(target.with_name("model.bin.manifest.json").read_text())
    assert record["size"] == len(b"first half second half")

    target.write_bytes(b"first half secomd half")  # a flipped byte in the cache
    assert joined(target, parts).read_bytes() == b"first half second half"

    changed = [parts[0], part(tmp_path / "b", b"new second")]  # the package was upgraded
    assert joined(target, changed).read_bytes() == b"first half new second"

    (tmp_path / "b").write_bytes(b"tampered!!")  # the installed part no longer matches its RECORD
    target.unlink()
    with pytest.raises(RuntimeError, match="damaged"):
        joined(target, changed)
    assert not target.exists() and not list(target.parent.glob(".*tmp"))


def test_whisper_base_is_assembled_from_its_two_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("KOE_CACHE_DIR", str(tmp_path))
    folder = whisper_base_dir()
    assert folder == tmp_path / "whisper-base"
    assert {p.name for p in folder.iterdir()} >= {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}
    record = json.loads((folder / "model.bin.manifest.json").read_text())
    assert (folder / "model.bin").stat().st_size == record["size"] and len(record["parts"]) == 2
    mtime = os.stat(folder / "model.bin").st_mtime_ns
    whisper_base_dir()
    assert os.stat(folder / "model.bin").st_mtime_ns == mtime


# -- the models ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def japanese() -> JapaneseModels:
    return get_japanese_models()


def to_16k(pcm48k: np.ndarray) -> np.ndarray:
    return to_float32(resample(pcm48k, 48_000, 16_000))


def test_kokoro_speaks_48k_int16_and_mixed_text(japanese):
    pcm = japanese.tts.synthesize("今日はWebRTCのテストです")
    assert pcm.dtype == np.int16 and 1.0 < pcm.size / 48_000 < 6.0 and rms_dbfs(pcm) > -35
    kumo = japanese.tts.synthesize("こんにちは。", voice="jm_kumo")
    alpha = japanese.tts.synthesize("こんにちは。", voice="jf_alpha")
    assert kumo.size and alpha.size and not np.array_equal(kumo[:alpha.size], alpha[:kumo.size])
    for odd in ("Hello!", "100%です", "C++とJSON", "😀"):
        assert japanese.tts.synthesize(odd).dtype == np.int16  # never raises
    assert japanese.tts.synthesize("。！？").size == 0


def test_whisper_base_hears_japanese(japanese, models):
    for voice in ("mei", "jf_alpha"):
        text = models.stt.transcribe(to_16k(japanese.tts.synthesize(QUESTION, voice=voice)), "ja")
        assert "東京駅" in text and "教えて" in text, (voice, text)


def test_whisper_reads_a_window_that_fits_the_turn():
    assert _window_frames(2.0, None) is None  # the full 30 s, as Whisper was trained
    assert _window_frames(2.0, 15.0) == 1500  # a short turn: the least window
    assert _window_frames(14.3, 15.0) == 1630  # a longer one: the turn and a margin, in whole frame pairs
    assert _window_frames(29.0, 15.0) is None  # never past Whisper's own 30 s


def test_the_short_window_hears_what_the_full_one_hears(japanese, models):
    # Whisper's own 30 s window is the oracle: the shorter window must write the same words.
    full = Transcriber(whisper_base_dir(), window_s=None)
    for text in (QUESTION, "太陽系で一番大きい惑星は何ですか？"):
        audio = to_16k(japanese.tts.synthesize(text, voice="jf_alpha"))
        assert models.stt.transcribe(audio, "ja").rstrip("?？。") == full.transcribe(audio, "ja").rstrip("?？。")


def test_whisper_does_not_loop_on_a_sentence_greedy_decoding_repeats(japanese, models):
    # Greedy decoding alone wrote this question, as mei says it, as 大きい大きい大きい… up to the token budget;
    # Whisper's temperature fallback decodes a text that repeats itself again.
    asked = "太陽系で一番大きい惑星は何ですか？"
    # As server_vad hands a turn over: its 300 ms of prefix padding, the speech, the 500 ms silence window.
    audio = np.concatenate([np.zeros(4_800, np.float32), to_16k(japanese.tts.synthesize(asked, voice="mei")),
                            np.zeros(8_000, np.float32)])
    heard = models.stt.transcribe(audio, "ja")
    words = "".join(ch for ch in heard if ch.isalnum())
    assert 0 < len(words) <= 1.5 * len(asked), heard
    assert not any(words.count(words[i:i + 3]) >= 3 for i in range(len(words) - 2)), heard


def test_the_fast_japanese_voice_speaks_at_once(japanese, models):
    assert DEFAULT_JAPANESE_VOICE == "mei"
    pcm = japanese.tts.synthesize("今日の天気はどうですか？")
    assert pcm.dtype == np.int16 and 1.0 < pcm.size / 48_000 < 3.0 and rms_dbfs(pcm) > -30
    first_sound = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 1000)[0]
    assert first_sound < 48_000 * 0.05  # OpenJTalk's ~0.25 s of leading silence is gone
    assert "天気" in models.stt.transcribe(to_16k(pcm), "ja")
    assert japanese.tts.synthesize("はい", speed=1.5).size < japanese.tts.synthesize("はい").size


# -- spoken round trips over loopback WebRTC -------------------------------------------------------
def ja_settings(voice: str = "alloy") -> SessionSettings:
    # A short reply: Kokoro speaks about as fast as real time on 2 cores, and the test waits for all of it.
    return SessionSettings(instructions="日本語で、短く答えてください。", voice=voice, max_output_tokens=40,
                           transcription=TranscriptionSettings(language="ja"))


async def test_a_japanese_spoken_turn_round_trips(backend, japanese):
    async with SimulatedUser(backend, ja_settings()) as user:
        await user.say(japanese.tts.synthesize(QUESTION))
        done = await user.connection.wait_for("response.done", timeout_s=90)
        await user.connection.wait_for("output_audio_buffer.stopped", timeout_s=60)

    heard = user.of_type("conversation.item.input_audio_transcription.completed")[0].transcript
    assert "東京駅" in heard and "教えて" in heard, heard
    # The bundled model speaks little Japanese, and the session says so once.
    warnings = [e for e in user.of_type("error") if e.error.code == "local_reply_model_limited"]
    assert len(warnings) == 1 and "KOE_CHAT_BASE_URL" in warnings[0].error.message
    assert done.response["status"] == "completed"
    assert user.of_type("response.output_audio_transcript.done")[0].transcript.strip()
    stopped = user.time_of(user.of_type("input_audio_buffer.speech_stopped")[0])
    assert rms_dbfs(user.received(since=stopped)) > -40


async def test_a_japanese_turn_with_your_own_model_speaks_its_reply(models, japanese):
    stub = ChatStub(script=[Reply(ANSWER)]).start()
    server = LocalServer(port=0, models=models, chat_base_url=stub.url, chat_model="ja-model").start()
    try:
        # English instructions: the session adds that replies are short, spoken Japanese.
        user = SimulatedUser(Backend(server.url), ja_settings(voice="jm_kumo").changed(instructions="Be kind."))
        user.connection.extra_voices = JAPANESE_VOICES  # the local backend offers them
        async with user:
            await user.say(japanese.tts.synthesize(QUESTION))
            done = await user.connection.wait_for("response.done", timeout_s=90)
            await user.connection.wait_for("output_audio_buffer.stopped", timeout_s=60)
    finally:
        server.stop()
        stub.stop()

    assert done.response["status"] == "completed"
    assert user.connection.settings.voice == "jm_kumo"
    assert not [e for e in user.of_type("error")]  # no warning: a real reply model is configured
    asked = stub.requests[0].body["messages"]
    assert asked[0] == {"role": "system", "content": "Be kind.\n\n" + JAPANESE_REPLY_NOTE} and "東京駅" in asked[-1]["content"]
    assert user.of_type("response.output_audio_transcript.done")[0].transcript == ANSWER
    stopped = user.time_of(user.of_type("input_audio_buffer.speech_stopped")[0])
    spoken = models.stt.transcribe(to_16k(user.received(since=stopped)), "ja")
    assert "東京" in spoken and "電車" in spoken, spoken

