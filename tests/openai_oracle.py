"""OpenAI's own event types as the oracle: every server event koe.local sends is checked here.

The unions are the `openai` package's `openai.types.realtime.RealtimeServerEvent` (GA) and
`openai.types.beta.realtime.RealtimeServerEvent` (beta); each event is validated against the
member its `type` names, so an unknown type fails as well as a malformed one.
"""

from __future__ import annotations

import typing
from typing import Any

from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime import RealtimeServerEvent as GaServerEvent
from pydantic import TypeAdapter, ValidationError


def _members(union: Any) -> dict[str, TypeAdapter]:
    """Event type name → adapter for the SDK model of that event (unwrapping Annotated[Union[...]])."""
    inner = typing.get_args(union)[0] if typing.get_origin(union) is typing.Annotated else union
    found: dict[str, TypeAdapter] = {}
    for model in typing.get_args(inner):
        model.model_rebuild(force=True)  # built now: servers on other threads validate concurrently
        for name in typing.get_args(model.model_fields["type"].annotation):
            found[name] = TypeAdapter(model)
    return found


SERVER_EVENTS = {"ga": _members(GaServerEvent), "beta": _members(BetaServerEvent)}


def check_server_event(event: dict[str, Any], dialect: str) -> str | None:
    """None when `event` validates against the SDK's `dialect` union; else what is wrong, in one line."""
    adapter = SERVER_EVENTS[dialect].get(event.get("type"))
    if adapter is None:
        return f"{dialect}: {event.get('type')!r} is not a server event of this dialect"
    try:
        adapter.validate_python(event)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:4])
        return f"{dialect} {event['type']}: {errors}"
    return None
