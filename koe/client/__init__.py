"""The Realtime client: one WebRTC call to OpenAI or to Koe's local server, with typed events and errors."""

from koe.client.capabilities import (
    Capabilities, count_tokens, estimate_tokens, fetch_capabilities, openai_capabilities,
)
from koe.client.connection import RealtimeConnection
from koe.client.errors import (
    AuthenticationError, BackendTimeout, BackendUnreachable, BadRequestError, ConnectionClosed, NotFoundError,
    PermissionDeniedError, RateLimitError, RealtimeError, ServerError, error_from_response,
)
from koe.client.signaling import OPENAI_BASE_URL, Answer, Backend, create_client_secret, exchange_sdp, hang_up

__all__ = [
    "RealtimeConnection", "Backend", "Answer", "OPENAI_BASE_URL", "exchange_sdp", "create_client_secret", "hang_up",
    "RealtimeError", "BadRequestError", "AuthenticationError", "PermissionDeniedError", "NotFoundError",
    "RateLimitError", "ServerError", "BackendTimeout", "BackendUnreachable", "ConnectionClosed",
    "error_from_response", "Capabilities", "fetch_capabilities", "estimate_tokens", "count_tokens",
    "openai_capabilities",
]
