"""Retries for the annotation servers' HTTP APIs: an httpx transport that retries overload and server errors,
with tenacity deciding when and how long to wait.

`RetryTransport` wraps any httpx transport (the real one, or `httpx.MockTransport` in tests). It retries

* 429 Too Many Requests and 500/502/503/504 for GET, HEAD, OPTIONS, PUT, PATCH and DELETE (the calls labelwise makes
  with these methods set values, so sending them twice does no harm);
* only 429 and 503 for POST (the server says it did not do the work), and only when the body can be sent again;

with exponential back-off (`base_s` doubling up to `max_delay_s`, with a little jitter) or the server's
`Retry-After` (seconds or an HTTP date, capped at `max_delay_s`), for at most `attempts` tries in all. The last
answer is returned as it is, with `response.extensions["labelwise_attempts"]` set, so the caller's error message can
say how often it tried. Nothing here logs headers or bodies: tokens never reach a log line.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import httpx
import tenacity

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_STATUSES_POST = frozenset({429, 503})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})
ATTEMPTS_KEY = "labelwise_attempts"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries in all, the first included
    base_s: float = 0.5
    max_delay_s: float = 30.0
    jitter: float = 0.1  # +- this fraction of each back-off delay
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    def backoff(self, retry: int) -> float:
        """Delay before retry number `retry` (1 = the first retry)."""
        delay = min(self.max_delay_s, self.base_s * (2 ** (retry - 1)))
        return max(0.0, delay * (1 + random.uniform(-self.jitter, self.jitter)))


def retry_after_s(response: httpx.Response, now: datetime | None = None) -> float | None:
    """The server's Retry-After in seconds (a number or an HTTP date), or None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def _retryable(request: httpx.Request, status: int, replayable: bool) -> bool:
    method = request.method.upper()
    if method in IDEMPOTENT:
        return status in RETRY_STATUSES and replayable
    if method == "POST":
        return status in RETRY_STATUSES_POST and replayable
    return False


class RetryTransport(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport | None = None, policy: RetryPolicy | None = None) -> None:
        self.inner = inner if inner is not None else httpx.HTTPTransport()
        self.policy = policy or RetryPolicy()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        policy = self.policy
        started = time.monotonic()
        # A streamed body (a multipart file upload) may not be readable twice: such a request is sent once.
        replayable = isinstance(request.stream, httpx.ByteStream)

        def wait(state: tenacity.RetryCallState) -> float:
            after = retry_after_s(state.outcome.result())
            return policy.backoff(state.attempt_number) if after is None else min(after, policy.max_delay_s)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            response = state.outcome.result()
            response.read()
            response.close()
            log.warning("HTTP %d from %s %s%s; retry %d of %d in %.1f s", response.status_code, request.method,
                        request.url.host, request.url.path, state.attempt_number, attempts - 1,
                        state.upcoming_sleep)

        attempts = max(1, int(policy.attempts))
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(attempts), wait=wait, sleep=policy.sleep, before_sleep=before_sleep,
            retry=tenacity.retry_if_result(lambda r: _retryable(request, r.status_code, replayable)),
            # out of attempts: the last answer goes back to the caller as it is, whose error names the status
            retry_error_callback=lambda state: state.outcome.result())
        response = retrying(self.inner.handle_request, request)
        response.extensions = {**response.extensions, ATTEMPTS_KEY: retrying.statistics.get("attempt_number", 1),
                               "labelwise_elapsed_s": time.monotonic() - started}
        return response

    def close(self) -> None:
        self.inner.close()


def attempts_note(response: httpx.Response) -> str:
    """' (after 5 attempts over 12 s)' when the transport retried, else ''."""
    n = response.extensions.get(ATTEMPTS_KEY, 1)
    if n <= 1:
        return ""
    return f" (after {n} attempts over {response.extensions.get('labelwise_elapsed_s', 0.0):.0f} s)"


def retrying_client(*, transport: httpx.BaseTransport | None = None, retry: RetryPolicy | None = None,
                    **kwargs: object) -> httpx.Client:
    """An httpx.Client whose every request goes through `RetryTransport`.

    Without a `transport` the client is built as httpx builds it (proxies from HTTP(S)_PROXY / NO_PROXY included) and
    each of its transports is wrapped; with one (a MockTransport in tests) that one is wrapped."""
    if transport is not None:
        return httpx.Client(transport=RetryTransport(transport, retry), **kwargs)  # type: ignore[arg-type]
    client = httpx.Client(**kwargs)  # type: ignore[arg-type]
    client._transport = RetryTransport(client._transport, retry)
    client._mounts = {pattern: (None if inner is None else RetryTransport(inner, retry))
                      for pattern, inner in client._mounts.items()}
    return client
