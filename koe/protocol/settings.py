"""One session-settings object, written out and read back in either dialect.

GA nests audio settings under `audio.input` / `audio.output` and needs `"type": "realtime"`;
beta is flat. A `None` sub-object means "off" and is written as JSON null.
"""

import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from koe.protocol.dialect import BETA_VOICES, GA_VOICES, REASONING_MODELS, Dialect, ReasoningEffort, is_reasoning_model

__all__ = [
    "AudioFormat",
    "FunctionTool",
    "McpTool",
    "SemanticVad",
    "ServerVad",
    "SessionSettings",
    "SettingsError",
    "Tool",
    "ToolChoice",
    "ToolChoiceFunction",
    "ToolChoiceMcp",
    "TranscriptionSettings",
    "TurnDetection",
    "changed_fields",
    "settings_error_from",
    "validate_for_dialect",
]


class SettingsError(ValueError):
    """A setting a person can fix: `str(e)` reads "field: what is allowed (got ...)"."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


_VAD_TAGS = {"server_vad", "semantic_vad", "function", "mcp"}  # union tags pydantic puts in the path


def settings_error_from(exc: ValidationError) -> SettingsError:
    """Turn pydantic's first error into one plain sentence."""
    err = exc.errors()[0]
    # Discriminated unions put the tag in the path; people think of "turn_detection.eagerness".
    field = ".".join(str(p) for p in err["loc"] if p not in _VAD_TAGS and not str(p).startswith("literal[")) \
        or "session"
    msg = err["msg"].removeprefix("Value error, ")
    if msg.startswith("Input should be "):
        msg = "must be " + msg.removeprefix("Input should be ")
    if err["type"] in ("missing", "union_tag_not_found"):
        return SettingsError(field + (".type" if err["type"] == "union_tag_not_found" else ""), "is required")
    if err["type"] == "union_tag_invalid":
        ctx = err["ctx"]
        return SettingsError(f"{field}.type", f"must be {ctx['expected_tags']} (got {ctx['tag']!r})")
    if err["type"] == "extra_forbidden":
        return SettingsError(field, "is not a known setting")
    return SettingsError(field, f"{msg} (got {err['input']!r})")


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TranscriptionSettings(_Settings):
    model: str = Field("whisper-1", min_length=1)
    language: str | None = None
    prompt: str = ""

    @field_validator("language")
    @classmethod
    def _iso_639_1(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z]{2}", v):
            raise ValueError("must be a two-letter ISO-639-1 code such as 'en'")
        return v


class ServerVad(_Settings):
    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(0.5, ge=0, le=1)
    prefix_padding_ms: int = Field(300, ge=0, le=5000)
    silence_duration_ms: int = Field(500, ge=0, le=10000)
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = Field(None, ge=5000, le=30000)  # GA only


class SemanticVad(_Settings):
    type: Literal["semantic_vad"] = "semantic_vad"
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    create_response: bool = True
    interrupt_response: bool = True


# None (at the use site) means manual turns: push to talk.
TurnDetection = Annotated[ServerVad | SemanticVad, Field(discriminator="type")]
_VADS: dict[str, type[_Settings]] = {"server_vad": ServerVad, "semantic_vad": SemanticVad}

class FunctionTool(_Settings):
    """A function the model may call (openai-python `RealtimeFunctionTool`): `parameters` is a JSON
    Schema object describing the arguments, which arrive as a JSON string in a `function_call` item."""

    type: Literal["function"] = "function"
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class McpTool(BaseModel):
    """A remote MCP server OpenAI calls itself (GA only; `server_label` plus `server_url`, `allowed_tools`,
    `require_approval`...): Koe passes it to OpenAI unchanged, every key kept."""

    model_config = ConfigDict(extra="allow")
    type: Literal["mcp"] = "mcp"
    server_label: str = Field(min_length=1)


Tool = Annotated[FunctionTool | McpTool, Field(discriminator="type")]


class ToolChoiceFunction(_Settings):
    type: Literal["function"] = "function"
    name: str = Field(min_length=1)


