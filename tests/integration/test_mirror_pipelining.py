"""Copies started together share a shadow connection (HTTP/1.1 pipelining):
their requests leave in one write and every answer is matched to its copy in
order. Pipelining stays off for a shadow too slow for it (copies would wait
behind each other past the timeout) and with `pipeline: 1`.

To start copies together deterministically, umbra is stopped (SIGSTOP) while
requests arrive on connections it already serves, then continued: one event
loop iteration then sees them all."""

import json
import os
import re
import shutil
import signal
import socket
import threading
import time

import pytest

from harness import Client, build_request, chunked, make_config, strace, wait_until
from shadows import mirror_config, peers, record_body, wait_outcomes  # noqa: F401  (peers: fixture)


class RecordingShadow:
    """Answers each connection's requests in order, `delay` seconds each and
    one at a time (as most servers do), and records per connection how many
    whole requests each read delivered. Requests without a body only."""

    def __init__(self, delay=0.0, body_for=None):
        self.delay = delay
        self.body_for = body_for or (lambda target: b"shadow")
        self.lock = threading.Lock()
        self.reads = []  # per connection: [requests completed by each read]
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                reads = []
                self.reads.append(reads)
            threading.Thread(target=self._serve, args=(conn, reads), daemon=True).start()

    def _serve(self, conn, reads):
        buf = b""
        with conn:
            while not self.closed:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                heads = []
                while b"\r\n\r\n" in buf:
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    heads.append(head)
                with self.lock:
                    reads.append(len(heads))
                for head in heads:
                    if self.delay:
                        time.sleep(self.delay)
                    body = self.body_for(head.split(b" ", 2)[1].decode())
                    try:
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    except OSError:
                        return

    def snapshot(self):
        with self.lock:
            return [list(r) for r in self.reads]

    def requests(self):
        return sum(sum(r) for r in self.snapshot())

    def close(self):
        self.closed = True
        self.sock.close()


@pytest.fixture
def shadow_factory():
    made = []

    def make(**kw):
        s = RecordingShadow(**kw)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def stopped(pid):
    """Every thread of pid is in the stopped state (kill() only asks)."""
    tasks = os.listdir("/proc/%d/task" % pid)
    for t in tasks:
        with open("/proc/%d/task/%s/stat" % (pid, t)) as f:
            if f.read().rsplit(")", 1)[1].split()[0] not in ("T", "t"):  # t: stopped under strace
                return False
    return True


def burst(u, clients, tag, requests=None):
    """One request per client (a GET, or requests[i]), sent while umbra is
    stopped, so a single loop iteration reads them all; every primary answer
    must be a 200."""
    u.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: stopped(u.pid), 5, 0.005, "umbra to stop")
        for i, c in enumerate(clients):
            c.send(requests[i] if requests else b"GET /%s/%d HTTP/1.1\r\nHost: t\r\n\r\n" % (tag.encode(), i))
    finally:
        u.signal(signal.SIGCONT)
    for c in clients:
        assert c.read("POST" if requests else "GET").status == 200


def run_burst(procs, shadow, n, cluster_extra=None):
    """umbra (one worker) mirroring 100 % to `shadow`; n clients each make
    one request (timing the shadow, warming connections), then a burst of n.
    Returns (umbra, shadow reads before the burst)."""
    b = procs.backend()
    spec = {"endpoints": [shadow.addr], "timeout": "1s"}
    spec.update(cluster_extra or {})
    u = procs.umbra(mirror_config(b, {"shadow": spec}, [{"cluster": "shadow"}], workers=1))
    clients = [Client(u.port) for _ in range(n)]
    try:
        for i, c in enumerate(clients):
            assert c.request("GET", "/warm/%d" % i).status == 200
        assert wait_outcomes(u, n) == {"completed": n}
        wait_until(lambda: shadow.requests() == n, 5, what="the warm-up copies at the shadow")
        before = shadow.snapshot()
        burst(u, clients, "burst")
        assert wait_outcomes(u, 2 * n, timeout=20) == {"completed": 2 * n}
    finally:
        for c in clients:
            c.close()
    return u, before


def new_reads(after, before):
    """The reads each connection made since `before` (a snapshot)."""
    out = []
    for i, reads in enumerate(after):
        old = len(before[i]) if i < len(before) else 0
        if reads[old:]:
            out.append(reads[old:])
    return out


