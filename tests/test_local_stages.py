"""The local cascade's stages: the pure logic with synthetic input, then the real models."""

from __future__ import annotations

import numpy as np
import pytest

from koe.local.stages.models import LocalModels
from koe.audio import resample, to_float32
from koe.local.stages.sentences import ClauseSplitter
from koe.local.stages.turns import (ASK_AT_MS, FALLBACK_MS, MAX_WAIT_MS, AudioBuffer, SemanticVadDetector, ServerVadDetector,
                                    SilenceBegan, SpeechResumed, SpeechStarted, SpeechStopped, TurnQuestion)
from koe.local.stages.vad import CHUNK, VadStream

QUESTION = "Please count from one to five."
CHUNK_MS = CHUNK * 1000 // 16_000  # 32


# -- sentences -------------------------------------------------------------------------------------
def stream(splitter: ClauseSplitter, text: str) -> list[tuple[int, str]]:
    """Push text a few characters at a time; (characters pushed so far, piece) for each piece out."""
    out = []
    for i in range(0, len(text), 3):
        out += [(i + 3, piece) for piece in splitter.push(text[i : i + 3])]
    return out


def test_first_clause_goes_out_early():
    text = "Well, of course, I can count for you. One, two, three."
    pieces = stream(ClauseSplitter(), text)
    first_at, first = pieces[0]
    assert first == "Well, of course,"  # "Well," alone is too short
    assert first_at <= text.index("I can") + 3  # out as soon as the space after the comma arrived
    assert [p for _, p in pieces[1:]] == ["I can count for you."]


def test_an_english_first_piece_may_end_where_a_phrase_begins():
    pieces = stream(ClauseSplitter(), "Cats are known for their playful and curious nature. They nap a lot.")
    assert [p for _, p in pieces] == ["Cats are known", "for their playful and curious nature."]
    # "of" binds to the word before it; with no phrase start or comma, the first piece ends after 8 words.
    splitter = ClauseSplitter()
    assert splitter.push("The capital of France is Paris. ") == ["The capital of France is Paris."]
    assert ClauseSplitter().push("one two three four five six seven eight nine ten") == \
        ["one two three four five six seven eight"]
    # Too few words before the phrase start ("I went | to"), or Japanese: no phrase cut.
    assert ClauseSplitter().push("I went with them to the") == []
    assert ClauseSplitter().push("東京と大阪") == []


def test_later_pieces_are_sentences_and_abbreviations_decimals_hold():
    splitter = ClauseSplitter()
    pieces = [p for _, p in stream(splitter, "Okay, here we go. Dr. Who measured 3.5 meters, e.g. the height. It fits.")]
    assert pieces == ["Okay, here we go.", "Dr. Who measured 3.5 meters, e.g. the height."]
    assert splitter.flush() == ["It fits."]
    assert splitter.flush() == []


def test_long_sentence_is_cut_at_a_clause():
    splitter = ClauseSplitter()
    splitter.push("Sure thing, friend. ")
    long_clause = " ".join(["word"] * 26) + ", and then the rest"
    assert splitter.push(long_clause + " ") == [" ".join(["word"] * 26) + ","]
    assert splitter.flush() == ["and then the rest"]


def test_japanese_stops_split():
    splitter = ClauseSplitter()
    assert splitter.push("こんにちは。元気") == ["こんにちは。"]
    assert splitter.push("ですか？") == ["元気ですか？"]


def test_newlines_end_pieces_and_flush_returns_the_rest():
    splitter = ClauseSplitter()
    assert splitter.push("Here is a list:\n- apples\n- pe") == ["Here is a list:", "- apples"]
    assert splitter.flush() == ["- pe"]


# -- turns -----------------------------------------------------------------------------------------
def chunk(value: float) -> np.ndarray:
    """A chunk whose samples all hold `value`, so audio can be traced back to where it came from."""
    return np.full(CHUNK, value, np.float32)


def feed(detector: ServerVadDetector, probs: list[float], start: int = 0) -> list:
    """Feed chunks numbered from `start` with the given probabilities; all events, in order."""
    return [e for i, p in enumerate(probs) for e in detector.feed(chunk(start + i), p)]


@pytest.fixture
def detector() -> ServerVadDetector:
    return ServerVadDetector(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500)


def test_speech_starts_at_the_first_chunk_over_threshold(detector):
    assert feed(detector, [0.1] * 10) == []
    assert feed(detector, [0.9], start=10) == [SpeechStarted(audio_start_ms=10 * CHUNK_MS)]


