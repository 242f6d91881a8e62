"""Talking to a model editor's endpoint with the official `openai` client (async).

The client's own retries are off: each call is retried here, so that every failure is counted, its
reason kept for the job page, 429's Retry-After honoured, and the editor's limits (concurrent requests,
requests per minute) hold across retries. Written by hand: the requests-per-minute pacing (a few lines;
a library for it would be one more dependency for less).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import openai
from openai.types.chat import ChatCompletion

from app.editors.prompts import AnswerCutOff, MalformedAnswer

T = TypeVar("T")

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 120.0
DEFAULT_ATTEMPTS = 4
CHAT_COMPLETIONS = "/chat/completions"  # the OpenAI-compatible endpoint, below the base URL


@dataclass(frozen=True)
class EndpointConfig:
    """What a call needs to know about an editor (the API key decrypted, in memory only)."""

    base_url: str
    model: str
    api_key: str = ""
    temperature: float = 0.0
    max_tokens: int = 512
    timeout_s: float = 60.0
    max_concurrency: int = 4
    requests_per_minute: int = 0

    def __repr__(self) -> str:  # never print the key, whatever logs this object
        return f"EndpointConfig(base_url={self.base_url!r}, model={self.model!r}, api_key=***)"


@dataclass(frozen=True)
class Answer:
    text: str
    truncated: bool  # stopped at max tokens


class EditorFailure(Exception):
    """A call that failed for good; `reason` is what the job page shows. `endpoint` says whether the
    endpoint failed (unreachable, timing out, refusing) rather than the model's answer to this item."""

    def __init__(self, reason: str, attempts: int, *, endpoint: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts
        self.endpoint = endpoint


class _Pacer:
    """At most `per_minute` request starts per minute, spaced evenly (0: no limit)."""

    def __init__(self, per_minute: int) -> None:
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self.next_at = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            start = max(now, self.next_at)
            self.next_at = start + self.interval
        await asyncio.sleep(start - now)


def _retry_after_s(exc: openai.APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        seconds = parsed.timestamp() - time.time() if parsed else 0.0
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


def describe(exc: BaseException) -> tuple[str, bool, float | None]:
    """(reason, retryable, server-requested delay) of a failed call."""
    if isinstance(exc, MalformedAnswer):
        return f"malformed answer: {exc}", not isinstance(exc, AnswerCutOff), None
    if isinstance(exc, openai.APITimeoutError):
        return "the endpoint timed out", True, None
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot connect to the endpoint ({exc.__cause__ or exc})", True, None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retryable = status in (408, 409, 429) or status >= 500
        detail = str(exc.message)[:300]
        return f"HTTP {status} from the endpoint: {detail}", retryable, _retry_after_s(exc) if retryable else None
    return f"{type(exc).__name__}: {exc}", False, None


class InFlight:
    """How many requests are in flight, averaged over time since it was made: how busy a job kept the
    endpoint (at most the editor's concurrency)."""

    def __init__(self) -> None:
        self.count = 0
        self.area = 0.0  # requests x seconds
        self.started = self.since = time.monotonic()

    def _advance(self) -> None:
        now = time.monotonic()
        self.area += self.count * (now - self.since)
        self.since = now

    def __enter__(self) -> None:
        self._advance()
        self.count += 1

    def __exit__(self, *_exc: object) -> None:
        self._advance()
        self.count -= 1

    def mean(self) -> float:
        self._advance()
        return self.area / max(self.since - self.started, 1e-9)


class EditorClient:
    """One editor's endpoint, shared by every call of a process: its concurrency and pace hold across them."""

    def __init__(self, config: EndpointConfig, *, attempts: int = DEFAULT_ATTEMPTS) -> None:
        self.config = config
        self.attempts = attempts
        self.slots = asyncio.Semaphore(config.max_concurrency)
        self.pacer = _Pacer(config.requests_per_minute)
        # The client's own HTTP client: at most `max_concurrency` requests are ever out at once (the slots),
        # so at most as many connections. One of a different httpx than the client's goes through an adapter
        # that costs more CPU per request.
        self.openai = openai.AsyncOpenAI(
            base_url=config.base_url, api_key=config.api_key or "none", timeout=config.timeout_s, max_retries=0,
        )
        self.calls = 0
        self.retries = 0
        self.in_flight = InFlight()

    async def close(self) -> None:
        await self.openai.close()

    async def chat(self, prompt: str) -> Answer:
        """One request (no retry) within the editor's limits."""
        async with self.slots:
            await self.pacer.wait()
            self.calls += 1
            with self.in_flight:
                # The client's request for `chat.completions.create`, less the typed method's transform of its
                # arguments: that walks the type hints of its forty-odd parameters at every call, a third of
                # the call's CPU (about 2,300 Python calls of 6,800), for a body it would send unchanged.
                response = await self.openai.post(CHAT_COMPLETIONS, cast_to=ChatCompletion, body={
                    "model": self.config.model, "messages": [{"role": "user", "content": prompt}],
                    "temperature": self.config.temperature, "max_tokens": self.config.max_tokens,
                })
        if not isinstance(response, ChatCompletion):  # e.g. a proxy's HTML error page with status 200
            raise MalformedAnswer(f"the endpoint's answer is not a chat completion: {str(response)[:100]!r}")
        if not response.choices:
            raise MalformedAnswer("the endpoint returned no choices")
        choice = response.choices[0]
        return Answer(choice.message.content or "", choice.finish_reason == "length")

    async def retrying(self, call: Callable[[], Awaitable[T]], on_retry: Callable[[str], None] = lambda _: None) -> T:
        """`call()` until it succeeds, retrying transient failures with exponential backoff (or the
        server's Retry-After); raises EditorFailure with the last reason when it gives up."""
        attempt = 1
        while True:
            try:
                return await call()
            except (openai.OpenAIError, MalformedAnswer) as exc:
                reason, retryable, delay = describe(exc)
                if not retryable or attempt >= self.attempts:
                    raise EditorFailure(reason, attempt, endpoint=not isinstance(exc, MalformedAnswer)) from exc
            self.retries += 1
            on_retry(reason)
            backoff = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
            await asyncio.sleep(delay if delay is not None else backoff)
            attempt += 1
