#!/usr/bin/env python3
"""slow_clients: slowhttptest's slowloris (-H), slow body (-B) and slow read (-X)
against umbra while a fixed-rate probe measures a normal client's latency. It
is a benchmark that prints figures; it does not pass or fail.

    make slow-clients
    UMBRA_BIN=build/umbra /usr/bin/python3 tests/soak/slow_clients.py       # ~8 minutes
    ROUNDS=5 WINDOW_S=20 /usr/bin/python3 tests/soak/slow_clients.py        # longer

Everything runs on 127.0.0.1. umbra (`workers: 1`) is pinned to CPU 0, all
else to CPU 1. The probe is wrk with a Lua `delay()`: a few keep-alive
connections, each pausing after every answer, so the rate is fixed and
moderate (~1.5k requests/s) and umbra stays far from saturation: its p99 then
shows how quickly umbra answers, not how long a CPU queue is. The probe's
requests go to their own `umbra echo`; the attack's requests to another `umbra
echo` (slow body) or to an asyncio server with large responses (slow read).

With RT=1 (the default; needs root) umbra, the probe and the probe's echo run
SCHED_FIFO, everything else (slowhttptest, the attack's backends, the control
server, other people's processes) under the normal scheduler. On a shared
machine that keeps the other tenants' time slices out of the probe's latency
(a niced fuzzer on the same CPU alone puts a probe's p99 at ~4 ms), while the
attack's work inside umbra runs at umbra's priority and delays the probe as
it would on a core of its own. RT=0 measures without it.

Each round measures, in an order that rotates:

  unloaded         the probe alone (at the start and again at the end of the
                   round: how far the two differ is the noise floor)
  ATTACK/umbra     slowhttptest ATTACK aimed at umbra
  ATTACK/control   the same attack aimed at a control server: an asyncio server
                   on CPU 1 enforcing umbra's limits, so the attacker holds
                   about as many connections for as long. The attacker and its
                   target load CPU 1, but umbra is not attacked: umbra/control
                   is what the attack costs umbra itself (except for the work
                   of umbra's upstreams, which also run on CPU 1)

For every condition it prints the probe's p50/p99/p99.9 and errors, umbra's
open client connections (admin /stats) and RSS sampled every second, umbra's
CPU share and what else ran on CPU 0. With LOOP=1 (needs perf and root) it
also traces umbra's epoll_wait calls: the worker's busy stretches, from
epoll_wait's return to its next call, are the longest a request that became
ready meanwhile waits for umbra, umbra's own share of the probe's latency.
At the end, a table of medians over the rounds, with the p99 ratios against
the unloaded probe and against the control (each the median of the per-round
ratios). Knobs (environment):

  ROUNDS=3  WINDOW_S=15             rounds; seconds each condition's probe runs
  ATTACKS=slowloris,slowbody,slowread
  ATTACK_CONNS=2000 ATTACK_RATE=200 slowhttptest -c and -r
  PROBE_CONNS=4 PROBE_DELAY_MS=2    probe connections; pause after each answer
  MAX_CONNECTIONS=4096              umbra's listener limit
  BIG_BYTES=4194304                 response size the slow readers fetch
  RT=1                              SCHED_FIFO for umbra and the probe (above)
  LOOP=1                            trace umbra's epoll_wait calls with perf (above)
  PROBE_CPU=1                       0 puts the probe and its echo on umbra's CPU, away from
                                    the attacker: what the attack costs a normal client
                                    through umbra, without the attacker's own CPU load
  KEEP_WORK=1                       keep the temp dir (logs, slowhttptest CSVs)
  REFERENCES=nginx,haproxy          after umbra's conditions in each round, the same probe and
                                    attacks through Debian's nginx (proxy_buffering off) and
                                    HAProxy, each given umbra's limits, CPU and priority: what a
                                    proxy at all costs the probe here. Their ratios are against
                                    their own unloaded probe, taken at the start of their block
"""

import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))

UMBRA_CPU = 0
LOAD_CPU = 1
RT_PRIORITY = 10
KIB = 1024

# umbra's limits for these attacks; the control server enforces the same.
HEADER_TIMEOUT_S = 10
BODY_TIMEOUT_S = 10
MIN_BODY_RATE = 1024  # bytes/s, over RATE_WINDOW_S windows as in h1s.c
RATE_WINDOW_S = 5
SEND_TIMEOUT_S = 10
CONNECTION_BUFFER = 64 * KIB

# slowhttptest arguments per attack (-c, -r, -l, -p, -g, -o and -u are added).
ATTACK_ARGS = {
    "slowloris": ["-H", "-i", "5", "-x", "24"],
    "slowbody": ["-B", "-i", "5", "-s", "1000000", "-x", "10"],
    "slowread": ["-X", "-w", "512", "-y", "1024", "-n", "5", "-z", "32", "-k", "1"],
}
ATTACK_PATH = {"slowloris": "/slowloris", "slowbody": "/slowbody", "slowread": "/big/file.bin"}
ATTACK_LABEL = {"slowloris": "slowloris (-H)", "slowbody": "slow body (-B)", "slowread": "slow read (-X)"}