class ToolChoiceMcp(_Settings):
    type: Literal["mcp"] = "mcp"
    server_label: str = Field(min_length=1)
    name: str | None = None


# "auto" (the model decides), "none", "required", or one named function / MCP server's tool.
ToolChoice = Literal["auto", "none", "required"] | Annotated[ToolChoiceFunction | ToolChoiceMcp,
                                                             Field(discriminator="type")]
_TOOL_CHOICE_OPTIONS = ("auto", "none", "required")


# Audio on a WebSocket (WebRTC carries Opus and leaves these unset). Internally the beta names;
# GA writes them as objects: pcm16 = {"type": "audio/pcm", "rate": 24000} (24 kHz is the only rate).
AudioFormat = Literal["pcm16", "g711_ulaw", "g711_alaw"]
_GA_FORMATS: dict[str, str] = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
PCM_RATE = 24_000


def _encode_format(fmt: str, dialect: Dialect) -> Any:
    if dialect == "beta":
        return fmt
    return {"type": "audio/pcm", "rate": PCM_RATE} if fmt == "pcm16" else {"type": _GA_FORMATS[fmt]}


def _decode_format(v: Any) -> Any:
    """A GA format object as its beta name; anything else is left for validation to refuse."""
    if not isinstance(v, dict):
        return v
    name = next((k for k, t in _GA_FORMATS.items() if t == v.get("type")), v.get("type"))
    if name == "pcm16" and v.get("rate", PCM_RATE) != PCM_RATE:
        raise SettingsError("audio.format.rate", f"must be {PCM_RATE} (got {v.get('rate')!r})")
    return name


# Where each setting lives on the wire. Missing from a table = not part of that dialect.
_PATHS: dict[str, dict[str, tuple[str, ...]]] = {
    "ga": {
        "model": ("model",),
        "instructions": ("instructions",),
        "output_modalities": ("output_modalities",),
        "transcription": ("audio", "input", "transcription"),
        "noise_reduction": ("audio", "input", "noise_reduction"),
        "turn_detection": ("audio", "input", "turn_detection"),
        "voice": ("audio", "output", "voice"),
        "speed": ("audio", "output", "speed"),
        "max_output_tokens": ("max_output_tokens",),
        "reasoning_effort": ("reasoning", "effort"),
        "input_audio_format": ("audio", "input", "format"),
        "output_audio_format": ("audio", "output", "format"),
        "tools": ("tools",),
        "tool_choice": ("tool_choice",),
    },
    "beta": {
        "model": ("model",),
        "instructions": ("instructions",),
        "voice": ("voice",),
        "speed": ("speed",),
        "output_modalities": ("modalities",),
        "transcription": ("input_audio_transcription",),
        "noise_reduction": ("input_audio_noise_reduction",),
        "turn_detection": ("turn_detection",),
        "max_output_tokens": ("max_response_output_tokens",),
        "temperature": ("temperature",),
        "input_audio_format": ("input_audio_format",),
        "output_audio_format": ("output_audio_format",),
        "tools": ("tools",),
        "tool_choice": ("tool_choice",),
    },
}


