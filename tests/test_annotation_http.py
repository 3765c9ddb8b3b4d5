"""Retries of the annotation servers' HTTP calls (labelwise.annotation.http), with httpx.MockTransport: no server."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from labelwise.annotation.base import AnnotationError
from labelwise.annotation.http import RetryPolicy, RetryTransport, retry_after_s
from labelwise.annotation.label_studio import LabelStudioClient

TOKEN = "secret-token-0123456789abcdef"


class Script:
    """A mock server answering a fixed list of statuses (then 200), recording what was asked."""

    def __init__(self, *answers: tuple[int, dict[str, str]] | int) -> None:
        self.answers = [a if isinstance(a, tuple) else (a, {}) for a in answers]
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        if self.answers:
            status, headers = self.answers.pop(0)
            return httpx.Response(status, headers=headers, json={"detail": "busy"})
        return httpx.Response(200, json={"ok": True})


def client(script: Script, sleeps: list[float], attempts: int = 5) -> LabelStudioClient:
    policy = RetryPolicy(attempts=attempts, base_s=0.5, max_delay_s=30.0, jitter=0.0, sleep=sleeps.append)
    return LabelStudioClient("http://ls.test", TOKEN, transport=httpx.MockTransport(script), retry=policy)


def test_two_failures_then_success(caplog):
    script = Script(503, (502, {"Retry-After": "0"}))
    sleeps: list[float] = []
    with caplog.at_level(logging.WARNING):
        assert client(script, sleeps).request("GET", "/api/projects", what="listing projects") == {"ok": True}
    assert len(script.seen) == 3
    assert sleeps == [0.5, 0.0]  # back-off, then the server's Retry-After
    assert "retry 1 of 4" in caplog.text and TOKEN not in caplog.text


def test_retry_after_is_honoured_and_capped():
    sleeps: list[float] = []
    script = Script((429, {"Retry-After": "3"}), (503, {"Retry-After": "999"}))
    client(script, sleeps).request("GET", "/api/tasks", what="listing tasks")
    assert sleeps == [3.0, 30.0]


def test_the_bound_is_respected_with_a_clear_error_and_no_token(caplog):
    script = Script(*[503] * 10)
    sleeps: list[float] = []
    with caplog.at_level(logging.DEBUG), pytest.raises(AnnotationError) as err:
        client(script, sleeps).request("GET", "/api/projects/3/", what="reading project 3")
    assert len(script.seen) == 5 and sleeps == [0.5, 1.0, 2.0, 4.0]
    msg = str(err.value)
    assert "HTTP 503 while reading project 3 (after 5 attempts" in msg and "run the command again" in msg
    assert TOKEN not in msg and TOKEN not in caplog.text and TOKEN not in repr(err.value)
    assert all(r.headers["Authorization"] == f"Token {TOKEN}" for r in script.seen)  # the token went where it belongs


def test_post_is_retried_only_when_the_server_did_not_do_the_work():
    sleeps: list[float] = []
    script = Script(500)
    with pytest.raises(AnnotationError, match="HTTP 500"):  # an import may have happened: never sent twice
        client(script, sleeps).request("POST", "/api/projects/1/import", what="importing", json=[{"data": {}}])
    assert len(script.seen) == 1 and sleeps == []
    script = Script(429, 503)
    assert client(script, sleeps).request("POST", "/api/projects/1/import", what="importing", json=[]) == {"ok": True}
    assert len(script.seen) == 3 and [r.content for r in script.seen] == [b"[]"] * 3


def test_client_errors_are_not_retried():
    for status in (400, 401, 404):
        script = Script(status)
        with pytest.raises(AnnotationError):
            client(script, []).request("GET", "/api/projects/9/", what="reading project 9")
        assert len(script.seen) == 1


def test_streamed_post_bodies_are_not_sent_twice():
    script = Script(503)
    transport = RetryTransport(httpx.MockTransport(script), RetryPolicy(sleep=lambda s: None))
    with httpx.Client(transport=transport, base_url="http://x") as http:
        resp = http.post("/upload", files={"client_files[0]": ("a.jpg", b"123")})
    assert resp.status_code == 503 and len(script.seen) == 1


def test_retry_after_http_date():
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    later = format_datetime(now + timedelta(seconds=7), usegmt=True)
    assert retry_after_s(httpx.Response(503, headers={"Retry-After": later}), now=now) == pytest.approx(7.0)
    assert retry_after_s(httpx.Response(503, headers={"Retry-After": "soon"})) is None
    assert retry_after_s(httpx.Response(503)) is None


def test_without_a_transport_every_route_retries_and_env_proxies_still_apply(monkeypatch):
    from labelwise.annotation.http import retrying_client

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    http = retrying_client(base_url="https://ls.example")
    assert isinstance(http._transport, RetryTransport)
    assert http._mounts and all(isinstance(t, RetryTransport) for t in http._mounts.values() if t is not None)
    http.close()
