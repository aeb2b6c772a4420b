"""Shadow clusters with `protocol: h2`: copies go to the shadow over HTTP/2
(h2c with prior knowledge here), every copy in flight a stream on one
connection. What the shadow (umbra collect, which speaks h2c) records equals
what the primary received over HTTP/1.1, with HTTP/2's spelling (lowercase
names, no Transfer-Encoding) and the declared changes; a slow shadow holds
hundreds of copies on one connection; a shadow that fails fails its copies
with the right outcome and never the primary; a bad config says where."""

import hashlib
import os
import socket
import subprocess
import threading
import time

import pytest

from backends import closed_port
from harness import Client, wait_until
from shadows import MB, _stop_pid, header_values, mirror_config, outcomes, peers, record_body, wait_outcomes  # noqa: F401
from test_mirror_basic import SHAPES, send_shape, shadow_host
from test_mirror_pipelining import burst
from test_tls import pki  # noqa: F401
from tls_util import server_context, tls_backend

MIRROR = {"cluster": "shadow", "set_headers": {"x-env": "shadow"}, "remove_headers": ["x-debug"]}


def h2_shadow(peer, **opts):
    spec = {"endpoints": [peer], "protocol": "h2"}
    spec.update(opts)
    return spec


def shadow_connections(u, metric="umbra_upstream_connections_total"):
    return int(u.metrics().sum(metric, cluster="shadow"))


def expected_h2_headers(primary_headers):
    """The primary's HTTP/1.1 header list as the HTTP/2 copy carries it:
    names lowercased, Transfer-Encoding gone (HTTP/2 frames the body
    itself), the declared changes applied, minus the fields the mirror adds
    (checked on their own)."""
    out = []
    for n, v in primary_headers:
        low = n.lower()
        if low in ("x-debug", "x-env", "x-umbra-shadow", "transfer-encoding"):
            continue
        out.append([low, shadow_host(v) if low == "host" else v])
    return out


def assert_faithful_h2(prim, shadow, sent_body):
    rid = header_values(prim["headers"], "x-request-id")
    assert (shadow["method"], shadow["target"]) == (prim["method"], prim["target"]), (rid, shadow, prim)
    assert shadow["version"] == "HTTP/2.0", (rid, shadow["version"])
    sh = shadow["headers"]
    assert all(n == n.lower() for n, _ in sh), (rid, sh)
    assert header_values(sh, "x-umbra-shadow") == ["1"], (rid, sh)
    assert header_values(sh, "x-env") == ["shadow"], (rid, sh)
    assert header_values(sh, "x-debug") == [], (rid, sh)
    rest = [[n, v] for n, v in sh if n not in ("x-env", "x-umbra-shadow")]
    assert rest == expected_h2_headers(prim["headers"]), (
        "headers differ beyond HTTP/2's spelling and the declared changes for %s:\nprimary %s\nshadow  %s"
        % (rid, prim["headers"], sh))
    assert shadow["body_length"] == prim["body_len"] == len(sent_body), (rid, shadow["body_length"], prim["body_len"])
    assert shadow["body_sha256"] == hashlib.sha256(sent_body).hexdigest()
    assert record_body(shadow) == sent_body


@pytest.mark.timeout(60)
def test_h2_copies_equal_primary_except_declared_changes(procs, peers):
    b = procs.backend()
    col = peers.collector(body=True)
    u = procs.umbra(mirror_config(b, {"shadow": h2_shadow(col)}, [MIRROR]))
    sent = {}
    with Client(u.port) as c:
        for name, shape in SHAPES.items():
            rid = "h2-%s-%d" % (name, os.getpid())
            send_shape(c, name, rid)
            sent[rid] = shape[3]
    col.wait_count(len(SHAPES), 10)
    by_id = col.by_request_id()
    prim_by_id = {header_values(p["headers"], "x-request-id")[0]: p for p in b.requests}
    assert set(by_id) == set(prim_by_id) == set(sent), (sorted(by_id), sorted(prim_by_id))
    for rid, body in sent.items():
        assert len(by_id[rid]) == 1, "%s copied %d times" % (rid, len(by_id[rid]))
        assert_faithful_h2(prim_by_id[rid], by_id[rid][0], body)
    hp = by_id["h2-host-port-%d" % os.getpid()][0]["headers"]
    assert header_values(hp, "host") == ["a.example-shadow:8080"], hp
    assert wait_outcomes(u, len(SHAPES)) == {"completed": len(SHAPES)}
    # one worker took them all on one keep-alive client connection: one
    # shadow connection carried every copy
    assert shadow_connections(u) == 1


