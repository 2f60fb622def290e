"""Turn detection with the semantics of OpenAI's server_vad and semantic_vad, as pure logic (no I/O, no model).

Feed a detector 16 kHz float32 chunks with their VAD probabilities; it reports when a turn starts,
when it may be ending (so transcription, and for semantic_vad the turn model, can start), and when
it has ended. All times are milliseconds of audio since the first detector of the stream was
created, as in the Realtime API's events.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

RATE = 16_000
MAX_UTTERANCE_MS = 30_000  # Whisper's window; longer turns are cut into several
HYSTERESIS = 0.15  # speech ends below threshold - 0.15, as in Silero's own segmenter
MIN_SILENCE_THRESHOLD = 0.01


def _ms(samples: int) -> int:
    return samples * 1000 // RATE


def _samples(ms: int) -> int:
    return ms * RATE // 1000


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int  # start of the first chunk at or above the threshold


@dataclass(frozen=True, eq=False)
class SilenceBegan:
    """A tentative end of the turn: transcription of `audio` may start now."""

    audio_ms: int  # start of the first quiet chunk
    audio: np.ndarray = field(repr=False)  # the utterance so far, prefix padding included


@dataclass(frozen=True)
class SpeechResumed:
    """Speech came back before the silence window ran out: the tentative end is void."""


@dataclass(frozen=True, eq=False)
class SpeechStopped:
    audio_end_ms: int  # end of the silence window (or of the 30 s cap)
    audio: np.ndarray = field(repr=False)  # prefix padding + speech + trailing silence
    waited_ms: int = 0  # silence waited through before ending the turn (0 at the 30 s cap)


@dataclass(frozen=True, eq=False)
class TurnQuestion:
    """semantic_vad: is the utterance in `audio` complete? Answer with SemanticVadDetector.verdict."""

    silence_ms: int  # start of the silence it asks about (SilenceBegan.audio_ms)
    audio: np.ndarray = field(repr=False)  # prefix padding + speech + the silence so far (ASK_AT_MS)


TurnEvent = SpeechStarted | SilenceBegan | SpeechResumed | SpeechStopped | TurnQuestion


class _Clip:
    """Audio kept as a list of chunks, joined only when asked for."""

    def __init__(self) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self.samples = 0

    def append(self, chunk: np.ndarray) -> None:
        self._chunks.append(chunk)
        self.samples += chunk.size

    def keep_last(self, samples: int) -> None:
        while self._chunks and self.samples - self._chunks[0].size >= samples:
            self.samples -= self._chunks.popleft().size
        if self._chunks and self.samples > samples:
            excess = self.samples - samples
            self._chunks[0] = self._chunks[0][excess:]
            self.samples -= excess

    def audio(self) -> np.ndarray:
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)

    def clear(self) -> None:
        self._chunks.clear()
        self.samples = 0


class ServerVadDetector:
    """OpenAI's server_vad: a turn ends after `silence_duration_ms` of silence.

    `clock` carries the samples another detector of the same stream already counted, so times run
    on when the turn detection type changes mid-session.
    """

    def __init__(self, threshold: float, prefix_padding_ms: int, silence_duration_ms: int, clock: int = 0) -> None:
        self._clock = clock  # samples fed since the stream began; reset() keeps it, as the API's times run on
        self._prefix = _Clip()  # recent audio before an onset (the onset is measured 25-55 ms late)
        self._utterance = _Clip()
        self._speaking = False
        self._silence_since: int | None = None  # clock at the first quiet chunk of a pause
        self.update(threshold, prefix_padding_ms, silence_duration_ms)

    def update(self, threshold: float, prefix_padding_ms: int, silence_duration_ms: int) -> None:
        """Apply new settings live; a turn in progress continues under them."""
        self.threshold = threshold
        self.prefix_padding_ms = prefix_padding_ms
        self.silence_duration_ms = silence_duration_ms
        self._prefix.keep_last(_samples(prefix_padding_ms))

    @property
    def clock(self) -> int:
        """Samples (16 kHz) fed so far, for a detector that takes over the stream."""
        return self._clock

    def reset(self) -> None:
        """Drop the turn in progress and the padding (input_audio_buffer.clear)."""
        self._prefix.clear()
        self._utterance.clear()
        self._speaking = False
        self._silence_since = None

    def utterance_so_far(self) -> np.ndarray:
        """The turn in progress with its padding; empty between turns."""
        return self._utterance.audio() if self._speaking else np.zeros(0, np.float32)

    def take(self) -> np.ndarray:
        """The turn in progress, ending it without events (a manual commit)."""
        audio = self.utterance_so_far()
        self.reset()
        return audio

    def feed(self, chunk: np.ndarray, prob: float) -> list[TurnEvent]:
        """One chunk (512 samples at 16 kHz, float32) and its speech probability."""
        chunk = np.array(chunk, dtype=np.float32).reshape(-1)  # a copy: callers may reuse buffers
        start, self._clock = self._clock, self._clock + chunk.size
        if not self._speaking:
            return self._idle(chunk, prob, start)
        self._utterance.append(chunk)
        events: list[TurnEvent] = []
        if self._silence_since is None:
            if prob < max(self.threshold - HYSTERESIS, MIN_SILENCE_THRESHOLD):
                self._silence_since = start
                events.append(SilenceBegan(_ms(start), self._utterance.audio()))
        elif prob >= self.threshold:
            self._silence_since = None
            events.append(SpeechResumed())
        silence_over = self._silence_since is not None and self._silence_over(self._clock - self._silence_since)
        if silence_over or self._utterance.samples >= _samples(MAX_UTTERANCE_MS):
            events.append(self._stop())
        return events

    def _silence_over(self, silence: int) -> bool:
        """Whether `silence` samples of quiet end the turn."""
        return silence >= _samples(self.silence_duration_ms)

    def _stop(self) -> SpeechStopped:
        waited = 0 if self._silence_since is None else _ms(self._clock - self._silence_since)
        stopped = SpeechStopped(_ms(self._clock), self._utterance.audio(), waited)
        self.reset()
        return stopped

    def _idle(self, chunk: np.ndarray, prob: float, start: int) -> list[TurnEvent]:
        if prob < self.threshold:
            self._prefix.append(chunk)
            self._prefix.keep_last(_samples(self.prefix_padding_ms))
            return []
        self._utterance.clear()
        self._utterance.append(self._prefix.audio())
        self._utterance.append(chunk)
        self._prefix.clear()
        self._speaking = True
        return [SpeechStarted(_ms(start))]


# OpenAI: semantic_vad waits at most 8 s / 4 s / 2 s for low / medium / high eagerness; auto is medium.
MAX_WAIT_MS = {"low": 8_000, "medium": 4_000, "high": 2_000, "auto": 4_000}
# When the turn model is asked, in ms of silence. The first ask matches what pipecat's Smart Turn analyzer
# shows the model: the utterance with its VAD's stop_secs (0.2 s) of silence after it. At the silence's
# first quiet chunk (0-120 ms after the voice) the model's answers on TTS speech swing between asks
# (bench/turn_inputs.py); at 200 ms they agree with pipecat's. It is asked again where a longer silence
# makes a finished question plainer, early enough that the answer (~50 ms, more under load) is in by
# server_vad's default window.
ASK_AT_MS = (200, 400)
FALLBACK_MS = 500  # server_vad's default window: the turn's end when the model is unsure
COMPLETE = 0.5  # the model's own decision point (pipecat: complete when probability > 0.5)
# Below COMPLETE but at or above this, the model is unsure and the turn ends at FALLBACK_MS, as server_vad's
# would; below it the model is sure the speaker is mid-sentence and the turn waits up to MAX_WAIT_MS. A
# more eager setting treats more answers as unsure; `low` always waits for a complete verdict.
UNSURE_FROM = {"high": 0.1, "medium": 0.25, "auto": 0.25, "low": COMPLETE}


class SemanticVadDetector(ServerVadDetector):
    """OpenAI's semantic_vad: as the silence grows a turn model judges whether the utterance is complete,
    from its sound, and the reply model from its words.

    When a silence reaches each of ASK_AT_MS the detector emits a TurnQuestion (the caller runs the
    model, off the event loop, and hands the probability to `verdict`). The latest answer sets how long
    the silence may last: complete (> 0.5) ends the turn at once; unsure (UNSURE_FROM[eagerness] up to
    0.5) at FALLBACK_MS, like server_vad; sure it is mid-sentence, or no answer yet: the eagerness's
    maximum. Speech voids the answers; the next silence asks again.

    The words: a caller that reads the silence's transcript says so (`words_asked`) and hands over the
    probability that the words end there (`words`; the reply model's ReplyModel.words_end). A melody can
    sound finished where the words are not ("I'd like to order, …" spoken by a TTS voice), so words that
    go on hold a complete or unsure sound for half the eagerness's maximum (a thinking pause) and keep a
    mid-sentence one waiting for all of it; a complete sound waits for the words as long (when several calls
    keep the model busy they come late, but the reply would wait for that model too); words that plainly end
    (> 0.5) make a mid-sentence sound unsure, except for `low`.
    """

    def __init__(self, eagerness: str = "auto", threshold: float = 0.5, prefix_padding_ms: int = 300,
                 clock: int = 0) -> None:
        self._asked = 0  # how many of ASK_AT_MS the current silence has asked
        self._sound: float | None = None  # the turn model's latest answer about the current silence
        self._words: float | None = None  # the probability that its words end there
        self._words_below = 0.0  # under which the words go on
        self._words_pending = False  # the words are being read
        super().__init__(threshold, prefix_padding_ms, MAX_WAIT_MS[eagerness], clock)
        self.eagerness = eagerness

    def update_eagerness(self, eagerness: str) -> None:
        """Apply a new eagerness live; a turn in progress continues under it."""
        self.eagerness = eagerness
        self.update(self.threshold, self.prefix_padding_ms, MAX_WAIT_MS[eagerness])

    def reset(self) -> None:
        super().reset()
        self._new_silence()

    def _new_silence(self) -> None:
        self._asked = 0
        self._sound = self._words = None
        self._words_pending = False

    def feed(self, chunk: np.ndarray, prob: float) -> list[TurnEvent]:
        events = super().feed(chunk, prob)
        if any(isinstance(e, (SilenceBegan, SpeechResumed)) for e in events):
            self._new_silence()  # a new silence needs its own answers
        if self._silence_since is not None and self._asked < len(ASK_AT_MS) \
                and self._clock - self._silence_since >= _samples(ASK_AT_MS[self._asked]):
            self._asked += 1
            events.append(TurnQuestion(_ms(self._silence_since), self._utterance.audio()))
        return events

    def verdict(self, question: TurnQuestion, probability: float) -> list[TurnEvent]:
        """The turn model's probability (0..1) that the utterance in `question` is complete.

        Returns [SpeechStopped] when it ends the turn at once, else []. An answer about a silence that
        speech has since broken is ignored.
        """
        if not self._current(question.silence_ms):
            return []
        self._sound = probability
        return self._stop_if_over()

    def words_asked(self, silence_ms: int) -> None:
        """The words before the silence that began at `silence_ms` (SilenceBegan.audio_ms) are being read."""
        if self._current(silence_ms):
            self._words_pending = True

    def words(self, silence_ms: int, probability: float | None, go_on_below: float = 0.0) -> list[TurnEvent]:
        """The probability (0..1) that the words before that silence end there, and the figure under which
        they go on; None: no reading (no words, or it failed). Returns as `verdict` does."""
        if not self._current(silence_ms):
            return []
        self._words, self._words_below, self._words_pending = probability, go_on_below, False
        return self._stop_if_over()

    def _current(self, silence_ms: int) -> bool:
        return self._silence_since is not None and _ms(self._silence_since) == silence_ms

    def _stop_if_over(self) -> list[TurnEvent]:
        return [self._stop()] if self._silence_over(self._clock - self._silence_since) else []

    def _window_ms(self) -> int | None:
        """The silence the answers so far allow, in ms; None: the eagerness's maximum."""
        sound, words, unsure = self._sound, self._words, UNSURE_FROM[self.eagerness]
        if sound is None:
            return None
        if words is not None and words < self._words_below:  # the words go on
            return self.silence_duration_ms // 2 if sound >= unsure else None
        if sound > COMPLETE:  # the words decide; the reply needs them (and the same model) anyway
            return self.silence_duration_ms // 2 if self._words_pending else 0
        if sound >= unsure or (words is not None and words > COMPLETE and unsure < COMPLETE):
            return FALLBACK_MS
        return None

    def _silence_over(self, silence: int) -> bool:
        window = self._window_ms()
        return silence >= _samples(self.silence_duration_ms if window is None else window)


class AudioBuffer:
    """The input buffer when turn detection is off (push to talk): audio until commit or clear."""

    def __init__(self, max_ms: int = 120_000) -> None:
        # Bounded so a client that never commits can't grow memory without end; the newest audio stays.
        self._max = _samples(max_ms)
        self._clip = _Clip()

    @property
    def duration_ms(self) -> int:
        return _ms(self._clip.samples)

    def append(self, pcm16k: np.ndarray) -> None:
        self._clip.append(np.array(pcm16k, dtype=np.float32).reshape(-1))
        self._clip.keep_last(self._max)

    def take(self) -> np.ndarray:
        audio = self._clip.audio()
        self._clip.clear()
        return audio

    def clear(self) -> None:
        self._clip.clear()