def test_silence_begins_resumes_and_stops_after_the_window(detector):
    feed(detector, [0.1] * 10 + [0.9] * 5)
    began = feed(detector, [0.3], start=15)
    assert len(began) == 1 and isinstance(began[0], SilenceBegan)
    assert began[0].audio_ms == 15 * CHUNK_MS
    assert feed(detector, [0.4], start=16) == []  # between the two thresholds: still a pause
    assert feed(detector, [0.9], start=17) == [SpeechResumed()]

    events = feed(detector, [0.0] * 15, start=18)  # 480 ms: not yet
    assert [type(e) for e in events] == [SilenceBegan]
    stopped = feed(detector, [0.0], start=33)  # 512 ms of silence
    assert len(stopped) == 1 and isinstance(stopped[0], SpeechStopped)
    assert stopped[0].audio_end_ms == 34 * CHUNK_MS
    assert feed(detector, [0.0] * 20, start=34) == []


def test_utterance_keeps_the_prefix_padding(detector):
    events = feed(detector, [0.1] * 10 + [0.9] * 5 + [0.0] * 16)
    audio = events[-1].audio
    prefix = 300 * 16
    assert audio.dtype == np.float32
    assert audio.size == prefix + (5 + 16) * CHUNK
    assert audio[0] == 0 and audio[prefix - 1] == 9 and audio[prefix] == 10  # 300 ms before the onset chunk
    assert audio[-1] == 30


def test_a_turn_is_cut_at_30_seconds(detector):
    events = feed(detector, [0.9] * 1000)
    stops = [e for e in events if isinstance(e, SpeechStopped)]
    assert len(stops) == 1
    assert stops[0].audio.size >= 30 * 16_000 and stops[0].audio.size < 30 * 16_000 + CHUNK
    assert sum(isinstance(e, SpeechStarted) for e in events) == 2  # speech goes on: a new turn


def test_settings_apply_live(detector):
    feed(detector, [0.1] * 10 + [0.9] * 5 + [0.0] * 3)
    detector.update(threshold=0.5, prefix_padding_ms=100, silence_duration_ms=200)
    stopped = feed(detector, [0.0] * 4, start=18)
    assert isinstance(stopped[-1], SpeechStopped)  # 7 quiet chunks = 224 ms >= 200 ms
    events = feed(detector, [0.1] * 10 + [0.9] + [0.0] * 7, start=30)
    assert events[-1].audio.size == 100 * 16 + 8 * CHUNK
    detector.update(threshold=0.95, prefix_padding_ms=100, silence_duration_ms=200)
    assert feed(detector, [0.9] * 5, start=50) == []


def test_take_and_reset_end_a_turn_quietly(detector):
    assert detector.take().size == 0
    feed(detector, [0.1] * 10 + [0.9] * 5)
    assert detector.utterance_so_far().size == 300 * 16 + 5 * CHUNK
    assert detector.take().size == 300 * 16 + 5 * CHUNK
    assert feed(detector, [0.0] * 40, start=15) == []
    feed(detector, [0.9], start=55)
    detector.reset()
    assert detector.utterance_so_far().size == 0


def silence_began(detector, speech_chunks: int = 5) -> tuple[SilenceBegan, int]:
    """A turn of `speech_chunks` loud chunks, then its first quiet chunk; (SilenceBegan, next chunk number)."""
    feed(detector, [0.1] * 10 + [0.9] * speech_chunks)
    began = feed(detector, [0.0], start=10 + speech_chunks)
    assert [type(e) for e in began] == [SilenceBegan]
    return began[0], 11 + speech_chunks


