"""A stand-in for an OpenAI-compatible chat-completions server, over real HTTP on localhost:
what the LLM judge is tested against. Each request is answered by `respond`, a function of the
request's JSON body that returns a `Reply` (status, content or raw body, headers, a delay);
every request is recorded."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    content: str | None = "A"
    status: int = 200
    body: bytes | None = None  # sent as is instead of a chat completion
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    prompt_tokens: int = 100
    completion_tokens: int = 1


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class StandIn:
    base_url: str
    requests: list[Recorded]
    respond: Callable[[dict[str, Any]], Reply]


def responses_shown(body: dict[str, Any]) -> tuple[str, str]:
    """The two responses in a judge's request, in the order shown (A, then B)."""
    text = body["messages"][-1]["content"]
    found = re.search(r"Response A:\n(.*)\n\nResponse B:\n(.*)\n\nWhich response", text, re.S)
    assert found, text
    return found.group(1), found.group(2)


def prefers_shorter(body: dict[str, Any]) -> Reply:
    """A judge that follows "prefer the shorter response", wherever it is shown."""
    first, second = responses_shown(body)
    if len(first) == len(second):
        return Reply("TIE")
    return Reply("A" if len(first) < len(second) else "B")


@contextmanager
def standin_server(
    respond: Callable[[dict[str, Any]], Reply] = prefers_shorter,
) -> Iterator[StandIn]:
    recorded: list[Recorded] = []
    standin = StandIn(base_url="", requests=recorded, respond=respond)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            recorded.append(Recorded(self.path, dict(self.headers.items()), body))
            reply = standin.respond(body)
            if reply.delay_s:
                time.sleep(reply.delay_s)
            payload = reply.body
            if payload is None:
                payload = json.dumps(
                    {
                        "id": "chatcmpl-standin",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": reply.content},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": reply.prompt_tokens,
                            "completion_tokens": reply.completion_tokens,
                            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                        },
                    }
                    if reply.status == 200
                    else {"error": {"message": f"stand-in status {reply.status}"}}
                ).encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    standin.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield standin
    finally:
        server.shutdown()
        server.server_close()
