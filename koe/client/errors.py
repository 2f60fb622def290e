"""Typed errors for talking to a Realtime backend, each carrying the server's own message."""

from __future__ import annotations

import httpx


class RealtimeError(Exception):
    """Base of every error the client raises."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 type: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.type = type
        self.param = param

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status else type(self).__name__
        return f"{where}: {self.message}" + (f" ({self.code})" if self.code else "")


class BadRequestError(RealtimeError):
    """400: the offer or the session was refused."""


class AuthenticationError(RealtimeError):
    """401: missing, wrong or expired key."""


class PermissionDeniedError(RealtimeError):
    """403: the key may not use this model or endpoint."""


class NotFoundError(RealtimeError):
    """404: unknown model, call or endpoint."""


class RateLimitError(RealtimeError):
    """429: too many requests, the quota is used up, or (koe.local) every conversation slot is taken.
    `retry_after_s`: the server's `Retry-After` in seconds, when it sent one."""

    retry_after_s: float | None = None


class ServerError(RealtimeError):
    """5xx: the backend failed; retrying later may work."""


class BackendTimeout(RealtimeError):
    """The backend did not answer in time."""


class BackendUnreachable(RealtimeError):
    """No connection could be made (DNS, refused, TLS...)."""


class ConnectionClosed(RealtimeError):
    """The call ended (hang-up, expired session, failed peer)."""


_BY_STATUS: dict[int, type[RealtimeError]] = {
    400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError,
    404: NotFoundError, 429: RateLimitError,
}


def error_from_response(response: httpx.Response) -> RealtimeError:
    """Map an HTTP error response (OpenAI's `{"error": {...}}` shape, or anything else) to its type."""
    info: dict = {}
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            info = body["error"]
    except ValueError:
        pass
    message = info.get("message") or response.text.strip()[:300] or response.reason_phrase
    cls = _BY_STATUS.get(response.status_code, ServerError if response.status_code >= 500 else RealtimeError)
    error = cls(str(message), status=response.status_code, code=info.get("code"),
                type=info.get("type"), param=info.get("param"))
    if isinstance(error, RateLimitError):
        try:
            error.retry_after_s = float(response.headers.get("retry-after", ""))
        except ValueError:  # absent, or an HTTP date: no figure to show
            pass
    return error
