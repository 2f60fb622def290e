"""Pick a past conversation: search box, list, selection (shared by History and Events).

A visitor sees only their own conversations; the owner sees all. The `id` query parameter preselects
one, and is refused with a message when it is malformed, unknown or someone else's. Each is titled by
its first words; ended ones in which nothing was said are hidden unless the visitor asks for them.
"""

from __future__ import annotations

import re
from datetime import datetime

import streamlit as st

from koe.access import Visitor
from koe.export import first_words
from koe.store import SessionStore

MAX_SEARCH_CHARS = 200
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the shape of the ids the store makes (conv_…)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def title(conversation: dict) -> str:
    """The title it was given, else its first words, else a note that nothing was said."""
    return conversation.get("title") or first_words(conversation.get("first_text")) or "(nothing said)"


def _label(conversation: dict) -> str:
    # A plain-text option label (a selectbox renders no Markdown), so the words need no escaping.
    started = datetime.fromtimestamp(conversation["started_at"]).strftime("%Y-%m-%d %H:%M")
    ended = conversation.get("end_reason") or "running"
    return f"{started} · {title(conversation)} · {_plural(conversation.get('turns', 0), 'turn')} · {ended}"


def _empty(conversation: dict) -> bool:
    """Ended with nothing said (a running one is never empty: words may still come)."""
    return conversation.get("ended_at") is not None and not conversation.get("first_text")


def refusal(store: SessionStore, wanted: str, visitor: Visitor) -> str | None:
    """Why `wanted` may not be opened by `visitor`, or None when it may."""
    if not _ID.fullmatch(wanted):
        return "The link's conversation id is not valid."
    found = store.conversation(wanted)
    if found is None:
        return "No conversation has the id in the link."
    if not visitor.can_see(found["visitor"]):
        return "The conversation in the link belongs to another visitor: you can open only your own."
    return None


def pick(store: SessionStore, key: str, visitor: Visitor) -> str | None:
    """Returns the chosen conversation id."""
    # Streamlit cuts longer input to max_chars on the server too, whatever the browser sends.
    search = st.text_input("Search transcripts", key=f"{key}-search", max_chars=MAX_SEARCH_CHARS).strip()
    wanted = st.query_params.get("id")
    if wanted is not None and (reason := refusal(store, wanted, visitor)) is not None:
        st.warning(f"{reason} Showing {'the' if visitor.owner else 'your'} latest conversation instead.")
        wanted = None
    conversations = store.conversations(search=search or None, visitor=None if visitor.owner else visitor.id)
    empty = [c["id"] for c in conversations if _empty(c)]
    if empty and not st.toggle(f"Show {_plural(len(empty), 'conversation')} in which nothing was said",
                               key=f"{key}-show-empty"):
        conversations = [c for c in conversations if c["id"] not in empty or c["id"] == wanted]
    if not conversations:
        st.info("No conversation matches." if search else "Nothing was said in any conversation yet." if empty
                else "No conversation yet: talk on the main page first.")
        return None
    ids = [c["id"] for c in conversations]
    if wanted is not None and wanted not in ids:
        st.info("The conversation in the link does not match the search.")
    index = ids.index(wanted) if wanted in ids else 0
    labels = {c["id"]: _label(c) for c in conversations}
    chosen = st.selectbox("Conversation", ids, index=index, format_func=labels.get, key=f"{key}-pick")
    st.query_params["id"] = chosen
    return chosen
