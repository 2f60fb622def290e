"""`python -m koe.local --host 127.0.0.1 --port 8765`: serve the offline Realtime backend
(`--workers N`: N model processes behind that one address, koe.local.workers)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time

from koe.local.admission import MAX_CALLS_ENV, default_max_calls
from koe.local.scheduler import cores
from koe.local.server import LocalServer, cors_origins_from, listening_socket
from koe.local.stages.chat import DEFAULT_TIMEOUT_S, ChatEndpoint
from koe.local.stages.llm import DEFAULT_PROFILE, PROFILES, REPLY_MODEL_ENV
from koe.local.stages.models import get_models, warm
from koe.local.workers import WORKERS_ENV, WorkerEnv, WorkerFront

log = logging.getLogger("koe.local")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m koe.local", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default=os.environ.get("KOE_LOCAL_API_KEY"),
                        help="require this bearer key (default: $KOE_LOCAL_API_KEY; none = open)")
    parser.add_argument("--max-session-minutes", type=float, default=60.0)
    parser.add_argument("--max-calls", type=int, default=None,
                        help=f"conversations served at once; more are refused (429, Retry-After) before any media "
                             f"flows (default: ${MAX_CALLS_ENV}, else two per core; 0 = no limit)")
    parser.add_argument("--cors-origins", default=os.environ.get("KOE_CORS_ORIGINS", "*"),
                        help="comma-separated origins whose pages may call the API (default: $KOE_CORS_ORIGINS, "
                             "else * = any: access is by bearer key, not cookies)")
    parser.add_argument("--reply-model", choices=list(PROFILES), default=os.environ.get(REPLY_MODEL_ENV) or DEFAULT_PROFILE,
                        help="the bundled reply model: " + "; ".join(f"{p.name} = {p.model}" for p in PROFILES.values())
                             + f" (default: ${REPLY_MODEL_ENV}, else %(default)s)")
    reply = parser.add_argument_group("your own reply model (any OpenAI-compatible chat-completions endpoint)")
    reply.add_argument("--chat-base-url", help="e.g. http://127.0.0.1:8080/v1 (default: $KOE_CHAT_BASE_URL; "
                                               "none = the bundled model)")
    reply.add_argument("--chat-model", help="the model name to ask for (default: $KOE_CHAT_MODEL)")
    reply.add_argument("--chat-api-key", help="bearer key for the endpoint (default: $KOE_CHAT_API_KEY)")
    reply.add_argument("--chat-timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds (default: %(default)s)")
    parser.add_argument("--japanese", action="store_true",
                        help="load the Japanese models at start (else on the first Japanese session)")
    parser.add_argument("--workers", type=int, default=None,
                        help="model processes behind this one address, each with its own models and its share of "
                             "the cores and of --max-calls (default: $%s, else 1: this process serves)" % WORKERS_ENV)
    args = parser.parse_args(argv)
    worker = WorkerEnv.from_environ()  # this process is one of a front's workers
    try:
        max_calls = default_max_calls() if args.max_calls is None else args.max_calls
    except ValueError as exc:
        parser.error(str(exc))
    if max_calls < 0:
        parser.error("--max-calls must be 0 (no limit) or more")
    if args.workers is None:
        try:
            args.workers = int(os.environ.get(WORKERS_ENV) or 1)
        except ValueError:
            parser.error(f"${WORKERS_ENV} must be a whole number")
    if args.workers < 1:
        parser.error("--workers must be 1 or more")
    if worker is None and args.workers > 1 and 0 < max_calls < args.workers:
        parser.error(f"--max-calls must be 0 (no limit) or at least --workers ({args.workers}): each worker takes "
                     "one call or more")
    tag = f" worker {worker.index}" if worker is not None else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(name)s{tag} %(levelname)s %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)  # not a line per ICE check of every call
    try:  # checked before the models load, so a missing model name is reported at once
        endpoint = ChatEndpoint.configured(args.chat_base_url, args.chat_model, args.chat_api_key, args.chat_timeout)
    except ValueError as exc:
        parser.error(str(exc))
    if worker is None and args.workers > 1:
        return serve_workers(args, max_calls)
    sock = worker.socket() if worker is not None else listening_socket(args.host, args.port)
    started = time.monotonic()
    warm(japanese=args.japanese, reply_model=args.reply_model)
    log.info("models ready in %.1f s", time.monotonic() - started)
    if endpoint is not None:
        log.info("replies from %s (model %s)", endpoint.base_url, endpoint.model)
    server = LocalServer(args.host, args.port, api_key=args.api_key, max_session_s=args.max_session_minutes * 60,
                         models=get_models(args.reply_model), chat_base_url=args.chat_base_url, chat_model=args.chat_model,
                         chat_api_key=args.chat_api_key, chat_timeout_s=args.chat_timeout,
                         cors_origins=cors_origins_from(args.cors_origins), max_calls=max_calls,
                         worker_key=worker.key if worker is not None else None)
    if worker is None:
        banner(args.host, sock.getsockname()[1], max_calls)
    try:
        asyncio.run(server.serve(sock=sock))
    except KeyboardInterrupt:
        pass


def banner(host: str, port: int, max_calls: int, workers: int = 1) -> None:
    """The line a person (and tests/test_workers.py, for the port) reads once the server answers."""
    print(f"Koe local Realtime server on http://{host}:{port}, "
          + (f"{workers} worker processes, " if workers > 1 else "") + f"{max_calls or 'unlimited'} conversations at once "
          f"(WebRTC: POST /v1/realtime/calls, beta POST /v1/realtime?model=...; WebSocket: GET /v1/realtime?model=...)", flush=True)


def serve_workers(args: argparse.Namespace, max_calls: int) -> None:
    """The front of `--workers N`: each worker runs this command with the same options, on its share. Keys
    travel in the workers' environment, never on a command line (where `ps` shows them)."""
    options = ["--max-session-minutes", str(args.max_session_minutes), "--cors-origins", args.cors_origins,
               "--reply-model", args.reply_model, "--chat-timeout", str(args.chat_timeout)]
    for flag, value in (("--chat-base-url", args.chat_base_url), ("--chat-model", args.chat_model)):
        if value:
            options += [flag, value]
    if args.japanese:
        options.append("--japanese")
    env = {name: value for name, value in os.environ.items() if name not in ("KOE_LOCAL_API_KEY", "KOE_CHAT_API_KEY")}
    for name, value in (("KOE_LOCAL_API_KEY", args.api_key), ("KOE_CHAT_API_KEY", args.chat_api_key
                                                               or os.environ.get("KOE_CHAT_API_KEY"))):
        if value:
            env[name] = value
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per forwarded request
    front = WorkerFront(args.workers, options, host=args.host, port=args.port, api_key=args.api_key,
                        max_calls=max_calls, cores=cores(), cors_origins=cors_origins_from(args.cors_origins),
                        reply_model=args.reply_model, env=env)
    try:
        asyncio.run(front.serve(on_ready=lambda port: banner(args.host, port, max_calls, args.workers)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except RuntimeError as exc:  # a worker could not start: the front has stopped the others
        log.error("%s", exc)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
