"""koe.local over WebSocket, driven by OpenAI's own Python SDK (`client.realtime.connect`,
`client.beta.realtime.connect`), a browser-style subprotocol login, a sideband socket on a WebRTC
call, and CORS as a page on another origin meets it. Every event is checked against the SDK's
types by conftest's `conforming_events`."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from openai import AsyncOpenAI

from conftest import LOCAL_KEY
from koe.audio import RATE, PcmQueueTrack, frame_to_mono, frames, resample, rms_dbfs
from koe.client import Backend
from koe.client.simulated_user import SimulatedUser
from koe.local.wire_audio import decode, encode
from koe.protocol import SessionSettings

GA = "gpt-realtime"
BETA = "gpt-4o-realtime-preview-2024-12-17"
QUESTION = "Please count from one to five."
CHUNK_MS = 100


def client(local_server) -> AsyncOpenAI:
    """OpenAI's client pointed at koe.local: only the base URLs change (the beta WebSocket client
    always uses wss:// unless told its own base URL)."""
    return AsyncOpenAI(api_key=LOCAL_KEY, base_url=local_server.url + "/v1", max_retries=0,
                       websocket_base_url=local_server.url.replace("http", "ws", 1) + "/v1")


def pcm24k_chunks(samples48k: np.ndarray, silence_s: float = 1.2) -> list[str]:
    """Speech then silence as base64 pcm16 24 kHz appends of CHUNK_MS each."""
    clip = np.concatenate([samples48k, np.zeros(int(silence_s * RATE), np.int16)])
    pcm = resample(clip, RATE, 24_000)
    step = 24_000 * CHUNK_MS // 1000
    return [base64.b64encode(pcm[i:i + step].astype("<i2").tobytes()).decode() for i in range(0, pcm.size, step)]


async def until(connection, type_: str, seen: list, timeout_s: float = 60.0):
    """Read events (collecting them in `seen`) until one of `type_` arrives."""
    async def read():
        async for event in connection:
            seen.append(event)
            if event.type == type_:
                return event
    try:
        return await asyncio.wait_for(read(), timeout_s)
    except TimeoutError:
        raise TimeoutError(f"no {type_} within {timeout_s} s; saw {[e.type for e in seen][-12:]}") from None


@pytest.mark.parametrize("model", [GA, BETA])
async def test_the_openai_sdk_holds_a_spoken_turn_over_websocket(local_server, speech, model):
    openai = client(local_server)
    manager = openai.realtime.connect(model=model) if model == GA else openai.beta.realtime.connect(model=model)
    seen: list = []
    async with manager as connection:
        created = await until(connection, "session.created", seen, 30)
        if model == GA:
            assert created.session.audio.input.format.type == "audio/pcm"
            await connection.session.update(session={
                "type": "realtime", "instructions": "Answer briefly.",
                "audio": {"input": {"transcription": {"model": "whisper-1"}}, "output": {"voice": "alloy"}}})
        else:
            assert created.session.voice in ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse")
            assert created.session.input_audio_format == "pcm16"
            await connection.session.update(session={"instructions": "Answer briefly.",
                                                      "input_audio_transcription": {"model": "whisper-1"}})
        await until(connection, "session.updated", seen, 10)
        for chunk in pcm24k_chunks(speech(QUESTION)):
            await connection.input_audio_buffer.append(audio=chunk)
        done = await until(connection, "response.done", seen, 90)
    types = [e.type for e in seen]
    assert done.response.status == "completed"
    heard = next(e for e in seen if e.type == "conversation.item.input_audio_transcription.completed").transcript
    assert "count" in heard.lower()
    delta, transcript = ("response.output_audio.delta", "response.output_audio_transcript.done") if model == GA \
        else ("response.audio.delta", "response.audio_transcript.done")
    audio = np.concatenate([decode(e.delta, "pcm16") for e in seen if e.type == delta])
    assert rms_dbfs(audio) > -40  # the reply is audible, not silence
    assert next(e for e in seen if e.type == transcript).transcript.strip()
    assert not any(t.startswith("output_audio_buffer.") for t in types)  # WebRTC only
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
             "response.created", delta, "response.done"]
    assert [types.index(t) for t in order] == sorted(types.index(t) for t in order), types


