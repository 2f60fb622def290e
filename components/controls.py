"""Controls that act on the running session: Apply, mute, stop the AI, push to talk, a typed message."""

from __future__ import annotations

import streamlit as st

from koe.client import RealtimeError
from koe.protocol import SessionSettings, SettingsError, changed_fields
from koe.relay import Relay

from components import runtime
from components.settings_form import LABELS, Choice

# Hold to talk: pointer down/up on the button, or the space bar held anywhere outside a text field.
APPLY_RESULT = "apply_result"  # session state: (relay id, whether live, what the last Apply said)
SAVED_SETTINGS = "koe_saved_settings"  # session state: the settings the last Apply or session settled
_PTT_HTML = '<button class="ptt" type="button">🎙️ Hold to talk <kbd>Space</kbd></button>'
_PTT_CSS = """
.ptt { width: 100%; padding: 0.6rem; border-radius: 0.5rem; border: 1px solid #ff4b4b; background: #fff;
       font-size: 1rem; cursor: pointer; user-select: none; touch-action: none; }
.ptt.held { background: #ff4b4b; color: #fff; }
kbd { border: 1px solid #ccc; border-radius: 3px; padding: 0 4px; font-size: 0.8rem; }
"""
_PTT_JS = """
export default function (component) {
  const { setTriggerValue, parentElement } = component;
  const button = parentElement.querySelector('.ptt');
  let held = false;
  const press = () => { if (held) return; held = true; button.classList.add('held'); setTriggerValue('press', Date.now()); };
  const release = () => { if (!held) return; held = false; button.classList.remove('held'); setTriggerValue('release', Date.now()); };
  const typing = (e) => { const t = e.composedPath()[0]; return t && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName)); };
  const down = (e) => { if (e.code === 'Space' && !e.repeat && !typing(e)) { e.preventDefault(); press(); } };
  const up = (e) => { if (e.code === 'Space' && held) { e.preventDefault(); release(); } };
  button.addEventListener('pointerdown', (e) => { button.setPointerCapture(e.pointerId); press(); });
  button.addEventListener('pointerup', release);
  button.addEventListener('pointercancel', release);
  // The space bar works wherever the focus is on the page, inside the START button's frame too.
  const docs = new Set();
  const listen = () => {
    const all = [document, ...Array.from(document.querySelectorAll('iframe')).map((f) => {
      try { return f.contentDocument; } catch (e) { return null; } })];
    for (const doc of all) {
      if (doc && !docs.has(doc)) { docs.add(doc); doc.addEventListener('keydown', down); doc.addEventListener('keyup', up); }
    }
  };
  listen();
  const timer = setInterval(listen, 1000);
  return () => {
    clearInterval(timer);
    for (const doc of docs) { doc.removeEventListener('keydown', down); doc.removeEventListener('keyup', up); }
  };
}
"""
_hold_to_talk = st.components.v2.component("koe_hold_to_talk", html=_PTT_HTML, css=_PTT_CSS, js=_PTT_JS)


def _names(fields) -> str:
    return ", ".join(LABELS.get(f, f) for f in sorted(fields))


def apply_settings(relay: Relay, choice: Choice) -> None:
    """On Apply, send every valid change with `session.update`, show the server's answer, and name
    each refused value with its reason.

    The outcome stays in the sidebar until the next Apply, or until a session starts or ends: the page's
    other reruns (the browser's component, a state change) keep it, so it never flashes by unread."""
    live = relay.status.state in ("live", "connecting")
    # What the last Apply (or the session that ran last) settled, for an Apply before START to say what it
    # changes: the widgets outside the form (turn detection, preset, tools) change the choice at once.
    if relay.status.state == "live" or SAVED_SETTINGS not in st.session_state:
        st.session_state[SAVED_SETTINGS] = relay.settings
    if st.session_state.get("settings_applied"):
        st.session_state[APPLY_RESULT] = (id(relay), live, _apply(relay, choice, st.session_state[SAVED_SETTINGS]))
        if relay.status.state != "live":
            st.session_state[SAVED_SETTINGS] = choice.settings
    result = st.session_state.get(APPLY_RESULT)
    if result is None or result[:2] != (id(relay), live):
        st.session_state.pop(APPLY_RESULT, None)
        return
    for level, text in result[2]:
        getattr(st.sidebar, level)(text)


