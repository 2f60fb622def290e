"""The gate and the History/Events pages under Streamlit's AppTest (no browser): access codes, whose
conversations a visitor sees, and bad query parameters and form inputs refused with a message."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pyarrow
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from koe.access import AccessConfig, Passes, Visitor
from koe.store import SessionStore

from conftest import LOCAL_KEY

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the pages import `components` from the repository root
SECRETS = {"KOE_ACCESS_CODE": "visitors-welcome", "KOE_ADMIN_CODE": "owner-only", "KOE_SESSION_SECRET": "pass-key"}
ALICE, BOB = Visitor("v_alice", "visitor"), Visitor("v_bob", "visitor")


def said(store: SessionStore, visitor_id: str, words: str) -> str:
    """A finished conversation of `visitor_id` in which they said `words`; its id."""
    conversation_id = store.start_conversation(backend="local", model="gpt-realtime", dialect="ga", settings={},
                                               visitor=visitor_id)
    store.record_event(conversation_id, "server", {
        "type": "conversation.item.input_audio_transcription.completed", "item_id": f"item_{visitor_id}",
        "content_index": 0, "transcript": words})
    store.end_conversation(conversation_id, "stopped by the user")
    return conversation_id


@pytest.fixture
def data(tmp_path, monkeypatch):
    """Two visitors' conversations on disk; a fresh process-wide cache (config, store) per test."""
    monkeypatch.setenv("KOE_DATA_DIR", str(tmp_path))
    for name in ("KOE_ACCESS_CODE", "KOE_ADMIN_CODE", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    store = SessionStore(tmp_path / "koe.sqlite3")
    ids = {visitor.id: said(store, visitor.id, words)
           for visitor, words in ((ALICE, "alice talks about apples"), (BOB, "bob talks about bananas"))}
    store.close()
    st.cache_resource.clear()
    yield ids
    st.cache_resource.clear()


def page(name: str, *, secrets: dict | None = None, visitor: Visitor | None = None, **query: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / name), default_timeout=30)
    for key, value in (SECRETS if secrets is None else secrets).items():
        at.secrets[key] = value
    if visitor is not None:  # as after a reload: the signed pass in the URL
        at.query_params["pass"] = Passes(AccessConfig(access_code=SECRETS["KOE_ACCESS_CODE"],
                                                      admin_code=SECRETS["KOE_ADMIN_CODE"],
                                                      session_secret=SECRETS["KOE_SESSION_SECRET"])).issue(visitor)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


def texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "text", "error", "warning", "info", "caption")
                     for e in getattr(at, kind))


def enter(at: AppTest, code: str) -> AppTest:
    at.text_input(key="koe-access-code").input(code)
    return at.button[0].click().run()


def test_no_page_opens_without_the_code(data):
    for name in ("1_History.py", "2_Events.py"):
        at = page(name)
        assert "This demo needs an access code." in texts(at)
        assert not at.selectbox and "apples" not in texts(at) and "bananas" not in texts(at)


def test_a_wrong_code_is_refused_and_the_right_one_lets_in(data):
    at = enter(page("1_History.py"), "not-the-code")
    assert "That code is not right" in texts(at) and not at.selectbox
    at = enter(at, "")
    assert "Enter the code you were given." in texts(at)
    at = enter(at, "visitors-welcome")
    assert not at.exception and "This demo needs an access code." not in texts(at)
    # A new visitor sees none of the others' conversations, and the URL now holds their pass.
    assert "No conversation yet" in texts(at)
    assert at.query_params["pass"].split(".")[1] == "visitor"


def test_the_admin_code_shows_every_conversation(data):
    at = enter(page("1_History.py"), "owner-only")
    assert len(at.selectbox(key="history-pick").options) == 2


def test_a_visitor_sees_only_their_own_and_cannot_open_another_by_id(data):
    at = page("1_History.py", visitor=ALICE)
    assert "apples" in texts(at) and "bananas" not in texts(at)
    at = page("1_History.py", visitor=ALICE, id=data["v_bob"])
    assert "belongs to another visitor" in texts(at) and "bananas" not in texts(at) and "apples" in texts(at)
    assert at.query_params["id"] == data["v_alice"]  # the refused id is replaced, not kept
    at = page("2_Events.py", visitor=ALICE, id=data["v_bob"])
    assert "belongs to another visitor" in texts(at) and "bananas" not in "\n".join(
        str(frame.value) for frame in at.dataframe)


