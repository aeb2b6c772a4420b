"""Promises 1, 2 and 5: a shadow that is down, slow, black-holed, resetting,
answering garbage or barely reading never delays, fails or changes a primary
request; each fault is counted under its outcome; memory stays bounded; the
circuit breaker, max_body, buffer and max_pending drop copies, never primary
requests; and a shadow's answer never reaches the client."""

import hashlib
import os
import time

import pytest

from backends import closed_port
from harness import Client, build_request, chunked, make_config, wait_until
from shadows import (MB, RssSampler, mirror_config, only, outcomes, peers, record_body, run_load,  # noqa: F401
                     wait_outcomes)

# How much umbra's RSS may grow over its warmed-up figure while a faulty
# shadow takes 10,000 copies. With max_pending 1024 copies per worker in flight
# (about 16 KiB each, measured: ~32 MiB for 2 workers) there is room to spare;
# copies that leaked their chunks, or a queue without a bound, blow past it.
RSS_BOUND = 64 * MB
# Primary p99 with a faulty shadow vs with a healthy one: a functional check.
P99_FACTOR, P99_SLACK = 3.0, 0.020


def small_asan_quarantine(monkeypatch):
    """ASan keeps freed memory in a quarantine of up to 256 MiB, which would
    grow RSS with every request whatever umbra holds; a small one lets RSS
    show what umbra keeps."""
    opts = os.environ.get("ASAN_OPTIONS", "")
    monkeypatch.setenv("ASAN_OPTIONS", (opts + ":" if opts else "") + "quarantine_size_mb=8")


def two_route_config(primary, healthy, faulty):
    """/h/ is mirrored to a healthy collector, /f/ to the faulty shadow; both
    go to the same primary, so the two can be compared in one process."""
    shadow = {"endpoints": [faulty], "connect_timeout": "250ms", "timeout": "1s",
              # off: every copy meets the fault instead of a few then the breaker
              "circuit_breaker": {"consecutive_failures": 0}}
    clusters = {"primary": [primary], "healthy": {"endpoints": [healthy], "connect_timeout": "250ms",
                                                  "timeout": "2s"},
                "shadow": shadow}
    # the healthy mirror must complete every copy, even of bodies that arrive
    # faster than a new shadow connection opens: room for the biggest
    healthy_mirror = {"cluster": "healthy", "buffer": "1MiB"}
    mirror = {"cluster": "shadow"}
    routes = [
        {"name": "healthy", "match": {"prefix": "/h/"}, "cluster": "primary", "mirrors": [healthy_mirror]},
        {"name": "faulty", "match": {"prefix": "/f/"}, "cluster": "primary", "mirrors": [mirror]},
    ]
    return make_config(clusters, routes=routes, workers=2)


def fault_case(peer, n, post_every, post_size, allowed, must_move, peer_counter, exact=None):
    """peer: (mode, options) of the FaultShadow, None for a closed port; n
    requests through the fault, every post_every-th a POST of post_size bytes;
    the outcomes allowed, the ones that must move, the peer counter that shows
    the fault was met; exact(d, gets, posts) for outcomes known to the copy."""
    return dict(peer=peer, n=n, post_every=post_every, post_size=post_size, allowed=set(allowed),
                must_move=set(must_move), peer_counter=peer_counter, exact=exact)