@pytest.mark.timeout(90)
def test_h2_slow_shadow_holds_every_copy_on_one_connection(procs, peers):
    """200 copies in flight at once to a shadow that answers each after
    500 ms: over HTTP/1.1 that takes 200 connections (one answer at a time
    each); over HTTP/2 one. The primary answers at its own pace throughout."""
    n = 200
    b = procs.backend()
    col = peers.collector(delay="500ms")
    u = procs.umbra(mirror_config(b, {"shadow": h2_shadow(col, timeout="10s")}, [{"cluster": "shadow"}],
                                  workers=1))
    errors, latencies = [], []

    def one(i):
        try:
            with Client(u.port, timeout=10) as c:
                t0 = time.monotonic()
                r = c.request("GET", "/slow/%d" % i)
                latencies.append(time.monotonic() - t0)
                if r.status != 200:
                    errors.append((i, r.status))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:5]
    assert len(latencies) == n
    # every copy was in flight while the primary answered: none waited on them
    assert max(latencies) < 0.5, sorted(latencies)[-5:]
    assert wait_outcomes(u, n, timeout=20) == {"completed": n}
    assert shadow_connections(u) == 1
    assert col.count() == n


@pytest.mark.timeout(60)
def test_h2_copy_over_its_buffer_is_dropped_alone(procs, peers):
    """A shadow that holds its window shut (it never reads): the copy's
    unsent body passes its buffer and only that copy is dropped; the primary
    gets every byte."""
    b = procs.backend()
    hole = peers.fault("blackhole")
    u = procs.umbra(mirror_config(b, {"shadow": h2_shadow(hole, timeout="30s")},
                                  [{"cluster": "shadow", "buffer": "64KiB"}], workers=1))
    size = 2 * MB
    with Client(u.port, timeout=30) as c:
        r = c.request("POST", "/held", [("X-Request-Id", "held")], os.urandom(size))
        assert r.status == 200, r
        assert r.json()["body_len"] == size
    assert wait_outcomes(u, 1) == {"dropped_overflow": 1}
    assert u.metrics().sum("umbra_mirror_memory_bytes") == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode,outcome", [
    ("down", "failed_connect"),
    ("blackhole", "failed_timeout"),
    ("garbage", "failed_protocol"),
    ("reset", "failed_reset"),
])
def test_h2_shadow_faults_fail_copies_not_the_primary(procs, peers, mode, outcome):
    b = procs.backend()
    holder = None
    if mode == "down":
        holder, port = closed_port()
        shadow = "127.0.0.1:%d" % port
    else:
        shadow = peers.fault(mode)
    u = procs.umbra(mirror_config(b, {"shadow": h2_shadow(shadow, timeout="300ms")},
                                  [{"cluster": "shadow"}],
                                  workers=1))
    n = 20
    with Client(u.port) as c:
        for i in range(n):
            r = c.request("POST" if i % 2 else "GET", "/f/%d" % i, body=b"x" * 100 if i % 2 else None)
            assert r.status == 200, (i, r)
    got = wait_outcomes(u, n)
    # the breaker opens after 5 consecutive failures and drops the rest
    assert set(got) <= {outcome, "dropped_circuit_open"}, got
    assert got.get(outcome, 0) >= 1, got
    assert len(b.requests) == n
    if holder:
        holder.close()


@pytest.mark.timeout(60)
def test_h2_stream_timeout_spares_the_other_streams(procs, peers):
    """Over HTTP/1.1 a copy that times out takes its pipelined neighbours
    with it; over HTTP/2 each stream times out alone: copies that a 2 s
    shadow would answer after their 1 s deadline fail, while copies to the
    same connection that are answered in time complete."""
    b = procs.backend()
    col = peers.collector(delay="1500ms")
    u = procs.umbra(mirror_config(b, {"shadow": h2_shadow(col, timeout="1s")}, [{"cluster": "shadow"}],
                                  workers=1))
    with Client(u.port) as c:
        for i in range(5):
            assert c.request("GET", "/late/%d" % i).status == 200
    assert wait_outcomes(u, 5, timeout=10) == {"failed_timeout": 5}
    # the connection survived its streams' timeouts
    assert shadow_connections(u) == 1


