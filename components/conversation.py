"""The browser microphone and speaker (streamlit-webrtc) wired to a Relay, START to STOP.

Audio path: browser mic → Opus → the peer streamlit-webrtc runs → `sink_audio_track` (every frame,
in order, no intermediate queue that could skip or repeat audio) → Relay → upstream call. The
reply comes back through the Relay as frames handed straight on (`FrameQueueTrack`, passed as
`source_audio_track`): no second clock, so no standing delay can build up, a small bound on what it
holds, and a `clear()` on barge-in. (`PcmAudioSource` would re-pace the audio and holds without limit.)
"""

from __future__ import annotations

import functools
import time

import streamlit as st
from streamlit_webrtc import WebRtcMode, create_audio_sink_track, webrtc_streamer
from streamlit_webrtc.shutdown import SessionShutdownObserver

from koe.access import Visitor
from koe.ice import to_aiortc
from koe.limits import LimitReached
from koe.protocol import dialect_for_model
from koe.relay import Relay
from koe.store import LOCAL_BACKEND, SessionStore

from components import runtime, tools
from components.settings_form import Choice

# The browser's own echo cancellation keeps the AI from hearing (and interrupting) itself.
AUDIO_CONSTRAINTS = {"echoCancellation": True, "noiseSuppression": True, "autoGainControl": True}


def current_relay() -> Relay | None:
    return st.session_state.get("relay")


def _ice(visitor: Visitor) -> tuple[list[dict], list[dict]]:
    """(browser, server) ICE servers, kept for this session until half their credentials' life is
    gone: minting new ones on every rerun would change the component's arguments each time."""
    kept = st.session_state.get("koe_ice")
    if kept is None or kept[0] < time.time():
        kept = (time.time() + runtime.config().ice.turn_ttl_s / 2, *runtime.ice_servers(visitor.id))
        st.session_state["koe_ice"] = kept
    return kept[1], kept[2]


def _on_change(store: SessionStore, backend_name: str, visitor: Visitor) -> None:
    ctx = st.session_state.get("talk")
    relay = current_relay()
    if ctx is None or relay is None:
        return
    if ctx.state.playing and relay.status.state == "idle":
        settings = relay.settings
        try:  # the limits decide, before anything is connected or stored
            guard = runtime.limiter().admit(visitor.id, model=settings.model, billed=backend_name != LOCAL_BACKEND,
                                            exempt=visitor.owner)
        except LimitReached as exc:
            relay.refuse(str(exc))
            return
        conversation_id = store.start_conversation(
            backend=backend_name, model=settings.model, dialect=dialect_for_model(settings.model),
            settings=settings.model_dump(mode="json"), visitor=visitor.id)
        st.session_state["conversation_id"] = conversation_id
        relay.on_event = functools.partial(store.record_event, conversation_id)
        relay.on_latency = functools.partial(store.set_latency, conversation_id)
        relay.on_end = functools.partial(store.end_conversation, conversation_id)
        tools.attach(relay, store, conversation_id, visitor)
        relay.start(guard)
    elif not ctx.state.playing and not ctx.state.signalling:
        relay.stop()


def talk(choice: Choice, store: SessionStore, visitor: Visitor) -> Relay:
    """Render START/STOP; returns the relay of this browser session."""
    browser_ice, server_ice = _ice(visitor)
    relay = current_relay()
    ctx = st.session_state.get("talk")
    busy = ctx is not None and (ctx.state.playing or ctx.state.signalling)
    if relay is None or (relay.status.state in ("ended", "failed") and not busy):
        # Each START gets a fresh relay: the previous reply track ended with its peer.
        previous = relay
        relay = Relay(choice.backend, choice.settings, runtime.loop_thread(), ice_servers=to_aiortc(server_ice),
                      extra_voices=choice.extra_voices)
        if previous is not None:  # keep saying how the last conversation ended
            relay.status.message = f"{previous.status.message} Press START to talk again."
        st.session_state["relay"] = relay
        # A reload or a closed tab ends the Streamlit session without STOP: close the upstream call then.
        observer = st.session_state.get("relay_observer")
        if observer is not None:
            observer.stop()
        st.session_state["relay_observer"] = SessionShutdownObserver(relay.stop)
    elif relay.status.state == "idle":
        relay.backend, relay.settings = choice.backend, choice.settings
    webrtc_streamer(
        key="talk",
        mode=WebRtcMode.SENDRECV,
        media_stream_constraints={"audio": AUDIO_CONSTRAINTS, "video": False},
        # The browser's track ends when its tab closes or reloads: end the upstream call with it.
        sink_audio_track=create_audio_sink_track(relay.on_browser_frame, key="koe-mic",
                                                 on_ended=lambda: relay.close("the browser disconnected")),
        source_audio_track=relay.to_browser,
        on_change=functools.partial(_on_change, store, choice.backend_name, visitor),
        frontend_rtc_configuration={"iceServers": browser_ice},
        server_rtc_configuration={"iceServers": server_ice},
    )
    return relay
