"""Koe: talk with a realtime AI model. The entry point: the conversation page (START/STOP, controls, live
transcript) and, by name in the sidebar, History and Events."""

from __future__ import annotations

import streamlit as st

from components import runtime
from components.controls import apply_settings, conversation_controls
from components.conversation import current_relay, last_conversation_pointer, microphone_watch, page_shown, talk
from components.gate import require_access
from components.live import cost_meter, drawn_for, page_drawn, status_and_meters, transcript
from components.settings_form import sidebar


def talk_page() -> None:
    """The conversation page."""
    st.set_page_config(page_title="Koe — talk", page_icon="🗣️", layout="wide")
    runtime.configure_logging()
    visitor = require_access()
    st.title("🗣️ Koe — talk with an AI, out loud")

    store = runtime.store()
    relay = current_relay()
    running = relay is not None and relay.status.state == "live"
    choice = sidebar(relay.settings if running else None, relay.settings if relay is not None else None)
    # Every part whose content depends on the session's state gets a slot of its own, so the elements after
    # it (the fragments above all) keep their place in the page when it appears or goes: a fragment that
    # reruns on its own keeps writing where it was, and a moved one would leave a stale copy behind.
    intro = st.container()
    if relay is None or relay.status.state == "idle":
        intro.markdown("Koe (声, *voice*) lets you hold a spoken conversation with an AI model. "
                       "**Press START**, allow the microphone, and talk: the AI answers in your speaker, and the "
                       "transcript below fills in as you go. Settings in the sidebar (voice, instructions, push to "
                       "talk) apply while you talk; **History** keeps every conversation with its audio.")
        with intro:
            last_conversation_pointer(store, visitor)
    relay = talk(choice, store, visitor)
    drawn = relay.status.state  # read once: if it changes while the page is drawn, the status fragment sees it
    drawn_for(relay, drawn)
    with st.container():
        microphone_watch()
    apply_settings(relay, choice)
    diagnostics = visitor.owner and st.sidebar.toggle("Show diagnostics", key="diagnostics",
                                                     help="How late the loop that carries the audio runs.")
    status_and_meters(relay, runtime.media_loop_watch() if diagnostics else None)
    conversation_controls(relay, drawn)
    cost_meter(relay, store, visitor)
    st.subheader("Transcript")
    transcript(store, relay)
    page_drawn()


page = st.navigation([
    st.Page(talk_page, title="Talk", icon="🗣️", default=True),
    st.Page("pages/1_History.py", title="History", icon="📜", url_path="History"),
    st.Page("pages/2_Events.py", title="Events", icon="📈", url_path="Events"),
])
page_shown(page.url_path)
page.run()
