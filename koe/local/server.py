"""Koe's local backend: OpenAI's Realtime endpoints, WebRTC and WebSocket, over one session engine.

- WebRTC: `POST /v1/realtime/calls` (GA) / `POST /v1/realtime?model=` (beta) answered by an aiortc
  peer per call; `POST /v1/realtime/calls/{id}/hangup`.
- WebSocket: `GET /v1/realtime?model=` (GA, or beta for `*-realtime-preview*` models, the
  `OpenAI-Beta: realtime=v1` header or the `openai-beta.realtime-v1` subprotocol), and
  `GET /v1/realtime?call_id=` to attach a sideband socket to a running WebRTC call.
- Keys: `POST /v1/realtime/client_secrets` (GA), `POST /v1/realtime/sessions` (beta).
- CORS on every route (Starlette's middleware), so a page on another origin can call it.

Run it standalone (`python -m koe.local`) or in-process with `LocalServer(...).start()`, which
serves from a thread of its own so that model work and its loop never touch the caller's loop.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import uvicorn
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from koe.local.sdp import MAX_SDP_CHARS, OfferError, check_offer
from koe.local.admission import Admission, busy_message, default_max_calls
from koe.local.scheduler import ModelScheduler
from koe.local.session import DEFAULT_REPLY_TOKENS, LocalSession, unsupported
from koe.local.stages.chat import DEFAULT_TIMEOUT_S, ChatEndpoint, ChatModel
from koe.local.stages.llm import PROFILES, reply_profile
from koe.local.stages.models import LocalModels, get_models
from koe.local.transports import DataChannelTransport, SocketTransport
from koe.local.voices import ENGLISH_VOICES, JAPANESE_VOICES, LOCAL_VOICES
from koe.protocol import (
    BETA_VOICES, Dialect, SessionSettings, SettingsError, dialect_for_model, new_id, served_model, validate_for_dialect,
    wire_path,
)
from koe.protocol.wire import (
    BetaSession, BetaSessionRequest, ClientSecretRequest, GaSession, WireError, loads_object, wire_error,
)

log = logging.getLogger("koe.local")

BETA_KEY_TTL_S = 60
MAX_BODY = 256 * 1024  # JSON bodies and SDP offers; a multipart form has two parts of at most this
OFFER_TIMEOUT_S = 30.0  # an answered offer whose peer has not connected by then is closed
# CORS: what OpenAI's browser clients send and read (the agents SDK adds its own header; the call
# id comes back in Location).
CORS_HEADERS = ["Authorization", "Content-Type", "OpenAI-Beta", "X-OpenAI-Agents-SDK"]
INSECURE_KEY_PROTOCOL = "openai-insecure-api-key."  # browsers cannot set headers on a WebSocket
BETA_PROTOCOL = "openai-beta.realtime-v1"


def cors_origins_from(value: str | None) -> list[str]:
    """`--cors-origins` / $KOE_CORS_ORIGINS: comma-separated origins, `*` (the default) for any."""
    origins = [o.strip() for o in (value or "*").split(",") if o.strip()]
    return origins or ["*"]


def error(status: int, message: str, code: str | None = None, param: str | None = None,
          type_: str = "invalid_request_error") -> JSONResponse:
    """An error in OpenAI's shape, so one client-side mapping serves both backends."""
    return JSONResponse({"error": {"type": type_, "code": code, "message": message, "param": param}}, status)


def session_limit(max_calls: int, wait_s: int) -> JSONResponse:
    """The refusal of a conversation beyond the capacity, as OpenAI refuses: 429 `session_limit_reached` with
    `Retry-After: wait_s`."""
    response = error(429, busy_message(max_calls, wait_s), "session_limit_reached", type_="rate_limit_error")
    response.headers["Retry-After"] = str(wait_s)
    return response


