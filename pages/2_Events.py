"""Events: the raw event log, reply latency per turn, tokens and estimated cost (live while it runs)."""

from __future__ import annotations

import streamlit as st

from components import runtime
from components.conversation import current_relay
from components.conversation_picker import pick
from components.event_log import event_log
from components.gate import require_access
from components.live import cost_meter

st.set_page_config(page_title="Koe — Events", page_icon="📈", layout="wide")
visitor = require_access()
st.title("📈 Events")

store = runtime.store()
cost_meter(current_relay(), store, visitor)
with st.expander("Tokens and estimated cost per day" + ("" if visitor.owner else " (yours)")):
    st.dataframe(store.daily_totals(days=7, visitor=None if visitor.owner else visitor.id), hide_index=True,
                 width="stretch")
conversation_id = pick(store, "events", visitor)
if conversation_id:
    event_log(store, conversation_id)
