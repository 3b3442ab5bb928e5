"""The cleaning job's spec: every stage switch and threshold, typed and range-checked."""
from __future__ import annotations

from dataclasses import dataclass

from ...specs import SpecError, require_range, short
from .language import LANGID_CODES


@dataclass
class CleaningSpec:
    normalize: bool = True               # Unicode NFKC, whitespace collapse, strip control chars (keep \n \t)
    languages: str = ""                  # comma-separated langid codes to keep, e.g. "en,zh"; "" = keep all
    quality: bool = True
    min_chars: int = 20
    max_chars: int = 100_000
    max_symbol_ratio: float = 0.1        # Gopher: '#' and '...' per word (each)
    max_digit_ratio: float = 0.3
    max_duplicate_line_fraction: float = 0.3
    max_top_ngram_fraction: float = 0.2  # Gopher: characters in the most frequent word 2-gram
    require_stop_words: int = 2          # Gopher: distinct English stop words (English documents only)
    dedup_exact: bool = True             # hash of the lower-cased, whitespace-collapsed text
    dedup_near: bool = True
    near_threshold: float = 0.8          # MinHash Jaccard of character 5-gram shingles
    num_perm: int = 128
    pii: bool = True                     # e-mail, phone, Chinese resident ID, payment card, IPv4/IPv6
    decontaminate: bool = True
    decontam_ngram: int = 13             # words; Chinese characters count as words

    def validate(self) -> None:
        codes = self.language_codes()
        unknown = sorted(codes - LANGID_CODES)
        if unknown:
            raise SpecError("languages", f"unknown language code {short(unknown[0])} (langid codes such as en, zh, fr)")
        require_range("min_chars", self.min_chars, 0, 10_000_000)
        require_range("max_chars", self.max_chars, 1, 100_000_000)
        if self.max_chars < self.min_chars:
            raise SpecError("max_chars", f"must be at least min_chars ({self.min_chars}), got {self.max_chars}")
        for name in ("max_symbol_ratio", "max_digit_ratio", "max_duplicate_line_fraction", "max_top_ngram_fraction"):
            require_range(name, getattr(self, name), 0.0, 1.0)
        require_range("require_stop_words", self.require_stop_words, 0, 8)  # Gopher's list has 8 words
        require_range("near_threshold", self.near_threshold, 0.1, 1.0)
        require_range("num_perm", self.num_perm, 16, 1024)
        require_range("decontam_ngram", self.decontam_ngram, 3, 200)

    def language_codes(self) -> frozenset[str]:
        return frozenset(code.strip().lower() for code in self.languages.split(",") if code.strip())