def socket_key(websocket: WebSocket) -> tuple[list[str], str | None]:
    """A WebSocket's offered subprotocols, and the key a browser gives among them (`openai-insecure-api-key.<key>`),
    None when it gives none (then the key is in its `Authorization` header)."""
    offered = [p.strip() for p in websocket.scope.get("subprotocols", [])]
    return offered, next((p[len(INSECURE_KEY_PROTOCOL):] for p in offered if p.startswith(INSECURE_KEY_PROTOCOL)), None)


class HttpError(Exception):
    def __init__(self, response: JSONResponse) -> None:
        self.response = response


@dataclass
class ClientSecret:
    """A short-lived key: it starts one session (then it is spent) until `expires_at` (epoch s)."""

    value: str
    settings: SessionSettings
    expires_at: float


def http_exception(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own refusals (unknown path, wrong method, a malformed form) in OpenAI's shape."""
    if exc.status_code == 404:
        return error(404, f"Invalid URL ({request.method} {request.url.path})", "not_found")
    if exc.status_code == 405:
        return error(405, f"Method {request.method} is not allowed on {request.url.path}.", "method_not_allowed")
    if exc.status_code == 400 and "exceeded maximum size" in str(exc.detail):
        return error(413, f"The request is too large: {exc.detail}", "request_too_large")
    return error(exc.status_code, str(exc.detail), "invalid_request")


def server_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug, not bad input: the body says so and nothing more (uvicorn logs the traceback once)."""
    return error(500, "The server had an error while processing your request.", "server_error", type_="server_error")


def api_app(routes: list, cors_origins: list[str] | None = None) -> Starlette:
    """A Starlette app that answers as OpenAI does: errors in its shape (`HttpError`, Starlette's own
    refusals, bugs) and CORS for browser clients. `cors_origins`: else $KOE_CORS_ORIGINS, else any."""
    return Starlette(routes=routes, exception_handlers={HttpError: lambda request, exc: exc.response,
                                                       HTTPException: http_exception, Exception: server_error},
                     middleware=[Middleware(CORSMiddleware, allow_methods=["GET", "POST", "OPTIONS"],
                                            allow_origins=cors_origins or cors_origins_from(os.environ.get("KOE_CORS_ORIGINS")),
                                            allow_headers=CORS_HEADERS, expose_headers=["Location"])])


def bound_port(server: Callable[[], uvicorn.Server | None], thread: threading.Thread, timeout_s: float,
               what: str) -> int:
    """The port of a uvicorn server starting on `thread`, once bound (`server()` is None until it exists)."""
    deadline = time.monotonic() + timeout_s
    while not (server() and server().started):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.02)
    return server().servers[0].sockets[0].getsockname()[1]


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (port 0: a free one), bound before anything slow starts, so that a port in
    use is said at once. Raises SystemExit naming the address when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except (OSError, OverflowError) as exc:  # OverflowError: a port outside 0-65535
        raise SystemExit(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None


class LocalServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = None,
                 max_session_s: float = 3600.0, models: LocalModels | None = None,
                 chat_base_url: str | None = None, chat_model: str | None = None, chat_api_key: str | None = None,
                 chat_timeout_s: float = DEFAULT_TIMEOUT_S, reply_model: str | None = None,
                 cors_origins: list[str] | None = None, max_calls: int | None = None,
                 offer_timeout_s: float = OFFER_TIMEOUT_S, worker_key: str | None = None) -> None:
        """`chat_*` (else $KOE_CHAT_BASE_URL, $KOE_CHAT_MODEL, $KOE_CHAT_API_KEY) send the replies to an
        OpenAI-compatible chat-completions endpoint instead of the bundled model. `reply_model` names the
        bundled model's profile (else $KOE_REPLY_MODEL, else "default"; ValueError if unknown); `models`,
        when given, brings its own.

        `cors_origins`: origins whose pages may call the API (else $KOE_CORS_ORIGINS, else any:
        access is by bearer key, never by cookie, so a foreign page gains nothing without one).

        `max_calls`: conversations (WebRTC calls and WebSocket sessions) served at once, else
        $KOE_LOCAL_MAX_CALLS, else two per core (koe.local.admission); 0 = no limit. Beyond it a new
        one is refused with 429 and `Retry-After` before any media flows.
        `offer_timeout_s`: a call whose peer has not connected this long after the answer is closed.
        `worker_key`: this server is a worker behind `python -m koe.local --workers N` (koe.local.workers),
        whose front hands it client secrets at `PUT /v1/koe/worker/client_secrets/{value}` with this key.
        """
        self.host, self.port = host, port
        self.reply_profile = models.llm.profile if models is not None else reply_profile(reply_model)
        self.api_key = api_key
        self.max_session_s = max_session_s
        self.offer_timeout_s = offer_timeout_s
        self.admission = Admission(default_max_calls() if max_calls is None else max_calls)
        self._models = models
        endpoint = ChatEndpoint.configured(chat_base_url, chat_model, chat_api_key, chat_timeout_s)
        self.chat: ChatModel | None = ChatModel(endpoint) if endpoint else None
        self._models_lock = asyncio.Lock()
        self._scheduler = ModelScheduler()  # every session's model work, most urgent first
        self._secrets: dict[str, ClientSecret] = {}
        self._calls: dict[str, tuple[RTCPeerConnection, LocalSession]] = {}
        self._owners: dict[str, str] = {}  # call id → the ephemeral key that created it
        self._unconnected: dict[str, asyncio.TimerHandle] = {}  # call id → its connect deadline
        self._sockets: set[SocketTransport] = set()  # every open WebSocket, sideband ones included
        self._server: uvicorn.Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop serving calls, once started
        self._thread: threading.Thread | None = None
        worker_routes = [Route("/v1/koe/worker/client_secrets/{value}", self.hand_over_secret,
                               methods=["PUT", "DELETE"])] if worker_key else []
        self.worker_key = worker_key
        self.app = api_app([
            Route("/v1/realtime/calls", self.create_call, methods=["POST"]),
            Route("/v1/realtime/calls/{call_id}/hangup", self.hang_up, methods=["POST"]),
            Route("/v1/realtime/client_secrets", self.create_client_secret, methods=["POST"]),
            Route("/v1/realtime/sessions", self.create_beta_session, methods=["POST"]),
            Route("/v1/realtime", self.create_beta_call, methods=["POST"]),
            WebSocketRoute("/v1/realtime", self.realtime_socket),
            Route("/healthz", lambda request: JSONResponse({"ok": True, **self.admission.load()})),
            Route("/v1/koe/capabilities", lambda request: JSONResponse(self.capabilities())),
            Route("/v1/koe/tokens", self.count_tokens, methods=["POST"]),
            *worker_routes,
        ], cors_origins)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def call_count(self) -> int:
        return len(self._calls)

    def capabilities(self) -> dict:
        """What answers on this server, for clients to show and check (also `GET /v1/koe/capabilities`):

        {"reply_model": {"profile", "model", "size", "context_tokens", "offline"}, "reply_models": [same, per
        bundled profile], "japanese_voices": [...], "voices": {"en": [...], "ja": [...]}, "max_reply_tokens":
        what max_output_tokens "inf" means here, "ignored": [session settings accepted without effect]}.
        With a chat endpoint, reply_model is {"profile": None, "model": its model name, "size": None,
        "context_tokens": None, "offline": False}. Instructions and history beyond context_tokens (less the
        reply) are refused with a `context_length_exceeded` error.
        """
        if self.chat is not None:
            reply = {"profile": None, "model": self.chat.endpoint.model, "size": None, "context_tokens": None,
                     "offline": False}
        else:
            reply = self.reply_profile.describe()
        return {"reply_model": reply, "reply_models": [profile.describe() for profile in PROFILES.values()],
                "japanese_voices": list(JAPANESE_VOICES),
                "voices": {"en": list(ENGLISH_VOICES), "ja": list(JAPANESE_VOICES)},
                "max_reply_tokens": DEFAULT_REPLY_TOKENS,
                "ignored": ["noise_reduction", "transcription.model", "transcription.prompt", "temperature",
                            "reasoning"]}

    async def count_tokens(self, request: Request) -> Response:
        """`POST /v1/koe/tokens` {"text"} → {"tokens", "model", "context_tokens"}: the text's tokens as the
        reply model counts them (its own tokenizer; a chat endpoint's estimate), so a client can check
        instructions against the context before sending them. Needs the server's key (401 otherwise);
        400 when "text" is not a string."""
        self._authorize(request, ephemeral=False)
        text = (await self._json(request)).get("text")
        if not isinstance(text, str):
            raise HttpError(error(400, "Expected a JSON object with a string 'text'.", "invalid_value", param="text"))
        if self.chat is not None:
            replies, model, context = self.chat, self.chat.endpoint.model, None
        else:
            replies, model, context = (await self.models()).llm, self.reply_profile.model, self.reply_profile.context_tokens
        tokens = await asyncio.to_thread(replies.count_tokens, text)
        return JSONResponse({"tokens": tokens, "model": model, "context_tokens": context})

    # -- running -------------------------------------------------------------------------------
    async def serve(self, sock: socket.socket | None = None) -> None:
        """Serve on the running loop (`self.loop` from then on) until stopped; on `sock` (a listening
        socket, as a worker gets from its front) instead of binding host and port."""
        self.loop = asyncio.get_running_loop()
        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # the caller owns signals
        try:
            await self._server.serve(sockets=[sock] if sock is not None else None)
        finally:
            await self.close_calls()

    def start(self, timeout_s: float = 15.0) -> "LocalServer":
        """Serve from a background thread; returns once the port is bound (with `port=0`, a free one)."""
        self._thread = threading.Thread(target=asyncio.run, args=(self.serve(),), name="koe-local", daemon=True)
        self._thread.start()
        self.port = bound_port(lambda: self._server, self._thread, timeout_s, "the local Realtime server")
        log.info("local Realtime server on %s", self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._scheduler.shutdown()
        if self.chat is not None:
            self.chat.close()

    async def close_calls(self) -> None:
        for call_id in list(self._calls):
            await self._end_call(call_id)
        for socket in list(self._sockets):
            socket.close()

    async def models(self) -> LocalModels:
        async with self._models_lock:
            if self._models is None:
                self._models = await asyncio.to_thread(get_models, self.reply_profile.name)
        return self._models

    # -- endpoints -----------------------------------------------------------------------------
    async def create_call(self, request: Request) -> Response:
        """GA: the offer as plain SDP, or a multipart form with `sdp` and `session`."""
        secret = self._authorize(request)
        settings = secret.settings if secret else SessionSettings()
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await self._form(request)
            offer = await self._text(form.get("sdp"), "sdp")
            session = await self._text(form.get("session"), "session")
            await form.close()
            if session is not None:
                settings = self._settings_from(self._object(session, "The session part"), "ga", settings)
        elif content_type.startswith("application/sdp"):
            offer = await self._text(await self._body(request), "sdp")
        else:
            raise HttpError(error(400, "Content-Type must be application/sdp or multipart/form-data.",
                                  "invalid_content_type"))
        return await self._answer(offer, "ga", settings, secret)

    async def create_beta_call(self, request: Request) -> Response:
        """Beta: `POST /v1/realtime?model=...` with the SDP offer and an ephemeral key."""
        secret = self._authorize(request)
        model = request.query_params.get("model")
        if not model:
            raise HttpError(error(400, "Missing required parameter: 'model'.", "missing_required_parameter", "model"))
        self._check_model(model, "model")
        settings = secret.settings if secret else SessionSettings(model=model)  # a beta model: a beta voice
        if settings.model != model:
            raise HttpError(error(400, f"The session was created for {settings.model}, not {model}.",
                                  "invalid_value", "model"))
        offer = await self._text(await self._body(request), "sdp")
        return await self._answer(offer, "beta", settings, secret)

    async def create_client_secret(self, request: Request) -> Response:
        """GA: a key for one session, `{"expires_after": {"anchor": "created_at", "seconds": 10..7200},
        "session": {...}}` (both optional) → `{"value": "ek_...", "expires_at", "session"}`."""
        self._authorize(request, ephemeral=False)
        body = await self._json(request)
        request_body = self._validated(ClientSecretRequest, body)
        seconds = request_body.expires_after.seconds if request_body.expires_after else 600
        settings = self._settings_from(body.get("session") or {"type": "realtime"}, "ga", SessionSettings())
        value, expires_at = self._mint(settings, seconds)
        return JSONResponse({"value": value, "expires_at": int(expires_at),
                             "session": {"object": "realtime.session", **settings.to_wire("ga")}})

    async def create_beta_session(self, request: Request) -> Response:
        self._authorize(request, ephemeral=False)
        body = await self._json(request)
        model = self._validated(BetaSessionRequest, body).model
        if dialect_for_model(model) != "beta":
            raise HttpError(error(400, "model must name a realtime preview model, such as "
                                       "gpt-4o-realtime-preview-2024-12-17.", "invalid_value", "model"))
        settings = self._settings_from(body, "beta", SessionSettings(model=model), prefix="")
        value, expires_at = self._mint(settings, BETA_KEY_TTL_S)
        return JSONResponse({"id": new_id("sess"), "object": "realtime.session", **settings.to_wire("beta"),
                             "client_secret": {"value": value, "expires_at": int(expires_at)}})

    async def hand_over_secret(self, request: Request) -> Response:
        """A worker's end of its front's key office (koe.local.workers): `PUT` {"settings": SessionSettings as
        JSON, "expires_at": epoch s} makes the client secret `value` (minted by the front) live here, for the
        request the front forwards next; `DELETE` takes it back (that request did not spend it). 204; to any
        key but the worker key the route does not exist (404)."""
        if not hmac.compare_digest(self._bearer(request).encode(), (self.worker_key or "").encode()):
            raise HTTPException(404)
        value = request.path_params["value"]
        if request.method == "DELETE":
            self._secrets.pop(value, None)
        else:
            body = await self._json(request)
            self._secrets[value] = ClientSecret(value, SessionSettings.model_validate(body["settings"]),
                                                float(body["expires_at"]))
        return Response(status_code=204)

    def take_secret(self, key: str) -> ClientSecret | None:
        """The live client secret `key` names, taken out of this server's store so that no other request
        spends it meanwhile (`give_back_secret` returns it); None for any other key."""
        secret = self._secrets.pop(key, None)
        if secret is None or secret.expires_at <= time.time():
            return None
        return secret

    def give_back_secret(self, secret: ClientSecret) -> None:
        self._secrets[secret.value] = secret

    async def hang_up(self, request: Request) -> Response:
        """Only the key that created the call, or the server's key, may end it: to any other key the
        call does not exist."""
        key = self._bearer(request)
        call_id = request.path_params["call_id"]
        owner = self._owners.get(call_id)
        if not (self._is_server_key(key) or (owner is not None and hmac.compare_digest(owner.encode(), key.encode()))):
            if not key.startswith("ek_"):
                raise HttpError(error(401, "Incorrect API key provided.", "invalid_api_key"))
            raise HttpError(error(404, f"Call not found: {call_id}", "call_not_found"))
        if call_id not in self._calls:
            raise HttpError(error(404, f"Call not found: {call_id}", "call_not_found"))
        await self._end_call(call_id)
        return Response(status_code=200)

    async def realtime_socket(self, websocket: WebSocket) -> None:
        """`GET /v1/realtime?model=...` as a WebSocket: a session whose events and audio travel on it.

        With `?call_id=rtc_...` instead, a sideband socket on a running WebRTC call: its events,
        and client events into it (OpenAI's server-side control of a call).
        """
        offered, key = socket_key(websocket)
        try:
            secret = self._authorize(websocket, key=key)
            call_id = websocket.query_params.get("call_id")
            if call_id:
                if secret is not None:
                    raise HttpError(error(403, "A sideband connection needs the server's key, not an ephemeral key.",
                                          "invalid_api_key"))
                if call_id not in self._calls:
                    raise HttpError(error(404, f"Call not found: {call_id}", "call_not_found", "call_id"))
                session = self._calls[call_id][1]
            else:
                session = None
                settings, dialect = self._socket_settings(websocket, secret, offered)
        except HttpError as exc:
            await self._refuse(websocket, exc.response)
            return
        subprotocol = "realtime" if ("realtime" in offered or key is not None) else None
        slot = None  # a new session's place in the admission count (a sideband socket takes none)
        if session is None:
            models = await self.models()
            try:
                slot = self._admit(object())
            except HttpError as exc:
                await self._refuse(websocket, exc.response)
                return
        try:
            await websocket.accept(subprotocol=subprotocol)
        except Exception:
            self.admission.leave(slot)
            raise
        transport = SocketTransport(websocket)
        self._sockets.add(transport)
        if session is None:
            if secret is not None:  # a client secret starts one session
                self._secrets.pop(secret.value, None)
            session = self._new_session(dialect, settings, models, transport)
            session.on_end = transport.close
            session.start()
            log.info("WebSocket session %s started (%s, %s)", session.id, dialect, settings.model)
        else:
            session.observe(transport)
            log.info("sideband socket on call %s", call_id)
        try:
            async for message in transport.messages():
                if transport.closed.is_set():
                    break
                session.handle(message)
        finally:
            self.admission.leave(slot)
            self._sockets.discard(transport)
            if session.transport is transport:
                await session.close()
            else:
                session.unobserve(transport)
            transport.close()
            await transport.wait_closed()

    def _socket_settings(self, websocket: WebSocket, secret: ClientSecret | None,
                         offered: list[str]) -> tuple[SessionSettings, Dialect]:
        """The new socket session's settings and dialect, from its key, `model` and beta markers."""
        model = websocket.query_params.get("model")
        if secret is None and not model:
            raise HttpError(error(400, "Missing required parameter: 'model'.", "missing_required_parameter", "model"))
        model = secret.settings.model if secret is not None else model
        self._check_model(model, "model")
        beta_asked = "realtime=v1" in websocket.headers.get("openai-beta", "") or BETA_PROTOCOL in offered
        dialect: Dialect = "beta" if beta_asked or dialect_for_model(model) == "beta" else "ga"
        if secret is not None:
            return secret.settings, dialect
        # A GA model asked for in the beta dialect still starts with a beta voice.
        return SessionSettings(model=model, **({"voice": BETA_VOICES[0]} if dialect == "beta" else {})), dialect

    @staticmethod
    async def _refuse(websocket: WebSocket, response: JSONResponse) -> None:
        """Refuse a WebSocket before accepting it: the HTTP error itself where the server can send one."""
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(response)
        else:
            await websocket.close(code=1008)

    # -- calls ---------------------------------------------------------------------------------
    def _new_session(self, dialect: Dialect, settings: SessionSettings, models: LocalModels,
                     transport: DataChannelTransport | SocketTransport) -> LocalSession:
        return LocalSession(dialect, settings, models, self._scheduler, transport, max_session_s=self.max_session_s,
                            replies=self.chat)

    async def _answer(self, offer: str | None, dialect: Dialect, settings: SessionSettings,
                      secret: ClientSecret | None) -> Response:
        """Answer a checked offer with a new call; `secret` (the key that asked) is spent by it."""
        if not offer:
            raise HttpError(error(400, "Missing required parameter: 'sdp' (the SDP offer).",
                                  "missing_required_parameter", "sdp"))
        try:
            check_offer(offer)
        except OfferError as exc:
            raise HttpError(error(400, str(exc), "invalid_offer", "sdp")) from None
        models = await self.models()
        call_id = self._admit(new_id("rtc"))
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        transport = DataChannelTransport()
        session = self._new_session(dialect, settings, models, transport)
        session.on_end = lambda: asyncio.ensure_future(self._end_call(call_id))
        self._calls[call_id] = (pc, session)

        @pc.on("datachannel")
        def on_channel(channel) -> None:
            if channel.label == "oai-events":
                transport.open(channel)
                channel.on("message", session.handle)
                session.start()

        @pc.on("track")
        def on_track(track) -> None:
            if track.kind == "audio":
                session.listen(track)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected" and call_id in self._unconnected:
                self._unconnected.pop(call_id).cancel()
            if pc.connectionState in ("failed", "closed"):
                await self._end_call(call_id)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            pc.addTrack(transport.playback)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc raises ValueError and friends on offers it cannot use
            await self._end_call(call_id)
            raise HttpError(error(400, f"The SDP offer could not be used: {exc}", "invalid_offer", "sdp")) from exc
        if secret is not None:
            self._secrets.pop(secret.value, None)
            self._owners[call_id] = secret.value
        self._unconnected[call_id] = asyncio.get_running_loop().call_later(
            self.offer_timeout_s, lambda: asyncio.ensure_future(self._end_unconnected(call_id)))
        log.info("call %s started (%s, %s)", call_id, dialect, settings.model)
        return Response(pc.localDescription.sdp, status_code=201, media_type="application/sdp",
                        headers={"Location": f"/v1/realtime/calls/{call_id}"})

    async def _end_unconnected(self, call_id: str) -> None:
        """An answered offer whose peer never connected (the client went away): free what it holds."""
        self._unconnected.pop(call_id, None)
        if call_id in self._calls:
            log.info("call %s: the peer did not connect within %.0f s; closing it", call_id, self.offer_timeout_s)
            await self._end_call(call_id)

    async def _end_call(self, call_id: str) -> None:
        timer = self._unconnected.pop(call_id, None)
        if timer is not None:
            timer.cancel()
        self._owners.pop(call_id, None)
        self.admission.leave(call_id)
        entry = self._calls.pop(call_id, None)
        if entry is None:
            return
        pc, session = entry
        for socket in session.observers:  # its sideband sockets end with it
            socket.close()
        await session.close()
        await pc.close()
        log.info("call %s ended", call_id)

    # -- request helpers -----------------------------------------------------------------------
    @staticmethod
    def _bearer(request: HTTPConnection) -> str:
        auth = request.headers.get("authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else ""

    def _is_server_key(self, key: str) -> bool:
        """The server's own key; on a server without one, any key but an ephemeral one."""
        if self.api_key is None:
            return not key.startswith("ek_")
        return hmac.compare_digest(key.encode(), self.api_key.encode())
    def _admit(self, key: Hashable) -> Hashable:
        """Take a slot for a new conversation under `key` (returned), or refuse it: 429 in OpenAI's
        shape with `Retry-After`, before any media flows."""
        if not self.admission.enter(key):
            log.info("refused a new conversation: %d of %d running", self.admission.running, self.admission.max_calls)
            raise HttpError(session_limit(self.admission.max_calls, self.admission.retry_after_s()))
        return key

    def _authorize(self, request: HTTPConnection, ephemeral: bool = True, key: str | None = None) -> ClientSecret | None:
        """Check the key (the bearer header unless `key` is given, as a browser's WebSocket subprotocol
        gives it): the server's own key (→ None), or where allowed a live, unspent client secret.
        Raises HttpError 401 otherwise."""
        if key is None:
            key = self._bearer(request)
        now = time.time()
        self._secrets = {k: s for k, s in self._secrets.items() if s.expires_at > now}
        if key.startswith("ek_"):
            secret = self._secrets.get(key)
            if secret is None:
                raise HttpError(error(401, "The ephemeral key has expired or was already used; mint a new one.",
                                      "invalid_api_key"))
            if not ephemeral:
                raise HttpError(error(401, "An ephemeral key cannot be used here; use the API key.",
                                      "invalid_api_key"))
            return secret
        if self._is_server_key(key):
            return None
        raise HttpError(error(401, "Incorrect API key provided.", "invalid_api_key"))

    def _mint(self, settings: SessionSettings, ttl_s: int) -> tuple[str, float]:
        value = "ek_" + secrets.token_urlsafe(24)
        expires_at = time.time() + ttl_s
        self._secrets[value] = ClientSecret(value, settings, expires_at)
        return value, expires_at

    def _settings_from(self, session: dict, dialect: Dialect, base: SessionSettings,
                       prefix: str = "session") -> SessionSettings:
        """The settings a new session starts with: `base` changed by a wire `session` object, checked
        as session.update checks it, plus the model and voice this server serves. `prefix` is where
        the object sits in the request, for `param`."""
        self._validated(GaSession if dialect == "ga" else BetaSession, session, prefix)
        if isinstance(session.get("model"), str):  # a new call may name its model
            base = base.model_copy(update={"model": session["model"]})
        self._check_model(base.model, ".".join(p for p in (prefix, "model") if p))
        try:
            settings = base.merge_wire(dialect, session)
            validate_for_dialect(settings, dialect, LOCAL_VOICES)
        except SettingsError as exc:
            param = ".".join(p for p in (prefix, wire_path(dialect, exc.field)) if p)
            raise HttpError(error(400, f"Invalid value for '{param}': {exc.message}", "invalid_value", param)) from None
        if (missing := unsupported("session", session, dialect)) is not None:
            raise HttpError(error(400, f"Not supported by this server: {missing[1]}.", "unsupported_feature",
                                  missing[0]))
        return settings

    @staticmethod
    def _check_model(model: str, param: str) -> None:
        if not served_model(model):
            raise HttpError(error(400, f"The model '{model[:100]}' is not served here: use a gpt-realtime model or "
                                       "gpt-4o(-mini)-realtime-preview-2024-12-17.", "invalid_value", param))

    @staticmethod
    def _validated(model: type[BaseModel], data: dict, prefix: str = "") -> BaseModel:
        """`data` checked against one of koe.protocol.wire's request shapes (HttpError 400 in OpenAI's words)."""
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            refused = wire_error(exc, data, prefix)
            raise HttpError(error(400, refused.message, refused.code, refused.param)) from None

    @staticmethod
    def _check_length(request: Request, limit: int) -> None:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise HttpError(error(413, f"The request body is too large (at most {limit // 1024} KB).",
                                  "request_too_large"))

    async def _body(self, request: Request, limit: int = MAX_BODY) -> bytes:
        """The body, read no further than `limit` bytes (HttpError 413 beyond)."""
        self._check_length(request, limit)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HttpError(error(413, f"The request body is too large (at most {limit // 1024} KB).",
                                      "request_too_large"))
        return bytes(body)

    async def _form(self, request: Request) -> FormData:
        """The multipart form (parts `sdp` and `session`), its whole body read within the limit first."""
        body = await self._body(request, 2 * MAX_BODY)

        async def stream():
            yield body

        try:
            return await MultiPartParser(request.headers, stream(), max_files=2, max_fields=2,
                                         max_part_size=MAX_BODY).parse()
        except MultiPartException as exc:
            raise HttpError(error(400, f"The multipart form could not be read: {exc.message}", "invalid_multipart")) \
                from None

    @staticmethod
    async def _text(part: object, name: str) -> str | None:
        """A body or form part as text: UTF-8 (HttpError 400 when it is not), None when absent."""
        if part is None or isinstance(part, str):
            return part
        data = await part.read() if hasattr(part, "read") else part
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HttpError(error(400, f"The '{name}' part is not valid UTF-8 (byte {exc.start}).", "invalid_encoding",
                                  name)) from None

    @staticmethod
    def _object(text: str, what: str) -> dict:
        try:
            return loads_object(text, what)
        except WireError as exc:
            raise HttpError(error(400, exc.message, exc.code)) from None

    async def _json(self, request: Request) -> dict:
        body = await self._body(request)
        return self._object(body or b"{}", "The request body")
