"""Stop strings and streaming text, applied to the decoded output (the manager cannot stop on
strings). `TextTracker` turns the growing token list into safe text deltas: it holds back an
incomplete UTF-8 character and the last len(longest stop)-1 characters (they may be the start of
a stop string), and reports where a stop string ends the output (the stop itself excluded)."""
from __future__ import annotations


class TextTracker:
    def __init__(self, tokenizer, stop: list[str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.holdback = max((len(s) for s in self.stop), default=1) - 1
        self.text = ""  # the decoded output so far (cut at a stop string once one is seen)
        self.emitted = 0  # characters of self.text already released as deltas
        self.stopped = False

    def update(self, token_ids: list[int], final: bool = False) -> str:
        """Decode all tokens so far; return the newly releasable text. Sets `stopped` when a stop
        string appeared (the text is cut before it)."""
        if self.stopped:
            return ""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            text = text[:-1]  # an incomplete multi-byte character: wait for the next token
        cut = self._find_stop(text)
        if cut is not None:
            text, self.stopped = text[:cut], True
        self.text = text
        safe = len(text) if (final or self.stopped) else max(self.emitted, len(text) - self.holdback)
        delta = text[self.emitted : safe]
        self.emitted = max(self.emitted, safe)
        return delta

    def flush(self) -> str:
        delta = self.text[self.emitted :]
        self.emitted = len(self.text)
        return delta

    def _find_stop(self, text: str) -> int | None:
        if not self.stop:
            return None
        start = max(0, self.emitted - self.holdback)
        found = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return min(found) if found else None