def chunks(ms: int) -> int:
    return -(-ms // CHUNK_MS)


def asked(detector, began: SilenceBegan, n: int, at_ms: int) -> tuple[TurnQuestion, int]:
    """Quiet until the silence reaches `at_ms`: the question asked there, and the next chunk number."""
    quiet = chunks(at_ms) - 1 - (n - began.audio_ms // CHUNK_MS - 1)  # the first quiet chunk came already
    assert feed(detector, [0.0] * (quiet - 1), start=n) == []
    question = feed(detector, [0.0], start=n + quiet - 1)
    assert [type(e) for e in question] == [TurnQuestion]
    assert question[0].silence_ms == began.audio_ms
    last = n + quiet - 1  # the chunk that asked: the audio runs to its end, the silence included
    assert question[0].audio[-1] == last and question[0].audio.size >= (last + 1 - began.audio_ms // CHUNK_MS) * CHUNK
    return question[0], n + quiet


def test_semantic_vad_asks_at_200_ms_of_silence_and_a_complete_answer_ends_the_turn_at_once():
    detector = SemanticVadDetector("medium")
    began, n = silence_began(detector)
    question, n = asked(detector, began, n, ASK_AT_MS[0])
    stopped = detector.verdict(question, 0.9)
    assert [type(e) for e in stopped] == [SpeechStopped]
    assert stopped[0].waited_ms == chunks(ASK_AT_MS[0]) * CHUNK_MS < 500  # sooner than server_vad's window
    assert stopped[0].audio_end_ms == began.audio_ms + stopped[0].waited_ms
    assert detector.utterance_so_far().size == 0


@pytest.mark.parametrize("eagerness, max_ms", [("high", 2000), ("medium", 4000), ("auto", 4000), ("low", 8000)])
def test_semantic_vad_sure_of_a_mid_sentence_pause_asks_again_then_waits_up_to_the_eagerness_maximum(eagerness,
                                                                                                   max_ms):
    detector = SemanticVadDetector(eagerness)
    began, n = silence_began(detector)
    question, n = asked(detector, began, n, ASK_AT_MS[0])
    assert detector.verdict(question, 0.02) == []
    question, n = asked(detector, began, n, ASK_AT_MS[1])
    assert detector.verdict(question, 0.02) == []
    quiet = chunks(max_ms) - chunks(ASK_AT_MS[1])
    assert feed(detector, [0.0] * (quiet - 1), start=n) == []
    stopped = feed(detector, [0.0], start=n + quiet - 1)
    assert [type(e) for e in stopped] == [SpeechStopped] and stopped[0].waited_ms >= max_ms


@pytest.mark.parametrize("eagerness, probability, ends_at_fallback", [
    ("high", 0.15, True), ("medium", 0.15, False), ("medium", 0.3, True), ("low", 0.45, False)])
def test_semantic_vad_unsure_ends_where_server_vad_would_by_eagerness(eagerness, probability, ends_at_fallback):
    detector = SemanticVadDetector(eagerness)
    began, n = silence_began(detector)
    question, n = asked(detector, began, n, ASK_AT_MS[0])
    assert detector.verdict(question, probability) == []
    again, n = asked(detector, began, n, ASK_AT_MS[1])  # asked again in time to answer by 500 ms
    quiet = chunks(FALLBACK_MS) - chunks(ASK_AT_MS[1])
    events = feed(detector, [0.0] * quiet, start=n)
    if ends_at_fallback:  # with no second answer yet, the first one's window holds
        assert [type(e) for e in events] == [SpeechStopped] and events[0].waited_ms == chunks(FALLBACK_MS) * CHUNK_MS
    else:  # sure enough it is mid-sentence: still listening, and the second answer rules
        assert events == []
        assert [type(e) for e in detector.verdict(again, 0.8)] == [SpeechStopped]


def test_semantic_vad_without_an_answer_waits_and_a_late_one_ends_the_turn_at_once():
    detector = SemanticVadDetector("high")
    began, n = silence_began(detector)
    first, n = asked(detector, began, n, ASK_AT_MS[0])
    second, n = asked(detector, began, n, ASK_AT_MS[1])
    assert feed(detector, [0.0] * 10, start=n) == []  # the model has not answered: no more questions
    stopped = detector.verdict(first, 0.3)  # unsure, and already past server_vad's window
    assert [type(e) for e in stopped] == [SpeechStopped] and stopped[0].waited_ms > FALLBACK_MS
    assert detector.verdict(second, 0.9) == []  # that turn is over
    assert detector.utterance_so_far().size == 0


def test_semantic_vad_ignores_an_answer_about_a_pause_the_user_broke():
    detector = SemanticVadDetector("high")
    began, n = silence_began(detector)
    question, n = asked(detector, began, n, ASK_AT_MS[0])
    assert feed(detector, [0.9], start=n) == [SpeechResumed()]
    assert detector.verdict(question, 0.99) == []  # stale: speech came back
    again = feed(detector, [0.0], start=n + 1)
    assert [type(e) for e in again] == [SilenceBegan]
    question, n = asked(detector, again[0], n + 2, ASK_AT_MS[0])
    assert [type(e) for e in detector.verdict(question, 0.99)] == [SpeechStopped]


def sounded(eagerness: str, sound: float) -> tuple[SemanticVadDetector, SilenceBegan, int]:
    """A silence whose words are being read, asked about at 200 ms and answered `sound` by the turn model (no
    turn end yet): (the detector, the silence, the next chunk number)."""
    detector = SemanticVadDetector(eagerness)
    began, n = silence_began(detector)
    detector.words_asked(began.audio_ms)
    question, n = asked(detector, began, n, ASK_AT_MS[0])
    assert detector.verdict(question, sound) == []
    return detector, began, n


@pytest.mark.parametrize("eagerness", ["high", "auto", "low"])
def test_semantic_vad_words_that_go_on_hold_a_finished_sounding_pause(eagerness):
    # A TTS voice says "I'd like to order," with a finished melody: the sound says complete, the words do not.
    detector, began, n = sounded(eagerness, 0.9)  # complete, but the words are still being read
    assert detector.words(began.audio_ms, 0.001, go_on_below=0.03) == []  # they go on
    hold = MAX_WAIT_MS[eagerness] // 2
    quiet = chunks(hold) - chunks(ASK_AT_MS[0])
    assert feed(detector, [0.0] * (quiet - 1), start=n)[1:] == []  # (the 400 ms question)
    stopped = feed(detector, [0.0], start=n + quiet - 1)
    assert [type(e) for e in stopped] == [SpeechStopped] and stopped[0].waited_ms >= hold


def test_semantic_vad_words_that_end_let_a_complete_sound_end_the_turn_and_rescue_a_flat_one():
    detector, began, n = sounded("auto", 0.9)
    assert [type(e) for e in detector.words(began.audio_ms, 0.95, go_on_below=0.03)] == [SpeechStopped]
    # A flat melody (OpenJTalk's) sounds mid-sentence; plainly ending words make it unsure: server_vad's 500 ms.
    detector, began, n = sounded("auto", 0.02)
    assert detector.words(began.audio_ms, 0.97, go_on_below=0.03) == []
    events = feed(detector, [0.0] * (chunks(FALLBACK_MS) - chunks(ASK_AT_MS[0])), start=n)
    assert [type(e) for e in events][-1] is SpeechStopped and events[-1].waited_ms == chunks(FALLBACK_MS) * CHUNK_MS


def test_semantic_vad_a_complete_sound_waits_for_late_words_up_to_the_hold():
    # Several calls keep the reply model busy: the words come late, and a fragment must still be held.
    detector, began, n = sounded("auto", 0.9)
    assert [e for e in feed(detector, [0.0] * 20, start=n) if isinstance(e, SpeechStopped)] == []  # 840 ms
    assert detector.words(began.audio_ms, 0.001, go_on_below=0.03) == []  # late, and they go on: held
    detector, began, n = sounded("auto", 0.9)
    hold = MAX_WAIT_MS["auto"] // 2
    events = feed(detector, [0.0] * (chunks(hold) - chunks(ASK_AT_MS[0])), start=n)
    assert [type(e) for e in events][-1] is SpeechStopped  # the words never came: ended at the hold
    assert detector.words(began.audio_ms, 0.9, go_on_below=0.03) == []  # stale


def test_semantic_vad_eagerness_applies_live_and_times_run_on_across_detectors():
    server = ServerVadDetector(0.5, 300, 500)
    feed(server, [0.1] * 10)
    detector = SemanticVadDetector("low", clock=server.clock)
    assert feed(detector, [0.9], start=10) == [SpeechStarted(audio_start_ms=10 * CHUNK_MS)]
    began = feed(detector, [0.0], start=11)[0]
    question = feed(detector, [0.0] * 6, start=12)[-1]  # 224 ms of quiet
    assert detector.verdict(question, 0.01) == []
    detector.update_eagerness("high")
    events = feed(detector, [0.0] * 56, start=18)  # 2 s of quiet in all
    assert [type(e) for e in events] == [TurnQuestion, SpeechStopped]  # the 400 ms question was not answered
    assert events[-1].audio_end_ms == began.audio_ms + 63 * CHUNK_MS


def test_audio_buffer_for_manual_commits():
    buffer = AudioBuffer(max_ms=1000)
    buffer.append(np.ones(8000, np.float32))
    buffer.append(np.zeros(4000, np.float32))
    assert buffer.duration_ms == 750
    assert buffer.take().size == 12_000 and buffer.duration_ms == 0
    buffer.append(np.ones(40_000, np.float32))
    assert buffer.duration_ms == 1000  # bounded: the newest audio stays
    buffer.clear()
    assert buffer.take().size == 0


# -- real models -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded(models) -> LocalModels:
    return models


@pytest.fixture(scope="module")
def question_48k(loaded) -> np.ndarray:
    return loaded.tts.synthesize(QUESTION)


@pytest.fixture(scope="module")
def question_16k(question_48k) -> np.ndarray:
    return to_float32(resample(question_48k, 48_000, 16_000))


def test_piper_speaks_48k_int16(loaded, question_48k):
    assert loaded.tts.voices() == ["joe"]
    assert question_48k.dtype == np.int16
    assert 1.0 < question_48k.size / 48_000 < 4.0
    assert np.sqrt(np.mean(question_48k.astype(np.float32) ** 2)) > 1000
    slow = loaded.tts.synthesize(QUESTION, speed=0.5)
    assert slow.size > 1.6 * question_48k.size
    assert loaded.tts.synthesize("  ").size == 0 and loaded.tts.synthesize("...!").size == 0


def test_vad_hears_speech_not_silence(loaded, question_16k):
    assert max(VadStream(loaded.vad).probabilities(question_16k)) > 0.8
    assert max(VadStream(loaded.vad).probabilities(np.zeros(16_000, np.float32))) < 0.2


def test_vad_buffers_partial_chunks(loaded, question_16k):
    whole = VadStream(loaded.vad).probabilities(question_16k)
    stream_ = VadStream(loaded.vad)
    pieces = [stream_.probabilities(question_16k[i : i + 320]) for i in range(0, question_16k.size, 320)]
    assert np.allclose([p for ps in pieces for p in ps], whole, atol=1e-5)


def test_whisper_keeps_the_words_after_a_pause(loaded):
    # "I'd like to order" (a finished melody), a second of thought, then the rest: without timestamps Whisper base
    # ended the text at the pause, and the reply answered half the turn.
    said = np.concatenate([loaded.tts.synthesize("I'd like to order"), np.zeros(48_000, np.int16),
                           loaded.tts.synthesize("a large pizza, please.")])
    turn = np.concatenate([np.zeros(4_800, np.float32), to_float32(resample(said, 48_000, 16_000)),
                           np.zeros(8_000, np.float32)])  # as server_vad hands a turn over
    text = loaded.stt.transcribe(turn).lower()
    assert "order" in text and "please" in text, text


def test_whisper_transcribes(loaded, question_16k):
    text = loaded.stt.transcribe(question_16k).lower()
    assert "count" in text and ("five" in text or "5" in text)
    assert loaded.stt.transcribe(np.zeros(0, np.float32)) == ""


def test_a_spoken_turn_through_vad_turns_and_whisper(loaded, question_16k):
    audio = np.concatenate([np.zeros(8000, np.float32), question_16k, np.zeros(16_000, np.float32)])
    vad, turns = VadStream(loaded.vad), ServerVadDetector(0.5, 300, 500)
    events = [e for c, p in vad.chunks(audio) for e in turns.feed(c, p)]
    assert isinstance(events[0], SpeechStarted) and isinstance(events[-1], SpeechStopped)
    assert 300 < events[0].audio_start_ms < 700
    text = loaded.stt.transcribe(events[-1].audio).lower()
    assert "count" in text and ("five" in text or "5" in text)


def test_llm_streams_and_stops_when_cancelled(loaded):
    chat = [{"role": "system", "content": "You are a helpful assistant. Answer briefly."},
            {"role": "user", "content": "Please count from one to five."}]
    reply = "".join(loaded.llm.stream(chat, max_tokens=40, temperature=0.0))
    assert reply.strip()

    deltas: list[str] = []
    for delta in loaded.llm.stream(chat, max_tokens=40, temperature=0.0, cancelled=lambda: len(deltas) >= 3):
        deltas.append(delta)
    assert len(deltas) == 3
    assert list(loaded.llm.stream(chat, cancelled=lambda: True)) == []  # the lock was released
    assert loaded.llm.count_tokens("Hello there") > 0


def test_llm_trims_old_history_to_fit(loaded):
    turn = "This is a rather long message that repeats itself. " * 40
    chat = [{"role": "system", "content": "Answer briefly."}]
    chat += [{"role": role, "content": turn} for _ in range(10) for role in ("user", "assistant")]
    chat.append({"role": "user", "content": "Say hi."})
    assert "".join(loaded.llm.stream(chat, max_tokens=8, temperature=0.0)).strip()


def test_the_first_piece_goes_out_without_a_boundary_after_a_few_words():
    splitter = ClauseSplitter()
    japanese = "今日はとてもいい天気なので公園に散歩に行きましょう"
    pieces = [piece for ch in japanese for piece in splitter.push(ch)]
    assert pieces == [japanese[:12]]  # each Japanese character counts as a word
    assert splitter.flush() == [japanese[12:]]
    words = "well I guess the answer you are looking up is probably right here".split()  # no comma, no phrase start
    pieces = [piece for word in words for piece in splitter.push(word + " ")]
    assert pieces == [" ".join(words[:8])]