PROBE_LUA = r"""
local pause = tonumber(os.getenv("PROBE_DELAY_MS"))
function delay() return pause end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'PROBE {"requests":%.0f,"duration_us":%.0f,"connect":%.0f,"read":%.0f,"write":%.0f,' ..
    '"status":%.0f,"timeout":%.0f,"p50":%.0f,"p99":%.0f,"p999":%.0f,"max":%.0f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""


def env_int(name, default):
    return int(os.environ.get(name, default))


# ---- the asyncio backend and control server (`--serve MODE PORTFILE BIGBYTES`) ----

class Served:
    """A minimal HTTP/1.1 server. `backend` has no limits (umbra's upstream for
    /big/); `control` enforces umbra's limits, so an attack aimed at it lives
    about as long as one aimed at umbra."""

    def __init__(self, limited, big_bytes):
        self.limited = limited
        self.big_bytes = big_bytes
        self.piece = b"x" * (16 * KIB)

    async def read_head(self, reader):
        try:
            return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_TIMEOUT_S if self.limited else None)
        except asyncio.TimeoutError:
            return b"408"
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None

    async def read_body(self, reader, length):
        """Reads `length` bytes; False when the client is gone or too slow: a
        gap over body_timeout, or under min_body_rate over a window (as umbra)."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        window_end, window_bytes = last + RATE_WINDOW_S, 0
        while length > 0:
            wait = None
            if self.limited:
                now = loop.time()
                if now >= window_end:
                    if window_bytes < MIN_BODY_RATE * RATE_WINDOW_S:
                        return False
                    window_end, window_bytes = window_end + RATE_WINDOW_S, 0
                if now >= last + BODY_TIMEOUT_S:
                    return False
                wait = min(last + BODY_TIMEOUT_S, window_end) - now
            try:
                data = await asyncio.wait_for(reader.read(min(length, 65536)), wait)
            except asyncio.TimeoutError:
                continue  # a deadline: checked at the top
            except ConnectionError:
                return False
            if not data:
                return False
            length -= len(data)
            window_bytes += len(data)
            last = loop.time()
        return True

    async def send_big(self, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.big_bytes)
        left = self.big_bytes
        while left > 0:
            n = min(left, len(self.piece))
            writer.write(self.piece[:n])
            left -= n
            # drain() returns once the buffer is under its low mark: a slow
            # reader that frees nothing for SEND_TIMEOUT_S is cut, as by umbra.
            await asyncio.wait_for(writer.drain(), SEND_TIMEOUT_S if self.limited else None)

    async def handle(self, reader, writer):
        writer.transport.set_write_buffer_limits(high=16 * KIB)
        timeout_answer = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        try:
            while True:
                head = await self.read_head(reader)
                if head is None:
                    return
                if head == b"408":
                    writer.write(timeout_answer)
                    await writer.drain()
                    return
                m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
                if m and not await self.read_body(reader, int(m.group(1))):
                    if self.limited:
                        writer.write(timeout_answer)
                    return
                if b" /big/" in head.split(b"\r\n", 1)[0]:
                    await self.send_big(writer)
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                    await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.transport.abort()

    async def run(self, port_file):
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0, backlog=4096, limit=256 * KIB)
        with open(port_file + ".tmp", "w") as f:
            f.write(str(server.sockets[0].getsockname()[1]))
        os.replace(port_file + ".tmp", port_file)
        async with server:
            await server.serve_forever()


def serve_main(mode, port_file, big_bytes):
    raise_nofile()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(Served(mode == "control", big_bytes).run(port_file))


# ---- processes ----

def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rt_allowed():
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
    except (PermissionError, OSError):
        return False
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return True


def placement(cpu, rt):
    """preexec_fn: pin to `cpu`, and SCHED_FIFO if `rt`."""
    def place():
        os.sched_setaffinity(0, {cpu})
        if rt:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
    return place


def wait_for(what, fn, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.05)
    raise RuntimeError("slow_clients: timed out waiting for " + what)


