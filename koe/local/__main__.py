"""`python -m koe.local --host 127.0.0.1 --port 8765`: serve the offline Realtime backend."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time

from koe.local.admission import MAX_CALLS_ENV, default_max_calls
from koe.local.server import LocalServer, cors_origins_from
from koe.local.stages.chat import DEFAULT_TIMEOUT_S, ChatEndpoint
from koe.local.stages.llm import DEFAULT_PROFILE, PROFILES, REPLY_MODEL_ENV
from koe.local.stages.models import get_models, warm

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
    args = parser.parse_args(argv)
    try:
        max_calls = default_max_calls() if args.max_calls is None else args.max_calls
    except ValueError as exc:
        parser.error(str(exc))
    if max_calls < 0:
        parser.error("--max-calls must be 0 (no limit) or more")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:  # checked before the models load, so a missing model name is reported at once
        endpoint = ChatEndpoint.configured(args.chat_base_url, args.chat_model, args.chat_api_key, args.chat_timeout)
    except ValueError as exc:
        parser.error(str(exc))
    started = time.monotonic()
    warm(japanese=args.japanese, reply_model=args.reply_model)
    log.info("models ready in %.1f s", time.monotonic() - started)
    if endpoint is not None:
        log.info("replies from %s (model %s)", endpoint.base_url, endpoint.model)
    server = LocalServer(args.host, args.port, api_key=args.api_key, max_session_s=args.max_session_minutes * 60,
                         models=get_models(args.reply_model), chat_base_url=args.chat_base_url, chat_model=args.chat_model,
                         chat_api_key=args.chat_api_key, chat_timeout_s=args.chat_timeout,
                         cors_origins=cors_origins_from(args.cors_origins), max_calls=max_calls)
    print(f"Koe local Realtime server on http://{args.host}:{args.port}, "
          f"{max_calls or 'unlimited'} conversations at once "
          f"(WebRTC: POST /v1/realtime/calls, beta POST /v1/realtime?model=...; WebSocket: GET /v1/realtime?model=...)", flush=True)
    try:
        asyncio.run(server.serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
