"""A tiny OpenAI-compatible HTTP server for the endpoint tests: /v1/chat/completions and
/v1/completions answered by a script, every request recorded (path, headers, JSON body)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chat_reply(content: str | None, tool_calls: list | None = None) -> dict:
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "fake",
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}


def completion_reply(text: str) -> dict:
    return {"id": "cmpl-1", "object": "text_completion", "model": "fake",
            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]}


def default_script(path: str, body: dict):
    if path.endswith("/chat/completions"):
        return 200, chat_reply("Hello from chat")
    return 200, completion_reply("Hello from completion")


class FakeOpenAI:
    """`with FakeOpenAI(script) as server:` serves on 127.0.0.1; `server.base_url` ends in /v1.
    `script(path, body) -> (status, dict | bytes[, headers])`."""

    def __init__(self, script=default_script) -> None:
        self.script, self.requests = script, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, payload, *extra = outer.script(self.path, body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in (extra[0] if extra else {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
