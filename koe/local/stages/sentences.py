"""Cutting a streamed reply into speakable pieces, so speech starts before the reply is done.

The first piece goes out at the first clause boundary once it has a few words: that is what the
listener waits for (each word more is about 40 ms of decoding on 2 cores before speech can start). In
English it may also end where a phrase begins ("Cats are known | for their curious nature."), as a
speaker pauses there too. Later pieces are whole sentences (fewer, more natural TTS calls), cut at a
clause only when a sentence runs long.
"""

from __future__ import annotations

import re

FIRST_MIN_WORDS = 3
# The first piece goes out by then even without a boundary, so speech starts sooner: 8 English words, or
# 12 characters of Japanese (each counts as a word; 12 take about as long to say).
FIRST_MAX_WORDS = 8
FIRST_MAX_CJK = 12
LONG_WORDS = 25  # past this, a clause boundary is good enough
MAX_WORDS = 50  # past this without any boundary, cut between words

_CLOSERS = "\"')\\]’”»"
# A sentence end: . ! ? followed by space (so "3.5" and "e.g.x" are not ends), CJK stops, newlines.
_SENTENCE_END = re.compile(rf"[.!?]+[{_CLOSERS}]*(?=\s)|[。！？]+[{_CLOSERS}」』]*|\n")
_CLAUSE_END = re.compile(rf"[,;:][{_CLOSERS}]*(?=\s)|—|[、，；：]")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]")
# A word: one CJK character (Japanese has no spaces), or a run of anything else but spaces.
_WORD = re.compile(rf"{_CJK.pattern}|[^\s\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]+")
_LAST_WORD = re.compile(r"(\S+)$")
# Words that begin a phrase (conjunctions, prepositions, relatives): the first piece may end before one. Not
# "of" or "to", which bind to the word before ("the capital | of France" sounds broken).
_PHRASE_STARTS = {"and", "but", "or", "so", "because", "with", "without", "for", "in", "on", "at", "by", "from",
                  "that", "which", "who", "when", "where", "while", "if", "since", "until", "after", "before",
                  "during", "about", "through", "than"}
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "fig", "approx", "dept"}


def _words(text: str) -> int:
    """Words, counting each CJK character as one (Japanese has no spaces)."""
    cjk = len(_CJK.findall(text))
    return cjk + sum(1 for token in _CJK.sub(" ", text).split() if any(c.isalnum() for c in token))


def _after_words(text: str, n: int) -> int | None:
    """Where the n-th word ends, once a further word has begun (so the n-th is whole)."""
    words = list(_WORD.finditer(text))
    return words[n - 1].end() if len(words) > n else None


def _phrase_start(text: str) -> int | None:
    """Where the first phrase-starting word after FIRST_MIN_WORDS words begins, once a word follows it (so it
    is whole); None in text with CJK characters (Japanese cuts at its own commas) or without such a word."""
    if _CJK.search(text):
        return None
    words = list(re.finditer(r"\S+", text))
    return next((words[i].start() for i in range(FIRST_MIN_WORDS, len(words) - 1)
                 if words[i].group().lower() in _PHRASE_STARTS and _words(text[:words[i].start()]) >= FIRST_MIN_WORDS),
                None)


def _is_abbreviation(text: str, period: int) -> bool:
    """Whether the "." at `period` closes an abbreviation such as "Mr." or "e.g."."""
    match = _LAST_WORD.search(text, 0, period)
    if match is None:
        return False
    word = match.group(1).lstrip("(\"'“‘").lower()
    return word in _ABBREVIATIONS or "." in word


class ClauseSplitter:
    def __init__(self) -> None:
        self._text = ""
        self._first = True

    def push(self, delta: str) -> list[str]:
        """Add streamed text; returns the pieces that are complete now."""
        self._text += delta
        pieces: list[str] = []
        while (cut := self._next_cut()) is not None:
            piece, self._text = self._text[:cut].strip(), self._text[cut:]
            if piece:
                pieces.append(piece)
                self._first = False
        return pieces

    def flush(self) -> list[str]:
        """The rest, at the end of the reply."""
        piece, self._text = self._text.strip(), ""
        self._first = True
        return [piece] if piece else []

    def _next_cut(self) -> int | None:
        text = self._text
        sentence_ends = (m.end() for m in _SENTENCE_END.finditer(text)
                         if not (m.group() == "." and _is_abbreviation(text, m.start())))
        clause_ends = (m.end() for m in _CLAUSE_END.finditer(text))
        if self._first:
            ends = sorted([*sentence_ends, *clause_ends])
            cuts = [next((end for end in ends if _words(text[:end]) >= FIRST_MIN_WORDS), None), _phrase_start(text)]
            cut = min((c for c in cuts if c is not None), default=None)
            if cut is None:
                cut = _after_words(text, FIRST_MAX_CJK if _CJK.search(text) else FIRST_MAX_WORDS)
            return cut
        sentence = next(sentence_ends, None)
        clause = next((end for end in clause_ends if _words(text[:end]) >= LONG_WORDS), None)
        cuts = [end for end in (sentence, clause) if end is not None]
        if cuts:
            return min(cuts)
        return _after_words(text, MAX_WORDS)
