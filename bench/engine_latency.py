"""End of user speech to first reply audio, through the local server on loopback, over both transports.

    .venv/bin/python bench/engine_latency.py [--turns 8] [--languages en,ja] [--transports webrtc,websocket]
        [--reply-model fast|default] [--japanese-voice mei|jf_alpha|...] [--chat-base-url URL --chat-model M]

A simulated caller speaks several utterances (made with the project's own TTS) over a real WebRTC
call and over a WebSocket session (base64 pcm16 at 24 kHz, sent in real time, as OpenAI's SDKs do),
in English and then in Japanese (transcription language "ja": Whisper base, OpenJTalk's mei). For
each turn it prints the time from `speech_stopped` to the first non-silent reply frame at the
client, split into speech to text, first token and first audio as the server measured them; then
p50/p95 per language and transport, and the process's peak memory. Goal on a 2-core CPU: p50 at most
1.0 s; the WebSocket path no slower than WebRTC at p50 (it skips Opus and the reply track's pacing).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import resource
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.figures import TimingsCollector, percentile  # noqa: E402
from koe.audio import RATE, resample, rms_dbfs  # noqa: E402
from koe.client import Backend  # noqa: E402
from koe.client.simulated_user import QUESTIONS as UTTERANCES, VOICE_DBFS, SimulatedUser  # noqa: E402
from koe.local import LocalServer  # noqa: E402
from koe.local.stages.models import get_japanese_models, warm  # noqa: E402
from koe.local.stages.llm import PROFILES  # noqa: E402
from koe.local.voices import DEFAULT_JAPANESE_VOICE, JAPANESE_VOICES  # noqa: E402
from koe.protocol import SessionSettings, TranscriptionSettings  # noqa: E402

JAPANESE_UTTERANCES = [
    "東京駅までの行き方を教えてください。",
    "今日の天気はどうですか？",
    "おすすめの本を教えてください。",
    "好きな食べ物は何ですか？",
    "明日は何曜日ですか？",
    "日本の有名な山はどこですか？",
    "週末に何をしたらいいですか？",
    "猫について面白いことを教えて。",
]


JAPANESE_INSTRUCTIONS = "あなたは親切なアシスタントです。日本語で、一文か二文で短く答えてください。"


# The simulated caller's Japanese voice. Of Kokoro's voices Whisper base mishears jf_alpha the most (bench/voices.py),
# so it is the hard case; kept as the default so that figures stay comparable across runs.
CALLER_VOICE = "jf_alpha"


def japanese_caller(japanese, voice: str = CALLER_VOICE) -> Callable[[str], np.ndarray]:
    """The simulated caller's Japanese speech, said by one of Kokoro's voices."""
    return lambda text: japanese.tts.synthesize(text, voice=voice)


async def conversation(server: LocalServer, settings: SessionSettings, utterances: list[str],
                       speak: Callable[[str], np.ndarray], timings: TimingsCollector, turns: int) -> list[tuple]:
    """One call of `turns` turns; per turn its `turn_row`; turns without reply audio are left out."""
    rows = []
    user = SimulatedUser(Backend(server.url), settings)
    user.connection.extra_voices = JAPANESE_VOICES  # the local backend's own voices
    async with user:
        for n in range(turns):
            text = utterances[n % len(utterances)]
            start, prompts = len(user.events), len(timings.prompts)
            await user.say(speak(text), silence_after_s=0.2)
            done = await user.connection.wait_for("response.done", timeout_s=90)
            await user.connection.wait_for("output_audio_buffer.stopped", timeout_s=90)
            turn = user.events[start:]
            stopped = next(t for t, e in turn if e.type == "input_audio_buffer.speech_stopped")
            first_audio = user.first_voice_after(stopped)
            if first_audio is None or done.response["status"] != "completed" or not timings.turns:
                print(f"turn {n + 1}: no reply audio ({done.response['status']})")
                continue
            stages = timings.turns[-1]
            heard = next((e.transcript for _, e in turn
                          if e.type == "conversation.item.input_audio_transcription.completed"), "")
            reply = next((e.transcript for _, e in turn if e.type == "response.output_audio_transcript.done"), "")
            piece = next((e.delta for _, e in turn if e.type == "response.output_audio_transcript.delta"), "")
            rows.append(turn_row(n, 1000 * (first_audio - stopped), stages, heard, reply, piece, text,
                                 prompt_evaluated(timings, prompts)))
            await asyncio.sleep(0.5)
    return rows


def turn_row(n: int, client_ms: float, stages: dict[str, int], heard: str, reply: str, piece: str, utterance: str,
             prompt: str) -> tuple:
    """One turn's row, printed: (client ms, transcribed, first token, first audio as the server saw them, what the
    server heard, the reply's transcript, the utterance, reply prompt tokens evaluated / in all, first piece's
    words in), server times in ms from speech_stopped. `piece`: the reply's first spoken piece."""
    row = (client_ms, stages["transcribed"], stages["first_token"], stages["first_audio"], heard, reply, utterance,
           prompt, stages.get("first_piece", stages["first_audio"]))
    print(f"turn {n + 1}: {client_ms:5.0f} ms at the client  (server: transcript +{row[1]}, first token +{row[2]}, "
          f"first piece +{row[8]}, first audio +{row[3]} ms; prompt {prompt})  {utterance} -> {piece!r}")
    return row


