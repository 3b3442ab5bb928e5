"""Stages 4 and 5: exact and near deduplication; the first occurrence is kept.

Exact: a 64-bit BLAKE2b of the dedup view (NFKC, lower-cased, whitespace collapsed) of the record text.

Near: MinHash over character shingles of the dedup view, then LSH banding for candidates and
a signature check for the decision.

* Shingles are characters, not words, because Chinese has no spaces. A shingle is 5 columns
  wide, a CJK character counting two columns as on a terminal: 5 Latin characters (about one
  English word) or 3 Chinese characters (1–2 Chinese words). One width for both does not work:
  an edit destroys every shingle that covers it, and a Chinese word is ~1.7 characters against
  ~6 for English, so 5-character shingles make Chinese near-copies look far less similar (BELLE
  answers with 3% of the characters edited: 5-gram Jaccard 0.77, 3-gram 0.85; unrelated BELLE
  pairs stay below 0.1 with 3-grams). With ~5% of the words edited an English near-duplicate
  keeps a Jaccard of 0.86–0.93 (the near-dup quality test prints it); distinct documents < 0.1.
* Signatures use datasketch's "affine32" MinHash scheme (its permutation parameters
  `MinHash(num_perm, seed).permutations`: h -> a*h + b mod 2^32 after mixing; `minhash()` wraps
  a signature as a datasketch MinHash for `jaccard()` or datasketch's LSH), but the shingles
  are hashed with numpy (a polynomial over the code points, then a 64-bit finalizer) for a
  whole batch at once instead of one SHA-1 call per shingle in Python: measured on the bench's
  documents (~400 shingles), `MinHash.bulk` takes 0.75 ms a document and this 0.085 ms.
* Candidates: `bands(threshold, num_perm)` bands of `rows` values, chosen so that a pair at the
  threshold becomes a candidate with probability >= 0.95 (datasketch's own optimum for 0.8 and
  128 permutations, 9 x 13, finds only 69% of pairs at Jaccard 0.85). A candidate is a duplicate
  when the signatures agree on >= threshold of the permutations (the MinHash Jaccard estimate).
* The index is a numpy open-addressing table (32-bit band key -> first kept document), 8 bytes
  a slot at most half full, plus the kept documents' signatures truncated to 16 bits (b-bit
  MinHash: the estimate rises by 2^-16 at most): 0.5–0.9 KB a kept document with the defaults
  (18 bands, 128 permutations), so ~0.5–0.9 GB for a million. datasketch's `MinHashLSH` keeps
  a Python bytes key and a set per bucket and a list of keys per document: measured with 50,000
  signatures (tracemalloc), 6.2 KB a document with 18 x 7 bands (3.4 KB with 9 x 13), i.e.
  ~6 GB for a million, against 0.67 KB here.
"""
from __future__ import annotations

import hashlib

import numpy as np

SHINGLE = 5
_MIX1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX2 = np.uint64(0xC4CEB9FE1A85EC53)
# Odd 64-bit multipliers for the shingle polynomial (fixed: signatures are reproducible).
_SHINGLE_MULT = np.array(
    [0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93,
     0xA0761D6478BD642F, 0xE7037ED1A0B428DB, 0x8EBC6AF09C88C6E3, 0x589965CC75374CC3],
    dtype=np.uint64,
)
# code point ranges two columns wide (CJK): kana, CJK extension A, unified ideographs, Hangul
# syllables, compatibility ideographs, supplementary ideographs
_WIDE = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xF900, 0xFAFF),
         (0x20000, 0x2FA1F))
_WIDE_FROM = min(low for low, _ in _WIDE)
_BLOCK = 8192  # shingles per (num_perm x block) work matrix: 4 MiB with 128 permutations


def exact_key(text: str) -> int:
    """64-bit hash of the dedup view (NFKC, lower case, collapsed whitespace)."""
    from .text import dedup_view

    view = dedup_view(text)
    return int.from_bytes(hashlib.blake2b(view.encode("utf-8"), digest_size=8).digest(), "little")


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(33))
        h = h * _MIX1
        h = h ^ (h >> np.uint64(33))
        h = h * _MIX2
        return h ^ (h >> np.uint64(33))


