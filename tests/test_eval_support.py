"""A scripted OpenAI-compatible /v1/chat/completions endpoint on a real port, for the eval tests that need
behaviour no real server shows on demand (429s, 5xx, slow replies, a fixed answer per question).
The official SDK talks to it over real HTTP exactly as it talks to tunery or OpenAI."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass
class Script:
    answers: dict = field(default_factory=dict)
    """{model: {question: answer}}; a model listed here answers unknown questions with `fallback`."""
    fallback: str = "I don't know."
    failures: dict = field(default_factory=dict)
    """{model: [status or (status, code), ...]}: for each question, these come first, then the answer."""
    slow_first: dict = field(default_factory=dict)
    """{model: seconds}: the first attempt of each question sleeps this long (to trigger client timeouts)."""
    new_style: set = field(default_factory=set)
    """Models that reject max_tokens and want max_completion_tokens (as OpenAI's reasoning models do)."""
    delay: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    calls: list = field(default_factory=list)
    _attempts: dict = field(default_factory=dict)


def make_app(script: Script):
    app = FastAPI()

    def error(status: int, message: str, code: str | None = None, headers=None):
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                       "code": code}}, status_code=status, headers=headers)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "test"}
                                           for m in script.answers]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        model = body["model"]
        question = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        key = (model, question)
        n = script._attempts[key] = script._attempts.get(key, 0) + 1
        script.calls.append({"model": model, "question": question, "attempt": n,
                             "max_tokens": body.get("max_tokens", body.get("max_completion_tokens")), "temperature": body.get("temperature")})
        script.in_flight += 1
        script.max_in_flight = max(script.max_in_flight, script.in_flight)
        try:
            if model in script.slow_first and n == 1:
                await asyncio.sleep(script.slow_first[model])
            if script.delay:
                await asyncio.sleep(script.delay)
            if model not in script.answers:
                return error(404, f"The model '{model}' does not exist", "model_not_found")
            if model in script.new_style and "max_tokens" in body:
                return error(400, "Unsupported parameter: 'max_tokens' is not supported with this model. "
                                  "Use 'max_completion_tokens' instead.", "unsupported_parameter")
            fails = script.failures.get(model, [])
            if n <= len(fails):
                status, code = fails[n - 1] if isinstance(fails[n - 1], tuple) else (fails[n - 1], None)
                return error(status, f"scripted {status}", code,
                             headers={"retry-after": "0"} if status == 429 else None)
            text = script.answers[model].get(question, script.fallback)
            words = len(text.split())
            return {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()), "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop", "logprobs": None}],
                    "usage": {"prompt_tokens": len(question.split()) + 5, "completion_tokens": words,
                              "total_tokens": len(question.split()) + 5 + words}}
        finally:
            script.in_flight -= 1

    return app


@dataclass
class Endpoint:
    script: Script
    base_url: str
    server: object
    thread: threading.Thread


@pytest.fixture
def endpoint():
    """A running scripted endpoint; mutate endpoint.script to set its behaviour."""
    import uvicorn

    from test_api_support import free_port

    script = Script()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(script), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 15
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "scripted endpoint did not start"
        time.sleep(0.01)
    yield Endpoint(script, f"http://127.0.0.1:{port}/v1", server, thread)
    server.should_exit = True
    thread.join(timeout=10)
