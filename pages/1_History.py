"""History: past conversations, their transcripts, search and export."""

from __future__ import annotations

import streamlit as st

from components import history, runtime
from components.conversation import recording_download
from components.conversation_picker import pick
from components.gate import require_access

st.set_page_config(page_title="Koe — History", page_icon="📜", layout="wide")
visitor = require_access()
st.title("📜 History")

store = runtime.store()
conversation_id = pick(store, "history", visitor)
if conversation_id:
    meta = store.conversation(conversation_id)
    history.facts(meta)
    history.conversation(store, conversation_id)
    history.downloads(store, conversation_id)
    recording_download(meta)
