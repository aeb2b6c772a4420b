"""Shadow-side peers for umbra's mirroring tests, and the load that drives them.

Holds: Collector (an `umbra collect` process whose JSON lines a test reads),
FaultShadow (a scripted, misbehaving shadow: down, slow, black hole, reset,
garbage, tiny receive window, or a fixed answer; in mode "primary", a fast
primary whose every answer the client can predict), run_load() (a
bounded keep-alive load that checks every response), RssSampler, metric
helpers, and the `peers` fixture that starts all of these and stops them by
PID. A FaultShadow runs this file as a separate Python process
(one epoll loop, no threads), so a busy shadow never competes with the load
generator for the test process's GIL.

Not a general server: every peer answers the minimum HTTP/1.1 that umbra's
shadow path needs, and trusts nothing it reads.
"""

import base64
import heapq
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

try:  # the test side; the server side (python3 shadows.py MODE) needs neither
    import pytest
    from harness import make_config, wait_until
except ImportError:  # pragma: no cover - only when run as a peer process
    pytest = None

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
MB = 1 << 20


# ================================================================ test side

def _stop_pid(proc, timeout=10.0):
    """SIGTERM then SIGKILL, by PID only; returns the exit code."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def _sanitizer_lines(text):
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if any(m in line for m in SANITIZER_MARKERS):
            return "\n".join(lines[max(0, i - 5): i + 40])
    return ""


class Collector:
    """`umbra collect` on an ephemeral loopback port, writing to out_path."""

    def __init__(self, binary, workdir, name="collector", body=False, status=None, delay=None,
                 out=None, extra=()):
        self.name = name
        self.out_path = out or os.path.join(str(workdir), name + ".jsonl")
        self.err_path = os.path.join(str(workdir), name + ".stderr")
        self.stdout_path = os.path.join(str(workdir), name + ".stdout")
        self.args = [binary, "collect", "--listen", "127.0.0.1:0", "--out", self.out_path]
        if body:
            self.args.append("--body")
        if status is not None:
            self.args += ["--status", str(status)]
        if delay is not None:
            self.args += ["--delay", str(delay)]
        self.args += list(extra)
        self.proc = None
        self.port = None
        self.addr = None

    def start(self, timeout=15.0):
        env = dict(os.environ)
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        with open(self.err_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         env=env, start_new_session=True)

        def listening():
            m = re.search(r"collect: listening on 127\.0\.0\.1:(\d+)", self.stderr())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise AssertionError("collector exited with %s:\n%s" % (self.proc.returncode, self.stderr()))
            return None

        self.port = wait_until(listening, timeout, 0.02, "the collector's listening line")
        self.addr = "127.0.0.1:%d" % self.port
        return self

    def stderr(self):
        try:
            with open(self.err_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def records(self, path=None):
        """Every complete JSON line written so far (a line still being written
        is left for the next call)."""
        try:
            with open(path or self.out_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        out = []
        for line in data.split(b"\n")[:-1]:
            if line.strip():
                out.append(json.loads(line))
        return out

    def count(self):
        try:
            with open(self.out_path, "rb") as f:
                return f.read().count(b"\n")
        except FileNotFoundError:
            return 0

    def wait_count(self, n, timeout=10.0):
        """Waits until at least n lines exist; returns the records."""
        wait_until(lambda: self.count() >= n, timeout, 0.02, "%d records at collector %s (have %d)"
                   % (n, self.name, self.count()))
        return self.records()

    def by_request_id(self):
        out = {}
        for r in self.records():
            for rid in header_values(r["headers"], "x-request-id"):
                out.setdefault(rid, []).append(r)
        return out

    def stop(self, timeout=10.0):
        return _stop_pid(self.proc, timeout) if self.proc else None

    def sanitizer_report(self):
        return _sanitizer_lines(self.stderr())


def header_values(fields, name):
    name = name.lower()
    return [v for n, v in fields if n.lower() == name]


def record_body(rec):
    """The body bytes of a collector record written with --body."""
    return base64.b64decode(rec["body"])


class FaultShadow:
    """A peer process running this file in one mode (see serve_main)."""

    def __init__(self, workdir, mode, name=None, **opts):
        self.mode = mode
        self.name = name or mode
        self.status_path = os.path.join(str(workdir), "%s.%s.status.json" % (self.name, os.getpid()))
        self.err_path = os.path.join(str(workdir), "%s.stderr" % self.name)
        args = [sys.executable, os.path.abspath(__file__), mode, "--status-file", self.status_path]
        for k, v in opts.items():
            args += ["--" + k.replace("_", "-"), str(v)]
        self.args = args
        self.proc = None
        self.port = None
        self.addr = None

    def start(self, timeout=10.0):
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=err, start_new_session=True)
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                _stop_pid(self.proc, 2)
                raise AssertionError("shadow %s did not start: %r %s" % (self.mode, line, self.stderr()))
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if r:
                b = os.read(self.proc.stdout.fileno(), 1)
                if not b:
                    continue
                line += b
        m = re.match(rb"listening (\d+)\n", line)
        assert m, "shadow %s said %r" % (self.mode, line)
        self.port = int(m.group(1))
        self.addr = "127.0.0.1:%d" % self.port
        return self

    def stderr(self):
        try:
            with open(self.err_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-4000:]
        except FileNotFoundError:
            return ""

    def stats(self):
        """The peer's counters (written by it at most every 50 ms)."""
        for _ in range(50):
            try:
                with open(self.status_path) as f:
                    return json.load(f)
            except FileNotFoundError:
                return {}
            except ValueError:
                time.sleep(0.01)
        return {}

    def come_up(self):
        """Starts listening (for a peer started with deferred=1)."""
        os.kill(self.proc.pid, signal.SIGUSR1)
        wait_until(lambda: connect_ok(self.port), 5, 0.02, "shadow %s to accept connections" % self.name)

    def stop(self, timeout=5.0):
        if self.proc is None:
            return None
        code = _stop_pid(self.proc, timeout)
        self.proc.stdout.close()
        return code


