"""The reply model: a small chat LLM (GGUF) through llama.cpp, chosen by profile.

Profiles (`--reply-model`, `$KOE_REPLY_MODEL`): `default` (Qwen2.5-Coder-1.5B-Instruct: right on simple
facts in English and Japanese), `fast` (SmolLM2-135M-Instruct: several times faster, often wrong).

The prompt is built as tokens, message by message, so that a conversation is an append-only prefix:
each message always becomes the same tokens, and a reply the model wrote is given back as the very
tokens it sampled. llama.cpp keeps the KV cache of the longest prefix it has already evaluated, so
each turn evaluates only what was said since the last one.
"""

from __future__ import annotations

import codecs
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llama_cpp import Llama

from koe.local.stages.assets import qwen_1_5b_gguf_path, smollm2_gguf_path

log = logging.getLogger("koe.local")

REPLY_MODEL_ENV = "KOE_REPLY_MODEL"
DEFAULT_PROFILE = "default"
THREADS = 2
REMEMBERED_REPLIES = 64  # replies whose sampled tokens are kept, to give them back token for token


@dataclass(frozen=True)
class ReplyProfile:
    """A bundled reply model and how to run it."""

    name: str  # the profile's name: "default", "fast"
    model: str  # the upstream model, as its authors name it
    size: str  # parameters and quantisation, for people
    path: Callable[[], Path] = field(repr=False)  # the GGUF file (joined into the cache on first use)
    context_tokens: int  # llama.cpp's n_ctx: instructions, history and the reply together
    temperature: float  # used when the session sets none (GA sessions have no temperature)
    top_p: float
    top_k: int
    repeat_penalty: float  # > 1 keeps a model from looping (1: none)
    japanese: bool  # whether its Japanese replies make sense

    def describe(self) -> dict:
        """What a client may show: {"profile", "model", "size", "context_tokens", "offline"}."""
        return {"profile": self.name, "model": self.model, "size": self.size,
                "context_tokens": self.context_tokens, "offline": True}


PROFILES: dict[str, ReplyProfile] = {
    # Each model's recommended sampling (Qwen2.5's generation_config.json; SmolLM2's model card), with a cooler
    # temperature for Qwen's short factual answers. llama.cpp's repeat penalty also weighs the question's own
    # words: at 1.2 SmolLM2 avoided them and answered in French or Italian (bench/answers.py: 1 of 10 right; asked
    # the same questions as text, 7 of 10 right without the penalty).
    "default": ReplyProfile("default", "Qwen2.5-Coder-1.5B-Instruct", "1.5B parameters, Q4_K_M", qwen_1_5b_gguf_path,
                            context_tokens=4096, temperature=0.3, top_p=0.8, top_k=20, repeat_penalty=1.05,
                            japanese=True),
    "fast": ReplyProfile("fast", "SmolLM2-135M-Instruct", "135M parameters, Q4_1", smollm2_gguf_path,
                         context_tokens=2048, temperature=0.2, top_p=0.9, top_k=40, repeat_penalty=1.0,
                         japanese=False),
}


def reply_profile(name: str | None = None) -> ReplyProfile:
    """The profile called `name`, else $KOE_REPLY_MODEL's, else the default. Raises ValueError for an unknown name."""
    name = name or os.environ.get(REPLY_MODEL_ENV) or DEFAULT_PROFILE
    if name not in PROFILES:
        raise ValueError(f"unknown reply model {name!r}: choose one of {', '.join(PROFILES)}")
    return PROFILES[name]


class ContextOverflow(ValueError):
    """The instructions and the newest message alone do not fit the model's context."""


