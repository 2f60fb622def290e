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
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import uvicorn
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from koe.local.admission import Admission, default_max_calls
from koe.local.session import DEFAULT_REPLY_TOKENS, LocalSession, unsupported
from koe.local.stages.chat import DEFAULT_TIMEOUT_S, ChatEndpoint, ChatModel
from koe.local.stages.llm import PROFILES, reply_profile
from koe.local.stages.models import LocalModels, get_models
from koe.local.transports import DataChannelTransport, SocketTransport
from koe.local.voices import ENGLISH_VOICES, JAPANESE_VOICES
from koe.protocol import BETA_VOICES, Dialect, SessionSettings, SettingsError, dialect_for_model, new_id

log = logging.getLogger("koe.local")

BETA_KEY_TTL_S = 60
MAX_BODY = 256 * 1024
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


class HttpError(Exception):
    def __init__(self, response: JSONResponse) -> None:
        self.response = response


@dataclass
class ClientSecret:
    settings: SessionSettings
    expires_at: float


def bound_port(server: Callable[[], uvicorn.Server | None], thread: threading.Thread, timeout_s: float,
               what: str) -> int:
    """The port of a uvicorn server starting on `thread`, once bound (`server()` is None until it exists)."""
    deadline = time.monotonic() + timeout_s
    while not (server() and server().started):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.02)
    return server().servers[0].sockets[0].getsockname()[1]


class LocalServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = None,
                 max_session_s: float = 3600.0, models: LocalModels | None = None,
                 chat_base_url: str | None = None, chat_model: str | None = None, chat_api_key: str | None = None,
                 chat_timeout_s: float = DEFAULT_TIMEOUT_S, reply_model: str | None = None,
                 cors_origins: list[str] | None = None, max_calls: int | None = None) -> None:
        """`chat_*` (else $KOE_CHAT_BASE_URL, $KOE_CHAT_MODEL, $KOE_CHAT_API_KEY) send the replies to an
        OpenAI-compatible chat-completions endpoint instead of the bundled model. `reply_model` names the
        bundled model's profile (else $KOE_REPLY_MODEL, else "default"; ValueError if unknown); `models`,
        when given, brings its own.

        `cors_origins`: origins whose pages may call the API (else $KOE_CORS_ORIGINS, else any:
        access is by bearer key, never by cookie, so a foreign page gains nothing without one).

        `max_calls`: conversations (WebRTC calls and WebSocket sessions) served at once, else
        $KOE_LOCAL_MAX_CALLS, else one per core (koe.local.admission); 0 = no limit. Beyond it a new
        one is refused with 429 and `Retry-After` before any media flows.
        """
        self.host, self.port = host, port
        self.reply_profile = models.llm.profile if models is not None else reply_profile(reply_model)
        self.api_key = api_key
        self.max_session_s = max_session_s
        self.admission = Admission(default_max_calls() if max_calls is None else max_calls)
        self._models = models
        endpoint = ChatEndpoint.configured(chat_base_url, chat_model, chat_api_key, chat_timeout_s)
        self.chat: ChatModel | None = ChatModel(endpoint) if endpoint else None
        self._models_lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="koe-models")
        self._secrets: dict[str, ClientSecret] = {}
        self._calls: dict[str, tuple[RTCPeerConnection, LocalSession]] = {}
        self._sockets: set[SocketTransport] = set()  # every open WebSocket, sideband ones included
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(routes=[
            Route("/v1/realtime/calls", self.create_call, methods=["POST"]),
            Route("/v1/realtime/calls/{call_id}/hangup", self.hang_up, methods=["POST"]),
            Route("/v1/realtime/client_secrets", self.create_client_secret, methods=["POST"]),
            Route("/v1/realtime/sessions", self.create_beta_session, methods=["POST"]),
            Route("/v1/realtime", self.create_beta_call, methods=["POST"]),
            WebSocketRoute("/v1/realtime", self.realtime_socket),
            Route("/healthz", lambda request: JSONResponse({"ok": True, **self.admission.load()})),
            Route("/v1/koe/capabilities", lambda request: JSONResponse(self.capabilities())),
        ], exception_handlers={HttpError: lambda request, exc: exc.response}, middleware=[
            Middleware(CORSMiddleware, allow_origins=cors_origins or cors_origins_from(os.environ.get("KOE_CORS_ORIGINS")),
                       allow_methods=["GET", "POST", "OPTIONS"], allow_headers=CORS_HEADERS, expose_headers=["Location"]),
        ])

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

    # -- running -------------------------------------------------------------------------------
    async def serve(self) -> None:
        """Serve on the running loop until stopped."""
        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # the caller owns signals
        try:
            await self._server.serve()
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
        self._executor.shutdown(wait=False, cancel_futures=True)
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
                self._models = await asyncio.get_running_loop().run_in_executor(
                    self._executor, get_models, self.reply_profile.name)
        return self._models

    # -- endpoints -----------------------------------------------------------------------------
    async def create_call(self, request: Request) -> Response:
        """GA: the offer as plain SDP, or a multipart form with `sdp` and `session`."""
        secret = self._authorize(request)
        settings = secret.settings if secret else SessionSettings()
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            offer = form.get("sdp")
            offer = (await offer.read()).decode() if hasattr(offer, "read") else offer
            session = form.get("session")
            if session is not None:
                session = (await session.read()).decode() if hasattr(session, "read") else session
                settings = self._settings_from(session, "ga", settings)
        elif content_type.startswith("application/sdp"):
            offer = (await self._body(request)).decode(errors="replace")
        else:
            raise HttpError(error(400, "Content-Type must be application/sdp or multipart/form-data.",
                                  "invalid_content_type"))
        return await self._answer(offer, "ga", settings)

    async def create_beta_call(self, request: Request) -> Response:
        """Beta: `POST /v1/realtime?model=...` with the SDP offer and an ephemeral key."""
        secret = self._authorize(request)
        model = request.query_params.get("model")
        if not model:
            raise HttpError(error(400, "Missing required parameter: 'model'.", "missing_required_parameter", "model"))
        settings = secret.settings if secret else SessionSettings(model=model)  # a beta model: a beta voice
        if settings.model != model:
            raise HttpError(error(400, f"The session was created for {settings.model}, not {model}.",
                                  "invalid_value", "model"))
        offer = (await self._body(request)).decode(errors="replace")
        return await self._answer(offer, "beta", settings)

    async def create_client_secret(self, request: Request) -> Response:
        self._authorize(request, ephemeral=False)
        body = await self._json(request)
        expires = body.get("expires_after") or {}
        seconds = expires.get("seconds", 600)
        if not isinstance(seconds, int) or not 10 <= seconds <= 7200:
            raise HttpError(error(400, "expires_after.seconds must be an integer from 10 to 7200.",
                                  "invalid_value", "expires_after.seconds"))
        session = body.get("session") or {"type": "realtime"}
        settings = self._settings_from(json.dumps(session), "ga", SessionSettings())
        value, expires_at = self._mint(settings, seconds)
        return JSONResponse({"value": value, "expires_at": int(expires_at),
                             "session": {"object": "realtime.session", **settings.to_wire("ga")}})

    async def create_beta_session(self, request: Request) -> Response:
        self._authorize(request, ephemeral=False)
        body = await self._json(request)
        model = body.get("model")
        if not isinstance(model, str) or dialect_for_model(model) != "beta":
            raise HttpError(error(400, "model must name a realtime preview model, such as "
                                       "gpt-4o-realtime-preview-2024-12-17.", "invalid_value", "model"))
        settings = self._settings_from(json.dumps(body), "beta", SessionSettings(model=model))
        value, expires_at = self._mint(settings, BETA_KEY_TTL_S)
        return JSONResponse({"id": new_id("sess"), "object": "realtime.session", **settings.to_wire("beta"),
                             "client_secret": {"value": value, "expires_at": int(expires_at)}})

    async def hang_up(self, request: Request) -> Response:
        self._authorize(request)
        call_id = request.path_params["call_id"]
        if call_id not in self._calls:
            raise HttpError(error(404, f"Call not found: {call_id}", "call_not_found"))
        await self._end_call(call_id)
        return Response(status_code=200)

    async def realtime_socket(self, websocket: WebSocket) -> None:
        """`GET /v1/realtime?model=...` as a WebSocket: a session whose events and audio travel on it.

        With `?call_id=rtc_...` instead, a sideband socket on a running WebRTC call: its events,
        and client events into it (OpenAI's server-side control of a call).
        """
        offered = [p.strip() for p in websocket.scope.get("subprotocols", [])]
        key = next((p[len(INSECURE_KEY_PROTOCOL):] for p in offered if p.startswith(INSECURE_KEY_PROTOCOL)), None)
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
        return LocalSession(dialect, settings, models, self._executor, transport, max_session_s=self.max_session_s,
                            replies=self.chat)

    async def _answer(self, offer: str | None, dialect: Dialect, settings: SessionSettings) -> Response:
        if not offer or not offer.startswith("v=0") or "m=audio" not in offer:
            raise HttpError(error(400, "The body must be an SDP offer with an audio m-line.", "invalid_offer", "sdp"))
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
            if pc.connectionState in ("failed", "closed"):
                await self._end_call(call_id)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            pc.addTrack(transport.playback)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc raises ValueError and friends on offers it cannot use
            await self._end_call(call_id)
            raise HttpError(error(400, f"The SDP offer could not be used: {exc}", "invalid_offer", "sdp")) from exc
        log.info("call %s started (%s, %s)", call_id, dialect, settings.model)
        return Response(pc.localDescription.sdp, status_code=201, media_type="application/sdp",
                        headers={"Location": f"/v1/realtime/calls/{call_id}"})

    async def _end_call(self, call_id: str) -> None:
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
    def _admit(self, key: Hashable) -> Hashable:
        """Take a slot for a new conversation under `key` (returned), or refuse it: 429 in OpenAI's
        shape with `Retry-After`, before any media flows."""
        if not self.admission.enter(key):
            message, wait = self.admission.refusal()
            log.info("refused a new conversation: %d of %d running", self.admission.running, self.admission.max_calls)
            response = error(429, message, "session_limit_reached", type_="rate_limit_error")
            response.headers["Retry-After"] = str(wait)
            raise HttpError(response)
        return key

    def _authorize(self, request: HTTPConnection, ephemeral: bool = True, key: str | None = None) -> ClientSecret | None:
        """Check the key (the bearer header unless `key` is given, as a browser's WebSocket subprotocol
        gives it): the server's own key, or (where allowed) a live client secret."""
        auth = request.headers.get("authorization", "")
        if key is None:
            key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        now = time.time()
        self._secrets = {k: s for k, s in self._secrets.items() if s.expires_at > now}
        if ephemeral and key in self._secrets:
            return self._secrets[key]
        if self.api_key is None or hmac.compare_digest(key.encode(), self.api_key.encode()):
            return None
        raise HttpError(error(401, "Incorrect API key provided.", "invalid_api_key"))

    def _mint(self, settings: SessionSettings, ttl_s: int) -> tuple[str, float]:
        value = "ek_" + secrets.token_urlsafe(24)
        expires_at = time.time() + ttl_s
        self._secrets[value] = ClientSecret(settings, expires_at)
        return value, expires_at

    def _settings_from(self, raw: str, dialect: Dialect, base: SessionSettings) -> SessionSettings:
        try:
            session = json.loads(raw)
            if not isinstance(session, dict):
                raise ValueError("the session must be a JSON object")
            if isinstance(session.get("model"), str):  # a new call may name its model
                base = base.model_copy(update={"model": session["model"]})
            settings = base.merge_wire(dialect, session)
        except (ValueError, SettingsError) as exc:
            raise HttpError(error(400, f"Invalid session: {exc}", "invalid_value", "session")) from exc
        if (missing := unsupported("session", session, dialect)) is not None:
            raise HttpError(error(400, f"Not supported by this server: {missing[1]}.", "unsupported_feature",
                                  missing[0]))
        return settings

    async def _body(self, request: Request) -> bytes:
        body = await request.body()
        if len(body) > MAX_BODY:
            raise HttpError(error(413, "The request body is too large.", "request_too_large"))
        return body

    async def _json(self, request: Request) -> dict:
        try:
            body = json.loads(await self._body(request) or b"{}")
        except ValueError as exc:
            raise HttpError(error(400, f"We could not parse the JSON body of your request: {exc}",
                                  "invalid_json")) from exc
        if not isinstance(body, dict):
            raise HttpError(error(400, "The JSON body must be an object.", "invalid_json"))
        return body
