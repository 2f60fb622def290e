"""Typed Realtime events in both directions. Extra fields are kept, so nothing is dropped."""

import json
import secrets
import string
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from koe.protocol.dialect import Dialect

__all__ = [
    "CLIENT_EVENTS",
    "SERVER_EVENTS",
    "ClientEvent",
    "ConversationItemAdded",
    "ConversationItemCreate",
    "ConversationItemCreated",
    "ConversationItemDelete",
    "ConversationItemDeleted",
    "ConversationItemDone",
    "ConversationItemInputAudioTranscriptionCompleted",
    "ConversationItemInputAudioTranscriptionDelta",
    "ConversationItemInputAudioTranscriptionFailed",
    "ConversationItemRetrieve",
    "ConversationItemRetrieved",
    "ConversationItemTruncate",
    "ConversationItemTruncated",
    "ErrorEvent",
    "ErrorInfo",
    "Event",
    "EventError",
    "InputAudioBufferAppend",
    "InputAudioBufferClear",
    "InputAudioBufferCleared",
    "InputAudioBufferCommit",
    "InputAudioBufferCommitted",
    "InputAudioBufferSpeechStarted",
    "InputAudioBufferSpeechStopped",
    "InputAudioBufferTimeoutTriggered",
    "OutputAudioBufferClear",
    "OutputAudioBufferCleared",
    "OutputAudioBufferStarted",
    "OutputAudioBufferStopped",
    "RateLimitsUpdated",
    "ResponseAudioDelta",
    "ResponseAudioDone",
    "ResponseAudioTranscriptDelta",
    "ResponseAudioTranscriptDone",
    "ResponseCancel",
    "ResponseContentPartAdded",
    "ResponseContentPartDone",
    "ResponseCreate",
    "ResponseCreated",
    "ResponseDone",
    "ResponseFunctionCallArgumentsDelta",
    "ResponseFunctionCallArgumentsDone",
    "ResponseOutputAudioDelta",
    "ResponseOutputAudioDone",
    "ResponseOutputAudioTranscriptDelta",
    "ResponseOutputAudioTranscriptDone",
    "ResponseOutputItemAdded",
    "ResponseOutputItemDone",
    "ResponseOutputTextDelta",
    "ResponseOutputTextDone",
    "ResponseTextDelta",
    "ResponseTextDone",
    "ServerEvent",
    "SessionCreated",
    "SessionUpdate",
    "SessionUpdated",
    "UnknownServerEvent",
    "function_call_item",
    "function_call_output_item",
    "new_id",
    "parse_client_event",
    "parse_server_event",
    "server_event_name",
]

_ALNUM = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """An id like OpenAI's: `new_id("event")` → "event_" + 20 random letters and digits."""
    return prefix + "_" + "".join(secrets.choice(_ALNUM) for _ in range(20))


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")
    # Declared fields written as null when None because null means something there
    # (e.g. previous_item_id: null = first item). Other None fields are left out.
    null_fields: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> str:
        data = self.model_dump(mode="json")
        for name in type(self).model_fields:
            if data.get(name, "") is None and name not in self.null_fields:
                del data[name]
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


class ErrorInfo(_Model):
    type: str | None = None
    code: str | None = None
    message: str
    param: str | None = None
    event_id: str | None = None


class Event(_Model):
    type: str
    event_id: str | None = None


# ---- client → server ---------------------------------------------------------------------------


class ClientEvent(Event):
    pass


class SessionUpdate(ClientEvent):
    type: Literal["session.update"] = "session.update"
    session: dict[str, Any]


class InputAudioBufferAppend(ClientEvent):
    """Audio in over a WebSocket: base64 bytes in the session's input format."""

    type: Literal["input_audio_buffer.append"] = "input_audio_buffer.append"
    audio: str


class InputAudioBufferCommit(ClientEvent):
    type: Literal["input_audio_buffer.commit"] = "input_audio_buffer.commit"


class InputAudioBufferClear(ClientEvent):
    type: Literal["input_audio_buffer.clear"] = "input_audio_buffer.clear"


class OutputAudioBufferClear(ClientEvent):
    type: Literal["output_audio_buffer.clear"] = "output_audio_buffer.clear"


