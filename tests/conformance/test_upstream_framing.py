"""Upstream responses with bad framing.

A primary that answers with ambiguous or malformed framing (CL+TE, two
Content-Lengths, a bad status line, a bad chunk size, a 1xx storm) makes umbra
answer 502 — or, when the response head was valid and already on its way,
close the client connection before a complete response — count a protocol
error, and never reuse that upstream connection. On the shadow side the same
answers drop the mirror leg as failed_protocol and leave the primary alone.
"""

import json

import pytest

from backends import PeerClosed, ProtocolError
from fault_upstream import FaultUpstream
from harness import Client, make_config, wait_until
from shadows import outcomes

HEAD_ERRORS = ["malformed-cl-te", "malformed-dup-cl", "malformed-status", "1xx-storm"]
BODY_ERRORS = ["malformed-chunk"]


@pytest.fixture
def fault():
    f = FaultUpstream("echo").start()
    yield f
    f.stop()


def _protocol_errors(u):
    return u.metrics().sum("umbra_upstream_errors_total", cluster="primary", reason="protocol")


def _conn_of_last(f):
    with f.lock:
        return f.requests[-1]["conn"]


@pytest.mark.parametrize("mode", HEAD_ERRORS + BODY_ERRORS)
def test_primary_bad_framing(procs, fault, mode):
    u = procs.umbra(make_config({"primary": [fault]}, workers=1))
    # a healthy exchange first, so a kept-alive connection exists to be misused
    with Client(u.port) as c:
        assert c.request("GET", "/warm").status == 200
    warm_conn = _conn_of_last(fault)
    before = _protocol_errors(u)

    fault.set_mode(mode)
    with Client(u.port, timeout=10) as c:
        c.send(b"GET /bad HTTP/1.1\r\nHost: t.example\r\n\r\n")
        try:
            r = c.read()
        except (PeerClosed, ProtocolError, ConnectionResetError):
            r = None
        if mode in HEAD_ERRORS:
            assert r is not None and r.status == 502, "%s: got %r, want 502" % (mode, r)
        else:  # the head was fine and may have gone out: then only a close is honest
            assert r is None or r.status == 502, "%s: client got a complete %r" % (mode, r)
            if r is None:
                assert c.is_closed(3)
    bad_conn = _conn_of_last(fault)
    wait_until(lambda: _protocol_errors(u) == before + 1, 5,
               what="umbra_upstream_errors_total{reason=protocol} to count the %s answer" % mode)

    fault.set_mode("echo")
    with Client(u.port) as c:
        r = c.request("GET", "/after")
        assert r.status == 200
        after_conn = json.loads(r.body)["conn"]
    assert after_conn != bad_conn, "%s: the connection that answered junk was reused" % mode
    assert bad_conn in (warm_conn, bad_conn)  # (the bad answer may have come on the warm one)


@pytest.mark.parametrize("mode", HEAD_ERRORS + BODY_ERRORS)
def test_shadow_bad_framing_drops_mirror_leg(procs, fault, mode):
    primary = procs.backend("primary")
    fault.set_mode(mode)
    cfg = make_config(
        {"primary": [primary], "shadow": {"endpoints": [fault], "timeout": "5s",
                                          "circuit_breaker": {"consecutive_failures": 0}}},
        routes=[{"name": "api", "match": {"prefix": "/"}, "cluster": "primary",
                 "mirrors": [{"cluster": "shadow", "fraction": "100%"}]}], workers=1)
    u = procs.umbra(cfg)
    n = 5
    with Client(u.port) as c:
        for i in range(n):
            r = c.request("POST", "/m%d" % i, body=b"payload-%d" % i)
            assert r.status == 200 and r.json()["target"] == "/m%d" % i
    wait_until(lambda: sum(outcomes(u).values()) >= n, 10, what="%d mirror outcomes" % n)
    got = outcomes(u)
    assert got == {"failed_protocol": n}, "%s: mirror outcomes %s" % (mode, got)
    with fault.lock:
        conns = [r["conn"] for r in fault.requests]
    assert len(conns) == n and len(set(conns)) == n, \
        "%s: a shadow connection that answered junk was reused: %s" % (mode, conns)
    assert len(primary.requests) == n
