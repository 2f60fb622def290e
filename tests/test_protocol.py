import json

import pytest
from pydantic import ValidationError

from koe.protocol import (
    ConversationItemAdded,
    ErrorEvent,
    EventError,
    InputAudioBufferCommitted,
    ResponseAudioTranscriptDelta,
    ResponseCreate,
    ResponseDone,
    SemanticVad,
    ServerVad,
    SessionSettings,
    SettingsError,
    TranscriptionSettings,
    UnknownServerEvent,
    changed_fields,
    dialect_for_model,
    new_id,
    parse_client_event,
    parse_server_event,
    server_event_name,
    settings_error_from,
    validate_for_dialect,
)

SETTINGS = [
    SessionSettings(),
    SessionSettings(turn_detection=SemanticVad(eagerness="high", interrupt_response=False)),
    SessionSettings(turn_detection=None, transcription=None, output_modalities="text"),
    SessionSettings(noise_reduction="far_field", voice="coral", speed=1.3, max_output_tokens=512),
    SessionSettings(
        transcription=TranscriptionSettings(model="gpt-4o-transcribe", language="fr", prompt="Paris"),
        instructions="Be brief.",
        turn_detection=ServerVad(threshold=0.7, prefix_padding_ms=200, silence_duration_ms=800),
    ),
]


@pytest.mark.parametrize("dialect", ["ga", "beta"])
@pytest.mark.parametrize("settings", SETTINGS)
def test_round_trip(settings: SessionSettings, dialect: str) -> None:
    wire = json.loads(json.dumps(settings.to_wire(dialect)))  # survives JSON
    assert SessionSettings.from_wire(dialect, wire) == settings


def test_round_trip_dialect_only_fields() -> None:
    beta = SessionSettings(model="gpt-4o-realtime-preview-2024-12-17", voice="ash", temperature=0.9)
    assert SessionSettings.from_wire("beta", beta.to_wire("beta")) == beta
    ga = SessionSettings(turn_detection=ServerVad(idle_timeout_ms=6000))
    assert SessionSettings.from_wire("ga", ga.to_wire("ga")) == ga
    assert "idle_timeout_ms" not in ga.to_wire("beta")["turn_detection"]
    assert "temperature" not in beta.to_wire("ga")


def test_full_wire_shapes() -> None:
    s = SessionSettings(turn_detection=None, transcription=None, noise_reduction="near_field")
    ga = s.to_wire("ga")
    assert ga["type"] == "realtime" and ga["model"] == "gpt-realtime"
    assert ga["audio"]["input"] == {
        "transcription": None,
        "noise_reduction": {"type": "near_field"},
        "turn_detection": None,
    }
    assert ga["output_modalities"] == ["audio"] and ga["max_output_tokens"] == "inf"
    beta = s.to_wire("beta")
    assert beta["modalities"] == ["audio", "text"] and beta["turn_detection"] is None
    assert beta["input_audio_noise_reduction"] == {"type": "near_field"}
    assert "type" not in beta and "temperature" not in beta
    assert SessionSettings().to_wire("ga")["audio"]["input"]["transcription"] == {"model": "whisper-1"}


