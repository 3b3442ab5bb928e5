"""Stage 7: drop records that share an n-gram with a selected evaluation set (GPT-3 style
13-gram overlap).

N-grams are over the CJK-aware tokens of `text.tokens` after NFKC and lower-casing: n English
words, or n Chinese characters, or a mix. Each n-gram is kept as a 64-bit hash in one sorted
numpy array for all evaluation sets (8 bytes an n-gram; GSM8K's test split is ~0.2M n-grams).
An evaluation item shorter than n tokens has no n-gram and cannot match; the report counts them.
"""
from __future__ import annotations

import json
from itertools import chain
from pathlib import Path

import numpy as np

from ..schema import CANONICAL_FORMATS, record_text
from .dedup import fmix64
from .text import words_of

_MULT = np.random.default_rng(0xDEC0).integers(1, 1 << 63, size=256, dtype=np.uint64) | np.uint64(1)


def ngram_hashes(word_lists: list[list[str]], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """64-bit hashes of the n-grams of every token list, computed over the whole batch at once:
    (hashes, owning list, start position inside the owning list)."""
    lengths = np.fromiter(map(len, word_lists), dtype=np.int64, count=len(word_lists))
    total = int(lengths.sum())
    m = total - n + 1
    if m <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros(0, dtype=np.uint64), empty, empty
    # Python's str hash is per process; the index and the documents share the process
    th = np.fromiter(map(hash, chain.from_iterable(word_lists)), dtype=np.int64, count=total).view(np.uint64)
    with np.errstate(over="ignore"):
        h = th[:m] * _MULT[0]
        for j in range(1, n):
            h += th[j:j + m] * _MULT[j % len(_MULT)]
    starts = np.cumsum(lengths) - lengths
    owner = np.repeat(np.arange(len(word_lists)), lengths)[:m]
    offset = np.arange(m) - starts[owner]
    valid = offset + n <= lengths[owner]  # the n-gram lies inside one list
    return fmix64(h[valid]), owner[valid], offset[valid]


class EvalIndex:
    """The n-grams of the selected evaluation sets."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.names: list[str] = []
        self.ngrams: dict[str, int] = {}
        self.items: dict[str, int] = {}
        self.short_items: dict[str, int] = {}
        self._parts: list[np.ndarray] = []
        self._owners: list[np.ndarray] = []
        self.hashes = np.zeros(0, dtype=np.uint64)
        self.owner = np.zeros(0, dtype=np.int32)

    def add(self, name: str, texts, batch: int = 512) -> None:
        set_id = len(self.names)
        self.names.append(name)
        found, items, short = [], 0, 0
        buffer: list[list[str]] = []

        def flush() -> None:
            nonlocal short
            h, owner, _ = ngram_hashes(buffer, self.n)
            found.append(h)
            short += len(buffer) - len(np.unique(owner))
            buffer.clear()

        for text in texts:
            items += 1
            buffer.append(words_of(text))
            if len(buffer) == batch:
                flush()
        if buffer:
            flush()
        h = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.uint64)
        self._parts.append(h)
        self._owners.append(np.full(len(h), set_id, dtype=np.int32))
        self.ngrams[name], self.items[name], self.short_items[name] = len(h), items, short

    def freeze(self) -> None:
        if not self._parts:
            return
        hashes = np.concatenate(self._parts)
        owner = np.concatenate(self._owners)
        order = np.argsort(hashes, kind="stable")
        self.hashes, self.owner = hashes[order], owner[order]

    def match(self, word_lists: list[list[str]]) -> list[tuple[str, str] | None]:
        """For each token list: (evaluation set name, the shared n-gram) for its first n-gram
        found in an evaluation set, or None."""
        out: list[tuple[str, str] | None] = [None] * len(word_lists)
        if not self.hashes.size:
            return out
        h, owner, offset = ngram_hashes(word_lists, self.n)
        pos = np.searchsorted(self.hashes, h)
        pos[pos == len(self.hashes)] = 0
        hits = np.flatnonzero(self.hashes[pos] == h)
        if hits.size:
            docs, first = np.unique(owner[hits], return_index=True)  # hits are in order
            for doc, hit in zip(docs.tolist(), hits[first].tolist()):
                words = word_lists[doc]
                start = int(offset[hit])
                out[doc] = (self.names[int(self.owner[pos[hit]])], " ".join(words[start:start + self.n]))
        return out


def load_eval_index(paths, canonicals, n: int, names=(), on_file=None) -> EvalIndex:
    """Index the canonical JSONL evaluation sets `paths` (formats `canonicals`). Each set is named
    `names[i]` when given, else after its file (a repeated name gets "-2", "-3", ...)."""
    paths, canonicals, names = list(paths), list(canonicals), list(names)
    if len(paths) != len(canonicals):
        raise ValueError(f"{len(paths)} evaluation sets but {len(canonicals)} canonical formats")
    if names and len(names) != len(paths):
        raise ValueError(f"{len(paths)} evaluation sets but {len(names)} names")
    unknown = [fmt for fmt in canonicals if fmt not in CANONICAL_FORMATS]
    if unknown:
        raise ValueError(f"unknown canonical format {unknown[0]!r} for an evaluation set")
    index = EvalIndex(n)
    for i, (path, fmt) in enumerate(zip(paths, canonicals)):
        path = Path(path)
        base = str(names[i]) if names else (path.name.split(".")[0] or path.name)
        name, k = base, 1
        while name in index.ngrams:
            k += 1
            name = f"{base}-{k}"
        index.add(name, _texts(path, fmt))
        if on_file:
            on_file(i + 1, len(paths))
    index.freeze()
    return index


def _texts(path: Path, fmt: str):
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield record_text(json.loads(line), fmt)
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"evaluation set {path.name} line {number}: not a canonical "
                                     f"{fmt} record ({exc})") from exc
