"""One call on the local server: the user's audio in, turn taking, replies out, events both ways.

The one session engine behind both transports (`koe.local.transports`): WebRTC and WebSocket
calls run the same turn logic here and differ only in where events and reply audio go.
Everything here runs on the server's event loop; model inference runs in the executor so the
loop (and with it every call's audio) never waits on a model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from koe.audio import RATE, PcmQueueTrack, Resampler, frame_to_mono, frames, to_float32
from koe.local.conversation import Conversation, Item
from koe.local.scheduler import ModelScheduler, Urgency
from koe.local.stages.chat import ChatEndpointError
from koe.local.stages.llm import ContextOverflow
from koe.local.stages.models import LocalModels, get_japanese_models
from koe.local.stages.replies import ReplyStream, ToolCallDelta
from koe.local.stages.sentences import ClauseSplitter
from koe.local.stages.turns import (AudioBuffer, SemanticVadDetector, ServerVadDetector, SilenceBegan, SpeechResumed,
                                   SpeechStarted, SpeechStopped, TurnQuestion)
from koe.local.stages.vad import VadStream
from koe.local.transports import Transport
from koe.local.voices import LOCAL_VOICES, OPENJTALK_VOICE, japanese_voice
from koe.local.wire_audio import InputDecoder, encode
from koe.protocol import (
    Dialect, EventError, FunctionTool, McpTool, ServerVad, SessionSettings, SettingsError, new_id, parse_client_event,
    server_event_name, validate_for_dialect, wire_path,
)

log = logging.getLogger("koe.local")

VAD_RATE = 16_000
MIN_COMMIT_MS = 100
DEFAULT_REPLY_TOKENS = 256  # "inf" still needs a bound for a small local model
USER_AUDIO_TOKENS_PER_S = 10  # how OpenAI counts audio, so usage figures compare
ASSISTANT_AUDIO_TOKENS_PER_S = 20


# Added to the instructions of Japanese sessions: "Answer in Japanese, briefly, in one or two sentences, with
# the answer itself first, as spoken words (no lists, no emoji)."
JAPANESE_REPLY_NOTE = "日本語で、一文か二文で短く、答えを最初に、声に出して話す言葉で答えてください（箇条書きや絵文字は使わない）。"


# What OpenAI's Realtime API offers and this server does not: asked for, it answers with an `error`
# (code `unsupported_feature`) instead of silently doing something else.
TEXT_PARTS = ("input_text", "text", "output_text")


def reply_tokens(limit: int | str) -> int:
    """A reply's token budget from its max_output_tokens (validated: 1..4096 or "inf")."""
    return DEFAULT_REPLY_TOKENS if limit == "inf" else int(limit)


def unsupported(where: str, body: dict, dialect: Dialect = "ga") -> tuple[str, str] | None:
    """(param, what) for the first unsupported feature a session object (where="session", in `dialect`),
    a response.create `response` ("response") or an item ("item") asks for; None when there is none."""
    if where == "session":
        audio_in = (body.get("audio") or {}).get("input") or {} if dialect == "ga" else {}
        vad = (audio_in if dialect == "ga" else body).get("turn_detection") or {}
        if (audio_in.get("noise_reduction") if dialect == "ga" else body.get("input_audio_noise_reduction")):
            return ("session.audio.input.noise_reduction" if dialect == "ga" else "session.input_audio_noise_reduction",
                    "noise reduction")
        if isinstance(vad, dict) and vad.get("idle_timeout_ms") is not None:
            return "session.audio.input.turn_detection.idle_timeout_ms", "the idle timeout"
    # Tools are not listed: function calling on the local backend is its own piece of work (koe.tools).
    if body.get("prompt"):
        return f"{where}.prompt", "stored prompts"
    if where == "response" and body.get("conversation") not in (None, "auto"):
        return "response.conversation", "out-of-band responses (conversation other than \"auto\")"
    if where == "response" and body.get("input") is not None:
        return "response.input", "responses over a custom input"
    if where == "item":
        kinds = {p.get("type") for p in body.get("content") or [] if isinstance(p, dict)} - set(TEXT_PARTS)
        if kinds:
            return "item.content", f"content parts of type {', '.join(sorted(map(str, kinds)))} (text only)"
    return None


@dataclass
class Response:
    id: str
    audio: bool
    task: asyncio.Task | None = None
    status: str = "in_progress"
    reason: str | None = None  # cancelled: turn_detected | client_cancelled
    error: dict | None = None  # failed: {type, code, message}, as OpenAI's status_details.error
    audio_started: bool = False
    first_sample: int = 0  # the reply track's played_samples when this reply's audio began
    input_tokens: int = 0
    output_tokens: int = 0
    marks: dict[str, float] = field(default_factory=dict)  # monotonic times of this turn's stages
    # The assistant's message, made when there are words to put in it (a reply that only calls a
    # function has none), and where its events point: {response_id, item_id, output_index, content_index}.
    item: Item | None = None
    where: dict = field(default_factory=dict)
    calls: dict[int, Item] = field(default_factory=dict)  # function_call items by the model's call index
    output: list[Item] = field(default_factory=list)  # the message and the calls, in output_index order

    @property
    def cancelled(self) -> bool:
        return self.status == "cancelled"