@pytest.mark.timeout(60)
def test_h2_idle_connection_closes_and_reload_retires_it(procs, peers):
    b = procs.backend()
    col = peers.collector()
    cfg = mirror_config(b, {"shadow": h2_shadow(col, keepalive={"idle_timeout": "300ms"})},
                        [{"cluster": "shadow"}], workers=1)
    u = procs.umbra(cfg)
    with Client(u.port) as c:
        assert c.request("GET", "/one").status == 200
    assert wait_outcomes(u, 1) == {"completed": 1}
    wait_until(lambda: shadow_connections(u, "umbra_upstream_connections_open") == 0, 10, 0.05,
               "the idle HTTP/2 shadow connection to close")
    with Client(u.port) as c:
        assert c.request("GET", "/two").status == 200
    assert wait_outcomes(u, 2) == {"completed": 2}
    assert shadow_connections(u) == 2


def test_h2_config_errors_point_at_the_value(umbra_bin, tmp_path):
    base = """\
workers: 1
listeners: [{name: ingress, listen: 127.0.0.1:0}]
clusters:
  - name: primary
    endpoints: [127.0.0.1:9]
    protocol: %s
routes:
  - name: api
    match: {prefix: /}
    cluster: primary
"""
    for proto, line, col, words in (("h3", 6, 15, "unknown protocol"), ("h2", 10, 14, "shadows only")):
        path = tmp_path / ("bad-%s.yaml" % proto)
        path.write_text(base % proto)
        p = subprocess.run([umbra_bin, "check", "-c", str(path)], capture_output=True, timeout=20)
        out = (p.stdout + p.stderr).decode()
        assert p.returncode == 1, out
        assert out.startswith("%s:%d:%d: " % (path, line, col)) and words in out, out
    ok = tmp_path / "ok.yaml"
    ok.write_text(base % "http1")
    p = subprocess.run([umbra_bin, "check", "-c", str(ok)], capture_output=True, timeout=20)
    assert p.returncode == 0, p.stderr


# ---------------------------------------------------------------- HTTP/2 over TLS