class SessionSettings(_Settings):
    model: str = Field("gpt-realtime", min_length=1)
    instructions: str = ""
    voice: str = "marin"
    speed: float = Field(1.0, ge=0.25, le=1.5)
    output_modalities: Literal["audio", "text"] = "audio"  # audio = audio + transcript
    transcription: TranscriptionSettings | None = Field(default_factory=TranscriptionSettings)
    noise_reduction: Literal["near_field", "far_field"] | None = None
    turn_detection: TurnDetection | None = Field(default_factory=ServerVad)
    max_output_tokens: int | Literal["inf"] = "inf"
    temperature: float | None = Field(None, ge=0.6, le=1.2)  # beta only
    reasoning_effort: ReasoningEffort | None = None  # GA reasoning models (REASONING_MODELS) only; None: the server's default
    # WebSocket audio; None = unset (WebRTC, or the default pcm16 at 24 kHz): then left off the wire.
    input_audio_format: AudioFormat | None = None
    output_audio_format: AudioFormat | None = None
    tools: list[Tool] = Field(default_factory=list)
    tool_choice: ToolChoice = "auto"

    @model_validator(mode="before")
    @classmethod
    def _dialect_voice(cls, data: Any) -> Any:
        # The default voice is marin, which only GA has: a beta session starts with alloy.
        if isinstance(data, dict) and "voice" not in data and "realtime-preview" in str(data.get("model", "")):
            return {**data, "voice": BETA_VOICES[0]}
        return data

    @field_validator("voice")
    @classmethod
    def _voice_name(cls, v: str) -> str:
        # The dialect's list is checked by validate_for_dialect; servers may offer other voices.
        if not re.fullmatch(r"[a-z0-9_-]+", v):
            raise ValueError("must be a voice name of lowercase letters, digits, '_' or '-'")
        return v

    @field_validator("max_output_tokens", mode="before")
    @classmethod
    def _token_limit(cls, v: object) -> object:
        # One plain message instead of pydantic's one-per-union-member.
        if v == "inf" or (type(v) is int and 1 <= v <= 4096):
            return v
        raise ValueError('must be a whole number from 1 to 4096, or "inf"')

    def to_wire(self, dialect: Dialect, only: set[str] | None = None) -> dict[str, Any]:
        """The `session` object for session.update / client_secrets / calls, in `dialect`.

        `only` limits it to those fields (a partial update). `model` is written only in the full
        form (`only is None`): it cannot change mid-session.
        """
        names = set(type(self).model_fields)
        if only is not None and not only <= names:
            raise ValueError(f"unknown settings: {sorted(only - names)}")
        wanted = names if only is None else only - {"model"}
        out: dict[str, Any] = {"type": "realtime"} if dialect == "ga" else {}
        for name, path in _PATHS[dialect].items():
            if name in wanted and not (name in _UNSET_OFF_WIRE and getattr(self, name) is None):
                _put(out, path, self._encode(name, dialect))
        return out

    def _encode(self, name: str, dialect: Dialect) -> Any:
        if name == "output_modalities":
            if self.output_modalities == "text":
                return ["text"]
            return ["audio"] if dialect == "ga" else ["audio", "text"]
        if name == "transcription" and self.transcription is not None:
            # An empty prompt and an unset language are simply left out.
            return {k: v for k, v in self.transcription.model_dump().items() if v not in (None, "")}
        if name == "noise_reduction" and self.noise_reduction is not None:
            return {"type": self.noise_reduction}
        if name in ("input_audio_format", "output_audio_format"):
            return _encode_format(getattr(self, name), dialect)
        if name == "tools":
            return [tool.model_dump(mode="json", exclude_none=True) for tool in self.tools]
        if name == "tool_choice":
            return _encode_tool_choice(self.tool_choice, dialect)
        if name == "turn_detection" and self.turn_detection is not None:
            exclude = {"idle_timeout_ms"} if dialect == "beta" else set()
            return self.turn_detection.model_dump(exclude_none=True, exclude=exclude)
        return getattr(self, name)

    @classmethod
    def from_wire(cls, dialect: Dialect, session: dict[str, Any]) -> "SessionSettings":
        """Read a session.created / session.updated session; missing keys keep defaults."""
        return _build({}, _decode(dialect, session))

    def changed(self, **values: Any) -> "SessionSettings":
        """A copy with these fields changed, validated (SettingsError with a plain message)."""
        return _build(self.model_dump(), values)

    def merge_wire(self, dialect: Dialect, partial: dict[str, Any]) -> "SessionSettings":
        """Apply a session.update body: only the keys present change. Sub-objects (transcription,
        turn_detection) are replaced whole, missing sub-keys taking their defaults."""
        if dialect == "ga" and partial.get("type") != "realtime":
            raise SettingsError("type", f'is required and must be "realtime" (got {partial.get("type")!r})')
        values = _decode(dialect, partial)
        if values.get("model", self.model) != self.model:
            raise SettingsError("model", f"cannot change mid-session (got {values['model']!r})")
        return _build(self.model_dump(), values)


