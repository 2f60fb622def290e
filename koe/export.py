"""A conversation as a file (CSV, JSON, Markdown), and what people said made safe to show or open.

What a user or a model said is data, never markup or a formula:
- CSV: every cell is neutralised as OWASP's CSV-injection guidance says
  (https://owasp.org/www-community/attacks/CSV_Injection): a cell starting with `=`, `+`, `-`, `@`,
  tab or carriage return gets a leading `'` (a spreadsheet then reads it as text), and every cell is
  quoted with its quotes doubled (RFC 4180), so a separator inside a cell cannot start a new one.
- Markdown: `escape_markdown` backslash-escapes each character that can start a CommonMark or GFM
  construct (links, images, raw HTML, entities, emphasis, code, headings, lists, tables...), so a
  renderer shows the text as it was said, and fetches nothing (a Markdown image is just text).
- The pages never pass transcript text through Markdown at all (`st.text`, `st.dataframe`); they use
  `escape_markdown` only where a caption mixes their own Markdown with a stored value.

The store gathers the rows (`SessionStore.export`); this module only formats them, whatever the database.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime
from typing import Any, Literal

import pandas as pd

__all__ = ["CSV_FORMULA_STARTS", "Format", "SETTINGS_EVENTS", "escape_markdown", "export", "first_words",
           "neutralise_cell", "settings_changes", "to_csv", "to_markdown"]

Format = Literal["csv", "json", "markdown"]
# OWASP's list: a spreadsheet evaluates a cell starting with any of these as a formula.
CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# The events that carry settings: what the client asked for, and what the server confirmed.
SETTINGS_EVENTS = ("session.update", "session.updated")
TITLE_WORDS = 8
TITLE_CHARS = 60

# Characters that make Markdown anywhere in a line (CommonMark lets any ASCII punctuation be
# backslash-escaped): emphasis, code, links and images, raw HTML, entities, tables, strikethrough,
# Streamlit's math; and a colon before a word (Streamlit's :emoji: and :color[...] directives, and
# the scheme of an autolink). Others make Markdown only at the start of a line: headings, lists,
# quotes, setext underlines and thematic breaks ("#", "+", "-", "=", ">", "1." and "1)"). The rest
# (, . ; ? ! ' " % ( ) / @ ^) is inert in running text once the above are escaped: left as is, so the
# raw file stays readable.
_ANYWHERE = re.compile(r"([\\`*_{}\[\]<>&$|~]|:(?=\S))")
_LINE_START = re.compile(r"^(?:([#+\-=>])|(\d{1,9})([.)]))")


def neutralise_cell(value: Any) -> str:
    """One CSV cell as text that no spreadsheet evaluates: `'` before a formula start; None → ""."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    text = str(value)
    return "'" + text if text.startswith(CSV_FORMULA_STARTS) else text


def to_csv(frame: pd.DataFrame) -> str:
    """`frame` as CSV: a header row, every cell neutralised (`neutralise_cell`) and quoted."""
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow([neutralise_cell(name) for name in frame.columns])
    for row in frame.itertuples(index=False, name=None):
        writer.writerow([neutralise_cell(value) for value in row])
    return out.getvalue()


def _escape_line(line: str) -> str:
    line = _ANYWHERE.sub(r"\\\1", line)
    return _LINE_START.sub(lambda m: "\\" + m[1] if m[1] else f"{m[2]}\\{m[3]}", line)


def escape_markdown(text: str) -> str:
    """`text` as Markdown that renders as the same words and nothing else (one paragraph).

    Each line is stripped and escaped; blank lines are dropped (one would end the paragraph, and
    indentation after it would make a code block); lines are joined by hard line breaks. NUL becomes
    U+FFFD, as CommonMark renders it anyway.
    """
    lines = [_escape_line(line.strip()) for line in text.replace("\0", "\ufffd").splitlines()]
    return "\\\n".join(line for line in lines if line)


def first_words(text: str | None, words: int = TITLE_WORDS, chars: int = TITLE_CHARS) -> str:
    """The first `words` words of `text` (at most `chars` characters), "…" when cut; "" for none."""
    found = (text or "").split()
    title = " ".join(found[:words])
    if len(title) > chars:
        title = title[:chars].rstrip()
    return title + ("…" if title != " ".join(found) else "")


def settings_changes(events: pd.DataFrame) -> list[dict[str, Any]]:
    """Every settings event of a conversation, oldest first: [{"time" (ISO 8601, local), "direction"
    ("client" asked, "server" confirmed), "type", "event_id", "session" (as sent or confirmed)}].
    `events` has the columns of `SessionStore.events` (time, direction, type, event_id, payload)."""
    changes = []
    for row in events.itertuples(index=False):
        if row.type not in SETTINGS_EVENTS:
            continue
        payload = json.loads(row.payload)
        changes.append({"time": row.time.isoformat(), "direction": row.direction, "type": row.type,
                        "event_id": row.event_id if isinstance(row.event_id, str) else None,
                        "session": payload.get("session")})
    return changes


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records", date_format="iso"))


def _when(seconds: float | None) -> str:
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S") if seconds is not None else "—"


def to_markdown(meta: dict[str, Any], transcript: pd.DataFrame) -> str:
    """A readable Markdown file: a heading, the conversation's facts, one paragraph per line said.
    Every stored value is escaped (`escape_markdown`)."""
    ended = _when(meta["ended_at"]) + (f" ({escape_markdown(meta['end_reason'])})" if meta["end_reason"] else "")
    title = escape_markdown(meta.get("title") or first_words(meta.get("first_text")) or "Conversation")
    lines = [
        f"# {title} — {_when(meta['started_at'])}",
        f"- Started: {_when(meta['started_at'])}\n- Ended: {ended}\n"
        f"- Backend: {escape_markdown(meta['backend'])} · model {escape_markdown(meta['model'])}"
        f" ({escape_markdown(meta['dialect'])})\n"
        f"- Turns: {meta['turns']} · cost ${meta['cost_usd']:.4f}",
    ]
    for row in transcript.itertuples(index=False):
        note = f" _({row.status})_" if row.status != "final" else ""
        lines.append(f"**{escape_markdown(row.speaker)}:** {escape_markdown(row.text)}{note}")
    return "\n\n".join(lines) + "\n"


def export(fmt: Format, meta: dict[str, Any], transcript: pd.DataFrame, usage: pd.DataFrame,
           events: pd.DataFrame) -> str:
    """The conversation as `fmt`: CSV (the transcript table), JSON (metadata, transcript, usage and
    every settings change with its time) or Markdown. `meta` is `SessionStore.conversation`'s dict,
    the frames are its `transcript`, `usage` and (settings) `events`. Raises ValueError for another fmt."""
    if fmt == "csv":
        return to_csv(transcript)
    if fmt == "json":
        return json.dumps({"conversation": meta, "transcript": _records(transcript), "usage": _records(usage),
                           "settings_changes": settings_changes(events)}, ensure_ascii=False, indent=2)
    if fmt == "markdown":
        return to_markdown(meta, transcript)
    raise ValueError(f"unknown export format {fmt!r}: use csv, json or markdown")