FAULTS = {
    # every copy: connection refused, nothing else
    "down": fault_case(None, 3000, 10, 16 * 1024, {"failed_connect"}, {"failed_connect"}, None,
                  lambda d, gets, posts: d == {"failed_connect": gets + posts}),
    # answers after 500 ms, inside the 1 s timeout: copies complete (or, past
    # max_pending, are dropped) while the primary goes on at full speed
    "slow": fault_case(("slow", {"delay": 0.5}), 10000, 10, 16 * 1024, {"completed", "dropped_overflow"},
                  {"completed"}, "answered"),
    "blackhole": fault_case(("blackhole", {}), 10000, 10, 16 * 1024, {"failed_timeout", "dropped_overflow"},
                       {"failed_timeout"}, "accepted"),
    # reads the head, then RST while the body is still coming
    "reset": fault_case(("reset", {}), 3000, 5, 48 * 1024, {"failed_reset", "dropped_overflow"},
                   {"failed_reset"}, "resets"),
    "garbage": fault_case(("garbage", {}), 3000, 10, 16 * 1024, {"failed_protocol", "dropped_overflow"},
                     {"failed_protocol"}, "heads"),
    # reads a byte a second: copies sit in the socket buffers until they time
    # out; a 256 KiB POST may also overflow its 64 KiB buffer (the body comes
    # faster than the new connection opens), and past max_pending any copy
    # overflows. The window itself is test_barely_reading_shadow_overflows_copy.
    "tinywindow": fault_case(("tinywindow", {"rcvbuf": 1024, "interval": 1}), 3000, 10, 256 * 1024,
                             {"failed_timeout", "dropped_overflow"}, {"failed_timeout"}, "accepted"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_faulty_shadow_leaves_primary_untouched(procs, peers, fault, monkeypatch):
    small_asan_quarantine(monkeypatch)
    f = FAULTS[fault]
    spec, n, post_every, post_size = f["peer"], f["n"], f["post_every"], f["post_size"]
    primary = peers.primary()
    healthy = peers.collector("healthy")
    holder = None
    if spec is None:
        holder, port = closed_port()
        faulty_addr = "127.0.0.1:%d" % port
        shadow = None
    else:
        shadow = peers.fault(spec[0], **spec[1])
        faulty_addr = shadow.addr
    try:
        u = procs.umbra(two_route_config(primary, healthy, faulty_addr))
        load = dict(threads=4, post_every=post_every, post_size=post_size)
        # warm up both routes (pools, allocator, ASan's quarantine) before the baseline
        for prefix in ("/h/warm", "/f/warm"):
            w = run_load(u.port, 400, prefix=prefix, **load)
            assert w.failed == 0, w
        posts = w.posts  # of the faulty route's warm-up
        base_rss = u.rss_bytes()
        sampler = RssSampler(u.pid)
        sampler.start()
        healthy_runs, faulty_runs = [], []
        # alternate, so that a machine busy with other work hurts both alike
        for half in (0, 1):
            healthy_runs.append(run_load(u.port, 1000, prefix="/h/%d" % half, **load))
            faulty_runs.append(run_load(u.port, n // 2, prefix="/f/%d" % half, seconds=90, **load))
        peak = sampler.stop()
        for r in healthy_runs + faulty_runs:
            assert r.failed == 0, "primary requests failed with a %s shadow: %r" % (fault, r)
        assert sum(r.ok for r in faulty_runs) == n
        posts += sum(r.posts for r in faulty_runs)

        # every copy ends, each under an outcome this fault explains
        total = n + 400  # with the warm-up's
        d = wait_outcomes(u, total, timeout=20, route="faulty")
        assert sum(d.values()) == total, d
        assert not only(d, *f["allowed"]), "unexpected outcomes for a %s shadow: %s" % (fault, d)
        for o in f["must_move"]:
            assert d.get(o, 0) > 0, "%s did not move for a %s shadow: %s" % (o, fault, d)
        if f["exact"]:
            assert f["exact"](d, total - posts, posts), "outcomes for a %s shadow (%d GETs, %d POSTs): %s" % (
                fault, total - posts, posts, d)
        if f["peer_counter"]:
            st = shadow.stats()
            assert st.get(f["peer_counter"], 0) > 0, "the %s shadow saw nothing: %s" % (fault, st)
        h = outcomes(u, "healthy", "healthy")
        assert h == {"completed": 2400}, "the healthy mirror suffered: %s" % h
        if f["must_move"] - {"completed"}:
            assert "upstream: shadow request" in u.log(), "no shadow drop/failure was logged"

        lat_h = sorted(x for r in healthy_runs for x in r.latencies)
        lat_f = sorted(x for r in faulty_runs for x in r.latencies)
        p99_h = lat_h[int(0.99 * len(lat_h))]
        p99_f = lat_f[int(0.99 * len(lat_f))]
        print("%s: healthy p99 %.1f ms, faulty p99 %.1f ms, RSS %.1f -> %.1f MB, outcomes %s"
              % (fault, p99_h * 1e3, p99_f * 1e3, base_rss / MB, peak / MB, d))
        assert p99_f < P99_FACTOR * p99_h + P99_SLACK, (
            "primary p99 %.1f ms with a %s shadow vs %.1f ms with a healthy one" % (p99_f * 1e3, fault, p99_h * 1e3))
        assert peak - base_rss < RSS_BOUND, "RSS grew %.1f MB (%.1f -> %.1f MB) with a %s shadow" % (
            (peak - base_rss) / MB, base_rss / MB, peak / MB, fault)
    finally:
        if holder:
            holder.close()


# ---------------------------------------------------------------- circuit breaker

def get_ok(u, target, c=None):
    """One GET through umbra that must be answered 200 by the echo backend."""
    own = c is None
    c = c or Client(u.port)
    try:
        r = c.request("GET", target)
        assert r.status == 200 and r.json()["target"] == target, r
        return r
    finally:
        if own:
            c.close()


@pytest.mark.timeout(60)
def test_circuit_breaker_opens_then_recovers(procs, peers):
    b = procs.backend()
    shadow = peers.fault("answer", deferred=1)  # bound, refusing until come_up()
    open_for = 1.0
    cfg = mirror_config(b, {"shadow": {"endpoints": [shadow], "timeout": "2s",
                                       "circuit_breaker": {"consecutive_failures": 3, "open_for": "1s"}}},
                        [{"cluster": "shadow"}], workers=1)  # the breaker is per worker
    u = procs.umbra(cfg)
    sent = [0]

    def send(tag, c):
        """One request; returns when it was sent (its copy failed no earlier)."""
        t = time.monotonic()
        get_ok(u, "/cb/%s/%d" % (tag, sent[0]), c)
        sent[0] += 1
        return t

    with Client(u.port) as c:
        for i in range(3):
            t_third = send("fail", c)
        assert wait_outcomes(u, 3) == {"failed_connect": 3}
        for i in range(5):
            send("open", c)
        quick = time.monotonic() - t_third < open_for  # all five inside the open window
        d = wait_outcomes(u, 8)
        if quick:
            assert d == {"failed_connect": 3, "dropped_circuit_open": 5}, d
        else:  # a very slow machine: at least the first ones met the open circuit
            assert d.get("dropped_circuit_open", 0) >= 1 and d["failed_connect"] <= 4, d

        # after open_for, one probe goes through; it fails, so the circuit reopens
        probe = [0.0]

        def probed():
            probe[0] = send("probe1", c)
            return wait_outcomes(u, sent[0]).get("failed_connect") == 4

        wait_until(probed, 5, 0.05, "the half-open probe after open_for")
        assert time.monotonic() - t_third >= open_for, "a probe went out before open_for passed"
        send("reopened", c)
        quick = time.monotonic() - probe[0] < open_for
        d = wait_outcomes(u, sent[0])
        if quick:
            assert d["failed_connect"] == 4 and d["dropped_circuit_open"] == sent[0] - 4, d

        # the shadow comes up; after open_for the probe succeeds and closes the circuit
        shadow.come_up()
        wait_until(lambda: send("probe2", c) and wait_outcomes(u, sent[0]).get("completed") == 1, 5, 0.05,
                   "a copy to complete once the shadow is up")
        for i in range(10):
            send("closed", c)
    d = wait_outcomes(u, sent[0])
    assert d.get("completed") == 11 and d.get("failed_connect") == 4, d
    assert d["dropped_circuit_open"] == sent[0] - 15, d
    wait_until(lambda: shadow.stats().get("answered", 0) >= 11, 5, what="the shadow to answer 11 copies")
    assert "upstream: shadow request" in u.log()  # rate-limited: which reason shows first varies


# ---------------------------------------------------------------- bounds

@pytest.mark.timeout(60)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_max_body_drops_copy_not_request(procs, peers, framing):
    b = procs.backend()
    col = peers.collector(body=True)
    cfg = mirror_config(b, {"shadow": col}, [{"cluster": "shadow", "max_body": "1KiB"}])
    u = procs.umbra(cfg)
    fits, big = os.urandom(1024), os.urandom(4096)
    with Client(u.port) as c:
        for name, body in (("fits", fits), ("big", big)):
            headers = [("X-Request-Id", "max-body-%s-%s" % (framing, name))]
            if framing == "chunked":
                c.send(build_request("POST", "/mb/" + name, headers + [("Transfer-Encoding", "chunked")],
                                     chunked(body, sizes=(300,))))
                r = c.read("POST")
            else:
                r = c.request("POST", "/mb/" + name, headers, body)
            assert r.status == 200, r
            v = r.json()
            assert v["body_len"] == len(body) and v["body_sha256"] == hashlib.sha256(body).hexdigest()
    d = wait_outcomes(u, 2)
    assert d == {"completed": 1, "dropped_body_too_large": 1}, d
    got = col.by_request_id()
    assert list(got) == ["max-body-%s-fits" % framing], "collector got %s" % list(got)
    assert record_body(got["max-body-%s-fits" % framing][0]) == fits
    assert "shadow request dropped due to body too large" in u.log()


@pytest.mark.timeout(60)
def test_tiny_buffer_overflows_copy_not_request(procs, peers):
    b = procs.backend()
    col = peers.collector()
    cfg = mirror_config(b, {"shadow": col}, [{"cluster": "shadow", "buffer": "1KiB"}])
    u = procs.umbra(cfg)
    body = os.urandom(MB)
    with Client(u.port, timeout=30) as c:
        get_ok(u, "/small", c)  # a head fits in 1 KiB: this copy completes
        r = c.request("POST", "/big", [("X-Request-Id", "tiny-buffer-big")], body)
        assert r.status == 200, r
        v = r.json()
        assert v["body_len"] == MB and v["body_sha256"] == hashlib.sha256(body).hexdigest()
    d = wait_outcomes(u, 2)
    assert d == {"completed": 1, "dropped_overflow": 1}, d
    assert "tiny-buffer-big" not in col.by_request_id()
    assert "upstream: shadow request dropped due to overflow" in u.log()


@pytest.mark.timeout(60)
def test_max_pending_overflow_with_slow_shadow(procs, peers):
    primary = peers.primary()
    slow = peers.fault("slow", delay=0.5)
    cfg = mirror_config(primary, {"shadow": {"endpoints": [slow], "timeout": "5s", "max_pending": 1}},
                        [{"cluster": "shadow"}], workers=1)
    u = procs.umbra(cfg)
    res = run_load(u.port, 80, threads=8, seconds=30)
    assert res.failed == 0, res
    # the primary did not wait for the 500 ms shadow
    assert res.p(0.5) < 0.25, res
    d = wait_outcomes(u, 80, timeout=20)
    assert only(d, "completed", "dropped_overflow") == {} and d.get("completed", 0) >= 1, d
    assert d.get("dropped_overflow", 0) >= 40, d
    st = slow.stats()
    assert st["max_inflight"] == 1, "max_pending 1, yet the shadow held %d copies at once" % st["max_inflight"]
    assert st["requests"] == d["completed"], (st, d)


def record_seconds(rec):
    """The collector's arrival time of a copy (UTC, millisecond precision)."""
    day, clock = rec["time"].rstrip("Z").split("T")
    h, m, sec = clock.split(":")
    return int(h) * 3600 + int(m) * 60 + float(sec)


@pytest.mark.timeout(60)
def test_a_full_slow_shadow_gets_an_even_sample_not_waves(procs, peers):
    """A shadow of steady latency that holds max_pending frees its slots in
    the waves they were taken in; unpaced, each wave is refilled by the next
    requests at once, so the shadow gets bursts and production pays for a copy
    on every request of a burst. Past three quarters of max_pending, copies
    start no faster than the shadow finishes them: evenly spread."""
    primary = peers.primary()
    col = peers.collector(delay="300ms")
    max_pending, latency = 32, 0.3
    cfg = mirror_config(primary, {"shadow": {"endpoints": [col.addr], "timeout": "5s",
                                             "max_pending": max_pending, "pipeline": 1}},
                        [{"cluster": "shadow"}], workers=1)
    u = procs.umbra(cfg)
    # steady load for at least eight latencies (rounds of 2000 requests,
    # however fast this machine serves them)
    started, sent = time.monotonic(), 0
    while time.monotonic() - started < 8 * latency and sent < 40000:
        res = run_load(u.port, 2000, threads=8, seconds=20, prefix="/load%d" % sent)
        assert res.failed == 0, res
        sent += 2000
    took = time.monotonic() - started
    # bursts need requests faster than the paced rate; the load is far above it
    assert sent / took > 4 * max_pending / latency, "load too slow to tell: %.0f req/s" % (sent / took)
    d = wait_outcomes(u, sent, timeout=20)
    assert only(d, "completed", "dropped_overflow") == {}, d
    times = sorted(record_seconds(r) for r in col.records())
    assert len(times) == d["completed"], (len(times), d)
    # Below three quarters of max_pending copies start freely, so each wave
    # is refilled in part at once until the waves have flattened (measured:
    # bursts of 32, 25, 20, then none from the fourth cycle on). From then on,
    # how many copies reached the shadow within any 50 ms: paced, about 50 ms
    # over the 9.4 ms gap plus a burst of 2; in waves, most of max_pending.
    steady = [t for t in times if t >= times[0] + 4 * latency]
    assert len(steady) >= 2 * max_pending, "too few copies to judge: %d of %d over %.1f s (%s)" % (
        len(steady), len(times), took, d)
    window, most, j = 0.050, 0, 0
    for i, t in enumerate(steady):
        while steady[j] < t - window:
            j += 1
        most = max(most, i - j + 1)
    assert most <= max_pending // 2, "%d copies reached the shadow within 50 ms (of %d in flight at most)" % (
        most, max_pending)


def tinywindow_config(b, shadow, mirror, **top):
    return mirror_config(b, {"shadow": {"endpoints": [shadow], "timeout": "3s",
                                        "circuit_breaker": {"consecutive_failures": 0}}},
                         [dict(cluster="shadow", **mirror)], workers=1, **top)


@pytest.mark.timeout(60)
def test_barely_reading_shadow_overflows_copy_not_request(procs, peers):
    """The kernel takes a few MB into socket buffers however slowly the shadow
    reads; past that, a copy fills its buffer and is dropped."""
    b = procs.backend()
    shadow = peers.fault("tinywindow", rcvbuf=1024, interval=1)
    u = procs.umbra(tinywindow_config(b, shadow, {}))
    body = os.urandom(12 * MB)
    t0 = time.monotonic()
    with Client(u.port, timeout=30) as c:
        r = c.request("POST", "/window", body=body)
    assert r.status == 200 and r.json()["body_sha256"] == hashlib.sha256(body).hexdigest(), r
    assert time.monotonic() - t0 < 3.0, "the primary request took as long as the shadow's timeout"
    assert wait_outcomes(u, 1) == {"dropped_overflow": 1}
    assert shadow.stats()["accepted"] == 1


@pytest.mark.timeout(60)
def test_mirror_memory_bounds_all_copies(procs, peers):
    """Copies stuck behind a shadow that barely reads hold the body bytes the
    kernel would not take; together they may not pass mirror_memory (here
    smaller than one copy's own buffer), and the gauge shows it."""
    b = procs.backend()
    shadow = peers.fault("tinywindow", rcvbuf=1024, interval=1)
    limit = 8 * MB
    u = procs.umbra(tinywindow_config(b, shadow, {"buffer": "32MiB"}, mirror_memory="8MiB"))
    gauge = []
    body = os.urandom(7 * MB)  # fits mirror_memory alone, not twice
    with Client(u.port, timeout=30) as c:
        for i in range(3):
            r = c.request("POST", "/mem/%d" % i, body=body)
            assert r.status == 200 and r.json()["body_len"] == len(body), r
            gauge.append(u.metrics().sum("umbra_mirror_memory_bytes"))
    assert max(gauge) <= limit, "umbra_mirror_memory_bytes %s above mirror_memory %d" % (gauge, limit)
    assert max(gauge) > 1 * MB, "copies held little memory, the test proves nothing: %s" % gauge
    d = wait_outcomes(u, 3, timeout=15)
    # the first copy fits on its own and waits for the shadow until its timeout
    assert d.get("failed_timeout", 0) >= 1 and d.get("dropped_overflow", 0) >= 1, d
    assert only(d, "dropped_overflow", "failed_timeout") == {}, d
    wait_until(lambda: u.metrics().sum("umbra_mirror_memory_bytes") == 0, 5, 0.05,
               "umbra_mirror_memory_bytes back to 0 once every copy ended")


# ---------------------------------------------------------------- promise 5

@pytest.mark.timeout(60)
def test_shadow_answers_never_reach_the_client(procs, peers):
    b = procs.backend(mode="slow; delay=0.2")  # the shadows answer first
    col = peers.collector(status=500)
    loud = peers.fault("answer", status=500, body="SHADOW BODY MUST NOT LEAK\n", header="X-Shadow-Leak: yes")
    garbage = peers.fault("garbage")
    cfg = make_config({"primary": [b], "col": [col], "loud": [loud], "garbage": [garbage]}, routes=[
        {"name": "api", "match": {"prefix": "/"}, "cluster": "primary",
         "mirrors": [{"cluster": "col"}, {"cluster": "loud"}, {"cluster": "garbage"}]}])
    u = procs.umbra(cfg)
    with Client(u.port) as c:
        for i, (method, body) in enumerate([("GET", None), ("POST", b"x" * 1000), ("GET", None), ("HEAD", None)]):
            target = "/answer/%d" % i
            r = c.request(method, target, body=body)
            assert r.status == 200, r
            assert not r.all("x-shadow-leak") and not r.interim, r
            assert r.header("x-backend") == b.name, r
            if method == "HEAD":
                assert r.body == b""
                continue
            assert b"SHADOW" not in r.body
            v = r.json()
            assert v["target"] == target and v["method"] == method
        r = c.request("GET", "/after")  # and the connection is still in step
        assert r.status == 200 and r.json()["target"] == "/after"
    for cluster, outcome in (("col", "completed"), ("loud", "completed"), ("garbage", "failed_protocol")):
        d = wait_outcomes(u, 5, cluster=cluster)
        assert d == {outcome: 5}, (cluster, d)
