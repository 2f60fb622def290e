"""A small OpenAI-compatible chat-completions server on loopback, for tests: scripted replies, recorded requests."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from koe.local.server import bound_port


@dataclass
class Reply:
    """Stream `text` as SSE chunks (a few characters each); a callable gets the request body first
    (to answer from a tool's result, say)."""

    text: str | Callable[[dict], str]
    cut_after: int | None = None  # drop the connection after this many chunks, without [DONE]


@dataclass
class ToolCalls:
    """Call functions instead of answering: (name, JSON arguments) each, streamed as OpenAI's chat
    completions stream them (`delta.tool_calls[]`: id and name first, then the arguments in pieces),
    ending with finish_reason "tool_calls"."""

    calls: list[tuple[str, str]]


@dataclass
class Fail:
    status: int
    body: dict


@dataclass
class Hang:
    seconds: float  # answer nothing for this long


@dataclass
class Recorded:
    body: dict
    headers: dict[str, str]


@dataclass
class ChatStub:
    script: list[Reply | ToolCalls | Fail | Hang] = field(default_factory=list)  # one per request, in order
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""  # the base URL, ".../v1"

    def __post_init__(self) -> None:
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    async def _completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(Recorded(body, dict(request.headers)))
        step = self.script.pop(0) if self.script else Reply("Okay.")
        if isinstance(step, Fail):
            return JSONResponse(step.body, step.status)
        if isinstance(step, Hang):
            await asyncio.sleep(step.seconds)
            return JSONResponse({"error": {"message": "too late"}}, 504)
        if isinstance(step, ToolCalls):
            return StreamingResponse(self._tool_chunks(step), media_type="text/event-stream")
        return StreamingResponse(self._chunks(step, body), media_type="text/event-stream")

    async def _tool_chunks(self, step: ToolCalls):
        for index, (name, arguments) in enumerate(step.calls):
            first = {"index": index, "id": f"call_stub{index}", "type": "function",
                     "function": {"name": name, "arguments": ""}}
            pieces = [{"index": index, "function": {"arguments": arguments[i : i + 5]}}
                      for i in range(0, len(arguments), 5)]
            for call in (first, *pieces):
                chunk = {"id": "chatcmpl-stub", "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(0.005)
        done = {"id": "chatcmpl-stub", "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
        yield f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n"

    async def _chunks(self, reply: Reply, body: dict):
        text = reply.text(body) if callable(reply.text) else reply.text
        pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
        for n, piece in enumerate(pieces):
            if reply.cut_after is not None and n == reply.cut_after:
                raise ConnectionAbortedError("the stub drops the stream")  # uvicorn closes mid-body
            chunk = {"id": "chatcmpl-stub", "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            await asyncio.sleep(0.01)
        done = {"id": "chatcmpl-stub", "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        yield f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n"

    def start(self) -> "ChatStub":
        app = Starlette(routes=[Route("/v1/chat/completions", self._completions, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", lifespan="off")
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{bound_port(lambda: self._server, self._thread, 10, 'the chat stub')}/v1"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