def read_file(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def log_match(path, pattern):
    def look():
        m = re.search(pattern, read_file(path))
        return m and int(m.group(1))
    return look


class Procs:
    def __init__(self, work):
        self.work = work
        self.procs = []

    def start(self, name, argv, cpu, rt=False):
        log = open(os.path.join(self.work, name + ".log"), "w")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=placement(cpu, rt))
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def umbra_config(ports, max_conns):
    return f"""workers: 1
admin: {{listen: 127.0.0.1:0}}
listeners:
  - name: ingress
    listen: 127.0.0.1:0
    limits:
      header_timeout: {HEADER_TIMEOUT_S}s
      body_timeout: {BODY_TIMEOUT_S}s
      min_body_rate: {MIN_BODY_RATE}
      send_timeout: {SEND_TIMEOUT_S}s
      idle_timeout: 30s
      max_connections: {max_conns}
      connection_buffer: {CONNECTION_BUFFER}
clusters:
  - name: probe
    endpoints: [127.0.0.1:{ports["echo-probe"]}]
  - name: echo
    endpoints: [127.0.0.1:{ports["echo-attack"]}]
    max_connections: 8192
  - name: big
    endpoints: [127.0.0.1:{ports["backend"]}]
    max_connections: 8192
routes:
  - name: probe
    match: {{exact: /probe}}
    cluster: probe
  - name: big
    match: {{prefix: /big/}}
    cluster: big
  - name: default
    match: {{prefix: /}}
    cluster: echo
"""


REFERENCES = ("nginx", "haproxy")


def nginx_config(ports, max_conns, port, work):
    """umbra's limits in nginx's terms. proxy_buffering is off, so that nginx,
    like umbra, streams a response through one bounded buffer per connection;
    with it on (the default) nginx spools each slow reader's whole response
    to a temp file, disk work umbra never does."""
    tmp = os.path.join(work, "nginx-tmp")
    os.makedirs(tmp, exist_ok=True)
    return f"""daemon off; master_process off; worker_processes 1; worker_rlimit_nofile {2 * max_conns + 256};
pid {work}/nginx.pid; error_log stderr error;
events {{ worker_connections {2 * max_conns}; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  client_header_timeout {HEADER_TIMEOUT_S}s; client_body_timeout {BODY_TIMEOUT_S}s;
  send_timeout {SEND_TIMEOUT_S}s; keepalive_timeout 30s; keepalive_requests 1000000;
  proxy_http_version 1.1; proxy_set_header Connection "";
  proxy_buffering off; proxy_buffer_size {CONNECTION_BUFFER // KIB}k; proxy_buffers 4 {CONNECTION_BUFFER // KIB}k;
  upstream probe {{ server 127.0.0.1:{ports["echo-probe"]}; keepalive 64; }}
  upstream echo {{ server 127.0.0.1:{ports["echo-attack"]}; keepalive 64; }}
  upstream big {{ server 127.0.0.1:{ports["backend"]}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /probe {{ proxy_pass http://probe; }}
    location /big/ {{ proxy_pass http://big; }}
    location / {{ proxy_pass http://echo; }}
  }}
}}
"""


def haproxy_config(ports, max_conns, port):
    """umbra's limits in HAProxy's terms: `timeout client` is its send and body
    timeout (inactivity either way), `timeout http-request` the header
    deadline; two buffers of connection_buffer per stream, as in umbra."""
    return f"""global
  nbthread 1
  maxconn {2 * max_conns}
  tune.bufsize {CONNECTION_BUFFER}
defaults
  mode http
  timeout connect 2s
  timeout client {SEND_TIMEOUT_S}s
  timeout http-request {HEADER_TIMEOUT_S}s
  timeout http-keep-alive 30s
  timeout server 30s
frontend ingress
  bind 127.0.0.1:{port}
  maxconn {max_conns}
  use_backend probe if {{ path /probe }}
  use_backend big if {{ path_beg /big/ }}
  default_backend echo
backend probe
  server s 127.0.0.1:{ports["echo-probe"]}
backend echo
  server s 127.0.0.1:{ports["echo-attack"]}
backend big
  server s 127.0.0.1:{ports["backend"]}
"""


