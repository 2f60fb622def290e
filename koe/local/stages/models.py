"""The process's models: loaded once, lazily, and shared by every session."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from koe.local.stages.llm import ReplyModel, reply_profile
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
    """The voices of sessions whose transcription language is "ja"; Whisper and the reply model are shared."""

    tts: JapaneseSpeaker


_models: LocalModels | None = None  # with the first reply model loaded; others share its speech models
_reply_models: dict[str, ReplyModel] = {}
_japanese: JapaneseModels | None = None
_lock = threading.Lock()
_japanese_lock = threading.Lock()


def _timed(what: str, load: Callable[[], T]) -> T:
    started = time.perf_counter()
    model = load()
    log.info("loaded %s in %.2f s", what, time.perf_counter() - started)
    return model


def get_models(reply_model: str | None = None) -> LocalModels:
    """The shared models with the reply model of profile `reply_model` (None: $KOE_REPLY_MODEL, else
    "default"), loading them on the first call (other callers wait for it); each profile loads once.

    Raises ValueError for an unknown profile.
    """
    global _models
    profile = reply_profile(reply_model)
    with _lock:
        if profile.name not in _reply_models:
            _reply_models[profile.name] = _timed(f"{profile.model} ({profile.name})", lambda: ReplyModel(profile))
        llm = _reply_models[profile.name]
        if _models is None:
            _models = LocalModels(
                vad=_timed("silero vad", SileroModel),
                stt=_timed("whisper base", Transcriber),
                llm=llm,
                tts=_timed("piper joe", Speaker),
                turn=_timed("smart turn v3.2", TurnModel),
            )
        return _models if _models.llm is llm else dataclasses.replace(_models, llm=llm)


def get_japanese_models() -> JapaneseModels:
    """The Japanese models, loaded and run once on the first call: only Japanese sessions pay for them."""
    global _japanese
    with _japanese_lock:
        if _japanese is None:
            japanese = JapaneseModels(tts=_timed("openjtalk mei", JapaneseSpeaker))
            started = time.perf_counter()
            japanese.tts.synthesize("はい。")
            log.info("warmed the Japanese models in %.2f s", time.perf_counter() - started)
            _japanese = japanese
        return _japanese


def warm(japanese: bool = False, reply_model: str | None = None) -> LocalModels:
    """Load the models (reply model: as for get_models) and run each once, so the first real turn doesn't
    pay for lazy setup."""
    if japanese:
        get_japanese_models()
    models = get_models(reply_model)
    started = time.perf_counter()
    VadStream(models.vad).probabilities(np.zeros(CHUNK, np.float32))
    models.stt.transcribe(np.zeros(8_000, np.float32))
    for _ in models.llm.stream([{"role": "user", "content": "Hi"}], max_tokens=2):
        pass
    models.tts.synthesize("Hello.")
    models.turn.probability(np.zeros(8_000, np.float32))
    log.info("warmed the models in %.2f s", time.perf_counter() - started)
    return models
