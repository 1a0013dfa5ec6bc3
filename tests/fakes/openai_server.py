"""A fake OpenAI API on a real local HTTP server: Chat Completions and Responses, in OpenAI's wire format.

    with OpenAIFake() as fake:                      # answers every request with `fake.answer`
        client = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="test-token")

``answer`` is a dict (sent as the JSON text of the reply), a str (sent verbatim: use it for invalid
JSON), or a callable taking the request body and returning either. ``delay`` makes every answer wait
that many seconds first (timeouts). ``fail(...)``/``rate_limit(...)`` from ``FakeServer`` inject
OpenAI error envelopes. Requests are recorded in ``requests``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.server import FakeServer, bearer_token

Answer = dict | str | Callable[[dict], dict | str]


class OpenAIFake(FakeServer):
    """``POST /v1/chat/completions`` and ``POST /v1/responses``."""

    def __init__(self, tokens: tuple[str, ...] = ("test-token",), answer: Answer | None = None) -> None:
        self.answer: Answer = answer if answer is not None else {"ok": True}
        self.delay = 0.0
        self.delayed_answers = 0  # answers that waited out ``delay`` (a client that timed out never gets one)
        self._seq = itertools.count(1)
        super().__init__(tokens)

    def routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/responses", self.responses, methods=["POST"]),
        ]

    def error(self, status: int, code: str, message: str) -> Response:
        kind = {401: "invalid_request_error", 429: "rate_limit_exceeded"}.get(status, "server_error")
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return JSONResponse(body, status_code=status)

    async def _prepare(self, request: Request) -> tuple[dict, str] | Response:
        if bearer_token(request) not in self.tokens:
            return self.error(401, "invalid_api_key", "Incorrect API key provided.")
        body = json.loads(await request.body())
        if not body.get("model"):
            return self.error(400, "missing_model", "you must provide a model parameter")
        if self.delay:
            await asyncio.sleep(self.delay)
            self.delayed_answers += 1
        answer = self.answer(body) if callable(self.answer) else self.answer
        return body, answer if isinstance(answer, str) else json.dumps(answer)

    async def chat(self, request: Request) -> Response:
        prepared = await self._prepare(request)
        if isinstance(prepared, Response):
            return prepared
        body, text = prepared
        n = next(self._seq)
        return JSONResponse({
            "id": f"chatcmpl-fake{n:06d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": "fp_fake",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }],
            "usage": _usage(json.dumps(body.get("messages")), text, ("prompt_tokens", "completion_tokens")),
        })

    async def responses(self, request: Request) -> Response:
        prepared = await self._prepare(request)
        if isinstance(prepared, Response):
            return prepared
        body, text = prepared
        n = next(self._seq)
        return JSONResponse({
            "id": f"resp_fake{n:06d}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "error": None,
            "incomplete_details": None,
            "model": body["model"],
            "output": [{
                "type": "message",
                "id": f"msg_fake{n:06d}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "text": body.get("text") or {"format": {"type": "text"}},
            "usage": _usage(json.dumps(body.get("input")), text, ("input_tokens", "output_tokens")),
        })


def _usage(prompt: str, completion: str, names: tuple[str, str]) -> dict[str, Any]:
    """Token counts, roughly four characters a token."""
    p, c = max(1, len(prompt) // 4), max(1, len(completion) // 4)
    usage: dict[str, Any] = {names[0]: p, names[1]: c, "total_tokens": p + c}
    if names[0] == "input_tokens":
        usage["input_tokens_details"] = {"cached_tokens": 0}
        usage["output_tokens_details"] = {"reasoning_tokens": 0}
    return usage