def connect_ok(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class Peers:
    """Starts collectors and peer processes for one test; close() stops them
    by PID and fails the test on a sanitizer report from a collector."""

    def __init__(self, binary, workdir):
        self.binary = binary
        self.workdir = workdir
        self.items = []

    def collector(self, name=None, **kw):
        c = Collector(self.binary, self.workdir, name or "collector%d" % (len(self.items) + 1), **kw)
        self.items.append(c)
        return c.start()

    def fault(self, mode, name=None, **opts):
        s = FaultShadow(self.workdir, mode, name or "%s%d" % (mode, len(self.items) + 1), **opts)
        self.items.append(s)
        return s.start()

    def primary(self, name=None, **opts):
        return self.fault("primary", name or "primary%d" % (len(self.items) + 1), **opts)

    def close(self):
        problems = []
        for it in reversed(self.items):
            code = it.stop()
            if isinstance(it, Collector):
                rep = it.sanitizer_report()
                if rep:
                    problems.append("sanitizer report from collector %s:\n%s" % (it.name, rep))
                elif code not in (0, None):
                    problems.append("collector %s exited %s on SIGTERM:\n%s" % (it.name, code, it.stderr()[-2000:]))
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)


if pytest is not None:
    @pytest.fixture
    def peers(umbra_bin, tmp_path):
        """Collectors, fault shadows and fast primaries that live for one test."""
        p = Peers(umbra_bin, tmp_path)
        yield p
        p.close()


# ---------------------------------------------------------------- config and metrics

def mirror_config(primary, shadows, mirrors, workers=2, route="api", **top):
    """make_config with one route `route` (prefix /) to `primary` mirrored to
    `mirrors` (list of mirror dicts). shadows: {cluster name: peer, [peers] or
    {"endpoints": [...], options}}."""
    clusters = {"primary": primary if isinstance(primary, (list, dict)) else [primary]}
    for name, spec in shadows.items():
        if isinstance(spec, dict):
            spec = dict(spec)
            spec.setdefault("connect_timeout", "250ms")
            clusters[name] = spec
        else:
            eps = spec if isinstance(spec, list) else [spec]
            clusters[name] = {"endpoints": eps, "connect_timeout": "250ms"}
    routes = [{"name": route, "match": {"prefix": "/"}, "cluster": "primary", "mirrors": mirrors}]
    return make_config(clusters, routes=routes, workers=workers, **top)


