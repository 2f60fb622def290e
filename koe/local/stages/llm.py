"""The reply model: a small chat LLM (GGUF) through llama.cpp, chosen by profile.

Profiles (`--reply-model`, `$KOE_REPLY_MODEL`): `default` (Qwen2.5-Coder-1.5B-Instruct: right on simple
facts in English and Japanese), `fast` (SmolLM2-135M-Instruct: several times faster, often wrong).

The prompt is built as tokens, message by message, so that a conversation is an append-only prefix:
each message always becomes the same tokens, and a reply the model wrote is given back as the very
tokens it sampled. llama.cpp keeps the KV cache of the longest prefix it has already evaluated, so
each turn evaluates only what was said since the last one.

The default profile calls functions the way its chat template (Qwen2.5's, in the GGUF) lays out:
`koe.local.stages.hermes` has the texts and reads the calls out of the streamed reply.
"""

from __future__ import annotations

import codecs
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from llama_cpp import Llama

from koe.local.scheduler import cores, model_threads
from koe.local.stages import hermes
from koe.local.stages.assets import qwen_1_5b_gguf_path, smollm2_gguf_path
from koe.local.stages.replies import ToolCallDelta

log = logging.getLogger("koe.local")

REPLY_MODEL_ENV = "KOE_REPLY_MODEL"
DEFAULT_PROFILE = "default"
REMEMBERED_REPLIES = 64  # replies whose sampled tokens are kept, to give them back token for token
# What the words so far end with, for words_end: Whisper writes punctuation, which says nothing of whether the
# speaker went on.
TRAILING = " \t\n.,!?;:…。、？！"
SENTENCE_ENDS = set(".?!。？！")


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
    tools: bool  # whether its chat template lays out tools (Hermes form) so that it can call functions
    system: str  # the system text its chat template gives a conversation that brings none
    # semantic_vad's reading of the words (ReplyModel.words_end): below this the words go on; None: not asked
    # (its figures do not tell fragments from finished questions).
    words_go_on_below: float | None = None

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
                            japanese=True, tools=True,
                            system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
                            # 31 fragments ("I'd like to order", "私が言いたいのは"): 0.000-0.018 but for "Let me
                            # think, um" (0.22); 38 finished turns: 0.09-0.997, but for six that invite more
                            # ("I would like to book a table.", "Tell me more.", "...the nearest station?").
                            words_go_on_below=0.03),
    "fast": ReplyProfile("fast", "SmolLM2-135M-Instruct", "135M parameters, Q4_1", smollm2_gguf_path,
                         context_tokens=2048, temperature=0.2, top_p=0.9, top_k=40, repeat_penalty=1.0,
                         japanese=False, tools=False,
                         system="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
                         # 27 English fragments: 0.000-0.136, 20 of them under 0.005; 35 finished turns:
                         # 0.005-0.947, but for three that invite more ("I'd like to order.").
                         words_go_on_below=0.005),
}


def reply_profile(name: str | None = None) -> ReplyProfile:
    """The profile called `name`, else $KOE_REPLY_MODEL's, else the default. Raises ValueError for an unknown name."""
    name = name or os.environ.get(REPLY_MODEL_ENV) or DEFAULT_PROFILE
    if name not in PROFILES:
        raise ValueError(f"unknown reply model {name!r}: choose one of {', '.join(PROFILES)}")
    return PROFILES[name]


class ThreadChoice:
    """Of two thread counts for evaluating prompts (the model's share `narrow`, every core `wide`), the one that
    evaluated a prompt token faster lately (moving averages); the other is tried every PROBE_EVERY-th time, as
    the machine's load changes. Every core is not always faster: when other processes want the cores,
    llama.cpp's threads wait on each other at every step (on a loaded 2-core machine 14 prompt tokens took
    2.5 s with two threads, 0.45 s with one). Not thread-safe: used under the model's lock."""

    PROBE_EVERY = 8
    WEIGHT = 0.3  # of the newest figure in the moving average
    MIN_TOKENS = 4  # fewer evaluated tokens say too little about the rate

    def __init__(self, narrow: int, wide: int) -> None:
        self.narrow, self.wide = narrow, wide
        self.seconds: dict[int, float] = {}  # threads -> moving average of seconds per prompt token
        self._picked = 0

    def pick(self) -> int:
        """The thread count for the next prompt (an untried count counts as fastest; a tie goes to wide)."""
        if self.wide == self.narrow:
            return self.narrow
        self._picked += 1
        best = min((self.wide, self.narrow), key=lambda n: self.seconds.get(n, 0.0))
        if self._picked % self.PROBE_EVERY == 0:
            return self.narrow if best == self.wide else self.wide
        return best

    def record(self, threads: int, seconds: float, tokens: int) -> None:
        """A prompt picked with `threads` evaluated `tokens` tokens in `seconds`."""
        if tokens < self.MIN_TOKENS:
            return
        rate, old = seconds / tokens, self.seconds.get(threads)
        self.seconds[threads] = rate if old is None else old + self.WEIGHT * (rate - old)


