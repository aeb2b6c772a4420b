"""Plain reverse proxying through real clients: keep-alive, pipelining, body
framings both ways, trailers, 100-continue, HEAD/204/304, hop-by-hop fields,
X-Forwarded-*, X-Request-Id, round robin and routing."""

import hashlib
import http.client
import json
import os
import subprocess
import threading

import pytest

from harness import Client, build_request, chunked, counter, make_config, wait_until


def seen(resp):
    """The backend's JSON description of the request behind a response."""
    assert resp.status == 200, resp
    return resp.json()


def hdrs(view, name):
    return [v for n, v in view["headers"] if n.lower() == name.lower()]


def test_curl_get(proxy):
    out = subprocess.run(["curl", "-sS", "-i", "--max-time", "10", "http://127.0.0.1:%d/api/hello?x=1&y=%%20" % proxy.port],
                         capture_output=True, timeout=15)
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    view = json.loads(body)
    assert view["method"] == "GET"
    assert view["target"] == "/api/hello?x=1&y=%20"
    assert hdrs(view, "host") == ["127.0.0.1:%d" % proxy.port]
    assert hdrs(view, "user-agent") and hdrs(view, "user-agent")[0].startswith("curl/")


def test_client_keepalive_with_http_client(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.connect()
    first_sock = conn.sock
    for i in range(5):
        conn.request("GET", "/k/%d" % i)
        r = conn.getresponse()
        body = json.loads(r.read())
        assert r.status == 200 and body["target"] == "/k/%d" % i
        assert not r.will_close, "umbra closed a keep-alive connection: %s" % r.getheaders()
        assert conn.sock is first_sock
    conn.close()
    assert len(proxy.backend.requests) == 5


def test_upstream_connections_are_reused(proxy):
    for i in range(10):
        assert proxy.umbra.get("/reuse/%d" % i).status == 200
    # two workers: at most one kept-alive upstream connection each
    assert proxy.backend.connections <= 2, "%d upstream connections for 10 sequential requests" % proxy.backend.connections


def test_pipelined_requests_answered_in_order(proxy):
    with Client(proxy.port) as c:
        c.send(build_request("GET", "/p1") +
               build_request("POST", "/p2", body=b"hello pipelining") +
               build_request("HEAD", "/p3") +
               build_request("GET", "/p4", [("X-Backend-Mode", "chunked")]) +
               build_request("GET", "/p5"))
        r1, r2, r3, r4, r5 = (c.read(m) for m in ("GET", "POST", "HEAD", "GET", "GET"))
    assert seen(r1)["target"] == "/p1"
    v2 = seen(r2)
    assert v2["target"] == "/p2" and v2["body_sha256"] == hashlib.sha256(b"hello pipelining").hexdigest()
    assert r3.status == 200 and r3.body == b"" and int(r3.header("content-length")) > 0
    assert seen(r4)["target"] == "/p4"
    assert seen(r5)["target"] == "/p5"


def test_request_body_content_length(proxy):
    body = os.urandom(300_000)
    with Client(proxy.port) as c:
        v = seen(c.request("PUT", "/upload", body=body))
    assert v["body_len"] == len(body) and v["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_request_body_chunked(proxy):
    body = os.urandom(200_000)
    with Client(proxy.port) as c:
        c.send(build_request("POST", "/chunked", [("Transfer-Encoding", "chunked")]) +
               chunked(body, sizes=(1, 4096, 17, 65536, 3)))
        v = seen(c.read())
        # the connection still frames correctly afterwards
        assert seen(c.request("GET", "/after"))["target"] == "/after"
    assert v["body_len"] == len(body) and v["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert v["framing"] in ("chunked", "length")


def test_request_trailers_forwarded(proxy):
    body = b"payload with trailers"
    with Client(proxy.port) as c:
        c.send(build_request("POST", "/trail", [("Transfer-Encoding", "chunked"), ("Trailer", "X-Checksum")]) +
               chunked(body, trailers=[("X-Checksum", "abc123")]))
        v = seen(c.read())
    assert v["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert ["X-Checksum", "abc123"] in v["trailers"], v


def test_chunked_response(proxy):
    with Client(proxy.port) as c:
        r = c.request("GET", "/ch", [("X-Backend-Mode", "chunked; piece=3")])
        assert r.framing == "chunked"
        assert seen(r)["target"] == "/ch"
        assert seen(c.request("GET", "/next"))["target"] == "/next"


def test_until_close_response_becomes_chunked_for_http11(proxy):
    with Client(proxy.port) as c:
        r = c.request("GET", "/uc", [("X-Backend-Mode", "until-close")])
        assert r.status == 200 and r.framing == "chunked", r
        assert seen(r)["target"] == "/uc"
        # the client connection survives: the body's end was framed, not a close
        assert seen(c.request("GET", "/uc2"))["target"] == "/uc2"


def test_until_close_response_for_http10_client(proxy):
    with Client(proxy.port) as c:
        r = c.request("GET", "/uc10", [("X-Backend-Mode", "until-close")], version="HTTP/1.0")
        assert r.status == 200 and r.framing in ("close", "length"), r
        assert r.header("transfer-encoding") is None
        assert seen(r)["target"] == "/uc10"
        assert c.is_closed(5)


def test_http10_request_gets_close(proxy):
    with Client(proxy.port) as c:
        r = c.request("GET", "/ten", version="HTTP/1.0")
        assert seen(r)["target"] == "/ten"
        assert c.is_closed(5), "HTTP/1.0 request without keep-alive left the connection open"


def test_connection_close_from_client(proxy):
    with Client(proxy.port) as c:
        assert seen(c.request("GET", "/bye", [("Connection", "close")]))["target"] == "/bye"
        assert c.is_closed(5)


def test_response_trailers_forwarded(proxy):
    with Client(proxy.port) as c:
        r = c.request("GET", "/rt", [("X-Backend-Mode", "trailers"), ("TE", "trailers")])
        assert r.status == 200 and r.framing == "chunked"
        digest = hashlib.sha256(r.body).hexdigest()
        assert ("X-Checksum", digest) in r.trailers, r.trailers
        assert ("X-Trailer-Two", "two") in r.trailers


def test_expect_100_continue_with_curl(proxy, tmp_path):
    data = os.urandom(3 << 20)
    f = tmp_path / "upload.bin"
    f.write_bytes(data)
    out = subprocess.run(["curl", "-sS", "--max-time", "20", "-H", "Expect: 100-continue", "--data-binary",
                          "@%s" % f, "-w", "\n%{http_code}", "http://127.0.0.1:%d/up" % proxy.port],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    body, _, code = out.stdout.rpartition(b"\n")
    assert code == b"200"
    v = json.loads(body)
    assert v["body_len"] == len(data) and v["body_sha256"] == hashlib.sha256(data).hexdigest()


def test_expect_100_continue_raw(proxy):
    body = b"x" * 5000
    with Client(proxy.port) as c:
        c.send(build_request("POST", "/expect", [("Expect", "100-continue"), ("Content-Length", str(len(body)))]))
        c.sock.settimeout(5)
        head = c.reader.read_head()
        assert head is not None and head.startswith(b"HTTP/1.1 100"), \
            "no 100 Continue before the body was sent: %r" % head
        c.send(body)
        c.sock.settimeout(10)
        v = seen(c.read("POST"))
    assert v["body_len"] == len(body)


@pytest.mark.parametrize("mode", ["echo", "chunked"])
def test_head_response_has_no_body(proxy, mode):
    with Client(proxy.port, timeout=5) as c:
        r = c.request("HEAD", "/h", [("X-Backend-Mode", mode)])
        assert r.status == 200 and r.body == b""
        if mode == "echo":
            assert int(r.header("content-length")) > 0
        # if umbra forwarded or waited for a body, this request would misparse or hang
        assert seen(c.request("GET", "/after-head"))["target"] == "/after-head"


@pytest.mark.parametrize("code", [204, 304])
def test_204_304_have_no_body(proxy, code):
    with Client(proxy.port, timeout=5) as c:
        r = c.request("GET", "/s", [("X-Backend-Mode", "status; code=%d; cl=777" % code)])
        assert r.status == code and r.body == b""
        if code == 204:
            assert r.header("transfer-encoding") is None and r.header("content-length") in (None, "0")
        assert seen(c.request("GET", "/after"))["target"] == "/after"


def test_hop_by_hop_request_fields_not_forwarded(proxy):
    with Client(proxy.port) as c:
        v = seen(c.request("GET", "/hop", [
            ("X-Before", "1"),
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("X-Secret-Hop", "must-not-pass"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Upgrade", "websocket"),
            ("X-After", "2"),
        ]))
    names = [n.lower() for n, _ in v["headers"]]
    for hop in ("x-secret-hop", "keep-alive", "proxy-connection", "te", "upgrade"):
        assert hop not in names, "%s forwarded: %s" % (hop, v["headers"])
    for value in hdrs(v, "connection"):
        assert "x-secret-hop" not in value.lower()
    # end-to-end fields pass, in their order
    assert names.index("x-before") < names.index("x-after")
    assert hdrs(v, "x-before") == ["1"] and hdrs(v, "x-after") == ["2"]


def test_transfer_encoding_field_not_forwarded_as_is(proxy):
    body = b"0123456789" * 10
    with Client(proxy.port) as c:
        c.send(build_request("POST", "/te", [("Transfer-Encoding", "chunked")]) + chunked(body))
        v = seen(c.read())
    # umbra frames the upstream body itself: exactly one framing, matching the body
    te, cl = hdrs(v, "transfer-encoding"), hdrs(v, "content-length")
    assert not (te and cl)
    assert te == ["chunked"] or cl == [str(len(body))], v["headers"]
    assert v["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_hop_by_hop_response_fields_not_forwarded(proxy):
    with Client(proxy.port) as c:
        r = c.request("GET", "/hop", [("X-Backend-Mode", "hop")])
        assert r.status == 200
        names = r.names()
        for hop in ("x-resp-hop", "keep-alive", "proxy-connection", "upgrade"):
            assert hop not in names, "%s reached the client: %s" % (hop, r.headers)
        for value in r.all("connection"):
            assert "x-resp-hop" not in value.lower()
        assert r.header("x-end-to-end") == "kept"
        assert seen(c.request("GET", "/still-open"))["target"] == "/still-open"


def test_x_forwarded_for_appended(proxy):
    with Client(proxy.port) as c:
        v1 = seen(c.request("GET", "/xff", [("X-Forwarded-For", "203.0.113.7")]))
        v2 = seen(c.request("GET", "/xff"))
    assert hdrs(v1, "x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]
    assert hdrs(v2, "x-forwarded-for") == ["127.0.0.1"]
    assert hdrs(v1, "x-forwarded-proto") == ["http"] and hdrs(v2, "x-forwarded-proto") == ["http"]


def test_x_forwarded_proto_replaced(proxy):
    with Client(proxy.port) as c:
        v = seen(c.request("GET", "/xfp", [("X-Forwarded-Proto", "https")]))
    assert hdrs(v, "x-forwarded-proto") == ["http"], v["headers"]


def test_x_request_id_kept_or_generated(proxy):
    with Client(proxy.port) as c:
        kept = seen(c.request("GET", "/rid", [("X-Request-Id", "my-id-42")]))
        generated = [hdrs(seen(c.request("GET", "/rid/%d" % i)), "x-request-id") for i in range(20)]
    assert hdrs(kept, "x-request-id") == ["my-id-42"]
    assert all(len(g) == 1 and g[0].strip() for g in generated), generated
    ids = [g[0] for g in generated]
    assert len(set(ids)) == len(ids), "request ids repeat: %s" % ids


def test_round_robin(procs):
    a, b = procs.backend("a"), procs.backend("b")
    u = procs.umbra(make_config({"primary": [a, b]}, workers=1))
    order = []
    with Client(u.port) as c:
        for i in range(20):
            order.append(seen(c.request("GET", "/rr/%d" % i))["backend"])
    assert order.count("a") == 10 and order.count("b") == 10, order
    assert all(x != y for x, y in zip(order, order[1:])), "not round robin: %s" % order


def test_idle_client_connection_closed(procs):
    b = procs.backend()
    u = procs.umbra(make_config({"primary": [b]}, limits={"idle_timeout": "1s"}))
    with Client(u.port) as c:
        assert seen(c.request("GET", "/idle"))["target"] == "/idle"
        assert c.is_closed(6), "idle keep-alive connection still open 6s after a 1s idle_timeout"


BUF_CHUNK_SIZE = 16384  # src/core/buf.h


def test_idle_keepalive_clients_hold_no_buffers(procs):
    """Between requests a keep-alive client holds no buffer chunk, neither for
    what it sends nor for what it is sent: 200 idle clients that each made a
    request with a body cost the worker less than two chunks in all (each
    would hold two, 32 KiB, if either were kept)."""
    b = procs.backend()
    u = procs.umbra(make_config({"primary": [b]}, workers=1))
    clients = []
    try:
        for k in range(200):
            c = Client(u.port)
            clients.append(c)
            assert seen(c.request("POST", "/idle/%d" % k, body=b"x" * 3000))["target"] == "/idle/%d" % k
        # The gauge is published at the end of each loop iteration.
        wait_until(lambda: counter(u, "umbra_worker_buffer_bytes") < 2 * BUF_CHUNK_SIZE, timeout=5,
                   what="umbra_worker_buffer_bytes under two chunks with 200 idle clients")
        assert seen(clients[0].request("GET", "/still-open"))["target"] == "/still-open"
    finally:
        for c in clients:
            c.close()


def test_max_requests_per_connection(procs):
    b = procs.backend()
    u = procs.umbra(make_config({"primary": [b]}, limits={"max_requests_per_connection": 3}))
    with Client(u.port) as c:
        for i in range(2):
            r = c.request("GET", "/n/%d" % i)
            assert r.status == 200 and "close" not in (r.header("connection") or "").lower()
        r = c.request("GET", "/n/2")
        assert r.status == 200 and "close" in (r.header("connection") or "").lower(), r
        assert c.is_closed(5)


@pytest.mark.timeout(60)
def test_many_concurrent_clients(proxy):
    n_clients, n_requests = 64, 5
    failures = []

    def client(k):
        try:
            with Client(proxy.port, timeout=20) as c:
                for i in range(n_requests):
                    r = c.request("POST", "/c/%d/%d" % (k, i), body=b"%d" % k * 100)
                    if r.status != 200 or r.json()["target"] != "/c/%d/%d" % (k, i):
                        failures.append((k, i, r))
        except Exception as e:
            failures.append((k, e))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not failures, failures[:5]
    assert len(proxy.backend.requests) == n_clients * n_requests


# ---- routing: one umbra for the whole table ----

@pytest.fixture(scope="module")
def routed(module_procs):
    bs = {n: module_procs.backend(n) for n in ("exact", "prefix", "regex", "host", "method")}
    routes = [
        {"name": "exact", "match": {"exact": "/exact"}, "cluster": "c_exact"},
        {"name": "api", "match": {"prefix": "/api/"}, "cluster": "c_prefix"},
        {"name": "re", "match": {"regex": "^/re/[0-9]+$"}, "cluster": "c_regex"},
        {"name": "host", "match": {"prefix": "/", "host": "admin.example"}, "cluster": "c_host"},
        {"name": "writes", "match": {"prefix": "/m/", "methods": ["POST", "PUT"]}, "cluster": "c_method"},
    ]
    cfg = make_config({"c_" + n: [b] for n, b in bs.items()}, routes=routes)
    u = module_procs.umbra(cfg, name="routed")
    return u, bs


@pytest.mark.parametrize("method,target,host,want", [
    ("GET", "/exact", "x.test", "exact"),
    ("GET", "/exact/more", "x.test", None),
    ("GET", "/exactly", "x.test", None),
    ("GET", "/api/v1/users", "x.test", "prefix"),
    ("GET", "/api/", "x.test", "prefix"),
    ("GET", "/api", "x.test", None),
    ("GET", "/re/12345", "x.test", "regex"),
    ("GET", "/re/12a", "x.test", None),
    ("GET", "/anything", "admin.example", "host"),
    ("GET", "/anything", "ADMIN.Example:8080", "host"),
    ("GET", "/api/first-match-wins", "admin.example", "prefix"),
    ("POST", "/m/x", "x.test", "method"),
    ("PUT", "/m/x", "x.test", "method"),
    ("GET", "/m/x", "x.test", None),
    ("DELETE", "/m/x", "x.test", None),
    ("GET", "/", "other.example", None),
])
def test_routing(routed, method, target, host, want):
    u, bs = routed
    before = {n: len(b.heads) for n, b in bs.items()}
    with Client(u.port) as c:
        body = b"data" if method in ("POST", "PUT") else None
        r = c.request(method, target, [("Connection", "close")], body=body, host=host)
    if want is None:
        assert r.status == 404, r
    else:
        assert r.status == 200, r
        assert r.json()["backend"] == want and r.json()["target"] == target
    after = {n: len(b.heads) for n, b in bs.items()}
    delta = {n: after[n] - before[n] for n in bs}
    assert delta == {n: int(n == want) for n in bs}, "requests seen per backend: %s" % delta
