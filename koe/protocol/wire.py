"""What a client may send inside events and request bodies, per dialect, as OpenAI defines it.

The shapes follow OpenAI's API reference and openai-python's request types
(`types/realtime/*_param.py` for GA, `types/beta/realtime/*_param.py` for beta). They are strict
where OpenAI is strict: an unknown key is refused (`extra="forbid"`), nothing is coerced
(`strict=True`: `"5"` is not a number), ranges are checked. Keys OpenAI accepts but Koe's local
backend does not act on (tools, audio formats, tracing...) are accepted, so a client that works
against OpenAI works here. An optional key is `None` when absent; a JSON `null` is refused unless
the type says `| None` (null means "off" there).

`wire_error()` words pydantic's first error the way OpenAI's `error` events and HTTP errors do.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from koe.protocol.settings import SemanticVad, ServerVad, Speed, Temperature, TokenLimit, TranscriptionSettings

__all__ = [
    "MAX_JSON_DEPTH",
    "BetaItem",
    "BetaResponseParams",
    "BetaSession",
    "BetaSessionRequest",
    "ClientSecretRequest",
    "GaItem",
    "GaResponseParams",
    "GaSession",
    "WireError",
    "check_depth",
    "json_depth",
    "loads_object",
    "wire_error",
]

MAX_JSON_DEPTH = 32  # deeper than any request OpenAI defines (tool schemas included)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


ItemId = Annotated[str, Field(min_length=1, max_length=32)]  # OpenAI's limit on client-chosen ids
ItemStatus = Literal["completed", "incomplete", "in_progress"]
Metadata = Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)]
Modalities = Annotated[list[Literal["text", "audio"]], Field(min_length=1, max_length=2)]


# ---- audio ---------------------------------------------------------------------------------------

class AudioPcm(_Wire):
    type: Literal["audio/pcm"]
    rate: Literal[24000] = None


class AudioPcmu(_Wire):
    type: Literal["audio/pcmu"]


class AudioPcma(_Wire):
    type: Literal["audio/pcma"]


AudioFormat = Annotated[AudioPcm | AudioPcmu | AudioPcma, Field(discriminator="type")]
BetaAudioFormat = Literal["pcm16", "g711_ulaw", "g711_alaw"]


class NoiseReduction(_Wire):
    type: Literal["near_field", "far_field"] = None
    strength: float = None  # GA; the local backend's denoiser has no strength to set


class _StrictServerVad(ServerVad):
    model_config = ConfigDict(strict=True)


class _StrictSemanticVad(SemanticVad):
    model_config = ConfigDict(strict=True)


TurnDetection = Annotated[_StrictServerVad | _StrictSemanticVad, Field(discriminator="type")]


class BetaTurnDetection(_Wire):
    """Beta's one flat shape for both kinds; the settings keep what the kind uses (ranges checked there)."""

    type: Literal["server_vad", "semantic_vad"] = None
    create_response: bool = None
    interrupt_response: bool = None
    eagerness: Literal["low", "medium", "high", "auto"] = None
    prefix_padding_ms: int = None
    silence_duration_ms: int = None
    threshold: float = None


class BetaTranscription(TranscriptionSettings):
    model_config = ConfigDict(strict=True)


class GaTranscription(BetaTranscription):
    delay: Literal["minimal", "low", "medium", "high", "xhigh"] = None
    keywords: list[str] = None
    languages: list[str] = None


class VoiceId(_Wire):
    id: str


Voice = str | VoiceId


# ---- tools ---------------------------------------------------------------------------------------

class FunctionTool(_Wire):
    type: Literal["function"] = None
    name: str = None
    description: str = None
    parameters: dict[str, Any] = None


class McpTool(_Wire):
    type: Literal["mcp"]
    server_label: str
    allowed_callers: list[Literal["direct", "programmatic"]] | None = None
    allowed_tools: list[str] | dict[str, Any] | None = None
    authorization: str = None
    connector_id: str = None
    defer_loading: bool = None
    headers: dict[str, str] | None = None
    require_approval: Literal["always", "never"] | dict[str, Any] | None = None
    server_description: str = None
    server_url: str = None
    tunnel_id: str = None


