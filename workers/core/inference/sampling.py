"""Per-request sampling parameters: validation, and how each request maps onto the continuous
batching manager or onto the exclusive lane.

What the transformers 5.24 manager can vary per request (verified): temperature, top-k and
top-p, and only with `per_request_processors=True` plus non-default values in the manager's own
generation config (otherwise the warpers are never built). `do_sample` is global to the manager,
so greedy requests are sent as top_k=1 (argmax; token-identical to `generate`, checked in the
tests). temperature=0 would kill the manager's thread (division by zero inside the warper), so it
is mapped to greedy here. Repetition penalty and seed cannot vary per request: such requests run
on the exclusive lane (see exclusive.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InvalidRequest

# The manager is built with these (non-default, so its warpers exist); every request overrides them.
MANAGER_SAMPLING_DEFAULTS = {"temperature": 0.7, "top_k": 50, "top_p": 0.9}
MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 64


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def needs_exclusive_lane(self) -> bool:
        """Repetition penalty always changes the logits; a seed only matters when sampling."""
        return self.repetition_penalty != 1.0 or (self.seed is not None and not self.greedy)

    def manager_kwargs(self, vocab_size: int) -> dict:
        """The per-request logits-processor kwargs for `add_request` (typed as the manager checks
        them: temperature/top_p float, top_k int)."""
        if self.greedy:
            return {"temperature": 1.0, "top_k": 1, "top_p": 1.0}
        top_k = self.top_k if self.top_k > 0 else vocab_size
        return {"temperature": float(self.temperature), "top_k": int(top_k), "top_p": float(self.top_p)}


def logits_processors(sampling: SamplingParams):
    """The logits processors `generate` builds for these settings, in its order: the repetition
    penalty, then (when sampling) temperature, top-k and top-p. Shared by the exclusive lane and the
    plain runner (plain.py), so a request is shaped the same on every path."""
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = []
    if sampling.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
    if not sampling.greedy:
        if sampling.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_k > 0:
            processors.append(TopKLogitsWarper(sampling.top_k))
        if sampling.top_p < 1.0:
            processors.append(TopPLogitsWarper(sampling.top_p))
    return LogitsProcessorList(processors)


def sampling_from_request(payload: dict, *, default_max_tokens: int, max_tokens_cap: int) -> SamplingParams:
    """Build and validate SamplingParams from a protocol request (missing fields take defaults)."""

    def number(name, default, low, high, kind=float):
        value = payload.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequest(name, f"must be a number, got {value!r}")
        if kind is int and int(value) != value:
            raise InvalidRequest(name, f"must be an integer, got {value!r}")
        if not low <= value <= high:
            raise InvalidRequest(name, f"must be between {low} and {high}, got {value}")
        return kind(value)

    max_tokens = number("max_tokens", default_max_tokens, 1, 1 << 20, int)
    if max_tokens > max_tokens_cap:
        raise InvalidRequest("max_tokens", f"must be at most {max_tokens_cap} on this deployment, got {max_tokens}")
    stop = payload.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise InvalidRequest("stop", "must be a non-empty string or a list of non-empty strings")
    if len(stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARS for s in stop):
        raise InvalidRequest("stop", f"at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_CHARS} characters")
    seed = payload.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidRequest("seed", f"must be an integer or null, got {seed!r}")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=number("temperature", 1.0, 0.0, 2.0),
        top_p=number("top_p", 1.0, 1e-6, 1.0),
        top_k=number("top_k", 0, 0, 1 << 20, int),
        repetition_penalty=number("repetition_penalty", 1.0, 0.01, 10.0),
        stop=list(stop),
        seed=seed,
    )
