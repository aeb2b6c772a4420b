"""Harness for umbra's black-box tests: start and stop the binary, talk to it.

Holds the pieces that conftest.py's fixtures and the test modules share: the
Umbra process wrapper (config file, log file, ports read from the log, signals,
admin calls, RSS), a raw HTTP/1.1 client that shows exactly what came back, a
Prometheus text parser, a small YAML writer and wait_until(). It knows nothing
about pytest, so it can be used from a Python prompt against any binary.
"""

import contextlib
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time

from backends import Reader, ProtocolError, PeerClosed

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def wait_until(pred, timeout=5.0, interval=0.02, what=None):
    """Polls pred() until it returns something truthy, which it returns; an
    AssertionError once `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what or getattr(pred, "__name__", pred)))
        time.sleep(interval)


# ---------------------------------------------------------------- strace

def traced(pid):
    """True once every thread of pid is under a tracer."""
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
            if "TracerPid:\t0\n" in f.read():
                return False
    return True


@contextlib.contextmanager
def strace(pid, log, syscall, failed_only=False, string_bytes=None):
    """Writes pid's `syscall` calls (all threads) to `log` for the with-block:
    attached before the block runs, detached after it."""
    argv = ["strace", "-f", "-qq", "-e", "trace=" + syscall]
    if failed_only:
        argv += ["-e", "status=failed"]
    if string_bytes:
        argv += ["-s", str(string_bytes)]
    tracer = subprocess.Popen(argv + ["-o", str(log), "-p", str(pid)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: traced(pid), what="strace to attach")
        yield
    finally:
        tracer.terminate()
        tracer.wait(10)


# ---------------------------------------------------------------- YAML

_PLAIN = re.compile(r"^[A-Za-z_/.][A-Za-z0-9_./:\-]*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    s = str(v)
    if _PLAIN.match(s) and s.lower() not in _RESERVED:
        return s
    if re.match(r"^[0-9][A-Za-z0-9.:]*$", s) and not re.match(r"^[0-9.]+$", s):
        return s  # 10s, 32KiB, 127.0.0.1:80
    return json.dumps(s)  # a JSON string is a valid YAML double-quoted scalar


def to_yaml(obj, indent=0):
    """Block-style YAML for nested dicts/lists of scalars (what configs need)."""
    pad = " " * indent
    out = []
    for key, value in obj.items():
        if isinstance(value, dict):
            out.append("%s%s:" % (pad, key))
            out.append(to_yaml(value, indent + 2))
        elif isinstance(value, list):
            if all(not isinstance(x, (dict, list)) for x in value):
                out.append("%s%s: [%s]" % (pad, key, ", ".join(_scalar(x) for x in value)))
            else:
                out.append("%s%s:" % (pad, key))
                for item in value:
                    lines = to_yaml(item, indent + 4).split("\n")
                    lines[0] = pad + "  - " + lines[0][indent + 4:]
                    out.append("\n".join(lines))
        else:
            out.append("%s%s: %s" % (pad, key, _scalar(value)))
    return "\n".join(out)


def make_config(clusters, routes=None, workers=2, limits=None, listener_extra=None, **top):
    """A config dict with a listener and admin on port 0.

    clusters: {name: [Backend or "host:port", ...]} or {name: {"endpoints": [...], opts...}}.
    routes: list of route dicts; default one prefix "/" route to the first cluster.
    """
    cl = []
    for name, spec in clusters.items():
        if isinstance(spec, dict):
            spec = dict(spec)
            eps = spec.pop("endpoints")
        else:
            eps, spec = spec, {}
        entry = {"name": name, "endpoints": [getattr(e, "addr", e) for e in eps], "connect_timeout": "1s"}
        entry.update(spec)
        cl.append(entry)
    if routes is None:
        routes = [{"name": "all", "match": {"prefix": "/"}, "cluster": next(iter(clusters))}]
    listener = {"name": "ingress", "listen": "127.0.0.1:0"}
    if limits:
        listener["limits"] = dict(limits)
    if listener_extra:
        listener.update(listener_extra)
    cfg = {"workers": workers, "admin": {"listen": "127.0.0.1:0"}, "listeners": [listener]}
    cfg.update(top)
    cfg["clusters"] = cl
    cfg["routes"] = routes
    return cfg


# ---------------------------------------------------------------- responses

class Response:
    def __init__(self):
        self.version = ""
        self.status = 0
        self.reason = ""
        self.headers = []   # [(name, value)] as received
        self.trailers = []
        self.body = b""
        self.body_len = 0
        self.body_sha256 = None
        self.framing = None  # "none" | "length" | "chunked" | "close"
        self.interim = []    # 1xx statuses seen before this response
        self.raw_head = b""

    def header(self, name, default=None):
        v = self.all(name)
        return v[0] if v else default

    def all(self, name):
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]

    def names(self):
        return [n.lower() for n, _ in self.headers]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %d %s %s body=%dB>" % (self.status, self.reason, self.headers, self.body_len)


def read_response(reader, method="GET", keep_body=True, max_keep=64 << 20, on_data=None):
    """Reads one response (skipping and recording 1xx) from a Reader.
    keep_body=False only hashes and counts the body; on_data(n) sees progress."""
    resp = Response()
    while True:
        head = reader.read_head()
        if head is None:
            raise PeerClosed("connection closed before a response")
        lines = head[:-4].split(b"\r\n")
        status_line = lines[0].decode("latin-1")
        m = re.match(r"^(HTTP/\d\.\d) (\d{3})(?: (.*))?$", status_line)
        if not m:
            raise ProtocolError("bad status line %r" % status_line)
        status = int(m.group(2))
        if 100 <= status < 200 and status != 101:
            resp.interim.append(status)
            continue
        break
    resp.raw_head = head
    resp.version, resp.status, resp.reason = m.group(1), status, m.group(3) or ""
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ProtocolError("bad field line %r" % line)
        resp.headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))

    h = hashlib.sha256()
    kept = bytearray()

    def sink(data):
        h.update(data)
        resp.body_len += len(data)
        if keep_body and len(kept) < max_keep:
            kept.extend(data)
        if on_data:
            on_data(len(data))

    te = [v.lower() for v in resp.all("transfer-encoding")]
    cl = resp.all("content-length")
    if method == "HEAD" or status in (204, 304) or status == 101:
        resp.framing = "none"
    elif te:
        if te[-1].split(",")[-1].strip() != "chunked":
            raise ProtocolError("response Transfer-Encoding %r" % te)
        resp.framing = "chunked"
        resp.trailers = reader.read_chunked(sink)
    elif cl:
        if len(set(cl)) != 1 or not cl[0].isdigit():
            raise ProtocolError("response Content-Length %r" % cl)
        resp.framing = "length"
        reader.read_exact(int(cl[0]), sink)
    else:
        resp.framing = "close"
        reader.read_to_eof(sink)
    resp.body = bytes(kept)
    resp.body_sha256 = h.hexdigest()
    return resp


class Client:
    """One raw TCP connection: send exact bytes, read parsed responses."""

    def __init__(self, port, host="127.0.0.1", timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = Reader(self.sock)

    def send(self, data):
        self.sock.sendall(data)

    def request(self, method="GET", target="/", headers=(), body=None, host="test.local", version="HTTP/1.1"):
        self.send(build_request(method, target, headers, body, host, version))
        return self.read(method)

    def read(self, method="GET", **kw):
        return read_response(self.reader, method, **kw)

    def read_raw(self, timeout=5.0):
        """Everything until the peer closes (or `timeout`), unparsed."""
        self.sock.settimeout(timeout)
        out = bytearray(self.reader.buf)
        self.reader.buf.clear()
        try:
            while True:
                d = self.sock.recv(65536)
                if not d:
                    break
                out += d
        except (socket.timeout, ConnectionResetError):
            pass
        return bytes(out)

    def is_closed(self, timeout=5.0):
        """True when the peer closes (FIN or RST) within timeout with no further
        bytes; False if it stays open; AssertionError on unexpected bytes."""
        if self.reader.buf:
            raise AssertionError("unexpected bytes after the response: %r" % bytes(self.reader.buf[:200]))
        self.sock.settimeout(timeout)
        try:
            d = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
        if d:
            raise AssertionError("unexpected bytes after the response: %r" % d[:200])
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def build_request(method="GET", target="/", headers=(), body=None, host="test.local", version="HTTP/1.1"):
    """Request bytes; adds Host (unless None) and Content-Length for a bytes body
    unless the headers already frame it."""
    lines = ["%s %s %s" % (method, target, version)]
    names = {n.lower() for n, _ in headers}
    if host is not None and "host" not in names:
        lines.append("Host: " + host)
    lines += ["%s: %s" % (n, v) for n, v in headers]
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def chunked(body, sizes=(5, 1, 100), trailers=()):
    """Chunked encoding of body with chunk sizes cycling through `sizes`."""
    out = bytearray()
    i = k = 0
    while i < len(body):
        n = sizes[k % len(sizes)]
        k += 1
        part = body[i:i + n]
        out += b"%x\r\n" % len(part) + part + b"\r\n"
        i += n
    out += b"0\r\n"
    for n, v in trailers:
        out += ("%s: %s\r\n" % (n, v)).encode()
    return bytes(out + b"\r\n")


def connect_refused(port, host="127.0.0.1"):
    """True when a TCP connect to port is refused."""
    try:
        s = socket.create_connection((host, port), timeout=1.0)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    s.close()
    return False


# ---------------------------------------------------------------- metrics

_METRIC = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')


def parse_labels(text):
    labels = {}
    pos = 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if not m:
            raise ValueError("bad label set %r" % text)
        labels[m.group(1)] = m.group(2)
        pos = m.end()
    return labels


def parse_prometheus(text):
    """[(name, {labels}, value)] for every sample; ValueError on a bad line."""
    samples = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = _METRIC.match(line)
        if not m:
            raise ValueError("bad metrics line %r" % line)
        samples.append((m.group(1), parse_labels(m.group(3) or ""), float(m.group(4))))
    return samples


class Metrics:
    def __init__(self, text):
        self.text = text
        self.samples = parse_prometheus(text)

    def select(self, name, **labels):
        return [(l, v) for n, l, v in self.samples if n == name and all(l.get(k) == str(x) for k, x in labels.items())]

    def sum(self, name, **labels):
        return sum(v for _, v in self.select(name, **labels))

    def by_label(self, name, label, **labels):
        out = {}
        for l, v in self.select(name, **labels):
            out[l.get(label)] = out.get(l.get(label), 0) + v
        return out


def counter(u, name, **labels):
    """The sum of a metric's series matching labels (a counter's, or a
    gauge's), from u's /metrics."""
    return int(u.metrics().sum(name, **labels))


def upstream_requests(u, cluster="primary"):
    """Requests umbra started toward a cluster (counted when it chose the upstream)."""
    return counter(u, "umbra_upstream_requests_total", cluster=cluster)


# ---------------------------------------------------------------- process

class Umbra:
    """One umbra process with its config file and log file in `workdir`."""

    def __init__(self, binary, workdir, config, name="umbra"):
        self.binary = binary
        self.workdir = str(workdir)
        self.name = name
        self.config_path = os.path.join(self.workdir, name + ".yaml")
        self.log_path = os.path.join(self.workdir, name + ".log")
        self.proc = None
        self.ports = {}
        self.admin_port = None
        self.exit_code = None
        self.write_config(config)

    def write_config(self, config):
        text = config if isinstance(config, str) else to_yaml(config) + "\n"
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config_path)
        self.config_text = text

    def start(self, timeout=20.0, listeners=("ingress",), admin=True):
        env = dict(os.environ)
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen([self.binary, "-c", self.config_path], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, env=env, start_new_session=True)
        finally:
            log.close()

        def ready():
            text = self.log()
            for m in re.finditer(r"listener (\S+) listening on (?:\[[^\]]*\]|[0-9.]+):(\d+)", text):
                self.ports[m.group(1)] = int(m.group(2))
            m = re.search(r"admin listening on (?:\[[^\]]*\]|[0-9.]+):(\d+)", text)
            if m:
                self.admin_port = int(m.group(1))
            if self.proc.poll() is not None:
                raise AssertionError("umbra exited with %s during start-up:\n%s" % (self.proc.returncode, self.tail()))
            return all(l in self.ports for l in listeners) and (self.admin_port or not admin)

        try:
            wait_until(ready, timeout, 0.02, "umbra's listening lines")
        except AssertionError as e:
            raise AssertionError("%s\n--- umbra log tail ---\n%s" % (e, self.tail())) from None
        return self

    @property
    def port(self):
        return self.ports["ingress"]

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def tail(self, n=60):
        return "\n".join(self.log().splitlines()[-n:])

    def sanitizer_report(self):
        """The sanitizer lines in the log, with some context, or ''."""
        lines = self.log().splitlines()
        for i, line in enumerate(lines):
            if any(m in line for m in SANITIZER_MARKERS):
                return "\n".join(lines[max(0, i - 5): i + 40])
        return ""

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def reload_signal(self):
        self.signal(signal.SIGHUP)

    def wait_exit(self, timeout):
        try:
            self.exit_code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.exit_code

    def stop(self, timeout=15.0):
        """SIGTERM, then SIGKILL by PID after `timeout`; returns the exit code
        (negative for a signal), None if it was already reaped."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            if self.wait_exit(timeout) is None:
                self.proc.kill()
                self.proc.wait(10)
        self.exit_code = self.proc.returncode
        return self.exit_code

    def rss_bytes(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS for pid %d" % self.proc.pid)

    # ---- admin ----

    def admin(self, method, path, body=None, timeout=10.0):
        """(status, body bytes) of an admin request."""
        c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            c.request(method, path, body=body)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def metrics(self):
        status, body = self.admin("GET", "/metrics")
        assert status == 200, "GET /metrics -> %d %r" % (status, body[:200])
        return Metrics(body.decode())

    # ---- proxy traffic ----

    def get(self, target="/", headers=(), **kw):
        """One request on a fresh connection (Connection: close)."""
        with Client(self.port) as c:
            return c.request("GET", target, list(headers) + [("Connection", "close")], **kw)
