"""The HTTP half of a call: SDP offer in, SDP answer out, in either dialect (see PROTOCOL.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import httpx

from koe.client.errors import BackendTimeout, BackendUnreachable, RealtimeError, error_from_response
from koe.protocol import Dialect, SessionSettings, dialect_for_model

OPENAI_BASE_URL = "https://api.openai.com"


@dataclass(frozen=True)
class Backend:
    """Where a Realtime server lives and how to authenticate (the key never appears in repr)."""

    base_url: str = OPENAI_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 20.0

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path


@dataclass(frozen=True)
class Answer:
    sdp: str
    call_id: str | None  # GA only: used to hang up


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


async def _post(client: httpx.AsyncClient, url: str, **kwargs) -> httpx.Response:
    try:
        response = await client.post(url, **kwargs)
    except httpx.TimeoutException as exc:
        raise BackendTimeout(f"no answer from {url} in time") from exc
    except httpx.HTTPError as exc:
        raise BackendUnreachable(f"cannot reach {url}: {exc}") from exc
    if response.status_code >= 400:
        raise error_from_response(response)
    return response


async def create_client_secret(client: httpx.AsyncClient, backend: Backend, settings: SessionSettings,
                               expires_s: int = 600) -> str:
    """GA: mint a short-lived key for one call (what a browser would be given)."""
    body = {"expires_after": {"anchor": "created_at", "seconds": expires_s},
            "session": settings.to_wire("ga")}
    response = await _post(client, backend.url("/v1/realtime/client_secrets"), json=body,
                           headers=_auth(backend.api_key))
    return _json(response)["value"]


async def exchange_sdp(client: httpx.AsyncClient, backend: Backend, offer_sdp: str,
                       settings: SessionSettings) -> Answer:
    """Send the offer and return the answer, configuring the session in the same request."""
    dialect: Dialect = dialect_for_model(settings.model)
    if dialect == "ga":
        # The form carries the session, so the call starts configured (a server holding the
        # standard key needs no client secret).
        files = {"sdp": (None, offer_sdp, "application/sdp"),
                 "session": (None, json.dumps(settings.to_wire("ga")), "application/json")}
        response = await _post(client, backend.url("/v1/realtime/calls"), files=files,
                               headers=_auth(backend.api_key))
        location = response.headers.get("location", "")
        call_id = location.rstrip("/").rsplit("/", 1)[-1] or None
    else:
        minted = await _post(client, backend.url("/v1/realtime/sessions"), json=settings.to_wire("beta"),
                             headers=_auth(backend.api_key))
        ephemeral = (_json(minted).get("client_secret") or {}).get("value")
        if not ephemeral:
            raise RealtimeError("the session endpoint returned no client_secret")
        response = await _post(client, backend.url("/v1/realtime"), params={"model": settings.model},
                               content=offer_sdp,
                               headers={**_auth(ephemeral), "Content-Type": "application/sdp"})
        call_id = None
    if not response.text.startswith("v=0"):
        raise RealtimeError(f"the backend answered without an SDP answer: {response.text[:120]!r}")
    return Answer(sdp=response.text, call_id=call_id)


async def hang_up(client: httpx.AsyncClient, backend: Backend, call_id: str) -> None:
    await _post(client, backend.url(f"/v1/realtime/calls/{call_id}/hangup"), headers=_auth(backend.api_key))


def _json(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError as exc:
        raise RealtimeError(f"expected JSON from {response.request.url}, got {response.text[:120]!r}") from exc
    if not isinstance(body, dict):
        raise RealtimeError(f"expected a JSON object from {response.request.url}")
    return body