class ReplyModel:
    """One llama.cpp context shared by all sessions; a lock serialises generation.

    `stream()` takes chat messages (system first, then the history in order). Messages use ChatML,
    which both bundled models were tuned on.
    """

    def __init__(self, profile: ReplyProfile | str | None = None) -> None:
        self.profile = profile if isinstance(profile, ReplyProfile) else reply_profile(profile)
        self._llm = Llama(model_path=str(self.profile.path()), n_ctx=self.profile.context_tokens, n_threads=THREADS,
                          n_batch=256, verbose=False)
        self._lock = threading.Lock()  # a llama context is not thread-safe
        self._start = self._llm.tokenize(b"", add_bos=True, special=True)  # BOS where the model wants one
        self._stops = {self._llm.token_eos(), *self._special("<|im_end|>"), *self._special("<|endoftext|>")}
        self._said: OrderedDict[str, list[int]] = OrderedDict()  # reply text (no spaces) -> its sampled tokens

    @property
    def context_tokens(self) -> int:
        return self.profile.context_tokens

    def count_tokens(self, text: str) -> int:
        # Tokenizing reads only the vocabulary, so it needs no lock and never waits on a reply.
        return len(self._tokens(text))

    def stream(self, messages: list[dict[str, str]], *, max_tokens: int = 200, temperature: float | None = None,
               cancelled: Callable[[], bool] = lambda: False) -> Iterator[str]:
        """Text deltas of the reply; stops (releasing the model) once cancelled().

        `temperature` None uses the profile's. Raises ContextOverflow when the instructions and the
        newest message cannot fit with room for a reply.
        """
        with self._lock:
            if cancelled():
                return
            prompt, max_tokens = self._prompt(messages, max_tokens)
            self._log_cache(prompt)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            sampled: list[int] = []
            text = ""
            profile = self.profile
            tokens = self._llm.generate(prompt, temp=profile.temperature if temperature is None else temperature,
                                        top_p=profile.top_p, top_k=profile.top_k, min_p=0.0,
                                        repeat_penalty=profile.repeat_penalty)
            try:
                for token in tokens:
                    if token in self._stops or cancelled():
                        break
                    sampled.append(token)
                    delta = decoder.decode(self._llm.detokenize([token]))
                    if delta:
                        text += delta
                        yield delta
                    if len(sampled) >= max_tokens:
                        break
            finally:
                tokens.close()  # ends llama's generator, so no more tokens are computed
                self._remember(text, sampled)

    def _log_cache(self, prompt: list[int]) -> None:
        """Log how much of `prompt` llama.cpp's KV cache already holds (its longest common prefix with what
        was evaluated last; at least the last token is always evaluated again): the rest is evaluated now."""
        evaluated = self._llm.input_ids[:self._llm.n_tokens]
        limit = min(len(evaluated), len(prompt) - 1)
        differs = [i for i in range(limit) if evaluated[i] != prompt[i]]
        cached = differs[0] if differs else limit
        log.info("reply prompt: %d tokens, %d cached, %d to evaluate", len(prompt), cached, len(prompt) - cached,
                 extra={"prompt_tokens": {"prompt": len(prompt), "cached": cached}})

    # -- the prompt, as tokens -----------------------------------------------------------------
    def _prompt(self, messages: list[dict[str, str]], max_tokens: int) -> tuple[list[int], int]:
        """The prompt tokens and the reply's token budget.

        All system text is joined into one system message, first. When the conversation outgrows the
        context, the oldest messages go, down to half the context, so that later turns are again an
        append-only prefix (trimming one message per turn would change the prefix every turn).
        """
        system_text = "\n\n".join(m["content"] for m in messages if m["role"] == "system" and m["content"])
        system = self._message("system", system_text) if system_text else []
        history = [self._message(m["role"], m["content"]) for m in messages if m["role"] != "system" and m["content"]]
        reply = self._header("assistant")
        n_ctx = self.profile.context_tokens
        fixed = len(self._start) + len(system) + len(reply)
        reserve = min(max_tokens, n_ctx // 4)  # what a reply needs at least
        total = fixed + sum(map(len, history))
        if total + reserve > n_ctx and len(history) > 1:
            before = len(history)
            while len(history) > 1 and (fixed + sum(map(len, history)) + reserve > n_ctx // 2 or len(history) == before):
                history.pop(0)
            log.info("the conversation outgrew the reply model's %d-token context: left out its oldest %d messages",
                     n_ctx, before - len(history))
            total = fixed + sum(map(len, history))
        room = n_ctx - total
        if room < min(max_tokens, 16):
            raise ContextOverflow(f"The instructions and the last message take {total} tokens; the reply model "
                                  f"({self.profile.model}) holds {n_ctx} in all, with room needed for the reply. "
                                  "Shorten the instructions.")
        prompt = self._start + system + [token for message in history for token in message] + reply
        return prompt, min(max_tokens, room)

    def _message(self, role: str, content: str) -> list[int]:
        # User text is tokenized as plain text: a "<|im_start|>" typed by a user stays text.
        body = self._said.get(_key(content)) if role == "assistant" else None
        return self._header(role) + (body if body is not None else self._tokens(content)) + self._special("<|im_end|>") \
            + self._tokens("\n")

    def _header(self, role: str) -> list[int]:
        return self._special("<|im_start|>") + self._tokens(f"{role}\n")

    def _tokens(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _special(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _remember(self, text: str, sampled: list[int]) -> None:
        """Keep the tokens of a reply, found again by its text whatever spaces the transcript put between pieces."""
        if text.strip():
            self._said[_key(text)] = sampled
            self._said.move_to_end(_key(text))
            while len(self._said) > REMEMBERED_REPLIES:
                self._said.popitem(last=False)


def _key(text: str) -> str:
    return "".join(text.split())
