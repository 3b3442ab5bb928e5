"""Errors the engine reports per request. Each carries the HTTP status and the short code that
the replica puts in the protocol's "error" event, so the web side can answer in OpenAI's format
without knowing the engine."""
from __future__ import annotations


class InferenceError(Exception):
    status = 500
    code = "engine_error"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code

    def as_event(self) -> dict:
        return {"type": "error", "status": self.status, "code": self.code, "message": self.message}


class InvalidRequest(InferenceError):
    """The request itself is wrong (bad field, prompt too long, tools unsupported): HTTP 400."""

    status = 400
    code = "invalid_request"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


class EngineFailure(InferenceError):
    """The engine failed while running the request (the manager died and was rebuilt): HTTP 500."""

    status = 500
    code = "engine_failure"


class BackendUnavailable(InferenceError):
    """A backend named in the deployment cannot run on this worker."""

    status = 503
    code = "backend_unavailable"
