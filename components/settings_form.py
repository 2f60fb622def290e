"""The sidebar: backend, model and the session settings, applied live with `session.update`."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from koe.client import Backend
from koe.presets import PRESETS
from koe.protocol import (
    BETA_MODELS, BETA_VOICES, GA_MODELS, GA_VOICES, SemanticVad, ServerVad, SessionSettings, SettingsError,
    TranscriptionSettings, dialect_for_model, validate_for_dialect,
)
from koe.local.stages.llm import PROFILES, reply_profile
from koe.local.voices import JAPANESE_VOICES
from koe.store import LOCAL_BACKEND

from components import runtime
from components.tools import tool_picker

TRANSCRIPTION_MODELS = ["whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"]
LANGUAGES = {"auto": None, "English": "en", "Japanese": "ja", "Spanish": "es", "French": "fr", "German": "de"}
TURNS = {"Server VAD": "server_vad", "Semantic VAD": "semantic_vad", "Push to talk (manual)": "manual"}


@dataclass
class Choice:
    backend: Backend
    backend_name: str  # "openai" | "local"
    settings: SessionSettings
    extra_voices: tuple[str, ...] = ()  # voices the backend has beyond OpenAI's


def model_label(model: str) -> str:
    return f"{model} (beta dialect; OpenAI retired it in May 2026)" if dialect_for_model(model) == "beta" else model


def backend_choice() -> tuple[Backend, str, str]:
    """Which backend and model; the key is read here, on the server, and stays here."""
    openai = runtime.openai_backend()
    options = ["OpenAI", "Local (offline)"] if openai else ["Local (offline)"]
    name = st.sidebar.radio("Backend", options, key="backend",
                            help="OpenAI needs OPENAI_API_KEY in the environment or .streamlit/secrets.toml.")
    model = st.sidebar.selectbox("Model", [*GA_MODELS, *BETA_MODELS], format_func=model_label, key="model")
    if openai is not None and name == "OpenAI":
        return openai, "openai", model
    reply_model = None
    if not runtime.config().backend.chat_base_url and not runtime.config().backend.local_url:
        names = list(PROFILES)
        reply_model = st.sidebar.selectbox(
            "Local reply model", names, index=names.index(reply_profile().name), key="reply_model",
            format_func=lambda n: f"{n}: {PROFILES[n].model} ({PROFILES[n].size.split(',')[0]})",
            help="Offline models answer simple questions only: for better answers use OpenAI, or set "
                 "KOE_CHAT_BASE_URL to a chat endpoint (Ollama, vLLM, llama.cpp's server).")
    return runtime.local_backend(reply_model), LOCAL_BACKEND, model


def sidebar(current: SessionSettings | None) -> Choice:
    """Draw the sidebar; returns the chosen backend and the (validated) settings to use.

    `current` is the running session's confirmed settings, or None when nothing runs.
    """
    backend, backend_name, model = backend_choice()
    dialect = dialect_for_model(model)
    base = current or SessionSettings(model=model, instructions=PRESETS["Helpful assistant"], voice="alloy")
    with st.sidebar.form("session-settings"):
        st.subheader("Session")
        preset = st.selectbox("Instructions preset", list(PRESETS), key="preset")
        instructions = st.text_area("Instructions", value=PRESETS[preset] or base.instructions, height=120,
                                    key=f"instructions-{preset}")
        extra = JAPANESE_VOICES if backend_name == LOCAL_BACKEND else ()
        voices = [*(GA_VOICES if dialect == "ga" else BETA_VOICES), *extra]
        voice = st.selectbox("Voice", voices, index=voices.index(base.voice) if base.voice in voices else 0,
                             format_func=lambda v: f"{v} (Japanese, local)" if v in extra else v,
                             help="Fixed once the assistant has spoken: a change then needs a new session.")
        # The local backend's default is semantic VAD: its turn model answers sooner and lets the user pause.
        local = backend_name == LOCAL_BACKEND
        turn = st.radio("Turn detection", list(TURNS), key="turn",
                        index=list(TURNS).index("Semantic VAD" if local else "Server VAD"),
                        format_func=lambda t: f"{t} (default here: a turn model)" if local and t == "Semantic VAD" else t)
        eagerness = st.selectbox("Semantic VAD eagerness", ["auto", "low", "medium", "high"],
                                 help="How long an unfinished-sounding pause is waited through: low 8 s, medium 4 s, "
                                      "high 2 s (auto = medium). A finished sentence ends the turn at once.")
        with st.expander("Server VAD details"):
            threshold = st.slider("VAD threshold", 0.0, 1.0, 0.5, 0.05)
            padding = st.number_input("Prefix padding (ms)", 0, 5000, 300, 50)
            silence = st.number_input("Silence duration (ms)", 0, 10000, 500, 50)
        transcription_model = st.selectbox("Transcription model", TRANSCRIPTION_MODELS)
        language = st.selectbox("Transcription language", list(LANGUAGES))
        noise = st.selectbox("Noise reduction", ["off", "near_field", "far_field"])
        speed = st.slider("Speed", 0.25, 1.5, 1.0, 0.05)
        max_tokens = st.text_input("Max output tokens (1–4096 or inf)", "inf")
        temperature = st.slider("Temperature (beta only)", 0.6, 1.2, 0.8, 0.05, disabled=dialect == "ga")
        tools = tool_picker(base)
        applied = st.form_submit_button("Apply", type="primary", width="stretch")
    try:
        kind = TURNS[turn]
        turn_detection = (None if kind == "manual" else
                          ServerVad(threshold=threshold, prefix_padding_ms=int(padding), silence_duration_ms=int(silence))
                          if kind == "server_vad" else SemanticVad(eagerness=eagerness))
        tokens = "inf" if max_tokens.strip().lower() == "inf" else _int(max_tokens, "max output tokens")
        settings = base.changed(
            model=base.model if current else model, instructions=instructions, voice=voice, speed=speed,
            turn_detection=turn_detection, max_output_tokens=tokens,
            transcription=TranscriptionSettings(model=transcription_model, language=LANGUAGES[language]),
            noise_reduction=None if noise == "off" else noise,
            temperature=temperature if dialect == "beta" else None, tools=tools)
        validate_for_dialect(settings, dialect, extra)
    except SettingsError as exc:
        st.sidebar.error(f"Not applied: {exc}")
        settings = base
    st.session_state["settings_applied"] = applied
    if backend_name == LOCAL_BACKEND and settings.transcription and settings.transcription.language == "ja" \
            and not runtime.config().backend.chat_base_url and not runtime.config().backend.local_url \
            and not reply_profile(st.session_state.get("reply_model")).japanese:
        st.sidebar.warning("Japanese: you are heard in Japanese and answered in a Japanese voice, but this "
                           "reply model speaks little Japanese. Pick the default reply model, or set KOE_CHAT_BASE_URL "
                           "(and KOE_CHAT_MODEL) to a chat endpoint such as Ollama or vLLM.")
    return Choice(backend, backend_name, settings, tuple(extra))


def _int(text: str, field: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise SettingsError(field.replace(" ", "_"), f"must be a whole number or inf (got {text!r})") from None