def test_partial_wire() -> None:
    s = SessionSettings(voice="cedar")
    assert s.to_wire("ga", only={"voice"}) == {"type": "realtime", "audio": {"output": {"voice": "cedar"}}}
    assert s.to_wire("beta", only={"voice"}) == {"voice": "cedar"}
    assert s.to_wire("ga", only={"model", "instructions"}) == {"type": "realtime", "instructions": ""}
    with pytest.raises(ValueError):
        s.to_wire("ga", only={"colour"})


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"speed": 3}, "speed", "1.5"),
        ({"turn_detection": {"type": "server_vad", "threshold": 2}}, "turn_detection.threshold", "1"),
        ({"turn_detection": {"type": "semantic_vad", "eagerness": "fast"}}, "turn_detection.eagerness", "'auto'"),
        ({"transcription": {"language": "english"}}, "transcription.language", "ISO-639-1"),
        ({"max_output_tokens": 5000}, "max_output_tokens", "4096"),
        ({"voice": "Marin!"}, "voice", "lowercase"),
    ],
)
def test_invalid_values_are_readable(kwargs: dict, field: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        SessionSettings(**kwargs)
    error = settings_error_from(info.value)
    assert error.field == field
    assert str(error).startswith(f"{field}: ") and fragment in str(error) and "got" in str(error)


def test_merge_wire_refuses_invalid_values() -> None:
    with pytest.raises(SettingsError, match=r"^speed: .*1\.5 \(got 3\)"):
        SessionSettings().merge_wire("ga", {"type": "realtime", "audio": {"output": {"speed": 3}}})
    with pytest.raises(SettingsError, match="^max_output_tokens: .*4096"):
        SessionSettings().merge_wire("beta", {"max_response_output_tokens": 5000})
    with pytest.raises(SettingsError, match="^transcription.language: .*ISO-639-1"):
        SessionSettings().merge_wire("beta", {"input_audio_transcription": {"model": "whisper-1", "language": "english"}})


def test_dialect_checks() -> None:
    with pytest.raises(SettingsError, match="not part of the GA interface") as info:
        validate_for_dialect(SessionSettings(temperature=0.8), "ga")
    assert info.value.field == "temperature"
    with pytest.raises(SettingsError, match="voice: must be one of") as info:
        validate_for_dialect(SessionSettings(voice="marin"), "beta")
    validate_for_dialect(SessionSettings(voice="marin"), "ga")
    validate_for_dialect(SessionSettings(voice="alloy", temperature=0.8), "beta")
    assert dialect_for_model("gpt-4o-mini-realtime-preview-2024-12-17") == "beta"
    assert dialect_for_model("gpt-realtime-2025-08-28") == "ga"


def test_merge_wire_changes_only_given_keys() -> None:
    old = SessionSettings(instructions="Hi", noise_reduction="near_field", speed=1.2)
    new = old.merge_wire("ga", {"type": "realtime", "audio": {"output": {"voice": "cedar"}}})
    assert new.voice == "cedar" and new.speed == 1.2 and new.noise_reduction == "near_field"
    assert changed_fields(old, new) == {"voice"}
    off = new.merge_wire("ga", {"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    assert off.turn_detection is None and off.transcription == old.transcription
    beta = old.merge_wire("beta", {"turn_detection": {"type": "semantic_vad"}, "tools": []})
    assert beta.turn_detection == SemanticVad() and changed_fields(old, beta) == {"turn_detection"}
    with pytest.raises(SettingsError) as info:
        old.merge_wire("ga", {"instructions": "x"})  # GA needs type
    assert info.value.field == "type"
    with pytest.raises(SettingsError, match="mid-session"):
        old.merge_wire("beta", {"model": "gpt-realtime-mini"})
    assert old.instructions == "Hi"  # a refused update changes nothing


def test_from_wire_is_lenient() -> None:
    created = {
        "type": "realtime",
        "object": "realtime.session",
        "id": "sess_1",
        "model": "gpt-realtime-2025-08-28",
        "output_modalities": ["audio"],
        "instructions": "Your knowledge cutoff is 2023-10.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": 0,
        "include": None,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 200,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin", "speed": 1.0},
        },
    }
    s = SessionSettings.from_wire("ga", created)
    assert s.model == "gpt-realtime-2025-08-28" and s.transcription is None
    assert s.turn_detection == ServerVad(silence_duration_ms=200)
    beta = SessionSettings.from_wire("beta", {"modalities": ["text", "audio"], "voice": "verse", "temperature": 0.8})
    assert beta.output_modalities == "audio" and beta.temperature == 0.8


def test_parse_server_events() -> None:
    e = parse_server_event(
        {"type": "conversation.item.added", "event_id": "event_1", "item": {"id": "item_1"}, "previous_item_id": None}
    )
    assert isinstance(e, ConversationItemAdded) and e.item["id"] == "item_1" and e.previous_item_id is None
    assert json.loads(e.to_json())["previous_item_id"] is None  # null is meaningful here
    done = parse_server_event({"type": "response.done", "event_id": "e", "response": {"status": "cancelled"}})
    assert isinstance(done, ResponseDone) and done.response["status"] == "cancelled"
    delta = parse_server_event(
        {"type": "response.audio_transcript.delta", "event_id": "e", "response_id": "r", "item_id": "i", "delta": "Hi"}
    )
    assert isinstance(delta, ResponseAudioTranscriptDelta) and delta.delta == "Hi"
    err = parse_server_event({"type": "error", "event_id": "e", "error": {"message": "bad", "code": "x"}})
    assert isinstance(err, ErrorEvent) and err.error.code == "x"


def test_unknown_and_malformed_server_events_are_kept() -> None:
    raw = {"type": "response.mcp_call.in_progress", "event_id": "event_9", "item_id": "i", "nested": {"a": 1}}
    e = parse_server_event(raw)
    assert isinstance(e, UnknownServerEvent) and e.type == raw["type"]
    assert json.loads(e.to_json()) == raw
    bad = parse_server_event({"type": "response.done", "event_id": "e"})  # no response
    assert isinstance(bad, UnknownServerEvent) and bad.type == "response.done"


def test_server_event_json() -> None:
    e = InputAudioBufferCommitted(item_id="item_2")
    data = json.loads(e.to_json())
    assert data["previous_item_id"] is None and data["event_id"].startswith("event_")
    assert json.loads(ResponseCreate().to_json()) == {"type": "response.create"}


def test_parse_client_event_errors_carry_event_id() -> None:
    with pytest.raises(EventError) as info:
        parse_client_event({"type": "session.bogus", "event_id": "evt_1"})
    assert info.value.event_id == "evt_1" and info.value.param == "type"
    assert info.value.code == "invalid_value" and "session.bogus" in info.value.message
    with pytest.raises(EventError) as info:
        parse_client_event({"type": "conversation.item.truncate", "event_id": "evt_2", "item_id": "i"})
    assert info.value.code == "missing_required_parameter" and info.value.param == "audio_end_ms"
    with pytest.raises(EventError) as info:
        parse_client_event({"type": "conversation.item.truncate", "event_id": "evt_3", "item_id": "i", "audio_end_ms": -5})
    assert info.value.param == "audio_end_ms" and info.value.event_id == "evt_3"
    error = info.value.to_event().error
    assert error.event_id == "evt_3" and error.type == "invalid_request_error"
    ok = parse_client_event({"type": "session.update", "session": {"type": "realtime"}, "x": 1})
    assert ok.type == "session.update" and ok.model_extra == {"x": 1}


def test_server_event_name() -> None:
    assert server_event_name("response.output_audio_transcript.delta", "beta") == "response.audio_transcript.delta"
    assert server_event_name("conversation.item.added", "beta") == "conversation.item.created"
    assert server_event_name("response.output_text.delta", "beta") == "response.text.delta"
    assert server_event_name("response.output_audio.done", "beta") == "response.audio.done"
    assert server_event_name("conversation.item.done", "beta") is None
    assert server_event_name("response.done", "beta") == "response.done"
    assert server_event_name("conversation.item.done", "ga") == "conversation.item.done"


def test_new_id() -> None:
    a, b = new_id("item"), new_id("item")
    assert a.startswith("item_") and len(a) == 25 and a != b and a[5:].isalnum()


def test_reasoning_effort_is_written_for_reasoning_models_only() -> None:
    from koe.pricing import price_for
    from koe.protocol import is_reasoning_model

    settings = SessionSettings(model="gpt-realtime-2.1", reasoning_effort="medium")
    validate_for_dialect(settings, "ga")
    assert settings.to_wire("ga")["reasoning"] == {"effort": "medium"}
    assert SessionSettings.from_wire("ga", settings.to_wire("ga")).reasoning_effort == "medium"
    assert "reasoning" not in SessionSettings(model="gpt-realtime-2.1").to_wire("ga")  # the server's default
    assert is_reasoning_model("gpt-realtime-2-2026-03-01") and not is_reasoning_model("gpt-realtime-1.5")
    with pytest.raises(SettingsError, match="reasoning_effort"):
        validate_for_dialect(SessionSettings(model="gpt-realtime", reasoning_effort="low"), "ga")
    assert price_for("gpt-realtime-2.1").text_out == 24.00 and price_for("gpt-realtime-2.1-mini").audio_in == 10.00
