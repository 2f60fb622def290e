"""`python -m koe.local --workers N`: N model processes behind one address.

Each worker is a whole koe.local (`LocalServer`: its own models, its own model threads sized to its share of
the cores, `$KOE_LOCAL_CORES`) serving on a loopback socket that the front binds and hands it, so a worker's
port stays the same across restarts. The front (`WorkerFront`) answers on the public address:

- a new conversation (`POST /v1/realtime/calls`, beta `POST /v1/realtime?model=`, WebSocket `GET /v1/realtime`)
  goes to the least-loaded worker (its /healthz calls, plus the calls the front is forwarding to it now, over
  its capacity); when every worker is full, that worker's own 429 `session_limit_reached` is relayed as is.
- `POST /v1/realtime/calls/{id}/hangup` and a sideband socket (`GET /v1/realtime?call_id=`) go to the worker
  holding the call (learned from the `Location` of its answer).
- a WebSocket is proxied both ways: text and binary frames as they are, close codes kept; refused during the
  handshake with the worker's own answer.
- `POST /v1/realtime/client_secrets` and beta `/v1/realtime/sessions` are answered by the front (see below).
- `GET /healthz` sums the workers; every other request (`/v1/koe/capabilities`, `/v1/koe/tokens`, unknown
  paths) is answered by the least-loaded worker, so its answers and errors are the single process's.

The front watches its workers: one that exits is started again (logged; the calls it held are gone), and
SIGINT/SIGTERM stop them all. `--max-calls` is the total, divided among the workers.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import uvicorn
import websockets
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketState
from websockets.exceptions import ConnectionClosed, InvalidStatus

from koe.local.scheduler import CORES_ENV
from koe.local.server import (MAX_BODY, ClientSecret, HttpError, LocalServer, api_app, error, listening_socket,
                              session_limit, socket_key)

__all__ = ["WORKERS_ENV", "WorkerEnv", "WorkerFront", "shares"]

log = logging.getLogger("koe.local")

WORKERS_ENV = "KOE_LOCAL_WORKERS"
# How the front tells a process it is a worker: the listening socket it serves on, the key of the internal
# channel (never on a command line, where `ps` would show it) and its number, for its log lines.
WORKER_FD_ENV, WORKER_KEY_ENV, WORKER_INDEX_ENV = "KOE_LOCAL_WORKER_FD", "KOE_LOCAL_WORKER_KEY", "KOE_LOCAL_WORKER"
REQUEST_HEADERS = ("authorization", "content-type", "openai-beta")  # what a worker reads of a request
RESPONSE_HEADERS = ("content-type", "location", "retry-after")  # what a client reads of an answer (CORS: the front's)
READY_TIMEOUT_S = 600.0  # for a worker's models to load
RESTART_DELAYS_S = (1, 2, 5, 10, 30)  # after a worker exits within a minute of its start, the next wait
CALLS_REMEMBERED = 4096  # call id → worker; far more than run at once (an ended call's entry ages out)
MAX_MESSAGE = 16 * 1024 * 1024  # uvicorn's own limit on a WebSocket message
STOP_TIMEOUT_S = 10.0


def shares(total: int, parts: int) -> list[int]:
    """`total` divided into `parts` whole shares as even as can be, larger first: shares(5, 2) == [3, 2]."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@dataclass(frozen=True)
class WorkerEnv:
    """What a worker process is told by its front, read from its environment (None: not a worker)."""

    index: int
    fd: int
    key: str

    @classmethod
    def from_environ(cls) -> "WorkerEnv | None":
        """This process's worker settings; None when no front started it (KeyError/ValueError if half set)."""
        if WORKER_FD_ENV not in os.environ:
            return None
        return cls(int(os.environ[WORKER_INDEX_ENV]), int(os.environ[WORKER_FD_ENV]), os.environ[WORKER_KEY_ENV])

    def socket(self) -> socket.socket:
        """The listening socket the front bound for this worker."""
        return socket.socket(fileno=self.fd)


@dataclass
class Worker:
    """One worker process as the front sees it. `pending`: requests being forwarded to it now, a new
    conversation among them not yet counted by its /healthz (so that two calls arriving at once are not
    both sent to the same idle worker)."""

    index: int  # 1-based
    sock: socket.socket
    max_calls: int
    cores: int
    process: asyncio.subprocess.Process | None = None
    http: httpx.AsyncClient | None = None
    ready: bool = False
    restarts: int = 0
    pending: int = 0
    started_at: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"


