"""Function calling in the Hermes form Qwen2.5 was tuned on (its GGUF's `tokenizer.chat_template`).

The tools go into the system message inside `<tools></tools>`, in the template's own fixed wording; the
model answers `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`; an assistant turn with
calls is written back the same way after its text; results come back as one user turn of
`<tool_response>` blocks. The texts here are what the template renders between `<|im_start|>role\\n`
and `<|im_end|>` (tests/test_reply_models.py renders the template itself to check).

`CallParser` reads a streamed reply: text passes on at once except what may begin a call, and each
complete call becomes one ToolCallDelta. Small models do not always use the tags: like llama.cpp's
Hermes parser it also takes a ```json block, or a reply that is a bare JSON object, when it names an
offered function.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable

from koe.local.stages.replies import ToolCallDelta

log = logging.getLogger("koe.local")

# The template's wording, to the letter (its `{{` is literal: the string is not a Jinja expression).
TOOLS_INTRO = ("\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
               "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_OUTRO = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
               "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": "
               "<args-json-object>}}\n</tool_call>")
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
FENCE_OPEN, FENCE_CLOSE = "```json", "```"


def to_json(value: object) -> str:
    """The template's `tojson` as Transformers and llama-cpp-python define it: json.dumps, non-ASCII kept."""
    return json.dumps(value, ensure_ascii=False)


def system_text(instructions: str, tools: Iterable[dict]) -> str:
    """The system message with `tools` (chat-completions form: {"type": "function", "function": {...}})."""
    return instructions + TOOLS_INTRO + "".join("\n" + to_json(tool) for tool in tools) + TOOLS_OUTRO


def choice_rule(tool_choice: str | dict | None) -> str | None:
    """A sentence for the system text when `tool_choice` forces a call ("required", or
    {"type": "function", "function": {"name": ...}}); None for "auto" / "none" / None."""
    if tool_choice == "required":
        return "For this reply, call one or more of the functions."
    if isinstance(tool_choice, dict):
        return f"For this reply, call the function {(tool_choice.get('function') or {}).get('name')}."
    return None


def call_text(name: str, arguments: str) -> str:
    """One call as the template writes it; `arguments` is the call's JSON text (kept as is if it is not JSON)."""
    try:
        arguments = to_json(json.loads(arguments or "{}"))
    except ValueError:
        pass
    return f'{CALL_OPEN}\n{{"name": "{name}", "arguments": {arguments}}}\n{CALL_CLOSE}'


def assistant_text(content: str | None, calls: Iterable[tuple[str, str]]) -> str:
    """An assistant turn's body: its text, then each (name, arguments JSON) call on a line of its own."""
    return "\n".join(([content] if content else []) + [call_text(name, arguments) for name, arguments in calls])


def responses_text(outputs: Iterable[str]) -> str:
    """The user turn that gives the model its calls' results, in order."""
    return "\n".join(f"<tool_response>\n{output}\n</tool_response>" for output in outputs)


class CallParser:
    """Splits a streamed reply into text and function calls.

    `feed(text)` and `close()` (at the end of the reply) return the pieces ready so far: text (str)
    and one ToolCallDelta per complete call, `index` counting from 0, `arguments` its JSON text. The
    result does not depend on how the reply was split into deltas. `names` are the offered functions:
    an untagged block that names none of them stays text.
    """

    def __init__(self, names: Collection[str]) -> None:
        self._names = set(names)
        self._buffer = ""
        self._closer: str | None = None  # inside a block: what ends it ("" for a bare object: the reply's end)
        self._opener = ""
        self._said = False  # non-blank text or a block came before
        self._index = 0

    def feed(self, text: str) -> list[str | ToolCallDelta]:
        self._buffer += text
        return self._drain(final=False)

    def close(self) -> list[str | ToolCallDelta]:
        return self._drain(final=True)

    def _drain(self, final: bool) -> list[str | ToolCallDelta]:
        out: list[str | ToolCallDelta] = []
        while self._buffer or (final and self._closer is not None):
            if self._closer is None:
                start = self._buffer.lstrip()
                if not self._said and not start and not final:
                    break  # only blanks yet: they may lead into a bare object
                if not self._said and start.startswith("{"):
                    self._enter("", "", len(self._buffer) - len(start))
                    continue
                found = [(i, opener) for opener in (CALL_OPEN, FENCE_OPEN) if (i := self._buffer.find(opener)) >= 0]
                if found:
                    i, opener = min(found)
                    self._text(out, self._buffer[:i])
                    self._enter(opener, CALL_CLOSE if opener == CALL_OPEN else FENCE_CLOSE, i + len(opener))
                    continue
                keep = 0 if final else _partial(self._buffer)
                self._text(out, self._buffer[:len(self._buffer) - keep])
                self._buffer = self._buffer[len(self._buffer) - keep:]
                break
            end = self._buffer.find(self._closer) if self._closer else -1
            if end < 0 and not final:
                break
            body = self._buffer if end < 0 else self._buffer[:end]
            self._buffer = "" if end < 0 else self._buffer[end + len(self._closer):]
            self._block(out, body, self._opener + body + ("" if end < 0 else self._closer))
            self._closer = None
        return out

    def _enter(self, opener: str, closer: str, at: int) -> None:
        self._opener, self._closer, self._said = opener, closer, True
        self._buffer = self._buffer[at:]

    def _text(self, out: list, text: str) -> None:
        if text:
            self._said = self._said or bool(text.strip())
            if out and isinstance(out[-1], str):
                out[-1] += text
            else:
                out.append(text)

    def _block(self, out: list, body: str, raw: str) -> None:
        calls = _calls(body)
        tagged = self._opener == CALL_OPEN
        if not tagged and not any(name in self._names for name, _ in calls):
            self._text(out, raw)  # a code block or an object the user asked for, not a call
            return
        if not calls:
            log.warning("the reply model wrote a function call that is not JSON: %r", body[:200])
        for name, arguments in calls:
            out.append(ToolCallDelta(index=self._index, name=name, arguments=arguments))
            self._index += 1


def _partial(text: str) -> int:
    """How many characters at the end of `text` may begin an opening tag (held back until the next delta)."""
    return max((k for opener in (CALL_OPEN, FENCE_OPEN) for k in range(1, len(opener))
                if text.endswith(opener[:k])), default=0)


def _calls(body: str) -> list[tuple[str, str]]:
    """(name, arguments JSON) of each {"name", "arguments"} object in `body`, in order. Stray braces around
    an object (a model copying the template's `{{`) are passed over."""
    decoder = json.JSONDecoder()
    calls, i = [], 0
    while (i := body.find("{", i)) >= 0:
        try:
            value, end = decoder.raw_decode(body, i)
        except ValueError:
            i += 1
            continue
        i = end
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            arguments = value.get("arguments", value.get("parameters", {}))
            calls.append((value["name"], arguments if isinstance(arguments, str) else to_json(arguments)))
    return calls
