"""Process-wide resources, created once per server process and shared by every browser session."""

from __future__ import annotations

import logging
import os
import threading

import httpx
import streamlit as st
from streamlit_webrtc.credentials import get_cloudflare_ice_servers, get_hf_ice_servers, get_twilio_ice_servers
from streamlit_webrtc.eventloop import get_global_event_loop

from koe.access import Backoff, Passes
from koe.client import Backend, Capabilities, count_tokens, fetch_capabilities
from koe.config import Config, load_config
from koe.ice import bound_gathering, browser_ice_servers, server_ice_servers
from koe.limits import Ledger, Limiter
from koe.local import LocalServer
from koe.local.stages.models import warm
from koe.loop_watch import LoopWatch
from koe.relay import LoopThread, notice_lost_peers_quickly
from koe.store import SessionStore

log = logging.getLogger("koe.app")


def secret(name: str) -> object | None:
    """A setting from the environment, else from .streamlit/secrets.toml; never sent to the browser."""
    value = os.environ.get(name)
    if value:
        return value
    try:
        value = st.secrets.get(name)
    except FileNotFoundError:  # no secrets file at all
        return None
    except Exception:  # a malformed secrets file must not take the app down
        return None
    # TOML may hold a code as a number: settings are text (lists, such as URLs, stay lists).
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value or None


@st.cache_resource(show_spinner=False)
def config() -> Config:
    """Every setting, validated once per process (raises ConfigError, naming the bad setting)."""
    return load_config(secret)


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
    notice_lost_peers_quickly()  # a closed tab frees its upstream call in seconds, not ~30 s
    return LoopThread()


@st.cache_resource(show_spinner=False)
def media_loop_watch() -> LoopWatch:
    """How late Streamlit's loop runs: it carries the browsers' audio (streamlit-webrtc's peers)."""
    return LoopWatch(get_global_event_loop()).start()


@st.cache_resource(show_spinner=False)
def store() -> SessionStore:
    """`KOE_DATABASE_URL` (PostgreSQL, shared by several app servers) when set, else SQLite in the data folder."""
    backend = config().backend
    if backend.database_url is not None:
        return SessionStore(backend.database_url.get_secret_value())
    return SessionStore(backend.data_dir / "koe.sqlite3")


@st.cache_resource(show_spinner=False)
def limiter() -> Limiter:
    """The limits, counted in the store's database (shared by every app server on it)."""
    return Limiter(config().limits, Ledger(store().engine))


@st.cache_resource(show_spinner=False)
def passes() -> Passes:
    return Passes(config().access)


@st.cache_resource(show_spinner=False)
def backoff() -> Backoff:
    return Backoff()


@st.cache_resource(show_spinner=False)
def local_server(reply_model: str | None = None) -> LocalServer:
    """The embedded offline backend: one per process and reply-model profile (None: $KOE_REPLY_MODEL, else
    "default"), models loaded once in the background (the speech models are shared)."""
    threading.Thread(target=warm, kwargs={"reply_model": reply_model}, name="koe-warm", daemon=True).start()
    backend = config().backend
    key = backend.chat_api_key.get_secret_value() if backend.chat_api_key else None
    return LocalServer(port=0, chat_base_url=backend.chat_base_url, chat_model=backend.chat_model,
                       chat_api_key=key, reply_model=reply_model).start()


def local_backend(reply_model: str | None = None) -> Backend:
    """`KOE_LOCAL_URL` (a `python -m koe.local` elsewhere) when set, else the embedded server answering
    with the bundled `reply_model` profile."""
    backend = config().backend
    if backend.local_url:
        key = backend.local_api_key.get_secret_value() if backend.local_api_key else None
        return Backend(backend.local_url, api_key=key)
    return Backend(local_server(reply_model).url)


@st.cache_data(ttl=300, show_spinner="Asking the local backend what it offers…",
               hash_funcs={Backend: lambda b: b.base_url})
def capabilities(backend: Backend) -> Capabilities | None:
    """The local backend's voices, context size and ignored options (None when it does not say)."""
    return fetch_capabilities(backend)


@st.cache_data(ttl=3600, max_entries=32, show_spinner=False, hash_funcs={Backend: lambda b: b.base_url})
def _token_count(backend: Backend, text: str) -> int:
    return count_tokens(backend, text)  # raises when it cannot say: a failure is not cached


def token_count(backend: Backend, text: str) -> int | None:
    """`text`'s tokens as the local backend's reply model counts them; None when it cannot say in time
    (its models still loading, or an OpenAI backend)."""
    try:
        return _token_count(backend, text)
    except (httpx.HTTPError, ValueError):
        return None


def openai_backend() -> Backend | None:
    backend = config().backend
    if backend.openai_api_key is None:
        return None
    return Backend(backend.openai_base_url, api_key=backend.openai_api_key.get_secret_value())


def _provider_ice_servers() -> list[dict]:
    """Short-lived TURN credentials from a hosted provider whose keys are set (cached by streamlit-webrtc)."""
    keys = config().providers
    fetches = []
    if keys.cloudflare_turn_key_id and keys.cloudflare_turn_key_api_token:
        fetches.append(("Cloudflare", lambda: get_cloudflare_ice_servers(
            keys.cloudflare_turn_key_id, keys.cloudflare_turn_key_api_token.get_secret_value())))
    if keys.twilio_account_sid and keys.twilio_auth_token:
        fetches.append(("Twilio", lambda: get_twilio_ice_servers(
            keys.twilio_account_sid, keys.twilio_auth_token.get_secret_value())))
    if keys.hf_token:
        fetches.append(("Hugging Face", lambda: get_hf_ice_servers(keys.hf_token.get_secret_value())))
    for provider, fetch in fetches:
        try:
            return [dict(server) for server in fetch()]
        except Exception as exc:  # a provider outage must not stop the app: say so, try the next one
            log.warning("no TURN credentials from %s: %s", provider, type(exc).__name__)
    return []


def ice_servers(visitor_id: str) -> tuple[list[dict], list[dict]]:
    """(browser, server) ICE servers; none are needed on one machine. Long-lived TURN credentials
    are in the server's list only."""
    provided = _provider_ice_servers()
    ice = config().ice
    bound_gathering(ice.gather_timeout_s)  # before any peer gathers: STUN never holds START up for long
    return browser_ice_servers(ice, visitor_id, provided), server_ice_servers(ice, visitor_id, provided)
