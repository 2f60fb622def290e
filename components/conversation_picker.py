"""Pick a past conversation: search box, list, selection (shared by History and Events)."""

from __future__ import annotations

from datetime import datetime

import streamlit as st

from koe.store import SessionStore


def _label(conversation: dict) -> str:
    started = datetime.fromtimestamp(conversation["started_at"]).strftime("%Y-%m-%d %H:%M")
    title = conversation.get("title") or conversation.get("model") or ""
    ended = conversation.get("end_reason") or "running"
    return f"{started} · {title} · {conversation.get('turns', 0)} turns · {ended}"


def pick(store: SessionStore, key: str) -> str | None:
    """Returns the chosen conversation id (the `id` query parameter preselects one)."""
    search = st.text_input("Search transcripts", key=f"{key}-search", max_chars=200).strip() or None
    conversations = store.conversations(search=search)
    if not conversations:
        st.info("No conversation matches." if search else "No conversation yet: talk on the main page first.")
        return None
    ids = [c["id"] for c in conversations]
    wanted = st.query_params.get("id")
    if wanted and wanted not in ids:
        st.warning("That conversation does not exist (or is not yours).")
    index = ids.index(wanted) if wanted in ids else 0
    labels = {c["id"]: _label(c) for c in conversations}
    chosen = st.selectbox("Conversation", ids, index=index, format_func=labels.get, key=f"{key}-pick")
    st.query_params["id"] = chosen
    return chosen
