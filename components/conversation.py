"""The browser microphone and speaker (streamlit-webrtc) wired to a Relay, START to STOP.

Audio path: browser mic → Opus → the peer streamlit-webrtc runs → `sink_audio_track` (every frame,
in order, no intermediate queue that could skip or repeat audio) → Relay → upstream call. The
reply comes back through the Relay as the Opus packets it came in (koe.opus), handed straight on (`FrameQueueTrack`, passed as
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
from koe.recording import Recorder, recording_path
from koe.relay import Relay
from koe.store import LOCAL_BACKEND, SessionStore

from components import runtime, tools
from components.settings_form import Choice

PAGE_SHOWN = "koe_page_shown"  # session state: (the page the full run before this one drew, the one this run draws)

# The browser's own echo cancellation keeps the AI from hearing (and interrupting) itself.
AUDIO_CONSTRAINTS = {"echoCancellation": True, "noiseSuppression": True, "autoGainControl": True}


def current_relay() -> Relay | None:
    return st.session_state.get("relay")


def page_shown(url_path: str) -> None:
    """Note, in every full run, the page it draws (`st.navigation`'s page's `url_path`)."""
    shown = st.session_state.get(PAGE_SHOWN)
    st.session_state[PAGE_SHOWN] = (shown[1] if shown else None, url_path)


def _keep_the_call() -> None:
    """Keep a running call across quick reruns of this page.

    streamlit-webrtc (0.79) stops the call when it believes its component went undrawn for a run, as when the page
    was left and came back: it compares Streamlit's count of finished runs, which goes up only when a run's last
    message is sent to the browser. On a busy server the next run can start before that, read a count one short,
    and the run after it then looks like a return: the call ended mid-sentence ("the browser disconnected"). This
    page draws the component in every full run, so only a full run of another page in between is a return."""
    shown, context = st.session_state.get(PAGE_SHOWN), st.session_state.get("talk")
    if context is not None and shown is not None and shown[0] == shown[1]:
        context._last_rendered_run_count = None  # its check is skipped for this run, and set again by it


def _ice(visitor: Visitor) -> tuple[list[dict], list[dict]]:
    """(browser, server) ICE servers, kept for this session until half their credentials' life is
    gone: minting new ones on every rerun would change the component's arguments each time."""
    kept = st.session_state.get("koe_ice")
    if kept is None or kept[0] < time.time():
        kept = (time.time() + runtime.config().ice.turn_ttl_s / 2, *runtime.ice_servers(visitor.id))
        st.session_state["koe_ice"] = kept
    return kept[1], kept[2]


def _on_change(store: SessionStore, backend_name: str, visitor: Visitor, model_used: str | None) -> None:
    """START/STOP pressed. `model_used`: the model that answers when it is not the session's (the local
    backend's reply model), kept with the conversation so History names it."""
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
            backend=backend_name, model=model_used or settings.model, dialect=dialect_for_model(settings.model),
            settings=settings.model_dump(mode="json"), visitor=visitor.id)
        st.session_state["conversation_id"] = conversation_id
        limits = runtime.config().limits
        relay.recorder = Recorder(recording_path(runtime.config().backend.data_dir, conversation_id),
                                  max_seconds=(limits.max_session_minutes or 60) * 60)
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
        if previous is not None:  # keep saying how the last conversation ended, and its figures
            relay.status.message = f"{previous.status.message} Press START to talk again."
            st.session_state["koe_last_guard"] = previous.guard
        st.session_state["relay"] = relay
        # A reload or a closed tab ends the Streamlit session without STOP: close the upstream call then.
        observer = st.session_state.get("relay_observer")
        if observer is not None:
            observer.stop()
        st.session_state["relay_observer"] = SessionShutdownObserver(relay.stop)
    elif relay.status.state == "idle":
        relay.backend, relay.settings, relay.extra_voices = choice.backend, choice.settings, choice.extra_voices
    # A session that ended on its own (a limit, the backend) stops the browser's call too, once,
    # so the button says START again.
    stop_browser = busy and relay.status.state in ("ended", "failed") and relay.status.ended_by != "user" \
        and not st.session_state.get("koe_stopped_browser")
    st.session_state["koe_stopped_browser"] = stop_browser
    _keep_the_call()
    webrtc_streamer(
        key="talk",
        mode=WebRtcMode.SENDRECV,
        media_stream_constraints={"audio": AUDIO_CONSTRAINTS, "video": False},
        desired_playing_state=False if stop_browser else None,
        # Audio only: the element that plays the AI's voice stays, out of sight (no grey video box).
        video_html_attrs={"autoPlay": True, "controls": False, "style": {"display": "none"}},
        audio_html_attrs={"autoPlay": True, "controls": False, "style": {"display": "none"}},
        # The browser's track ends when its tab closes or reloads: end the upstream call with it.
        sink_audio_track=create_audio_sink_track(relay.on_browser_frame, key="koe-mic",
                                                 on_ended=lambda: relay.close("the browser disconnected")),
        source_audio_track=relay.to_browser,
        on_change=functools.partial(_on_change, store, choice.backend_name, visitor,
                                    choice.capabilities.reply_model
                                    if choice.capabilities and choice.backend_name == LOCAL_BACKEND else None),
        frontend_rtc_configuration={"iceServers": browser_ice},
        server_rtc_configuration={"iceServers": server_ice},
    )
    return relay