Tool = FunctionTool | McpTool
ToolChoice = str | dict[str, Any]  # "auto" | "none" | "required" | {"type": "function", "name"} | {"type": "mcp", ...}


class TracingConfig(_Wire):
    group_id: str = None
    metadata: dict[str, Any] = None
    workflow_name: str = None


class RetentionRatio(_Wire):
    type: Literal["retention_ratio"]
    retention_ratio: Annotated[float, Field(ge=0, le=1)]
    token_limits: dict[str, Any] = None


# ---- conversation items (GA) ---------------------------------------------------------------------

class _Item(_Wire):
    id: ItemId = None
    object: Literal["realtime.item"] = None
    status: ItemStatus = None


class SystemText(_Wire):
    type: Literal["input_text"] = None
    text: str = None


class UserContent(_Wire):
    type: Literal["input_text", "input_audio", "input_image"] = None
    text: str = None
    audio: str = None
    transcript: str = None
    image_url: str = None
    detail: Literal["auto", "low", "high"] = None


class AssistantContent(_Wire):
    type: Literal["output_text", "output_audio"] = None
    text: str = None
    audio: str = None
    transcript: str = None


class SystemMessage(_Item):
    type: Literal["message"]
    role: Literal["system"]
    content: list[SystemText]


class UserMessage(_Item):
    type: Literal["message"]
    role: Literal["user"]
    content: list[UserContent]


class AssistantMessage(_Item):
    type: Literal["message"]
    role: Literal["assistant"]
    content: list[AssistantContent]


class FunctionCall(_Item):
    type: Literal["function_call"]
    name: str
    arguments: str
    call_id: str = None


class FunctionCallOutput(_Item):
    type: Literal["function_call_output"]
    call_id: str
    output: str


class McpApprovalResponse(_Item):
    type: Literal["mcp_approval_response"]
    id: ItemId
    approval_request_id: str
    approve: bool
    reason: str | None = None


class McpApprovalRequest(_Item):
    type: Literal["mcp_approval_request"]
    id: ItemId
    arguments: str
    name: str
    server_label: str


class McpListTools(_Item):
    type: Literal["mcp_list_tools"]
    server_label: str
    tools: list[dict[str, Any]]


class McpCall(_Item):
    type: Literal["mcp_call"]
    id: ItemId
    arguments: str
    name: str
    server_label: str
    approval_request_id: str | None = None
    error: dict[str, Any] | None = None
    output: str | None = None


Message = Annotated[SystemMessage | UserMessage | AssistantMessage, Field(discriminator="role")]
GaItem = Annotated[Message | FunctionCall | FunctionCallOutput | McpApprovalResponse | McpApprovalRequest
                   | McpListTools | McpCall, Field(discriminator="type")]


# ---- conversation items (beta: one flat shape) -----------------------------------------------------

class BetaContent(_Wire):
    type: Literal["input_text", "input_audio", "item_reference", "text", "audio"] = None
    id: str = None
    text: str = None
    audio: str = None
    transcript: str = None


class BetaItem(_Item):
    type: Literal["message", "function_call", "function_call_output", "item_reference"] = None
    role: Literal["user", "assistant", "system"] = None
    content: list[BetaContent] = None
    call_id: str = None
    name: str = None
    arguments: str = None
    output: str = None


# ---- sessions --------------------------------------------------------------------------------------

class GaAudioInput(_Wire):
    format: AudioFormat = None
    noise_reduction: NoiseReduction | None = None
    transcription: GaTranscription | None = None
    turn_detection: TurnDetection | None = None


class GaAudioOutput(_Wire):
    format: AudioFormat = None
    speed: Speed = None
    voice: Voice = None


class GaAudio(_Wire):
    input: GaAudioInput = None
    output: GaAudioOutput = None


class GaSession(_Wire):
    """GA `session` of session.update, client_secrets and the calls form (RealtimeSessionCreateRequest)."""

    type: Literal["realtime"]
    model: str = None
    instructions: str = None
    audio: GaAudio = None
    output_modalities: Modalities = None
    max_output_tokens: TokenLimit = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] = None
    parallel_tool_calls: bool = None
    prompt: dict[str, Any] | None = None
    reasoning: dict[str, Any] = None
    tool_choice: ToolChoice = None
    tools: list[Tool] = None
    tracing: Literal["auto"] | TracingConfig | None = None
    truncation: Literal["auto", "disabled"] | RetentionRatio = None