def outcomes(u, route="api", cluster="shadow", metrics=None):
    """{outcome: count} of umbra_mirror_requests_total for one mirror."""
    m = metrics or u.metrics()
    got = m.by_label("umbra_mirror_requests_total", "outcome", route=route, cluster=cluster)
    assert got, "no umbra_mirror_requests_total for route %s cluster %s" % (route, cluster)
    return {k: int(v) for k, v in got.items() if v}


def sampled_out(u, route="api", cluster="shadow", metrics=None):
    m = metrics or u.metrics()
    return int(m.sum("umbra_mirror_sampled_out_total", route=route, cluster=cluster))


def delta(after, before):
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)
            if after.get(k, 0) != before.get(k, 0)}


def wait_outcomes(u, total, before=None, timeout=15.0, route="api", cluster="shadow"):
    """Waits until the mirror's outcomes (minus `before`) add up to `total`:
    every copy started has ended. Returns the delta by outcome."""
    before = before or {}
    last = {}

    def settled():
        last.clear()
        last.update(delta(outcomes(u, route, cluster), before))
        return sum(last.values()) >= total

    try:
        wait_until(settled, timeout, 0.1, "mirror outcomes to add up to %d" % total)
    except AssertionError:
        raise AssertionError("mirror outcomes add up to %d, not %d, after %.0fs: %s"
                             % (sum(last.values()), total, timeout, last)) from None
    return dict(last)


def only(d, *allowed):
    """The entries of d outside `allowed` (should be empty)."""
    return {k: v for k, v in d.items() if k not in allowed and v}


