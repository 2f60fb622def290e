"""Cutting a streamed reply into speakable pieces, so speech starts before the reply is done.

The first piece goes out at the first clause boundary once it has a few words: that is what the
listener waits for. Later pieces are whole sentences (fewer, more natural TTS calls), cut at a
clause only when a sentence runs long.
"""

from __future__ import annotations

import re

FIRST_MIN_WORDS = 3
FIRST_MAX_WORDS = 12  # the first piece goes out by then even without a boundary: speech starts sooner
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
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "fig", "approx", "dept"}


def _words(text: str) -> int:
    """Words, counting each CJK character as one (Japanese has no spaces)."""
    cjk = len(_CJK.findall(text))
    return cjk + sum(1 for token in _CJK.sub(" ", text).split() if any(c.isalnum() for c in token))


def _after_words(text: str, n: int) -> int | None:
    """Where the n-th word ends, once a further word has begun (so the n-th is whole)."""
    words = list(_WORD.finditer(text))
    return words[n - 1].end() if len(words) > n else None


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
            cut = next((end for end in ends if _words(text[:end]) >= FIRST_MIN_WORDS), None)
            return cut if cut is not None else _after_words(text, FIRST_MAX_WORDS)
        sentence = next(sentence_ends, None)
        clause = next((end for end in clause_ends if _words(text[:end]) >= LONG_WORDS), None)
        cuts = [end for end in (sentence, clause) if end is not None]
        if cuts:
            return min(cuts)
        return _after_words(text, MAX_WORDS)