def _apply(relay: Relay, choice: Choice, saved: SessionSettings) -> list[tuple[str, str]]:
    """Apply `choice` (`saved`: what the last Apply settled); returns what to say, as (st.sidebar method
    name, text) pairs."""
    said = [("error", f"Not applied — {LABELS.get(name, name)}: {why}") for name, why in choice.refused.items()]
    nothing = [] if choice.refused else [("info", "Nothing changed.")]
    if relay.status.state != "live":
        changed = changed_fields(saved, choice.settings) - {"model"}
        if not changed:
            return said + nothing
        return said + [("info", f"Saved ({_names(changed)}): these settings apply when you press START.")]
    changed = changed_fields(relay.settings, choice.settings) - {"model"}
    if not changed:
        return said + nothing
    if "voice" in changed and relay.assistant_spoke:
        rows = runtime.store().transcript(st.session_state["conversation_id"])
        history = [{"id": row.item_id, "role": "user" if row.speaker == "You" else "assistant", "text": row.text}
                   for row in rows.itertuples() if row.text and row.speaker in ("You", "AI")]  # not tool rows
        relay.restart(choice.settings, history)
        return said + [("warning", "The voice cannot change once the AI has spoken: a new session starts with the "
                                   "new voice. The transcript is kept, and the AI is given the conversation so far.")]
    try:
        confirmed = relay.update(choice.settings, only=changed)
    except (SettingsError, RealtimeError) as exc:
        return said + [("error", f"Not applied: {exc}")]
    except TimeoutError:
        return said + [("error", "Not applied: the backend did not confirm in time.")]
    st.session_state["confirmed"] = confirmed
    return said + [("success", f"session.updated: the server confirmed {_names(changed)}.")]


def _act(action) -> None:
    """Run a relay action from a widget callback; a failure is shown, never raised."""
    try:
        action()
    except (RealtimeError, TimeoutError) as exc:
        st.session_state["control_error"] = f"Not sent: {exc}"


@st.fragment
def conversation_controls(relay: Relay, state: str) -> None:
    """While live (`state`, as the page read it): mute, stop the AI, hold to talk (push to talk), and a
    typed message.

    A fragment: a click here reruns only these controls, not the page. A whole-page run that ends while the
    live views' own reruns come in can leave the browser's page with parts missing or drawn twice (the controls
    gone, the transcript shown twice), so while a session runs the page runs whole only when its state or the
    sidebar changes."""
    if state != "live":
        return
    if error := st.session_state.pop("control_error", None):
        st.error(error)
    manual = relay.settings.turn_detection is None
    columns = st.columns(3 if manual else 2)
    muted = columns[0].toggle("🔇 Mute microphone", key="muted", help="The AI hears silence until you unmute.")
    relay.set_muted(muted)
    columns[1].button("✋ Stop the AI", width="stretch", on_click=_act, args=(relay.stop_reply,),
                      help="Interrupt the reply without speaking.")
    if manual:
        with columns[2]:
            _hold_to_talk(key="hold-to-talk", on_press_change=lambda: _act(relay.begin_turn),
                          on_release_change=lambda: _act(relay.end_turn))
    with st.form("typed-message", clear_on_submit=True, border=False):
        left, right = st.columns([5, 1])
        left.text_input("Type a message", placeholder="Type instead of speaking…", key="typed",
                        label_visibility="collapsed")
        right.form_submit_button("Send", width="stretch", on_click=_send_typed, args=(relay,))


def _send_typed(relay: Relay) -> None:
    text = (st.session_state.get("typed") or "").strip()
    if text:
        _act(lambda: relay.say(text))
