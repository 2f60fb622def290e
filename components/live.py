"""Live views of the running conversation: status, level meters, transcript table, usage.

They are fragments: they refresh themselves without rerunning the page (a full rerun would
interrupt nothing in the audio, but it redraws everything). They read the session store and the
relay's status; they never wait on the media loop.
"""

from __future__ import annotations

import streamlit as st

from koe.access import Visitor
from koe.export import escape_markdown
from koe.limits import start_of_day
from koe.loop_watch import LoopWatch
from koe.relay import Relay
from koe.store import SessionStore

from components import runtime

STATUS_ICONS = {"idle": "⏸️", "connecting": "⏳", "live": "🟢", "ended": "⏹️", "failed": "🔴"}


def _meter(label: str, dbfs: float) -> None:
    # -60 dBFS and below reads as empty; 0 dBFS as full.
    st.progress(min(1.0, max(0.0, (dbfs + 60) / 60)), text=f"{label} {dbfs:5.0f} dBFS")


@st.fragment(run_every="0.5s")
def status_and_meters(relay: Relay, loop_watch: LoopWatch | None = None) -> None:
    """`loop_watch` (for the owner): how late the loop that carries the audio runs, a gap in the sound."""
    status = relay.status
    text = f"{STATUS_ICONS.get(status.state, '')} {status.message or 'Press START and allow the microphone.'}"
    if status.state == "failed" or status.message.startswith("Could not connect"):
        st.error(text)
    elif status.state == "ended" or status.message.startswith(("Ended", "The backend ended")):
        st.warning(text)
    else:
        st.info(text)
    if status.notice:
        st.warning(f"The backend says: {escape_markdown(status.notice)}")
    left, right = st.columns(2)
    with left:
        _meter("🎙️ You", status.input_dbfs if status.state == "live" else -100)
    with right:
        _meter("🔊 AI", status.output_dbfs if status.state == "live" else -100)
    if loop_watch is not None:
        lag = loop_watch.lag()
        st.caption(f"Media loop late by p50 {lag.p50_ms:.0f} ms · p99 {lag.p99_ms:.0f} ms · "
                   f"worst {lag.worst_ms:.0f} ms in the last 10 s (each ms late is a gap in the sound)")


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


@st.fragment(run_every="2s")
def cost_meter(relay: Relay | None, store: SessionStore, visitor: Visitor) -> None:
    """This session's time, tokens and estimated cost against its limits; today's totals."""
    guard = relay.guard if relay is not None else None
    if guard is not None and relay.status.state in ("live", "ended"):
        limits = guard.limits
        minutes = f" of {_clock(limits.max_session_minutes * 60)}" if limits.max_session_minutes else ""
        cap = f" of ${limits.max_session_cost_usd:.2f}" if limits.max_session_cost_usd and guard.billed else ""
        st.caption(f"This session: {_clock(guard.elapsed_s)}{minutes} · {guard.input_tokens} tokens in, "
                   f"{guard.output_tokens} out · estimated ${guard.cost_usd:.4f}{cap}")
    today = store.totals(since=start_of_day(), visitor=None if visitor.owner else visitor.id)
    whose = "Today" if visitor.owner else "You today"
    line = (f"{whose}: {today['conversations']} conversations · {today['input_tokens']} tokens in, "
            f"{today['output_tokens']} out · estimated ${today['cost_usd']:.4f}")
    if visitor.owner:
        limiter = runtime.limiter()
        budget = limiter.limits.max_daily_cost_usd
        line += (f" · {limiter.active} running now" + (f" · ${limiter.spent_today:.4f} of the ${budget:.2f} daily "
                                                       "budget spent" if budget else ""))
    st.caption(line)


@st.fragment(run_every="1s")
def transcript(store: SessionStore) -> None:
    conversation_id = st.session_state.get("conversation_id")
    if not conversation_id:
        st.caption("The transcript appears here as you talk.")
        return
    # Rebuild the table only when the conversation changed: cheap reruns keep the loop free.
    version = store.version(conversation_id)
    cached = st.session_state.get("transcript_cache")
    if cached is None or cached[0] != (conversation_id, version):
        cached = ((conversation_id, version), store.transcript(conversation_id), store.usage(conversation_id))
        st.session_state["transcript_cache"] = cached
    _, table, usage = cached
    # A static table: long replies wrap, and it costs the browser little to redraw.
    shown = table.drop(columns=["item_id"]).rename(columns={"latency_ms": "reply latency (ms)"})
    shown["time"] = shown["time"].dt.strftime("%H:%M:%S")
    # st.table renders Markdown in its cells: what was said is escaped, so it shows as text.
    shown["text"] = shown["text"].map(escape_markdown)
    st.table(shown)
    if len(usage):
        tokens = int(usage[["input_text_tokens", "input_audio_tokens", "output_text_tokens",
                            "output_audio_tokens"]].to_numpy().sum())
        st.caption(f"{len(usage)} replies · {tokens} tokens · estimated cost ${usage['cost_usd'].sum():.4f}")