def test_the_owner_may_open_any_conversation_by_id(data):
    at = page("1_History.py", visitor=Visitor("v_owner", "owner"), id=data["v_bob"])
    assert "bananas" in texts(at) and "belongs to another visitor" not in texts(at)


@pytest.mark.parametrize("garbage", ["<script>alert(1)</script>", "x" * 100_000, "conv_doesnotexist", "'; DROP TABLE"])
def test_bad_ids_in_the_link_are_refused_with_a_message(data, garbage):
    at = page("1_History.py", visitor=ALICE, id=garbage)
    assert not at.exception
    assert "not valid" in texts(at) or "No conversation has the id" in texts(at)
    assert "apples" in texts(at)  # nothing lost: the visitor's own conversation is shown


def test_a_forged_or_expired_pass_asks_for_the_code_again(data):
    at = page("1_History.py", **{"pass": "v_bob.owner.9999999999.0123456789abcdef0123456789abcdef"})
    assert "enter the access code again" in texts(at) and "This demo needs an access code." in texts(at)
    assert "pass" not in at.query_params and "bananas" not in texts(at)


def test_huge_and_odd_search_strings_are_handled(data):
    at = page("1_History.py", visitor=ALICE)
    at.text_input(key="history-search").input("%' OR 1=1 --").run()
    assert "No conversation matches." in texts(at) and not at.exception
    at.text_input(key="history-search").input("APPLES").run()
    assert "apples" in texts(at)
    at.text_input(key="history-search").set_value("a" * 5000).run()  # past the field's cap: cut, not an error
    assert at.text_input(key="history-search").value == "a" * 200
    assert "No conversation matches." in texts(at) and not at.exception


def test_open_mode_without_codes_lets_everyone_in_as_the_owner(data):
    at = page("1_History.py", secrets={})
    assert "bananas" in texts(at) and len(at.selectbox(key="history-pick").options) == 2
    assert "pass" not in at.query_params


def test_a_bad_setting_is_named_and_stops_the_page(data):
    at = page("1_History.py", secrets={"KOE_MAX_SESSION_MINUTES": "ten", "OPENAI_API_KEY": "sk-test-do-not-show"})
    assert "KOE_MAX_SESSION_MINUTES" in texts(at) and "sk-test-do-not-show" not in texts(at)
    assert not at.selectbox


def test_with_an_oidc_provider_configured_the_page_asks_to_sign_in_first(data):
    auth = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32, "client_id": "koe",
            "client_secret": "oidc-client-secret", "server_metadata_url": "https://id.example.com/.well-known/openid"}
    at = page("1_History.py", secrets={"auth": auth})
    assert "Sign in to use this demo." in texts(at) and not at.selectbox and not at.exception
    at = at.button[0].click().run()  # asks the browser to go to the provider (test_oidc.py follows it)
    assert not at.exception and not at.selectbox
    assert "oidc-client-secret" not in texts(at)


PROBE = "![x](http://127.0.0.1:9/probe.png) **bold** <b>tag</b> =1+1"


def test_history_titles_by_first_words_hides_empty_ones_and_shows_words_as_text(data, tmp_path):
    store = SessionStore(tmp_path / "koe.sqlite3")
    empty = store.start_conversation(backend="local", model="gpt-realtime", dialect="ga", settings={},
                                     visitor=ALICE.id)
    store.end_conversation(empty, "stopped by the user")
    probe = said(store, ALICE.id, PROBE)
    store.close()
    at = page("1_History.py", visitor=ALICE)
    options = at.selectbox(key="history-pick").options
    assert len(options) == 2 and "alice talks about apples · 1 turn ·" in options[1], options
    assert "![x](http://127.0.0.1:9/probe.png) **bold** <b>tag</b> =1+1" in options[0]  # the first words
    at = at.toggle(key="history-show-empty").set_value(True).run()
    options = at.selectbox(key="history-pick").options
    assert len(options) == 3 and "(nothing said) · 0 turns" in options[1], options
    # What was said is shown as text (st.text), never through Markdown.
    assert at.query_params["id"] == probe
    assert [t.value for t in at.text] == [f"You: {PROBE}"]
    assert not any("probe.png" in str(m.value) for m in at.markdown)
    # Readable columns: no raw names, no None.
    table = at.dataframe[0].value
    assert list(table.columns) == ["Time", "Speaker", "Said", "Status", "Reply after"]
    assert table.iloc[0]["Said"] == PROBE and table.iloc[0]["Reply after"] == ""
    assert "None" not in table.astype(str).to_numpy().ravel().tolist()
    # The empty one, chosen, says so.
    at = at.selectbox(key="history-pick").set_value(empty).run()
    assert "Nothing was said in this conversation." in texts(at) and not at.exception


