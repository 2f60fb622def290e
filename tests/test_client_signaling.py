"""The HTTP half of the client against OpenAI's documented request and error shapes (httpx.MockTransport)."""

from __future__ import annotations

import json

import httpx
import pytest

from koe.client import (
    AuthenticationError, Backend, BackendTimeout, BackendUnreachable, BadRequestError, NotFoundError,
    PermissionDeniedError, RateLimitError, ServerError, exchange_sdp,
)
from koe.protocol import SessionSettings

OFFER = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
ANSWER = "v=0\r\no=- 2 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
BACKEND = Backend("https://api.openai.com", api_key="sk-test-123")


def client(handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_ga_call_sends_the_offer_and_session_as_a_form():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, text=ANSWER, headers={"Location": "/v1/realtime/calls/rtc_abc123"})

    settings = SessionSettings(model="gpt-realtime", instructions="Be brief.", voice="cedar")
    async with client(handler) as http:
        answer = await exchange_sdp(http, BACKEND, OFFER, settings)
    assert answer.sdp == ANSWER and answer.call_id == "rtc_abc123"
    (request,) = seen
    assert request.url == "https://api.openai.com/v1/realtime/calls"
    assert request.headers["authorization"] == "Bearer sk-test-123"
    assert "openai-beta" not in request.headers  # never on the GA interface
    body = request.content.decode()
    assert request.headers["content-type"].startswith("multipart/form-data")
    assert 'name="sdp"' in body and OFFER in body
    session = json.loads(body.split('name="session"')[1].split("\r\n\r\n", 1)[1].split("\r\n--")[0])
    assert session["type"] == "realtime" and session["model"] == "gpt-realtime"
    assert session["audio"]["output"]["voice"] == "cedar" and session["instructions"] == "Be brief."
    assert "temperature" not in session


async def test_beta_call_mints_an_ephemeral_key_then_posts_sdp():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/realtime/sessions":
            return httpx.Response(200, json={"id": "sess_1", "object": "realtime.session",
                                             "client_secret": {"value": "ek_eph", "expires_at": 1}})
        return httpx.Response(201, text=ANSWER)

    settings = SessionSettings(model="gpt-4o-realtime-preview-2024-12-17", voice="verse", temperature=0.7)
    async with client(handler) as http:
        answer = await exchange_sdp(http, BACKEND, OFFER, settings)
    assert answer.sdp == ANSWER and answer.call_id is None
    mint, call = seen
    assert mint.headers["authorization"] == "Bearer sk-test-123"
    minted = json.loads(mint.content)
    assert minted["model"] == "gpt-4o-realtime-preview-2024-12-17" and minted["voice"] == "verse"
    assert minted["temperature"] == 0.7
    assert str(call.url) == "https://api.openai.com/v1/realtime?model=gpt-4o-realtime-preview-2024-12-17"
    assert call.headers["authorization"] == "Bearer ek_eph"
    assert call.headers["content-type"] == "application/sdp" and call.content.decode() == OFFER


# OpenAI's documented error bodies: {"error": {"message", "type", "param", "code"}}.
ERRORS = [
    (400, {"message": "Invalid SDP offer", "type": "invalid_request_error", "param": "sdp", "code": "invalid_offer"},
     BadRequestError),
    (401, {"message": "Incorrect API key provided: sk-test***123.", "type": "invalid_request_error", "param": None,
           "code": "invalid_api_key"}, AuthenticationError),
    (403, {"message": "You are not allowed to sample from this model", "type": "invalid_request_error",
           "param": None, "code": None}, PermissionDeniedError),
    (404, {"message": "The model `gpt-realtime-x` does not exist or you do not have access to it.",
           "type": "invalid_request_error", "param": None, "code": "model_not_found"}, NotFoundError),
    (429, {"message": "You exceeded your current quota, please check your plan and billing details.",
           "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}, RateLimitError),
    (500, {"message": "The server had an error while processing your request. Sorry about that!",
           "type": "server_error", "param": None, "code": None}, ServerError),
]


@pytest.mark.parametrize("status, info, kind", ERRORS)
async def test_error_responses_become_typed_errors_with_the_servers_message(status, info, kind):
    async with client(lambda request: httpx.Response(status, json={"error": info})) as http:
        with pytest.raises(kind) as caught:
            await exchange_sdp(http, BACKEND, OFFER, SessionSettings())
    assert caught.value.status == status
    assert caught.value.message == info["message"]
    assert caught.value.code == info["code"]
    assert info["message"] in str(caught.value)


async def test_a_non_json_gateway_error_keeps_its_text():
    async with client(lambda request: httpx.Response(502, text="<html>Bad gateway</html>")) as http:
        with pytest.raises(ServerError, match="Bad gateway"):
            await exchange_sdp(http, BACKEND, OFFER, SessionSettings())


async def test_a_success_without_sdp_is_not_used_as_an_answer():
    async with client(lambda request: httpx.Response(201, json={"ok": True})) as http:
        with pytest.raises(Exception, match="without an SDP answer"):
            await exchange_sdp(http, BACKEND, OFFER, SessionSettings())


@pytest.mark.parametrize("exc, kind", [(httpx.ReadTimeout("slow"), BackendTimeout),
                                       (httpx.ConnectError("refused"), BackendUnreachable)])
async def test_network_failures_become_typed_errors(exc, kind):
    def handler(request):
        raise exc

    async with client(handler) as http:
        with pytest.raises(kind):
            await exchange_sdp(http, BACKEND, OFFER, SessionSettings())


def test_the_key_is_not_in_the_backends_repr():
    assert "sk-test-123" not in repr(BACKEND)
