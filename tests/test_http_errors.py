"""Every HTTP answer of koe.local is OpenAI-shaped, bad input never gets a 500, keys and calls are
guarded, and an offer whose peer never connects is closed and frees what it held.

Oracles: OpenAI's error shape `{"error": {"message", "type", "code", "param"}}` as the `openai`
package reads it (its `APIStatusError.body`), real aiortc offers, and the process's own counts of
file descriptors, threads and asyncio tasks.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import httpx
import pytest
from aiortc import RTCPeerConnection
from hypothesis import HealthCheck, given, settings, strategies as st
from openai.types.realtime import client_secret_create_params

from koe.local import LocalServer

from tests.conftest import LOCAL_KEY
from tests.test_client_events import jsonable

AUTH = {"Authorization": f"Bearer {LOCAL_KEY}"}


def openai_error(response: httpx.Response, status: int | None = None) -> dict:
    """The `error` object of an OpenAI-shaped error answer (asserting the shape)."""
    assert response.status_code < 500 or response.json()["error"]["type"] == "server_error", response.text
    if status is not None:
        assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"} and error["message"], error
    assert "Traceback" not in response.text and 'File "' not in response.text
    return error


async def offer(audio_lines: int = 1) -> tuple[RTCPeerConnection, str]:
    """A real aiortc offer (audio + `oai-events`), optionally with extra audio m-lines."""
    pc = RTCPeerConnection()
    for _ in range(audio_lines):
        pc.addTransceiver("audio", direction="sendrecv")
    pc.createDataChannel("oai-events")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_starlettes_own_refusals_are_openai_shaped(local_server):
    async with httpx.AsyncClient(base_url=local_server.url, headers=AUTH) as http:
        assert openai_error(await http.get("/v1/nothing/here"), 404)["code"] == "not_found"
        assert openai_error(await http.get("/v1/realtime/calls"), 405)["code"] == "method_not_allowed"
        assert openai_error(await http.put("/v1/realtime/client_secrets"), 405)
        big = await http.post("/v1/realtime/client_secrets", content=b"{" + b" " * 400_000 + b"}")
        assert openai_error(big, 413)["code"] == "request_too_large"

        async def chunks():  # no Content-Length: the limit holds while reading
            for _ in range(100):
                yield b" " * 10_000

        streamed = await http.post("/v1/realtime/client_secrets", content=chunks())
        assert openai_error(streamed, 413)["code"] == "request_too_large"
        deep = await http.post("/v1/realtime/client_secrets", content="[" * 100_000 + "]" * 100_000)
        assert openai_error(deep, 400)["code"] == "invalid_json"
        nested = {"session": {"type": "realtime", "tools": [{"type": "function", "parameters": {}}]}}
        node = nested["session"]["tools"][0]["parameters"]
        for _ in range(40):
            node = node.setdefault("a", {})
        assert "deeply" in openai_error(await http.post("/v1/realtime/client_secrets", json=nested), 400)["message"]
        latin = await http.post("/v1/realtime/client_secrets", content=b'{"session": "\xff"}')
        assert openai_error(latin, 400)["code"] == "invalid_json"


@pytest.mark.parametrize("body, code, param", [
    ({"expires_after": 5}, "invalid_type", "expires_after"),
    ({"expires_after": {"anchor": "created_at", "seconds": 5}}, "invalid_value", "expires_after.seconds"),
    ({"expires_after": {"seconds": 60}}, "missing_required_parameter", "expires_after.anchor"),
    ({"session": {"type": "realtime", "instructionz": "Hi"}}, "unknown_parameter", "session.instructionz"),
    ({"session": {"type": "realtime", "audio": {"output": {"voise": "ash"}}}}, "unknown_parameter",
     "session.audio.output.voise"),
    ({"session": {"type": "realtime", "audio": {"output": {"voice": "nonexistent"}}}}, "invalid_value",
     "session.audio.output.voice"),
    ({"session": {"type": "realtime", "model": "gpt-5-realtime-nope"}}, "invalid_value", "session.model"),
    ({"session": {"type": "realtime", "max_output_tokens": -1}}, "invalid_value", "session.max_output_tokens"),
    ({"session": 7}, "invalid_type", "session"),
    ({"session": {}}, "missing_required_parameter", "session.type"),
])
async def test_client_secret_bodies_are_validated(local_server, body, code, param):
    async with httpx.AsyncClient(base_url=local_server.url, headers=AUTH) as http:
        error = openai_error(await http.post("/v1/realtime/client_secrets", json=body), 400)
    assert (error["code"], error["param"]) == (code, param), error


async def test_beta_sessions_check_the_dialects_voices(local_server):
    async with httpx.AsyncClient(base_url=local_server.url, headers=AUTH) as http:
        beta = "gpt-4o-realtime-preview-2024-12-17"
        ga_voice = await http.post("/v1/realtime/sessions", json={"model": beta, "voice": "marin"})
        assert openai_error(ga_voice, 400)["param"] == "voice"
        assert openai_error(await http.post("/v1/realtime/sessions", json={"voice": "ash"}), 400)["param"] == "model"
        for voice in ("joe", "mei"):  # the local backend's own voices are served too
            own = await http.post("/v1/realtime/client_secrets", json={"session": {
                "type": "realtime", "audio": {"output": {"voice": voice}}}})
            assert own.status_code == 200, own.text
        ok = await http.post("/v1/realtime/sessions", json={"model": beta, "voice": "ash", "temperature": 0.7})
        assert ok.status_code == 200 and ok.json()["client_secret"]["value"].startswith("ek_")
        unknown = await http.post("/v1/realtime?model=gpt-nope", content="v=0", headers={"Content-Type": "application/sdp"})
        assert openai_error(unknown, 400)["param"] == "model"


async def test_offers_the_server_cannot_serve_are_refused_saying_why(local_server):
    async with httpx.AsyncClient(base_url=local_server.url, headers=AUTH) as http:
        sdp_headers = {"Content-Type": "application/sdp"}
        pc, many = await offer(audio_lines=50)
        await pc.close()
        error = openai_error(await http.post("/v1/realtime/calls", content=many, headers=sdp_headers), 400)
        assert "50 audio m-lines" in error["message"] and error["param"] == "sdp"
        pc, sdp = await offer()
        await pc.close()
        g722 = "\r\n".join(line for line in sdp.split("\r\n")
                           if not any(c in line for c in ("opus", "PCMU", "PCMA", "rtcp-fb")))
        g722 = g722.replace("m=audio 9 UDP/TLS/RTP/SAVPF 96 0 8", "m=audio 9 UDP/TLS/RTP/SAVPF 9")
        g722 = g722.replace("a=mid:0", "a=mid:0\r\na=rtpmap:9 G722/8000", 1)
        error = openai_error(await http.post("/v1/realtime/calls", content=g722, headers=sdp_headers), 400)
        assert "no codec this server speaks" in error["message"], error
        video = sdp + "m=video 9 UDP/TLS/RTP/SAVPF 97\r\na=rtpmap:97 VP8/90000\r\n"
        assert "video" in openai_error(await http.post("/v1/realtime/calls", content=video, headers=sdp_headers),
                                       400)["message"]
        bad_utf8 = await http.post("/v1/realtime/calls", files={"sdp": ("offer.sdp", b"v=0\r\n\xff\xfe", "application/sdp")})
        assert openai_error(bad_utf8, 400)["code"] == "invalid_encoding"
        big_part = await http.post("/v1/realtime/calls", files={"sdp": ("offer.sdp", b"v" * 600_000, "application/sdp")})
        assert openai_error(big_part, 413)
        garbled = await http.post("/v1/realtime/calls", content=b"--x\r\nnonsense",
                                  headers={"Content-Type": "multipart/form-data; boundary=x"})
        assert openai_error(garbled)["type"] and garbled.status_code == 400
        bad_session = await http.post("/v1/realtime/calls", files={
            "sdp": (None, sdp, "application/sdp"), "session": (None, json.dumps({"type": "realtime", "voice": "x"}))})
        assert openai_error(bad_session, 400)["param"] == "session.voice"
    assert local_server.call_count == 0


async def test_ephemeral_keys_start_one_call_and_only_their_owner_hangs_it_up(local_server):
    async with httpx.AsyncClient(base_url=local_server.url) as http:
        async def mint(seconds: int = 60) -> str:
            minted = await http.post("/v1/realtime/client_secrets", headers=AUTH,
                                     json={"expires_after": {"anchor": "created_at", "seconds": seconds}})
            return minted.json()["value"]

        async def call(key: str) -> httpx.Response:
            pc, sdp = await offer()
            await pc.close()
            return await http.post("/v1/realtime/calls", content=sdp, headers={
                "Authorization": f"Bearer {key}", "Content-Type": "application/sdp"})

        mine, theirs = await mint(), await mint()
        created = await call(mine)
        assert created.status_code == 201
        call_id = created.headers["location"].rsplit("/", 1)[-1]
        assert openai_error(await call(mine), 401)["code"] == "invalid_api_key"  # spent
        stranger = await http.post(f"/v1/realtime/calls/{call_id}/hangup", headers={"Authorization": f"Bearer {theirs}"})
        assert openai_error(stranger, 404)["code"] == "call_not_found"
        assert openai_error(await http.post(f"/v1/realtime/calls/{call_id}/hangup",
                                            headers={"Authorization": "Bearer sk-wrong"}), 401)
        assert local_server.call_count == 1
        own = await http.post(f"/v1/realtime/calls/{call_id}/hangup", headers={"Authorization": f"Bearer {mine}"})
        assert own.status_code == 200 and local_server.call_count == 0

        expired = await mint(10)
        local_server._secrets[expired].expires_at = time.time() - 1  # ten seconds later
        assert "expired" in openai_error(await call(expired), 401)["message"]
        by_server = await call(theirs)
        server_hangup = await http.post(f"/v1/realtime/calls/{by_server.headers['location'].rsplit('/', 1)[-1]}/hangup",
                                        headers=AUTH)
        assert server_hangup.status_code == 200 and local_server.call_count == 0


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_an_offer_whose_peer_never_connects_is_closed_and_freed(models):
    server = LocalServer(port=0, api_key=LOCAL_KEY, models=models, offer_timeout_s=4.0, max_calls=0).start()
    try:
        def tasks() -> int:
            async def count() -> int:
                return len(asyncio.all_tasks())
            return asyncio.run_coroutine_threadsafe(count(), server.loop).result(5)

        async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as http:
            async def vanish() -> None:  # the client posts its offer, then goes away
                pc, sdp = await offer()
                answer = await http.post("/v1/realtime/calls", content=sdp, headers={"Content-Type": "application/sdp"})
                assert answer.status_code == 201
                await pc.close()

            await vanish()  # warm: the first call loads what every call shares; then it times out
            for _ in range(300):
                if server.call_count == 0:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            before = (server.call_count, tasks(), threading.active_count(), _open_fds())
            for _ in range(10):
                await vanish()
            assert server.call_count > 0  # answered, waiting for peers that will never come
            held = _open_fds()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (server.call_count, tasks()) != before[:2]:
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)
            after = (server.call_count, tasks(), threading.active_count(), _open_fds())
        print("calls, tasks, threads, fds before / holding / after:", before, held, after)
        assert before[0] == after[0] == 0 and after[1] <= before[1] and after[2] <= before[2]
        assert held > before[3] and after[3] <= before[3] + 2, (before, held, after)
    finally:
        server.stop()


SECRET_BODIES = st.from_type(client_secret_create_params.ClientSecretCreateParams)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                                        max_size=4), max_leaves=20)
ROUTES = ["/v1/realtime/calls", "/v1/realtime/client_secrets", "/v1/realtime/sessions", "/v1/realtime",
          "/v1/realtime/calls/rtc_x/hangup", "/v1/realtime?model=gpt-realtime", "/healthz", "/v1/x"]


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(ROUTES), method=st.sampled_from(["POST", "POST", "GET", "PUT", "DELETE"]),
       body=st.one_of(SECRET_BODIES.map(jsonable).map(json.dumps).map(str.encode),
                      JSON.map(json.dumps).map(str.encode), st.binary(max_size=300)),
       content_type=st.sampled_from(["application/json", "application/sdp", "multipart/form-data; boundary=b",
                                     "text/plain", ""]),
       key=st.sampled_from([LOCAL_KEY, "ek_nope", "", "sk-\u00e9"]))
def test_no_request_gets_a_5xx(local_server, route, method, body, content_type, key):
    headers: dict[str, str | bytes] = {"Content-Type": content_type} if content_type else {}
    if key:
        headers["Authorization"] = b"Bearer " + key.encode()
    response = httpx.request(method, local_server.url + route, content=body, headers=headers, timeout=30)
    if response.status_code >= 400:
        openai_error(response)
    else:
        assert response.status_code in (200, 201)
    if response.status_code == 201:  # a call after all (a fuzzed body can't be an offer): never here
        pytest.fail(f"a fuzzed body started a call: {body!r}")