def test_wrong_codes_from_one_browser_do_not_make_another_wait(data, monkeypatch):
    """Two browser sessions on one host (AppTest gives no client address, as Streamlit does on loopback):
    the back-off follows the one that typed wrong codes, and says so, and leaves the other alone."""
    from components import gate

    waits: list[float] = []  # what the gate would sleep, recorded instead of slept
    monkeypatch.setattr(gate, "time", types.SimpleNamespace(sleep=waits.append))
    mallory = page("1_History.py")
    for attempt in range(4):
        mallory = enter(mallory, f"guess-{attempt}")
        assert "That code is not right" in texts(mallory)
    assert waits == [0.5, 1.0, 2.0]
    assert "this try waits 2.0 s before it is checked" in texts(mallory)  # and was told so
    alice = enter(page("1_History.py"), "visitors-welcome")
    assert waits == [0.5, 1.0, 2.0] and "waits" not in texts(alice) and "No conversation yet" in texts(alice)
    mallory = enter(mallory, "guess-again")
    assert waits == [0.5, 1.0, 2.0, 4.0]  # the same browser still waits longer each time


def test_the_events_page_shows_how_long_each_turn_waited_after_the_user_stopped(data, tmp_path):
    store = SessionStore(tmp_path / "koe.sqlite3")
    for n, waited in enumerate((512, 236)):  # what the relay records at each speech_stopped
        store.record_event(data["v_alice"], "app", {"type": "koe.turn_waited", "item_id": f"item_{n}",
                                                    "waited_ms": waited})
    store.close()
    at = page("2_Events.py", visitor=ALICE, id=data["v_alice"])
    assert "Wait after the user stopped, per turn" in [h.value for h in at.subheader]
    assert "last voiced frame" in texts(at) and "No turns ended by turn detection yet." not in texts(at)
    chart = at.get("vega_lite_chart")[0].proto  # the one chart: no reply latency was recorded
    table = pyarrow.ipc.open_stream(chart.datasets[0].data.data).read_all().to_pydict()
    assert [512, 236] in table.values()


def test_events_shows_readable_tables_and_every_event_once_ended(data, tmp_path):
    store = SessionStore(tmp_path / "koe.sqlite3")
    store.record_event(data["v_alice"], "client", {"type": "session.update", "session": {"speed": 1.2}})
    store.close()
    at = page("2_Events.py", visitor=ALICE)
    assert not at.exception and "2 events · the conversation has ended" in texts(at)
    log = at.dataframe[-1].value
    assert list(log.columns) == ["Time", "Direction", "Type", "Event id", "Event"]
    assert list(log["Type"]) == ["conversation.item.input_audio_transcription.completed", "session.update"]
    cells = log.astype(str).to_numpy().ravel().tolist()
    assert "None" not in cells and "nan" not in cells
    at = at.multiselect(key="event-types").select("session.update").run()
    assert list(at.dataframe[-1].value["Type"]) == ["session.update"]


def test_events_counts_tool_calls_and_the_sidebar_offers_the_tools(data, tmp_path, monkeypatch, local_server):
    store = SessionStore(tmp_path / "koe.sqlite3")
    for error in (None, "calculate failed: ValueError: division by zero"):
        store.record_event(data["v_alice"], "app", {"type": "koe.tool_call", "call_id": "call_1", "item_id": "item_1",
                                                    "name": "calculate", "arguments": '{"expression": "1/0"}',
                                                    "output": "", "error": error, "ms": 3})
    store.close()
    at = page("2_Events.py", visitor=ALICE, id=data["v_alice"])
    assert not at.exception and "Tool calls: 2 (1 failed" in texts(at)

    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "greet.py").write_text(
        "from koe.tools import tool\n\n@tool\ndef greet(name: str) -> str:\n    '''Greet someone by name.'''\n"
        "    return 'hello ' + name\n")
    monkeypatch.setenv("KOE_TOOLS_DIR", str(tmp_path / "tools"))
    # The sidebar asks the local backend what it offers: the tests' running server, not an embedded one whose
    # models would still be loading in a daemon thread when the interpreter exits (which aborts it).
    monkeypatch.setenv("KOE_LOCAL_URL", local_server.url)
    monkeypatch.setenv("KOE_LOCAL_API_KEY", LOCAL_KEY)
    st.cache_resource.clear()  # the configuration is read again

    def sidebar_app():
        import streamlit as st
        from components.settings_form import sidebar
        choice = sidebar(None)
        st.write(", ".join(t.name for t in choice.settings.tools) or "no tools")

    at = AppTest.from_function(sidebar_app, default_timeout=30).run()
    picker = at.multiselect(key="tools")
    assert {"current_time", "calculate", "search_history", "greet"} <= {o.split(":")[0] for o in picker.options}
    picker.select("current_time").select("greet")
    at = at.button[0].click().run()  # Apply: a form sends its widgets' values with the submit
    assert not at.exception and "current_time, greet" in texts(at)


