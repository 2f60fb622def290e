"""The reply model: a small chat LLM (SmolLM2-135M-Instruct, GGUF) through llama.cpp."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from llama_cpp import Llama

from koe.local.stages.assets import smollm2_gguf_path

N_CTX = 2048
MESSAGE_OVERHEAD = 5  # <|im_start|>, role, newline, <|im_end|>, newline
REPLY_PROMPT = 3  # the trailing "<|im_start|>assistant\n"


class ReplyModel:
    """One llama.cpp context shared by all sessions; a lock serialises generation.

    llama.cpp reuses the KV cache for the longest prompt prefix it has already seen, so a stable
    system prompt followed by the history in order makes each new turn cost only its new tokens.
    """

    def __init__(self, model_path: Path | None = None) -> None:
        self._llm = Llama(model_path=str(model_path or smollm2_gguf_path()), n_ctx=N_CTX, n_threads=2,
                          n_batch=256, chat_format="chatml", verbose=False)
        self._lock = threading.Lock()  # a llama context is not thread-safe

    @property
    def context_tokens(self) -> int:
        """How many tokens the context holds: instructions, history and reply together."""
        return self._llm.n_ctx()

    def count_tokens(self, text: str) -> int:
        # Tokenizing reads only the vocabulary, so it needs no lock and never waits on a reply.
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def stream(self, messages: list[dict[str, str]], *, max_tokens: int = 200, temperature: float = 0.7,
               cancelled: Callable[[], bool] = lambda: False) -> Iterator[str]:
        """Text deltas of the reply, one per token; stops (releasing the model) once cancelled()."""
        with self._lock:
            if cancelled():
                return
            prompt, max_tokens = self._fit(messages, max_tokens)
            chunks = self._llm.create_chat_completion(messages=prompt, max_tokens=max_tokens,
                                                      temperature=temperature, stream=True)
            try:
                for chunk in chunks:
                    if cancelled():
                        break
                    delta = chunk["choices"][0]["delta"].get("content")
                    if delta:
                        yield delta
            finally:
                chunks.close()  # ends llama's generator, so no more tokens are computed

    def _fit(self, messages: list[dict[str, str]], max_tokens: int) -> tuple[list[dict[str, str]], int]:
        """The prompt messages and token budget, trimmed to fit the context.

        The chatml formatter keeps only the first system message, so all system text is joined into
        one, first. The oldest other turns go first when the context is short.
        """
        system_text = "\n\n".join(m["content"] for m in messages if m["role"] == "system" and m["content"])
        system = [{"role": "system", "content": system_text}] if system_text else []
        history = [m for m in messages if m["role"] != "system" and m["content"]]
        costs = [self.count_tokens(m["content"]) + MESSAGE_OVERHEAD for m in system + history]
        fixed = (costs[0] if system else 0) + REPLY_PROMPT
        history_costs = costs[len(system):]
        while len(history) > 1 and fixed + sum(history_costs) + max_tokens > N_CTX:
            history.pop(0)
            history_costs.pop(0)
        room = N_CTX - fixed - sum(history_costs)
        if room <= 0:
            raise ValueError(f"the instructions and the last message need {N_CTX - room} tokens; "
                             f"the model's context holds {N_CTX}")
        return system + history, min(max_tokens, room)
