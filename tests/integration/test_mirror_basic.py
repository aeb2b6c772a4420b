"""Promise 3, faithful copies: what the shadow (umbra collect) records equals
what the primary received — method, target, version, every header in order,
body — except exactly the declared changes (Host suffix, x-umbra-shadow,
set_headers, remove_headers), matched by X-Request-Id. Also: a 50 MB streamed
body, several mirrors and several shadow endpoints, and a client that cancels
mid-body (the shadow must never see a complete request)."""

import hashlib
import os
import re

import pytest

from backends import pattern_chunks, pattern_sha256
from harness import Client, build_request, chunked, wait_until
from shadows import (MB, header_values, mirror_config, outcomes, peers, record_body,  # noqa: F401
                     wait_outcomes)

SUFFIX = "-shadow"
MIRROR = {"cluster": "shadow", "set_headers": {"x-env": "shadow"}, "remove_headers": ["x-debug"]}


def shadow_host(host):
    """a.example:8080 -> a.example-shadow:8080; the suffix goes on the host part."""
    m = re.match(r"^(.*?)(:\d+)?$", host)
    return m.group(1) + SUFFIX + (m.group(2) or "")


def expected_shadow_headers(primary_headers):
    """The primary's header list with exactly the declared changes applied,
    minus the fields the mirror adds (checked on their own)."""
    out = []
    for n, v in primary_headers:
        low = n.lower()
        if low in ("x-debug", "x-env", "x-umbra-shadow"):
            continue
        out.append([n, shadow_host(v) if low == "host" else v])
    return out


def assert_faithful(prim, shadow, sent_body):
    """prim: the Backend's record; shadow: the collector's (with --body)."""
    rid = header_values(prim["headers"], "x-request-id")
    assert (shadow["method"], shadow["target"], shadow["version"]) == (prim["method"], prim["target"], prim["version"]), (
        rid, shadow, prim)
    sh = shadow["headers"]
    assert header_values(sh, "x-umbra-shadow") == ["1"], (rid, sh)
    assert header_values(sh, "x-env") == ["shadow"], (rid, sh)
    assert header_values(sh, "x-debug") == [], (rid, sh)
    rest = [[n, v] for n, v in sh if n.lower() not in ("x-env", "x-umbra-shadow")]
    assert rest == expected_shadow_headers(prim["headers"]), (
        "headers differ beyond the declared changes for %s:\nprimary %s\nshadow  %s" % (rid, prim["headers"], sh))
    assert shadow["body_length"] == prim["body_len"] == len(sent_body), (rid, shadow["body_length"], prim["body_len"])
    assert shadow["body_sha256"] == hashlib.sha256(sent_body).hexdigest() == (prim["body_sha256"] or shadow["body_sha256"])
    assert record_body(shadow) == sent_body


def send_shape(c, name, rid):
    """Sends SHAPES[name] on client c, with X-Request-Id rid (None: none), and
    checks the primary's answer."""
    method, target, headers, body, framing = SHAPES[name]
    headers = list(headers) + ([("X-Request-Id", rid)] if rid else [])
    host = "a.example:8080" if name == "host-port" else "api.test"
    if framing == "chunked":
        raw = build_request(method, target, headers + [("Transfer-Encoding", "chunked")], None, host)
        c.send(raw + chunked(body, sizes=(1, 700, 4096, 3), trailers=[("X-Sum", "abc")]))
        r = c.read(method)
    else:
        r = c.request(method, target, headers, body if framing else None, host)
    assert r.status == 200, (name, r)


MANY = [("X-Many-%02d" % i, "value %d; with=stuff, and \"quotes\"" % i) for i in range(60)]

# name -> (method, target, headers, body, framing); framing "length"|"chunked"|None
SHAPES = {
    "get-query": ("GET", "/search/p%C3%A4th;v=1?q=a%20b&x=1&x=2&&empty=", [("Accept", "*/*")], b"", None),
    "head": ("HEAD", "/head?x", [], b"", None),
    "delete": ("DELETE", "/items/7", [], b"", None),
    "post-length": ("POST", "/upload?k=v", [("Content-Type", "application/octet-stream")],
                    bytes(range(256)) * 40 + b"\r\n\r\n0\r\n\r\n", "length"),
    "post-chunked": ("POST", "/chunked", [("Content-Type", "text/plain"), ("Trailer", "X-Sum")],
                     os.urandom(20000), "chunked"),
    "put-expect": ("PUT", "/expect", [("Expect", "100-continue")], b"x" * 3000, "length"),
    "many-headers": ("GET", "/many", MANY, b"", None),
    "duplicates": ("POST", "/dup", [("X-Dup", "one"), ("Cookie", "a=1"), ("x-dup", "two"), ("Cookie", "b=2"),
                                    ("X-DUP", "three, four")], b"dup body", "length"),
    "scrubbed": ("GET", "/scrub", [("X-Debug", "secret-token"), ("X-Keep", "1"), ("x-debug", "again")], b"", None),
    "env-replaced": ("GET", "/env", [("X-Env", "production"), ("X-Other", "o")], b"", None),
    "host-port": ("GET", "/hp", [], b"", None),
    "no-request-id": ("GET", "/generated-id", [], b"", None),
}