class LocalSession:
    """One Realtime session: `transport` gets its server events (and plays its reply audio when it
    has a `playback` track); the owner feeds client events to `handle`, WebRTC audio to `listen`,
    and calls `start` once the client can hear events, `close` at the end."""

    def __init__(self, dialect: Dialect, settings: SessionSettings, models: LocalModels, scheduler: ModelScheduler,
                 transport: Transport, max_session_s: float = 3600.0, replies: ReplyStream | None = None) -> None:
        self.id = new_id("sess")
        self.dialect = dialect
        self.settings = settings
        self.models = models
        self.replies: ReplyStream = replies or models.llm  # a chat endpoint, when one is configured
        self._bundled_replies = replies is None
        self._warned: set[str] = set()  # the Japanese-mode notices already given
        self.transport = transport
        self._observers: list[Transport] = []  # sideband sockets on a WebRTC call: events only
        self._playback: PcmQueueTrack | None = transport.playback  # None: audio goes out in events
        if self._playback is not None:
            self._playback.on_drained = self._on_drained
        self._decode_input = InputDecoder(VAD_RATE)
        self._scheduler = scheduler  # all model work goes through it, marked with how soon it is heard
        self._conversation = Conversation()
        self._vad = VadStream(models.vad)
        self._to_16k = Resampler(VAD_RATE)
        self._detector: ServerVadDetector | None = None
        self._manual = AudioBuffer()
        self._user_item: str | None = None  # id promised in speech_started
        self._speech_starts = 0  # speech_started events so far: a turn's reply waits on its words, the user may go on
        self._early: asyncio.Future | None = None  # transcript started when the silence began
        self._early_job: concurrent.futures.Future | None = None
        self._prefill_job: concurrent.futures.Future | None = None  # the reply prompt, evaluated speculatively
        self._words_job: asyncio.Future | None = None  # semantic_vad: do the words so far end?
        self._closing = False
        self._response: Response | None = None
        self._playing: Response | None = None  # the reply whose audio is still in the track
        self._assistant_spoke = False
        self._tasks: set[asyncio.Task] = set()
        self._transcribing: set[asyncio.Task] = set()  # committed user audio whose words are not in yet
        self._expiry = asyncio.get_running_loop().call_later(max_session_s, self._expire)
        self.on_end: Callable[[], None] | None = None
        self._apply_turn_detection()

    # -- output --------------------------------------------------------------------------------
    def emit(self, ga_type: str, *, to: Transport | None = None, **fields) -> None:
        """Send a server event under its name in this call's dialect (GA-only events are skipped),
        to the client and any sideband observers, or only `to`."""
        name = server_event_name(ga_type, self.dialect)
        if name is None:
            return
        self._deliver({"type": name, "event_id": new_id("event"), **fields},
                      [to] if to is not None else [self.transport, *self._observers])

    def _deliver(self, event: dict, transports: list[Transport]) -> None:
        """Where every server event leaves the engine (tests check each against OpenAI's types here)."""
        for transport in transports:
            transport.send(event)

    def session_object(self) -> dict:
        settings = self.settings
        if self._playback is None:  # audio travels in events: say in which formats (pcm16 unless set)
            settings = settings.model_copy(update={"input_audio_format": settings.input_audio_format or "pcm16",
                                                   "output_audio_format": settings.output_audio_format or "pcm16"})
        return {"id": self.id, "object": "realtime.session", **settings.to_wire(self.dialect)}

    def error(self, message: str, code: str, *, event_id: str | None = None, param: str | None = None,
              type_: str = "invalid_request_error") -> None:
        self.emit("error", error={"type": type_, "code": code, "message": message, "param": param,
                                  "event_id": event_id})

    def start(self) -> None:
        """The client can hear events now: greet it with `session.created`."""
        self.emit("session.created", to=self.transport, session=self.session_object())
        self._on_language()
        self._on_tools()
        self._prefill_conversation()

    def observe(self, transport: Transport) -> None:
        """Attach a sideband link (`/v1/realtime?call_id=`): it gets every event from now on and may
        send client events to `handle`; audio stays on the call."""
        self._observers.append(transport)
        self.emit("session.created", to=transport, session=self.session_object())

    @property
    def observers(self) -> list[Transport]:
        """The sideband links attached now (a copy)."""
        return list(self._observers)

    def unobserve(self, transport: Transport) -> None:
        if transport in self._observers:
            self._observers.remove(transport)

    # -- input audio ---------------------------------------------------------------------------
    def listen(self, track: MediaStreamTrack) -> None:
        self._spawn(self._consume(track))

    async def _consume(self, track: MediaStreamTrack) -> None:
        """Read the user's audio until the track ends."""
        async for frame in frames(track):
            self._hear(to_float32(self._to_16k(frame_to_mono(frame))))

    def _hear(self, pcm16k: np.ndarray) -> None:
        """User audio (float32 at 16 kHz) from either transport: into turn detection or the manual buffer."""
        if self._detector is None:
            self._manual.append(pcm16k)
            return
        for chunk, prob in self._vad.chunks(pcm16k):
            for event in self._detector.feed(chunk, prob):
                self._on_turn_event(event)

    def _on_turn_event(self, event) -> None:
        vad = self.settings.turn_detection
        if isinstance(event, SpeechStarted):
            self._user_item = new_id("item")
            self._speech_starts += 1
            if vad is not None and vad.interrupt_response:
                self._interrupt("turn_detected")
            self.emit("input_audio_buffer.speech_started", audio_start_ms=event.audio_start_ms, item_id=self._user_item)
        elif isinstance(event, TurnQuestion) and isinstance(self._detector, SemanticVadDetector):
            self._ask_turn_model(self._detector, event)
        elif isinstance(event, SilenceBegan):
            # Transcribe while the silence window runs: most turns end here, and the text is ready when
            # the turn model says complete. One pass at a time: pauses between words must not queue up
            # work for the model.
            if self._early_job is None or self._early_job.done():
                self._early_job = self._scheduler.submit(Urgency.LISTEN, "stt", self._transcribe,
                                                         event.audio)
                self._early = asyncio.wrap_future(self._early_job)
                if self._reads_words():  # the reading evaluates the reply's prompt too
                    self._detector.words_asked(event.audio_ms)
                    self._early.add_done_callback(functools.partial(self._read_words, self._detector,
                                                                    event.audio_ms))
                else:
                    self._early.add_done_callback(self._prefill)
        elif isinstance(event, SpeechResumed):
            self._early = None
            for job in (self._early_job, self._prefill_job, self._words_job):
                if job is not None:
                    job.cancel()  # drops it unless it already started
        elif isinstance(event, SpeechStopped):
            item_id = self._user_item or new_id("item")
            self._user_item = None
            self.emit("input_audio_buffer.speech_stopped", audio_end_ms=event.audio_end_ms, item_id=item_id)
            create = vad is not None and vad.create_response
            early, self._early = self._early, None
            for job in (self._prefill_job, self._words_job):
                if job is not None:
                    job.cancel()  # still queued: the reply evaluates its prompt itself, sooner
            if early is not None and self._early_job is not None and self._early_job.cancel():
                early = None  # still queued as listening work: the turn's end makes it a reply's, asked anew
            self._commit(item_id, event.audio, respond=create, early=early, stopped_at=time.monotonic(),
                         waited_ms=event.waited_ms)

    def _prefill(self, early: asyncio.Future) -> None:
        """The early transcript is in while the turn may still be ending: have the bundled reply model evaluate
        the prompt this turn's reply would get, as listening work. Only llama.cpp's cache changes (no event, no
        item): if the user goes on, the next prompt still shares the history, and the reply itself evaluates
        only what differs. Skipped when no reply follows by itself, or one is under way."""
        vad = self.settings.turn_detection
        text = self._early_text(early)
        if not text or not self._bundled_replies or vad is None or not vad.create_response \
                or self._response is not None:
            return
        messages, options = self._model_prompt(text)
        self._prefill_job = self._scheduler.submit(Urgency.LISTEN, "llm", functools.partial(
            self.models.llm.prefill, messages, **options))

    def _early_text(self, early: asyncio.Future) -> str:
        """The words of the early transcript that just came in; "" when there are none, it failed, or speech came
        after it (it is no longer the current one)."""
        if early is not self._early or early.cancelled() or early.exception() is not None:
            return ""
        return early.result().strip()

    def _reads_words(self) -> bool:
        """semantic_vad with a bundled model that reads words in the session's language (its profile's
        `words_go_on_below`): the transcript of each silence is read as well as its sound."""
        profile = self.models.llm.profile
        return isinstance(self._detector, SemanticVadDetector) and profile.words_go_on_below is not None \
            and (profile.japanese or not self._japanese())

    def _read_words(self, detector: SemanticVadDetector, silence_ms: int, early: asyncio.Future) -> None:
        """semantic_vad: the early transcript is in; the bundled model reads whether its words end there
        (turn-taking work, as urgent as the turn model), and its answer may end the turn. In the same job it then
        evaluates the rest of the reply's prompt (the speculative prefill), so the reply finds it all cached."""
        def settle(probability: float | None) -> None:
            if detector is self._detector:  # else the session closed or its turn detection changed
                for event in detector.words(silence_ms, probability, self.models.llm.profile.words_go_on_below):
                    self._on_turn_event(event)

        def read_then_prefill() -> None:
            try:
                probability = llm.words_end(messages, **options)
            except Exception as exc:  # without a reading the sound alone decides
                log.warning("reading the words failed: %s", exc)
                probability = None
            with contextlib.suppress(RuntimeError):  # the loop closed with the session
                loop.call_soon_threadsafe(settle, probability)
            if probability is not None and self._bundled_replies:
                llm.prefill(messages, **options)

        text = self._early_text(early)
        if not text:  # no words to read: the sound alone decides
            return settle(None)
        loop, llm = asyncio.get_running_loop(), self.models.llm
        messages, options = self._model_prompt(text)
        self._words_job = self._scheduler.run(Urgency.REPLY, "llm", read_then_prefill)

    def _prefill_conversation(self) -> None:
        """The conversation changed outside a turn (the session's start, new instructions, a reply done or cut
        where it was heard): the bundled model evaluates it into its cache as listening work, so that the next
        turn's reading of the words and its reply evaluate only what the user says (a preset's instructions
        are 100-300 tokens: seconds on one core); not while other conversations keep the model busy
        (ReplyModel.prefill's `cheap_only`), nor for a session that is closing."""
        if not self._closing and (self._bundled_replies or self._reads_words()):
            messages, options = self._model_prompt()
            self._scheduler.submit(Urgency.LISTEN, "llm", functools.partial(self.models.llm.prefill, messages,
                                                                             cheap_only=True, **options))

    def _model_prompt(self, text: str | None = None) -> tuple[list[dict], dict]:
        """The bundled model's messages and keyword arguments for a reply to the user's `text` now (None: the
        conversation so far), as a reply would give them, so that what one evaluates the next one finds cached."""
        calls = self._bundled_replies and self.replies.calls_functions
        messages = self._conversation.chat_messages(self._reply_instructions(self.settings.instructions), tools=calls)
        if text is not None:
            messages.append({"role": "user", "content": text})  # as the turn's item will read
        return messages, dict(max_tokens=reply_tokens(self.settings.max_output_tokens), alone=self._scheduler.alone,
                              **(self._chat_tools({}) if calls else {}))

    def _ask_turn_model(self, detector: SemanticVadDetector, question: TurnQuestion) -> None:
        """semantic_vad: has the user finished? The model runs in the executor; its answer may end the turn."""
        def judged(job: asyncio.Future) -> None:
            if job.cancelled() or detector is not self._detector:
                return  # the session closed, or the turn detection changed meanwhile
            if job.exception() is not None:  # without a verdict the turn ends at the eagerness's maximum
                log.warning("turn model failed: %s", job.exception())
                return
            for event in detector.verdict(question, job.result()):
                self._on_turn_event(event)

        self._scheduler.run(Urgency.REPLY, "turn", self.models.turn.probability,
                            question.audio).add_done_callback(judged)

    def _commit(self, item_id: str, audio: np.ndarray, *, respond: bool, early: asyncio.Future | None = None,
                stopped_at: float | None = None, waited_ms: int | None = None) -> None:
        item = Item(id=item_id, role="user")
        previous = self._conversation.add(item)
        self.emit("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous)
        self.emit("conversation.item.added", item=item.wire(self.dialect), previous_item_id=previous)
        self.emit("conversation.item.done", item=item.wire(self.dialect), previous_item_id=previous)
        marks = {"speech_stopped": stopped_at or time.monotonic()}
        if waited_ms is not None:  # when the user fell silent: how long the turn detection waited
            marks["user_stopped"] = marks["speech_stopped"] - waited_ms / 1000
        task = self._spawn(self._transcribe_then_respond(item, audio, early, respond, marks, self._speech_starts))
        self._transcribing.add(task)
        task.add_done_callback(self._transcribing.discard)

    async def _transcribe_then_respond(self, item: Item, audio: np.ndarray, early: asyncio.Future | None,
                                       respond: bool, marks: dict[str, float], speech_starts: int) -> None:
        # Always transcribed: the reply model reads the user's words, also for a response.create after a
        # manual commit. No speech came after the silence began (it would have dropped the early pass), so
        # the early transcript holds every word of the turn.
        text = await (early if early is not None else self._scheduler.run(
            Urgency.REPLY, "stt", self._transcribe, audio, deadline=min(marks.values())))
        item.text = text
        marks["transcribed"] = time.monotonic()
        if self.settings.transcription is not None:
            self.emit("conversation.item.input_audio_transcription.delta", item_id=item.id, content_index=0, delta=text)
            # Whisper-style models bill by duration (OpenAI's `usage` for whisper-1).
            self.emit("conversation.item.input_audio_transcription.completed", item_id=item.id,
                      content_index=0, transcript=text,
                      usage={"type": "duration", "seconds": round(len(audio) / VAD_RATE, 3)})
        vad = self.settings.turn_detection
        if vad is not None and vad.interrupt_response and self._speech_starts != speech_starts:
            # The user spoke again while the words were transcribed: the reply would have been cancelled
            # by that speech_started (the API creates it at once), so it is not started; the next turn's
            # reply reads this item too.
            return
        if respond and item.text.strip():
            self._start_response(marks=marks)

    # -- responses -----------------------------------------------------------------------------
    def _start_response(self, overrides: dict | None = None, marks: dict[str, float] | None = None) -> None:
        overrides = overrides or {}
        # A per-response `output_modalities` (GA) / `modalities` (beta) wins over the session's.
        modalities = overrides.get("output_modalities" if self.dialect == "ga" else "modalities")
        audio = "audio" in modalities if isinstance(modalities, list) else self.settings.output_modalities == "audio"
        response = Response(id=new_id("resp"), audio=audio, marks=marks or {"requested": time.monotonic()})
        self._response = response
        response.task = self._spawn(self._respond(response, overrides))

    async def _respond(self, response: Response, overrides: dict) -> None:
        self.emit("response.created", response=self._response_object(response))
        limit = overrides.get("max_output_tokens" if self.dialect == "ga" else "max_response_output_tokens",
                              self.settings.max_output_tokens)
        max_tokens = reply_tokens(limit)
        try:  # whatever happens from here, response.done follows response.created exactly once
            if self._transcribing:  # a reply asked for right after a commit waits for the user's words
                await asyncio.wait(set(self._transcribing))
            calls = self.replies.calls_functions
            messages = self._conversation.chat_messages(
                self._reply_instructions(overrides.get("instructions", self.settings.instructions)), tools=calls)
            await self._generate(response, messages, max_tokens, self._chat_tools(overrides) if calls else {})
        except asyncio.CancelledError:
            pass  # barge-in or response.cancel: _interrupt already told the client
        except ChatEndpointError as exc:  # the person running the server can fix this: say what happened
            log.warning("reply failed: %s", exc)
            response.status, response.error = "failed", {"type": "server_error", "code": "chat_endpoint_error",
                                                         "message": str(exc)}
            self.error(str(exc), "chat_endpoint_error", type_="server_error")
        except ContextOverflow as exc:  # the client can fix this: shorter instructions
            response.status, response.error = "failed", {"type": "invalid_request_error",
                                                         "code": "context_length_exceeded", "message": str(exc)}
            self.error(str(exc), "context_length_exceeded", param="session.instructions")
        except Exception as exc:  # a failed reply is reported in response.done, the call goes on
            log.exception("reply failed")
            response.status, response.error = "failed", {"type": "server_error", "code": "reply_failed",
                                                         "message": str(exc)}
        self._finish(response)

    async def _generate(self, response: Response, messages: list[dict], max_tokens: int,
                        tools: dict | None = None) -> None:
        """Stream the reply: text is spoken (or sent as text) in the assistant's message, made with its
        first words; function calls become items. `tools` are the reply stream's `tools` / `tool_choice`
        keyword arguments (none for a model that cannot call functions)."""
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[str | None] = asyncio.Queue(max_tokens + 2)  # bounded by the token budget
        temperature = self.settings.temperature  # None (GA has none): the reply model's recommended sampling

        def produce() -> None:
            try:
                for delta in self.replies.stream(messages, max_tokens=max_tokens, temperature=temperature,
                                                 cancelled=lambda: response.status != "in_progress", **options):
                    loop.call_soon_threadsafe(deltas.put_nowait, delta)
            finally:
                loop.call_soon_threadsafe(deltas.put_nowait, None)

        # The bundled model evaluates the prompt with every core when the scheduler runs nothing else.
        options = dict(tools or {}, **({"alone": self._scheduler.alone} if self._bundled_replies else {}))
        response.input_tokens = sum(
            self.replies.count_tokens(json.dumps(m) if m.get("tool_calls") else m["content"]) + 4 for m in messages)
        # The bundled model is model work; a chat endpoint's stream is network I/O and waits on no lane.
        producer = self._scheduler.run(Urgency.REPLY, "llm", produce, deadline=min(response.marks.values())) \
            if self._bundled_replies else loop.run_in_executor(None, produce)
        splitter = ClauseSplitter()
        while (delta := await deltas.get()) is not None:
            response.marks.setdefault("first_token", time.monotonic())
            response.output_tokens += 1
            if isinstance(delta, ToolCallDelta):
                self._call_delta(response, delta)
                continue
            if response.item is None and delta.strip():
                self._open_message(response)
            if response.audio:
                for clause in splitter.push(delta):
                    await self._speak(response, clause)
            elif response.item is not None:
                response.item.text += delta
                self.emit("response.output_text.delta", delta=delta, **response.where)
        for clause in splitter.flush():
            await self._speak(response, clause)
        await producer

    def _open_message(self, response: Response) -> None:
        """The assistant's message for this reply's words: added to the conversation and announced."""
        item = response.item = Item(id=new_id("item"), role="assistant", audio=response.audio, status="in_progress")
        response.output.append(item)
        previous = self._conversation.add(item)
        response.where = {"response_id": response.id, "item_id": item.id, "output_index": len(response.output) - 1,
                          "content_index": 0}
        self.emit("response.output_item.added", response_id=response.id, output_index=response.where["output_index"],
                  item=item.wire(self.dialect))
        self.emit("conversation.item.added", item=item.wire(self.dialect), previous_item_id=previous)
        part = {"type": "audio", "transcript": ""} if response.audio else {"type": "text", "text": ""}
        self.emit("response.content_part.added", part=part, **response.where)

    def _chat_tools(self, overrides: dict) -> dict:
        """This reply's function tools (per-response ones win) and tool_choice in chat-completions form,
        as keyword arguments for the reply stream; {} when there are none. MCP servers are left out."""
        tools = overrides.get("tools")
        declared = ([t for t in tools if isinstance(t, dict) and t.get("type", "function") == "function"]
                    if isinstance(tools, list) else
                    [t.model_dump() for t in self.settings.tools if isinstance(t, FunctionTool)])
        if not declared:
            return {}
        choice = overrides.get("tool_choice", self.settings.to_wire(self.dialect, only={"tool_choice"})["tool_choice"])
        if isinstance(choice, dict):
            choice = {"type": "function", "function": {"name": choice["name"]}} if choice.get("type") == "function" \
                else "auto"
        elif choice not in ("auto", "none", "required"):  # beta names the function in a string
            choice = {"type": "function", "function": {"name": choice}}
        functions = [{"type": "function", "function": {"name": t.get("name"), "description": t.get("description") or "",
                                                       "parameters": t.get("parameters") or {"type": "object",
                                                                                             "properties": {}}}}
                     for t in declared]
        return {"tools": functions, "tool_choice": choice}

    def _call_delta(self, response: Response, delta: ToolCallDelta) -> None:
        """A piece of a function call from the reply model: the item first, then argument deltas."""
        item = response.calls.get(delta.index)
        if item is None:
            item = Item(id=new_id("item"), role="assistant", audio=False, status="in_progress", type="function_call",
                        name=delta.name or "", call_id=delta.id or new_id("call"))
            response.calls[delta.index] = item
            response.output.append(item)
            previous = self._conversation.add(item)
            self.emit("response.output_item.added", response_id=response.id, output_index=len(response.output) - 1,
                      item=item.wire(self.dialect))
            self.emit("conversation.item.added", item=item.wire(self.dialect), previous_item_id=previous)
        elif delta.name and not item.name:
            item.name = delta.name
        if delta.arguments:
            item.arguments += delta.arguments
            self.emit("response.function_call_arguments.delta", response_id=response.id, item_id=item.id,
                      output_index=response.output.index(item), call_id=item.call_id,
                      delta=delta.arguments)

    async def _speak(self, response: Response, clause: str) -> None:
        response.marks.setdefault("first_piece", time.monotonic())  # the words the first audio waits on are in
        track = self._playback
        if response.audio_started:  # the caller is hearing this reply: due when what it holds runs out
            held_s = track.queued_ms / 1000 if track is not None else 0.0
            urgency, deadline = Urgency.SPEAK, time.monotonic() + held_s
        else:
            urgency, deadline = Urgency.REPLY, min(response.marks.values())
        tts = "tts-ja" if self._japanese() else "tts"
        pcm = await self._scheduler.run(urgency, tts, self._synthesize, clause, deadline=deadline)
        if pcm.size == 0 or response.status != "in_progress":
            return
        item = response.item
        if not response.audio_started:
            response.audio_started = True
            self._assistant_spoke = True
            if track is not None:  # WebRTC: the server plays it, so it tracks what was heard
                response.first_sample = track.played_samples + track.queued_ms * RATE // 1000
                self._playing = response
                self.emit("output_audio_buffer.started", response_id=response.id)
            response.marks["first_audio"] = time.monotonic()
            self._log_timings(response)
        gap = "" if not item.text or self._japanese() else " "  # Japanese leaves no space between sentences
        delta = gap + clause
        item.text += delta
        item.spoken.append(((item.spoken[-1][0] if item.spoken else 0) + pcm.size, item.text))
        self.emit("response.output_audio_transcript.delta", delta=delta, **response.where)
        if track is not None:
            await track.write(pcm)
        else:  # WebSocket: the client plays the deltas
            fmt = self.settings.output_audio_format or "pcm16"
            delta = await self._scheduler.run(Urgency.SPEAK, None, encode, pcm, fmt)
            self.emit("response.output_audio.delta", delta=delta, **response.where)

    def _finish(self, response: Response) -> None:
        if response.status == "in_progress":
            response.status = "completed"
        # A reply cut short (cancelled, failed) leaves incomplete items wherever they appear from now on.
        status = "completed" if response.status == "completed" else "incomplete"
        for index, item in enumerate(response.output):
            item.status = status
            if item is response.item:
                where = response.where
                if response.audio:
                    self.emit("response.output_audio.done", **where)
                    self.emit("response.output_audio_transcript.done", transcript=item.text, **where)
                    part = {"type": "audio", "transcript": item.text}
                else:
                    self.emit("response.output_text.done", text=item.text, **where)
                    part = {"type": "text", "text": item.text}
                self.emit("response.content_part.done", part=part, **where)
            elif status == "completed":
                name = {"name": item.name} if self.dialect == "ga" else {}  # beta's event has no name
                self.emit("response.function_call_arguments.done", response_id=response.id, item_id=item.id,
                          output_index=index, call_id=item.call_id, arguments=item.arguments, **name)
            self.emit("response.output_item.done", response_id=response.id, output_index=index,
                      item=item.wire(self.dialect))
            self.emit("conversation.item.done", item=item.wire(self.dialect))
        self.emit("response.done", response=self._response_object(response, done=True))
        self.emit("rate_limits.updated", rate_limits=[])
        if self._response is response:
            self._response = None
        self._prefill_conversation()
        if self._playing is response and self._playback is not None and self._playback.queued_ms == 0:
            self._on_drained()  # the audio ran out before the reply was done

    def _response_object(self, response: Response, done: bool = False) -> dict:
        body = {"id": response.id, "object": "realtime.response", "status": response.status,
                "status_details": None, "output": [item.wire(self.dialect) for item in response.output] if done else []}
        if response.status == "cancelled":
            body["status_details"] = {"type": "cancelled", "reason": response.reason}
        elif response.status == "failed":
            body["status_details"] = {"type": "failed", "error": response.error}
        if done and response.status != "failed":
            spoken = response.item.spoken if response.item is not None else []
            spoken_s = (spoken[-1][0] / RATE) if spoken else 0.0
            audio_out = round(spoken_s * ASSISTANT_AUDIO_TOKENS_PER_S)
            body["usage"] = {
                "total_tokens": response.input_tokens + response.output_tokens + audio_out,
                "input_tokens": response.input_tokens, "output_tokens": response.output_tokens + audio_out,
                "input_token_details": {"text_tokens": response.input_tokens, "audio_tokens": 0, "cached_tokens": 0},
                "output_token_details": {"text_tokens": response.output_tokens, "audio_tokens": audio_out},
            }
        return body

    @staticmethod
    def _log_timings(response: Response) -> None:
        """Stage times of a turn from speech_stopped (else its first mark; user_stopped comes before it,
        so it is negative): operators read them, the benchmark collects them."""
        start = response.marks.get("speech_stopped", min(response.marks.values()))
        timings = {name: round(1000 * (t - start)) for name, t in response.marks.items()}
        log.info("reply %s: %s", response.id, ", ".join(f"{k} {v:+} ms" for k, v in timings.items()),
                 extra={"timings_ms": timings})

    def _interrupt(self, reason: str) -> bool:
        """Stop the reply in progress and drop its unplayed audio; True when there was one."""
        response, playing = self._response, self._playing
        if response is not None:
            response.status, response.reason = "cancelled", reason
            if response.task is not None:
                response.task.cancel()
        if playing is not None:
            self._drop_playback(playing)
        return response is not None or playing is not None

    def _drop_playback(self, playing: Response) -> None:
        """WebRTC barge-in: drop the unplayed audio and cut the item where playback stopped."""
        self._playing = None
        self._playback.clear()
        played = max(0, self._playback.played_samples - playing.first_sample)
        playing.item.text = playing.item.heard(played)
        self.emit("output_audio_buffer.cleared", response_id=playing.id)
        self.emit("conversation.item.truncated", item_id=playing.item.id, content_index=0,
                  audio_end_ms=played * 1000 // RATE)
        self._prefill_conversation()

    def _on_drained(self) -> None:
        playing = self._playing
        if playing is not None and playing is not self._response:
            self._playing = None
            self.emit("output_audio_buffer.stopped", response_id=playing.id)

    # -- client events -------------------------------------------------------------------------
    def handle(self, message: str | bytes) -> None:
        """The dispatch boundary every transport delivers client events through (one JSON text each).

        The event is validated against this dialect's models before any handler runs: an invalid
        one gets one `error` carrying its `event_id` and changes nothing. A handler that fails
        anyway is logged with its traceback and answered with `server_error`; the call goes on.
        """
        try:
            event = parse_client_event(message, self.dialect)
        except EventError as exc:
            self.error(exc.message, exc.code, event_id=exc.event_id, param=exc.param)
            return
        try:
            getattr(self, "_on_" + event.type.replace(".", "_"))(event)
        except Exception:
            log.exception("handling %s failed", event.type)
            self.error("The server had an error while processing your request. The session goes on.",
                       "server_error", event_id=event.event_id, type_="server_error")

    def _on_session_update(self, event) -> None:
        if (missing := unsupported("session", event.session.model_dump(exclude_unset=True), self.dialect)) is not None:
            # Said, not dropped: the rest of the update still applies.
            self.error(f"Not supported by this server: {missing[1]}; the rest of the update applies.",
                       "unsupported_feature", event_id=event.event_id, param=missing[0])
        try:
            updated = self.settings.merge_wire(self.dialect, event.session.model_dump(exclude_unset=True))
            validate_for_dialect(updated, self.dialect, LOCAL_VOICES)
        except SettingsError as exc:
            param = "session." + wire_path(self.dialect, exc.field)
            self.error(f"Invalid value for '{param}': {exc.message}", "invalid_value", event_id=event.event_id,
                       param=param)
            return
        if updated.voice != self.settings.voice and self._assistant_spoke:
            self.error("Cannot update a conversation's voice if assistant audio is present.",
                       "cannot_update_voice", event_id=event.event_id,
                       param="session." + wire_path(self.dialect, "voice"))
            return
        self.settings = updated
        self._apply_turn_detection()
        self.emit("session.updated", session=self.session_object())
        self._on_language()
        self._on_tools()
        self._prefill_conversation()

    def _on_input_audio_buffer_append(self, event) -> None:
        try:
            pcm16k = self._decode_input(event.audio, self.settings.input_audio_format or "pcm16")
        except ValueError as exc:
            self.error(f"Invalid 'audio': {exc}", "invalid_value", event_id=event.event_id, param="audio")
            return
        self._hear(to_float32(pcm16k))

    def _on_input_audio_buffer_commit(self, event) -> None:
        # Measured before taking it: a refused commit leaves the buffer as it was.
        pending = self._manual.duration_ms if self._detector is None \
            else len(self._detector.utterance_so_far()) * 1000 // VAD_RATE
        if pending < MIN_COMMIT_MS:
            self.error(f"Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms "
                       f"of audio, but buffer only has {pending}ms of audio.",
                       "input_audio_buffer_commit_empty", event_id=event.event_id)
            return
        audio = self._manual.take() if self._detector is None else self._detector.take()
        self._commit(new_id("item"), audio, respond=False)

    def _on_input_audio_buffer_clear(self, event) -> None:
        self._manual.clear()
        if self._detector is not None:
            self._detector.reset()
        self._early = None
        self.emit("input_audio_buffer.cleared")

    def _on_output_audio_buffer_clear(self, event) -> None:
        if self._playing is not None:
            self._drop_playback(self._playing)

    def _on_conversation_item_create(self, event) -> None:
        data = event.item  # validated against the dialect: known types, roles and parts, string ids
        kind = data.type or "message"
        if data.id is not None and self._conversation.has(data.id):
            self.error(f"Duplicate item found with id {data.id}.", "invalid_value", event_id=event.event_id,
                       param="item.id")
            return
        if kind in ("function_call", "function_call_output"):  # a function's result, for the next reply
            item = Item(id=data.id or new_id("item"), role="assistant" if kind == "function_call" else "tool",
                        audio=False, type=kind, name=getattr(data, "name", None) or "", call_id=data.call_id or "",
                        arguments=getattr(data, "arguments", None) or "", output=getattr(data, "output", None) or "")
        elif kind != "message":
            self.error(f"'{kind}' items are not supported here: only message, function_call and function_call_output.",
                       "invalid_value", event_id=event.event_id, param="item.type")
            return
        elif (missing := unsupported("item", data.model_dump(exclude_unset=True))) is not None:
            self.error(f"Not supported by this server: {missing[1]}.", "unsupported_feature",
                       event_id=event.event_id, param=missing[0])
            return
        else:
            text = " ".join(p.text or getattr(p, "transcript", None) or "" for p in data.content or [])
            item = Item(id=data.id or new_id("item"), role=data.role or "user", text=text.strip(), audio=False)
        try:
            previous = self._conversation.add(item, event.previous_item_id)
        except KeyError:
            self.error(f"Item with item_id not found: {event.previous_item_id}", "item_not_found",
                       event_id=event.event_id, param="previous_item_id")
            return
        self.emit("conversation.item.added", item=item.wire(self.dialect), previous_item_id=previous)
        self.emit("conversation.item.done", item=item.wire(self.dialect), previous_item_id=previous)

    def _on_conversation_item_truncate(self, event) -> None:
        try:
            item = self._conversation.get(event.item_id)
        except KeyError:
            self.error(f"Item with item_id not found: {event.item_id}", "item_not_found", event_id=event.event_id)
            return
        if self._playing is not None and self._playing.item is item:
            self._drop_playback(self._playing)
            return
        if item.role == "assistant" and item.audio:  # the client played it (WebSocket): cut where it says
            item.text = item.heard(event.audio_end_ms * RATE // 1000)
        self.emit("conversation.item.truncated", item_id=item.id, content_index=event.content_index,
                  audio_end_ms=event.audio_end_ms)
        self._prefill_conversation()

    def _on_conversation_item_delete(self, event) -> None:
        try:
            self._conversation.delete(event.item_id)
        except KeyError:
            self.error(f"Item with item_id not found: {event.item_id}", "item_not_found", event_id=event.event_id)
            return
        self.emit("conversation.item.deleted", item_id=event.item_id)

    def _on_conversation_item_retrieve(self, event) -> None:
        try:
            item = self._conversation.get(event.item_id)
        except KeyError:
            self.error(f"Item with item_id not found: {event.item_id}", "item_not_found", event_id=event.event_id)
            return
        self.emit("conversation.item.retrieved", item=item.wire(self.dialect))

    def _on_response_create(self, event) -> None:
        if self._response is not None:
            self.error(f"Conversation already has an active response in progress: {self._response.id}. "
                       "Wait until the response is finished before creating a new one.",
                       "conversation_already_has_active_response", event_id=event.event_id)
            return
        overrides = event.response.model_dump(exclude_unset=True, by_alias=True) if event.response else {}
        if (missing := unsupported("response", overrides)) is not None:
            self.error(f"Not supported by this server: {missing[1]}.", "unsupported_feature",
                       event_id=event.event_id, param=missing[0])
            return
        voice = event.response.voice if event.response is not None else None
        if voice is not None:
            try:
                validate_for_dialect(self.settings.changed(voice=voice if isinstance(voice, str) else voice.id),
                                     self.dialect, LOCAL_VOICES)
            except SettingsError as exc:
                param = "response.audio.output.voice" if self.dialect == "ga" else "response.voice"
                self.error(f"Invalid value for '{param}': {exc.message}", "invalid_value", event_id=event.event_id,
                           param=param)
                return
        self._start_response(overrides)

    def _on_response_cancel(self, event) -> None:
        response = self._response
        # A cancel naming another (finished) response must not cut the one in progress.
        if response is None or event.response_id not in (None, response.id):
            named = f" with id {event.response_id}" if event.response_id else ""
            self.error(f"Cancellation failed: no active response found{named}.", "response_cancel_not_active",
                       event_id=event.event_id, param="response_id" if named else None)
            return
        self._interrupt("client_cancelled")

    # -- plumbing ------------------------------------------------------------------------------
    def _apply_turn_detection(self) -> None:
        vad = self.settings.turn_detection
        if vad is None:
            self._detector = None
            return
        clock = self._detector.clock if self._detector is not None else 0
        if isinstance(vad, ServerVad):
            if type(self._detector) is ServerVadDetector:
                self._detector.update(vad.threshold, vad.prefix_padding_ms, vad.silence_duration_ms)
            else:
                self._detector = ServerVadDetector(vad.threshold, vad.prefix_padding_ms, vad.silence_duration_ms, clock)
        elif isinstance(self._detector, SemanticVadDetector):
            self._detector.update_eagerness(vad.eagerness)
        else:  # semantic_vad: Silero hears the silences, the turn model judges them
            self._detector = SemanticVadDetector(vad.eagerness, clock=clock)

    def _language(self) -> str:
        transcription = self.settings.transcription
        return transcription.language if transcription and transcription.language else "en"

    def _japanese(self) -> bool:
        """Japanese mode: the user's language is set to "ja", so speech in and out is Japanese."""
        return self._language() == "ja"

    def _on_language(self) -> None:
        """Entering Japanese mode: load its models (and the chosen voice) before the user's first turn
        ends, and say once what the user will hear: a bundled reply model weak in Japanese, the fast voice."""
        if not self._japanese():
            return
        voice = japanese_voice(self.settings.voice)
        self._scheduler.submit(Urgency.LISTEN, "tts-ja", lambda: get_japanese_models().tts.prepare(voice))
        profile = self.models.llm.profile
        if self._bundled_replies and not profile.japanese and "limited" not in self._warned:
            self._warned.add("limited")
            self.error(f"Japanese mode: speech in and out is Japanese, but the bundled reply model "
                       f"({profile.model}) speaks little Japanese, so its replies will be poor. Start the server "
                       "with --reply-model default, or configure a chat endpoint (KOE_CHAT_BASE_URL, "
                       "KOE_CHAT_MODEL) for real Japanese replies.", "local_reply_model_limited", type_="warning")
        if voice == OPENJTALK_VOICE and "voice" not in self._warned:
            self._warned.add("voice")
            self.error("Japanese replies are spoken by OpenJTalk's fast voice \"mei\" (HTS, CC BY 3.0); Kokoro's "
                       "voices (jf_alpha, jf_gongitsune, jf_nezumi, jf_tebukuro, jm_kumo) sound more natural "
                       "but start speaking about a second later.", "local_fast_voice", type_="warning")

    def _reply_instructions(self, instructions: str) -> str:
        """The reply model's system text: the instructions, and in Japanese mode a line asking for short
        spoken Japanese (sessions with English instructions got English replies, and long ones are slow to speak)."""
        if not self._japanese():
            return instructions
        return "\n\n".join(part for part in (instructions, JAPANESE_REPLY_NOTE) if part)

    def _on_tools(self) -> None:
        """Say once what this backend cannot do with the session's tools."""
        if not self.replies.calls_functions and any(isinstance(t, FunctionTool) for t in self.settings.tools) \
                and "tools" not in self._warned:
            self._warned.add("tools")
            self.error(f"The reply model ({self.replies.model}) cannot call functions, so the session's tools go "
                       "unused. Start the server with --reply-model default, configure a chat endpoint whose model "
                       "can (KOE_CHAT_BASE_URL, KOE_CHAT_MODEL), or use OpenAI.",
                       "local_tools_unsupported", type_="warning")
        if any(isinstance(t, McpTool) for t in self.settings.tools) and "mcp" not in self._warned:
            self._warned.add("mcp")
            self.error("MCP servers are called by OpenAI itself; the local backend leaves them out.",
                       "local_mcp_unsupported", type_="warning")

    # Both run in the executor: the Japanese voices load there on first use, never on the loop.
    def _transcribe(self, audio16k: np.ndarray) -> str:
        return self.models.stt.transcribe(audio16k, self._language())

    def _synthesize(self, clause: str) -> np.ndarray:
        if self._japanese():
            return get_japanese_models().tts.synthesize(clause, self.settings.speed, japanese_voice(self.settings.voice))
        return self.models.tts.synthesize(clause, self.settings.speed)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _expire(self) -> None:
        self.error("Your session hit the maximum duration.", "session_expired", type_="invalid_request_error")
        if self.on_end is not None:
            self.on_end()

    async def close(self) -> None:
        self._closing = True
        self._expiry.cancel()
        if self._response is not None:
            self._response.status = "cancelled"
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._playback is not None:
            self._playback.stop()
