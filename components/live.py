"""Live views of the running conversation: status, level meters, transcript table, usage.

They are fragments: while a session connects or runs they refresh themselves without rerunning the
page (a full rerun would interrupt nothing in the audio, but it redraws everything). They read the
session store and the relay's status; they never wait on the media loop. When the session's state
changes (connected, ended) the status fragment reruns the whole page once, so the controls and the
START/STOP button match it.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from koe.access import Visitor
from koe.export import escape_markdown
from koe.limits import start_of_day
from koe.loop_watch import LoopWatch
from koe.relay import Relay
from koe.store import LOCAL_BACKEND, SessionStore

from components import runtime

STATUS_ICONS = {"idle": "⏸️", "connecting": "⏳", "live": "🟢", "ended": "⏹️", "failed": "🔴"}
PHASES = {"listening": "🟢 Listening: speak when you like.", "hearing you": "🎙️ Hearing you…",
          "thinking": "💭 Thinking…", "speaking": "🔊 Speaking… (talk over it, or Stop the AI, to interrupt)"}
COUNTDOWN_S = 30  # warn this long before a time limit ends the session
DRAWN_STATE = "koe_drawn_state"  # (relay id, state) the page's last full run was drawn for
PAGE_DRAWN = "koe_page_drawn"  # the DRAWN_STATE of the last full run that got to the end of the page


def drawn_for(relay: Relay, state: str) -> None:
    """Note, in a full run of the page (before the status fragment), the session state it draws for."""
    st.session_state[DRAWN_STATE] = (id(relay), state)


def page_drawn() -> None:
    """Note, at the end of a full run, that the whole page was drawn for its DRAWN_STATE. A full run cut
    short (a click or the browser's component asking for another run while it draws) leaves the parts after
    the cut as an earlier run drew them, the controls among them; the status fragment then asks again."""
    st.session_state[PAGE_DRAWN] = st.session_state.get(DRAWN_STATE)


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 conversation', '2 conversations'."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def _meter(label: str, dbfs: float) -> None:
    # -60 dBFS and below reads as empty; 0 dBFS as full.
    st.progress(min(1.0, max(0.0, (dbfs + 60) / 60)), text=f"{label} {dbfs:5.0f} dBFS")


def _status_line(relay: Relay) -> str:
    status = relay.status
    if status.state == "live":
        line = PHASES.get(status.phase, status.message)
        if relay.settings.turn_detection is None and status.phase == "listening":
            line = "🟢 Push to talk: hold the Talk button (or the space bar) while you speak."
        return line + (" · 🔇 microphone muted" if status.muted else "")
    return f"{STATUS_ICONS.get(status.state, '')} {status.message or 'Press START and allow the microphone.'}"


def _every(relay: Relay | None, seconds: float) -> float | None:
    """How often a live view redraws itself (s): only while a session connects or runs. Nothing else changes on
    its own, every other change comes with a run of the whole page, and each self-redraw that meets the end of a
    whole-page run risks the browser's page losing a part (Streamlit 1.67: "Bad delta path index")."""
    return seconds if relay is not None and relay.status.state in ("connecting", "live") else None


def status_and_meters(relay: Relay, loop_watch: LoopWatch | None = None) -> None:
    """The status line and level meters, every 0.5 s while a session runs. `loop_watch` (for the owner): how late
    the loop that carries the audio runs, a gap in the sound."""
    st.fragment(_status_and_meters, run_every=_every(relay, 0.5))(relay, loop_watch)


def _status_and_meters(relay: Relay, loop_watch: LoopWatch | None) -> None:
    status = relay.status
    drawn = st.session_state.get(DRAWN_STATE)
    # While the page's full run draws this fragment, the run has not reached the end yet; in the fragment's
    # own reruns it has, unless it was cut short.
    ctx = get_script_run_ctx()
    cut_short = ctx is not None and bool(ctx.fragment_ids_this_run) and st.session_state.get(PAGE_DRAWN) != drawn
    if drawn is not None and (drawn != (id(relay), status.state) or cut_short):
        st.rerun(scope="app")  # controls and the START/STOP button follow the new state (again, if one was lost)
    text = _status_line(relay)
    if status.state == "failed" or status.message.startswith("Could not connect"):
        st.error(text)
    elif status.state == "ended":
        st.warning(text)
    else:
        st.info(text)
    guard = relay.guard
    ends = guard.ends_in() if guard is not None and status.state == "live" else None
    if ends is not None and ends[0] <= COUNTDOWN_S:
        st.warning(f"⏱️ The session ends in {max(0, round(ends[0]))} s: {ends[1]}.")
    if status.hint and status.state == "live":
        st.warning(status.hint)
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


def cost_meter(relay: Relay | None, store: SessionStore, visitor: Visitor) -> None:
    """This session's time, tokens and estimated cost against its limits; today's totals (costs only
    where the backend bills: the local backend is free). Every 2 s while a session runs."""
    st.fragment(_cost_meter, run_every=_every(relay, 2.0))(relay, store, visitor)


def _cost_meter(relay: Relay | None, store: SessionStore, visitor: Visitor) -> None:
    guard = relay.guard if relay is not None else None
    if guard is None:  # nothing runs: the figures of the session that ended last, frozen
        guard = st.session_state.get("koe_last_guard")
    billed = guard.billed if guard is not None else runtime.openai_backend() is not None
    if guard is not None:
        limits = guard.limits
        minutes = f" of {_clock(limits.max_session_minutes * 60)}" if limits.max_session_minutes else ""
        cost = ""
        if guard.billed:
            cap = f" of ${limits.max_session_cost_usd:.2f}" if limits.max_session_cost_usd else ""
            cost = f" · estimated ${guard.cost_usd:.4f}{cap}"
        st.caption(f"This session: {_clock(guard.elapsed_s)}{minutes} · {guard.input_tokens:,} tokens in, "
                   f"{guard.output_tokens:,} out{cost}")
    today = store.totals(since=start_of_day(), visitor=None if visitor.owner else visitor.id)
    whose = "Today" if visitor.owner else "You today"
    line = (f"{whose}: {plural(today['conversations'], 'conversation')} · {today['input_tokens']:,} tokens in, "
            f"{today['output_tokens']:,} out" + (f" · estimated ${today['cost_usd']:.4f}" if billed else ""))
    if visitor.owner:
        limiter = runtime.limiter()
        budget = limiter.limits.max_daily_cost_usd
        line += f" · {limiter.active} running now"
        if budget and billed:
            line += f" · ${limiter.spent_today:.4f} of the ${budget:.2f} daily budget spent"
    st.caption(line)


def _cell(text: str) -> str:
    """Text shown as itself inside a Markdown table cell: escaped, on one line."""
    return escape_markdown(" ".join(text.split()))


def transcript_markdown(table: pd.DataFrame) -> str:
    """The transcript as a Markdown table; the unheard tail of a cut reply struck through."""
    lines = ["| time | speaker | text | status | reply latency (ms) |", "| --- | --- | --- | --- | --- |"]
    for row in table.itertuples(index=False):
        text = row.text or "…"
        heard = None if pd.isna(row.heard) else int(row.heard)
        if heard is not None and heard < len(text):
            said, unheard = text[:heard].rstrip(), text[heard:].strip()
            shown = (_cell(said) + " " if said else "") + f"~~{_cell(unheard)}~~"
            status = f"{row.status} (struck: not heard)"
        else:
            shown, status = _cell(text), row.status
        latency = "" if pd.isna(row.latency_ms) else f"{int(row.latency_ms):,}"
        lines.append(f"| {row.time:%H:%M:%S} | {row.speaker} | {shown} | {status} | {latency} |")
    return "\n".join(lines)


def transcript(store: SessionStore, relay: Relay) -> None:
    """The conversation's transcript table and usage, every 1 s while a session runs."""
    st.fragment(_transcript, run_every=_every(relay, 1.0))(store)


def _transcript(store: SessionStore) -> None:
    conversation_id = st.session_state.get("conversation_id")
    if not conversation_id:
        st.caption("The transcript appears here as you talk.")
        return
    # Rebuild the table only when the conversation changed: cheap reruns keep the loop free.
    version = store.version(conversation_id)
    cached = st.session_state.get("transcript_cache")
    if cached is None or cached[0] != (conversation_id, version):
        table = store.transcript(conversation_id)
        cached = ((conversation_id, version), transcript_markdown(table) if len(table) else "",
                  store.usage(conversation_id), store.conversation(conversation_id))
        st.session_state["transcript_cache"] = cached
    _, markdown, usage, meta = cached
    if markdown:
        st.markdown(markdown)
    else:
        st.caption("Nothing said yet.")
    if len(usage):
        tokens = int(usage[["input_text_tokens", "input_audio_tokens", "output_text_tokens",
                            "output_audio_tokens"]].to_numpy().sum())
        cost = "" if meta is not None and meta["backend"] == LOCAL_BACKEND else \
            f" · estimated cost ${usage['cost_usd'].sum():.4f}"
        st.caption(f"{plural(len(usage), 'reply', 'replies')} · {tokens:,} tokens{cost}")