@pytest.mark.timeout(60)
def test_copies_equal_primary_except_declared_changes(procs, peers):
    b = procs.backend()
    col = peers.collector(body=True)
    u = procs.umbra(mirror_config(b, {"shadow": col}, [MIRROR]))
    sent = {}  # request id -> body
    generated = None
    with Client(u.port) as c:
        for name, (_, _, _, body, _) in SHAPES.items():
            rid = None if name == "no-request-id" else "rid-%s-%d" % (name, os.getpid())
            send_shape(c, name, rid)
            if name == "no-request-id":
                got = header_values(b.requests[-1]["headers"], "x-request-id")
                assert len(got) == 1 and got[0], got
                generated = rid = got[0]
            sent[rid] = body
    assert generated
    recs = col.wait_count(len(SHAPES), 10)
    assert len(recs) == len(SHAPES)
    by_id = col.by_request_id()
    prim_by_id = {header_values(p["headers"], "x-request-id")[0]: p for p in b.requests}
    assert set(by_id) == set(prim_by_id) == set(sent), (sorted(by_id), sorted(prim_by_id))
    for rid, body in sent.items():
        assert len(by_id[rid]) == 1, "%s copied %d times" % (rid, len(by_id[rid]))
        assert_faithful(prim_by_id[rid], by_id[rid][0], body)
    # what the client sent is there, in order, so "equal" above is not two
    # equally wrong copies
    dup = by_id["rid-duplicates-%d" % os.getpid()][0]["headers"]
    assert [v for n, v in dup if n.lower() in ("x-dup", "cookie")] == ["one", "a=1", "two", "b=2", "three, four"], dup
    many = by_id["rid-many-headers-%d" % os.getpid()][0]["headers"]
    assert [(n, v) for n, v in many if n.startswith("X-Many-")] == MANY
    hp = by_id["rid-host-port-%d" % os.getpid()][0]["headers"]
    assert header_values(hp, "host") == ["a.example-shadow:8080"], hp
    assert outcomes(u) == {"completed": len(SHAPES)}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_empty_body_with_content_length_copy_completes(procs, peers, method):
    """Content-Length: 0 is a complete request with an empty body; the copy
    is sent whole, answered, and counts as completed."""
    b = procs.backend()
    col = peers.collector(body=True)
    u = procs.umbra(mirror_config(b, {"shadow": col}, [MIRROR], workers=1))
    with Client(u.port) as c:
        r = c.request(method, "/empty", [("Content-Length", "0"), ("X-Request-Id", "cl0")])
        assert r.status == 200, r
        assert c.request("GET", "/next").status == 200
    # Two copies on two shadow connections may arrive in either order.
    rec = [r for r in col.wait_count(2) if header_values(r["headers"], "x-request-id") == ["cl0"]]
    assert len(rec) == 1, col.records()
    assert_faithful(b.requests[0], rec[0], b"")
    assert wait_outcomes(u, 2) == {"completed": 2}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("suffix", ["", "-canary"])