_UNSET_OFF_WIRE = frozenset({"temperature", "input_audio_format", "output_audio_format", "reasoning_effort"})


def _build(base: dict[str, Any], values: dict[str, Any]) -> SessionSettings:
    try:
        return SessionSettings.model_validate(base | values)
    except ValidationError as exc:
        raise settings_error_from(exc) from None


def _put(out: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        out = out.setdefault(key, {})
    out[path[-1]] = value


def _get(session: dict[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    node: Any = session
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _known(cls: type[_Settings], v: Any) -> Any:
    # Lenient reading: servers add keys and send nulls for unset values.
    if not isinstance(v, dict):
        return v
    return {k: x for k, x in v.items() if k in cls.model_fields and x is not None}


def _decode(dialect: Dialect, session: dict[str, Any]) -> dict[str, Any]:
    """SessionSettings field values for the keys present in a wire session object."""
    values: dict[str, Any] = {}
    for name, path in _PATHS[dialect].items():
        found, v = _get(session, path)
        if not found:
            continue
        if name == "output_modalities" and isinstance(v, list):
            v = "audio" if "audio" in v else "text"
        elif name == "transcription":
            v = _known(TranscriptionSettings, v)
        elif name in ("input_audio_format", "output_audio_format"):
            v = _decode_format(v)
        elif name == "noise_reduction" and isinstance(v, dict):
            v = v.get("type")
        elif name == "turn_detection" and isinstance(v, dict) and v.get("type") in _VADS:
            v = _known(_VADS[v["type"]], v)
        elif name == "tools" and isinstance(v, list):
            v = [{**_known(FunctionTool, t), "type": "function"}
                 if isinstance(t, dict) and t.get("type", "function") == "function" else t for t in v]
        elif name == "tool_choice" and dialect == "beta" and isinstance(v, str) and v not in _TOOL_CHOICE_OPTIONS:
            v = {"type": "function", "name": v}  # beta names the one function to call
        values[name] = v
    return values


def _encode_tool_choice(choice: ToolChoice, dialect: Dialect) -> Any:
    if isinstance(choice, str):
        return choice
    if dialect == "beta" and isinstance(choice, ToolChoiceFunction):
        return choice.name  # beta's tool_choice is a string: a function's name forces that function
    return choice.model_dump(mode="json", exclude_none=True)


def validate_for_dialect(settings: SessionSettings, dialect: Dialect, extra_voices: Iterable[str] = ()) -> None:
    """Check what only one dialect allows; raises SettingsError.

    `extra_voices` are voices a particular backend offers besides OpenAI's (the local backend's
    Japanese voices, for one).
    """
    voices = (*(GA_VOICES if dialect == "ga" else BETA_VOICES), *extra_voices)
    if settings.voice not in voices:
        allowed = ", ".join(voices)
        message = f"must be one of {allowed} in the {dialect} interface (got {settings.voice!r})"
        raise SettingsError("voice", message)
    if dialect == "ga" and settings.temperature is not None:
        raise SettingsError("temperature", "temperature is not part of the GA interface; leave it unset")
    if settings.reasoning_effort is not None and not is_reasoning_model(settings.model):
        raise SettingsError("reasoning_effort", f"{settings.model} does not reason: only "
                                                f"{', '.join(REASONING_MODELS)} take a reasoning effort")
    vad = settings.turn_detection
    if dialect == "beta" and isinstance(vad, ServerVad) and vad.idle_timeout_ms is not None:
        field = "turn_detection.idle_timeout_ms"
        raise SettingsError(field, "not part of the beta interface; leave it unset")
    if dialect == "beta" and (any(isinstance(t, McpTool) for t in settings.tools)
                              or isinstance(settings.tool_choice, ToolChoiceMcp)):
        raise SettingsError("tools", "MCP servers are part of the GA interface only; use function tools")


def changed_fields(old: SessionSettings, new: SessionSettings) -> set[str]:
    return {name for name in SessionSettings.model_fields if getattr(old, name) != getattr(new, name)}