def _die_with_parent() -> None:
    """In a worker before it runs (Linux): SIGTERM it when the front dies, even by SIGKILL, so no worker
    outlives its front holding its models' memory."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class WorkerFront:
    """The public server in front of `count` workers (each `python -m koe.local <worker_args>`).

    `max_calls`: conversations at once in all (0 = no limit), divided among the workers; ValueError when it
    is fewer than the workers (a worker with a share of 0 would have no limit). `env`: the workers'
    environment (default: this process's), where the server key and a chat endpoint's key travel.
    """

    def __init__(self, count: int, worker_args: list[str], *, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, max_calls: int = 0, cores: int = 1,
                 cors_origins: list[str] | None = None, reply_model: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        if count < 1:
            raise ValueError("workers must be 1 or more")
        if 0 < max_calls < count:
            raise ValueError(f"max calls must be 0 (no limit) or at least the workers ({count}): each takes one or more")
        self.host, self.port = host, port
        self.max_calls = max_calls
        self._worker_args = worker_args
        self._env = dict(os.environ if env is None else env)
        self._worker_key = secrets.token_urlsafe(32)
        self.workers = [Worker(i + 1, listening_socket("127.0.0.1", 0), calls, max(1, share))
                        for i, (calls, share) in enumerate(zip(shares(max_calls, count), shares(cores, count)))]
        # Client secrets: the front mints and keeps them (the single process's own code and checks), and hands
        # one to the worker that takes its call just before forwarding that call, over the internal channel
        # (LocalServer.hand_over_secret, the worker key). Not stateless signed keys: a key starts one session
        # only, which needs one place that knows it was spent; the front is that place (a key is out of its
        # store while a request uses it, and back if the worker did not spend it).
        self.keys = LocalServer(api_key=api_key, reply_model=reply_model, max_calls=0)
        self._calls: dict[str, Worker] = {}  # call id → the worker holding it
        self._watchers: list[asyncio.Task] = []
        self._stopping = False
        self._server: uvicorn.Server | None = None
        self.app = api_app([
            Route("/healthz", self.health),
            Route("/v1/realtime/client_secrets", self.keys.create_client_secret, methods=["POST"]),
            Route("/v1/realtime/sessions", self.keys.create_beta_session, methods=["POST"]),
            Route("/v1/realtime/calls/{call_id}/hangup", self.forward, methods=["POST"]),
            WebSocketRoute("/v1/realtime", self.socket),
            Route("/{path:path}", self.forward, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ], cors_origins)

    # -- running -------------------------------------------------------------------------------
    async def serve(self, on_ready: Callable[[int], None] | None = None) -> None:
        """Start every worker and wait for their models, then serve until SIGINT/SIGTERM; stop the workers.
        `on_ready(port)` is called once the front listens (with `port=0`, a free one). RuntimeError when a
        worker exits before it is ready."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def stop() -> None:  # while starting: give up at once; while serving: as uvicorn stops, gracefully
            self._stopping = True  # a worker ending now (Ctrl-C reaches it too) is not restarted
            if self._server is None:
                task.cancel()
            else:
                self._server.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=5)
        listening = listening_socket(self.host, self.port)  # first: a port in use is said before any model loads
        self.port = listening.getsockname()[1]
        try:
            started = time.monotonic()
            log.info("starting %d workers", len(self.workers))
            try:
                async with asyncio.TaskGroup() as starting:  # one failing stops the others' waiting
                    for worker in self.workers:
                        starting.create_task(self._start(worker))
            except* RuntimeError as failed:
                raise failed.exceptions[0] from None
            log.info("all %d workers ready in %.1f s", len(self.workers), time.monotonic() - started)
            self._watchers = [asyncio.create_task(self._watch(worker)) for worker in self.workers]
            self._server = uvicorn.Server(config)
            self._server.install_signal_handlers = lambda: None  # ours above
            serving = asyncio.ensure_future(self._server.serve(sockets=[listening]))
            while not self._server.started and not serving.done():
                await asyncio.sleep(0.05)
            if self._server.started and on_ready is not None:
                on_ready(self.port)
            await serving
        finally:
            listening.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self._stop_workers()
            self.keys.stop()

    async def _start(self, worker: Worker) -> None:
        """Start the worker's process and wait until it answers; RuntimeError if it exits first."""
        env = {**self._env, CORES_ENV: str(worker.cores), WORKERS_ENV: "1", WORKER_FD_ENV: str(worker.sock.fileno()),
               WORKER_KEY_ENV: self._worker_key, WORKER_INDEX_ENV: str(worker.index)}
        worker.started_at = time.monotonic()
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "koe.local", *self._worker_args, "--max-calls", str(worker.max_calls),
            env=env, pass_fds=(worker.sock.fileno(),), preexec_fn=_die_with_parent)
        log.info("worker %d starting (pid %d, %d core(s), %s calls at once) on %s", worker.index, worker.process.pid,
                 worker.cores, worker.max_calls or "unlimited", worker.url)
        worker.http = httpx.AsyncClient(base_url=worker.url, timeout=httpx.Timeout(60.0, connect=5.0),
                                        trust_env=False)  # loopback: never through an HTTP proxy
        deadline = time.monotonic() + READY_TIMEOUT_S
        while await self._health(worker, timeout_s=2.0) is None:
            # The socket listens from the start, so a request waits until the worker serves (models loaded).
            if worker.process.returncode is not None or time.monotonic() > deadline:
                if worker.process.returncode is None:  # stuck: ended, so that its watcher starts it again
                    worker.process.kill()
                    await worker.process.wait()
                raise RuntimeError(f"worker {worker.index} (pid {worker.process.pid}) did not start: "
                                   f"exit code {worker.process.returncode}")
        worker.ready = True
        log.info("worker %d ready in %.1f s", worker.index, time.monotonic() - worker.started_at)

    async def _watch(self, worker: Worker) -> None:
        """Start the worker again whenever it exits (waiting longer after each quick exit)."""
        quick_exits = 0
        while True:
            code = await worker.process.wait()
            if self._stopping:
                return
            worker.ready = False
            for call in [call for call, holder in self._calls.items() if holder is worker]:
                del self._calls[call]
            await worker.http.aclose()
            worker.restarts += 1
            quick_exits = quick_exits + 1 if time.monotonic() - worker.started_at < 60 else 0
            delay = RESTART_DELAYS_S[min(quick_exits, len(RESTART_DELAYS_S)) - 1] if quick_exits else 0
            log.warning("worker %d (pid %d) exited with code %s: its calls and sessions ended; restarting it%s",
                        worker.index, worker.process.pid, code, f" in {delay} s" if delay else "")
            await asyncio.sleep(delay)
            try:
                await self._start(worker)
            except RuntimeError as exc:
                log.error("%s", exc)

    async def _stop_workers(self) -> None:
        """SIGTERM every worker; SIGKILL the ones still running after STOP_TIMEOUT_S."""
        self._stopping = True
        for watcher in self._watchers:
            watcher.cancel()
        running = [w.process for w in self.workers if w.process is not None and w.process.returncode is None]
        for process in running:
            process.terminate()
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), STOP_TIMEOUT_S)
        except TimeoutError:
            for process in running:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        for worker in self.workers:
            if worker.http is not None:
                await worker.http.aclose()
            worker.sock.close()
        log.info("stopped %d workers", len(self.workers))

    # -- choosing a worker ---------------------------------------------------------------------
    async def _health(self, worker: Worker, timeout_s: float = 2.0) -> dict | None:
        """The worker's /healthz ({"ok", "calls", "max_calls", "load", "full"}), None when it does not answer."""
        try:
            response = await worker.http.get("/healthz", timeout=timeout_s)
            return response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    async def _pick(self) -> Worker:
        """The least-loaded ready worker (a full one when all are: it refuses as a single process does).
        HttpError 503 while none is ready (all restarting)."""
        ready = [worker for worker in self.workers if worker.ready]
        if not ready:
            refused = error(503, "The local backend is restarting; try again in a few seconds.", "server_unavailable",
                            type_="server_error")
            refused.headers["Retry-After"] = "5"
            raise HttpError(refused)
        loads = await asyncio.gather(*(self._health(worker) for worker in ready))

        def load(i: int) -> float:
            worker, health = ready[i], loads[i]
            if health is None:
                return float("inf")
            return (health["calls"] + worker.pending) / (worker.max_calls or 1)

        return ready[min(range(len(ready)), key=load)]

    def _holder(self, call_id: str | None) -> Worker | None:
        """The worker holding a call; None for a call it does not know (then any worker answers, as a single
        process does for a call it does not have)."""
        worker = self._calls.get(call_id or "")
        return worker if worker is not None and worker.ready else None

    def _remember(self, call_id: str, worker: Worker) -> None:
        self._calls[call_id] = worker
        while len(self._calls) > CALLS_REMEMBERED:
            del self._calls[next(iter(self._calls))]

    # -- client secrets ------------------------------------------------------------------------
    async def _hand(self, worker: Worker, key: str | None) -> ClientSecret | None:
        """Make the front's live client secret `key` live on `worker` for one request (None when `key` names
        none: the worker then answers for it as for any key)."""
        secret = self.keys.take_secret(key) if key and key.startswith("ek_") else None
        if secret is not None:
            try:
                handed = await worker.http.put(f"/v1/koe/worker/client_secrets/{secret.value}",
                                               headers={"Authorization": f"Bearer {self._worker_key}"},
                                               json={"settings": secret.settings.model_dump(mode="json"),
                                                     "expires_at": secret.expires_at})
                handed.raise_for_status()
            except httpx.HTTPError:
                self.keys.give_back_secret(secret)
                raise
        return secret

    async def _settle(self, worker: Worker, secret: ClientSecret | None, spent: bool) -> None:
        """After the request: a spent key is gone from the front; an unspent one is back in the front's store
        and taken back from the worker (so that it cannot be spent there later as well)."""
        if secret is None or spent:
            return
        self.keys.give_back_secret(secret)
        try:
            await worker.http.delete(f"/v1/koe/worker/client_secrets/{secret.value}",
                                     headers={"Authorization": f"Bearer {self._worker_key}"})
        except httpx.HTTPError:
            pass  # the worker is gone, and the key with it

    # -- endpoints -----------------------------------------------------------------------------
    async def health(self, request: Request) -> JSONResponse:
        """`GET /healthz`: {"ok": every worker answered, "calls", "max_calls", "load", "full": no worker takes
        another call, "workers": [{"worker", "pid", "ready", "restarts", "ok", "calls", "max_calls", "load",
        "full"}]} (the sums over the workers; a worker not answering counts as full)."""
        answers = await asyncio.gather(*(self._health(worker) if worker.ready else asyncio.sleep(0)
                                         for worker in self.workers))
        per = [{"worker": worker.index, "pid": worker.process.pid if worker.process else None, "ready": worker.ready,
                "restarts": worker.restarts, **(health or {"ok": False, "calls": 0, "max_calls": worker.max_calls,
                                                           "load": 0.0, "full": True})}
               for worker, health in zip(self.workers, answers)]
        calls = sum(w["calls"] for w in per)
        return JSONResponse({"ok": all(w["ok"] for w in per), "calls": calls, "max_calls": self.max_calls,
                             "load": round(calls / self.max_calls, 3) if self.max_calls else 0.0,
                             "full": all(w["full"] for w in per), "workers": per})

    async def forward(self, request: Request) -> Response:
        """Any request but the ones the front answers: to the worker holding the call it names (hang-up),
        else to the least-loaded worker; its answer relayed as is. The body is read first, within the single
        process's limit (413). 502 in OpenAI's shape if the worker goes away while answering."""
        body = await self.keys._body(request, 2 * MAX_BODY)
        worker = self._holder(request.path_params.get("call_id")) or await self._pick()
        path = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string") or b""
        target = path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        headers = {name: request.headers[name] for name in REQUEST_HEADERS if name in request.headers}
        worker.pending += 1
        secret = None
        try:
            secret = await self._hand(worker, LocalServer._bearer(request))
            answer = await worker.http.request(request.method, target, content=body, headers=headers)
        except httpx.HTTPError as exc:
            await self._settle(worker, secret, spent=False)
            log.warning("worker %d did not answer %s %s: %r", worker.index, request.method, request.url.path, exc)
            raise HttpError(error(502, "The local backend's worker went away while answering; try again.",
                                  "server_error", type_="server_error")) from None
        finally:
            worker.pending -= 1
        created = answer.status_code == 201  # a call was made: the key that asked for it is spent
        await self._settle(worker, secret, spent=created)
        location = answer.headers.get("location", "")
        if created and location.startswith("/v1/realtime/calls/"):
            self._remember(location.rsplit("/", 1)[-1], worker)
        if request.path_params.get("call_id") and answer.status_code == 200:  # hung up
            self._calls.pop(request.path_params["call_id"], None)
        return self._passed_on(answer.content, answer.status_code, answer.headers)

    def _passed_on(self, body: bytes, status: int, headers) -> Response:
        """A worker's answer as the front gives it: what a client reads of it (RESPONSE_HEADERS; `headers` looked up
        by lower-case name). A refusal for want of a slot is said for the whole server: the least-loaded worker was
        full, so every one of the front's `max_calls` is taken (the worker's own message counts its share)."""
        if status == 429 and "retry-after" in headers:
            try:
                code = json.loads(body)["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = None
            if code == "session_limit_reached":
                return session_limit(self.max_calls, int(headers["retry-after"]))
        return Response(body, status, headers={name: headers[name] for name in RESPONSE_HEADERS if name in headers})

    async def socket(self, websocket: WebSocket) -> None:
        """`GET /v1/realtime` (a new session, or `?call_id=` a sideband one): the worker's WebSocket, proxied
        both ways. Refused during the handshake with the worker's own answer (429 when every worker is
        full, 401, 400...), or 503 while no worker is ready / 502 when the worker cannot be reached."""
        offered, key = socket_key(websocket)
        try:
            worker = self._holder(websocket.query_params.get("call_id")) or await self._pick()
        except HttpError as exc:
            await LocalServer._refuse(websocket, exc.response)
            return
        query = websocket.scope.get("query_string") or b""
        url = worker.url.replace("http", "ws", 1) + websocket.url.path + ("?" + query.decode("latin-1") if query else "")
        headers = {name: websocket.headers[name] for name in ("authorization", "openai-beta") if name in websocket.headers}
        worker.pending += 1
        secret = None
        try:
            secret = await self._hand(worker, key or LocalServer._bearer(websocket))
            upstream = await websockets.connect(url, subprotocols=offered or None, additional_headers=headers,
                                                max_size=MAX_MESSAGE, compression=None, open_timeout=30,
                                                proxy=None)
        except InvalidStatus as exc:
            await self._settle(worker, secret, spent=False)
            refusal = exc.response
            body, headers = bytes(refusal.body), {name.lower(): value for name, value in refusal.headers.raw_items()}
            await LocalServer._refuse(websocket, self._passed_on(body, refusal.status_code, headers))
            return
        except (OSError, TimeoutError, httpx.HTTPError, websockets.InvalidHandshake) as exc:
            await self._settle(worker, secret, spent=False)
            log.warning("worker %d did not take a WebSocket: %r", worker.index, exc)
            await LocalServer._refuse(websocket, error(502, "The local backend's worker could not be reached; try again.",
                                                       "server_error", type_="server_error"))
            return
        finally:
            worker.pending -= 1
        await self._settle(worker, secret, spent=True)
        try:
            await websocket.accept(subprotocol=upstream.subprotocol)
            await _pipe(websocket, upstream)
        finally:
            await upstream.close()


def _close_code(code: int | None) -> int:
    """A close code as it can be sent on: 1005 (none given) is a normal close, 1006 (no close frame: the
    other side went away, as when a worker's process died) and any other code not for the wire, 1011."""
    if code == 1005:
        return 1000
    if code is not None and (1000 <= code <= 1014 and code not in (1004, 1006) or 3000 <= code <= 4999):
        return code
    return 1011


async def _pipe(client: WebSocket, upstream: websockets.ClientConnection) -> None:
    """Frames both ways as they are until one side closes; the other is closed with the same code and
    reason (1011 when the worker went away without one, as when its process died)."""

    async def from_client() -> None:
        while True:
            message = await client.receive()
            if message["type"] == "websocket.disconnect":
                await upstream.close(_close_code(message.get("code")), message.get("reason") or "")
                return
            await upstream.send(message["text"] if message.get("text") is not None else message["bytes"])

    async def from_worker() -> None:
        try:
            async for data in upstream:
                await (client.send_text(data) if isinstance(data, str) else client.send_bytes(data))
        except ConnectionClosed:
            pass
        if client.client_state == WebSocketState.CONNECTED:
            await client.close(_close_code(upstream.close_code), upstream.close_reason or "")

    worker_side, client_side = asyncio.create_task(from_worker()), asyncio.create_task(from_client())
    try:
        await asyncio.wait([worker_side, client_side], return_when=asyncio.FIRST_COMPLETED)
        if client_side.done() and isinstance(client_side.exception(), ConnectionClosed):
            await asyncio.wait([worker_side], timeout=5)  # the worker closed first: its code goes to the client
    finally:
        for task in (worker_side, client_side):
            task.cancel()
        await asyncio.gather(worker_side, client_side, return_exceptions=True)