def prompt_evaluated(timings: TimingsCollector, before: int) -> str:
    """"evaluated/in all" reply prompt tokens of the turn whose prompt was logged after `before` records ("-":
    none, e.g. a chat endpoint): what llama.cpp's prompt cache left to evaluate."""
    if len(timings.prompts) <= before:
        return "-"
    prompt = timings.prompts[-1]
    return f"{prompt['prompt'] - prompt['cached']}/{prompt['prompt']}"


class SocketCaller:
    """The WebSocket counterpart of SimulatedUser: a microphone streamed as `input_audio_buffer.append`
    (pcm16, 24 kHz) in real time, 100 ms at a time, silence when it has nothing to say; every server
    event kept with its arrival time."""

    CHUNK = 2400  # 100 ms at 24 kHz

    def __init__(self, websocket) -> None:
        self.websocket = websocket
        self.events: list[tuple[float, dict]] = []
        self._pending = np.zeros(0, np.int16)
        self._tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._speak())]

    def say(self, speech48k: np.ndarray, silence_after_s: float) -> None:
        clip = np.concatenate([speech48k, np.zeros(int(silence_after_s * RATE), np.int16)])
        self._pending = np.concatenate([self._pending, resample(clip, RATE, 24_000)])

    async def wait_for(self, type_: str, since: int, timeout_s: float) -> tuple[float, dict]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            found = next(((t, e) for t, e in self.events[since:] if e["type"] == type_), None)
            if found:
                return found
            await asyncio.sleep(0.01)
        raise TimeoutError(f"no {type_} within {timeout_s:.0f} s")

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        async for message in self.websocket:
            self.events.append((loop.time(), json.loads(message)))

    async def _speak(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            chunk, self._pending = self._pending[:self.CHUNK], self._pending[self.CHUNK:]
            chunk = np.concatenate([chunk, np.zeros(self.CHUNK - chunk.size, np.int16)])
            await self.websocket.send(json.dumps({"type": "input_audio_buffer.append",
                                                  "audio": base64.b64encode(chunk.astype("<i2").tobytes()).decode()}))
            next_at += 0.1
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()


async def socket_conversation(server: LocalServer, settings: SessionSettings, utterances: list[str],
                              speak: Callable[[str], np.ndarray], timings: TimingsCollector, turns: int) -> list[tuple]:
    """As `conversation`, over `GET /v1/realtime` (GA): first reply audio = the first audible
    `response.output_audio.delta` to arrive after `speech_stopped`."""
    rows = []
    url = server.url.replace("http", "ws", 1) + f"/v1/realtime?model={settings.model}"
    async with websockets.connect(url, max_size=None) as websocket:
        caller = SocketCaller(websocket)
        try:
            await websocket.send(json.dumps({"type": "session.update", "session": settings.to_wire("ga")}))
            await caller.wait_for("session.updated", 0, 30)
            for n in range(turns):
                text = utterances[n % len(utterances)]
                start, prompts = len(caller.events), len(timings.prompts)
                caller.say(speak(text), silence_after_s=0.2)
                try:
                    _, done = await caller.wait_for("response.done", start, 90)
                except TimeoutError:  # e.g. nothing transcribed: no reply to time
                    print(f"turn {n + 1}: no reply; saw {[e['type'] for _, e in caller.events[start:]][-6:]}")
                    continue
                turn = caller.events[start:]
                stopped = next(t for t, e in turn if e["type"] == "input_audio_buffer.speech_stopped")
                audio = [(t, base64.b64decode(e["delta"])) for t, e in turn if e["type"] == "response.output_audio.delta"]
                first_audio = next((t for t, pcm in audio if t > stopped
                                    and rms_dbfs(np.frombuffer(pcm, "<i2")) > VOICE_DBFS), None)
                if first_audio is None or done["response"]["status"] != "completed" or not timings.turns:
                    print(f"turn {n + 1}: no reply audio ({done['response']['status']})")
                    continue
                stages = timings.turns[-1]
                heard = next((e["transcript"] for _, e in turn
                              if e["type"] == "conversation.item.input_audio_transcription.completed"), "")
                reply = next((e["transcript"] for _, e in turn if e["type"] == "response.output_audio_transcript.done"), "")
                piece = next((e["delta"] for _, e in turn if e["type"] == "response.output_audio_transcript.delta"), "")
                rows.append(turn_row(n, 1000 * (first_audio - stopped), stages, heard, reply, piece, text,
                                     prompt_evaluated(timings, prompts)))
                # The client plays the reply before speaking again, as a person would.
                played_s = sum(len(pcm) for _, pcm in audio) / 2 / 24_000
                loop = asyncio.get_running_loop()
                await asyncio.sleep(max(0.0, first_audio + played_s - loop.time()) + 0.5)
        finally:
            caller.close()
    return rows


TRANSPORTS = {"webrtc": conversation, "websocket": socket_conversation}


async def both(results: dict[str, list[tuple]], language: str, transports: list[str], rounds: int, server: LocalServer,
               settings: SessionSettings, utterances: list[str], speak: Callable[[str], np.ndarray],
               timings: TimingsCollector, turns: int) -> None:
    """`turns` turns per transport, taken in `rounds` alternating calls so that a change in the
    machine's load falls on both transports alike."""
    for r in range(rounds):
        for transport in transports:
            n = turns // rounds + (1 if r < turns % rounds else 0)
            print(f"  over {transport} (round {r + 1} of {rounds}):")
            rows = await TRANSPORTS[transport](server, settings, utterances, speak, timings, n)
            results.setdefault(f"{language}, {transport}", []).extend(rows)


def report(language: str, rows: list[tuple]) -> None:
    if not rows:
        raise SystemExit(f"no {language} turn produced reply audio")
    total = [r[0] for r in rows]
    print(f"{language}: end of speech -> first reply audio at the client over {len(rows)} turns: "
          f"p50 {statistics.median(total):.0f} ms, p95 {percentile(total, 0.95):.0f} ms")
    print("  split, measured in the server from speech_stopped:")
    for label, index in (("speech to text done", 1), ("first LLM token", 2), ("first piece's words in", 8),
                         ("first audio queued", 3)):
        values = [r[index] for r in rows]
        print(f"    {label:26s} p50 {statistics.median(values):5.0f} ms  p95 {percentile(values, 0.95):5.0f} ms")
    # What the transport itself adds, model time taken out: robust to the machine's load, unlike the total.
    own = [r[0] - r[3] for r in rows]
    print(f"  the transport's own part (client figure - server's first audio queued): "
          f"p50 {statistics.median(own):.0f} ms, p95 {percentile(own, 0.95):.0f} ms")


async def run(turns: int, languages: list[str], chat: dict[str, str | None], reply_model: str | None,
              japanese_voice: str, transports: list[str], rounds: int) -> None:
    models = warm(japanese="ja" in languages, reply_model=reply_model)
    japanese = get_japanese_models() if "ja" in languages else None
    timings = TimingsCollector()
    server_log = logging.getLogger("koe.local")
    server_log.setLevel(logging.INFO)
    server_log.addHandler(timings)
    server_log.propagate = False  # the figures are printed below
    server = LocalServer(port=0, models=models, **chat).start()
    replies = f"{server.chat.endpoint.model} at {server.chat.endpoint.base_url}" if server.chat \
        else f"{models.llm.profile.model} (profile {models.llm.profile.name})"
    print(f"reply model: {replies}")
    results = {}
    try:
        if "en" in languages:
            print("English (Whisper base, Piper):")
            english = SessionSettings(instructions="You are a helpful assistant. Answer in one or two short sentences.",
                                      voice="alloy")
            await both(results, "English", transports, rounds, server, english, UTTERANCES, models.tts.synthesize,
                       timings, turns)
        if japanese is not None:
            print(f"Japanese (Whisper base, voice {japanese_voice}):")
            # Bounded replies: each turn waits for its audio to end. The caller speaks with Kokoro's jf_alpha.
            settings = SessionSettings(instructions=JAPANESE_INSTRUCTIONS, voice=japanese_voice, max_output_tokens=60,
                                       transcription=TranscriptionSettings(language="ja"))
            await both(results, "Japanese", transports, rounds, server, settings, JAPANESE_UTTERANCES,
                       japanese_caller(japanese), timings, turns)
    finally:
        server.stop()
    print()
    for language, rows in results.items():
        report(language, rows)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (RSS) {peak_mb:.0f} MB; goal: p50 <= 1000 ms on 2 cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=8, help="turns per language")
    parser.add_argument("--languages", default="en,ja", help="comma-separated: en, ja (default: %(default)s)")
    parser.add_argument("--transports", default="webrtc,websocket",
                        help="comma-separated: webrtc, websocket (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="alternate the transports this many times (default: 2)")
    parser.add_argument("--chat-base-url", help="reply through this OpenAI-compatible endpoint (else $KOE_CHAT_BASE_URL)")
    parser.add_argument("--chat-model")
    parser.add_argument("--chat-api-key")
    parser.add_argument("--reply-model", choices=list(PROFILES), help="bundled reply model profile (else $KOE_REPLY_MODEL, "
                                                                    "else default)")
    parser.add_argument("--japanese-voice", default=DEFAULT_JAPANESE_VOICE, choices=JAPANESE_VOICES)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    chat = {"chat_base_url": args.chat_base_url, "chat_model": args.chat_model, "chat_api_key": args.chat_api_key}
    transports = args.transports.split(",")
    if not set(transports) <= set(TRANSPORTS):
        parser.error(f"--transports: choose from {', '.join(TRANSPORTS)}")
    asyncio.run(run(args.turns, args.languages.split(","), chat, args.reply_model, args.japanese_voice, transports,
                    max(1, args.rounds)))


if __name__ == "__main__":
    main()
