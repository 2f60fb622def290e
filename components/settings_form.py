"""The sidebar: backend, model and the session settings, applied live with `session.update`.

Each setting is checked on its own: one bad value is named and refused, the others still apply.
The sidebar knows its backend: with the local one it offers that backend's real voices, says which
options it ignores, and refuses instructions longer than its reply model's context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from koe.client import Backend, Capabilities, estimate_tokens, openai_capabilities
from koe.presets import PRESETS
from koe.protocol import (
    BETA_MODELS, BETA_VOICES, GA_MODELS, GA_VOICES, REASONING_EFFORTS, SemanticVad, ServerVad, SessionSettings,
    SettingsError,
    TranscriptionSettings, dialect_for_model, is_reasoning_model, validate_for_dialect,
)
from koe.local.stages.llm import PROFILES, reply_profile
from koe.store import LOCAL_BACKEND

from components import runtime
from components.tools import tool_picker

TRANSCRIPTION_MODELS = ["whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"]
LANGUAGES = {"auto": None, "English": "en", "Japanese": "ja", "Spanish": "es", "French": "fr", "German": "de"}
TURNS = {"Server VAD": "server_vad", "Semantic VAD": "semantic_vad", "Push to talk (manual)": "manual"}
DEFAULT_PRESET = "Helpful assistant"
TURN_ROOM_TOKENS = 256  # what a reply needs besides the instructions: the user's words, at least
LABELS = {"instructions": "instructions", "voice": "voice", "speed": "speed", "turn_detection": "turn detection",
          "max_output_tokens": "max output tokens", "transcription": "transcription",
          "noise_reduction": "noise reduction", "temperature": "temperature", "reasoning_effort": "reasoning effort",
          "reasoning": "reasoning effort"}


@dataclass
class Choice:
    backend: Backend
    backend_name: str  # "openai" | "local"
    settings: SessionSettings  # every valid value of the form (refused ones keep their previous value)
    extra_voices: tuple[str, ...] = ()  # voices the backend has beyond OpenAI's
    refused: dict[str, str] = field(default_factory=dict)  # setting → why it was refused, in words
    capabilities: Capabilities | None = None  # the local backend's own description; for OpenAI its model page's


def model_label(model: str) -> str:
    return f"{model} (beta dialect; OpenAI retired it in May 2026)" if dialect_for_model(model) == "beta" else model


def backend_choice() -> tuple[Backend, str, str]:
    """Which backend and model; the key is read here, on the server, and stays here."""
    openai = runtime.openai_backend()
    options = ["OpenAI", "Local (offline)"] if openai else ["Local (offline)"]
    name = st.sidebar.radio("Backend", options, key="backend",
                            help="OpenAI needs OPENAI_API_KEY in the environment or .streamlit/secrets.toml.")
    if openai is not None and name == "OpenAI":
        model = st.sidebar.selectbox("Model", [*GA_MODELS, *BETA_MODELS], format_func=model_label, key="model")
        return openai, "openai", model
    st.sidebar.caption("Koe's own offline backend: Whisper hears you, a small local model answers, Piper speaks.")
    reply_model = None
    if not runtime.config().backend.chat_base_url and not runtime.config().backend.local_url:
        names = list(PROFILES)
        reply_model = st.sidebar.selectbox(
            "Local reply model", names, index=names.index(reply_profile().name), key="reply_model",
            format_func=lambda n: f"{n}: {PROFILES[n].model} ({PROFILES[n].size.split(',')[0]})",
            help="Offline models answer simple questions only: for better answers use OpenAI, or set "
                 "KOE_CHAT_BASE_URL to a chat endpoint (Ollama, vLLM, llama.cpp's server).")
    return runtime.local_backend(reply_model), LOCAL_BACKEND, GA_MODELS[0]


PRESET_PENDING = "koe_preset_pending"  # session state: (the box's text before the preset, the preset's text)


def _preset_chosen() -> None:
    """A preset fills the instructions box at once (before Apply), so Apply sends what the box shows."""
    text = PRESETS[st.session_state["preset"]]
    if text:  # "Custom" keeps what the box holds
        st.session_state[PRESET_PENDING] = (st.session_state.get("instructions"), text)
        st.session_state["instructions"] = text


def _preset_not_yet_shown() -> None:
    """An Apply pressed before the preset's rerun reached the browser submits the box's old text: the preset
    stands (the box had not been edited since; an edited box is what Apply sends)."""
    pending = st.session_state.get(PRESET_PENDING)
    if pending is not None and st.session_state.get("instructions") == pending[0]:
        st.session_state["instructions"] = pending[1]


def instructions_refusal(text: str, capabilities: Capabilities | None, tokens: int | None = None) -> str | None:
    """Why `text` cannot be the instructions of this backend (too long for its model's context), or None.
    `tokens`: the text's tokens as the backend counts them; None to estimate them."""
    if capabilities is None or not capabilities.context_tokens:
        return None
    context = capabilities.context_tokens
    room = context - (capabilities.max_reply_tokens or 0) - TURN_ROOM_TOKENS
    need = estimate_tokens(text) if tokens is None else tokens
    if need <= room:
        return None
    model = capabilities.reply_model or "the reply model"
    return (f"too long for {model}: {'about ' if tokens is None else ''}{need:,} tokens ({len(text.split()):,} words), "
            f"but its context holds {context:,} tokens in all, so instructions may take about {max(room, 0):,} tokens "
            f"(roughly {max(room, 0) * 3 // 4:,} words) and leave room for your words and the reply. Shorten them.")


def _voices(backend_name: str, dialect: str, capabilities: Capabilities | None) -> tuple[list[str], dict[str, str]]:
    """The voices to offer and their labels."""
    if backend_name == LOCAL_BACKEND and capabilities is not None and capabilities.voices:
        labels = {v: f"{v} (English)" for v in capabilities.voices.get("en", [])}
        labels |= {v: f"{v} (Japanese sessions)" for v in capabilities.voices.get("ja", [])}
        return list(labels), labels
    voices = list(GA_VOICES if dialect == "ga" else BETA_VOICES)
    return voices, {v: v for v in voices}


def sidebar(current: SessionSettings | None, last: SessionSettings | None = None) -> Choice:
    """Draw the sidebar; returns the chosen backend and the settings to use.

    `current` is the running session's confirmed settings, or None when nothing runs; `last` the settings
    of this browser's previous session, which the widgets start from when nothing runs (so a STOP, an idle
    end or a visit to another page keeps the voice and turn detection chosen).
    """
    backend, backend_name, model = backend_choice()
    dialect = dialect_for_model(model)
    capabilities = runtime.capabilities(backend) if backend_name == LOCAL_BACKEND else openai_capabilities(model)
    remembered = last if last is not None and last.model == model else None
    base = current or remembered or SessionSettings(model=model, instructions=PRESETS[DEFAULT_PRESET], voice="alloy")
    voices, voice_labels = _voices(backend_name, dialect, capabilities)
    extra = tuple(v for v in voices if v not in GA_VOICES)
    st.session_state.setdefault("instructions", base.instructions)
    st.sidebar.subheader("Session")
    # The local backend's default is semantic VAD: its turn model answers sooner and lets the user pause.
    local = backend_name == LOCAL_BACKEND
    kind = (current or remembered).turn_detection if (current or remembered) else None
    default_kind = ("manual" if kind is None else kind.type) if (current or remembered) \
        else "semantic_vad" if local else "server_vad"
    turn = st.sidebar.radio("Turn detection", list(TURNS), key="turn",
                            index=list(TURNS.values()).index(default_kind),
                            format_func=lambda t: f"{t} (default here: a turn model)"
                            if local and t == "Semantic VAD" else t,
                            help="Push to talk: hold the Talk button (or the space bar) while you speak. "
                                 "Like every setting here, a change applies when you press Apply.")
    kind = TURNS[turn]
    st.sidebar.selectbox("Instructions preset", list(PRESETS), key="preset", on_change=_preset_chosen,
                         index=list(PRESETS).index(DEFAULT_PRESET))
    ignored = set(capabilities.ignored) if capabilities else set()
    tools = tool_picker(base)
    _preset_not_yet_shown()
    with st.sidebar.form("session-settings"):
        instructions = st.text_area("Instructions", height=120, key="instructions")
        voice = st.selectbox("Voice", voices, index=voices.index(base.voice) if base.voice in voices else 0,
                             format_func=voice_labels.get,
                             help="Fixed once the assistant has spoken: a change then starts a new session.")
        # Only the chosen turn detection's own controls (the radio is outside the form, so a change redraws them).
        vad = base.turn_detection
        eagerness, threshold, padding, silence = "auto", 0.5, 300, 500
        if kind == "semantic_vad":
            efforts = ["auto", "low", "medium", "high"]
            eagerness = st.selectbox("Semantic VAD eagerness", efforts,
                                     index=efforts.index(vad.eagerness) if isinstance(vad, SemanticVad) else 0,
                                     help="How long an unfinished-sounding pause is waited through: low 8 s, medium "
                                          "4 s, high 2 s (auto = medium). A finished sentence ends the turn at once.")
        elif kind == "server_vad":
            if isinstance(vad, ServerVad):
                threshold, padding, silence = vad.threshold, vad.prefix_padding_ms, vad.silence_duration_ms
            with st.expander("Server VAD details"):
                threshold = st.slider("VAD threshold", 0.0, 1.0, threshold, 0.05)
                padding = st.number_input("Prefix padding (ms)", 0, 5000, padding, 50)
                silence = st.number_input("Silence duration (ms)", 0, 10000, silence, 50)
        transcription_model = st.selectbox("Transcription model", TRANSCRIPTION_MODELS,
                                           disabled="transcription.model" in ignored,
                                           help="The local backend always transcribes with Whisper."
                                           if "transcription.model" in ignored else None)
        language = st.selectbox("Transcription language", list(LANGUAGES))
        noise = st.selectbox("Noise reduction", ["off", "near_field", "far_field"],
                             disabled="noise_reduction" in ignored,
                             help="The local backend has no noise reduction." if "noise_reduction" in ignored else None)
        speed = st.slider("Speed", 0.25, 1.5, 1.0, 0.05)
        max_tokens = st.text_input("Max output tokens (1–4096 or inf)", "inf")
        temperature = st.slider("Temperature (beta only)", 0.6, 1.2, 0.8, 0.05,
                                disabled=dialect == "ga" or "temperature" in ignored)
        effort = None
        if backend_name != LOCAL_BACKEND and is_reasoning_model(model):
            effort = st.selectbox("Reasoning effort", [None, *REASONING_EFFORTS], key="reasoning_effort",
                                  format_func=lambda e: "server default (low)" if e is None else e,
                                  help="How long the model reasons before it answers: more effort, slower replies.")
        if ignored:
            st.caption("The local backend does not use: "
                       + ", ".join(sorted(LABELS.get(i.split(".")[0], i) + (" model" if i.endswith(".model") else "")
                                          + (" prompt" if i.endswith(".prompt") else "") for i in ignored)) + ".")
        applied = st.form_submit_button("Apply", type="primary", width="stretch")
        # A form sends nothing until submitted: say so, or a change left unapplied looks applied.
        st.caption("Changes take effect when you press Apply: at once during a call, else at the next START.")
    values: dict[str, Any] = {
        "instructions": instructions, "voice": voice, "speed": speed,
        "turn_detection": None if kind == "manual" else
        ServerVad(threshold=threshold, prefix_padding_ms=int(padding), silence_duration_ms=int(silence))
        if kind == "server_vad" else SemanticVad(eagerness=eagerness),
        "max_output_tokens": max_tokens.strip().lower() if max_tokens.strip().lower() == "inf" else max_tokens,
        "transcription": TranscriptionSettings(model=transcription_model, language=LANGUAGES[language]),
        "noise_reduction": None if noise == "off" or "noise_reduction" in ignored else noise,
        "temperature": temperature if dialect == "beta" else None,
        "reasoning_effort": effort,
        "tools": tools,
    }
    settings = base.changed(model=base.model if current else model)
    refused: dict[str, str] = {}
    for name, value in values.items():  # each on its own: one bad value does not drop the others
        try:
            if name == "max_output_tokens" and value != "inf":
                value = _int(value, name)
            japanese_only = capabilities.voices.get("ja", []) if local and capabilities is not None else []
            if name == "voice" and value != settings.voice and value in japanese_only \
                    and LANGUAGES[language] != "ja":
                # Otherwise it would be accepted and joe would go on speaking: a change nobody can hear.
                raise SettingsError(name, f"{value} speaks in Japanese sessions only: choose Transcription "
                                          "language Japanese with it (English is spoken by joe)")
            if name == "transcription" and settings.voice in japanese_only and value.language != "ja":
                raise SettingsError(name, f"the voice {settings.voice} speaks in Japanese sessions only: choose "
                                          "an English voice with another language")
            if name == "instructions" and (why := instructions_refusal(value, capabilities, tokens=(
                    runtime.token_count(backend, value) if backend_name == LOCAL_BACKEND else None))):
                raise SettingsError(name, why)
            candidate = settings.changed(**{name: value})
            validate_for_dialect(candidate, dialect, extra)
            settings = candidate
        except SettingsError as exc:
            refused[name] = exc.message
    st.session_state["settings_applied"] = applied
    if applied:
        st.session_state.pop(PRESET_PENDING, None)
    if backend_name == LOCAL_BACKEND and settings.transcription and settings.transcription.language == "ja" \
            and not runtime.config().backend.chat_base_url and not runtime.config().backend.local_url \
            and not reply_profile(st.session_state.get("reply_model")).japanese:
        st.sidebar.warning("Japanese: you are heard in Japanese and answered in a Japanese voice, but this "
                           "reply model speaks little Japanese. Pick the default reply model, or set KOE_CHAT_BASE_URL "
                           "(and KOE_CHAT_MODEL) to a chat endpoint such as Ollama or vLLM.")
    return Choice(backend, backend_name, settings, extra, refused, capabilities)


def _int(text: str, name: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise SettingsError(name, f"must be a whole number from 1 to 4096, or inf (got {text!r})") from None
