"""Put every case to every model through an OpenAI-compatible /chat/completions endpoint.

Bounded concurrency (an asyncio semaphore), and retries with exponential backoff and jitter on
429, 5xx, timeouts and dropped connections (honouring Retry-After). Other errors (400, 404, …)
are recorded on that answer and the run goes on, so one bad model name does not lose the others.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from tunery.eval.spec import Case
from tunery.settings import get_settings


def default_base_url() -> str:
    """TUNERY_BASE_URL, else the local `tunery serve`."""
    return get_settings().client.server


def default_api_key() -> str:
    """TUNERY_API_KEY, then OPENAI_API_KEY (see ClientSettings.bearer)."""
    return get_settings().client.bearer


@dataclass
class RunConfig:
    """How to call the endpoint."""

    base_url: str = field(default_factory=default_base_url)
    api_key: str = field(default_factory=default_api_key)
    concurrency: int = 4
    """Requests in flight at once (over all models)."""
    max_tokens: int = 256
    temperature: float = 0.0
    """0 = greedy, so a re-run gives the same answers and models are compared fairly."""
    retries: int = 4
    """Extra attempts after a 429 / 5xx / timeout / connection error."""
    timeout: float = 300.0
    """Seconds for one request (a CPU server answering long prompts is slow)."""
    backoff: float = 0.5
    """First retry delay in seconds; doubles each attempt (with jitter), at most max_backoff."""
    max_backoff: float = 20.0
    seed: int | None = 0
    variants: dict[str, tuple[str, dict]] = field(default_factory=dict)
    """Report key → (model to call, extra request body): e.g. "<model> [no guard]" → (model,
    {"tunery_guard": "off"}), to evaluate a guarded model with and without its guard side by side."""


@dataclass
class Answer:
    """One model's reply to one case, with what it cost."""

    case_id: str
    model: str
    text: str | None = None
    latency_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    attempts: int = 0
    guard_declined: bool = False
    """A tunery guard answered with its refusal (the response's tunery_guard.allowed is false)."""

    def to_dict(self) -> dict:
        return asdict(self)


def _retryable(exc: Exception) -> bool:
    import openai

    if isinstance(exc, openai.RateLimitError):
        # OpenAI's insufficient_quota 429 (and any 429 saying the request can never fit) stays a 429 on
        # every retry: record it at once instead of backing off for minutes.
        return _error_code(exc) not in NEVER_SUCCEEDS
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500


NEVER_SUCCEEDS = ("insufficient_quota", "billing_hard_limit_reached", "request_too_large")


def _error_code(exc: Exception) -> str | None:
    body = getattr(exc, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else None
    return inner.get("code") if isinstance(inner, dict) else None


def _retry_after(exc: Exception) -> float | None:
    resp = getattr(exc, "response", None)
    raw = resp.headers.get("retry-after") if resp is not None else None
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def _describe(exc: Exception) -> str:
    import openai

    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        inner = body.get("error", body)  # the SDK usually unwraps {"error": {...}} already
        msg = inner.get("message") if isinstance(inner, dict) else None
        return f"HTTP {exc.status_code}: {msg or exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _wants_max_completion_tokens(exc: Exception) -> bool:
    """OpenAI's reasoning models reject max_tokens and ask for max_completion_tokens instead."""
    import openai

    return isinstance(exc, openai.BadRequestError) and "max_completion_tokens" in str(exc)


async def _ask(client, case: Case, model: str, cfg: RunConfig, sem: asyncio.Semaphore,
               new_style: set[str]) -> Answer:
    ans = Answer(case_id=case.id, model=model)
    async with sem:
        attempt = 0
        while attempt <= cfg.retries:
            ans.attempts = attempt + 1
            t0 = time.perf_counter()
            limit = case.max_tokens or cfg.max_tokens
            extra = {"seed": cfg.seed} if cfg.seed is not None else {}
            extra["max_completion_tokens" if model in new_style else "max_tokens"] = limit
            real, body = cfg.variants.get(model, (model, None))
            if body:
                extra["extra_body"] = body
            try:
                resp = await client.chat.completions.create(
                    model=real, messages=case.messages, temperature=cfg.temperature, **extra)
            except Exception as exc:  # noqa: BLE001 - classified right below
                if model not in new_style and _wants_max_completion_tokens(exc):
                    new_style.add(model)  # remembered for this model's other cases; not a retry
                    continue
                attempt += 1
                if _retryable(exc) and attempt <= cfg.retries:
                    delay = min(cfg.max_backoff, cfg.backoff * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                    hint = _retry_after(exc)
                    await asyncio.sleep(min(cfg.max_backoff, hint) if hint is not None else delay)
                    continue
                ans.error = _describe(exc)
                return ans
            ans.latency_s = time.perf_counter() - t0
            choice = resp.choices[0] if resp.choices else None
            ans.text = (choice.message.content or "") if choice else ""
            ans.finish_reason = choice.finish_reason if choice else None
            guard = (resp.model_extra or {}).get("tunery_guard")
            ans.guard_declined = isinstance(guard, dict) and guard.get("allowed") is False
            if resp.usage is not None:
                ans.prompt_tokens = resp.usage.prompt_tokens
                ans.completion_tokens = resp.usage.completion_tokens
            return ans
    return ans  # pragma: no cover - the loop always returns


async def run_async(cases: list[Case], models: list[str], cfg: RunConfig,
                    on_answer: Callable[[Answer], None] | None = None) -> list[Answer]:
    """All answers, ordered model by model then case by case."""
    import openai

    client = openai.AsyncOpenAI(base_url=cfg.base_url, api_key=cfg.api_key, max_retries=0,
                                timeout=cfg.timeout)
    sem = asyncio.Semaphore(max(1, cfg.concurrency))
    new_style: set[str] = set()

    async def one(case: Case, model: str) -> Answer:
        a = await _ask(client, case, model, cfg, sem, new_style)
        if on_answer:
            on_answer(a)
        return a

    try:
        # Model-major order: a local server keeps one adapter hot instead of swapping per request.
        return list(await asyncio.gather(*(one(c, m) for m in models for c in cases)))
    finally:
        await client.close()


def run(cases: list[Case], models: list[str], cfg: RunConfig | None = None,
        on_answer: Callable[[Answer], None] | None = None) -> list[Answer]:
    """Synchronous wrapper around run_async."""
    return asyncio.run(run_async(cases, models, cfg or RunConfig(), on_answer))
