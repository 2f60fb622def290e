"""History: past conversations, their transcripts, search and export."""

from __future__ import annotations

import streamlit as st

from components import runtime
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
    st.caption(f"{meta['backend']} · {meta['model']} · {meta.get('end_reason') or 'still running'}")
    table = store.transcript(conversation_id)
    st.dataframe(table.drop(columns=["item_id"], errors="ignore"), hide_index=True, width="stretch")
    with st.expander("Read as a conversation", expanded=True):
        for row in table.itertuples():
            st.markdown(f"**{row.speaker}:** {row.text}")
    columns = st.columns(3)
    for column, (fmt, ext, mime) in zip(columns, [("csv", "csv", "text/csv"), ("json", "json", "application/json"),
                                                  ("markdown", "md", "text/markdown")]):
        column.download_button(f"Download {fmt.upper() if fmt != 'markdown' else 'Markdown'}",
                               store.export(conversation_id, fmt), file_name=f"{conversation_id}.{ext}",
                               mime=mime, width="stretch")
    recording_download(meta)
