"""Strict request parsing: every ambiguous or malformed request is answered by
umbra itself with the right status, the connection is closed, and the backend
never sees the request (for body errors: never a complete request, and the
upstream connection is closed)."""

import select
import socket
import time

import pytest

from harness import Client, build_request, make_config, upstream_requests, wait_until

H = b"Host: t.example\r\n"

# (id, raw request, status) — all of them would route to the backend if valid.
HEAD_ERRORS = [
    ("cl-and-te", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-and-cl", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    ("te-gzip-chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te-unknown", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
    ("te-chunked-gzip", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    ("te-chunked-twice", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-on-http10", b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("cl-duplicate-equal", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
    ("cl-duplicate-differ", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    ("cl-list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello", 400),
    ("cl-non-numeric", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: abc\r\n\r\n", 400),
    ("cl-plus-sign", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello", 400),
    ("cl-negative", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("cl-hex", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello", 400),
    ("cl-overflow", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
    ("space-before-colon", b"GET / HTTP/1.1\r\n" + H + b"X-Thing : 1\r\n\r\n", 400),
    ("space-before-colon-cl", b"POST / HTTP/1.1\r\n" + H + b"Content-Length : 5\r\n\r\nhello", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-Folded: a\r\n b\r\n\r\n", 400),
    ("obs-fold-tab", b"GET / HTTP/1.1\r\n" + H + b"X-Folded: a\r\n\tb\r\n\r\n", 400),
    ("bare-cr-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-Cr: a\rb\r\n\r\n", 400),
    ("bare-cr-line-end", b"GET / HTTP/1.1\r\n" + H + b"X-Cr: a\r\r\n\r\n", 400),
    ("nul-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-Nul: a\x00b\r\n\r\n", 400),
    ("name-with-space", b"GET / HTTP/1.1\r\n" + H + b"X Bad: 1\r\n\r\n", 400),
    ("name-with-paren", b"GET / HTTP/1.1\r\n" + H + b"X(Bad): 1\r\n\r\n", 400),
    ("name-non-ascii", b"GET / HTTP/1.1\r\n" + H + b"X-B\xc3\xa4d: 1\r\n\r\n", 400),
    ("name-empty", b"GET / HTTP/1.1\r\n" + H + b": 1\r\n\r\n", 400),
    ("no-colon", b"GET / HTTP/1.1\r\n" + H + b"X-No-Colon\r\n\r\n", 400),
    ("no-host-http11", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
    ("two-hosts", b"GET / HTTP/1.1\r\n" + H + b"Host: other.example\r\n\r\n", 400),
    ("bad-method", b"G@T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("space-in-target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("lowercase-version", b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    ("garbage-version", b"GET / HTTP/x.y\r\n" + H + b"\r\n", 400),
    ("http2-request-line", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("http3-request-line", b"GET / HTTP/3.0\r\n" + H + b"\r\n", 505),
    ("target-64k", b"GET /" + b"a" * 65536 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    ("headers-over-32k", b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 2000) for i in range(20)) + b"\r\n", 431),
    ("too-many-headers", b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-H%d: 1\r\n" % i for i in range(200)) + b"\r\n", 431),
]

# Requests whose head is fine and whose chunked body breaks.
BODY_ERRORS = [
    ("chunk-size-not-hex", b"zz\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-empty", b"\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-data-junk", b"5\r\nhelloXX\r\n0\r\n\r\n", 400),
    ("chunk-size-overflow", b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-bare-lf", b"5\nhello\r\n0\r\n\r\n", 400),
    ("chunk-ext-oversized", b"5;" + b"e" * 10000 + b"\r\nhello\r\n0\r\n\r\n", 400),
    ("junk-after-first-chunk", b"5\r\nhello\r\nqq\r\n0\r\n\r\n", 400),
]


@pytest.fixture(scope="module")
def strict(module_procs):
    b = module_procs.backend("strict")
    u = module_procs.umbra(make_config({"primary": [b]}), name="strict")
    return u, b


@pytest.fixture(scope="module")
def streaming(module_procs):
    """request_buffer 0: the head and each body byte go upstream as they arrive."""
    b = module_procs.backend("streaming")
    u = module_procs.umbra(make_config({"primary": [b]}, limits={"request_buffer": 0}), name="streaming")
    return u, b


def read_rejection(u, raw):
    """Sends raw on a new connection; returns (response, closed afterwards)."""
    with Client(u.port, timeout=10) as c:
        c.send(raw)
        r = c.read()
        return r, c.is_closed(3)


def test_valid_request_passes(strict):
    u, b = strict
    before = len(b.requests)
    r = u.get("/valid")
    assert r.status == 200 and r.json()["target"] == "/valid"
    assert len(b.requests) == before + 1


@pytest.mark.parametrize("name,raw,status", HEAD_ERRORS, ids=[c[0] for c in HEAD_ERRORS])
def test_bad_head_rejected(strict, name, raw, status):
    u, b = strict
    heads_before = len(b.heads)
    r, closed = read_rejection(u, raw)
    assert r.status == status, "%s: got %d %s, want %d" % (name, r.status, r.reason, status)
    assert closed, "%s: connection left open after %d" % (name, status)
    assert len(b.heads) == heads_before, "%s: backend saw %r" % (name, b.heads[heads_before:])


@pytest.mark.parametrize("name,body,status", BODY_ERRORS, ids=[c[0] for c in BODY_ERRORS])
def test_bad_chunked_body_rejected(strict, name, body, status):
    u, b = strict
    heads0, reqs0, _, errs0 = b.snapshot()
    raw = b"POST /chunky HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + body
    r, closed = read_rejection(u, raw)
    assert r.status == status, "%s: got %d %s" % (name, r.status, r.reason)
    assert closed
    assert len(b.requests) == reqs0, "%s: backend got a complete request" % name
    # Whatever umbra had already forwarded, the upstream connection must end
    # without the backend ever seeing a complete (or junk) request.
    new_heads = b.heads[heads0:]
    if new_heads:
        wait_until(lambda: all(any(a["seq"] == h["seq"] for a in b.aborted) for h in new_heads),
                   5, what="the upstream connection of the broken request to close")
    assert len(b.requests) == reqs0
    assert b.errors[errs0:] == [], "junk reached the backend: %s" % b.errors[errs0:]


MIDSTREAM_JUNK = [
    ("chunk-size-not-hex", b"zz\r\nhello\r\n0\r\n\r\n"),
    ("chunk-data-junk", b"5\r\nhelloXX\r\n0\r\n\r\n"),
    ("chunk-ext-oversized", b"5;" + b"e" * 10000 + b"\r\nhello\r\n0\r\n\r\n"),
]


@pytest.mark.parametrize("name,junk", MIDSTREAM_JUNK, ids=[c[0] for c in MIDSTREAM_JUNK])
def test_bad_chunk_before_request_buffer_fills_never_reaches_the_upstream(strict, name, junk):
    # The body is held until it ends or fills request_buffer (16 KiB): broken
    # before that, the request never had an upstream.
    u, b = strict
    heads0, reqs0, _, errs0 = b.snapshot()
    sent0 = upstream_requests(u)
    with Client(u.port, timeout=10) as c:
        c.send(b"POST /held HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        c.send(junk)
        r = c.read()
        assert r.status == 400, r
        assert c.is_closed(3)
    assert upstream_requests(u) == sent0, "the broken request went upstream"
    assert u.get("/after-held").status == 200
    assert upstream_requests(u) == sent0 + 1
    assert [h["target"] for h in b.heads[heads0:]] == ["/after-held"]
    assert b.errors[errs0:] == []


@pytest.mark.parametrize("name,junk", MIDSTREAM_JUNK, ids=[c[0] for c in MIDSTREAM_JUNK])
def test_bad_chunk_after_head_was_forwarded(streaming, name, junk):
    # Streamed bodies (request_buffer 0): the head and a first chunk go
    # upstream before the rest arrives. When the rest is broken, the client
    # gets 400 and the upstream connection is closed, so the backend never has
    # a complete request.
    u, b = streaming
    heads0, reqs0, _, errs0 = b.snapshot()
    with Client(u.port, timeout=10) as c:
        c.send(b"POST /midstream HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        wait_until(lambda: len(b.heads) > heads0, 5, what="the head to be forwarded before the body ends")
        c.send(junk)
        r = c.read()
        assert r.status == 400, r
        assert c.is_closed(3)
    rec = b.heads[heads0]
    wait_until(lambda: any(a["seq"] == rec["seq"] for a in b.aborted), 5,
               what="the upstream connection of the broken request to close")
    assert len(b.requests) == reqs0, "backend got a complete request"
    assert b.errors[errs0:] == [], "junk reached the backend: %s" % b.errors[errs0:]


def test_http_1_2_treated_as_1_1(strict):
    u, b = strict
    with Client(u.port) as c:
        c.send(b"GET /onetwo HTTP/1.2\r\n" + H + b"\r\n")
        r = c.read()
        assert r.status == 200 and r.version == "HTTP/1.1"
        v = r.json()
        assert v["target"] == "/onetwo" and v["version"] == "HTTP/1.1"
        # keep-alive by default, as for 1.1
        assert c.request("GET", "/onetwo-again").status == 200


def test_4k_target_passes(strict):
    u, b = strict
    target = "/" + "t" * 4096
    r = u.get(target)
    assert r.status == 200 and r.json()["target"] == target


def test_headers_under_limit_pass(strict):
    u, b = strict
    headers = [("X-Big-%d" % i, "v" * 2000) for i in range(13)]  # ~26 KiB < 32 KiB
    r = u.get("/big-headers", headers)
    assert r.status == 200
    got = {n: v for n, v in r.json()["headers"]}
    assert all(got.get(n) == v for n, v in headers)


def test_leading_empty_line_allowed(strict):
    u, b = strict
    with Client(u.port) as c:
        c.send(b"\r\nGET /lead HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
        r = c.read()
    assert r.status == 200 and r.json()["target"] == "/lead"


def test_body_over_max_body_bytes_413(procs):
    b = procs.backend()
    u = procs.umbra(make_config({"primary": [b]}, limits={"max_body_bytes": "1KiB", "request_buffer": 0}))
    ok = b"k" * 1024
    with Client(u.port) as c:
        assert c.request("POST", "/fits", body=ok).status == 200
    r, closed = read_rejection(u, build_request("POST", "/too-big", body=b"x" * 1025))
    assert r.status == 413 and closed
    assert [h["target"] for h in b.heads] == ["/fits"]

    # the same limit on a chunked body, which is only known to be too big
    # midway, after the head has gone upstream
    with Client(u.port, timeout=10) as c:
        c.send(build_request("POST", "/too-big-chunked", [("Transfer-Encoding", "chunked")]) +
               b"200\r\n" + b"y" * 512 + b"\r\n")
        wait_until(lambda: any(h["target"] == "/too-big-chunked" for h in b.heads), 5,
                   what="the head to be forwarded before the body ends")
        c.send(b"200\r\n" + b"y" * 512 + b"\r\n" + b"1\r\ny\r\n0\r\n\r\n")
        r = c.read()
        assert r.status == 413, r
        assert c.is_closed(3)
    wait_until(lambda: any(a["target"] == "/too-big-chunked" for a in b.aborted), 5,
               what="the upstream connection of the oversized body to close")
    assert [r["target"] for r in b.requests] == ["/fits"]


@pytest.mark.timeout(30)
def test_header_timeout_408(procs):
    b = procs.backend()
    u = procs.umbra(make_config({"primary": [b]}, limits={"header_timeout": "1s"}))
    s = socket.create_connection(("127.0.0.1", u.port), timeout=10)
    try:
        start = time.monotonic()
        s.sendall(b"GET /slowloris HTTP/1.1\r\nHost: t.example\r\nX-Trickle: ")
        got = b""
        first = closed = None
        while time.monotonic() - start < 8:
            readable, _, _ = select.select([s], [], [], 1.0)
            if readable:
                try:
                    d = s.recv(65536)
                except ConnectionResetError:
                    d = b""
                if not d:
                    closed = time.monotonic() - start
                    break
                got += d
                first = first or time.monotonic() - start
                continue
            if first is None:
                s.sendall(b"a")  # one byte a second defeats an idle timer, not an absolute deadline
    finally:
        s.close()
    assert got.startswith(b"HTTP/1.1 408"), "after %.1fs got %r" % (time.monotonic() - start, got[:200])
    assert first < 4, "408 came only after %.1fs with a 1s header_timeout" % first
    assert closed is not None, "connection left open after the 408"
    assert b.heads == []


@pytest.mark.timeout(30)
def test_body_timeout(procs):
    b = procs.backend()
    u = procs.umbra(make_config({"primary": [b]}, limits={"body_timeout": "1s"}))
    with Client(u.port, timeout=10) as c:
        c.send(build_request("POST", "/stalled-body", [("Content-Length", "100")]) + b"only ten b")
        t0 = time.monotonic()
        data = c.read_raw(8)
        took = time.monotonic() - t0
    assert took < 5, "stalled body held the connection %.1fs with body_timeout 1s" % took
    assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b.requests == []
    if b.heads:
        wait_until(lambda: b.aborted, 5, what="the upstream connection of the stalled body to close")