class BetaSession(_Wire):
    """Beta `session` of session.update (flat)."""

    model: str = None
    instructions: str = None
    voice: str = None
    speed: Speed = None
    modalities: Modalities = None
    input_audio_format: BetaAudioFormat = None
    output_audio_format: BetaAudioFormat = None
    input_audio_transcription: BetaTranscription | None = None
    input_audio_noise_reduction: NoiseReduction | None = None
    turn_detection: BetaTurnDetection | None = None
    max_response_output_tokens: TokenLimit = None
    temperature: Temperature = None
    tools: list[FunctionTool] = None
    tool_choice: str = None
    tracing: Literal["auto"] | TracingConfig | None = None
    client_secret: dict[str, Any] = None


class BetaSessionRequest(BetaSession):
    """Body of beta `POST /v1/realtime/sessions`: the flat session, naming its model."""

    model: str


class ExpiresAfter(_Wire):
    anchor: Literal["created_at"]
    seconds: Annotated[int, Field(ge=10, le=7200)] = 600


class ClientSecretRequest(_Wire):
    """Body of GA `POST /v1/realtime/client_secrets`."""

    expires_after: ExpiresAfter = None
    session: GaSession = None


# ---- response.create overrides --------------------------------------------------------------------

class ResponseVoice(_Wire):
    format: AudioFormat = None
    voice: Voice = None


class ResponseAudio(_Wire):
    output: ResponseVoice = None


class GaResponseParams(_Wire):
    """GA `response` of response.create (RealtimeResponseCreateParams)."""

    audio: ResponseAudio = None
    conversation: str = None  # "auto" | "none" | a conversation id
    input: list[dict[str, Any]] = None  # items and item references; Koe answers from the conversation
    instructions: str = None
    max_output_tokens: TokenLimit = None
    metadata: Metadata | None = None
    output_modalities: Modalities = None
    parallel_tool_calls: bool = None
    prompt: dict[str, Any] | None = None
    reasoning: dict[str, Any] = None
    tool_choice: ToolChoice = None
    tools: list[Tool] = None

    @property
    def voice(self) -> str | VoiceId | None:
        return self.audio.output.voice if self.audio and self.audio.output else None


class BetaResponseParams(_Wire):
    """Beta `response` of response.create; `max_output_tokens` is `max_response_output_tokens` on the wire."""

    conversation: str = None
    input: list[BetaItem] = None
    instructions: str = None
    max_output_tokens: TokenLimit = Field(None, alias="max_response_output_tokens")
    metadata: Metadata | None = None
    modalities: Modalities = None
    output_audio_format: BetaAudioFormat = None
    temperature: Temperature = None
    tool_choice: str = None
    tools: list[FunctionTool] = None
    voice: str = None


# ---- errors ----------------------------------------------------------------------------------------

class WireError(ValueError):
    """A refused request: `code` (unknown_parameter, invalid_type, invalid_value,
    missing_required_parameter, invalid_json), `param` (dotted path, OpenAI's style) and a message."""

    def __init__(self, code: str, message: str, param: str | None = None, event_id: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param, self.event_id = code, message, param, event_id


_EXPECTED = {"string_type": "a string", "int_type": "an integer", "float_type": "a number",
             "bool_type": "a boolean", "dict_type": "an object", "model_type": "an object",
             "model_attributes_type": "an object", "list_type": "an array", "none_required": "null"}


_BOUNDS = {"ge": "a value >=", "gt": "a value >", "le": "a value <=", "lt": "a value <",
           "min_length": "a length of at least", "max_length": "a length of at most"}


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                       (list, "an array"), (dict, "an object")):
        if isinstance(v, kind):
            return name
    return type(v).__name__


def _short(v: Any) -> str:
    text = json.dumps(v, ensure_ascii=False, default=str) if not isinstance(v, str) else v
    return text if len(text) <= 80 else text[:77] + "..."


