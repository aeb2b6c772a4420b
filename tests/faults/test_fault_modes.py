"""Every fault mode of fault_upstream.py, as umbra's primary and as its shadow.

As the primary, a fault is answered (502/504) or ends the client connection
when the response had already started, and is counted under the right
umbra_upstream_errors_total reason. As the shadow, the same fault costs the
mirror leg (the right outcome) and nothing else: every primary request is
answered at once, unchanged.

Run: UMBRA_BIN=build/asan/umbra python3 -m pytest -q -p no:cacheprovider tests/faults
"""

import os
import socket
import subprocess
import sys
import time

import pytest

from backends import PeerClosed, ProtocolError
from fault_upstream import FaultUpstream
from harness import Client, make_config, wait_until
from shadows import outcomes

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def fault():
    f = FaultUpstream("echo").start()
    yield f
    f.stop()


def _errors(u, reason):
    return u.metrics().sum("umbra_upstream_errors_total", cluster="primary", reason=reason)


# mode, params, what the client sees, the error reason counted
PRIMARY = [
    ("refuse", {}, 502, "connect_refused"),
    ("reset-before-response", {}, 502, "reset"),
    ("reset-after-headers", {}, "cut", "reset"),
    ("reset-mid-body", {}, "cut", "reset"),
    ("black-hole", {}, 504, "timeout"),
    ("tiny-window", {}, 504, "timeout"),
    ("slow", {"rate": "1"}, 504, "timeout"),
    ("1xx-storm", {"count": "100"}, 502, "protocol"),
]


@pytest.mark.parametrize("mode,params,want,reason", PRIMARY, ids=[p[0] for p in PRIMARY])
def test_primary_fault(procs, fault, mode, params, want, reason):
    u = procs.umbra(make_config({"primary": {"endpoints": [fault], "timeout": "1s"}}, workers=1))
    fault.set_mode(mode, **params)
    before = _errors(u, reason)
    t0 = time.monotonic()
    with Client(u.port, timeout=10) as c:
        c.send(b"GET /fault HTTP/1.1\r\nHost: t.example\r\n\r\n")
        try:
            r = c.read()
        except (PeerClosed, ProtocolError, ConnectionResetError):
            r = None
        if want == "cut":  # the head went out: a complete response must not
            assert r is None, "%s: the client got a complete %r" % (mode, r)
        else:
            assert r is not None and r.status == want, "%s: got %r, want %d" % (mode, r, want)
    took = time.monotonic() - t0
    assert took < 5, "%s: the client waited %.1fs (timeout 1s)" % (mode, took)
    wait_until(lambda: _errors(u, reason) > before, 5,
               what="umbra_upstream_errors_total{reason=%s} to move" % reason)
    # and the proxy is fine afterwards
    fault.set_mode("echo")
    assert u.get("/after").status == 200


# mode, params, the mirror outcome
SHADOW = [
    ("echo", {}, "completed"),
    ("refuse", {}, "failed_connect"),
    ("reset-before-response", {}, "failed_reset"),
    ("reset-after-headers", {}, "failed_reset"),
    ("reset-mid-body", {}, "failed_reset"),
    ("black-hole", {}, "failed_timeout"),
    ("tiny-window", {}, "failed_timeout"),
    ("slow", {"rate": "1"}, "failed_timeout"),
    ("malformed-cl-te", {}, "failed_protocol"),
    ("1xx-storm", {"count": "100"}, "failed_protocol"),
]


@pytest.mark.parametrize("mode,params,outcome", SHADOW, ids=[s[0] for s in SHADOW])
def test_shadow_fault_costs_only_the_copy(procs, fault, mode, params, outcome):
    primary = procs.backend("primary")
    fault.set_mode(mode, **params)
    cfg = make_config(
        {"primary": [primary],
         "shadow": {"endpoints": [fault], "timeout": "1s", "connect_timeout": "250ms",
                    "circuit_breaker": {"consecutive_failures": 0}}},
        routes=[{"name": "api", "match": {"prefix": "/"}, "cluster": "primary",
                 "mirrors": [{"cluster": "shadow", "fraction": "100%"}]}], workers=1)
    u = procs.umbra(cfg)
    n = 4
    worst = 0.0
    with Client(u.port) as c:
        for i in range(n):
            t0 = time.monotonic()
            r = c.request("POST", "/s%d" % i, body=b"x" * 1000)
            worst = max(worst, time.monotonic() - t0)
            assert r.status == 200 and r.json()["target"] == "/s%d" % i and r.json()["body_len"] == 1000
    assert worst < 0.5, "%s: a primary request waited %.2fs on the shadow" % (mode, worst)
    wait_until(lambda: sum(outcomes(u).values()) >= n, 10, what="%d mirror outcomes" % n)
    got = outcomes(u)
    assert got == {outcome: n}, "%s: mirror outcomes %s, want %d %s" % (mode, got, n, outcome)


def test_refuse_holds_the_port(fault):
    fault.set_mode("refuse")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", fault.port), timeout=2)
    fault.set_mode("echo")
    with socket.create_connection(("127.0.0.1", fault.port), timeout=2) as s:
        s.sendall(b"GET /up HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")


def test_control_file_switches_cli_mode(tmp_path):
    ctl = tmp_path / "ctl"
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "fault_upstream.py"), "--mode", "echo",
                          "--control", str(ctl), "--status", str(tmp_path / "st.json")],
                         stdout=subprocess.PIPE, start_new_session=True)
    try:
        line = p.stdout.readline()
        assert line.startswith(b"listening "), line
        port = int(line.split()[1])
        ctl.write_text("refuse\n")

        def refused():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return False
            except ConnectionRefusedError:
                return True

        wait_until(refused, 5, what="the control file to switch to refuse")
        ctl.write_text('{"mode": "echo"}\n')
        wait_until(lambda: not refused(), 5, what="the control file to switch back to echo")
    finally:
        p.terminate()
        assert p.wait(5) == 0
        p.stdout.close()
