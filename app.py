"""Koe: talk with a realtime AI model. The conversation page: START/STOP, meters, live transcript."""

from __future__ import annotations

import streamlit as st

from components import runtime
from components.controls import apply_settings, push_to_talk
from components.conversation import current_relay, talk
from components.gate import require_access
from components.live import cost_meter, status_and_meters, transcript
from components.settings_form import sidebar

st.set_page_config(page_title="Koe — talk to a realtime AI", page_icon="🗣️", layout="wide")
runtime.configure_logging()
visitor = require_access()
st.title("🗣️ Koe")

store = runtime.store()
relay = current_relay()
running = relay is not None and relay.status.state == "live"
choice = sidebar(relay.settings if running else None)
relay = talk(choice, store, visitor)
apply_settings(relay, choice)
push_to_talk(relay)
status_and_meters(relay, runtime.media_loop_watch() if visitor.owner else None)
cost_meter(relay, store, visitor)
st.subheader("Transcript")
transcript(store)
