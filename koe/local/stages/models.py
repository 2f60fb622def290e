"""The process's models: loaded once, lazily, and shared by every session."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from koe.local.stages.assets import whisper_base_dir
from koe.local.stages.llm import ReplyModel
from koe.local.stages.stt import Transcriber
from koe.local.stages.tts import Speaker
from koe.local.stages.tts_ja import JapaneseSpeaker
from koe.local.stages.turn_model import TurnModel
from koe.local.stages.vad import CHUNK, SileroModel, VadStream

log = logging.getLogger("koe.local")

T = TypeVar("T")


@dataclass(frozen=True)
class LocalModels:
    vad: SileroModel
    stt: Transcriber
    llm: ReplyModel
    tts: Speaker
    turn: TurnModel  # semantic_vad's judge: is the utterance complete?


@dataclass(frozen=True)
class JapaneseModels:
    """Speech in and out for sessions whose transcription language is "ja"; the reply model is shared."""

    stt: Transcriber
    tts: JapaneseSpeaker


_models: LocalModels | None = None
_japanese: JapaneseModels | None = None
_lock = threading.Lock()
_japanese_lock = threading.Lock()


def _timed(what: str, load: Callable[[], T]) -> T:
    started = time.perf_counter()
    model = load()
    log.info("loaded %s in %.2f s", what, time.perf_counter() - started)
    return model


def get_models() -> LocalModels:
    """The shared models, loading them on the first call (other callers wait for it)."""
    global _models
    with _lock:
        if _models is None:
            _models = LocalModels(
                vad=_timed("silero vad", SileroModel),
                stt=_timed("whisper tiny.en", Transcriber),
                llm=_timed("smollm2-135m", ReplyModel),
                tts=_timed("piper joe", Speaker),
                turn=_timed("smart turn v3.2", TurnModel),
            )
        return _models


def get_japanese_models() -> JapaneseModels:
    """The Japanese models, loaded and run once on the first call: only Japanese sessions pay for them."""
    global _japanese
    with _japanese_lock:
        if _japanese is None:
            japanese = JapaneseModels(stt=_timed("whisper base", lambda: Transcriber(whisper_base_dir())),
                                      tts=_timed("kokoro ja", JapaneseSpeaker))
            started = time.perf_counter()
            japanese.stt.transcribe(np.zeros(8_000, np.float32), "ja")
            japanese.tts.synthesize("はい。")
            log.info("warmed the Japanese models in %.2f s", time.perf_counter() - started)
            _japanese = japanese
        return _japanese


def warm(japanese: bool = False) -> LocalModels:
    """Load the models and run each once, so the first real turn doesn't pay for lazy setup."""
    if japanese:
        get_japanese_models()
    models = get_models()
    started = time.perf_counter()
    VadStream(models.vad).probabilities(np.zeros(CHUNK, np.float32))
    models.stt.transcribe(np.zeros(8_000, np.float32))
    for _ in models.llm.stream([{"role": "user", "content": "Hi"}], max_tokens=2):
        pass
    models.tts.synthesize("Hello.")
    models.turn.is_complete(np.zeros(8_000, np.float32))
    log.info("warmed the models in %.2f s", time.perf_counter() - started)
    return models
