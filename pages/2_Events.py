"""Events: the raw event log, reply latency per turn, tokens and estimated cost."""

from __future__ import annotations

import streamlit as st

from components import runtime
from components.conversation import current_relay
from components.conversation_picker import pick
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
    transcript = store.transcript(conversation_id)
    latency = transcript.dropna(subset=["latency_ms"])
    st.subheader("Reply latency per turn")
    if len(latency):
        per_turn = latency["latency_ms"].reset_index(drop=True)
        per_turn.index += 1
        st.bar_chart(per_turn, y_label="ms", x_label="reply")
    else:
        st.caption("No replies yet.")
    st.subheader("Tokens and estimated cost")
    usage = store.usage(conversation_id)
    if len(usage):
        st.dataframe(usage, hide_index=True, width="stretch")
        st.metric("Estimated cost (USD)", f"{usage['cost_usd'].sum():.4f}")
    else:
        st.caption("No usage reported yet.")
    st.subheader("Event log")
    all_events = store.events(conversation_id)
    kinds = sorted(all_events["type"].unique()) if len(all_events) else []
    left, right = st.columns([3, 1])
    chosen = left.multiselect("Types", kinds, key="event-types")
    direction = right.selectbox("Direction", ["all", "server", "client", "app"], key="event-direction")
    events = store.events(conversation_id, types=chosen or None, direction=None if direction == "all" else direction)
    st.dataframe(events, hide_index=True, width="stretch")