class ConversationItemCreate(ClientEvent):
    type: Literal["conversation.item.create"] = "conversation.item.create"
    item: dict[str, Any]
    previous_item_id: str | None = None  # omitted = append


class ConversationItemTruncate(ClientEvent):
    type: Literal["conversation.item.truncate"] = "conversation.item.truncate"
    item_id: str
    content_index: int = Field(0, ge=0)
    audio_end_ms: int = Field(ge=0)


class ConversationItemDelete(ClientEvent):
    type: Literal["conversation.item.delete"] = "conversation.item.delete"
    item_id: str


class ConversationItemRetrieve(ClientEvent):
    type: Literal["conversation.item.retrieve"] = "conversation.item.retrieve"
    item_id: str


class ResponseCreate(ClientEvent):
    type: Literal["response.create"] = "response.create"
    response: dict[str, Any] | None = None  # per-response overrides


class ResponseCancel(ClientEvent):
    type: Literal["response.cancel"] = "response.cancel"
    response_id: str | None = None


# ---- server → client ---------------------------------------------------------------------------


class ServerEvent(Event):
    # Servers always send an id; a locally built event gets a fresh one.
    event_id: str | None = Field(default_factory=lambda: new_id("event"))


class UnknownServerEvent(ServerEvent):
    """Any type Koe does not model (or a malformed known one), with all its fields."""

    event_id: str | None = None  # as received: never invented for someone else's event


class _SessionEvent(ServerEvent):
    session: dict[str, Any]


class SessionCreated(_SessionEvent):
    type: Literal["session.created"] = "session.created"


class SessionUpdated(_SessionEvent):
    type: Literal["session.updated"] = "session.updated"


class InputAudioBufferSpeechStarted(ServerEvent):
    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"
    audio_start_ms: int
    item_id: str


class InputAudioBufferSpeechStopped(ServerEvent):
    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"
    audio_end_ms: int
    item_id: str


class InputAudioBufferCommitted(ServerEvent):
    type: Literal["input_audio_buffer.committed"] = "input_audio_buffer.committed"
    null_fields = frozenset({"previous_item_id"})
    item_id: str
    previous_item_id: str | None = None


class InputAudioBufferCleared(ServerEvent):
    type: Literal["input_audio_buffer.cleared"] = "input_audio_buffer.cleared"


class InputAudioBufferTimeoutTriggered(ServerEvent):  # GA only
    type: Literal["input_audio_buffer.timeout_triggered"] = "input_audio_buffer.timeout_triggered"
    item_id: str | None = None
    audio_start_ms: int | None = None
    audio_end_ms: int | None = None


class _ItemEvent(ServerEvent):
    null_fields = frozenset({"previous_item_id"})
    item: dict[str, Any]
    previous_item_id: str | None = None


class ConversationItemAdded(_ItemEvent):
    type: Literal["conversation.item.added"] = "conversation.item.added"


class ConversationItemDone(_ItemEvent):  # GA only
    type: Literal["conversation.item.done"] = "conversation.item.done"


class ConversationItemCreated(_ItemEvent):  # beta for .added
    type: Literal["conversation.item.created"] = "conversation.item.created"


class ConversationItemRetrieved(ServerEvent):
    type: Literal["conversation.item.retrieved"] = "conversation.item.retrieved"
    item: dict[str, Any]


class ConversationItemTruncated(ServerEvent):
    type: Literal["conversation.item.truncated"] = "conversation.item.truncated"
    item_id: str
    content_index: int = 0
    audio_end_ms: int


class ConversationItemDeleted(ServerEvent):
    type: Literal["conversation.item.deleted"] = "conversation.item.deleted"
    item_id: str


class _TranscriptionEvent(ServerEvent):
    item_id: str
    content_index: int = 0


class ConversationItemInputAudioTranscriptionDelta(_TranscriptionEvent):
    type: Literal["conversation.item.input_audio_transcription.delta"] = (
        "conversation.item.input_audio_transcription.delta"
    )
    delta: str


class ConversationItemInputAudioTranscriptionCompleted(_TranscriptionEvent):
    type: Literal["conversation.item.input_audio_transcription.completed"] = (
        "conversation.item.input_audio_transcription.completed"
    )
    transcript: str