@pytest.mark.parametrize("fmt", ["g711_ulaw", "g711_alaw"])
async def test_g711_in_and_out(local_server, speech, fmt):
    """Telephony formats (beta names here; GA `audio/pcmu`, `audio/pcma`), manual turns."""
    seen: list = []
    async with client(local_server).beta.realtime.connect(model=BETA) as connection:
        await connection.session.update(session={"input_audio_format": fmt, "output_audio_format": fmt,
                                                  "turn_detection": None, "instructions": "Answer in one sentence.",
                                                  "input_audio_transcription": {"model": "whisper-1"}})
        updated = await until(connection, "session.updated", seen, 10)
        assert updated.session.input_audio_format == fmt
        clip = resample(speech(QUESTION), RATE, 8_000)
        await connection.input_audio_buffer.append(audio=encode(resample(clip, 8_000, RATE), fmt))
        await connection.input_audio_buffer.commit()
        await connection.response.create(response={"modalities": ["audio", "text"], "max_response_output_tokens": 30})
        await until(connection, "response.done", seen, 90)
    heard = next(e for e in seen if e.type == "conversation.item.input_audio_transcription.completed").transcript
    assert "count" in heard.lower()
    audio = np.concatenate([decode(e.delta, fmt) for e in seen if e.type == "response.audio.delta"])
    assert rms_dbfs(audio) > -40


async def test_a_text_only_response_has_no_audio(local_server):
    seen: list = []
    async with client(local_server).realtime.connect(model=GA) as connection:
        await connection.conversation.item.create(item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]})
        await connection.response.create(response={"output_modalities": ["text"]})
        done = await until(connection, "response.done", seen, 60)
    types = {e.type for e in seen}
    assert "response.output_text.done" in types
    assert not types & {"response.output_audio.delta", "response.output_audio_transcript.delta"}
    assert done.response.output[0].content[0].type == "output_text"


async def test_a_browser_logs_in_with_the_subprotocol_and_can_be_refused(local_server):
    url = local_server.url.replace("http", "ws") + f"/v1/realtime?model={GA}"
    secret = httpx.post(local_server.url + "/v1/realtime/client_secrets", json={},
                        headers={"Authorization": f"Bearer {LOCAL_KEY}"}).json()["value"]
    async with websockets.connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{secret}"]) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(await ws.recv())["type"] == "session.created"
    async with websockets.connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{LOCAL_KEY}",
                                                     "openai-beta.realtime-v1"]) as ws:
        created = json.loads(await ws.recv())
        assert created["session"]["voice"] == "alloy" and "modalities" in created["session"]  # beta dialect
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, subprotocols=["realtime", "openai-insecure-api-key.wrong"]):
            pass
    assert refused.value.response.status_code == 401


async def test_a_sideband_socket_follows_and_steers_a_webrtc_call(local_server, speech):
    settings = SessionSettings(instructions="Answer briefly.", voice="alloy", turn_detection=None)
    async with SimulatedUser(Backend(local_server.url, api_key=LOCAL_KEY), settings) as user:
        call_id = user.connection.call_id
        seen: list = []
        async with client(local_server).realtime.connect(call_id=call_id) as sideband:
            await until(sideband, "session.created", seen, 10)
            await sideband.conversation.item.create(item={
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]})
            await sideband.response.create()
            done = await until(sideband, "response.done", seen, 60)
        assert done.response.status == "completed"
        # The call's own client saw the same reply, and heard it on its track.
        assert (await user.seen("response.done", timeout_s=10)).response["id"] == done.response.id
    assert not any(e.type == "response.output_audio.delta" for e in seen)  # audio stays on the call


