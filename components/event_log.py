"""One conversation's reply latency, usage and event log, live while the conversation runs.

While it runs, the section is a fragment polling `SessionStore.version` (one indexed row): only a
new version reads the events again and rebuilds the tables; between changes the fragment shows the
frames it already built (Streamlit must be sent them again, but the browser keeps big ones cached
and they are not recomputed). DESIGN.md: heavy or frequent fragments stall the loop that carries
the audio, so it polls every LIVE_EVERY_S, not faster, and shows at most LIVE_ROWS events.
"""

from __future__ import annotations

from dataclasses import dataclass

import json

import pandas as pd
import streamlit as st

from koe.relay import TURN_WAITED
from koe.store import SessionStore

LIVE_EVERY_S = 2.0
LIVE_ROWS = 500  # the latest events while it runs; every stored one (up to the store's limit) once ended
DIRECTIONS = ["all", "server", "client", "app"]
USAGE_COLUMNS = {"time": "Time", "response_id": "Response", "model": "Model", "input_text_tokens": "Text in",
                 "input_audio_tokens": "Audio in", "cached_text_tokens": "Cached text in",
                 "cached_audio_tokens": "Cached audio in", "output_text_tokens": "Text out",
                 "output_audio_tokens": "Audio out", "cost_usd": "Cost (USD)"}
EVENT_COLUMNS = {"time": "Time", "direction": "Direction", "type": "Type", "event_id": "Event id", "payload": "Event"}


@dataclass(frozen=True)
class _Snapshot:
    """What the section shows, read at one store version."""

    key: tuple[str, int, tuple[str, ...], str]  # conversation, version, chosen types, direction
    running: bool
    latency: pd.Series
    waited: pd.Series  # per user turn: ms the backend waited after the user stopped
    usage: pd.DataFrame
    kinds: list[str]
    count: str
    events: pd.DataFrame
    tool_calls: tuple[int, int]  # function calls run for the AI, and how many of them failed


def _read(store: SessionStore, conversation_id: str, version: int, types: tuple[str, ...],
          direction: str) -> _Snapshot:
    meta = store.conversation(conversation_id) or {}
    running = meta.get("ended_at") is None
    rows = LIVE_ROWS if running else 5000
    transcript = store.transcript(conversation_id)
    latency = transcript["latency_ms"].dropna().reset_index(drop=True)
    latency.index += 1
    every = store.events(conversation_id, limit=rows)
    waited = pd.Series([json.loads(p)["waited_ms"] for p in every.loc[every["type"] == TURN_WAITED, "payload"]],
                       dtype="Int64")
    waited.index += 1
    chosen = every if not types and direction == "all" else store.events(
        conversation_id, types=list(types) or None, direction=None if direction == "all" else direction, limit=rows)
    shown = chosen.assign(time=chosen["time"].dt.strftime("%H:%M:%S.%f").str[:-3],
                          event_id=chosen["event_id"].fillna("")).rename(columns=EVENT_COLUMNS)
    calls = [json.loads(p) for p in every.loc[every["type"] == "koe.tool_call", "payload"]]
    usage = store.usage(conversation_id)
    usage = usage.assign(time=usage["time"].dt.strftime("%H:%M:%S")).rename(columns=USAGE_COLUMNS)
    return _Snapshot((conversation_id, version, types, direction), running, latency, waited, usage,
                     sorted(every["type"].unique()), f"{len(every)}{'+' if len(every) == rows else ''}", shown,
                     (len(calls), sum(c.get("error") is not None for c in calls)))


def _section(store: SessionStore, conversation_id: str) -> None:
    version = store.version(conversation_id)
    types = tuple(st.session_state.get("event-types") or ())
    direction = st.session_state.get("event-direction", "all")
    snapshot: _Snapshot | None = st.session_state.get("event-log-snapshot")
    if snapshot is None or snapshot.key != (conversation_id, version, types, direction):
        was_running = snapshot is not None and snapshot.key[0] == conversation_id and snapshot.running
        snapshot = _read(store, conversation_id, version, types, direction)
        st.session_state["event-log-snapshot"] = snapshot
        if was_running and not snapshot.running:
            st.rerun()  # it ended: redraw the page once, without polling from now on

    st.subheader("Reply latency per turn")
    if len(snapshot.latency):
        st.bar_chart(snapshot.latency, y_label="ms", x_label="reply")
    else:
        st.caption("No replies yet.")
    st.subheader("Wait after the user stopped, per turn")
    if len(snapshot.waited):
        st.bar_chart(snapshot.waited, y_label="ms", x_label="turn")
        st.caption("From the microphone's last voiced frame to the backend's speech_stopped, measured at the relay: "
                   "server VAD waits its silence window; semantic VAD ends a finished sentence sooner.")
    else:
        st.caption("No turns ended by turn detection yet.")
    st.subheader("Tokens and estimated cost")
    if len(snapshot.usage):
        st.dataframe(snapshot.usage, hide_index=True, width="stretch")
        st.metric("Estimated cost (USD)", f"{snapshot.usage['Cost (USD)'].sum():.4f}")
    else:
        st.caption("No usage reported yet.")
    st.subheader("Event log")
    left, right = st.columns([3, 1])
    left.multiselect("Types", sorted({*snapshot.kinds, *types}), key="event-types")
    right.selectbox("Direction", DIRECTIONS, key="event-direction")
    state = (f"live: the latest {LIVE_ROWS} while the conversation runs, updated as events arrive"
             if snapshot.running else "the conversation has ended")
    st.caption(f"{snapshot.count} events · {state}")
    calls, failed = snapshot.tool_calls
    st.caption(f"Tool calls: {calls} ({failed} failed; their events are of type koe.tool_call)")
    st.dataframe(snapshot.events, hide_index=True, width="stretch")


def event_log(store: SessionStore, conversation_id: str) -> None:
    """Latency chart, usage and the filterable event log of `conversation_id`; a polling fragment
    while it runs, drawn once when it has ended."""
    running = (store.conversation(conversation_id) or {}).get("ended_at") is None
    st.fragment(_section, run_every=LIVE_EVERY_S if running else None)(store, conversation_id)