# Two fixes to the streamlit-webrtc iframe (same origin), applied whenever it (re)loads: its getUserMedia
# is wrapped, so a refused microphone reaches the page as words, not the raw error; and its grey video
# placeholder (this app is audio only) is hidden.
_MIC_JS = """
export default function (component) {
  // The wrapper outlives this mount (it stays on the iframe's document), so it reports through whichever
  // mount is current: a rerun that re-mounts this component would otherwise leave it calling a dead one.
  window.__koeMicReport = (error) => component.setStateValue('error', error);
  const hook = () => {
    for (const frame of document.querySelectorAll('iframe[title="streamlit_webrtc.component.webrtc_streamer"]')) {
      let win;
      try { win = frame.contentWindow; } catch (e) { continue; }
      const devices = win && win.navigator && win.navigator.mediaDevices;
      // Marked on the document: the iframe's first window object can outlive its initial blank document.
      // Not yet: a document still being made has no head (the next round hooks it).
      if (!devices || !win.document.head) continue;
      const doc = win.document;
      if (!doc.__koeMicWatched) {
        const style = doc.createElement('style');
        style.textContent = '.MuiPaper-elevation0:not(.MuiAlert-root) { display: none !important; }';
        doc.head.appendChild(style);
        const original = devices.getUserMedia.bind(devices);
        devices.getUserMedia = async (constraints) => {
          doc.__koeMicCalled = true;
          try { const stream = await original(constraints); window.__koeMicReport(''); return stream; }
          catch (e) { window.__koeMicReport(String(e && e.name || e)); throw e; }
        };
        doc.__koeMicWatched = true;
      }
      // START pressed before the wrapper was in (within a round of the frame loading): the refusal still shows
      // as streamlit-webrtc's own alert ("NotAllowedError: Permission denied"), so its name is reported once.
      if (!doc.__koeMicCalled && !doc.__koeMicSeen && doc.body) {
        const found = /\b(Not[A-Za-z]*Error|OverconstrainedError|SecurityError|AbortError)\b/.exec(doc.body.innerText || '');
        if (found) { doc.__koeMicSeen = true; window.__koeMicReport(found[1]); }
      }
    }
  };
  hook();
  const timer = setInterval(hook, 300);
  return () => clearInterval(timer);
}
"""
_microphone = st.components.v2.component("koe_microphone_watch", js=_MIC_JS)
MIC_MESSAGES = {
    "NotAllowedError": "Koe cannot hear you: the browser blocked the microphone. Allow it for this page (the "
                       "microphone or lock icon in the address bar, or the site settings), then press START again.",
    "NotFoundError": "No microphone was found: connect one, then press START again.",
    "NotReadableError": "The microphone is busy in another application: close it there, then press START again.",
}


def microphone_watch() -> None:
    """Say in words why the microphone could not be used, when the browser refused it."""
    result = _microphone(key="microphone-watch", on_error_change=lambda: None, height=0)
    error = getattr(result, "error", None) or ""
    if error:
        st.error(MIC_MESSAGES.get(error, f"The microphone could not be used ({error}): check the browser's "
                                         "settings for this page, then press START again."))


def last_conversation_pointer(store: SessionStore, visitor: Visitor) -> None:
    """After a reload (a new browser session): where the conversation just had can be found."""
    if st.session_state.get("conversation_id"):
        return
    latest = store.conversations(visitor=None if visitor.owner else visitor.id, limit=1)
    if not latest or not latest[0].get("turns"):
        return
    last = latest[0]
    started = time.strftime("%H:%M", time.localtime(last["started_at"]))
    how = f"ended: {last['end_reason']}" if last.get("end_reason") else "still running in another tab"
    st.info(f"Your last conversation (started {started}, {last['turns']} "
            f"{'turn' if last['turns'] == 1 else 'turns'}, {how}) is kept in History, with its audio.")
    query = {"id": last["id"]}
    if (token := st.query_params.get("pass")) is not None:
        query["pass"] = token
    st.page_link("pages/1_History.py", label="Open it in History", icon="📜", query_params=query)


def recording_download(conversation: dict) -> None:
    """The conversation's audio (you left, the AI right), to play and download, once it has ended."""
    path = recording_path(runtime.config().backend.data_dir, conversation["id"])
    if not path.exists():
        return
    if conversation.get("ended_at") is None:
        st.caption("The audio recording can be downloaded once the conversation has ended.")
        return
    audio = path.read_bytes()
    st.audio(audio, format="audio/ogg")
    st.download_button("Download audio (Ogg/Opus: you left, the AI right)", audio,
                       file_name=f"{conversation['id']}.ogg", mime="audio/ogg", width="stretch")
