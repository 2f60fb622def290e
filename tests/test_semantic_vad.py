"""semantic_vad with the real models: the project's TTS speaks, Silero hears the silences, Smart Turn judges them.

The speech comes from Piper (English) and the Japanese TTS, never from recordings made here; the
mid-sentence pauses are the voice's own breath at a comma, widened (`with_pause`), so the words
before them keep the melody of an unfinished sentence.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import time

import numpy as np
import pytest

from koe.audio import RATE, resample, to_float32
from koe.client.simulated_user import trim_silence, with_pause
from koe.local.stages.assets import SMART_TURN_SHA256, package_dir, smart_turn_onnx_path
from koe.client.simulated_user import SimulatedUser
from koe.local.stages.models import LocalModels, get_japanese_models
from koe.protocol import SemanticVad, ServerVad, SessionSettings, TranscriptionSettings
from koe.local.stages.turn_model import TurnModel
from koe.local.stages.turns import SemanticVadDetector, ServerVadDetector, SpeechStopped, TurnQuestion
from koe.local.stages.vad import VadStream

CALLER_JA = "jf_alpha"  # a Kokoro voice
PAUSE_S = 1.0  # within the benchmark's 0.6-1.2 s, and longer than server_vad's 500 ms window


def turns(models: LocalModels, speech48k: np.ndarray, detector) -> list[SpeechStopped]:
    """Every turn end the detector finds in the speech (half a second of silence before, 3 s after).

    The turn model answers each TurnQuestion at once; in the server it answers from the executor
    some 30-60 ms later.
    """
    audio = np.concatenate([np.zeros(RATE // 2, np.int16), speech48k, np.zeros(3 * RATE, np.int16)])
    vad, stops = VadStream(models.vad), []
    for chunk, prob in vad.chunks(to_float32(resample(audio, RATE, 16_000))):
        events = detector.feed(chunk, prob)
        for event in events:
            if isinstance(event, TurnQuestion):
                events += detector.verdict(event, models.turn.probability(event.audio))
        stops += [event for event in events if isinstance(event, SpeechStopped)]
    return stops


def check_both_kinds(models: LocalModels, complete: np.ndarray, unfinished: np.ndarray) -> None:
    """A complete question ends sooner than server_vad's window; a paused sentence is not cut."""
    semantic = turns(models, complete, SemanticVadDetector("auto"))
    server = turns(models, complete, ServerVadDetector(0.5, 300, 500))
    assert len(semantic) == len(server) == 1
    assert semantic[0].waited_ms < 500 <= server[0].waited_ms
    assert semantic[0].audio_end_ms < server[0].audio_end_ms

    paused, resumes_s = with_pause(unfinished, PAUSE_S)
    assert len(turns(models, paused, ServerVadDetector(0.5, 300, 500))) == 2  # server_vad cuts the sentence
    stops = turns(models, paused, SemanticVadDetector("high"))  # even the most eager waits through the pause
    assert len(stops) == 1 and stops[0].audio_end_ms > 500 + 1000 * resumes_s