@pytest.mark.timeout(60)
def test_copies_started_together_share_a_connection(procs, shadow_factory):
    shadow = shadow_factory()
    n = 12
    # a long timeout, so the measured latency (a thread-per-connection Python
    # shadow under ASan) does not cap the depth below the default 16
    u, before = run_burst(procs, shadow, n, {"timeout": "60s"})
    reads = new_reads(shadow.snapshot(), before)
    assert sum(map(sum, reads)) == n, reads
    # the 12 copies left on one connection, and the shadow read several
    # requests at once
    assert len(reads) == 1, reads
    assert max(max(r) for r in reads) >= 2, reads
    m = u.metrics()
    assert m.sum("umbra_upstream_errors_total", cluster="shadow") == 0


@pytest.mark.timeout(60)
def test_pipeline_one_turns_it_off(procs, shadow_factory):
    shadow = shadow_factory()
    n = 6
    u, before = run_burst(procs, shadow, n, {"pipeline": 1})
    reads = new_reads(shadow.snapshot(), before)
    assert sum(map(sum, reads)) == n, reads
    assert len(reads) == n and all(r == [1] for r in reads), reads


@pytest.mark.timeout(60)
def test_slow_shadow_is_not_pipelined(procs, shadow_factory):
    # 150 ms per answer, 1 s timeout: eight copies queued on one connection
    # would take 1.2 s and time out; measured latency keeps them apart
    shadow = shadow_factory(delay=0.15)
    n = 8
    u, before = run_burst(procs, shadow, n)
    reads = new_reads(shadow.snapshot(), before)
    assert sum(map(sum, reads)) == n, reads
    assert all(max(r) == 1 for r in reads), reads


@pytest.mark.timeout(60)
def test_pipelined_copies_with_bodies_stay_faithful(procs, peers):
    """Promise 3 on a shared connection: bodies of copies sent back to back
    (Content-Length and chunked alike) reach the shadow whole and each with its
    own request, never interleaved."""
    b = procs.backend()
    col = peers.collector(body=True)
    u = procs.umbra(mirror_config(b, {"shadow": {"endpoints": [col], "timeout": "60s"}},
                                  [{"cluster": "shadow"}], workers=1))
    n = 10
    clients = [Client(u.port) for _ in range(n)]
    bodies = [os.urandom(100 + 997 * i) for i in range(n)]
    requests = []
    for i, body in enumerate(bodies):
        rid = [("X-Request-Id", "pipe-%d" % i)]
        if i % 3 == 2:
            requests.append(build_request("POST", "/p/%d" % i, rid + [("Transfer-Encoding", "chunked")],
                                          chunked(body)))
        else:
            requests.append(build_request("POST", "/p/%d" % i, rid, body))
    try:
        # one copy times the shadow (and leaves one connection open); the
        # other clients are only accepted, so no copy of theirs holds another
        assert clients[0].request("GET", "/warm").status == 200
        assert wait_outcomes(u, 1) == {"completed": 1}
        wait_until(lambda: json.loads(u.admin("GET", "/stats")[1])["worker_loops"][0]["downstream_connections"] == n,
                   5, what="umbra to accept every client")
        opened = u.metrics().sum("umbra_upstream_connections_total", cluster="shadow")
        burst(u, clients, "post", requests)
        assert wait_outcomes(u, n + 1, timeout=20) == {"completed": n + 1}
        # ten copies in flight at once, on at most one new connection: they shared
        assert u.metrics().sum("umbra_upstream_connections_total", cluster="shadow") - opened <= 1
    finally:
        for c in clients:
            c.close()
    by_id = col.by_request_id()
    for i, body in enumerate(bodies):
        recs = by_id.get("pipe-%d" % i, [])
        assert len(recs) == 1, (i, recs)
        assert recs[0]["target"] == "/p/%d" % i
        assert record_body(recs[0]) == body, i


