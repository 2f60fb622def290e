"""The dispatch boundary of a live local call: a refused event changes nothing, a failing handler is
answered with `server_error` and the call goes on, cancels honour `response_id`, short commits are
refused in both turn-detection modes. Real aiortc peers on loopback; the `error` events are read
with OpenAI's own `RealtimeErrorEvent` type."""

from __future__ import annotations

import asyncio

from openai.types.realtime.realtime_error_event import RealtimeErrorEvent

from koe.client.simulated_user import SimulatedUser
from koe.local.session import LocalSession
from koe.protocol import SemanticVad, SessionSettings

TEXT = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a long story."}]}


def settings(**kw) -> SessionSettings:
    return SessionSettings(instructions="Answer in one short sentence.", voice="alloy", max_output_tokens=24, **kw)


async def error_for(user: SimulatedUser, event_id: str):
    error = await user.seen("error", timeout_s=20, where=lambda e: e.error.event_id == event_id)
    RealtimeErrorEvent.model_validate(error.model_dump(mode="json"))
    await asyncio.sleep(0.3)  # one error, not more
    assert len([e for e in user.of_type("error") if e.error.event_id == event_id]) == 1
    return error.error


async def test_a_refused_update_changes_nothing(backend):
    async with SimulatedUser(backend, settings()) as user:
        connection = user.connection
        await connection.send({"type": "session.update", "event_id": "e_typo", "session": {
            "type": "realtime", "instructions": "Talk like a pirate.", "instructionz": "x"}})
        error = await error_for(user, "e_typo")
        assert (error.code, error.param) == ("unknown_parameter", "session.instructionz")
        await connection.send({"type": "session.update", "event_id": "e_voice", "session": {
            "type": "realtime", "instructions": "Talk like a pirate.", "audio": {"output": {"voice": "nonexistent"}}}})
        assert (await error_for(user, "e_voice")).param == "session.audio.output.voice"
        confirmed = await connection.update(connection.settings.changed(speed=1.1), only={"speed"})
        assert confirmed.instructions == "Answer in one short sentence." and confirmed.voice == "alloy"


async def test_a_failing_handler_is_answered_with_server_error_and_the_call_goes_on(backend, monkeypatch):
    def broken(self, event):
        raise RuntimeError("a bug")

    monkeypatch.setattr(LocalSession, "_on_conversation_item_retrieve", broken)
    async with SimulatedUser(backend, settings(turn_detection=None)) as user:
        connection = user.connection
        await connection.send({"type": "conversation.item.retrieve", "item_id": "item_x", "event_id": "e_bug"})
        error = await error_for(user, "e_bug")
        assert error.type == "server_error" and "a bug" not in error.message
        await connection.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}})
        await connection.send({"type": "response.create"})
        done = await user.seen("response.done", timeout_s=120)
    assert done.response["status"] == "completed"


async def test_a_cancel_naming_an_old_response_leaves_the_current_one(backend):
    async with SimulatedUser(backend, settings(turn_detection=None, output_modalities="text")) as user:
        connection = user.connection
        await connection.send({"type": "conversation.item.create", "item": TEXT})
        await connection.send({"type": "response.create"})
        first = (await user.seen("response.done", timeout_s=120)).response["id"]
        await connection.send({"type": "response.create"})
        second = await user.seen("response.created", where=lambda e: e.response["id"] != first)
        await connection.send({"type": "response.cancel", "response_id": first, "event_id": "e_old"})
        assert (await error_for(user, "e_old")).code == "response_cancel_not_active"
        done = await user.seen("response.done", timeout_s=120, where=lambda e: e.response["id"] == second.response["id"])
        assert done.response["status"] == "completed"
        await connection.send({"type": "response.create"})
        third = await user.seen("response.created", where=lambda e: e.response["id"] not in (first, second.response["id"]))
        await connection.send({"type": "response.cancel", "response_id": third.response["id"]})
        cancelled = await user.seen("response.done", timeout_s=60, where=lambda e: e.response["id"] == third.response["id"])
        assert cancelled.response["status"] == "cancelled"


async def test_an_empty_commit_is_refused_with_turn_detection_on(backend):
    for vad in (settings(), settings(turn_detection=SemanticVad())):
        async with SimulatedUser(backend, vad) as user:
            await user.connection.send({"type": "input_audio_buffer.commit", "event_id": "e_empty"})
            assert (await error_for(user, "e_empty")).code == "input_audio_buffer_commit_empty"
            assert not user.of_type("input_audio_buffer.committed")
