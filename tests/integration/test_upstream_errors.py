"""Upstream failures: each maps to its status and moves
umbra_upstream_errors_total{cluster="primary",reason=...}; a stale kept-alive
upstream connection is retried without the client noticing."""

import threading
import time

import pytest

from backends import closed_port
from harness import Client, make_config, wait_until


def errors_by_reason(u):
    return u.metrics().by_label("umbra_upstream_errors_total", "reason", cluster="primary")


def assert_error_counted(u, before, reason):
    """Waits for reason's counter to move by one; the others must not move
    (except 'retry', which is not a failure)."""
    def moved():
        now = errors_by_reason(u)
        return now if now.get(reason, 0) == before.get(reason, 0) + 1 else None
    try:
        now = wait_until(moved, 3, 0.05, "umbra_upstream_errors_total{reason=%r} to increase" % reason)
    except AssertionError:
        raise AssertionError("errors by reason: before %s, after %s" % (before, errors_by_reason(u))) from None
    others = {k: now.get(k, 0) - before.get(k, 0) for k in set(now) | set(before) if k not in (reason, "retry")}
    assert not any(others.values()), "other reasons moved too: %s" % others


def test_connect_refused_502(procs):
    holder, port = closed_port()
    try:
        u = procs.umbra(make_config({"primary": ["127.0.0.1:%d" % port]}))
        before = errors_by_reason(u)
        t0 = time.monotonic()
        r = u.get("/refused")
        assert r.status == 502, r
        assert time.monotonic() - t0 < 3
        assert_error_counted(u, before, "connect_refused")
    finally:
        holder.close()


def test_reset_before_response_502(procs):
    b = procs.backend(mode="reset")
    u = procs.umbra(make_config({"primary": [b]}))
    before = errors_by_reason(u)
    r = u.get("/reset")
    assert r.status == 502, r
    assert_error_counted(u, before, "reset")
    # a request that reached the backend on a fresh connection is not replayed
    assert [h["target"] for h in b.heads] == ["/reset"]


@pytest.mark.parametrize("raw", [
    b"this is not http\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
], ids=["garbage", "duplicate-cl", "cl-and-te"])
def test_malformed_response_502(procs, raw):
    b = procs.backend(mode="raw")
    b.raw_response = raw
    u = procs.umbra(make_config({"primary": [b]}))
    before = errors_by_reason(u)
    r = u.get("/garbage")
    assert r.status == 502, r
    assert_error_counted(u, before, "protocol")


@pytest.mark.timeout(30)
def test_max_connections_reached_503(procs):
    b = procs.backend(mode="slow; delay=4")
    u = procs.umbra(make_config({"primary": {"endpoints": [b], "max_connections": 1}}, workers=1))
    before = errors_by_reason(u)
    result = {}

    def slow():
        with Client(u.port, timeout=15) as c:
            result["slow"] = c.request("GET", "/hold")

    t = threading.Thread(target=slow)
    t.start()
    try:
        wait_until(lambda: b.heads, 5, what="the first request to reach the backend")
        t0 = time.monotonic()
        r = u.get("/overflow")
        took = time.monotonic() - t0
        assert r.status == 503, r
        assert took < 2, "503 took %.1fs: it waited for the busy connection" % took
        assert [h["target"] for h in b.heads] == ["/hold"]
    finally:
        t.join(15)
    assert result["slow"].status == 200
    assert_error_counted(u, before, "overflow")


@pytest.mark.timeout(30)
def test_response_timeout_504(procs):
    b = procs.backend(mode="slow; delay=5")
    u = procs.umbra(make_config({"primary": {"endpoints": [b], "timeout": "500ms"}}))
    before = errors_by_reason(u)
    t0 = time.monotonic()
    r = u.get("/too-slow")
    took = time.monotonic() - t0
    assert r.status == 504, r
    assert 0.4 <= took < 3, "504 after %.2fs with timeout 500ms" % took
    assert_error_counted(u, before, "timeout")


@pytest.mark.timeout(30)
def test_timeout_while_body_streams_closes_client(procs):
    # The head has gone to the client when the deadline passes: the client can
    # only learn by the connection closing before the body's end.
    b = procs.backend(mode="slow-body; delay=5")
    u = procs.umbra(make_config({"primary": {"endpoints": [b], "timeout": "500ms"}}))
    with Client(u.port, timeout=10) as c:
        c.send(b"GET /half HTTP/1.1\r\nHost: t\r\n\r\n")
        t0 = time.monotonic()
        try:
            r = c.read()
        except Exception:  # PeerClosed mid-body is the expected outcome
            r = None
        took = time.monotonic() - t0
    assert r is None or r.status == 504, "a truncated body must not look complete: %r" % r
    assert took < 3


@pytest.mark.parametrize("pace", ["immediate", "after-backend-close"])
def test_stale_keepalive_connection_retried(procs, pace):
    b = procs.backend(mode="close-after")
    u = procs.umbra(make_config({"primary": [b]}, workers=1))
    n = 20
    with Client(u.port) as c:
        for i in range(n):
            if pace == "after-backend-close":
                wait_until(lambda: b.open_connections == 0, 5, what="the backend to close its connection")
            r = c.request("GET", "/stale/%d" % i)
            assert r.status == 200, "request %d: %r" % (i, r)
            assert r.json()["target"] == "/stale/%d" % i
    assert [x["target"] for x in b.requests] == ["/stale/%d" % i for i in range(n)]
    errs = errors_by_reason(u)
    assert not {k: v for k, v in errs.items() if k != "retry" and v}, errs


def test_request_on_connection_closed_under_it_is_retried(procs):
    # The backend reads the second request on a kept-alive connection and
    # closes without a byte of answer: exactly what a proxy sees when the
    # backend's idle close crosses its request on the wire. An idempotent
    # request that got no byte back is safe to send again on a new connection.
    b = procs.backend(mode="once")
    u = procs.umbra(make_config({"primary": [b]}, workers=1))
    n = 10
    with Client(u.port) as c:
        for i in range(n):
            r = c.request("GET", "/once/%d" % i)
            assert r.status == 200, "request %d: %r" % (i, r)
            assert r.json()["target"] == "/once/%d" % i
    assert [x["target"] for x in b.requests] == ["/once/%d" % i for i in range(n)]
    assert b.dropped, "no request hit a stale connection: the test did not test the retry"
    errs = errors_by_reason(u)
    assert errs.get("retry", 0) == len(b.dropped), errs
    assert not {k: v for k, v in errs.items() if k != "retry" and v}, errs
