"""The reply stage through any OpenAI-compatible chat-completions endpoint (bring your own model).

Streams `POST {base_url}/chat/completions` with `stream: true` and reads its server-sent events
(`data: {...}` lines, ending with `data: [DONE]`). It runs in the executor like the local LLM, so a
blocking httpx client is right here. Every failure becomes a ChatEndpointError whose message names
the endpoint and what went wrong, never the API key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx

from koe.local.stages.replies import ToolCallDelta

DEFAULT_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5.0
BYTES_PER_TOKEN = 4  # a rough count for usage figures: the endpoint's tokenizer is unknown here
MAX_ERROR_CHARS = 300


class ChatEndpointError(RuntimeError):
    """The chat endpoint failed; the message is fit to show a person."""


@dataclass(frozen=True)
class ChatEndpoint:
    base_url: str  # e.g. http://127.0.0.1:8080/v1 (the part before /chat/completions)
    model: str
    api_key: str | None = field(default=None, repr=False)  # never printed
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def configured(cls, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> "ChatEndpoint | None":
        """The endpoint from these arguments, else from KOE_CHAT_BASE_URL / KOE_CHAT_MODEL / KOE_CHAT_API_KEY;
        None when no base URL is set (the bundled model answers)."""
        base_url = base_url or os.environ.get("KOE_CHAT_BASE_URL")
        if not base_url:
            return None
        model = model or os.environ.get("KOE_CHAT_MODEL")
        if not model:
            raise ValueError("a chat endpoint needs a model name: pass chat_model / --chat-model or set KOE_CHAT_MODEL")
        return cls(base_url.rstrip("/"), model, api_key or os.environ.get("KOE_CHAT_API_KEY") or None, timeout_s)


class ChatModel:
    """Replies from a chat endpoint; one connection pool shared by all sessions (httpx.Client is thread-safe)."""

    def __init__(self, endpoint: ChatEndpoint) -> None:
        self.endpoint = endpoint
        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        self._http = httpx.Client(base_url=endpoint.base_url, headers=headers,
                                  timeout=httpx.Timeout(endpoint.timeout_s, connect=min(CONNECT_TIMEOUT_S, endpoint.timeout_s)))

    calls_functions = True  # the tools go to the endpoint; a model that cannot use them answers in words

    @property
    def model(self) -> str:
        return self.endpoint.model

    def count_tokens(self, text: str) -> int:
        return -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN)

    def stream(self, messages: list[dict], *, max_tokens: int = 200, temperature: float | None = None,
               cancelled: Callable[[], bool] = lambda: False, tools: list[dict] | None = None,
               tool_choice: str | dict | None = None) -> Iterator[str | ToolCallDelta]:
        """Text deltas of the reply, and ToolCallDelta pieces when the model calls one of `tools`
        (chat completions' `[{"type": "function", "function": {name, description, parameters}}]`, with
        `tool_choice` "auto" | "none" | "required" | {"type": "function", "function": {"name"}});
        stops reading (and closes the stream) once cancelled().

        `temperature` None leaves it to the endpoint's default for its model."""
        body = {"model": self.endpoint.model, "messages": messages, "max_tokens": max_tokens, "stream": True}
        if temperature is not None:
            body["temperature"] = temperature
        if tools:
            body["tools"] = tools
            body["tool_choice"] = tool_choice or "auto"
        where = self.endpoint.base_url
        try:
            with self._http.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ChatEndpointError(f"The chat endpoint {where} answered {response.status_code}: "
                                            f"{_error_message(response)}")
                finished = False
                for data in _sse_data(response.iter_lines()):
                    if cancelled():
                        return
                    if data == "[DONE]":
                        return
                    choice = _first_choice(data, where)
                    finished = finished or choice.get("finish_reason") is not None
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        yield delta["content"]
                    for call in delta.get("tool_calls") or ():
                        yield _tool_call_delta(call, where)
                if not finished:
                    raise ChatEndpointError(f"The chat endpoint {where} ended the reply stream before it was done.")
        except httpx.TimeoutException:
            raise ChatEndpointError(f"The chat endpoint {where} did not answer within "
                                    f"{self.endpoint.timeout_s:g} s.") from None
        except httpx.ConnectError as exc:
            raise ChatEndpointError(f"The chat endpoint {where} could not be reached: {exc}") from None
        except httpx.HTTPError as exc:  # the connection dropped mid-stream, a malformed response...
            raise ChatEndpointError(f"The chat endpoint {where} dropped the reply stream: {exc}") from None

    def close(self) -> None:
        self._http.close()


def _tool_call_delta(call: object, where: str) -> ToolCallDelta:
    if not isinstance(call, dict) or not isinstance(call.get("index", 0), int):
        raise ChatEndpointError(f"The chat endpoint {where} sent a malformed tool call: {str(call)[:80]!r}")
    function = call.get("function") or {}
    return ToolCallDelta(index=call.get("index", 0), id=call.get("id") or None, name=function.get("name") or None,
                         arguments=function.get("arguments") or "")


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The payloads of `data:` lines; comments, event names and keep-alives are skipped."""
    for line in lines:
        if line.startswith("data:"):
            yield line[5:].strip()


def _first_choice(data: str, where: str) -> dict:
    try:
        chunk = json.loads(data)
    except ValueError:
        raise ChatEndpointError(f"The chat endpoint {where} sent something that is not JSON: {data[:80]!r}") from None
    if isinstance(chunk, dict) and chunk.get("error"):  # some servers report failures inside the stream
        raise ChatEndpointError(f"The chat endpoint {where} failed mid-reply: {_message_of(chunk)}")
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    return choices[0] if choices and isinstance(choices[0], dict) else {}  # usage-only chunks have none


def _error_message(response: httpx.Response) -> str:
    try:
        return _message_of(response.json())
    except ValueError:
        return response.text.strip()[:MAX_ERROR_CHARS] or response.reason_phrase


def _message_of(body: object) -> str:
    """OpenAI's {"error": {"message": ...}}, or the shapes other servers use."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:MAX_ERROR_CHARS]
        if isinstance(error, str):
            return error[:MAX_ERROR_CHARS]
    return json.dumps(body)[:MAX_ERROR_CHARS]