def bands(threshold: float, num_perm: int, target: float = 0.95) -> tuple[int, int]:
    """(bands, rows): the most rows a band (fewest chance candidates) such that a pair with
    Jaccard == threshold shares at least one band with probability >= target."""
    for rows in range(num_perm // 2, 0, -1):
        n_bands = num_perm // rows
        if 1 - (1 - threshold ** rows) ** n_bands >= target:
            return n_bands, rows
    return num_perm, 1


class MinHasher:
    """Batch MinHash signatures of character shingles, with datasketch's permutations."""

    def __init__(self, num_perm: int = 128, seed: int = 1, shingle: int = SHINGLE) -> None:
        # datasketch 2.0's affine32 permutation parameters, generated the way it does
        # (MinHash._init_permutations; a test checks they are equal) because `import datasketch`
        # costs ~1 s here (it imports scipy.integrate) and these two arrays are all we need.
        gen = np.random.RandomState(seed)
        self.a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        self.b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
        self.num_perm = num_perm
        self.seed = seed
        self.shingle = shingle

    def shingle_hashes(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """32-bit hashes of every shingle of every text, and how many belong to each text.

        A shingle is the shortest run of characters starting at a position that is `shingle`
        columns wide, a CJK character (Han, kana, Hangul) being two columns as on a terminal:
        5 Latin characters, 3 Chinese characters, or a mix. A text narrower than that is one
        shingle."""
        k = self.shingle
        n_texts = len(texts)
        pad = np.zeros(k - 1, dtype=np.uint32)
        parts = []
        lengths = np.empty(n_texts, dtype=np.int64)
        for i, text in enumerate(texts):
            cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            lengths[i] = len(cps)
            parts += (cps, pad)
        cps = np.concatenate(parts) if parts else np.zeros(0, np.uint32)
        width = np.ones(len(cps), dtype=np.int64)
        if len(cps) and cps.max() >= _WIDE_FROM:
            for low, high in _WIDE:
                width[(cps >= low) & (cps <= high)] = 2
        starts = np.cumsum(lengths + k - 1) - (lengths + k - 1)
        ends = starts + lengths
        owner = np.repeat(np.arange(n_texts), lengths)
        pos = np.arange(int(lengths.sum())) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        if (width == 1).all():
            size = np.full(len(pos), k, dtype=np.int64)
        else:  # characters needed to cover k columns from each position
            cum = np.concatenate(([0], np.cumsum(width)))
            stop = np.searchsorted(cum, cum[pos] + k)
            size = stop - pos
        fits = pos + size <= ends[owner]
        pos, owner, size = pos[fits], owner[fits], size[fits]
        narrow = np.flatnonzero(np.bincount(owner, minlength=n_texts) == 0)
        if narrow.size:  # texts narrower than one shingle: the whole text (maybe empty)
            pos = np.concatenate([pos, starts[narrow]])
            owner = np.concatenate([owner, narrow])
            size = np.concatenate([size, lengths[narrow]])
            order = np.argsort(owner, kind="stable")
            pos, owner, size = pos[order], owner[order], size[order]
        cps = cps.astype(np.uint64)
        uniform = bool((size == k).all())
        with np.errstate(over="ignore"):
            h = np.zeros(len(pos), dtype=np.uint64)
            for j in range(k):
                chars = cps[pos + j] if uniform else np.where(size > j, cps[np.minimum(pos + j, len(cps) - 1)], 0)
                h += chars * _SHINGLE_MULT[j % len(_SHINGLE_MULT)]
        counts = np.bincount(owner, minlength=n_texts)
        return (fmix64(h) >> np.uint64(32)).astype(np.uint32), counts

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash values, as datasketch's affine32 MinHash would
        hold after `update_batch` with these shingle hashes."""
        hv, counts = self.shingle_hashes(texts)
        sig = np.full((len(texts), self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
        owner = np.repeat(np.arange(len(texts)), counts)
        a, b = self.a[:, None], self.b[:, None]
        # permutations x shingles, in blocks that stay in cache; min over each text's columns
        work = np.empty((self.num_perm, min(_BLOCK, len(hv))), dtype=np.uint32)
        for start in range(0, len(hv), _BLOCK):
            block = hv[None, start:start + _BLOCK]
            who = owner[start:start + _BLOCK]
            permuted = work[:, : block.shape[1]]
            np.multiply(a, block, out=permuted)  # wraps mod 2^32
            permuted += b
            bounds = np.flatnonzero(np.r_[True, who[1:] != who[:-1]])
            mins = np.minimum.reduceat(permuted, bounds, axis=1)
            rows = who[bounds]
            sig[rows] = np.minimum(sig[rows], mins.T)
        return sig

    def minhash(self, signature: np.ndarray):
        """A datasketch MinHash holding `signature` (for jaccard() and datasketch's LSH)."""
        from datasketch import MinHash

        return MinHash(seed=self.seed, hashvalues=signature, permutations=np.array([self.a, self.b]),
                       scheme="affine32")


class BandTable:
    """Open-addressing (linear probing) hash table uint32 band key -> int32 value, vectorized:
    the first value stored under a key stays (later inserts of the same key are ignored). Key 0
    marks an empty slot (band keys are made non-zero). 8 bytes a slot, at most half full.

    32-bit band keys can collide (about one lookup in 2^32 / probe length finds another key's
    document); that only adds a candidate, which the signature check then rejects."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        size = 1 << max(4, (2 * capacity - 1).bit_length())
        self.keys = np.zeros(size, dtype=np.uint32)
        self.values = np.zeros(size, dtype=np.int32)
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The value stored under each key, -1 where there is none."""
        mask = len(self.keys) - 1
        out = np.full(len(keys), -1, dtype=np.int64)
        idx = np.arange(len(keys))
        pos = keys.astype(np.int64) & mask
        while idx.size:
            found = self.keys[pos]
            hit = found == keys[idx]
            out[idx[hit]] = self.values[pos[hit]]
            go_on = ~hit & (found != 0)
            idx, pos = idx[go_on], (pos[go_on] + 1) & mask
        return out

    def insert(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Store values under keys that are not present yet; among equal keys in one call the
        first wins."""
        keys, first = np.unique(keys, return_index=True)
        order = np.argsort(first, kind="stable")
        keys, values = keys[order], values[first[order]]
        if 2 * (self.count + len(keys)) > len(self.keys):
            self._grow(self.count + len(keys))
        mask = len(self.keys) - 1
        idx = np.arange(len(keys))
        pos = keys.astype(np.int64) & mask
        while idx.size:
            found = self.keys[pos]
            present = found == keys[idx]
            empty = found == 0
            # one winner per empty slot (the earliest key in the batch); losers probe on
            slots, winner = np.unique(pos[empty], return_index=True)
            win = np.flatnonzero(empty)[winner]
            self.keys[slots] = keys[idx[win]]
            self.values[slots] = values[idx[win]]
            self.count += len(win)
            done = present.copy()
            done[win] = True
            advance = ~done & ~empty  # occupied by another key: next slot; empty losers retry
            pos = np.where(advance, (pos + 1) & mask, pos)
            idx, pos = idx[~done], pos[~done]

    def _grow(self, needed: int) -> None:
        old_keys, old_values = self.keys, self.values
        used = old_keys != 0
        size = len(old_keys)
        while 2 * needed > size:
            size *= 2
        self.keys = np.zeros(size, dtype=np.uint32)
        self.values = np.zeros(size, dtype=np.int32)
        self.count = 0
        if used.any():
            self.insert(old_keys[used], old_values[used])


class NearDuplicateIndex:
    """Streaming near-duplicate detection: feed documents in order with `check`, which says for
    each one whether it duplicates an earlier kept document (and which), and keeps it otherwise."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, seed: int = 1) -> None:
        self.threshold = threshold
        self.hasher = MinHasher(num_perm, seed)
        self.n_bands, self.rows = bands(threshold, num_perm)
        rng = np.random.default_rng(0x5EED)
        self._band_mult = rng.integers(1, 1 << 63, size=(self.n_bands, self.rows), dtype=np.uint64) | np.uint64(1)
        self.table = BandTable()
        self.sigs = np.zeros((1024, num_perm), dtype=np.uint16)
        self.kept = 0
        self.needed = int(np.ceil(threshold * num_perm - 1e-9))  # agreeing permutations for a duplicate

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        used = sigs[:, : self.n_bands * self.rows].astype(np.uint64).reshape(len(sigs), self.n_bands, self.rows)
        with np.errstate(over="ignore"):
            keys = fmix64((used * self._band_mult[None]).sum(axis=2, dtype=np.uint64)
                          + np.arange(self.n_bands, dtype=np.uint64))
        keys = (keys >> np.uint64(32)).astype(np.uint32)
        keys[keys == 0] = 1
        return keys

    def check(self, texts: list[str]) -> list[tuple[int, float] | None]:
        """For each text in order: None when it is kept (and indexed), or (index of the kept
        document it duplicates, estimated Jaccard) when it is a near-duplicate."""
        n = len(texts)
        if not n:
            return []
        sigs = self.hasher.signatures(texts)
        keys = self.band_keys(sigs)
        short = (sigs & 0xFFFF).astype(np.uint16)
        earlier = self.table.lookup(keys.ravel()).reshape(keys.shape)
        _, inverse, counts = np.unique(keys.ravel(), return_inverse=True, return_counts=True)
        shares = (counts[inverse] > 1).reshape(keys.shape).any(axis=1)  # a band key with another text here
        kept = np.ones(n, dtype=bool)
        dup_of = np.full(n, -1, dtype=np.int64)  # >= 0: a kept id; < -1: -(row + 2) of a text in this batch
        agreement = np.zeros(n)
        # Most texts share no band with anything: kept without a look. The rest go in order.
        local: dict[int, int] = {}  # band key -> first kept row of this batch
        for i in np.flatnonzero(shares | (earlier >= 0).any(axis=1)).tolist():
            best_agree, best = -1, -1
            cand = np.unique(earlier[i][earlier[i] >= 0])
            if cand.size:
                agree = (self.sigs[cand] == short[i]).sum(axis=1)
                j = int(agree.argmax())
                best_agree, best = int(agree[j]), int(cand[j])
            row_keys = keys[i].tolist()
            rows = {local[k] for k in row_keys if k in local}
            if rows:
                rows = np.fromiter(rows, dtype=np.int64, count=len(rows))
                agree = (short[rows] == short[i]).sum(axis=1)
                j = int(agree.argmax())
                if agree[j] > best_agree:
                    best_agree, best = int(agree[j]), -(int(rows[j]) + 2)
            if best_agree >= self.needed:
                kept[i], dup_of[i], agreement[i] = False, best, best_agree / self.hasher.num_perm
            elif shares[i]:
                for k in row_keys:
                    local.setdefault(k, i)
        rows = np.flatnonzero(kept)
        ids = self._append(short[rows])
        id_of_row = np.full(n, -1, dtype=np.int64)
        id_of_row[rows] = ids
        self.table.insert(keys[rows].ravel(), np.repeat(ids, self.n_bands))
        results: list[tuple[int, float] | None] = [None] * n
        for i in np.flatnonzero(~kept).tolist():
            target = int(dup_of[i])
            results[i] = (target if target >= 0 else int(id_of_row[-target - 2]), float(agreement[i]))
        return results

    def _append(self, short_sigs: np.ndarray) -> np.ndarray:
        """Store signatures of newly kept documents; returns their ids."""
        needed = self.kept + len(short_sigs)
        if needed > len(self.sigs):
            size = len(self.sigs)
            while size < needed:
                size *= 2
            grown = np.zeros((size, self.sigs.shape[1]), dtype=np.uint16)
            grown[: self.kept] = self.sigs[: self.kept]
            self.sigs = grown
        self.sigs[self.kept:needed] = short_sigs
        ids = np.arange(self.kept, needed, dtype=np.int64)
        self.kept = needed
        return ids

    def memory_bytes(self) -> int:
        return self.table.keys.nbytes + self.table.values.nbytes + self.sigs.nbytes


def near_duplicate_pairs(texts: list[str], threshold: float = 0.8, num_perm: int = 128,
                         batch: int = 512) -> list[tuple[int, int, float]]:
    """(kept index, duplicate index, estimated Jaccard) for every text that the near-dup stage
    would drop as a duplicate of an earlier kept one, over the dedup view of `texts`."""
    from .text import dedup_view

    index = NearDuplicateIndex(threshold, num_perm)
    kept_to_text: list[int] = []
    pairs = []
    for start in range(0, len(texts), batch):
        views = [dedup_view(t) for t in texts[start:start + batch]]
        for offset, result in enumerate(index.check(views)):
            if result is None:
                kept_to_text.append(start + offset)
            else:
                pairs.append((kept_to_text[result[0]], start + offset, result[1]))
    return pairs


def _is_wide(ch: str) -> bool:
    code = ord(ch)
    return code >= _WIDE_FROM and any(low <= code <= high for low, high in _WIDE)


def shingles(text: str, k: int = SHINGLE) -> list[str]:
    """The shingles `MinHasher` hashes, in plain Python (reference for tests and diagnostics)."""
    out = []
    for i in range(len(text)):
        width, j = 0, i
        while j < len(text) and width < k:
            width += 2 if _is_wide(text[j]) else 1
            j += 1
        if width >= k:
            out.append(text[i:j])
    return out or [text]


def shingle_jaccard(a: str, b: str, k: int = SHINGLE) -> float:
    """Exact Jaccard similarity of the shingle sets of two texts."""
    sa, sb = set(shingles(a, k)), set(shingles(b, k))
    return len(sa & sb) / len(sa | sb)
