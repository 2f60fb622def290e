"""Process-wide resources, created once per server process and shared by every browser session."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import streamlit as st

from koe.local import LocalServer
from koe.local.stages.models import warm
from koe.relay import LoopThread
from koe.store import SessionStore


def secret(name: str) -> str | None:
    """A setting from the environment, else from .streamlit/secrets.toml; never sent to the browser."""
    value = os.environ.get(name)
    if value:
        return value
    try:
        return st.secrets.get(name) or None
    except FileNotFoundError:  # no secrets file at all
        return None
    except Exception:  # a malformed secrets file must not take the app down
        return None


def data_dir() -> Path:
    return Path(secret("KOE_DATA_DIR") or "data")


@st.cache_resource(show_spinner=False)
def configure_logging() -> None:
    """Koe's own log lines (model loading, calls, per-reply stage timings) on the server's stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    koe = logging.getLogger("koe")
    koe.addHandler(handler)
    koe.setLevel(logging.INFO)


@st.cache_resource(show_spinner=False)
def loop_thread() -> LoopThread:
    return LoopThread()


@st.cache_resource(show_spinner=False)
def store() -> SessionStore:
    return SessionStore(data_dir() / "koe.sqlite3")


@st.cache_resource(show_spinner=False)
def local_server() -> LocalServer:
    """The embedded offline backend: one per process, models loaded once in the background."""
    threading.Thread(target=warm, name="koe-warm", daemon=True).start()
    return LocalServer(port=0).start()


def ice_servers() -> list[dict]:
    """ICE servers for both peers. None are needed on one machine; deployments add STUN/TURN here."""
    return []