async def test_cors_lets_a_page_on_another_origin_call(local_server):
    origin = "http://localhost:1234"
    async with httpx.AsyncClient(base_url=local_server.url) as http:
        preflight = await http.options("/v1/realtime/calls", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,openai-beta,x-openai-agents-sdk"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] in ("*", origin)
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert all(h in allowed for h in ("authorization", "content-type", "openai-beta", "x-openai-agents-sdk"))
        secret = await http.post("/v1/realtime/client_secrets", json={},
                                 headers={"Origin": origin, "Authorization": f"Bearer {LOCAL_KEY}"})
        assert secret.headers["access-control-allow-origin"] in ("*", origin)
        assert "location" in secret.headers["access-control-expose-headers"].lower()


async def test_the_openai_sdk_places_a_webrtc_call_and_hangs_up(local_server, speech):
    """`client.realtime.calls.create` carries the offer and session; an aiortc peer talks; `calls.hangup` ends it."""
    openai = client(local_server)
    mic = PcmQueueTrack(capacity_ms=60_000)
    heard: list[np.ndarray] = []
    events: list[dict] = []
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(mic)
    channel = pc.createDataChannel("oai-events")
    channel.on("message", lambda message: events.append(json.loads(message)))

    @pc.on("track")
    def on_track(track) -> None:
        async def read() -> None:
            async for frame in frames(track):
                heard.append(frame_to_mono(frame))
        asyncio.ensure_future(read())

    await pc.setLocalDescription(await pc.createOffer())
    answer = await openai.realtime.calls.with_raw_response.create(sdp=pc.localDescription.sdp, session={
        "type": "realtime", "model": GA, "instructions": "Answer briefly.",
        "audio": {"input": {"transcription": {"model": "whisper-1"}}, "output": {"voice": "alloy"}}})
    call_id = answer.headers["location"].rsplit("/", 1)[-1]
    assert call_id.startswith("rtc_")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.text, type="answer"))

    async def seen(type_: str, timeout_s: float) -> dict:
        for _ in range(int(timeout_s * 20)):
            found = next((e for e in events if e["type"] == type_), None)
            if found:
                return found
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no {type_}; saw {[e['type'] for e in events][-10:]}")

    try:
        await seen("session.created", 20)
        await mic.write(speech(QUESTION))
        await mic.write(np.zeros(RATE, np.int16))
        done = await seen("response.done", 90)
        await seen("output_audio_buffer.stopped", 60)
        assert done["response"]["status"] == "completed"
        assert "count" in (await seen("conversation.item.input_audio_transcription.completed", 10))["transcript"].lower()
        assert rms_dbfs(np.concatenate(heard)) > -45
        await openai.realtime.calls.hangup(call_id)
        for _ in range(100):
            if local_server.call_count == 0:
                break
            await asyncio.sleep(0.05)
        assert local_server.call_count == 0
    finally:
        await pc.close()


async def test_session_update_naming_the_model(local_server):
    """The session's own model is no change; another is refused with an error naming it (OpenAI:
    `model` cannot be updated), and the session is left as it was."""
    seen: list = []
    async with client(local_server).realtime.connect(model=GA) as connection:
        await connection.session.update(session={"type": "realtime", "model": GA, "instructions": "Be brief."})
        updated = await until(connection, "session.updated", seen, 10)
        assert updated.session.instructions == "Be brief." and updated.session.model == GA
        await connection.send({"type": "session.update", "event_id": "event_other_model",
                               "session": {"type": "realtime", "model": "gpt-realtime-mini", "instructions": "x"}})
        refused = await until(connection, "error", seen, 10)
        assert refused.error.event_id == "event_other_model" and "model" in refused.error.message
        await connection.session.update(session={"type": "realtime"})
        assert (await until(connection, "session.updated", seen, 10)).session.instructions == "Be brief."


