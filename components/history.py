"""One past conversation on the History page: its facts, a readable transcript, and its exports.

What a user or the model said is shown as text, never as Markdown or HTML (`st.text`,
`st.dataframe`): a line holding `![x](http://…)` is displayed, not fetched. Stored values that go
into a Markdown caption are escaped (`koe.export.escape_markdown`).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from koe.export import escape_markdown
from koe.store import SessionStore

EXPORTS = [("CSV", "csv", "csv", "text/csv"), ("JSON", "json", "json", "application/json"),
           ("Markdown", "markdown", "md", "text/markdown")]
_AVATARS = {"You": "user", "AI": "assistant"}


def readable(transcript: pd.DataFrame) -> pd.DataFrame:
    """The store's transcript (time, speaker, text, status, latency_ms, item_id) as a person reads it:
    Time (HH:MM:SS), Speaker, Said, Status, Reply after ("0.84 s", "" where not measured)."""
    return pd.DataFrame({
        "Time": transcript["time"].dt.strftime("%H:%M:%S"),
        "Speaker": transcript["speaker"],
        "Said": transcript["text"],
        "Status": transcript["status"],
        "Reply after": [f"{ms / 1000:.2f} s" if pd.notna(ms) else "" for ms in transcript["latency_ms"]],
    })


def facts(meta: dict) -> None:
    """One caption: backend, model, how it ended (escaped: the end reason may quote the backend)."""
    ended = meta.get("end_reason") or "still running"
    st.caption(escape_markdown(f"{meta['backend']} · {meta['model']} · {ended}"))


def conversation(store: SessionStore, conversation_id: str) -> None:
    """The transcript as a table, then as a conversation to read."""
    table = store.transcript(conversation_id)
    if table.empty:
        st.info("Nothing was said in this conversation.")
        return
    st.dataframe(readable(table), hide_index=True, width="stretch")
    with st.expander("Read as a conversation", expanded=True):
        for row in table.itertuples():
            with st.chat_message(_AVATARS.get(row.speaker, "assistant")):
                st.text(f"{row.speaker}: {row.text}" + ("" if row.status == "final" else f" ({row.status})"))


def downloads(store: SessionStore, conversation_id: str) -> None:
    """Download buttons for the transcript exports (CSV cells neutralised, Markdown escaped)."""
    for column, (label, fmt, ext, mime) in zip(st.columns(len(EXPORTS)), EXPORTS):
        column.download_button(f"Download {label}", store.export(conversation_id, fmt),
                               file_name=f"{conversation_id}.{ext}", mime=mime, width="stretch")