NGINX_H2_TLS = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format proto '$server_protocol $request_uri';
    access_log {dir}/access.log proto;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 "h2 shadow\\n"; }}
    }}
}}
"""


class NginxH2Shadow:
    """Debian's nginx answering HTTP/2 over TLS (ALPN h2) on a loopback port;
    its access log says which protocol each request came over."""

    def __init__(self, workdir, cert, key):
        self.dir = str(workdir / "nginx-h2")
        os.makedirs(self.dir, exist_ok=True)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.addr = "127.0.0.1:%d" % self.port
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_H2_TLS.format(dir=self.dir, port=self.port, cert=cert, key=key))
        self.proc = subprocess.Popen(["nginx", "-p", self.dir, "-c", conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

        def listening():
            assert self.proc.poll() is None, "nginx exited: %s" % self.log("error.log")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                return False

        wait_until(listening, 10, 0.02, "nginx listening")

    def log(self, name):
        try:
            with open(os.path.join(self.dir, name)) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self):
        _stop_pid(self.proc)


@pytest.mark.timeout(90)
def test_h2_over_tls_to_nginx(procs, pki, tmp_path):  # noqa: F811
    shadow = NginxH2Shadow(tmp_path, *pki.upstream)
    procs.backends.append(shadow)
    b = procs.backend()
    tls = {"ca": pki.ca[0], "sni": "upstream.test"}
    u = procs.umbra(mirror_config(b, {"shadow": h2_shadow(shadow.addr, tls=tls)}, [{"cluster": "shadow"}],
                                  workers=1))
    n = 30
    with Client(u.port) as c:
        for i in range(n):
            assert c.request("GET", "/tls/%d" % i).status == 200
    assert wait_outcomes(u, n) == {"completed": n}
    wait_until(lambda: shadow.log("access.log").count("\n") >= n, 10, 0.02, "nginx's access log")
    lines = shadow.log("access.log").splitlines()
    assert sorted(lines) == sorted("HTTP/2.0 /tls/%d" % i for i in range(n)), lines[:3]
    assert shadow_connections(u) == 1


@pytest.mark.timeout(60)
def test_h2_over_tls_without_alpn_h2_fails_as_protocol_error(procs, pki):  # noqa: F811
    """A TLS shadow that does not choose h2 gets no frames at all: its
    copies fail as protocol errors, with a log line saying why."""
    shadow = tls_backend(procs, "tls-h1-shadow", server_context(pki.upstream))
    b = procs.backend()
    tls = {"ca": pki.ca[0], "sni": "upstream.test"}
    u = procs.umbra(mirror_config(b, {"shadow": h2_shadow(shadow.addr, tls=tls,
                                                           circuit_breaker={"consecutive_failures": 0})},
                                  [{"cluster": "shadow"}], workers=1))
    n = 5
    with Client(u.port) as c:
        for i in range(n):
            assert c.request("GET", "/no-alpn/%d" % i).status == 200
    assert wait_outcomes(u, n) == {"failed_protocol": n}
    assert shadow.requests == []
    wait_until(lambda: "did not choose ALPN h2" in u.tail(), 5, 0.05, "the ALPN log line")


class RawH2Shadow:
    """An HTTP/2 shadow written frame by frame (no HPACK decoding needed):
    it answers every request stream with a HEADERS frame, END_STREAM set.
    The first `big` answers carry a 100-byte literal field, later ones only
    an indexed :status 200 (10 bytes): answers that shrink on cue."""

    PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    def __init__(self, big):
        self.big = big
        self.answered = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def frame(ftype, flags, stream, payload=b""):
        return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload

    def _answer(self, stream):
        with self.lock:
            self.answered += 1
            big = self.answered <= self.big
        block = b"\x88" + (b"\x00\x05x-pad\x64" + b"p" * 100 if big else b"")
        return self.frame(1, 0x05, stream, block)

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        try:
            while len(buf) < len(self.PREFACE):
                buf += c.recv(65536) or b""
            buf = buf[len(self.PREFACE):]
            c.sendall(self.frame(4, 0, 0))
            while True:
                out = b""
                while len(buf) >= 9:
                    n = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + n:
                        break
                    ftype, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                    buf = buf[9 + n:]
                    if ftype == 4 and not flags & 1:
                        out += self.frame(4, 1, 0)  # SETTINGS ACK
                    elif ftype == 1 and flags & 0x01:  # a whole request: HEADERS with END_STREAM
                        out += self._answer(stream)
                if out:
                    c.sendall(out)
                data = c.recv(65536)
                if not data:
                    return
                buf += data
        except OSError:
            return

    def stop(self):
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.timeout(90)
def test_h2_answers_below_the_wake_up_mark_are_read_soon(procs):
    """A fast shadow's answers are read in batches: the socket wakes umbra
    when about all answers in flight are in, counted in the fewest bytes an
    answer has taken. Answers smaller than any before (HPACK indexing what
    the first answers spelled out) fall short of that mark; one connection
    carries every copy, so none may wait for its deadline (20 s here): each
    batch completes within a second."""
    warm = 40
    shadow = RawH2Shadow(big=warm)
    procs.backends.append(shadow)
    b = procs.backend()
    u = procs.umbra(mirror_config(b, {"shadow": h2_shadow(shadow.addr, timeout="20s")}, [{"cluster": "shadow"}],
                                  workers=1))
    n = 8
    clients = [Client(u.port) for _ in range(n)]
    try:
        # one at a time, big answers: the size estimate learns them, and the
        # latency average (batching needs < 2 ms) forgets the first connect
        for i in range(warm):
            assert clients[i % n].request("GET", "/warm/%d" % i).status == 200
            assert wait_outcomes(u, i + 1) == {"completed": i + 1}
        for k in range(3):
            t0 = time.monotonic()
            burst(u, clients, "b%d" % k)  # small answers from here on
            assert wait_outcomes(u, warm + n * (k + 1), timeout=30) == {"completed": warm + n * (k + 1)}
            took = time.monotonic() - t0
            assert took < 1.0, "batch %d took %.2f s: its answers waited below the wake-up mark" % (k, took)
    finally:
        for c in clients:
            c.close()