class RssSampler(threading.Thread):
    """Samples a process's VmRSS every 20 ms until stopped; returns the peak."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.samples = []
        self.done = threading.Event()

    def rss(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def run(self):
        while not self.done.is_set():
            try:
                self.samples.append(self.rss())
            except OSError:
                return
            self.done.wait(0.02)

    def stop(self):
        self.done.set()
        self.join(5)
        return max(self.samples) if self.samples else 0


# ---------------------------------------------------------------- load

def primary_body(method, target, body_len):
    """What a FaultShadow in mode "primary" answers: the client can check it byte for byte."""
    return ("%s %s %d\n" % (method, target, body_len)).encode() * 3


class LoadResult:
    def __init__(self):
        self.ok = 0
        self.posts = 0       # of the requests sent, how many were POSTs
        self.failures = []   # (request, what went wrong), first 20
        self.failed = 0
        self.latencies = []
        self.elapsed = 0.0
        self.lock = threading.Lock()

    def fail(self, what):
        with self.lock:
            self.failed += 1
            if len(self.failures) < 20:
                self.failures.append(what)

    def p(self, q):
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0.0

    def __repr__(self):
        return "<load ok=%d failed=%d p50=%.1fms p99=%.1fms in %.1fs first failures=%s>" % (
            self.ok, self.failed, self.p(0.5) * 1e3, self.p(0.99) * 1e3, self.elapsed, self.failures[:5])


def _read_response(sock, buf, deadline):
    """(status, head, body) of one Content-Length framed response."""
    while True:
        i = buf.find(b"\r\n\r\n")
        if i >= 0:
            break
        if len(buf) > 65536:
            raise ValueError("no end of head in 64 KiB")
        _recv_into(sock, buf, deadline)
    head = bytes(buf[:i])
    del buf[:i + 4]
    status = int(head[9:12])
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
    if not m:
        raise ValueError("response without Content-Length: %r" % head[:300])
    n = int(m.group(1))
    while len(buf) < n:
        _recv_into(sock, buf, deadline)
    body = bytes(buf[:n])
    del buf[:n]
    return status, head, body


def _recv_into(sock, buf, deadline):
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    d = sock.recv(262144)
    if not d:
        raise ConnectionError("umbra closed the connection")
    buf += d


def run_load(port, total, threads=4, seconds=60.0, post_every=0, post_size=0, prefix="/load"):
    """Sends `total` requests over `threads` keep-alive connections (each
    thread its share, in sequence), within `seconds`. Every `post_every`-th
    request of a thread is a POST with a `post_size` body. Each response must
    be 200 with exactly primary_body(); anything else, a reset or a missing
    answer is a failure (the connection is then replaced). Returns LoadResult."""
    res = LoadResult()
    deadline = time.monotonic() + seconds
    body = bytes(range(256)) * (post_size // 256 + 1)
    body = body[:post_size]

    def worker(tid, count):
        sock, buf = None, bytearray()
        lat = []
        for i in range(count):
            if time.monotonic() > deadline:
                res.fail("thread %d: out of time after %d of %d requests" % (tid, i, count))
                break
            target = "%s/%d/%d" % (prefix, tid, i)
            is_post = post_every and i % post_every == post_every - 1
            if is_post:
                with res.lock:
                    res.posts += 1
                req = ("POST %s HTTP/1.1\r\nHost: load.test\r\nContent-Length: %d\r\n\r\n"
                       % (target, len(body))).encode() + body
                want = primary_body("POST", target, len(body))
            else:
                req = ("GET %s HTTP/1.1\r\nHost: load.test\r\n\r\n" % target).encode()
                want = primary_body("GET", target, 0)
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    buf = bytearray()
                t0 = time.perf_counter()
                sock.sendall(req)
                status, head, got = _read_response(sock, buf, min(deadline, time.monotonic() + 10))
                lat.append(time.perf_counter() - t0)
                if status != 200 or got != want:
                    res.fail("%s -> %d %r %r" % (target, status, head[:200], got[:200]))
                    continue
                with res.lock:
                    res.ok += 1
            except (OSError, ValueError) as e:
                res.fail("%s -> %s: %s" % (target, type(e).__name__, e))
                if sock is not None:
                    sock.close()
                sock = None
        if sock is not None:
            sock.close()
        with res.lock:
            res.latencies.extend(lat)

    share = [total // threads + (1 if k < total % threads else 0) for k in range(threads)]
    ts = [threading.Thread(target=worker, args=(k, share[k]), daemon=True) for k in range(threads)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join(max(1.0, deadline - time.monotonic() + 15))
    res.elapsed = time.monotonic() - t0
    return res


# ================================================================ peer side
#
# python3 shadows.py MODE --status-file FILE [--delay S] [--status N] [--body TEXT]
#                         [--rcvbuf N] [--interval S]
#
# Modes (all keep-alive unless the request says close):
#   primary     200 with primary_body(method, target, body length) at once
#   answer      --status N (default 200) with --body TEXT after --delay S (default 0),
#               plus --header "Name: value" if given
#   slow        same as answer with --delay 0.5 by default
#   blackhole   accepts, never reads, never answers; closes when the peer does
#   reset       reads until the end of the request head, then RST
#   garbage     reads the head, answers non-HTTP bytes, then reads and discards
#   tinywindow  SO_RCVBUF --rcvbuf (default 1024) on the listener, reads one byte
#               per connection every --interval seconds (default 1), never answers
# --deferred 1 binds the port but refuses connections until SIGUSR1 (a shadow
# that comes up later, on the same port, with no race for it).

GARBAGE = b"\x16\x03\x01\x02\x00SSH-2.0-not-http \xff\xfe garbage\r\n\r\n"


class _Conn:
    __slots__ = ("sock", "fd", "inbuf", "outbuf", "state", "need", "queue", "closing", "head_done",
                 "method", "target", "body_len", "chunk_state", "keep", "want_out")

    def __init__(self, sock):
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.state = "head"      # head | body | chunked | done
        self.need = 0
        self.queue = 0           # answers scheduled but not yet written
        self.closing = False
        self.head_done = False
        self.method = self.target = ""
        self.body_len = 0
        self.chunk_state = None
        self.keep = True
        self.want_out = False


class _Server:
    def __init__(self, mode, opts):
        self.mode = mode
        self.opts = opts
        self.delay = float(opts.get("delay", 0.5 if mode == "slow" else 0.0))
        self.answer_status = int(opts.get("status", 200))
        self.answer_body = opts.get("body", "shadow says hi\n").encode()
        self.interval = float(opts.get("interval", 1.0))
        self.extra_header = opts.get("header", "").encode()
        self.conns = {}
        self.timers = []
        self.seq = 0
        self.stats = {"accepted": 0, "open": 0, "heads": 0, "requests": 0, "answered": 0,
                      "resets": 0, "bytes_in": 0, "max_open": 0, "inflight": 0, "max_inflight": 0,
                      "targets": []}
        self.status_path = opts["status_file"]
        self.dirty = True
        self.last_write = 0.0
        self.ep = select.epoll()
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if mode == "tinywindow":
            # set before listen so every accepted socket starts with it (and
            # the window it advertises in the handshake is already small)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(opts.get("rcvbuf", 1024)))
        ls.bind(("127.0.0.1", 0))
        ls.setblocking(False)
        self.ls = ls
        self.listening = False
        if opts.get("deferred") != "1":
            self.listen()

    def listen(self):
        """Until this, the port is bound but refuses connections."""
        if not self.listening:
            self.listening = True
            self.ls.listen(4096)
            self.ep.register(self.ls.fileno(), select.EPOLLIN)

    # ---- plumbing ----

    def later(self, delay, fn, *args):
        self.seq += 1
        heapq.heappush(self.timers, (time.monotonic() + delay, self.seq, fn, args))

    def write_status(self, force=False):
        now = time.monotonic()
        if not force and (not self.dirty or now - self.last_write < 0.05):
            return
        tmp = self.status_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.stats, f)
        os.replace(tmp, self.status_path)
        self.dirty = False
        self.last_write = now

    def count(self, key, n=1):
        self.stats[key] += n
        self.dirty = True

    def close(self, c, rst=False):
        if c.fd not in self.conns:
            return
        del self.conns[c.fd]
        try:
            self.ep.unregister(c.fd)
        except OSError:
            pass
        if rst:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.count("resets")
        c.sock.close()
        self.count("open", -1)

    def accept(self):
        for _ in range(256):
            try:
                s, _ = self.ls.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            s.setblocking(False)
            c = _Conn(s)
            self.conns[c.fd] = c
            self.count("accepted")
            self.count("open")
            self.stats["max_open"] = max(self.stats["max_open"], self.stats["open"])
            if self.mode == "blackhole":
                self.ep.register(c.fd, select.EPOLLRDHUP)
            elif self.mode == "tinywindow":
                self.ep.register(c.fd, select.EPOLLRDHUP)
                self.later(self.interval, self.trickle, c)
            else:
                self.ep.register(c.fd, select.EPOLLIN | select.EPOLLRDHUP)

    def trickle(self, c):
        if c.fd not in self.conns:
            return
        try:
            d = c.sock.recv(1)
        except BlockingIOError:
            d = None
        except OSError:
            d = b""
        if d == b"":
            self.close(c)
            return
        if d:
            self.count("bytes_in", len(d))
        self.later(self.interval, self.trickle, c)

    def flush(self, c):
        if c.outbuf:
            try:
                n = c.sock.send(c.outbuf)
                del c.outbuf[:n]
            except BlockingIOError:
                pass
            except OSError:
                self.close(c)
                return
        if c.fd not in self.conns:
            return
        want_out = bool(c.outbuf)
        if want_out != c.want_out:  # one epoll_ctl per change, not per answer
            c.want_out = want_out
            self.ep.modify(c.fd, select.EPOLLIN | select.EPOLLRDHUP | (select.EPOLLOUT if want_out else 0))
        if not c.outbuf and c.closing and c.queue == 0:
            self.close(c)

    # ---- HTTP/1.1 requests ----

    def on_readable(self, c, events):
        if events & (select.EPOLLHUP | select.EPOLLERR) and self.mode in ("blackhole", "tinywindow"):
            self.close(c)
            return
        if self.mode in ("blackhole", "tinywindow"):
            if events & select.EPOLLRDHUP:
                self.close(c)
            return
        try:
            d = c.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            d = b""
        if not d:
            self.close(c)
            return
        self.count("bytes_in", len(d))
        c.inbuf += d
        self.parse(c)

    def parse(self, c):
        while c.fd in self.conns:
            if c.state == "head":
                i = c.inbuf.find(b"\r\n\r\n")
                if i < 0:
                    if len(c.inbuf) > 1 << 20:
                        self.close(c)
                    return
                head = bytes(c.inbuf[:i])
                del c.inbuf[:i + 4]
                self.count("heads")
                if self.mode == "reset":
                    self.close(c, rst=True)
                    return
                if self.mode == "garbage":
                    c.outbuf += GARBAGE
                    c.state = "done"
                    c.inbuf.clear()
                    self.flush(c)
                    return
                lines = head.split(b"\r\n")
                parts = lines[0].split(b" ")
                c.method = parts[0].decode("latin-1")
                c.target = parts[1].decode("latin-1") if len(parts) > 1 else ""
                c.body_len = 0
                c.keep = True
                te = cl = None
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    value = value.strip()
                    if name == b"content-length":
                        cl = int(value)
                    elif name == b"transfer-encoding":
                        te = value.lower()
                    elif name == b"connection" and b"close" in value.lower():
                        c.keep = False
                if te is not None:
                    c.state, c.chunk_state, c.need = "chunked", "size", 0
                elif cl:
                    c.state, c.need = "body", cl
                else:
                    self.request_done(c)
            elif c.state == "body":
                n = min(c.need, len(c.inbuf))
                del c.inbuf[:n]
                c.need -= n
                c.body_len += n
                if c.need:
                    return
                self.request_done(c)
            elif c.state == "chunked":
                if not self.chunked_step(c):
                    return
            else:  # done: discard whatever else comes
                c.inbuf.clear()
                return

    def chunked_step(self, c):
        """Advances the chunked decoder; False when it needs more bytes."""
        if c.chunk_state == "data":
            n = min(c.need, len(c.inbuf))
            del c.inbuf[:n]
            c.need -= n
            c.body_len += n
            if c.need:
                return False
            c.chunk_state = "crlf"
            return True
        i = c.inbuf.find(b"\r\n")
        if i < 0:
            return False
        line = bytes(c.inbuf[:i])
        del c.inbuf[:i + 2]
        if c.chunk_state == "crlf":
            c.chunk_state = "size"
        elif c.chunk_state == "size":
            size = int(line.split(b";")[0].strip() or b"0", 16)
            c.chunk_state, c.need = ("trailers", 0) if size == 0 else ("data", size)
        elif not line:  # the empty line after the trailers
            self.request_done(c)
        return True

    def request_done(self, c):
        self.count("requests")
        self.count("inflight")
        self.stats["max_inflight"] = max(self.stats["max_inflight"], self.stats["inflight"])
        if len(self.stats["targets"]) < 1000:
            self.stats["targets"].append(c.target)
        c.state = "head"
        c.queue += 1
        if not c.keep:
            c.closing = True
        if self.mode == "primary":
            body = primary_body(c.method, c.target, c.body_len)
            self.answer(c, 200, body)
        elif self.delay > 0:
            self.later(self.delay, self.answer, c, self.answer_status, self.answer_body)
        else:
            self.answer(c, self.answer_status, self.answer_body)

    def answer(self, c, status, body):
        self.count("inflight", -1)
        if c.fd not in self.conns:
            return
        c.queue -= 1
        extra = self.extra_header + b"\r\n" if self.extra_header else b""
        c.outbuf += b"HTTP/1.1 %d Status\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n%s\r\n%s" % (
            status, len(body), extra, body)
        self.count("answered")
        self.flush(c)

    # ---- loop ----

    def run(self):
        parent = os.getppid()
        while os.getppid() == parent:  # the test process died: do not linger
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, fn, args = heapq.heappop(self.timers)
                fn(*args)
            timeout = 0.05
            if self.timers:
                timeout = max(0.0, min(timeout, self.timers[0][0] - time.monotonic()))
            for fd, events in self.ep.poll(timeout, 1024):
                if fd == self.ls.fileno():
                    self.accept()
                    continue
                c = self.conns.get(fd)
                if c is None:
                    continue
                if events & select.EPOLLOUT:
                    self.flush(c)
                    if c.fd not in self.conns:
                        continue
                if events & (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR):
                    self.on_readable(c, events)
            self.write_status()


def serve_main(argv):
    mode = argv[0]
    opts = {}
    i = 1
    while i < len(argv):
        key = argv[i].lstrip("-").replace("-", "_")
        opts[key] = argv[i + 1]
        i += 2
    srv = _Server(mode, opts)

    def stop(signum, frame):
        srv.write_status(force=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, lambda signum, frame: srv.listen())
    srv.write_status(force=True)
    sys.stdout.write("listening %d\n" % srv.ls.getsockname()[1])
    sys.stdout.flush()
    srv.run()


if __name__ == "__main__":
    serve_main(sys.argv[1:])
