"""Serving backends: one protocol, a registry by name. "builtin" is the transformers continuous
batching engine (engine.py). "vllm" relays to vLLM's own OpenAI server, started as a child
process from its own environment (`make vllm`; vllm_backend.py). "lmdeploy" is named so a
deployment can ask for it, but this version ships no adapter for it: asking for it raises a
clear BackendUnavailable (whether or not the package is importable on this worker)."""
from __future__ import annotations

import importlib.util
from typing import Protocol, runtime_checkable

from .engine import Engine, EngineConfig, EngineRequest, RequestHandle
from .errors import BackendUnavailable


@runtime_checkable
class Backend(Protocol):
    name: str

    def load(self) -> None:
        """Load the model and get ready to serve (in the serving process, after any fork)."""

    def submit(self, request: EngineRequest) -> RequestHandle:
        """Queue a request; InvalidRequest for a bad one. The handle yields protocol events."""

    def cancel(self, request_id: str) -> None: ...

    def stats(self) -> dict:
        """running, waiting, kv_cache_used, tokens_per_s, requests_total, tokens_total."""

    def close(self) -> None: ...

    # Optional: check() raises once the backend can no longer serve (the vllm backend's server
    # child died); the replica calls it every loop iteration when the backend has it.


def _builtin(config: EngineConfig, model_dir, adapter_dir="", merge_adapter=False) -> Backend:
    return Engine(config, model_dir, adapter_dir=adapter_dir, merge_adapter=merge_adapter)


def _external(package: str, label: str):
    def create(config, model_dir, adapter_dir="", merge_adapter=False) -> Backend:
        if importlib.util.find_spec(package) is None:
            raise BackendUnavailable(f'backend "{label}": {package} is not installed on this worker')
        raise BackendUnavailable(
            f'backend "{label}": {package} is installed, but this version of Puyu Studio has no {label} adapter yet; '
            'use backend "builtin"'
        )

    return create


def _vllm(config: EngineConfig, model_dir, adapter_dir="", merge_adapter=False) -> Backend:
    from .vllm_backend import VllmBackend  # the openai client is imported only by replicas that use it

    return VllmBackend(config, model_dir, adapter_dir=adapter_dir, merge_adapter=merge_adapter)


BACKENDS = {
    "builtin": _builtin,
    "vllm": _vllm,
    "lmdeploy": _external("lmdeploy", "lmdeploy"),
}


def create_backend(name: str, config: EngineConfig, model_dir, *, adapter_dir="", merge_adapter=False) -> Backend:
    factory = BACKENDS.get(name)
    if factory is None:
        raise BackendUnavailable(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")
    return factory(config, model_dir, adapter_dir=adapter_dir, merge_adapter=merge_adapter)
