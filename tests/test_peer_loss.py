"""A browser that vanishes without a goodbye (tab closed, process killed) is noticed in seconds.

Oracle: a real aiortc peer in another process, killed with SIGKILL once connected (no DTLS
close, no hang-up), and this process's own peer ending (`failed` / `closed`) and ending the remote track,
which is what ends the relay's upstream call (components.conversation's `on_ended`).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import aioice.ice
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from koe.relay import notice_lost_peers_quickly

# The "browser": answers the offer on stdin, sends silence, and waits to be killed.
BROWSER = """
import asyncio, json, sys
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

async def main():
    pc = RTCPeerConnection()
    pc.addTrack(AudioStreamTrack())
    await pc.setRemoteDescription(RTCSessionDescription(**json.loads(sys.stdin.readline())))
    await pc.setLocalDescription(await pc.createAnswer())
    print(json.dumps({"sdp": pc.localDescription.sdp, "type": "answer"}), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_killed_browser_peer_fails_the_connection_within_seconds(monkeypatch):
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", aioice.ice.CONSENT_INTERVAL)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", aioice.ice.CONSENT_FAILURES)
    notice_lost_peers_quickly()  # as the app does once per process
    browser = subprocess.Popen([sys.executable, "-c", BROWSER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    pc = RTCPeerConnection()
    ended = asyncio.Event()
    gone_state = asyncio.Event()

    @pc.on("track")
    def on_track(track) -> None:
        track.on("ended", ended.set)

        async def drain() -> None:  # a received track is always read
            while True:
                try:
                    await track.recv()
                except Exception:
                    return
        asyncio.ensure_future(drain())

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):  # consent expired: ICE, then DTLS, shut down
            gone_state.set()

    try:
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        browser.stdin.write(json.dumps({"sdp": pc.localDescription.sdp, "type": "offer"}) + "\n")
        browser.stdin.flush()
        answer = await asyncio.get_running_loop().run_in_executor(None, browser.stdout.readline)
        await pc.setRemoteDescription(RTCSessionDescription(**json.loads(answer)))
        for _ in range(600):
            if pc.connectionState == "connected":
                break
            await asyncio.sleep(0.05)
        assert pc.connectionState == "connected"
        await asyncio.sleep(1.0)
        browser.kill()  # no goodbye of any kind
        gone = time.monotonic()
        await asyncio.wait_for(asyncio.gather(gone_state.wait(), ended.wait()), 25)
        noticed_s = time.monotonic() - gone
        print(f"a killed peer noticed after {noticed_s:.1f} s (aioice's defaults: ~30 s)")
        # Well inside aioice's ~30 s; the margin absorbs a loaded machine.
        assert noticed_s < 20
    finally:
        browser.kill()
        browser.wait()
        await pc.close()