class ConversationItemInputAudioTranscriptionFailed(_TranscriptionEvent):
    type: Literal["conversation.item.input_audio_transcription.failed"] = (
        "conversation.item.input_audio_transcription.failed"
    )
    error: ErrorInfo


class _ResponseEvent(ServerEvent):
    response: dict[str, Any]  # {id, status, status_details, output, usage}


class ResponseCreated(_ResponseEvent):
    type: Literal["response.created"] = "response.created"


class ResponseDone(_ResponseEvent):
    type: Literal["response.done"] = "response.done"


class _OutputItemEvent(ServerEvent):
    response_id: str
    output_index: int = 0
    item: dict[str, Any]


class ResponseOutputItemAdded(_OutputItemEvent):
    type: Literal["response.output_item.added"] = "response.output_item.added"


class ResponseOutputItemDone(_OutputItemEvent):
    type: Literal["response.output_item.done"] = "response.output_item.done"


class _PartEvent(ServerEvent):
    """Anything about one content part of one output item of a response."""

    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0


class _ContentPartEvent(_PartEvent):
    part: dict[str, Any]


class ResponseContentPartAdded(_ContentPartEvent):
    type: Literal["response.content_part.added"] = "response.content_part.added"


class ResponseContentPartDone(_ContentPartEvent):
    type: Literal["response.content_part.done"] = "response.content_part.done"


class _DeltaEvent(_PartEvent):
    delta: str


class _TranscriptDoneEvent(_PartEvent):
    transcript: str


class _TextDoneEvent(_PartEvent):
    text: str


class ResponseOutputAudioTranscriptDelta(_DeltaEvent):
    type: Literal["response.output_audio_transcript.delta"] = "response.output_audio_transcript.delta"


class ResponseAudioTranscriptDelta(_DeltaEvent):  # beta
    type: Literal["response.audio_transcript.delta"] = "response.audio_transcript.delta"


class ResponseOutputAudioTranscriptDone(_TranscriptDoneEvent):
    type: Literal["response.output_audio_transcript.done"] = "response.output_audio_transcript.done"


class ResponseAudioTranscriptDone(_TranscriptDoneEvent):  # beta
    type: Literal["response.audio_transcript.done"] = "response.audio_transcript.done"


class ResponseOutputTextDelta(_DeltaEvent):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"


class ResponseTextDelta(_DeltaEvent):  # beta
    type: Literal["response.text.delta"] = "response.text.delta"


class ResponseOutputTextDone(_TextDoneEvent):
    type: Literal["response.output_text.done"] = "response.output_text.done"


class ResponseTextDone(_TextDoneEvent):  # beta
    type: Literal["response.text.done"] = "response.text.done"


class ResponseOutputAudioDelta(_DeltaEvent):
    """Reply audio over a WebSocket: base64 bytes in the session's output format."""

    type: Literal["response.output_audio.delta"] = "response.output_audio.delta"


class ResponseAudioDelta(_DeltaEvent):  # beta
    type: Literal["response.audio.delta"] = "response.audio.delta"


class ResponseOutputAudioDone(_PartEvent):
    type: Literal["response.output_audio.done"] = "response.output_audio.done"


class ResponseAudioDone(_PartEvent):  # beta
    type: Literal["response.audio.done"] = "response.audio.done"


class _FunctionCallArgumentsEvent(ServerEvent):
    """The arguments of a `function_call` output item as the model writes them (a JSON string)."""

    response_id: str
    item_id: str
    output_index: int = 0
    call_id: str


class ResponseFunctionCallArgumentsDelta(_FunctionCallArgumentsEvent):
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"
    delta: str


class ResponseFunctionCallArgumentsDone(_FunctionCallArgumentsEvent):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    arguments: str
    name: str | None = None  # GA sends the function's name too; beta does not


def function_call_item(item_id: str, call_id: str, name: str, arguments: str,
                       status: str = "completed") -> dict[str, Any]:
    """A `function_call` conversation item (openai-python `RealtimeConversationItemFunctionCall`; the
    same flat shape in beta): the model asks for `name` with `arguments`, a JSON-encoded object."""
    return {"id": item_id, "object": "realtime.item", "type": "function_call", "status": status,
            "name": name, "call_id": call_id, "arguments": arguments}


