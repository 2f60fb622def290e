"""Bring your own reply model: the chat-endpoint stage against a scripted OpenAI-compatible server on loopback."""

from __future__ import annotations

import logging
import re

import pytest

from chat_stub import ChatStub, Fail, Hang, Reply
from koe.client import Backend
from koe.client.simulated_user import SimulatedUser
from koe.local import LocalServer
from koe.local.stages.chat import ChatEndpoint, ChatEndpointError, ChatModel
from koe.protocol import SessionSettings

KEY = "sk-chat-secret-123"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
OVERLOADED = {"error": {"message": "The server is overloaded.", "type": "server_error", "code": None}}


@pytest.fixture
def stub():
    stub = ChatStub().start()
    yield stub
    stub.stop()


def reply_of(model: ChatModel, messages=MESSAGES, **kw) -> str:
    return "".join(model.stream(messages, max_tokens=kw.pop("max_tokens", 50), temperature=0.7, **kw))


# -- the stage -------------------------------------------------------------------------------------
def test_streams_the_reply_and_asks_as_openai_expects(stub):
    stub.script = [Reply("Hello there. How are you?")]
    model = ChatModel(ChatEndpoint(stub.url, "my-model", KEY))
    assert reply_of(model, max_tokens=42) == "Hello there. How are you?"
    request = stub.requests[0]
    assert request.body["model"] == "my-model" and request.body["stream"] is True
    assert request.body["messages"] == MESSAGES and request.body["max_tokens"] == 42
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert model.count_tokens("four") == 1 and model.count_tokens("今日は") >= 2


def test_no_key_means_no_authorization_header(stub):
    reply_of(ChatModel(ChatEndpoint(stub.url, "m")))
    assert "authorization" not in stub.requests[0].headers


def test_an_http_error_names_the_endpoint_status_and_its_message(stub):
    stub.script = [Fail(500, OVERLOADED), Fail(503, {"detail": "warming up"})]
    model = ChatModel(ChatEndpoint(stub.url, "m", KEY))
    with pytest.raises(ChatEndpointError) as failed:
        reply_of(model)
    assert str(failed.value) == f"The chat endpoint {stub.url} answered 500: The server is overloaded."
    with pytest.raises(ChatEndpointError, match="answered 503: .*warming up"):
        reply_of(model)
    assert KEY not in str(failed.value)


def test_a_silent_endpoint_times_out(stub):
    stub.script = [Hang(2.0)]
    with pytest.raises(ChatEndpointError, match=r"did not answer within 0\.5 s"):
        reply_of(ChatModel(ChatEndpoint(stub.url, "m", timeout_s=0.5)))


def test_a_stream_cut_midway_is_an_error_not_a_short_reply(stub):
    stub.script = [Reply("This reply will never finish, sadly.", cut_after=2)]
    with pytest.raises(ChatEndpointError, match="dropped the reply stream|before it was done"):
        reply_of(ChatModel(ChatEndpoint(stub.url, "m")))


def test_an_unreachable_endpoint_is_reported():
    with pytest.raises(ChatEndpointError, match="could not be reached"):
        reply_of(ChatModel(ChatEndpoint("http://127.0.0.1:9/v1", "m", timeout_s=2)))


def test_cancelling_stops_reading(stub):
    stub.script = [Reply("one two three four five six seven eight nine ten")]
    seen: list[str] = []
    for delta in ChatModel(ChatEndpoint(stub.url, "m")).stream(MESSAGES, max_tokens=50, temperature=0.7,
                                                                cancelled=lambda: len(seen) >= 2):
        seen.append(delta)
    assert len(seen) == 2


def test_configuration_from_arguments_or_environment(monkeypatch):
    monkeypatch.delenv("KOE_CHAT_BASE_URL", raising=False)
    assert ChatEndpoint.configured() is None
    monkeypatch.setenv("KOE_CHAT_BASE_URL", "http://127.0.0.1:8080/v1/")
    with pytest.raises(ValueError, match="KOE_CHAT_MODEL"):
        ChatEndpoint.configured()
    monkeypatch.setenv("KOE_CHAT_MODEL", "qwen")
    monkeypatch.setenv("KOE_CHAT_API_KEY", KEY)
    endpoint = ChatEndpoint.configured()
    assert (endpoint.base_url, endpoint.model, endpoint.api_key) == ("http://127.0.0.1:8080/v1", "qwen", KEY)
    assert KEY not in repr(endpoint)
    assert ChatEndpoint.configured("http://other/v1", "m2").base_url == "http://other/v1"


# -- in a session --------------------------------------------------------------------------------
async def ask(user: SimulatedUser, text: str) -> tuple:
    """Type a user message, ask for a reply; (response.done, error events that came with it)."""
    errors_before = len(user.of_type("error"))
    done_before = len(user.of_type("response.done"))
    await user.connection.send({"type": "conversation.item.create",
                                "item": {"type": "message", "role": "user",
                                         "content": [{"type": "input_text", "text": text}]}})
    await user.connection.send({"type": "response.create"})
    await user.seen("response.done", timeout_s=30, where=lambda e: len(user.of_type("response.done")) > done_before)
    return user.of_type("response.done")[done_before], user.of_type("error")[errors_before:]


async def test_a_session_replies_through_the_endpoint_and_survives_its_failures(models, stub, caplog):
    caplog.set_level(logging.DEBUG)
    stub.script = [Reply("Hello! I am your own model."), Fail(500, OVERLOADED), Hang(3.0),
                   Reply("This stream breaks in the middle of it.", cut_after=3), Reply("Still here.")]
    server = LocalServer(port=0, models=models, chat_base_url=stub.url, chat_model="my-model",
                         chat_api_key=KEY, chat_timeout_s=1.0).start()
    settings = SessionSettings(instructions="You are terse.", voice="alloy", turn_detection=None)
    try:
        async with SimulatedUser(Backend(server.url), settings) as user:
            done, errors = await ask(user, "Hello?")
            assert done.response["status"] == "completed" and not errors
            assert user.of_type("response.output_audio_transcript.done")[0].transcript == "Hello! I am your own model."

            for expected in ("answered 500: The server is overloaded.", "did not answer within 1 s",
                             "dropped the reply stream|before it was done"):
                done, errors = await ask(user, "Again?")
                assert done.response["status"] == "failed"
                assert len(errors) == 1 and errors[0].error.code == "chat_endpoint_error"
                assert stub.url in errors[0].error.message
                assert re.search(expected, errors[0].error.message), errors[0].error.message

            done, errors = await ask(user, "Last one.")
            assert done.response["status"] == "completed" and not errors
    finally:
        server.stop()

    first, last = stub.requests[0].body, stub.requests[-1].body
    assert first["model"] == "my-model" and first["stream"] is True
    assert first["messages"] == [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello?"}]
    assert last["messages"][0] == {"role": "system", "content": "You are terse."}
    assert last["messages"][1:3] == [{"role": "user", "content": "Hello?"},
                                     {"role": "assistant", "content": "Hello! I am your own model."}]
    assert last["messages"][-1] == {"role": "user", "content": "Last one."}
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in stub.requests)
    assert KEY not in caplog.text