def test_the_sidebar_starts_from_the_last_sessions_settings(monkeypatch, local_server):
    # After STOP, an idle end or a visit to History, the next START uses what was chosen, not the defaults.
    monkeypatch.setenv("KOE_LOCAL_URL", local_server.url)
    monkeypatch.setenv("KOE_LOCAL_API_KEY", LOCAL_KEY)
    st.cache_resource.clear()

    def sidebar_app():
        import streamlit as st
        from components.settings_form import sidebar
        from koe.protocol import SessionSettings
        last = SessionSettings(voice="mei", turn_detection=None) if st.query_params.get("last") else None
        choice = sidebar(None, last)
        st.write(f"voice={choice.settings.voice} turns={choice.settings.turn_detection}")

    fresh = AppTest.from_function(sidebar_app, default_timeout=30).run()
    assert not fresh.exception and fresh.radio(key="turn").value == "Semantic VAD"
    at = AppTest.from_function(sidebar_app, default_timeout=30)
    at.query_params["last"] = "1"
    at.run()
    assert not at.exception and at.radio(key="turn").value == "Push to talk (manual)"
    assert "voice=mei turns=None" in texts(at)


def _sidebar_app():
    import streamlit as st
    from components.settings_form import sidebar
    choice = sidebar(None)
    st.write(f"turns={choice.settings.turn_detection} refused={sorted(choice.refused)}")
    for name, why in choice.refused.items():
        st.error(f"{name}: {why}")


def test_the_sidebar_shows_only_the_chosen_turn_detections_controls(monkeypatch, local_server):
    monkeypatch.setenv("KOE_LOCAL_URL", local_server.url)
    monkeypatch.setenv("KOE_LOCAL_API_KEY", LOCAL_KEY)
    st.cache_resource.clear()
    at = AppTest.from_function(_sidebar_app, default_timeout=30).run()

    def shown() -> set[str]:
        return {w.label for kind in ("selectbox", "slider", "number_input") for w in getattr(at, kind)}

    assert at.radio(key="turn").value == "Semantic VAD"  # the local backend's default
    assert "Semantic VAD eagerness" in shown() and "VAD threshold" not in shown()
    at.radio(key="turn").set_value("Server VAD").run()
    assert {"VAD threshold", "Prefix padding (ms)", "Silence duration (ms)"} <= shown()
    assert "Semantic VAD eagerness" not in shown()
    at.button[0].click().run()  # Apply
    assert not at.exception and "type='server_vad'" in texts(at)
    at.radio(key="turn").set_value("Push to talk (manual)").run()
    assert not {"Semantic VAD eagerness", "VAD threshold"} & shown()


def test_a_japanese_voice_is_refused_for_an_english_session(monkeypatch, local_server):
    """joe speaks every English session: a Japanese voice chosen for one would be a change nobody hears."""
    monkeypatch.setenv("KOE_LOCAL_URL", local_server.url)
    monkeypatch.setenv("KOE_LOCAL_API_KEY", LOCAL_KEY)
    st.cache_resource.clear()
    at = AppTest.from_function(_sidebar_app, default_timeout=30).run()

    def pick(label: str, value: str) -> None:
        next(box for box in at.selectbox if box.label == label).set_value(value)

    pick("Voice", "jf_alpha")
    pick("Transcription language", "English")
    at.button[0].click().run()  # Apply
    assert not at.exception and "refused=['voice']" in texts(at)
    assert "jf_alpha speaks in Japanese sessions only" in texts(at)
    pick("Transcription language", "Japanese")
    at.button[0].click().run()
    assert not at.exception and "refused=[]" in texts(at)