def traced_burst(procs, shadow, n, cluster, log, syscall, string_bytes=None):
    """n kept-alive clients through a one-worker umbra mirroring to shadow
    (cluster: extra cluster settings): one warm-up request each, then one
    burst whose copies umbra makes while strace logs its `syscall` calls."""
    b = procs.backend()
    u = procs.umbra(mirror_config(b, {"shadow": dict({"endpoints": [shadow.addr], "timeout": "60s"}, **cluster)},
                                  [{"cluster": "shadow"}], workers=1))
    clients = [Client(u.port) for _ in range(n)]
    try:
        for i, c in enumerate(clients):
            assert c.request("GET", "/warm/%d" % i).status == 200
        assert wait_outcomes(u, n) == {"completed": n}
        with strace(u.pid, log, syscall, string_bytes=string_bytes):
            burst(u, clients, "burst")
            assert wait_outcomes(u, 2 * n, timeout=20) == {"completed": 2 * n}
    finally:
        for c in clients:
            c.close()


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")
@pytest.mark.timeout(60)
def test_answers_of_a_batch_are_read_together(procs, shadow_factory, tmp_path):
    """Answers are discarded, so umbra need not wake for each: once a batch of
    pipelined requests is out, it reads their answers in one go even when the
    shadow writes them one by one, 5 ms apart."""
    shadow = shadow_factory(delay=0.005, body_for=lambda target: b"shadow-answer")
    n = 12
    log = tmp_path / "read.strace"
    traced_burst(procs, shadow, n, {}, log, "read", string_bytes=4096)
    answers = [len(re.findall(r"shadow-answer", line)) for line in log.read_text().splitlines()]
    answers = [a for a in answers if a]
    assert sum(answers) == n, answers
    # written 5 ms apart, each would be a read of its own if umbra woke per answer
    assert len(answers) <= 3, "%d reads for %d answers: %s" % (len(answers), n, answers)


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")
@pytest.mark.timeout(60)
def test_a_lone_answer_costs_no_wake_up_mark(procs, shadow_factory, tmp_path):
    """With one copy per connection (a slow shadow, or pipeline: 1) there is
    no batch to wait for: raising the mark and putting it back would be two
    setsockopt calls per copy for nothing."""
    shadow = shadow_factory(body_for=lambda target: b"lone-answer")
    n = 12
    log = tmp_path / "setsockopt.strace"
    traced_burst(procs, shadow, n, {"pipeline": 1}, log, "setsockopt")
    marks = [line for line in log.read_text().splitlines() if "SO_RCVLOWAT" in line]
    assert marks == [], "%d SO_RCVLOWAT calls for %d lone copies: %s" % (len(marks), n, marks[:4])


@pytest.mark.timeout(60)
def test_answers_smaller_than_any_before_still_complete(procs, shadow_factory):
    """The batch's wake-up mark is made from the smallest answer seen so far;
    answers much smaller than that never reach it, and must still be read and
    counted completed (by the copy's deadline at the latest), not time out."""
    shadow = shadow_factory(body_for=lambda target: b"x" * 4000 if target.startswith("/warm") else b"")
    u, _ = run_burst(procs, shadow, 12, {"timeout": "2s"})
    assert u.metrics().sum("umbra_mirror_requests_total", outcome="failed_timeout") == 0


@pytest.mark.timeout(60)
def test_a_cluster_that_is_also_a_primary_reads_its_answers_at_once(procs, shadow_factory):
    """A shadow connection goes back to the pool with its wake-up mark raised
    for a whole batch of answers; a primary request that reuses it expects one
    answer and must not wait for more bytes than that."""
    shadow = shadow_factory(body_for=lambda target: b"shared-answer")
    b = procs.backend()
    n = 6
    cfg = make_config(
        {"primary": [b], "shared": {"endpoints": [shadow.addr], "timeout": "3s", "connect_timeout": "250ms"}},
        routes=[{"name": "direct", "match": {"prefix": "/direct"}, "cluster": "shared"},
                {"name": "api", "match": {"prefix": "/"}, "cluster": "primary",
                 "mirrors": [{"cluster": "shared"}]}],
        workers=1)
    u = procs.umbra(cfg)
    clients = [Client(u.port) for _ in range(n)]
    try:
        for i, c in enumerate(clients):
            assert c.request("GET", "/warm/%d" % i).status == 200
        assert wait_outcomes(u, n, cluster="shared") == {"completed": n}
        burst(u, clients, "burst")
        assert wait_outcomes(u, 2 * n, timeout=20, cluster="shared") == {"completed": 2 * n}
    finally:
        for c in clients:
            c.close()
    opened = u.metrics().sum("umbra_upstream_connections_total", cluster="shared")
    with Client(u.port, timeout=10) as c:
        r = c.request("GET", "/direct/after-the-batch")
        assert r.status == 200, r
    # it rode a pooled shadow connection (the batch's, most recently used)
    assert u.metrics().sum("umbra_upstream_connections_total", cluster="shared") == opened
