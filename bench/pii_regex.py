"""Is PII masking linear in the length of one token? Run: .venv/bin/python bench/pii_regex.py

Adversarial single tokens for the e-mail pattern (a long run of address characters with no
valid address in it), at 20k, 200k and 2M characters: a linear scan takes ~10x longer for 10x
the text, a quadratic one ~100x (the old pattern took 0.47 s on the 20k token, ~47 s on 200k).
Prints seconds per token and the 2M/200k ratio (20k fits in the CPU caches and runs faster per
character); the machine is shared, so read the ratios.
Nothing here asserts a timing (tests/security/test_inputs.py checks the masking itself).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.core.data.cleaning.pii import mask_pii  # noqa: E402

CASES = {
    "run then @": lambda n: "a" * n + "@",
    "run then @ then bad domain": lambda n: "x@" + "a." * (n // 2) + "1",
    "dashes then @": lambda n: "a-" * (n // 2) + "@",
    "@ repeated": lambda n: "a@" * (n // 2),
}


def best_of(runs: int, text: str) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        mask_pii(text, {})
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    print(f"{'token':28} {'20k s':>9} {'200k s':>9} {'2M s':>9} {'2M/200k':>8}")
    for name, make in CASES.items():
        tiny, small, large = (best_of(3, make(n)) for n in (20_000, 200_000, 2_000_000))
        print(f"{name:28} {tiny:9.4f} {small:9.4f} {large:9.4f} {large / small:8.1f}")


if __name__ == "__main__":
    main()