def free_port():
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def http_get(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as r:
        return r.read()


# ---- measuring ----

def proc_cpu_s(pid):
    """User + system CPU seconds of a process so far."""
    try:
        fields = read_file("/proc/%d/stat" % pid).rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except IndexError:
        return 0.0


def cpu_ticks():
    """{cpu: (busy without nice, nice, total)} from /proc/stat."""
    out = {}
    for line in read_file("/proc/stat").splitlines():
        m = re.match(r"cpu(\d+) (.*)", line)
        if m:
            v = [int(x) for x in m.group(2).split()[:8]]  # user nice system idle iowait irq softirq steal
            out[int(m.group(1))] = (v[0] + v[2] + v[5] + v[6] + v[7], v[1], sum(v))
    return out


def shares(before, after, cpu):
    """(busy without nice, niced) shares of `cpu` between two cpu_ticks()."""
    b0, n0, t0 = before[cpu]
    b1, n1, t1 = after[cpu]
    total = max(1, t1 - t0)
    return (b1 - b0) / total, (n1 - n0) / total


def tcp_established(port):
    """Established TCP connections whose local port is `port` (/proc/net/tcp):
    a reference proxy's client connections, which it has no admin API to tell."""
    n = 0
    for line in read_file("/proc/net/tcp").splitlines()[1:]:
        f = line.split()
        if len(f) > 3 and f[3] == "01" and int(f[1].rsplit(":", 1)[1], 16) == port:
            n += 1
    return n


def proc_rss(pid):
    for line in read_file("/proc/%d/status" % pid).splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KIB
    return 0


class Proxy:
    """A proxy the probe goes through: umbra, or a reference (nginx, haproxy)
    given the same limits, routes and backends."""

    def __init__(self, name, proc, port, admin=None):
        self.name, self.proc, self.port, self.admin = name, proc, port, admin
        self.url = "http://127.0.0.1:%d" % port

    def conns(self):
        if self.admin is None:
            return tcp_established(self.port)
        try:
            return json.loads(http_get(self.admin, "/stats"))["downstream"]["connections_open"]
        except (OSError, ValueError, KeyError):
            return -1

    def rss(self):
        return proc_rss(self.proc.pid)


class Sampler(threading.Thread):
    """Every second: each proxy's open client connections and RSS."""

    def __init__(self, proxies):
        super().__init__(daemon=True)
        self.proxies = proxies
        self.samples = {p.name: [] for p in proxies}  # (monotonic, connections, rss bytes)
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.wait(1.0):
            for p in self.proxies:
                self.samples[p.name].append((time.monotonic(), p.conns(), p.rss()))

    def between(self, name, t0, t1):
        return [s for s in self.samples[name] if t0 <= s[0] <= t1]


def timeouts(admin_port):
    out = {}
    text = http_get(admin_port, "/metrics").decode()
    for m in re.finditer(r'^umbra_downstream_timeouts_total\{kind="(\w+)"\} (\d+)', text, re.M):
        out[m.group(1)] = int(m.group(2))
    return out


def perf_works(work):
    """Whether `perf record` can trace syscalls here (root, tracefs)."""
    if not shutil.which("perf"):
        return False
    out = os.path.join(work, "perf-check.data")
    r = subprocess.run(["perf", "record", "-q", "-e", "syscalls:sys_enter_epoll_wait", "-o", out, "--", "true"],
                       capture_output=True, timeout=30)
    return r.returncode == 0


def start_loop_trace(pid, path, seconds):
    """Records each epoll_wait entry and return of umbra's threads for `seconds`."""
    return subprocess.Popen(["perf", "record", "-q", "-e", "syscalls:sys_enter_epoll_wait", "-e",
                             "syscalls:sys_exit_epoll_wait", "-p", str(pid), "-o", path, "--", "sleep", str(seconds)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def loop_stats(path):
    """The worker's busy stretches (epoll_wait's return to its next call, in
    microseconds): how long a request that became ready meanwhile waits for
    umbra's loop at most. The worker is the thread with the most of them."""
    out = subprocess.run(["perf", "script", "-i", path, "-F", "tid,time,event"], capture_output=True, text=True,
                         timeout=120).stdout
    stretches, woke = {}, {}
    for line in out.splitlines():
        f = line.split()
        if len(f) < 3:
            continue
        tid, t = f[0], float(f[1].rstrip(":"))
        if "sys_exit_epoll_wait" in f[2]:
            woke[tid] = t
        elif "sys_enter_epoll_wait" in f[2] and tid in woke:
            stretches.setdefault(tid, []).append((t - woke.pop(tid)) * 1e6)
    busy = sorted(max(stretches.values(), key=len, default=[]))
    if not busy:
        return None
    n = len(busy)
    return {"iterations": n, "p99": busy[int(0.99 * (n - 1))], "p999": busy[int(0.999 * (n - 1))],
            "max": busy[-1], "over500": sum(1 for b in busy if b > 500)}


def run_probe(work, url, window_s, cfg):
    env = dict(os.environ, PROBE_DELAY_MS=str(cfg["delay_ms"]))
    out = subprocess.run(["wrk", "-t1", "-c%d" % cfg["probe_conns"], "-d%ds" % window_s, "--timeout", "2s",
                          "-s", os.path.join(work, "probe.lua"), url + "/probe"],
                         env=env, capture_output=True, text=True, timeout=window_s + 30,
                         preexec_fn=placement(cfg["probe_cpu"], cfg["rt"]))
    m = re.search(r"^PROBE (\{.*\})$", out.stdout, re.M)
    if not m:
        raise RuntimeError("slow_clients: wrk said:\n" + out.stdout + out.stderr)
    r = json.loads(m.group(1))
    r["rate"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = sum(r[k] for k in ("connect", "read", "write", "status", "timeout"))
    return r


def slowhttptest_peak(prefix):
    """The most connections slowhttptest held at once, from its -g CSV."""
    peak = 0
    for line in read_file(prefix + ".csv").splitlines()[1:]:
        cols = line.split(",")
        if len(cols) >= 4 and cols[3].strip().isdigit():
            peak = max(peak, int(cols[3]))
    return peak


class Bench:
    def __init__(self, work, umbra, cfg):
        self.work = work
        self.umbra_bin = umbra
        self.cfg = cfg
        self.procs = Procs(work)
        self.sampler = None
        self.proxies = {}

    def start(self):
        work, cfg = self.work, self.cfg
        ports = {}
        for name in ("echo-probe", "echo-attack"):
            self.procs.start(name, [self.umbra_bin, "echo", "--listen", "127.0.0.1:0"],
                             cfg["probe_cpu"] if name == "echo-probe" else LOAD_CPU,
                             rt=cfg["rt"] and name == "echo-probe")
            ports[name] = wait_for(name, log_match(os.path.join(work, name + ".log"), r"listening on 127\.0\.0\.1:(\d+)"))
        for mode in ("backend", "control"):
            pf = os.path.join(work, mode + ".port")
            self.procs.start(mode, [sys.executable, os.path.abspath(__file__), "--serve", mode, pf, str(cfg["big"])],
                             LOAD_CPU)
            ports[mode] = wait_for(mode, lambda pf=pf: read_file(pf) and int(read_file(pf)))
        conf = os.path.join(work, "umbra.yaml")
        with open(conf, "w") as f:
            f.write(umbra_config(ports, cfg["max_conns"]))
        umbra = self.procs.start("umbra", [self.umbra_bin, "-c", conf], UMBRA_CPU, rt=cfg["rt"])
        ulog = os.path.join(work, "umbra.log")
        port = wait_for("umbra", log_match(ulog, r"listener ingress listening on 127\.0\.0\.1:(\d+)"))
        self.admin = wait_for("umbra admin", log_match(ulog, r"admin listening on 127\.0\.0\.1:(\d+)"))
        self.proxies["umbra"] = Proxy("umbra", umbra, port, self.admin)
        for ref in cfg["references"]:
            self.proxies[ref] = self.start_reference(ref, ports)
        self.targets = {name: p.url for name, p in self.proxies.items()}
        self.targets["control"] = "http://127.0.0.1:%d" % ports["control"]
        for name in self.proxies:
            for url in (self.targets[name] + "/probe", self.targets[name] + "/big/x"):
                wait_for(url, lambda url=url: self.fetch_ok(url))
        wait_for("control", lambda: self.fetch_ok(self.targets["control"] + "/x"))
        with open(os.path.join(work, "probe.lua"), "w") as f:
            f.write(PROBE_LUA)
        self.sampler = Sampler(list(self.proxies.values()))
        self.idle_rss = self.proxies["umbra"].rss()
        self.sampler.start()

    def start_reference(self, name, ports):
        """nginx or haproxy on umbra's CPU and priority, with umbra's limits."""
        port = free_port()
        conf = os.path.join(self.work, name + ".conf")
        if name == "nginx":
            text, argv = nginx_config(ports, self.cfg["max_conns"], port, self.work), ["nginx", "-c", conf]
        else:
            text, argv = haproxy_config(ports, self.cfg["max_conns"], port), ["haproxy", "-db", "-f", conf]
        with open(conf, "w") as f:
            f.write(text)
        return Proxy(name, self.procs.start(name, argv, UMBRA_CPU, rt=self.cfg["rt"]), port)

    @staticmethod
    def fetch_ok(url):
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return len(r.read()) > 0
        except OSError:
            return False

    def measure(self, attack, target, tag, via="umbra"):
        """The probe through proxy `via`, while `attack` (or nothing) is aimed
        at `target` (`via` itself or the control server)."""
        cfg = self.cfg
        proxy = self.proxies[via]
        pid = proxy.proc.pid
        atk = None
        prefix = os.path.join(self.work, tag)
        before_t = timeouts(self.admin) if via == "umbra" else {}
        if attack:
            argv = (["slowhttptest"] + ATTACK_ARGS[attack] +
                    ["-c", str(cfg["conns"]), "-r", str(cfg["rate"]), "-l", str(cfg["window"] + 2),
                     "-p", "5", "-g", "-o", prefix, "-u", self.targets[target] + ATTACK_PATH[attack]])
            out = open(prefix + ".out", "w")
            atk = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            time.sleep(0.5)  # the probe starts once the first attack connections are open
        trace = start_loop_trace(pid, prefix + ".perf", cfg["window"]) if cfg["loop"] else None
        t0, ticks0, cpu0 = time.monotonic(), cpu_ticks(), proc_cpu_s(pid)
        probe = run_probe(self.work, proxy.url, cfg["window"], cfg)
        t1, ticks1, cpu1 = time.monotonic(), cpu_ticks(), proc_cpu_s(pid)
        if trace:
            trace.wait(timeout=30)
        window = self.sampler.between(via, t0, t1 + 0.5)
        busy0, niced0 = shares(ticks0, ticks1, UMBRA_CPU)
        busy1, niced1 = shares(ticks0, ticks1, LOAD_CPU)
        proxy_share = (cpu1 - cpu0) / (t1 - t0)
        res = dict(probe)
        res.update(attack=attack, target=target, via=via, proxy_cpu=proxy_share,
                   other0=max(0.0, busy0 - proxy_share), niced0=niced0, busy1=busy1, niced1=niced1,
                   conns_peak=max((s[1] for s in window), default=-1),
                   conns_end=window[-1][1] if window else -1,
                   rss_peak=max((s[2] for s in window), default=0),
                   loop_trace=prefix + ".perf" if trace else None, loop=None)
        if atk:
            try:
                atk.wait(timeout=cfg["window"] + 30)
            except subprocess.TimeoutExpired:
                atk.kill()
                atk.wait()
            res["attacker_peak"] = slowhttptest_peak(prefix)
            if via == "umbra":
                after_t = timeouts(self.admin)
                res["timeouts"] = {k: v - before_t.get(k, 0) for k, v in after_t.items() if v != before_t.get(k, 0)}
        # A reference proxy may keep a connection it timed out for a while
        # longer (nginx lingers on a close): wait, but do not fail the run.
        try:
            wait_for("%s's client connections to close" % via, lambda: proxy.conns() == 0, timeout=30)
        except RuntimeError:
            if via == "umbra":
                raise
            print("  (%s still had %d client connections after 30 s)" % (via, proxy.conns()))
        time.sleep(0.5)  # let the closes and frees settle before the next condition
        return res


# ---- reporting ----

def fmt_us(v):
    return "%.0f us" % v if v < 10000 else "%.1f ms" % (v / 1000)


def pct(v):
    return "%.0f %%" % (100 * v)


def describe(r):
    s = "p50 %7s  p99 %7s  p99.9 %7s  max %7s  %5.0f req/s  errors %d" % (
        fmt_us(r["p50"]), fmt_us(r["p99"]), fmt_us(r["p999"]), fmt_us(r["max"]), r["rate"], r["errors"])
    s += " | CPU0 %s %s, other %s, niced %s; CPU1 %s, niced %s" % (
        r["via"], pct(r["proxy_cpu"]), pct(r["other0"]), pct(r["niced0"]), pct(r["busy1"]), pct(r["niced1"]))
    if r.get("loop"):
        s += " | %s loop busy p99 %s p99.9 %s max %s, %d over 500 us" % (r["via"],
            fmt_us(r["loop"]["p99"]), fmt_us(r["loop"]["p999"]), fmt_us(r["loop"]["max"]), r["loop"]["over500"])
    if r["target"] == r["via"]:
        s += " | %s conns peak %d end %d, RSS peak %.1f MB" % (r["via"], r["conns_peak"], r["conns_end"],
                                                              r["rss_peak"] / 2**20)
    if r.get("attacker_peak") is not None:
        s += " | attacker held %d" % r["attacker_peak"]
    if r.get("timeouts"):
        s += " | umbra timeouts " + ",".join("%s=%d" % kv for kv in sorted(r["timeouts"].items()))
    return s


def med(values):
    return statistics.median(values) if values else float("nan")


def summary(rounds, attacks, bench, cfg):
    lines = ["| condition | p50 | p99 | p99.9 | probe errors | p99 / unloaded | p99 / control "
             "| proxy's client connections peak / end | proxy RSS peak | proxy CPU | proxy loop busy p99 / p99.9 / max |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def loop_cell(rs):
        ls = [r["loop"] for r in rs if r.get("loop")]
        if not ls:
            return ""
        return "%s / %s / %s" % (fmt_us(med([x["p99"] for x in ls])), fmt_us(med([x["p999"] for x in ls])),
                                 fmt_us(max(x["max"] for x in ls)))

    def row(name, rs, vs_unloaded, vs_control, umbra_side):
        conns = "%d / %d" % (max(r["conns_peak"] for r in rs), med([r["conns_end"] for r in rs])) if umbra_side else ""
        rss = "%.1f MB" % (max(r["rss_peak"] for r in rs) / 2**20) if umbra_side else ""
        lines.append("| %s | %s | %s | %s | %d | %s | %s | %s | %s | %s | %s |" % (
            name, fmt_us(med([r["p50"] for r in rs])), fmt_us(med([r["p99"] for r in rs])),
            fmt_us(med([r["p999"] for r in rs])), sum(r["errors"] for r in rs), vs_unloaded, vs_control,
            conns, rss, pct(med([r["proxy_cpu"] for r in rs])), loop_cell(rs)))

    base = [dict(r["unloaded"], p99=(r["unloaded"]["p99"] + r["unloaded-again"]["p99"]) / 2) for r in rounds]
    row("unloaded (start of round)", [r["unloaded"] for r in rounds], "", "", True)
    row("unloaded (end of round)", [r["unloaded-again"] for r in rounds], "", "", True)
    spread = [max(a, b) / min(a, b) for a, b in ((r["unloaded"]["p99"], r["unloaded-again"]["p99"]) for r in rounds)]
    verdicts = []
    for a in attacks:
        on = [r[a, "umbra"] for r in rounds]
        ctl = [r[a, "control"] for r in rounds]
        vs_u = med([x["p99"] / b["p99"] for x, b in zip(on, base)])
        vs_c = med([x["p99"] / c["p99"] for x, c in zip(on, ctl)])
        row(ATTACK_LABEL[a] + " on umbra", on, "%.2f" % vs_u, "%.2f" % vs_c, True)
        row(ATTACK_LABEL[a] + " on control", ctl, "%.2f" % med([c["p99"] / b["p99"] for c, b in zip(ctl, base)]),
            "", False)
        verdicts.append("%s: p99 %.2f x unloaded (%s), %.2f x control (%s)" % (
            ATTACK_LABEL[a], vs_u, "within 10 %" if vs_u <= 1.10 else "NOT within 10 %",
            vs_c, "within 10 %" if vs_c <= 1.10 else "NOT within 10 %"))
    for ref in cfg["references"]:
        ref_base = [r[None, ref] for r in rounds]
        row("unloaded, through %s" % ref, ref_base, "", "", True)
        for a in attacks:
            on = [r[a, ref] for r in rounds]
            vs_u = med([x["p99"] / b["p99"] for x, b in zip(on, ref_base)])
            row("%s on %s" % (ATTACK_LABEL[a], ref), on, "%.2f" % vs_u, "", True)
            verdicts.append("%s through %s: p99 %.2f x unloaded through %s (%s)" % (
                ATTACK_LABEL[a], ref, vs_u, ref, "within 10 %" if vs_u <= 1.10 else "NOT within 10 %"))
    everything = [r for rr in rounds for r in rr.values() if r["via"] == "umbra"]
    peak = max(r["conns_peak"] for r in everything)
    rss = max(r["rss_peak"] for r in everything)
    lines.append("")
    lines.append("medians of %d rounds; RT=%d; a ratio is the median of the per-round ratios, against the mean "
                 "p99 of the round's two unloaded runs or against the control" % (len(rounds), cfg["rt"]))
    lines.append("noise: the two unloaded p99s of a round differ by %s (median; max %s): ratios closer to 1 than "
                 "that cannot be told apart" % ("x %.2f" % med(spread), "x %.2f" % max(spread)))
    lines.extend(verdicts)
    lines.append("umbra client connections: peak %d, max_connections %d (%s)" % (
        peak, cfg["max_conns"], "under" if peak < cfg["max_conns"] else "AT THE LIMIT"))
    per_conn = (rss - bench.idle_rss) / max(peak, 1)
    lines.append("umbra RSS: peak %.1f MB, idle %.1f MB, at the end %.1f MB (the allocator keeps what was freed); "
                 "(peak - idle) / peak connections = %.0f KiB = %.2f x (2 x connection_buffer of %d KiB, one per "
                 "direction)" % (rss / 2**20, bench.idle_rss / 2**20, bench.proxies["umbra"].rss() / 2**20, per_conn / KIB,
                                 per_conn / (2 * CONNECTION_BUFFER), CONNECTION_BUFFER // KIB))
    other = med([r["other0"] for r in everything])
    if other > 0.05 and not cfg["rt"]:
        lines.append("WARNING: other (non-niced) processes used %s of CPU 0 and umbra ran without RT: "
                     "the latencies are not umbra's alone" % pct(other))
    return lines


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    umbra = os.environ.get("UMBRA_BIN") or os.path.join(ROOT, "build", "umbra")
    if not os.access(umbra, os.X_OK):
        if "UMBRA_BIN" in os.environ:
            sys.exit("slow_clients: %s is not executable" % umbra)
        subprocess.run(["make", "-C", ROOT, "build/umbra"], check=True)
    for tool in ("slowhttptest", "wrk"):
        if not shutil.which(tool):
            sys.exit("slow_clients: %s is missing (scripts/install-deps.sh)" % tool)
    if os.cpu_count() < 2:
        sys.exit("slow_clients: needs two CPUs (umbra on CPU 0, everything else on CPU 1)")
    references = [r for r in os.environ.get("REFERENCES", "").split(",") if r]
    for ref in references:
        if ref not in REFERENCES:
            sys.exit("slow_clients: unknown reference %r (one of %s)" % (ref, ", ".join(REFERENCES)))
        if not shutil.which(ref):
            sys.exit("slow_clients: %s is missing (scripts/install-deps.sh)" % ref)
    cfg = dict(references=references, rounds=env_int("ROUNDS", 3), window=env_int("WINDOW_S", 15),
               conns=env_int("ATTACK_CONNS", 2000), rate=env_int("ATTACK_RATE", 200),
               probe_conns=env_int("PROBE_CONNS", 4), delay_ms=env_int("PROBE_DELAY_MS", 2),
               max_conns=env_int("MAX_CONNECTIONS", 4096), big=env_int("BIG_BYTES", 4 << 20),
               rt=env_int("RT", 1), loop=env_int("LOOP", 1), probe_cpu=env_int("PROBE_CPU", LOAD_CPU))
    if cfg["probe_cpu"] not in (UMBRA_CPU, LOAD_CPU):
        sys.exit("slow_clients: PROBE_CPU must be %d or %d" % (UMBRA_CPU, LOAD_CPU))
    if cfg["rt"] and not rt_allowed():
        print("slow_clients: SCHED_FIFO not permitted; measuring with RT=0")
        cfg["rt"] = 0
    attacks = [a for a in os.environ.get("ATTACKS", "slowloris,slowbody,slowread").split(",") if a]
    for a in attacks:
        if a not in ATTACK_ARGS:
            sys.exit("slow_clients: unknown attack %r" % a)
    os.sched_setaffinity(0, {LOAD_CPU})
    raise_nofile()
    work = tempfile.mkdtemp(prefix="umbra-slow-")
    if cfg["loop"] and not perf_works(work):
        print("slow_clients: perf cannot trace syscalls here; no loop figures (LOOP=0)")
        cfg["loop"] = 0
    bench = Bench(work, umbra, cfg)
    print("slow_clients: umbra %s, 1 worker, CPU %d%s; backends, slowhttptest on CPU %d; probe and its echo on CPU %d" % (
        umbra, UMBRA_CPU, ", SCHED_FIFO with the probe and its echo" if cfg["rt"] else "", LOAD_CPU,
        cfg["probe_cpu"]))
    print("  probe: wrk, %d keep-alive connections, %d ms pause after each answer, %d s per condition" % (
        cfg["probe_conns"], cfg["delay_ms"], cfg["window"]))
    print("  attacks: slowhttptest -c %d -r %d; umbra limits: header_timeout %ds, body_timeout %ds, "
          "min_body_rate %d B/s, send_timeout %ds, max_connections %d, connection_buffer %d KiB" % (
              cfg["conns"], cfg["rate"], HEADER_TIMEOUT_S, BODY_TIMEOUT_S, MIN_BODY_RATE, SEND_TIMEOUT_S,
              cfg["max_conns"], CONNECTION_BUFFER // KIB), flush=True)
    try:
        bench.start()
        run_probe(work, bench.targets["umbra"], 3, cfg)  # warm up
        rounds = []
        for i in range(cfg["rounds"]):
            order = attacks[i % len(attacks):] + attacks[:i % len(attacks)]
            results = {}
            print("round %d" % (i + 1))
            results["unloaded"] = bench.measure(None, "umbra", "r%d-unloaded" % i)
            print("  %-18s %s" % ("unloaded", describe(results["unloaded"])), flush=True)
            for a in order:
                for t in (("umbra", "control") if i % 2 == 0 else ("control", "umbra")):
                    results[a, t] = bench.measure(a, t, "r%d-%s-%s" % (i, a, t))
                    print("  %-18s %s" % ("%s/%s" % (a, t), describe(results[a, t])), flush=True)
            results["unloaded-again"] = bench.measure(None, "umbra", "r%d-unloaded-again" % i)
            print("  %-18s %s" % ("unloaded again", describe(results["unloaded-again"])), flush=True)
            for ref in cfg["references"]:
                results[None, ref] = bench.measure(None, ref, "r%d-%s-unloaded" % (i, ref), via=ref)
                print("  %-18s %s" % ("unloaded/" + ref, describe(results[None, ref])), flush=True)
                for a in order:
                    results[a, ref] = bench.measure(a, ref, "r%d-%s-%s" % (i, a, ref), via=ref)
                    print("  %-18s %s" % ("%s/%s" % (a, ref), describe(results[a, ref])), flush=True)
            rounds.append(results)
        if cfg["loop"]:  # parsed after the measuring, so that it costs none of them CPU time
            print("the proxy's loop, per condition (busy stretches p99 / p99.9 / max):")
            for i, results in enumerate(rounds):
                for key, r in results.items():
                    r["loop"] = loop_stats(r["loop_trace"])
                    if r["loop"]:
                        name = key if isinstance(key, str) else "%s/%s" % (key[0] or "unloaded", key[1])
                        print("  round %d %-18s %s / %s / %s, %d iterations, %d over 500 us" % (
                            i + 1, name, fmt_us(r["loop"]["p99"]),
                            fmt_us(r["loop"]["p999"]), fmt_us(r["loop"]["max"]), r["loop"]["iterations"],
                            r["loop"]["over500"]))
        print()
        print("\n".join(summary(rounds, attacks, bench, cfg)))
    finally:
        if bench.sampler:
            bench.sampler.stopping.set()
        bench.procs.stop()
        if os.environ.get("KEEP_WORK"):
            print("slow_clients: work directory kept: " + work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