def test_host_suffix_configurable(procs, peers, suffix):
    b = procs.backend()
    col = peers.collector()
    u = procs.umbra(mirror_config(b, {"shadow": col}, [{"cluster": "shadow", "host_suffix": suffix}]))
    with Client(u.port) as c:
        assert c.request("GET", "/s", host="svc.local:81").status == 200
    rec = col.wait_count(1)[0]
    assert header_values(rec["headers"], "host") == ["svc.local%s:81" % suffix], rec["headers"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", ["http1", "h2"])
def test_50mb_streamed_body_reaches_shadow(procs, peers, protocol):
    """Over h2 the body goes in DATA frames under HTTP/2 flow control, still
    by reference."""
    size = 50 * MB
    b = procs.backend()
    col = peers.collector()
    shadow = {"endpoints": [col], "protocol": protocol}
    u = procs.umbra(mirror_config(b, {"shadow": shadow}, [{"cluster": "shadow", "buffer": "16MiB"}],
                                  mirror_memory="256MiB"))
    # The collector (ASan) reads several times slower than the primary, so the
    # client keeps the shadow's lag in check: each MiB goes out only while the
    # copy holds less than half its buffer (umbra_mirror_memory_bytes).
    with Client(u.port, timeout=60) as c:
        c.send(build_request("POST", "/big", [("Content-Length", str(size)), ("X-Request-Id", "big-50")]))
        for piece in pattern_chunks(size):
            wait_until(lambda: u.metrics().sum("umbra_mirror_memory_bytes") < 8 * MB, 30, 0.01,
                       "the shadow copy's backlog to drain below 8 MiB")
            c.send(piece)
        r = c.read("POST")
    assert r.status == 200, r
    v = r.json()
    assert v["body_len"] == size and v["body_sha256"] == pattern_sha256(size), v
    assert wait_outcomes(u, 1, timeout=30) == {"completed": 1}
    rec = col.wait_count(1)[0]
    assert header_values(rec["headers"], "x-request-id") == ["big-50"]
    assert rec["body_length"] == size and rec["body_sha256"] == pattern_sha256(size)


@pytest.mark.timeout(60)
def test_several_mirrors_and_endpoints(procs, peers):
    b = procs.backend()
    one = peers.collector("one")
    two_a, two_b = peers.collector("two_a"), peers.collector("two_b")
    shadows = {"one": one,
               # no idle connections kept: every copy opens one, so endpoint
               # choice shows per copy
               "two": {"endpoints": [two_a, two_b], "keepalive": {"max_idle": 0}}}
    u = procs.umbra(mirror_config(b, shadows, [{"cluster": "one"}, {"cluster": "two"}]))
    n = 40
    for k in range(4):  # several connections, so both workers take part
        with Client(u.port) as c:
            for i in range(n // 4):
                assert c.request("GET", "/multi/%d/%d" % (k, i)).status == 200
    assert wait_outcomes(u, n, cluster="one") == {"completed": n}
    assert wait_outcomes(u, n, cluster="two") == {"completed": n}
    ids_primary = sorted(header_values(p["headers"], "x-request-id")[0] for p in b.requests)
    ids_one = sorted(header_values(r["headers"], "x-request-id")[0] for r in one.wait_count(n))
    a_recs, b_recs = two_a.records(), two_b.records()
    ids_two = sorted(header_values(r["headers"], "x-request-id")[0] for r in a_recs + b_recs)
    assert ids_one == ids_primary == ids_two
    # round robin per worker: with 2 workers the counts differ by at most 2
    assert a_recs and b_recs and abs(len(a_recs) - len(b_recs)) <= 2, (len(a_recs), len(b_recs))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_client_cancel_mid_body_never_completes_copy(procs, peers, framing):
    b = procs.backend()
    col = peers.collector()
    watch = peers.fault("answer")  # a second shadow that shows bytes as they arrive
    shadows = {"shadow": {"endpoints": [col], "timeout": "5s"}, "watch": {"endpoints": [watch], "timeout": "5s"}}
    u = procs.umbra(mirror_config(b, shadows, [{"cluster": "shadow", "buffer": "1MiB"},
                                               {"cluster": "watch", "buffer": "1MiB"}]))
    full, half = 200000, 100000
    c = Client(u.port)
    if framing == "chunked":
        c.send(build_request("POST", "/cancel", [("Transfer-Encoding", "chunked"), ("X-Request-Id", "cancelled")]))
        c.send(b"%x\r\n" % full + b"c" * half)  # one chunk announced, half of it sent
    else:
        c.send(build_request("POST", "/cancel", [("Content-Length", str(full)), ("X-Request-Id", "cancelled")]))
        c.send(b"c" * half)
    wait_until(lambda: b.body_bytes_received >= half, 10, what="half the body at the primary")
    wait_until(lambda: watch.stats().get("bytes_in", 0) >= half, 10, what="half the body at the shadow")
    c.close()
    for cluster in ("shadow", "watch"):
        d = wait_outcomes(u, 1, cluster=cluster)
        assert d == {"failed_reset": 1}, (cluster, d)
    wait_until(lambda: b.aborted, 5, what="the primary to see the upload end early")
    # a later request is mirrored as usual, and is the only one the shadows saw complete
    with Client(u.port) as c2:
        assert c2.request("GET", "/after", [("X-Request-Id", "after")]).status == 200
    wait_outcomes(u, 2, cluster="shadow")
    recs = col.wait_count(1)
    assert [header_values(r["headers"], "x-request-id") for r in recs] == [["after"]], recs
    assert all(r["body_length"] != full for r in recs)
    assert wait_outcomes(u, 2, cluster="watch") == {"failed_reset": 1, "completed": 1}
    # its status file is rewritten at most every 50 ms
    wait_until(lambda: watch.stats().get("requests") == 1, 5, what="the watch shadow to count /after")
    assert watch.stats()["requests"] == 1
