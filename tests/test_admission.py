"""Admission control on koe.local: beyond its capacity a new conversation is refused at once, in
OpenAI's error shape with `Retry-After` (checked with OpenAI's own SDK and a plain WebSocket client),
before any media flows; /healthz reports the load; the app's relay tells the user when to come back."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
import websockets.sync.client
from aiortc import RTCPeerConnection
from websockets.exceptions import InvalidStatus

from koe.client import Backend
from koe.local import LocalServer
from koe.local.admission import CALLS_PER_CORE, Admission, default_max_calls
from koe.local.scheduler import cores
from koe.relay import Relay

from conftest import LOCAL_KEY
from test_relay import SETTINGS, loop_thread, started  # noqa: F401  (loop_thread is a fixture)


@pytest.fixture
def one_call_server(models):
    server = LocalServer(port=0, api_key=LOCAL_KEY, models=models, max_calls=1).start()
    yield server
    server.stop()


async def an_offer() -> str:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio")
    pc.createDataChannel("oai-events")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()
    return offer


def health(server: LocalServer) -> dict:
    return httpx.get(server.url + "/healthz").json()


async def test_a_call_beyond_capacity_is_refused_before_any_media(one_call_server, loop_thread):
    server = one_call_server
    assert health(server) == {"ok": True, "calls": 0, "max_calls": 1, "load": 0.0, "full": False}
    first = started(Relay(Backend(server.url, api_key=LOCAL_KEY), SETTINGS, loop_thread), loop_thread)
    try:
        assert health(server) == {"ok": True, "calls": 1, "max_calls": 1, "load": 1.0, "full": True}

        # OpenAI's SDK, as any OpenAI client would call: a 429 it maps to its own RateLimitError.
        sdk = openai.OpenAI(api_key=LOCAL_KEY, base_url=server.url + "/v1", max_retries=0)
        offer = await an_offer()
        with pytest.raises(openai.RateLimitError) as refused:
            await asyncio.to_thread(sdk.realtime.calls.create, sdp=offer)
        error = refused.value
        assert error.status_code == 429 and error.code == "session_limit_reached"
        assert error.type == "rate_limit_error" and error.param is None
        assert "busy" in error.message and "Try again in" in error.message
        assert 5 <= int(error.response.headers["retry-after"]) <= 120
        assert server.call_count == 1  # no peer was made for the refused one

        # A WebSocket session counts too: refused during the handshake, with the same answer.
        url = server.url.replace("http", "ws") + "/v1/realtime?model=gpt-realtime"
        with pytest.raises(InvalidStatus) as denied:
            await asyncio.to_thread(websockets.sync.client.connect, url,
                                    additional_headers={"Authorization": f"Bearer {LOCAL_KEY}"})
        assert denied.value.response.status_code == 429
        assert denied.value.response.headers["Retry-After"].isdigit()

        # The app: its relay fails at once and says when to come back, rather than a silent call.
        second = Relay(Backend(server.url, api_key=LOCAL_KEY), SETTINGS, loop_thread)
        second.start().result(timeout=30)
        assert second.status.state == "failed"
        assert second.status.message.startswith("Not started: The local backend is busy")
        assert "Try again in" in second.status.message
    finally:
        first.stop()
    await asyncio.sleep(0.5)
    assert health(server)["calls"] == 0  # the slot came back with the hang-up
    again = started(Relay(Backend(server.url, api_key=LOCAL_KEY), SETTINGS, loop_thread), loop_thread)
    again.stop()


def test_capacity_comes_from_the_flag_the_environment_or_the_cores():
    assert default_max_calls({"KOE_LOCAL_MAX_CALLS": "3"}) == 3
    assert default_max_calls({"KOE_LOCAL_MAX_CALLS": "0"}) == 0  # no limit
    assert default_max_calls({}) == CALLS_PER_CORE * cores() >= 2
    with pytest.raises(ValueError):
        default_max_calls({"KOE_LOCAL_MAX_CALLS": "-1"})
    unlimited = Admission(0)
    assert all(unlimited.enter(i) for i in range(100)) and not unlimited.full


def test_retry_after_follows_how_long_calls_last():
    now = [0.0]
    slots = Admission(1, clock=lambda: now[0])
    assert slots.enter("a") and not slots.enter("b")
    assert slots.retry_after_s() == 60  # no call has ended yet: a typical minute
    now[0] = 20.0
    slots.leave("a")  # calls here last 20 s
    slots.leave("a")  # idempotent
    assert slots.enter("c")
    now[0] = 30.0
    assert slots.retry_after_s() == 10  # the running one is 10 s old
    now[0] = 200.0
    assert slots.retry_after_s() == 5  # overdue: soon, but not at once