def function_call_output_item(call_id: str, output: str, item_id: str | None = None) -> dict[str, Any]:
    """A `function_call_output` item (`RealtimeConversationItemFunctionCallOutput`): what the function
    returned for `call_id`, as free text (JSON by convention). Without `item_id` the server picks one."""
    item = {"type": "function_call_output", "call_id": call_id, "output": output}
    return {"id": item_id, **item} if item_id else item


class _OutputAudioBufferEvent(ServerEvent):
    response_id: str


class OutputAudioBufferStarted(_OutputAudioBufferEvent):
    type: Literal["output_audio_buffer.started"] = "output_audio_buffer.started"


class OutputAudioBufferStopped(_OutputAudioBufferEvent):
    type: Literal["output_audio_buffer.stopped"] = "output_audio_buffer.stopped"


class OutputAudioBufferCleared(_OutputAudioBufferEvent):
    type: Literal["output_audio_buffer.cleared"] = "output_audio_buffer.cleared"


class RateLimitsUpdated(ServerEvent):
    type: Literal["rate_limits.updated"] = "rate_limits.updated"
    rate_limits: list[dict[str, Any]]  # [{name, limit, remaining, reset_seconds}]


class ErrorEvent(ServerEvent):
    type: Literal["error"] = "error"
    error: ErrorInfo


# ---- parsing -----------------------------------------------------------------------------------

_E = TypeVar("_E", bound=Event)


def _registry(base: type[_E]) -> dict[str, type[_E]]:
    """Event type name → class, for every subclass that fixes its `type`."""
    found: dict[str, type[_E]] = {}
    stack = list(base.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        name = cls.model_fields["type"].default
        if isinstance(name, str):
            found[name] = cls
    return found


CLIENT_EVENTS: dict[str, type[ClientEvent]] = _registry(ClientEvent)
SERVER_EVENTS: dict[str, type[ServerEvent]] = _registry(ServerEvent)


class EventError(Exception):
    """A client event the server refuses; carries what an `error` event needs."""

    def __init__(
        self,
        code: str,
        message: str,
        event_id: str | None = None,
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.event_id = event_id
        self.param = param
        self.type = error_type

    def to_event(self) -> ErrorEvent:
        info = ErrorInfo(
            type=self.type, code=self.code, message=self.message, param=self.param, event_id=self.event_id
        )
        return ErrorEvent(error=info)


def parse_client_event(data: dict[str, Any]) -> ClientEvent:
    """Validate a client event; raises EventError worded like OpenAI's errors."""
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    kind = data.get("type")
    if not isinstance(kind, str):
        message = "Missing required parameter: 'type'."
        raise EventError("missing_required_parameter", message, event_id, "type")
    cls = CLIENT_EVENTS.get(kind)
    if cls is None:
        supported = ", ".join(f"'{k}'" for k in sorted(CLIENT_EVENTS))
        message = f"Invalid value: '{kind}'. Supported values are: {supported}."
        raise EventError("invalid_value", message, event_id, "type")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"])
        if err["type"] == "missing":
            message = f"Missing required parameter: '{param}'."
            raise EventError("missing_required_parameter", message, event_id, param) from None
        message = f"Invalid value for '{param}': {err['msg']} (got {err['input']!r})."
        raise EventError("invalid_value", message, event_id, param) from None


def parse_server_event(data: dict[str, Any]) -> ServerEvent:
    """Never raises: unknown or malformed events come back as UnknownServerEvent, fields intact."""
    kind = data.get("type")
    cls = SERVER_EVENTS.get(kind) if isinstance(kind, str) else None
    if cls is not None:
        try:
            return cls.model_validate(data)
        except ValidationError:
            pass  # keep it rather than drop it
    return UnknownServerEvent.model_construct(**{"type": "", **data})


# GA name → beta name; None = the beta interface never sends it. Unlisted names are the same.
_GA_TO_BETA: dict[str, str | None] = {
    "conversation.item.added": "conversation.item.created",
    "conversation.item.done": None,
    "input_audio_buffer.timeout_triggered": None,
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
}


def server_event_name(kind: str, dialect: Dialect) -> str | None:
    """The name under which `dialect` sends the GA event `kind`, or None if it does not send it."""
    return kind if dialect == "ga" else _GA_TO_BETA.get(kind, kind)
