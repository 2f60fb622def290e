"""The tools Koe ships: the time, arithmetic, and a search over the visitor's own conversations."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field
from simpleeval import SimpleEval

from koe.tools.registry import ToolContext, tool

MAX_MATCHES = 20  # lines of history one search returns at most


@tool
def current_time(context: ToolContext,
                 timezone: Annotated[str | None, Field(description="An IANA time zone such as 'Asia/Tokyo'; "
                                                                   "leave it out for the user's own")] = None) -> dict:
    """The current date and time, in the user's own time zone unless another is named.

    Returns {"date": "Sunday, 29 November 2026", "time": "23:05", "timezone": IANA name, "iso": ISO 8601}.
    Raises ValueError for an unknown zone name.
    """
    name = timezone or context.timezone or "UTC"
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as 'Europe/Paris'") from None
    now = datetime.now(zone)
    return {"date": f"{now:%A}, {now.day} {now:%B %Y}", "time": f"{now:%H:%M}", "timezone": name,
            "iso": now.isoformat(timespec="seconds")}


_FUNCTIONS = {name: getattr(math, name) for name in
              ("sqrt", "sin", "cos", "tan", "asin", "acos", "atan", "log", "log10", "log2", "exp", "floor", "ceil",
               "factorial", "radians", "degrees", "hypot")}
_FUNCTIONS |= {"abs": abs, "round": round, "min": min, "max": max}


@tool
def calculate(expression: Annotated[str, Field(min_length=1, max_length=300,
                                                description="Arithmetic such as '(17 + 4) * 3 / 2', '2 ** 10', "
                                                            "'sqrt(2)', '15 / 100 * 80'")]) -> dict:
    """Work out an arithmetic expression exactly; use it for any sum instead of mental arithmetic.

    Evaluated by simpleeval (no Python `eval`): numbers, + - * / // % **, parentheses, comparisons,
    pi and e, and math functions (sqrt, sin, log, ...). Returns {"expression", "result"}; raises
    ValueError for anything else (names, attributes, huge powers).
    """
    evaluator = SimpleEval(functions=_FUNCTIONS, names={"pi": math.pi, "e": math.e, "tau": math.tau})
    try:
        result = evaluator.eval(expression)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except Exception as exc:  # simpleeval's own errors name the construct it refused
        raise ValueError(f"cannot calculate {expression!r}: {exc}") from None
    if isinstance(result, float) and result.is_integer() and abs(result) < 1e15:
        result = int(result)
    if not isinstance(result, (int, float, bool)):
        raise ValueError(f"{expression!r} is not arithmetic")
    return {"expression": expression, "result": result}


@tool
def search_history(context: ToolContext,
                   query: Annotated[str, Field(max_length=100, description="Words to look for in what was "
                                               "said; empty lists the latest conversations")] = "",
                   limit: Annotated[int, Field(ge=1, le=10, description="How many conversations at most")] = 3) -> dict:
    """Search the user's own earlier conversations with you for what was said, newest first.

    Only this visitor's conversations are searched (the owner's: all, as on the History page).
    Returns {"conversations": [{"started", "title", "lines": [{"time", "speaker", "text"}]}]}, lines
    matching `query` (or each conversation's first lines when it is empty).
    """
    store = context.store
    if store is None:
        raise RuntimeError("no conversation history is kept here")
    found: list[dict[str, Any]] = []
    lines_left = MAX_MATCHES
    for conversation in store.conversations(search=query or None, visitor=context.visitor, limit=limit + 1):
        if conversation["id"] == context.conversation_id or len(found) >= limit or lines_left <= 0:
            continue  # this conversation is already in the model's context
        rows = store.transcript(conversation["id"])
        text = rows["text"].fillna("")
        keep = text.str.strip() != ""
        if query:
            keep &= text.str.casefold().str.contains(query.casefold(), regex=False)
        rows = rows[keep].head(min(5, lines_left))
        lines_left -= len(rows)
        found.append({"started": datetime.fromtimestamp(conversation["started_at"]).isoformat(timespec="minutes"),
                      "title": conversation.get("title") or "",
                      "lines": [{"time": str(r.time)[:16], "speaker": str(r.speaker), "text": str(r.text)}
                                for r in rows.itertuples()]})
    return {"conversations": found}
