"""Reply models: the default profile answers simple questions right through a real spoken turn; prompts stay an
append-only prefix across turns; an overflowing context is trimmed or refused aloud; a model assembled from
chunk packages must have the SHA-256 the project pins."""

from __future__ import annotations

import hashlib
import logging

import httpx
import pytest

from koe.client import Backend
from koe.client.simulated_user import SimulatedUser
from koe.local import LocalServer
from koe.local.stages.joined import PackageFile, joined
from koe.local.stages.llm import PROFILES, ContextOverflow, reply_profile
from koe.local.stages.models import get_models
from koe.presets import PRESETS
from koe.protocol import SessionSettings

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
