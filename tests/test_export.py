"""Exports are safe to open, whatever was said: Hypothesis-generated text through the CSV export (read
back by Python's csv module and pandas) and the Markdown export (rendered by markdown-it-py, a
CommonMark renderer nobody here wrote)."""

from __future__ import annotations

import csv
import html
import io
import json
import re

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from koe.export import CSV_FORMULA_STARTS, escape_markdown, first_words, neutralise_cell, to_csv
from koe.store import SessionStore

T0 = 1_700_000_000.0
# Text as people and models say it, and as attackers write it: any character, and markup pieces.
MARKUP = st.sampled_from(["![x](http://127.0.0.1:9/p.png)", "<img src=x onerror=alert(1)>", "[a](javascript:x)",
                          "=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "\t=1", "\r=1", "**", "_", "`", "```",
                          "# ", "> ", "- ", "1. ", "2) ", "---", "===", "|a|b|", "&amp;", "&#60;", "\\", "<", "\n",
                          "\n\n    ", "<!--", "<div>", "$x$", ":red[x]", ":smile:", "~~", "[^1]", "[x]: /u", "www.x.com",
                          "http://x.y", "\0", "\u2028", "  \n"])
SAID = st.lists(st.one_of(st.text(), MARKUP), max_size=8).map("".join)
COMMONMARK = MarkdownIt("commonmark")


def expected_lines(text: str) -> list[str]:
    """What the Markdown export promises to show of `text`: its non-blank lines, stripped."""
    return [line.strip() for line in text.replace("\0", "\ufffd").splitlines() if line.strip()]


@settings(max_examples=300, deadline=None)
@given(cells=st.lists(st.one_of(SAID, st.integers(), st.none()), min_size=1, max_size=5))
@example(cells=["=1+1", "+1", "-1", "@A1", "\t=1", "\r=1", "a,=b", 'q"=1'])
def test_no_csv_cell_starts_a_formula(cells):
    frame = pd.DataFrame([cells], columns=[f"c{i}" for i in range(len(cells))])
    exported = to_csv(frame)
    header, parsed = list(csv.reader(io.StringIO(exported, newline="")))
    assert header == list(frame.columns)
    assert len(parsed) == len(cells)  # a separator, quote or line break inside a cell never makes a new cell
    for cell, original in zip(parsed, cells):
        assert not cell.startswith(CSV_FORMULA_STARTS), (cell, original)
        text = "" if original is None else str(original)
        assert cell == text or cell == "'" + text  # nothing lost but the neutralising quote
    read = pd.read_csv(io.StringIO(exported), dtype=str, keep_default_na=False)
    assert [neutralise_cell(c) for c in cells] == list(read.iloc[0])


def render_paragraphs(markdown: str) -> list[str]:
    return re.findall(r"<p>(.*?)</p>", COMMONMARK.render(markdown), flags=re.S)


@settings(max_examples=500, deadline=None)
@given(text=SAID)
@example(text="![x](http://127.0.0.1:9/probe.png)")
@example(text="1. one\n2) two\n\n    code\n# h\n---\n<b>x</b> &copy; \\")
def test_markdown_escaping_renders_the_words_and_nothing_else(text):
    lines = expected_lines(text)
    rendered = COMMONMARK.render("**You:** " + escape_markdown(text))
    match = re.fullmatch(r"<p><strong>You:</strong> ?(.*)</p>\n", rendered, flags=re.S)
    assert match, rendered  # one paragraph: no heading, list, code block, quote or HTML block
    body = match.group(1)
    assert not re.search(r"<(?!br />)", body), body  # no element at all but the line breaks
    assert [html.unescape(part) for part in body.split("<br />\n")] == (lines or [""])


@pytest.fixture
def store(tmp_path):
    s = SessionStore(tmp_path / "koe.sqlite3")
    yield s
    s.close()


def item_done(item_id: str, role: str, text: str) -> dict:
    kind = "input_text" if role == "user" else "output_text"
    return {"type": "conversation.item.done", "event_id": f"e_{item_id}", "item": {
        "id": item_id, "object": "realtime.item", "type": "message", "status": "completed", "role": role,
        "content": [{"type": kind, "text": text}]}}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(said=SAID)
def test_every_export_of_a_stored_conversation_is_safe(store, said):
    c = store.start_conversation(backend="local", model="gpt-realtime", dialect="ga", settings={}, visitor="v")
    store.record_event(c, "server", item_done("item_1", "user", said), at=T0)
    store.record_event(c, "server", item_done("item_2", "assistant", "=1+1 " + said), at=T0 + 1)
    store.end_conversation(c, said[:40] or "stopped")
    assert store.flush()
    rows = list(csv.reader(io.StringIO(store.export(c, "csv"), newline="")))
    assert all(not cell.startswith(CSV_FORMULA_STARTS) for row in rows for cell in row)
    assert {row[5]: row[2] for row in rows[1:]}["item_2"] == "'=1+1 " + said
    markdown = store.export(c, "markdown")
    rendered = COMMONMARK.render(markdown)
    assert not re.search(r"<(img|a|script|div|code|pre|blockquote|table|h[2-6])\b", rendered), rendered
    assert rendered.count("<h1>") == 1 and rendered.count("<ul>") == 1
    exported = {row["item_id"]: row["text"] for row in json.loads(store.export(c, "json"))["transcript"]}
    assert exported.get("item_1") == (said if said.strip() else None)  # a row with no words is left out


def test_first_words_make_a_short_title():
    assert first_words("  Hello   there, how are you today my good friend? Fine.") == \
        "Hello there, how are you today my good…"
    assert first_words("Short one") == "Short one"
    assert first_words("x" * 100).startswith("x" * 60) and first_words("x" * 100).endswith("…")
    assert first_words(None) == first_words("  ") == ""


def test_the_json_export_carries_every_settings_change_with_its_time(store):
    c = store.start_conversation(backend="local", model="gpt-realtime", dialect="ga",
                                 settings={"voice": "marin", "instructions": "Be brief."}, visitor="v")
    store.record_event(c, "server", {"type": "session.created", "event_id": "e0", "session": {"voice": "marin"}}, at=T0)
    store.record_event(c, "client", {"type": "session.update", "session": {"instructions": "Talk like a pirate."}},
                       at=T0 + 10)
    store.record_event(c, "server", {"type": "session.updated", "event_id": "e1",
                                     "session": {"instructions": "Talk like a pirate.", "voice": "marin"}}, at=T0 + 10.2)
    store.record_event(c, "client", {"type": "session.update", "session": {"api_key": "sk-nope", "speed": 1.2}},
                       at=T0 + 20)
    store.record_event(c, "server", {"type": "session.updated", "event_id": "e2", "session": {"speed": 1.2}},
                       at=T0 + 20.1)
    store.end_conversation(c, "stopped by the user")
    assert store.flush()
    data = json.loads(store.export(c, "json"))
    assert data["conversation"]["settings"] == {"voice": "marin", "instructions": "Be brief."}  # the start
    changes = data["settings_changes"]
    assert [(ch["direction"], ch["type"]) for ch in changes] == [
        ("client", "session.update"), ("server", "session.updated")] * 2
    assert changes[0]["session"] == {"instructions": "Talk like a pirate."} and changes[3]["session"] == {"speed": 1.2}
    times = [pd.Timestamp(ch["time"]) for ch in changes]
    assert times == sorted(times) and (times[2] - times[0]).total_seconds() == pytest.approx(10)
    assert "sk-nope" not in store.export(c, "json")  # the store's redaction holds in the export too
