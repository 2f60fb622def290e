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


TurnEvent = SpeechStarted | SilenceBegan | SpeechResumed | SpeechStopped


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
GRACE_MS = 200  # a complete utterance still gets this much silence: a breath is not the end


class SemanticVadDetector(ServerVadDetector):
    """OpenAI's semantic_vad: at each silence a turn model judges whether the utterance is complete.

    Each SilenceBegan asks for a verdict on its audio (the caller runs the model, off the event
    loop, and hands the answer to `verdict`). Complete: the turn ends once the silence has lasted
    GRACE_MS. Incomplete, or no answer yet: it waits up to the eagerness's maximum silence. Speech
    voids the verdict; the next silence asks again.
    """

    def __init__(self, eagerness: str = "auto", threshold: float = 0.5, prefix_padding_ms: int = 300,
                 clock: int = 0) -> None:
        self._complete = False  # the verdict on the current silence
        super().__init__(threshold, prefix_padding_ms, MAX_WAIT_MS[eagerness], clock)
        self.eagerness = eagerness

    def update_eagerness(self, eagerness: str) -> None:
        """Apply a new eagerness live; a turn in progress continues under it."""
        self.eagerness = eagerness
        self.update(self.threshold, self.prefix_padding_ms, MAX_WAIT_MS[eagerness])

    def reset(self) -> None:
        super().reset()
        self._complete = False

    def feed(self, chunk: np.ndarray, prob: float) -> list[TurnEvent]:
        events = super().feed(chunk, prob)
        if any(isinstance(e, (SilenceBegan, SpeechResumed)) for e in events):
            self._complete = False  # a new silence needs its own verdict
        return events

    def verdict(self, silence_ms: int, complete: bool) -> list[TurnEvent]:
        """The turn model's answer for the silence that began at `silence_ms` (SilenceBegan.audio_ms).

        Returns [SpeechStopped] when it ends the turn at once (the grace has already passed),
        else []. An answer for a silence that speech has since broken is ignored.
        """
        if self._silence_since is None or _ms(self._silence_since) != silence_ms:
            return []
        self._complete = complete
        if complete and self._silence_over(self._clock - self._silence_since):
            return [self._stop()]
        return []

    def _silence_over(self, silence: int) -> bool:
        return silence >= _samples(GRACE_MS if self._complete else self.silence_duration_ms)


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