def _param(loc: tuple, data: Any, keep_last: bool) -> str:
    """OpenAI's dotted path (`item.content[0].type`) for a pydantic location. Parts that are not in
    the input (the union member or tag pydantic adds) are left out."""
    out, node = "", data
    for i, part in enumerate(loc):
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            out, node = f"{out}[{part}]", node[part]
        elif isinstance(node, dict) and part in node:
            out, node = f"{out}.{part}" if out else str(part), node[part]
        elif keep_last and i == len(loc) - 1:
            out = f"{out}.{part}" if out else str(part)
    return out


def _error_param(err: dict, data: Any) -> str:
    loc, kind = tuple(err["loc"]), err["type"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        loc = (*loc, str((err.get("ctx") or {}).get("discriminator", "")).strip("'"))
    return _param(loc, data, keep_last=kind in ("missing", "extra_forbidden", "union_tag_not_found"))


def wire_error(exc: ValidationError, data: Any, prefix: str = "") -> WireError:
    """OpenAI's wording of the first thing wrong with `data` (the input that failed validation).
    `prefix` is the path of `data` in the request (`session`, `item`...)."""
    # The deepest error names the part that is wrong: when a union's members all fail, the member
    # that matched furthest holds it (an unknown key in {"id": ...}, not "expected a string").
    err = max(exc.errors(include_url=False), key=lambda e: _error_param(e, data).replace("[", ".").count("."))
    kind, ctx = err["type"], err.get("ctx") or {}
    param = ".".join(p for p in (prefix, _error_param(err, data)) if p).replace(".[", "[")
    value = err.get("input")
    if kind == "extra_forbidden":
        return WireError("unknown_parameter", f"Unknown parameter: '{param}'.", param)
    if kind in ("missing", "union_tag_not_found"):
        return WireError("missing_required_parameter", f"Missing required parameter: '{param}'.", param)
    if kind in _EXPECTED:
        message = f"Invalid type for '{param}': expected {_EXPECTED[kind]}, but got {_json_type(value)} instead."
        return WireError("invalid_type", message, param)
    if kind == "union_tag_invalid":
        message = f"Invalid value: '{_short(ctx.get('tag'))}'. Supported values are: {ctx.get('expected_tags')}."
        return WireError("invalid_value", message, param)
    if kind == "literal_error":
        message = f"Invalid value: '{_short(value)}'. Supported values are: {ctx.get('expected')}."
        return WireError("invalid_value", message, param)
    bound = next(((op, ctx[key]) for key, op in _BOUNDS.items() if key in ctx), None)
    if bound is not None:
        message = f"Invalid value for '{param}': expected {bound[0]} {bound[1]}, but got {_short(value)} instead."
        return WireError("invalid_value", message, param)
    msg = err["msg"].removeprefix("Value error, ")
    return WireError("invalid_value", f"Invalid value for '{param}': {msg} (got {_short(value)}).", param)


def json_depth(value: Any) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (a scalar is 0)."""
    depth, level = 0, [(value, 1)]
    while level:
        node, d = level.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            depth = max(depth, d)
            level.extend((child, d + 1) for child in node if isinstance(child, (dict, list)))
    return depth


def loads_object(text: str | bytes, what: str = "The message") -> dict[str, Any]:
    """Parse a JSON object from a client; WireError (code `invalid_json`) for bad UTF-8, bad JSON,
    anything but an object, or nesting deeper than MAX_JSON_DEPTH."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError as exc:
        raise WireError("invalid_json", f"{what} is not valid UTF-8 (byte {exc.start}).") from None
    except RecursionError:
        raise WireError("invalid_json", f"{what} nests JSON too deeply (at most {MAX_JSON_DEPTH} levels).") from None
    except ValueError as exc:
        raise WireError("invalid_json", f"{what} is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise WireError("invalid_json", f"{what} must be a JSON object, not {_json_type(data)}.")
    check_depth(data, what)
    return data


def check_depth(data: dict[str, Any], what: str = "The message") -> None:
    """WireError (`invalid_json`, with the object's event_id) when `data` nests deeper than MAX_JSON_DEPTH."""
    if json_depth(data) > MAX_JSON_DEPTH:
        event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
        raise WireError("invalid_json", f"{what} nests JSON too deeply (at most {MAX_JSON_DEPTH} levels).",
                        event_id=event_id)