async def test_items_can_be_retrieved_truncated_and_deleted(local_server):
    """Item operations in both dialects, each answer checked against the SDK's types."""
    for model in (GA, BETA):
        seen: list = []
        openai = client(local_server)
        manager = openai.realtime.connect(model=model) if model == GA else openai.beta.realtime.connect(model=model)
        async with manager as connection:
            await connection.conversation.item.create(item={
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a story."}]})
            await connection.response.create()
            await until(connection, "response.output_item.added", seen, 30)  # the reply has begun: its message is made
            await connection.response.cancel()
            done = await until(connection, "response.done", seen, 30)
            assert done.response.status == "cancelled"
            item = done.response.output[0]
            assert item.status == "incomplete"  # the same status wherever the cut-short item appears
            finished = next(e for e in seen if e.type == "response.output_item.done")
            assert finished.item.status == "incomplete"
            await connection.conversation.item.retrieve(item_id=item.id)
            assert (await until(connection, "conversation.item.retrieved", seen, 10)).item.status == "incomplete"
            await connection.conversation.item.truncate(item_id=item.id, content_index=0, audio_end_ms=0)
            await until(connection, "conversation.item.truncated", seen, 10)
            await connection.conversation.item.delete(item_id=item.id)
            await until(connection, "conversation.item.deleted", seen, 10)
            await connection.input_audio_buffer.clear()
            await until(connection, "input_audio_buffer.cleared", seen, 10)


async def test_a_beta_webrtc_session_starts_with_a_beta_voice(local_server):
    async with httpx.AsyncClient(base_url=local_server.url) as http:
        minted = await http.post("/v1/realtime/sessions", json={"model": BETA},
                                 headers={"Authorization": f"Bearer {LOCAL_KEY}"})
    assert minted.json()["voice"] == "alloy"


async def test_what_is_not_implemented_is_said(local_server):
    """Stored prompts, noise reduction, out-of-band responses and non-text item parts get an
    `unsupported_feature` error, never silence; an update asking for one still applies the rest."""
    seen: list = []
    async with client(local_server).realtime.connect(model=GA) as connection:
        await connection.session.update(session={"type": "realtime", "instructions": "Be brief.",
                                                 "audio": {"input": {"noise_reduction": {"type": "near_field"}}}})
        said = await until(connection, "error", seen, 10)
        assert said.error.code == "unsupported_feature" and said.error.param == "session.audio.input.noise_reduction"
        assert (await until(connection, "session.updated", seen, 10)).session.instructions == "Be brief."
        await connection.send({"type": "response.create", "event_id": "event_oob", "response": {"conversation": "none"}})
        said = await until(connection, "error", seen, 10)
        assert (said.error.event_id, said.error.param) == ("event_oob", "response.conversation")
        await connection.send({"type": "conversation.item.create", "event_id": "event_image", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,"}]}})
        said = await until(connection, "error", seen, 10)
        assert (said.error.event_id, said.error.param) == ("event_image", "item.content")
    assert not any(e.type == "response.created" for e in seen)
    async with httpx.AsyncClient(base_url=local_server.url) as http:  # HTTP answers it with a 400
        refused = await http.post("/v1/realtime/client_secrets", headers={"Authorization": f"Bearer {LOCAL_KEY}"},
                                  json={"session": {"type": "realtime", "prompt": {"id": "pmpt_123"}}})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsupported_feature"
        refused = await http.post("/v1/realtime/sessions", headers={"Authorization": f"Bearer {LOCAL_KEY}"},
                                  json={"model": BETA, "input_audio_noise_reduction": {"type": "near_field"}})
        assert refused.json()["error"]["param"] == "session.input_audio_noise_reduction"


async def test_barge_in_over_websocket_the_client_truncates_what_it_played(local_server, speech):
    """Over a WebSocket the client plays the audio: speaking over the reply cancels it (server VAD), and
    the client's `conversation.item.truncate` cuts the item's transcript where its playback stopped."""
    seen: list = []
    async with client(local_server).realtime.connect(model=GA) as connection:
        await connection.session.update(session={
            "type": "realtime", "instructions": "You tell long, detailed stories. Never stop early.",
            "max_output_tokens": 400})
        await until(connection, "session.updated", seen, 10)
        for chunk in pcm24k_chunks(speech("Tell me a long story about a dragon and a knight.")):
            await connection.input_audio_buffer.append(audio=chunk)
        first = await until(connection, "response.output_audio.delta", seen, 90)
        for chunk in pcm24k_chunks(speech("Stop, please."), silence_s=0.3):
            await connection.input_audio_buffer.append(audio=chunk)
        started = [e for e in seen if e.type == "input_audio_buffer.speech_started"]
        if len(started) < 2:
            await until(connection, "input_audio_buffer.speech_started", seen, 30)
        done = next((e for e in seen if e.type == "response.done"), None) or await until(connection, "response.done", seen, 60)
        assert done.response.status in ("cancelled", "completed")
        if done.response.status == "cancelled":
            assert done.response.status_details.reason == "turn_detected"
        # The client "played" all but the last 10 ms of what it received: the last clause was not heard whole.
        received = sum(len(decode(e.delta, "pcm16")) for e in seen
                       if e.type == "response.output_audio.delta" and e.item_id == first.item_id)
        played_ms = received * 1000 // 24_000 - 10
        await connection.conversation.item.truncate(item_id=first.item_id, content_index=0, audio_end_ms=played_ms)
        truncated = await until(connection, "conversation.item.truncated", seen, 10)
        assert (truncated.item_id, truncated.audio_end_ms) == (first.item_id, played_ms)
        await connection.conversation.item.retrieve(item_id=first.item_id)
        kept = (await until(connection, "conversation.item.retrieved", seen, 10)).item.content[0].transcript
    said = "".join(e.delta for e in seen if e.type == "response.output_audio_transcript.delta"
                   and e.item_id == first.item_id)
    assert len(kept) < len(said) and said.startswith(kept)  # only the clauses played whole
    assert not any(e.type.startswith("output_audio_buffer.") for e in seen)


def test_cors_origins_can_be_narrowed(models):
    """`--cors-origins` / $KOE_CORS_ORIGINS: only the listed origins get CORS headers."""
    from starlette.testclient import TestClient

    from koe.local import LocalServer

    server = LocalServer(models=models, cors_origins=["https://app.example"])
    with TestClient(server.app) as http:
        ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        allowed = http.options("/v1/realtime/calls", headers={"Origin": "https://app.example", **ask})
        refused = http.options("/v1/realtime/calls", headers={"Origin": "https://elsewhere.example", **ask})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in refused.headers
    server.stop()
