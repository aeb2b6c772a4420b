"""request_buffer (listener limits, default 16 KiB): a request whose body is
still coming is held, up to request_buffer, before any upstream is chosen,
primary or shadow. A client that trickles its body (slow body, slowloris
POSTs) ties up no upstream connection and no mirror slot meanwhile; a body
that ends or fills request_buffer goes out whole and then streams as before.
"""

import hashlib
import socket
import time

import pytest

from backends import pattern_chunks, pattern_sha256
from harness import Client, build_request, counter, make_config, upstream_requests, wait_until
from shadows import mirror_config, outcomes, peers, wait_outcomes  # noqa: F401 (fixture)

KIB = 1024


def wait_received(u, n):
    """Waits until umbra has parsed n request heads: the choice to hold or
    to start upstream is made in the same call, so whatever it started is
    counted by then."""
    wait_until(lambda: counter(u, "umbra_downstream_requests_total") >= n, 5,
               what="umbra to receive %d request heads" % n)


def one_chunk(data):
    return b"%x\r\n" % len(data) + data + b"\r\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_trickled_body_reaches_no_upstream_until_it_ends(procs, peers, framing):
    b = procs.backend()
    col = peers.collector()
    u = procs.umbra(mirror_config(b, {"shadow": col}, [{"cluster": "shadow"}], workers=1))
    body = bytes(range(256)) * 12  # 3 KiB: under request_buffer
    pieces = [body[i:i + 500] for i in range(0, len(body), 500)]
    if framing == "chunked":
        head = build_request("POST", "/trickle", [("Transfer-Encoding", "chunked")])
        wire = [one_chunk(p) for p in pieces]
        wire[-1] += b"0\r\n\r\n"
    else:
        head = build_request("POST", "/trickle", [("Content-Length", str(len(body)))])
        wire = pieces
    with Client(u.port, timeout=10) as c:
        c.send(head + wire[0])
        wait_received(u, 1)
        for piece in wire[1:-1]:
            c.send(piece)
        # One more request head, on a second connection, and its answer: by
        # then umbra has seen the first body's pieces too (one worker).
        assert u.get("/marker").status == 200
        assert upstream_requests(u, "primary") == 1, "only /marker went upstream"
        assert [h["target"] for h in b.heads] == ["/marker"]
        c.send(wire[-1])
        r = c.read()
        assert r.status == 200, r
        got = r.json()
        assert got["body_len"] == len(body)
        assert got["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert upstream_requests(u, "primary") == 2
    wait_outcomes(u, 2)
    recs = {r["target"]: r for r in col.wait_count(2)}
    assert recs["/trickle"]["body_length"] == len(body)
    assert recs["/trickle"]["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.timeout(60)
def test_a_body_past_request_buffer_streams_before_it_ends(procs, peers):
    b = procs.backend()
    watch = peers.fault("answer")  # a shadow that shows bytes as they arrive
    u = procs.umbra(mirror_config(b, {"shadow": {"endpoints": [watch], "timeout": "10s"}},
                                  [{"cluster": "shadow", "buffer": "1MiB"}],
                                  limits={"request_buffer": "8KiB"}))
    size = 1 << 20
    body = b"".join(pattern_chunks(size))
    with Client(u.port, timeout=20) as c:
        c.send(build_request("POST", "/stream", [("Content-Length", str(size))]))
        c.send(body[:12 * KIB])  # past request_buffer, far from the end
        wait_until(lambda: b.body_bytes_received >= 8 * KIB, 5,
                   what="the primary to get the body held so far")
        wait_until(lambda: watch.stats().get("bytes_in", 0) >= 8 * KIB, 5,
                   what="the shadow to get the body held so far")
        assert b.requests == [], "the body has not ended"
        c.send(body[12 * KIB:])
        r = c.read()
        assert r.status == 200, r
        got = r.json()
        assert got["body_len"] == size and got["body_sha256"] == pattern_sha256(size)


@pytest.mark.timeout(60)
def test_a_slow_body_cut_by_min_body_rate_never_reached_an_upstream(procs, peers):
    b = procs.backend()
    col = peers.collector()
    u = procs.umbra(mirror_config(b, {"shadow": col}, [{"cluster": "shadow"}], workers=1,
                                  limits={"min_body_rate": "1KiB", "body_timeout": "4s"}))
    s = socket.create_connection(("127.0.0.1", u.port), timeout=15)
    try:
        s.sendall(build_request("POST", "/slow", [("Content-Length", "100000")]) + b"s" * 50)
        wait_received(u, 1)
        got = b""
        deadline = time.monotonic() + 20
        s.settimeout(0.25)
        while not got and time.monotonic() < deadline:  # 200 B/s until umbra answers
            try:
                got = s.recv(4096)
            except socket.timeout:
                try:
                    s.sendall(b"s" * 50)
                except (BrokenPipeError, ConnectionResetError):
                    break
    finally:
        s.close()
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert upstream_requests(u, "primary") == 0 and upstream_requests(u, "shadow") == 0
    assert b.connections == 0 and b.heads == []
    assert sum(outcomes(u).values()) == 0
    assert u.get("/after").status == 200
    assert col.wait_count(1)[0]["target"] == "/after"


@pytest.mark.timeout(60)
def test_a_held_request_gets_503_when_no_upstream_connection_is_free(procs):
    b = procs.backend()
    u = procs.umbra(make_config({"primary": {"endpoints": [b], "max_connections": 1}}, workers=1))
    busy = Client(u.port, timeout=20)
    busy.send(build_request("GET", "/busy", [("X-Backend-Mode", "slow; delay=3")]))
    wait_until(lambda: b.heads, 5, what="the slow request to hold the only connection")
    with Client(u.port, timeout=10) as c:
        c.send(build_request("POST", "/held", [("Content-Length", "4")]) + b"da")
        wait_received(u, 2)
        c.send(b"ta")
        r = c.read()
        assert r.status == 503, r
        assert counter(u, "umbra_upstream_errors_total", cluster="primary", reason="overflow") == 1
    r = busy.read()
    assert r.status == 200 and r.json()["target"] == "/busy"
    busy.close()
    with Client(u.port, timeout=10) as c:
        r = c.request("POST", "/held-again", body=b"data")
        assert r.status == 200 and r.json()["body_len"] == 4


def streams_from_the_first_byte(u, b, target):
    """True if the head and the first half of a body reach the backend
    before the second half is sent; False if nothing went upstream by the
    time umbra parsed the head (it was held)."""
    before = upstream_requests(u, "primary")
    received = counter(u, "umbra_downstream_requests_total")
    with Client(u.port, timeout=10) as c:
        c.send(build_request("POST", target, [("Content-Length", "10")]) + b"12345")
        wait_received(u, received + 1)
        streamed = upstream_requests(u, "primary") == before + 1
        if streamed:
            wait_until(lambda: b.body_bytes_received >= 5, 5, what="the first 5 bytes at the primary")
        c.send(b"67890")
        r = c.read()
        assert r.status == 200 and r.json()["body_len"] == 10 and r.json()["target"] == target
    return streamed


def test_request_buffer_0_streams_from_the_first_byte(procs):
    b = procs.backend()
    u = procs.umbra(make_config({"primary": [b]}, limits={"request_buffer": 0}))
    assert streams_from_the_first_byte(u, b, "/at-once")


def test_a_route_sets_its_own_request_buffer(procs):
    # A streaming upload route streams; the listener's other routes still hold.
    b = procs.backend()
    routes = [{"name": "uploads", "match": {"prefix": "/upload"}, "cluster": "primary", "request_buffer": 0},
              {"name": "api", "match": {"prefix": "/"}, "cluster": "primary"}]
    u = procs.umbra(make_config({"primary": [b]}, routes=routes, workers=1))
    assert streams_from_the_first_byte(u, b, "/upload/log")
    assert not streams_from_the_first_byte(u, b, "/api/form")