class ContextOverflow(ValueError):
    """The instructions and the newest message alone do not fit the model's context."""


class ReplyModel:
    """One llama.cpp context shared by all sessions; a lock serialises generation.

    `stream()` takes chat messages (system first, then the history in order). Messages use ChatML,
    which both bundled models were tuned on; with a profile that calls functions, also assistant
    messages with `tool_calls` and `tool` messages (chat completions' form).
    """

    def __init__(self, profile: ReplyProfile | str | None = None) -> None:
        self.profile = profile if isinstance(profile, ReplyProfile) else reply_profile(profile)
        self._llm = Llama(model_path=str(self.profile.path()), n_ctx=self.profile.context_tokens, n_threads=model_threads(),
                          n_threads_batch=model_threads(),
                          n_batch=256, verbose=False)
        self._lock = threading.Lock()  # a llama context is not thread-safe
        self._start = self._llm.tokenize(b"", add_bos=True, special=True)  # BOS where the model wants one
        self._stops = {self._llm.token_eos(), *self._special("<|im_end|>"), *self._special("<|endoftext|>")}
        self._said: OrderedDict[str, list[int]] = OrderedDict()  # reply text (no spaces) -> its sampled tokens
        self._prompt_threads = ThreadChoice(model_threads(), cores())
        self._ends = np.array(sorted(self._stops | {t for t in range(self._llm.n_vocab()) if _ends_sentence(
            self._llm.detokenize([t]).decode("utf-8", "ignore"))}))  # tokens that end a sentence or the message

    @property
    def context_tokens(self) -> int:
        return self.profile.context_tokens

    @property
    def model(self) -> str:
        return self.profile.model

    @property
    def calls_functions(self) -> bool:
        return self.profile.tools

    def count_tokens(self, text: str) -> int:
        # Tokenizing reads only the vocabulary, so it needs no lock and never waits on a reply.
        return len(self._tokens(text))

    def stream(self, messages: list[dict], *, max_tokens: int = 200, temperature: float | None = None,
               cancelled: Callable[[], bool] = lambda: False, tools: list[dict] | None = None,
               tool_choice: str | dict | None = None, alone: Callable[[], bool] = lambda: False
               ) -> Iterator[str | ToolCallDelta]:
        """Text deltas of the reply, and one ToolCallDelta (name and whole arguments) per function call
        when `tools` are offered (chat completions' `[{"type": "function", "function": {name, description,
        parameters}}]`, `tool_choice` "auto" | "none" | "required" | {"type": "function", "function":
        {"name"}}; ignored by a profile without tools); stops (releasing the model) once cancelled().
        The prompt is evaluated with every core when `alone()` (the scheduler's: no other model work runs or
        waits), else with the model's share; tokens are decoded with its share (a second thread did not make
        decoding faster on 2 cores).

        `temperature` None uses the profile's. Raises ContextOverflow when the instructions and the
        newest message cannot fit with room for a reply.
        """
        offered = self._offered(tools, tool_choice)
        with self._lock:
            if cancelled():
                return
            prompt, max_tokens = self._prompt(messages, max_tokens, offered, tool_choice)
            evaluating = len(prompt) - self._log_cache(prompt)
            picked, started = self._batch_threads(alone), time.monotonic()
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            parser = hermes.CallParser([t["function"]["name"] for t in offered]) if offered else None
            sampled: list[int] = []
            said: list[str | ToolCallDelta] = []
            profile = self.profile
            tokens = self._llm.generate(prompt, temp=profile.temperature if temperature is None else temperature,
                                        top_p=profile.top_p, top_k=profile.top_k, min_p=0.0,
                                        repeat_penalty=profile.repeat_penalty)
            try:
                for token in tokens:
                    if started is not None:  # the prompt is evaluated: how fast, with the threads picked
                        if picked is not None:
                            self._prompt_threads.record(picked, time.monotonic() - started, evaluating)
                        started = None
                    if token in self._stops or cancelled():
                        break
                    sampled.append(token)
                    delta = decoder.decode(self._llm.detokenize([token]))
                    for piece in (parser.feed(delta) if parser else [delta]) if delta else ():
                        said.append(piece)
                        yield piece
                    if len(sampled) >= max_tokens:
                        break
                for piece in parser.close() if parser and not cancelled() else ():
                    said.append(piece)
                    yield piece
            finally:
                tokens.close()  # ends llama's generator, so no more tokens are computed
                key = _reply_key("".join(p for p in said if isinstance(p, str)),
                                 [(p.name or "", p.arguments) for p in said if isinstance(p, ToolCallDelta)])
                # Calls written another way than the template's (a ```json block) go back in the template's
                # form: given back as sampled, the model took its own call for one still to make and made it again.
                if "".join(self._llm.detokenize(sampled).decode("utf-8", "replace").split()) == key:
                    self._remember(key, sampled)

    def prefill(self, messages: list[dict], *, max_tokens: int = 200, tools: list[dict] | None = None,
                tool_choice: str | dict | None = None, alone: Callable[[], bool] = lambda: False,
                cheap_only: bool = False) -> None:
        """Evaluate a prompt into llama.cpp's KV cache without replying, so that a `stream` whose prompt starts the
        same evaluates only the rest (a speculative start: a prompt that turns out different still shares the part
        before the difference). Messages that end with the user's: the prompt `stream` would build from the same
        arguments; else the conversation so far and the header of the user's next message.
        `cheap_only`: evaluate only when `alone()` or when the cache already holds most of the prompt (at most a
        quarter is new); else leave it be: it holds another conversation, which this would evict, and every
        conversation's turn would then evaluate its whole history.
        `alone` as for `stream`. Raises ContextOverflow as `stream` does."""
        offered = self._offered(tools, tool_choice)
        with self._lock:
            prompt, _ = self._prompt(messages, max_tokens, offered, tool_choice)
            if messages[-1]["role"] != "user":
                prompt = prompt[:-len(self._header("assistant"))] + self._header("user")
            if list(self._llm.input_ids[:self._llm.n_tokens]) == prompt:
                return
            if cheap_only and not alone() and 4 * (len(prompt) - self._cached(prompt)) > len(prompt):
                return
            self._evaluate(prompt, alone)

    def words_end(self, messages: list[dict], *, max_tokens: int = 200, tools: list[dict] | None = None,
                  tool_choice: str | dict | None = None, alone: Callable[[], bool] = lambda: False) -> float:
        """The probability (0..1) that the user's words, the last message, end there: the model's chance that the
        next token after them (their trailing punctuation left out) ends a sentence or the message. How
        LiveKit's turn detector reads a transcript, with the reply model itself. The prompt is the one `stream`
        would build from the same arguments up to the words, so it is evaluated into the KV cache as a
        `prefill` would (the reply then evaluates only the punctuation and the template's few tokens).
        `alone` as for `stream`. Raises ContextOverflow as `stream` does.
        """
        offered = self._offered(tools, tool_choice)
        words = messages[-1]["content"].rstrip(TRAILING)
        tail = self._special("<|im_end|>") + self._tokens("\n") + self._header("assistant")
        with self._lock:
            prompt, _ = self._prompt(messages[:-1] + [{"role": "user", "content": words}], max_tokens, offered,
                                     tool_choice)
            started, evaluated = time.monotonic(), self._evaluate(prompt[:-len(tail)], alone)
            logits = np.ctypeslib.as_array(self._llm._ctx.get_logits(), shape=(self._llm.n_vocab(),))
            odds = np.exp(logits - logits.max())
        ends = float(odds[self._ends].sum() / odds.sum())
        log.info("words: %d tokens evaluated in %.0f ms: they end there with %.3f", evaluated,
                 1000 * (time.monotonic() - started), ends)
        return ends

    def _evaluate(self, prompt: list[int], alone: Callable[[], bool]) -> int:
        """Evaluate `prompt` into the KV cache, from where it differs from what is held (at least its last token,
        whose logits llama.cpp then holds); returns how many tokens were evaluated. Under the lock."""
        cached = self._cached(prompt)
        picked, started = self._batch_threads(alone), time.monotonic()
        self._llm.n_tokens = cached  # eval() drops the KV cache past it
        self._llm.eval(prompt[cached:])
        if picked is not None:
            self._prompt_threads.record(picked, time.monotonic() - started, len(prompt) - cached)
        return len(prompt) - cached

    def _offered(self, tools: list[dict] | None, tool_choice: str | dict | None) -> list[dict] | None:
        """The tools the prompt lays out: none for a profile that cannot call functions, or with tool_choice "none"."""
        return tools if self.profile.tools and tool_choice != "none" else None

    def _batch_threads(self, alone: Callable[[], bool]) -> int | None:
        """Evaluate the coming prompt with the model's share of the cores, or, when nothing else runs (`alone()`),
        with what ThreadChoice picks (two threads that share a core with other work wait on each other at every
        step). Returns the count ThreadChoice picked, None when it was not asked."""
        picked = self._prompt_threads.pick() if alone() else None
        self._llm._ctx.set_n_threads(model_threads(), picked or model_threads())
        return picked

    def _cached(self, prompt: list[int]) -> int:
        """How much of `prompt` llama.cpp's KV cache already holds (its longest common prefix with what was
        evaluated last; at least the last token is always evaluated again): the rest is evaluated now."""
        evaluated = self._llm.input_ids[:self._llm.n_tokens]
        limit = min(len(evaluated), len(prompt) - 1)
        differs = [i for i in range(limit) if evaluated[i] != prompt[i]]
        return differs[0] if differs else limit

    def _log_cache(self, prompt: list[int]) -> int:
        """Log how much of `prompt` llama.cpp's KV cache already holds (`_cached`), and return it."""
        cached = self._cached(prompt)
        log.info("reply prompt: %d tokens, %d cached, %d to evaluate", len(prompt), cached, len(prompt) - cached,
                 extra={"prompt_tokens": {"prompt": len(prompt), "cached": cached}})
        return cached

    # -- the prompt, as tokens -----------------------------------------------------------------
    def _prompt(self, messages: list[dict], max_tokens: int, tools: list[dict] | None = None,
                tool_choice: str | dict | None = None) -> tuple[list[int], int]:
        """The prompt tokens and the reply's token budget.

        All system text is joined into one system message, first (the template's own when there is
        none), with the `tools` laid out after it
        (and what `tool_choice` asks for). When the conversation outgrows the context, the oldest
        messages go, down to half the context, so that later turns are again an append-only prefix
        (trimming one message per turn would change the prefix every turn).
        """
        system_text = "\n\n".join(m["content"] for m in messages if m["role"] == "system" and m["content"]) \
            or self.profile.system
        if tools and (rule := hermes.choice_rule(tool_choice)):
            system_text += "\n\n" + rule
        if tools:
            system = self._turn("system", self._tokens(hermes.system_text(system_text, tools)))
        else:
            system = self._message("system", system_text)
        history = list(self._history(m for m in messages if m["role"] != "system"))
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

    def _history(self, messages: Iterable[dict]) -> Iterator[list[int]]:
        """Each turn's tokens: messages with text, assistant messages with calls, and each run of `tool`
        messages as one user turn of results (as the template groups them)."""
        results: list[str] = []
        for m in messages:
            if m["role"] == "tool":
                results.append(m.get("content") or "")
                continue
            if results:
                yield self._turn("user", self._tokens(hermes.responses_text(results)))
                results = []
            if m["role"] == "assistant" and m.get("tool_calls"):
                calls = [(c["function"]["name"], c["function"].get("arguments") or "{}") for c in m["tool_calls"]]
                said = self._said.get(_reply_key(m.get("content") or "", calls))
                yield self._turn("assistant", said if said is not None
                                 else self._tokens(hermes.assistant_text(m.get("content"), calls)))
            elif m.get("content"):
                yield self._message(m["role"], m["content"])
        if results:
            yield self._turn("user", self._tokens(hermes.responses_text(results)))

    def _message(self, role: str, content: str) -> list[int]:
        # User text is tokenized as plain text: a "<|im_start|>" typed by a user stays text.
        body = self._said.get(_reply_key(content, [])) if role == "assistant" else None
        return self._turn(role, body if body is not None else self._tokens(content))

    def _turn(self, role: str, body: list[int]) -> list[int]:
        return self._header(role) + body + self._special("<|im_end|>") + self._tokens("\n")

    def _header(self, role: str) -> list[int]:
        return self._special("<|im_start|>") + self._tokens(f"{role}\n")

    def _tokens(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _special(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _remember(self, key: str, sampled: list[int]) -> None:
        """Keep the tokens of a reply under its _reply_key, to give them back token for token."""
        if key:
            self._said[key] = sampled
            self._said.move_to_end(key)
            while len(self._said) > REMEMBERED_REPLIES:
                self._said.popitem(last=False)


def _ends_sentence(piece: str) -> bool:
    return bool(piece.strip()) and set(piece.strip()) <= SENTENCE_ENDS


def _reply_key(text: str, calls: list[tuple[str, str]]) -> str:
    """What finds a reply's sampled tokens again: its text whatever spaces the transcript put between pieces,
    and its calls written one way, whichever way the model wrote them (tags, a ```json block)."""
    return "".join(hermes.assistant_text(text, calls).split())
