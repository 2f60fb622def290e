"""STUN never blocks START: gathering is bounded, a backend on this machine gets no STUN/TURN, and a
slow start says why (a silent STUN server is found with real STUN Binding requests)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import aioice.ice
import pytest
from aioice import stun
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from koe.client import Backend
from koe.ice import bound_gathering, same_host, stun_urls, unanswered_stun, upstream_ice_servers
from koe.protocol import SessionSettings
from koe.relay import LoopThread, Relay


@pytest.fixture
def silent_stun():
    """A loopback UDP port that nobody reads: a STUN server that never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"stun:127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def answering_stun():
    """A loopback STUN server answering Binding requests (messages made by aioice's STUN codec)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    running = True

    def serve() -> None:
        while running:
            try:
                data, addr = sock.recvfrom(2048)
            except OSError:
                continue
            request = stun.parse_message(data)
            response = stun.Message(message_method=request.message_method, message_class=stun.Class.RESPONSE,
                                    transaction_id=request.transaction_id)
            response.attributes["XOR-MAPPED-ADDRESS"] = addr
            sock.sendto(bytes(response), addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"stun:127.0.0.1:{sock.getsockname()[1]}"
    running = False
    thread.join()
    sock.close()


@pytest.fixture
def default_bound():
    """Put aioice's own bound back after a test that changes it."""
    defaults = aioice.ice.Connection.get_component_candidates.__defaults__
    yield
    aioice.ice.Connection.get_component_candidates.__defaults__ = defaults


async def test_only_silent_stun_servers_are_named(silent_stun, answering_stun):
    assert await unanswered_stun([silent_stun, answering_stun, "stun:[::1]:1", "stun:no such host"], 0.5) == \
        [silent_stun, "stun:[::1]:1", "stun:no such host"]
    assert stun_urls([RTCIceServer([silent_stun, "turn:x:3478"], "u", "p"), RTCIceServer(answering_stun)]) == \
        [silent_stun, answering_stun]


async def test_a_backend_on_this_machine_gets_no_stun_or_turn(silent_stun):
    servers = [RTCIceServer(silent_stun)]
    own = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
    for here in ("http://127.0.0.1:8000", "http://localhost:8000/v1", "http://[::1]:1", f"http://{own[0]}:9"):
        assert await same_host(here), here
        assert await upstream_ice_servers(servers, here) == []
    for elsewhere in ("http://192.0.2.1:8000", "https://name.invalid/v1", "not a url"):
        assert not await same_host(elsewhere), elsewhere
        assert await upstream_ice_servers(servers, elsewhere) == servers


async def test_a_peer_answers_within_the_bound_whatever_stun_does(silent_stun, default_bound):
    """aioice alone waits 5 s for a silent STUN server; bounded, the offer is there in about the bound."""
    bound_gathering(0.3)
    pc = RTCPeerConnection(RTCConfiguration([RTCIceServer(silent_stun)]))
    pc.addTransceiver("audio")
    started = time.monotonic()
    await pc.setLocalDescription(await pc.createOffer())
    took = time.monotonic() - started
    await pc.close()
    assert took < 3.0, took  # 5 s and more without the bound; loose, for a loaded machine
    assert "typ host" in pc.localDescription.sdp  # it answers with what it gathered


def test_a_slow_start_says_so_and_names_the_silent_stun_server(silent_stun):
    """A backend that never answers the SDP offer, and a silent STUN server: the status line says both,
    and the upstream peer, whose backend is on this machine, was given no STUN server at all."""
    with socket.socket() as never_answers:
        never_answers.bind(("127.0.0.1", 0))
        never_answers.listen()
        backend = Backend(f"http://127.0.0.1:{never_answers.getsockname()[1]}", timeout_s=30)
        relay = Relay(backend, SessionSettings(), LoopThread("koe-test-relay"), ice_servers=[RTCIceServer(silent_stun)])
        relay.start()
        deadline = time.monotonic() + 20
        while "longer than expected" not in relay.status.message and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            assert relay.status.state == "connecting"
            assert f"the STUN server {silent_stun} does not answer" in relay.status.message, relay.status.message
            assert "the backend has not finished connecting" in relay.status.message
            assert relay._connection is not None and relay._connection._ice_servers == []
        finally:
            relay.stop()
