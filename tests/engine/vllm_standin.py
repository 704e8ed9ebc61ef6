"""A stand-in for `vllm serve`: the part of vLLM's OpenAI-compatible HTTP API that Prefloop
speaks (GET /v1/models, POST /v1/load_lora_adapter, POST /v1/completions with token-id
prompts, n, seed and return_token_ids), answering as vLLM does, errors included. Its samples
are a function of the model, the prompt's tokens, the seed and the sample's number."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class VllmStandIn:
    def __init__(self, base: str = "base-model", *, eos: int = 2) -> None:
        self.base = base
        self.eos = eos
        self.adapters: dict[str, str] = {}  # name -> path
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, body)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> VllmStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str) -> None:
                # vLLM's error body (vllm/entrypoints/openai/protocol.py ErrorResponse)
                self._send(
                    status,
                    {"error": {"message": message, "type": "BadRequestError", "code": status}},
                )

            def do_GET(self) -> None:
                standin.requests.append(("GET", self.path, None))
                if self.path != "/v1/models":
                    return self._error(404, "Not Found")
                models = [
                    {"id": standin.base, "object": "model", "root": standin.base, "parent": None}
                ]
                models += [
                    {"id": name, "object": "model", "root": path, "parent": standin.base}
                    for name, path in standin.adapters.items()
                ]
                self._send(200, {"object": "list", "data": models})
                return None

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                standin.requests.append(("POST", self.path, body))
                if self.path == "/v1/load_lora_adapter":
                    name, path = body["lora_name"], body["lora_path"]
                    if name in standin.adapters:
                        return self._error(
                            400, f"The lora adapter '{name}' has already been loaded."
                        )
                    if not (Path(path) / "adapter_config.json").is_file():
                        return self._error(400, f"No adapter found for {path}")
                    standin.adapters[name] = path
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if self.path == "/v1/completions":
                    return self._completions(body)
                return self._error(404, "Not Found")

            def _completions(self, body: dict[str, Any]) -> None:
                model = body["model"]
                if model != standin.base and model not in standin.adapters:
                    return self._error(404, f"The model `{model}` does not exist.")
                prompts = body["prompt"]
                if not (isinstance(prompts, list) and all(isinstance(p, list) for p in prompts)):
                    return self._error(400, "prompt must be a list of token id lists here")
                n, max_tokens = int(body.get("n", 1)), int(body["max_tokens"])
                choices = []
                for p, ids in enumerate(prompts):
                    for k in range(n):
                        digest = hashlib.sha256(
                            json.dumps([model, ids, body.get("seed"), k]).encode()
                        ).digest()
                        length = 1 + digest[0] % (max_tokens + 2)  # some run past the limit
                        cut = length > max_tokens
                        tokens = [10 + b % 50 for b in digest[1 : 1 + min(length, max_tokens)]]
                        if not cut:
                            tokens = [*tokens[: length - 1], standin.eos]  # stopped on EOS
                        choice = {
                            "index": p * n + k,
                            "text": f" sample {k} of {model} for {len(ids)} tokens "
                            f"seed {body.get('seed')} ",
                            "finish_reason": "length" if cut else "stop",
                            "stop_reason": None,
                        }
                        if body.get("return_token_ids"):
                            choice["token_ids"] = tokens
                            choice["prompt_token_ids"] = ids
                        choices.append(choice)
                choices.reverse()  # the API does not promise order; the index does
                self._send(200, {"object": "text_completion", "model": model, "choices": choices})
                return None

        return Handler
