"""The client holds spoken conversations with the local server: real aiortc peers on loopback."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from koe.audio import rms_dbfs
from koe.client import AuthenticationError, Backend, BadRequestError, RealtimeConnection
from koe.client.simulated_user import SimulatedUser
from koe.protocol import SessionSettings, SettingsError

GA = "gpt-realtime"
BETA = "gpt-4o-realtime-preview-2024-12-17"
QUESTION = "Please count from one to five."


def settings(model: str = GA, **kw) -> SessionSettings:
    return SessionSettings(model=model, instructions=kw.pop("instructions", "You are a helpful assistant. Answer briefly."),
                           voice="alloy", **kw)


@pytest.mark.parametrize("model", [GA, BETA])
async def test_a_spoken_turn_round_trips(backend, speech, model):
    async with SimulatedUser(backend, settings(model)) as user:
        await user.say(speech(QUESTION))
        done = await user.connection.wait_for("response.done", timeout_s=60)
        await user.connection.wait_for("output_audio_buffer.stopped", timeout_s=30)

    assert done.response["status"] == "completed"
    assert done.response["usage"]["output_tokens"] > 0
    heard = user.of_type("conversation.item.input_audio_transcription.completed")[0].transcript.lower()
    assert "count" in heard and ("five" in heard or "5" in heard)
    reply_type = "response.output_audio_transcript.done" if model == GA else "response.audio_transcript.done"
    reply = user.of_type(reply_type)[0].transcript
    assert len(reply.split()) >= 2
    stopped = user.time_of(user.of_type("input_audio_buffer.speech_stopped")[0])
    assert rms_dbfs(user.received(since=stopped)) > -40  # the reply is audible, not silence

    types = [event.type for _, event in user.events]
    added = "conversation.item.added" if model == GA else "conversation.item.created"
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "input_audio_buffer.committed", added, "response.created", "response.output_item.added",
             "output_audio_buffer.started", reply_type, "response.done", "output_audio_buffer.stopped"]
    positions = [types.index(name) for name in order]
    assert positions == sorted(positions), types
    if model == BETA:
        assert not any(t.startswith(("response.output_audio", "conversation.item.added")) for t in types)
    # The assistant's item follows the user's in conversation order.
    user_item = user.of_type("input_audio_buffer.committed")[0].item_id
    assistant_added = [e for e in user.of_type(added) if e.item["role"] == "assistant"][0]
    assert assistant_added.previous_item_id == user_item


async def test_speaking_over_the_reply_clears_it(backend, speech):
    story = settings(instructions="You tell long, detailed stories. Never stop early.", max_output_tokens=400)
    async with SimulatedUser(backend, story) as user:
        await user.say(speech("Tell me a long story about a dragon and a knight."))
        await user.connection.wait_for("output_audio_buffer.started", timeout_s=60)
        await asyncio.sleep(1.0)
        await user.say(speech("Stop, please."), silence_after_s=0.3)
        cleared = await user.seen("output_audio_buffer.cleared", timeout_s=20)
        truncated = await user.seen("conversation.item.truncated", timeout_s=5)
    assert cleared.response_id == user.of_type("response.created")[0].response["id"]
    assert truncated.audio_end_ms > 500  # it was heard for a while before the user cut in
    first = user.of_type("response.done")[0].response
    assert first["status"] in ("cancelled", "completed")


async def test_an_invalid_update_is_refused_and_the_session_goes_on(backend, speech):
    async with SimulatedUser(backend, settings()) as user:
        connection = user.connection
        with pytest.raises(SettingsError, match="speed"):
            settings().changed(speed=3.0)
        with pytest.raises(SettingsError, match="temperature"):
            await connection.update(settings().changed(temperature=0.9))  # GA has none: refused before sending
        await connection.send({"type": "session.update", "event_id": "event_bad1",
                               "session": {"type": "realtime", "audio": {"output": {"speed": 3.0}}}})
        refused = await user.seen("error", timeout_s=10, where=lambda e: e.error.event_id == "event_bad1")
        assert refused.error.event_id == "event_bad1" and "speed" in refused.error.message
        await connection.send({"type": "no.such.event", "event_id": "event_bad2"})
        unknown = await user.seen("error", where=lambda e: e.error.event_id == "event_bad2")
        assert "no.such.event" in unknown.error.message
        confirmed = await connection.update(settings(instructions="Answer in one short sentence.", speed=1.2))
        assert confirmed.speed == 1.2 and confirmed.instructions == "Answer in one short sentence."
        await user.say(speech(QUESTION))
        done = await connection.wait_for("response.done", timeout_s=60)
    assert done.response["status"] == "completed"


async def test_push_to_talk_commits_and_creates_a_response(backend, speech):
    async with SimulatedUser(backend, settings(turn_detection=None)) as user:
        connection = user.connection
        await connection.send({"type": "input_audio_buffer.commit", "event_id": "event_empty"})
        empty = await user.seen("error", timeout_s=10)
        assert empty.error.code == "input_audio_buffer_commit_empty"
        await connection.send({"type": "input_audio_buffer.clear"})
        await user.seen("input_audio_buffer.cleared", timeout_s=10)
        await user.say(speech(QUESTION), silence_after_s=0.2)
        await asyncio.sleep(len(speech(QUESTION)) / 48_000 + 0.5)
        await connection.send({"type": "input_audio_buffer.commit"})
        await connection.send({"type": "response.create"})
        await connection.send({"type": "response.create", "event_id": "event_twice"})
        busy = await user.seen("error", where=lambda e: e.error.event_id == "event_twice")
        assert busy.error.code == "conversation_already_has_active_response"
        done = await user.seen("response.done", timeout_s=60)
        heard = (await user.seen("conversation.item.input_audio_transcription.completed")).transcript
    assert "count" in heard.lower()
    assert done.response["status"] == "completed"
    assert not user.of_type("input_audio_buffer.speech_started")  # no VAD in manual mode


async def test_response_cancel_ends_the_reply(backend, speech):
    async with SimulatedUser(backend, settings(turn_detection=None)) as user:
        connection = user.connection
        await connection.send({"type": "conversation.item.create",
                               "item": {"type": "message", "role": "user",
                                        "content": [{"type": "input_text", "text": "Tell me a long story."}]}})
        await connection.send({"type": "response.create"})
        await user.seen("response.created", timeout_s=30)
        await connection.send({"type": "response.cancel"})
        done = await user.seen("response.done", timeout_s=30)
        await connection.send({"type": "response.cancel", "event_id": "event_idle"})
        idle = await user.seen("error", where=lambda e: e.error.event_id == "event_idle")
    assert done.response["status"] == "cancelled"
    assert done.response["status_details"]["reason"] == "client_cancelled"
    assert idle.error.code == "response_cancel_not_active"


async def test_bad_requests_get_openai_shaped_errors(local_server, backend):
    async with httpx.AsyncClient(base_url=local_server.url) as http:
        auth = {"Authorization": f"Bearer {backend.api_key}"}
        bad_sdp = await http.post("/v1/realtime/calls", content="hello", headers={**auth, "Content-Type": "application/sdp"})
        assert bad_sdp.status_code == 400 and bad_sdp.json()["error"]["param"] == "sdp"
        garbled = "v=0\r\nm=audio nonsense\r\n"
        bad_offer = await http.post("/v1/realtime/calls", content=garbled, headers={**auth, "Content-Type": "application/sdp"})
        assert bad_offer.status_code == 400 and bad_offer.json()["error"]["message"]
        bad_json = await http.post("/v1/realtime/client_secrets", content="{", headers=auth)
        assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
        bad_session = await http.post("/v1/realtime/client_secrets", headers=auth,
                                      json={"session": {"type": "realtime", "audio": {"output": {"speed": 9}}}})
        assert bad_session.status_code == 400 and "speed" in bad_session.json()["error"]["message"]
        no_model = await http.post("/v1/realtime", content="v=0", headers=auth)
        assert no_model.status_code == 400
        unknown_call = await http.post("/v1/realtime/calls/rtc_nope/hangup", headers=auth)
        assert unknown_call.status_code == 404
        wrong_key = await http.post("/v1/realtime/client_secrets", json={}, headers={"Authorization": "Bearer nope"})
        assert wrong_key.status_code == 401 and wrong_key.json()["error"]["code"] == "invalid_api_key"
        secret = await http.post("/v1/realtime/client_secrets", json={}, headers=auth)
        assert secret.json()["value"].startswith("ek_")
    with pytest.raises(AuthenticationError):
        await RealtimeConnection(Backend(local_server.url, api_key="wrong"), settings()).connect()
    health = httpx.get(local_server.url + "/healthz").json()
    assert health["ok"] is True


async def test_hang_up_leaves_nothing_behind(local_server, backend):
    before = {t for t in asyncio.all_tasks()}
    for _ in range(3):
        async with SimulatedUser(backend, settings()) as user:
            await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)
    leftover = {t for t in asyncio.all_tasks() if not t.done()} - before - {asyncio.current_task()}
    assert not leftover, leftover
    for _ in range(50):
        if local_server.call_count == 0:
            break
        await asyncio.sleep(0.1)
    assert local_server.call_count == 0
