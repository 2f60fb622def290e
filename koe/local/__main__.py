"""`python -m koe.local --host 127.0.0.1 --port 8765`: serve the offline Realtime backend."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time

from koe.local.server import LocalServer
from koe.local.stages.models import get_models, warm

log = logging.getLogger("koe.local")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m koe.local", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default=os.environ.get("KOE_LOCAL_API_KEY"),
                        help="require this bearer key (default: $KOE_LOCAL_API_KEY; none = open)")
    parser.add_argument("--max-session-minutes", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    started = time.monotonic()
    warm()
    log.info("models ready in %.1f s", time.monotonic() - started)
    server = LocalServer(args.host, args.port, api_key=args.api_key, max_session_s=args.max_session_minutes * 60,
                         models=get_models())
    print(f"Koe local Realtime server on http://{args.host}:{args.port} "
          f"(GA: POST /v1/realtime/calls, beta: POST /v1/realtime?model=...)", flush=True)
    try:
        asyncio.run(server.serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
