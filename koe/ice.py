"""ICE servers (STUN/TURN) for the three peers: the browser's, the server's browser-facing one
(streamlit-webrtc), and the relay's upstream one.

Which credentials may reach the browser: the browser's RTCPeerConnection must be given whatever it
uses, so it only ever gets short-lived ones, minted per visit: coturn's REST credentials from
`KOE_TURN_SECRET` (coturn's `static-auth-secret`), or a provider's (Twilio, Cloudflare, Hugging
Face; the UI fetches those). Long-lived `KOE_TURN_USERNAME`/`KOE_TURN_CREDENTIAL` stay on the
server's peers only.

STUN never blocks START: aiortc gathers every candidate before it writes an SDP, and aioice waits up
to 5 s for STUN/TURN answers, so an unreachable server delayed each server-side peer by 5 s.
`bound_gathering` makes every peer answer with what it has gathered within `gather_timeout_s`;
`upstream_ice_servers` gives the relay's upstream peer no STUN/TURN at all when its backend runs on
this machine (it needs none); `unanswered_stun` says which STUN servers are silent, for the page.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import ipaddress
import logging
import time
import urllib.parse
from typing import Annotated, Any

import aioice.ice
from aioice import stun
from aiortc import RTCIceServer
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

__all__ = ["IceConfig", "bound_gathering", "browser_ice_servers", "same_host", "server_ice_servers", "stun_urls",
           "to_aiortc", "turn_rest_credentials", "unanswered_stun", "upstream_ice_servers"]

log = logging.getLogger("koe.ice")
STUN_PORT = 3478


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
    # How long a server-side peer waits for STUN/TURN candidates before it answers with what it has:
    # STUN answers within ~100 ms and one lost packet is resent at 0.5 s; a TURN allocation takes longer.
    gather_timeout_s: float = Field(1.5, gt=0, le=5, validation_alias="KOE_ICE_GATHER_TIMEOUT_S")


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


def bound_gathering(timeout_s: float) -> None:
    """Make every aiortc peer of this process stop waiting for STUN/TURN candidates after
    `timeout_s` seconds (aioice's own bound is 5 s), and answer with the candidates it has.

    aiortc exposes no such setting: it calls aioice's `Connection.get_component_candidates` without
    its `timeout` argument, so the argument's default is set. Idempotent; logs and leaves aioice
    alone if that function no longer has the argument.
    """
    function = aioice.ice.Connection.get_component_candidates
    parameter = inspect.signature(function).parameters.get("timeout")
    if parameter is None or function.__defaults__ is None or len(function.__defaults__) != 1:
        log.warning("aioice changed: ICE gathering keeps its own bound")
        return
    function.__defaults__ = (timeout_s,)


def stun_urls(servers: list[RTCIceServer]) -> list[str]:
    """The `stun:` URLs among `servers` (aiortc's RTCIceServer, whose `urls` is a string or a list)."""
    found = []
    for server in servers:
        urls = [server.urls] if isinstance(server.urls, str) else server.urls
        found += [url for url in urls if url.startswith("stun:")]
    return found


async def same_host(url: str) -> bool:
    """Whether `url`'s host is this machine: loopback, or one of its interfaces' addresses (resolved
    without blocking the loop); False when it cannot be resolved."""
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        return False
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    except OSError:
        return False
    own = {ipaddress.ip_address(a) for a in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)}
    addresses = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}
    return bool(addresses) and all(a.is_loopback or a in own for a in addresses)


async def upstream_ice_servers(servers: list[RTCIceServer], backend_url: str) -> list[RTCIceServer]:
    """The ICE servers for the relay's upstream peer: none when the backend is on this machine
    (host candidates reach it, and a STUN/TURN server could only slow START down), else `servers`."""
    return [] if servers and await same_host(backend_url) else servers


class _StunAnswer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answered = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            stun.parse_message(data)
        except ValueError:
            return
        if not self.answered.done():
            self.answered.set_result(True)


async def _answers(url: str, timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    try:
        where = urllib.parse.urlsplit("//" + url.removeprefix("stun:").split("?")[0])  # host[:port], [v6]:port
        transport, protocol = await loop.create_datagram_endpoint(
            _StunAnswer, remote_addr=(where.hostname, where.port or STUN_PORT))
    except (OSError, ValueError, TypeError):
        return False
    try:
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        transport.sendto(bytes(request))
        await asyncio.wait_for(protocol.answered, timeout_s)
        return True
    except (asyncio.TimeoutError, OSError):
        return False
    finally:
        transport.close()


async def unanswered_stun(urls: list[str], timeout_s: float = 1.0) -> list[str]:
    """The `stun:host[:port]` URLs whose server does not answer a STUN Binding request (RFC 8489)
    within `timeout_s` seconds; asked all at once."""
    answers = await asyncio.gather(*(_answers(url, timeout_s) for url in urls))
    return [url for url, answered in zip(urls, answers) if not answered]