def _instructions_app():
    import streamlit as st
    from components.settings_form import sidebar
    choice = sidebar(None)
    st.write(f"applied={st.session_state['settings_applied']} instructions={choice.settings.instructions!r}")


def test_a_preset_stands_when_apply_beats_the_box_filling_in(monkeypatch, local_server):
    """A preset chosen and Apply pressed before the preset's rerun reached the browser: the form submits the
    box's old text, and the preset must still be what is applied (a fresh tester saw "Nothing changed")."""
    from koe.presets import PRESETS
    monkeypatch.setenv("KOE_LOCAL_URL", local_server.url)
    monkeypatch.setenv("KOE_LOCAL_API_KEY", LOCAL_KEY)
    st.cache_resource.clear()
    at = AppTest.from_function(_instructions_app, default_timeout=30).run()
    old = at.text_area(key="instructions").value
    preset = next(name for name, text in PRESETS.items() if text and text != old)
    at.selectbox(key="preset").set_value(preset).run()  # the box fills in, on the server
    at.text_area(key="instructions").set_value(old)  # what a browser that has not redrawn yet submits
    at.button[0].click().run()  # Apply
    assert not at.exception and f"applied=True instructions={PRESETS[preset]!r}" in texts(at)
    at.text_area(key="instructions").set_value("Speak like a pirate.")  # an edit after the preset is what is sent
    at.button[0].click().run()
    assert "instructions='Speak like a pirate.'" in texts(at)


def _live_japanese_sidebar_app():
    import streamlit as st
    from components.settings_form import sidebar
    from koe.protocol import SessionSettings, TranscriptionSettings
    choice = sidebar(SessionSettings(voice="mei", transcription=TranscriptionSettings(language="ja")))
    st.write(f"refused={sorted(choice.refused)} voice={choice.settings.voice} "
             f"language={choice.settings.transcription.language}")
    for name, why in choice.refused.items():
        st.error(f"{name}: {why}")


def test_a_japanese_voice_cannot_be_left_in_a_session_turned_english(monkeypatch, local_server):
    """The other way round: a live Japanese session on mei whose language alone is changed to English is
    refused, naming the voice (the voice itself was not changed, so it is not the one refused)."""
    monkeypatch.setenv("KOE_LOCAL_URL", local_server.url)
    monkeypatch.setenv("KOE_LOCAL_API_KEY", LOCAL_KEY)
    st.cache_resource.clear()
    at = AppTest.from_function(_live_japanese_sidebar_app, default_timeout=30).run()
    language = next(box for box in at.selectbox if box.label == "Transcription language")
    language.set_value("English")
    at.button[0].click().run()  # Apply
    assert not at.exception and "refused=['transcription'] voice=mei language=ja" in texts(at)
    assert "the voice mei speaks in Japanese sessions only" in texts(at)
    next(box for box in at.selectbox if box.label == "Transcription language").set_value("Japanese")
    at.button[0].click().run()
    assert not at.exception and "refused=[] voice=mei language=ja" in texts(at)


def test_instructions_are_counted_by_the_local_backends_tokenizer(monkeypatch, local_server, models):
    """Text the four-characters-a-token estimate lets through, but the reply model's tokenizer counts past
    the room its context leaves, is refused, with the real count."""
    from koe.client import Backend, count_tokens, estimate_tokens, fetch_capabilities
    from components.settings_form import TURN_ROOM_TOKENS

    monkeypatch.setenv("KOE_LOCAL_URL", local_server.url)
    monkeypatch.setenv("KOE_LOCAL_API_KEY", LOCAL_KEY)
    st.cache_resource.clear()
    st.cache_data.clear()
    backend = Backend(local_server.url, api_key=LOCAL_KEY)
    found = fetch_capabilities(backend)
    room = found.context_tokens - found.max_reply_tokens - TURN_ROOM_TOKENS
    text = "7 " * (room * 3 // 4)
    real = count_tokens(backend, text)
    assert estimate_tokens(text) <= room < real, (estimate_tokens(text), room, real)  # the estimate would pass it
    at = AppTest.from_function(_sidebar_app, default_timeout=30).run()
    at.text_area(key="instructions").input(text)
    at = at.button[0].click().run()
    assert not at.exception and "refused=['instructions']" in texts(at)
    assert f"{real:,} tokens" in texts(at) and f"holds {found.context_tokens:,} tokens in all" in texts(at)
