"""Operating the process: reload by SIGHUP and by POST /reload (valid configs
take effect, invalid ones leave the old one in force), reload under load
without a single failed request, and a graceful drain on SIGTERM."""

import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

from harness import Client, connect_refused, make_config, to_yaml, wait_until


def served_by(u, target="/which"):
    r = u.get(target)
    assert r.status == 200, r
    return r.json()["backend"]


def two_configs(procs, **kw):
    a, b = procs.backend("a"), procs.backend("b")
    clusters = {"ca": [a], "cb": [b]}
    to_a = make_config(clusters, routes=[{"name": "all", "match": {"prefix": "/"}, "cluster": "ca"}], **kw)
    to_b = make_config(clusters, routes=[{"name": "all", "match": {"prefix": "/"}, "cluster": "cb"}], **kw)
    return a, b, to_a, to_b


def broken(cfg):
    """A config whose only fault is a route to an unknown cluster."""
    text = to_yaml(cfg) + "\n"
    return text.replace("cluster: ca", "cluster: nowhere").replace("cluster: cb", "cluster: nowhere")


def config_error_logged(u):
    return re.search(re.escape(u.config_path) + r":\d+:\d+: ", u.log())


def test_sighup_applies_new_config(procs):
    a, b, to_a, to_b = two_configs(procs)
    u = procs.umbra(to_a)
    assert served_by(u) == "a"
    u.write_config(to_b)
    u.reload_signal()
    wait_until(lambda: served_by(u) == "b", 5, 0.05, "SIGHUP to switch the route to backend b")
    assert [served_by(u) for _ in range(5)] == ["b"] * 5


def test_sighup_with_invalid_config_keeps_old(procs):
    a, b, to_a, to_b = two_configs(procs)
    u = procs.umbra(to_a)
    assert served_by(u) == "a"
    u.write_config(broken(to_b))
    u.reload_signal()
    wait_until(lambda: config_error_logged(u), 5, 0.05, "the failed reload's error (FILE:LINE:COL) in the log")
    assert u.alive(), "umbra exited on an invalid reload"
    assert [served_by(u) for _ in range(5)] == ["a"] * 5
    # and a later valid reload still works
    u.write_config(to_b)
    u.reload_signal()
    wait_until(lambda: served_by(u) == "b", 5, 0.05, "a valid SIGHUP after a failed one")


def test_admin_reload(procs):
    a, b, to_a, to_b = two_configs(procs)
    u = procs.umbra(to_a)
    assert served_by(u) == "a"

    u.write_config(broken(to_b))
    status, body = u.admin("POST", "/reload")
    assert 400 <= status < 600, "invalid reload answered %d %r" % (status, body)
    assert re.search(rb":\d+:\d+: ", body), "reload error does not say where: %r" % body
    assert u.alive()
    assert [served_by(u) for _ in range(3)] == ["a"] * 3

    u.write_config(to_b)
    status, body = u.admin("POST", "/reload")
    assert 200 <= status < 300, "valid reload answered %d %r" % (status, body)
    wait_until(lambda: served_by(u) == "b", 5, 0.05, "POST /reload to switch the route to backend b")
    assert [served_by(u) for _ in range(3)] == ["b"] * 3


def test_reload_keeps_client_keepalive_connection(procs):
    a, b, to_a, to_b = two_configs(procs)
    u = procs.umbra(to_a)
    with Client(u.port) as c:
        assert c.request("GET", "/one").json()["backend"] == "a"
        u.write_config(to_b)
        assert u.admin("POST", "/reload")[0] == 200
        # the same client connection goes on, and picks the new routes up
        # between requests
        def next_is_b():
            r = c.request("GET", "/two")
            assert r.status == 200, r
            return r.json()["backend"] == "b"
        wait_until(next_is_b, 5, 0.05, "the kept-alive connection to see the new config")


@pytest.mark.timeout(90)
def test_reload_under_load_loses_nothing(procs):
    assert shutil.which("wrk"), "wrk is not installed"
    a, b, to_a, to_b = two_configs(procs, workers=2)
    u = procs.umbra(to_a)
    wrk = subprocess.Popen(["wrk", "-t2", "-c16", "-d6s", "--timeout", "5s", "http://127.0.0.1:%d/load" % u.port],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    reloads = 0
    try:
        configs = [to_b, to_a] * 3
        for i, cfg in enumerate(configs):
            # spread the reloads over the run: one every 0.7 s, with traffic between them
            total, due = len(a.requests) + len(b.requests), time.monotonic() + 0.7
            wait_until(lambda: (time.monotonic() >= due and len(a.requests) + len(b.requests) >= total + 100)
                       or wrk.poll() is not None, 10, 0.02, "load to flow between reloads")
            if wrk.poll() is not None:
                break
            u.write_config(cfg)
            if i % 2:
                u.reload_signal()
            else:
                status, body = u.admin("POST", "/reload")
                assert status == 200, body
            reloads += 1
        out, _ = wrk.communicate(timeout=30)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    text = out.decode()
    print("%d reloads during:\n%s" % (reloads, text))
    assert wrk.returncode == 0, text
    assert reloads >= 4, "only %d reloads happened during the run:\n%s" % (reloads, text)
    assert "Non-2xx" not in text, text
    assert "Socket errors" not in text, text
    m = re.search(r"(\d+) requests in", text)
    assert m and int(m.group(1)) >= 1000, text
    assert a.requests and b.requests, "the reloads did not switch backends"
    assert u.alive()


@pytest.mark.timeout(40)
def test_sigterm_drains_in_flight_request(procs):
    b = procs.backend(mode="slow; delay=4")
    u = procs.umbra(make_config({"primary": [b]}))
    result = {}

    def slow():
        try:
            with Client(u.port, timeout=20) as c:
                result["resp"] = c.request("GET", "/in-flight")
        except Exception as e:
            result["error"] = e

    t = threading.Thread(target=slow)
    t.start()
    wait_until(lambda: b.heads, 5, what="the slow request to reach the backend")
    u.signal(signal.SIGTERM)
    t0 = time.monotonic()
    wait_until(lambda: connect_refused(u.port), 3, 0.05, "new connections to be refused during the drain")
    assert t.is_alive(), "the in-flight request ended before the drain check"
    t.join(20)
    assert "error" not in result, "in-flight request failed during drain: %r" % result.get("error")
    r = result["resp"]
    assert r.status == 200 and r.json()["target"] == "/in-flight"
    code = u.wait_exit(10)
    assert code == 0, "exit code %r %.1fs after SIGTERM" % (code, time.monotonic() - t0)


@pytest.mark.timeout(30)
def test_sigterm_with_idle_keepalive_connection_exits_promptly(procs):
    b = procs.backend()
    u = procs.umbra(make_config({"primary": [b]}))
    with Client(u.port) as c:
        assert c.request("GET", "/idle").status == 200
        u.signal(signal.SIGTERM)
        # an idle connection has nothing in flight: umbra closes it and exits
        assert c.is_closed(10)
        assert u.wait_exit(10) == 0