def test_the_turn_model_hears_the_silence_pipecat_shows_it(models):
    # pipecat's analyzer asks when its VAD reports the user stopped: stop_secs = 0.2 s after the voice. Asked at
    # the first quiet chunk instead (0-120 ms after the voice), the model's answers on TTS speech swing.
    speech = trim_silence(models.tts.synthesize("What is the capital of France?"))
    audio = np.concatenate([np.zeros(RATE // 2, np.int16), speech, np.zeros(RATE, np.int16)])
    detector, questions = SemanticVadDetector("low"), []
    for chunk, prob in VadStream(models.vad).chunks(to_float32(resample(audio, RATE, 16_000))):
        questions += [e for e in detector.feed(chunk, prob) if isinstance(e, TurnQuestion)]
    assert questions
    voiced = np.flatnonzero(questions[0].audio)
    silence_after_s = (questions[0].audio.size - 1 - voiced[-1]) / 16_000
    assert 0.2 <= silence_after_s <= 0.35


def test_english_complete_question_ends_sooner_and_a_paused_sentence_is_heard_out(models):
    complete = trim_silence(models.tts.synthesize("What is the capital of France?"))
    unfinished = trim_silence(models.tts.synthesize("So what I was thinking, is that we could go to the park."))
    check_both_kinds(models, complete, unfinished)


def test_japanese_complete_question_ends_sooner_and_a_paused_sentence_is_heard_out(models):
    # The caller speaks with Kokoro: OpenJTalk's HTS voice "mei" has a flat, synthetic melody that the
    # turn model hears as unfinished even on complete questions (see the README's turn detection figures).
    tts = get_japanese_models().tts
    complete = trim_silence(tts.synthesize("好きな食べ物は何ですか？", voice=CALLER_JA))
    unfinished = trim_silence(tts.synthesize("私が言いたいのは、明日は休みだということです。",
                                             voice=CALLER_JA))
    check_both_kinds(models, complete, unfinished)


@pytest.mark.parametrize("question", ["おすすめの本を教えてください。", "日本の有名な山はどこですか？"])
def test_a_complete_question_the_model_is_unsure_of_ends_no_later_than_server_vad(models, question):
    # OpenJTalk's "mei" (deterministic) reads questions with a flat melody: at 200 ms of silence the model
    # gives them under 0.5. Unsure, or sure at first and complete when asked again at 500 ms: either way the
    # turn ends where server_vad's does, not at the eagerness's 4 s.
    speech = trim_silence(get_japanese_models().tts.synthesize(question, voice="mei"))
    semantic = turns(models, speech, SemanticVadDetector("medium"))
    server = turns(models, speech, ServerVadDetector(0.5, 300, 500))
    assert len(semantic) == len(server) == 1
    assert semantic[0].waited_ms <= server[0].waited_ms


async def test_the_server_hears_a_paused_sentence_out_as_one_turn(backend, models):
    """The session's hook: Silero's silences go to the turn model in the executor, its verdict ends the turn."""
    sentence = trim_silence(models.tts.synthesize("So what I was thinking, is that we could go to the park."))
    paused, _ = with_pause(sentence, PAUSE_S)
    settings = SessionSettings(instructions="Answer in one short sentence.", voice="alloy", max_output_tokens=24,
                               turn_detection=SemanticVad(eagerness="high"),
                               transcription=TranscriptionSettings(model="whisper-1"))
    async with SimulatedUser(backend, settings) as user:
        await user.say(paused, silence_after_s=3.0)
        done = await user.connection.wait_for("response.done", timeout_s=60)
        heard = await user.seen("conversation.item.input_audio_transcription.completed")
    assert len(user.of_type("input_audio_buffer.committed")) == 1
    assert "thinking" in heard.transcript.lower() and "park" in heard.transcript.lower()
    assert done.response["status"] == "completed"


async def test_a_reply_to_words_the_user_went_on_from_is_not_started(backend, models, monkeypatch):
    """server_vad ends the turn at a long pause; the user goes on while its words are still being transcribed
    (slow here on purpose, as on a loaded machine). The API would create that reply at once and cancel it at
    the new speech_started; the local backend, whose reply waits for the words, does not start it."""
    transcribe = models.stt.transcribe

    def slow(audio, *args):
        time.sleep(1.5)
        return transcribe(audio, *args)

    monkeypatch.setattr(models.stt, "transcribe", slow)
    sentence = trim_silence(models.tts.synthesize("So what I was thinking, is that we could go to the park."))
    paused, _ = with_pause(sentence, PAUSE_S)
    settings = SessionSettings(instructions="Answer in one short sentence.", voice="alloy", max_output_tokens=16,
                               turn_detection=ServerVad(), transcription=TranscriptionSettings(model="whisper-1"))
    async with SimulatedUser(backend, settings) as user:
        await user.say(paused, silence_after_s=3.0)
        await user.connection.wait_for("response.done", timeout_s=60)
        await asyncio.sleep(0.5)
    assert len(user.of_type("input_audio_buffer.committed")) == 2  # server_vad cut the sentence
    assert len(user.of_type("response.created")) == 1  # one reply, to the whole of it


def test_features_match_the_extractor_pipecat_ships_beside_the_model(models):
    # pipecat's own numpy extractor, loaded from the wheel by path (its package __init__ needs loguru).
    path = package_dir("pipecat") / "audio" / "turn" / "smart_turn" / "_whisper_features.py"
    spec = importlib.util.spec_from_file_location("pipecat_whisper_features", path)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    rng = np.random.default_rng(7)
    for seconds in (0.4, 3.0, 9.5):  # left-padded, and cut to the last 8 s, as pipecat's analyzer does
        audio = (0.1 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)
        window = audio[-128_000:]
        expected = reference.compute_whisper_log_mel_features(np.pad(window, (128_000 - window.size, 0)))
        assert np.allclose(models.turn.features(audio)[0], expected, atol=1e-4)


def test_a_model_file_with_another_hash_is_refused(tmp_path):
    tampered = tmp_path / "smart-turn.onnx"
    shutil.copyfile(smart_turn_onnx_path(), tampered)
    with open(tampered, "r+b") as f:
        f.seek(1_000_000)
        byte = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(RuntimeError, match=SMART_TURN_SHA256):
        TurnModel(tampered)
    with pytest.raises(FileNotFoundError):
        TurnModel(tmp_path / "missing.onnx")
