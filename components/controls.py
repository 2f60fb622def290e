"""Controls that act on the running session: apply sidebar settings, push to talk."""

from __future__ import annotations

import streamlit as st

from koe.client import RealtimeError
from koe.protocol import SettingsError, changed_fields
from koe.relay import Relay

from components import runtime
from components.settings_form import Choice


def apply_settings(relay: Relay, choice: Choice) -> None:
    """On Apply, send what changed with `session.update` and show the server's answer."""
    if not st.session_state.get("settings_applied"):
        return
    if relay.status.state != "live":
        st.sidebar.info("Saved: these settings apply when you press START.")
        return
    changed = changed_fields(relay.settings, choice.settings) - {"model"}
    if not changed:
        st.sidebar.info("Nothing changed.")
        return
    if "voice" in changed and relay.assistant_spoke:
        rows = runtime.store().transcript(st.session_state["conversation_id"])
        history = [("user" if row.speaker == "You" else "assistant", row.text)
                   for row in rows.itertuples() if row.text and row.speaker in ("You", "AI")]  # not tool rows
        relay.restart(choice.settings, history)
        st.sidebar.warning("The voice cannot change once the AI has spoken: a new session starts with the new "
                           "voice. The transcript is kept, and the AI is given the conversation so far.")
        return
    try:
        confirmed = relay.update(choice.settings, only=changed)
    except (SettingsError, RealtimeError) as exc:
        st.sidebar.error(f"Not applied: {exc}")
    except TimeoutError:
        st.sidebar.error("Not applied: the backend did not confirm in time.")
    else:
        st.sidebar.success(f"session.updated: the server confirmed {', '.join(sorted(changed))}.")
        st.session_state["confirmed"] = confirmed


def push_to_talk(relay: Relay) -> None:
    """Manual turns: clear the input buffer when the user starts, commit and ask for a reply when done."""
    if relay.status.state != "live" or relay.settings.turn_detection is not None:
        return
    talk_col, send_col = st.columns(2)
    try:
        if talk_col.button("🎙️ Talk", width="stretch", help="Start a new turn (clears what was heard)"):
            relay.send({"type": "input_audio_buffer.clear"})
        if send_col.button("📨 Send", type="primary", width="stretch", help="End your turn and get a reply"):
            relay.send({"type": "input_audio_buffer.commit"})
            relay.send({"type": "response.create"})
    except RealtimeError as exc:
        st.error(f"Not sent: {exc}")
