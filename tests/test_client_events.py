"""Client events are validated strictly, as OpenAI validates them.

Oracle: openai-python's own request types (`openai.types.realtime` and `openai.types.beta.realtime`
`*_param` TypedDicts), from which Hypothesis generates events. Koe must know every key they define,
and must name exactly the key that is unknown or of the wrong type when an event is mutated.
"""

from __future__ import annotations

import json
import typing

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from openai.types.beta.realtime import realtime_client_event_param as beta_types
from openai.types.realtime import realtime_client_event_param as ga_types

from koe.protocol import EventError, parse_client_event

CODES = {"unknown_parameter", "invalid_type", "invalid_value", "missing_required_parameter", "invalid_json"}
# Objects OpenAI leaves open (JSON schemas, metadata, references): any key goes there.
OPEN = {"parameters", "metadata", "input", "prompt", "reasoning", "tool_choice", "client_secret", "headers",
        "allowed_tools", "require_approval", "token_limits", "error", "tools"}
EVENTS = {
    "ga": st.from_type(ga_types.RealtimeClientEventParam),
    "beta": st.from_type(beta_types.RealtimeClientEventParam),
}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def jsonable(value):
    """A generated TypedDict as the JSON a client would send (iterables become arrays)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    # `Iterable[...]` fields are drawn as list iterators; `object` fields (JSON schemas, metadata) as
    # any Python value, a range of 10**18 numbers included: those are sent as their text.
    if isinstance(value, (list, tuple)) or type(value).__name__ == "list_iterator":
        return [jsonable(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)[:200]


def nodes(value, path=""):
    """(path, value) of every object and leaf under `value`, in OpenAI's `a.b[0].c` notation."""
    yield path, value
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        if key in OPEN:
            continue
        yield from nodes(child, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key)


def put(data, path: str, value):
    """A copy of `data` with the node at `path` replaced."""
    data = json.loads(json.dumps(data))
    parts = [int(p) if p.isdigit() else p for p in path.replace("[", ".").replace("]", "").split(".")]
    node = data
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value
    return data


def outcome(data, dialect):
    try:
        parse_client_event(data, dialect)
    except EventError as exc:
        assert exc.code in CODES and (exc.param is None or isinstance(exc.param, str)), exc
        return exc
    return None


def valid_event(data, dialect) -> dict:
    """A generated client event of `dialect` (as JSON) that Koe accepts as it is: the base a test mutates."""
    event = jsonable(data.draw(EVENTS[dialect]))
    assume(outcome(event, dialect) is None)
    return event


@pytest.mark.parametrize("dialect", ["ga", "beta"])
@FUZZ
@given(data=st.data())
def test_every_key_openai_defines_is_known(dialect, data):
    event = jsonable(data.draw(EVENTS[dialect]))
    error = outcome(event, dialect)
    # A value may be out of Koe's ranges, and a few event types are not served here, but a key
    # OpenAI defines is never "unknown".
    assert error is None or error.code != "unknown_parameter", (event, error.message)


@pytest.mark.parametrize("dialect", ["ga", "beta"])
@FUZZ
@given(data=st.data())
def test_an_unknown_key_is_refused_by_its_path(dialect, data):
    event = valid_event(data, dialect)
    objects = [path for path, value in nodes(event) if isinstance(value, dict)]
    where = data.draw(st.sampled_from(objects))
    param = f"{where}.zz_typo" if where else "zz_typo"
    mutated = put(event, param, 1)
    error = outcome(mutated, dialect)
    assert error is not None and error.code == "unknown_parameter" and error.param == param, error
    assert error.event_id == event.get("event_id")


WRONG = {str: 12345, int: "12", float: "0.5", bool: "true", list: "[]", dict: 7}


@pytest.mark.parametrize("dialect", ["ga", "beta"])
@FUZZ
@given(data=st.data())
def test_a_value_of_the_wrong_type_is_refused_by_its_path(dialect, data):
    event = valid_event(data, dialect)
    leaves = [(path, value) for path, value in nodes(event) if path and value is not None]
    path, value = data.draw(st.sampled_from(leaves))
    wrong = WRONG[bool if isinstance(value, bool) else type(value)]
    error = outcome(put(event, path, wrong), dialect)
    assert error is not None and error.code in ("invalid_type", "invalid_value"), (path, error)
    assert error.param == path, (path, error.message)


def test_the_examples_of_the_issue():
    def refused(event, dialect="ga"):
        with pytest.raises(EventError) as info:
            parse_client_event({"event_id": "event_x", **event}, dialect)
        assert info.value.event_id == "event_x"
        return info.value.code, info.value.param

    ga = {"type": "realtime"}
    assert refused({"type": "session.update", "session": {**ga, "instructionz": "x"}}) == \
        ("unknown_parameter", "session.instructionz")
    assert refused({"type": "session.update", "session": {**ga, "audio": {"output": {"voise": "ash"}}}}) == \
        ("unknown_parameter", "session.audio.output.voise")
    assert refused({"type": "session.update", "session": {**ga, "audio": {"input": {"transcription": {
        "enabled": True}}}}}) == ("unknown_parameter", "session.audio.input.transcription.enabled")
    for content in (5, True):
        assert refused({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": content}}) == ("invalid_type", "item.content")
    assert refused({"type": "conversation.item.create", "item": {
        "id": 7, "type": "message", "role": "user", "content": []}}) == ("invalid_type", "item.id")
    for tokens in ("abc", -1, 0, 4097, 1.5, True):
        assert refused({"type": "response.create", "response": {"max_output_tokens": tokens}}) == \
            ("invalid_value", "response.max_output_tokens")
    assert refused({"type": "session.update", "session": {"temperature": -1}}, "beta") == \
        ("invalid_value", "session.temperature")
    assert refused({"type": "response.create", "response": {"temperature": 2}}, "beta") == \
        ("invalid_value", "response.temperature")
    # The dialects' shapes differ: GA's nesting is unknown in beta and the other way round.
    assert refused({"type": "session.update", "session": {"voice": "ash"}}) == ("missing_required_parameter",
                                                                                 "session.type")
    assert refused({"type": "session.update", "session": {**ga, "voice": "ash"}}) == \
        ("unknown_parameter", "session.voice")
    assert refused({"type": "session.update", "session": {"audio": {}}}, "beta") == \
        ("unknown_parameter", "session.audio")
    assert refused({"type": "response.create", "response": {"max_output_tokens": 5}}, "beta") == \
        ("unknown_parameter", "response.max_output_tokens")
    assert refused({"type": "response.cancel", "response_id": 5}) == ("invalid_type", "response_id")


DEEP = json.dumps({"type": "response.create", "response": {"metadata": {"a": json.loads("[" * 40 + "]" * 40)}}})


@pytest.mark.parametrize("text", [b"\xff\xfe{}", "[" * 5000 + "]" * 5000, "{", "[]", "null", '"x"', DEEP])
def test_text_that_is_no_event_is_invalid_json(text):
    with pytest.raises(EventError) as info:
        parse_client_event(text)
    assert info.value.code == "invalid_json"


def test_typed_parts_reach_the_handlers():
    event = parse_client_event({"type": "response.create", "response": {"max_response_output_tokens": 20}}, "beta")
    assert event.response.max_output_tokens == 20
    item = parse_client_event({"type": "conversation.item.create", "item": {
        "type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi"}]}}).item
    assert item.role == "assistant" and item.content[0].text == "Hi"
    assert typing.get_args(ga_types.RealtimeClientEventParam)  # the oracle is really there
