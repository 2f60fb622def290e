"""Who may use a shared demo, and whose conversations they see.

- Codes: `KOE_ACCESS_CODE` lets visitors in, `KOE_ADMIN_CODE` makes the owner (sees every
  conversation). With neither (and no OIDC sign-in) the app is a personal one: everyone is the owner.
- Codes are compared in constant time, and wrong codes are slowed down per visitor (their browser
  session, and their pass where they have one) and per client address. The address is the socket's
  peer, or, behind `KOE_TRUSTED_PROXY_HOPS` trusted reverse proxies, the one the outermost of them
  wrote into `X-Forwarded-For` (`client_address`). Unknown addresses (loopback, where Streamlit gives
  none) key nothing, so one visitor's typos never make another visitor on the same host wait.
- A visitor's id survives a reload through a signed pass (`Passes`): an HMAC token the UI keeps in
  the URL, because Streamlit cannot set cookies. It holds no secret, only the random visitor id, the
  role and an expiry; whoever has the URL is that visitor until it expires (as with any link-based
  session), so the pass lasts hours, not days, and changes of either code void every pass.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

__all__ = ["AccessConfig", "Backoff", "MAX_CODE_CHARS", "Passes", "Role", "Visitor", "backoff_keys", "client_address",
           "new_visitor_id", "role_for_code"]

Role = Literal["owner", "visitor"]
MAX_CODE_CHARS = 200  # longer input is refused before any comparison


class AccessConfig(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, hide_input_in_errors=True)

    access_code: SecretStr | None = Field(None, validation_alias="KOE_ACCESS_CODE")
    admin_code: SecretStr | None = Field(None, validation_alias="KOE_ADMIN_CODE")
    # Signs passes; set it when several app servers share visitors, or for passes that outlive a restart.
    session_secret: SecretStr | None = Field(None, validation_alias="KOE_SESSION_SECRET")
    pass_hours: float = Field(12.0, gt=0, le=24 * 30, validation_alias="KOE_PASS_HOURS")
    # How many reverse proxies of yours stand in front of the app (each appends to X-Forwarded-For).
    # 0: the header is ignored (anyone can write it), and the socket's peer is the client.
    trusted_proxy_hops: int = Field(0, ge=0, le=10, validation_alias="KOE_TRUSTED_PROXY_HOPS")

    @property
    def personal(self) -> bool:
        """No code at all: a personal app, where whoever opens it is the owner."""
        return self.access_code is None and self.admin_code is None


@dataclass(frozen=True)
class Visitor:
    id: str
    role: Role

    @property
    def owner(self) -> bool:
        return self.role == "owner"

    def can_see(self, conversation_visitor: str | None) -> bool:
        return self.owner or conversation_visitor == self.id


def new_visitor_id() -> str:
    return "v_" + secrets.token_urlsafe(12)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def role_for_code(given: str, config: AccessConfig) -> Role | None:
    """The role a code grants, or None. Compares fixed-length digests in constant time, so neither the
    code's content nor its length shows in the timing; both codes are always compared."""
    if not given or len(given) > MAX_CODE_CHARS:
        return None
    given_digest = _digest(given)
    matches: dict[Role, bool] = {}
    for role, code in (("owner", config.admin_code), ("visitor", config.access_code)):
        expected = _digest(code.get_secret_value()) if code is not None else secrets.token_bytes(32)
        matches[role] = hmac.compare_digest(given_digest, expected) and code is not None
    return "owner" if matches["owner"] else "visitor" if matches["visitor"] else None


