"""ICE servers (STUN/TURN) for the three peers: the browser's, the server's browser-facing one
(streamlit-webrtc), and the relay's upstream one.

Which credentials may reach the browser: the browser's RTCPeerConnection must be given whatever it
uses, so it only ever gets short-lived ones, minted per visit: coturn's REST credentials from
`KOE_TURN_SECRET` (coturn's `static-auth-secret`), or a provider's (Twilio, Cloudflare, Hugging
Face; the UI fetches those). Long-lived `KOE_TURN_USERNAME`/`KOE_TURN_CREDENTIAL` stay on the
server's peers only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Annotated, Any

from aiortc import RTCIceServer
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

__all__ = ["IceConfig", "browser_ice_servers", "server_ice_servers", "to_aiortc", "turn_rest_credentials"]


def _split(value: Any) -> Any:
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


Urls = Annotated[list[str], BeforeValidator(_split)]


class IceConfig(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, hide_input_in_errors=True)

    stun_urls: Urls = Field(default_factory=list, validation_alias="KOE_STUN_URLS")
    turn_urls: Urls = Field(default_factory=list, validation_alias="KOE_TURN_URLS")
    turn_secret: SecretStr | None = Field(None, validation_alias="KOE_TURN_SECRET")
    turn_ttl_s: int = Field(3600, ge=60, le=86_400, validation_alias="KOE_TURN_TTL_S")
    turn_username: str | None = Field(None, validation_alias="KOE_TURN_USERNAME")
    turn_credential: SecretStr | None = Field(None, validation_alias="KOE_TURN_CREDENTIAL")


def turn_rest_credentials(secret: str, ttl_s: int, user: str, now: float | None = None) -> tuple[str, str]:
    """coturn's TURN REST API (`use-auth-secret`): username `<expiry>:<user>`, password
    base64(HMAC-SHA1(secret, username)); coturn refuses it after the expiry."""
    username = f"{int((time.time() if now is None else now) + ttl_s)}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def _stun(config: IceConfig) -> list[dict]:
    return [{"urls": config.stun_urls}] if config.stun_urls else []


def _short_lived_turn(config: IceConfig, user: str) -> list[dict]:
    if not (config.turn_urls and config.turn_secret):
        return []
    username, credential = turn_rest_credentials(config.turn_secret.get_secret_value(), config.turn_ttl_s, user)
    return [{"urls": config.turn_urls, "username": username, "credential": credential}]


def browser_ice_servers(config: IceConfig, user: str, provided: list[dict] | None = None) -> list[dict]:
    """What the browser may be given: STUN, short-lived TURN, a provider's short-lived servers."""
    return [*_stun(config), *_short_lived_turn(config, user), *(provided or [])]


def server_ice_servers(config: IceConfig, user: str, provided: list[dict] | None = None) -> list[dict]:
    """The server's peers: the same, plus long-lived TURN credentials, which never leave the server."""
    servers = browser_ice_servers(config, user, provided)
    if config.turn_urls and config.turn_username and config.turn_credential:
        servers.append({"urls": config.turn_urls, "username": config.turn_username,
                        "credential": config.turn_credential.get_secret_value()})
    return servers


def to_aiortc(servers: list[dict]) -> list[RTCIceServer]:
    return [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential")) for s in servers]
