"""`python -m koe.local --workers 2`: two model processes behind one address, seen by OpenAI's own SDK,
plain aiortc peers and a plain WebSocket client as one server. One front for the module (each worker
loads its own models), started as a user starts it: the real entry point, in a process of its own."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from conftest import LOCAL_KEY
from koe.audio import rms_dbfs
from koe.client import Backend
from koe.client.simulated_user import SimulatedUser
from koe.local.workers import WorkerFront, shares
from koe.protocol import SessionSettings
from test_admission import an_offer

ROOT = Path(__file__).resolve().parents[1]
GA = "gpt-realtime"
BETA = "gpt-4o-realtime-preview-2024-12-17"
QUESTION = "Please count from one to five."
START_TIMEOUT_S = 300  # both workers load their models on a busy machine


@dataclass
class Front:
    url: str
    process: subprocess.Popen
    log: Path

    def health(self) -> dict:
        return httpx.get(self.url + "/healthz", timeout=10).json()

    async def until(self, test, timeout_s: float = 30.0) -> dict:
        """/healthz once `test(health)` holds (AssertionError with the last one if it does not in time)."""
        deadline = time.monotonic() + timeout_s
        while True:
            health = await asyncio.to_thread(self.health)
            if test(health):
                return health
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout_s} s: {health}")
            await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    log = tmp_path_factory.mktemp("front") / "front.log"
    with open(log, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "koe.local", "--workers", "2", "--max-calls", "2", "--port", "0",
             "--reply-model", "fast"], cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
            env={**os.environ, "KOE_LOCAL_API_KEY": LOCAL_KEY})
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        banner = lines.get(timeout=START_TIMEOUT_S)
    except queue.Empty:
        banner = ""
    found = re.search(r"http://[\d.]+:\d+", banner)
    if not found:
        process.kill()
        pytest.fail(f"the front did not start: {banner!r}\n{log.read_text()[-3000:]}")
    yield Front(found.group(0), process, log)
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=30)


def sdk(front: Front, key: str = LOCAL_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=front.url + "/v1", max_retries=0,
                              websocket_base_url=front.url.replace("http", "ws", 1) + "/v1")


async def test_calls_spread_over_the_workers_speak_and_the_one_too_many_is_refused(front, speech):
    health = front.health()
    assert (health["ok"], health["calls"], health["max_calls"], health["full"]) == (True, 0, 2, False)
    assert [(w["worker"], w["calls"], w["max_calls"], w["ready"]) for w in health["workers"]] == \
        [(1, 0, 1, True), (2, 0, 1, True)]

    backend = Backend(front.url, api_key=LOCAL_KEY)
    settings = SessionSettings(model=GA, instructions="Answer briefly.", voice="alloy")
    async with SimulatedUser(backend, settings) as first, SimulatedUser(backend, settings) as second:
        health = front.health()
        assert [w["calls"] for w in health["workers"]] == [1, 1]  # one on each worker
        assert (health["calls"], health["load"], health["full"]) == (2, 1.0, True)

        await asyncio.gather(first.say(speech(QUESTION)), second.say(speech(QUESTION)))
        for user in (first, second):
            done = await user.seen("response.done", timeout_s=120)
            assert done.response["status"] == "completed"
            stopped = user.time_of(user.of_type("input_audio_buffer.speech_stopped")[0])
            await user.seen("output_audio_buffer.stopped", timeout_s=60)
            assert rms_dbfs(user.received(since=stopped)) > -40  # each heard its reply
        # A sideband socket reaches the worker holding the call (the second: the least loaded is the first).
        async with sdk(front).realtime.connect(call_id=second.connection.call_id) as sideband:
            assert (await sideband.recv()).type == "session.created"

        # Every worker full: OpenAI's SDK gets its RateLimitError, as from one process.
        with pytest.raises(openai.RateLimitError) as refused:
            await sdk(front).realtime.calls.create(sdp=await an_offer())
        assert refused.value.code == "session_limit_reached"
        wait = int(refused.value.response.headers["retry-after"])
        assert 5 <= wait <= 120  # counted for the whole server, not one worker's share:
        assert refused.value.message.endswith(
            f"The local backend is busy: all 2 conversation slots are in use. Try again in {wait} s.")
        # A WebSocket is refused during its handshake with the same answer.
        with pytest.raises(websockets.InvalidStatus) as denied:
            await websockets.connect(front.url.replace("http", "ws") + f"/v1/realtime?model={GA}",
                                     additional_headers={"Authorization": f"Bearer {LOCAL_KEY}"})
        assert denied.value.response.status_code == 429
        assert json.loads(denied.value.response.body)["error"]["code"] == "session_limit_reached"
        assert "all 2 conversation slots" in json.loads(denied.value.response.body)["error"]["message"]

        # A hang-up through the front reaches the worker holding the call.
        await sdk(front).realtime.calls.hangup(first.connection.call_id)
        health = await front.until(lambda h: h["calls"] == 1)
        assert sorted(w["calls"] for w in health["workers"]) == [0, 1]
    await front.until(lambda h: h["calls"] == 0)


async def test_a_websocket_session_through_the_front(front):
    seen = []
    async with sdk(front).realtime.connect(model=GA) as connection:
        await connection.conversation.item.create(item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]})
        await connection.response.create(response={"output_modalities": ["text"]})
        async for event in connection:
            seen.append(event)
            if event.type == "response.done":
                break
    assert seen[0].type == "session.created"
    assert seen[-1].response.status == "completed"
    assert next(e for e in seen if e.type == "response.output_text.done").text.strip()
    # A sideband socket on a call no worker holds: the worker's own refusal, during the handshake.
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(front.url.replace("http", "ws") + "/v1/realtime?call_id=rtc_none",
                                 additional_headers={"Authorization": f"Bearer {LOCAL_KEY}"})
    assert refused.value.response.status_code == 404


async def test_an_ephemeral_key_from_the_front_starts_one_call_on_a_worker(front):
    origin = "http://localhost:1234"  # a page on another origin: CORS as from one process
    async with httpx.AsyncClient(base_url=front.url) as http:
        preflight = await http.options("/v1/realtime/calls", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] in ("*", origin)
        capabilities = await http.get("/v1/koe/capabilities", headers={"Origin": origin})
        assert capabilities.headers["access-control-allow-origin"] in ("*", origin)
        assert capabilities.json()["reply_model"]["profile"] == "fast"  # a worker's answer
    minted = await sdk(front).realtime.client_secrets.create(
        session={"type": "realtime", "instructions": "Answer like a pirate."})
    browser = sdk(front, minted.value)  # what a page would be given
    events: list[dict] = []
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio")
    channel = pc.createDataChannel("oai-events")
    channel.on("message", lambda message: events.append(json.loads(message)))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        answer = await browser.realtime.calls.with_raw_response.create(sdp=pc.localDescription.sdp)
        call_id = answer.headers["location"].rsplit("/", 1)[-1]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.text, type="answer"))
        for _ in range(400):
            if events:
                break
            await asyncio.sleep(0.05)
        assert events[0]["type"] == "session.created"
        assert events[0]["session"]["instructions"] == "Answer like a pirate."  # the key's settings
        assert front.health()["calls"] == 1

        with pytest.raises(openai.AuthenticationError):  # it started one session: spent
            await browser.realtime.calls.create(sdp=await an_offer())
        await browser.realtime.calls.hangup(call_id)  # the key that made the call may end it
        await front.until(lambda h: h["calls"] == 0)
    finally:
        await pc.close()


async def test_a_beta_call_with_a_key_from_the_fronts_beta_sessions(front):
    """Koe's own client in the beta dialect: `POST /v1/realtime/sessions` (the front mints), then the offer
    to `POST /v1/realtime?model=` with that key, answered by a worker."""
    settings = SessionSettings(model=BETA, instructions="Answer briefly.", voice="alloy")
    async with SimulatedUser(Backend(front.url, api_key=LOCAL_KEY), settings) as user:
        created = await user.seen("session.created", timeout_s=20)
        assert created.session["instructions"] == "Answer briefly." and created.session["voice"] == "alloy"
        assert front.health()["calls"] == 1
    await front.until(lambda h: h["calls"] == 0)


async def test_a_worker_that_dies_is_started_again(front):
    url = front.url.replace("http", "ws") + f"/v1/realtime?model={GA}"
    key = {"Authorization": f"Bearer {LOCAL_KEY}"}
    async with websockets.connect(url, additional_headers=key) as on_first, \
            websockets.connect(url, additional_headers=key) as on_second:
        for socket in (on_first, on_second):
            assert json.loads(await socket.recv())["type"] == "session.created"
        assert [w["calls"] for w in front.health()["workers"]] == [1, 1]
        before = front.health()["workers"][1]
        os.kill(before["pid"], signal.SIGKILL)
        with pytest.raises(websockets.ConnectionClosedError):  # its session ends, said as a server error
            await asyncio.wait_for(on_second.recv(), 30)
        assert on_second.close_code == 1011
        await on_first.send(json.dumps({"type": "input_audio_buffer.clear"}))  # the other worker's goes on
        assert json.loads(await on_first.recv())["type"] == "input_audio_buffer.cleared"
    after = await front.until(lambda h: h["workers"][1]["pid"] != before["pid"] and h["workers"][1]["ok"]
                              and h["ok"], timeout_s=180)
    assert after["workers"][1]["restarts"] == 1 and after["workers"][0]["pid"] is not None
    assert f"worker 2 (pid {before['pid']}) exited with code -9" in front.log.read_text()
    async with sdk(front).realtime.connect(model=GA) as connection:  # both serve again
        assert (await connection.recv()).type == "session.created"


def test_sigterm_stops_the_front_and_every_worker(front):
    pids = [w["pid"] for w in front.health()["workers"]]
    front.process.send_signal(signal.SIGTERM)
    assert front.process.wait(timeout=30) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_calls_and_cores_are_shared_out_evenly():
    assert shares(5, 2) == [3, 2] and shares(2, 2) == [1, 1] and shares(0, 3) == [0, 0, 0]
    with pytest.raises(ValueError):  # a worker with no share of the calls would have no limit
        WorkerFront(3, [], max_calls=2)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_said_at_once_with_its_address(workers):
    """Before any model loads: the single process and the front of --workers alike."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "koe.local", "--port", str(port), "--workers", workers],
                              capture_output=True, text=True, timeout=60, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
    assert "loaded" not in done.stderr  # no model was loaded first