def client_address(peer: str | None, forwarded_for: str | None, trusted_proxy_hops: int) -> str | None:
    """The client's IP address, or None when unknown.

    With no trusted proxy it is `peer` (the socket's; Streamlit gives None on loopback). Behind
    `trusted_proxy_hops` proxies it is the entry the outermost trusted proxy appended to
    `X-Forwarded-For` (`trusted_proxy_hops`-th from the right): entries left of it were written by
    the client and are not believed. None when the header has fewer entries or that one is no IP.
    """
    if trusted_proxy_hops == 0:
        return peer
    entries = [part.strip() for part in (forwarded_for or "").split(",")]
    if len(entries) < trusted_proxy_hops:
        return None
    try:
        return str(ipaddress.ip_address(entries[-trusted_proxy_hops]))
    except ValueError:
        return None


def backoff_keys(session: str, visitor_id: str | None, address: str | None) -> tuple[str, ...]:
    """The keys wrong codes count against: this browser session, this visitor (their pass), and the
    client address where it is known. Never a shared key for unknown addresses."""
    return (f"session:{session}", *([f"visitor:{visitor_id}"] if visitor_id else []),
            *([f"ip:{address}"] if address else []))


class Backoff:
    """Wrong codes cost time: each failure doubles the wait of the next attempt from the same keys
    (`backoff_keys`), from `base_s` up to `max_s`; failures are forgotten after `forget_after_s`.
    The wait is the caller's to sleep (in Streamlit's script thread, never on an event loop)."""

    def __init__(self, *, base_s: float = 0.5, max_s: float = 8.0, forget_after_s: float = 900.0,
                 max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.base_s, self.max_s, self.forget_after_s = base_s, max_s, forget_after_s
        self._max_keys, self._clock = max_keys, clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key → (count, last failure)
        self._lock = threading.Lock()

    def delay(self, *keys: str) -> float:
        """Seconds to wait before checking the next attempt from any of `keys`."""
        now, worst = self._clock(), 0
        with self._lock:
            for key in keys:
                count, at = self._failures.get(key, (0, now))
                if now - at < self.forget_after_s:
                    worst = max(worst, count)
        return 0.0 if worst == 0 else min(self.max_s, self.base_s * 2 ** (worst - 1))

    def failed(self, *keys: str) -> None:
        now = self._clock()
        with self._lock:
            for key in keys:
                count, at = self._failures.pop(key, (0, now))
                self._failures[key] = (count + 1 if now - at < self.forget_after_s else 1, now)
            while len(self._failures) > self._max_keys:  # bounded memory under a flood of keys
                self._failures.popitem(last=False)

    def succeeded(self, *keys: str) -> None:
        """Clear the visitor's own keys (session, pass); an address's failures decay on their own."""
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


class Passes:
    """Signed, expiring visitor passes: `<visitor id>.<role>.<expiry>.<signature>`."""

    MAX_CHARS = 200

    def __init__(self, config: AccessConfig, *, clock: Callable[[], float] = time.time) -> None:
        secret = config.session_secret.get_secret_value().encode() if config.session_secret else secrets.token_bytes(32)
        codes = b"\0".join(c.get_secret_value().encode() if c else b"" for c in (config.access_code, config.admin_code))
        # Keyed by the codes too: changing a code voids every pass signed before.
        self._key = hmac.new(secret, b"koe-pass\0" + codes, hashlib.sha256).digest()
        self._ttl_s = config.pass_hours * 3600
        self._clock = clock

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self, visitor: Visitor) -> str:
        body = f"{visitor.id}.{visitor.role}.{int(self._clock() + self._ttl_s)}"
        return f"{body}.{self._sign(body)}"

    def read(self, token: str | None) -> Visitor | None:
        """The visitor a pass names, or None if it is malformed, forged or expired."""
        if not token or len(token) > self.MAX_CHARS or token.count(".") != 3:
            return None
        visitor_id, role, expires, signature = token.split(".")
        if not hmac.compare_digest(signature.encode(), self._sign(f"{visitor_id}.{role}.{expires}").encode()):
            return None
        if role not in ("owner", "visitor") or not expires.isdigit() or int(expires) < self._clock():
            return None
        return Visitor(visitor_id, role)  # type: ignore[arg-type]
