#!/usr/bin/env python3
"""bench — umbra's load benchmark.

Runs the same wrk load, in one invocation, against the primary directly and
through each proxy (umbra, NGINX, HAProxy, their mirror variants, and TLS
termination by umbra and NGINX with the same certificate), measures TLS
handshake rates (new and resumed) with bench/tls_handshakes.c, prints a table
and ratios, and writes build/bench/results.json. Every process is started here
on free 127.0.0.1 ports from a private temp dir and killed by PID on exit. It
measures; it asserts nothing about the numbers.

Settings come from the environment (see bench/README.md): BENCH_RUNS,
BENCH_SECONDS, BENCH_CONNECTIONS, BENCH_WARMUP, BENCH_SCENARIOS, BENCH_PRIMARY,
BENCH_UMBRA, BENCH_OUT, BENCH_KEEP, BENCH_WRK_TIMEOUT, BENCH_TLS_KEY,
BENCH_TLS_CONCURRENCY, BENCH_PACE_MS.
"""
import ctypes
import http.client
import json
import os
import re
import urllib.request
import platform
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
CONF = BENCH / "conf"
WRK_LUA = BENCH / "wrk_report.lua"
WRK_POST_JSON_LUA = BENCH / "wrk_post_json.lua"
HANDSHAKE_CLIENT_SRC = BENCH / "tls_handshakes.c"

# The machine has two cores: each proxy gets one to itself; wrk and every
# backend (primary, shadows) share the other.
PROXY_CPU = 0
LOAD_CPU = 1

# Shadow timeouts, the same for umbra and NGINX in the mirror scenarios.
SHADOW_CONNECT_TIMEOUT = "1s"
SHADOW_TIMEOUT = "1s"
SLOW_SHADOW_DELAY = 0.2  # seconds

# TLS scenarios: one certificate, made at bench time by the openssl command,
# served by both proxies. BENCH_TLS_KEY picks the key type. RSA 2048 is the
# default because with it the proxy, not the handshake client, is the busier
# side of a new handshake (an RSA signature costs far more than its check),
# so handshakes/s compares the proxies; with ECDSA P-256 the client's side
# costs more than the server's and the client's core saturates first.
TLS_NAME = "bench.test"
TLS_KEYS = {
    "p256": ("ECDSA P-256", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
    "rsa2048": ("RSA 2048", ["-newkey", "rsa:2048"]),
}

START_DEADLINE = 10.0  # seconds for a process to answer after start
STOP_GRACE = 3.0       # seconds between SIGTERM and SIGKILL
NOISY_OTHER = 0.15     # CPU (in cores) used by others above which a run is noisy


class BenchError(Exception):
    """A scenario could not be started or measured; the others go on."""


def env_int(name, default, minimum=1):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        sys.exit(f"bench: {name}={raw!r} is not an integer")
    if value < minimum:
        sys.exit(f"bench: {name} must be at least {minimum}")
    return value


@dataclass
class Settings:
    runs: int
    seconds: int
    connections: int
    warmup: int
    threads: int
    wrk_timeout: int
    scenarios: list
    primary: str
    proxy_cpus: float  # 0: the proxy has all of PROXY_CPU; else a CFS quota of that share
    umbra: Path
    out: Path
    keep: bool
    tls_key: str
    tls_concurrency: int
    pace_ms: int  # 0: closed loop, as fast as answers come; else each connection waits this long between requests

    @classmethod
    def from_env(cls):
        names = os.environ.get("BENCH_SCENARIOS", "").strip()
        if names == "all":
            picked = [s.name for s in SCENARIOS]
        elif names:
            picked = list(dict.fromkeys(n.strip() for n in names.split(",") if n.strip()))
        else:
            picked = [s.name for s in SCENARIOS if s.default]
        known = {s.name for s in SCENARIOS}
        unknown = [n for n in picked if n not in known]
        if unknown:
            sys.exit(f"bench: unknown scenario(s) {', '.join(unknown)}; "
                     f"known: {', '.join(s.name for s in SCENARIOS)}")
        primary = os.environ.get("BENCH_PRIMARY", "nginx").strip() or "nginx"
        if primary not in PRIMARIES:
            sys.exit(f"bench: BENCH_PRIMARY must be one of {', '.join(PRIMARIES)}")
        raw_cpus = os.environ.get("BENCH_PROXY_CPUS", "").strip()
        try:
            proxy_cpus = float(raw_cpus) if raw_cpus else 0.0
        except ValueError:
            sys.exit(f"bench: BENCH_PROXY_CPUS={raw_cpus!r} is not a number")
        if not 0.0 <= proxy_cpus < 1.0:
            sys.exit("bench: BENCH_PROXY_CPUS must be a share of one core below 1 (e.g. 0.5), or 0")
        out = os.environ.get("BENCH_OUT", "").strip()
        tls_key = os.environ.get("BENCH_TLS_KEY", "").strip() or "rsa2048"
        if tls_key not in TLS_KEYS:
            sys.exit(f"bench: BENCH_TLS_KEY must be one of {', '.join(TLS_KEYS)}")
        return cls(
            runs=env_int("BENCH_RUNS", 3),
            seconds=env_int("BENCH_SECONDS", 10),
            connections=env_int("BENCH_CONNECTIONS", 50),
            warmup=env_int("BENCH_WARMUP", 2, minimum=0),
            threads=1,
            wrk_timeout=env_int("BENCH_WRK_TIMEOUT", 2),
            scenarios=picked,
            primary=primary,
            proxy_cpus=proxy_cpus,
            umbra=Path(os.environ.get("BENCH_UMBRA", "") or ROOT / "build" / "umbra"),
            out=Path(out) if out else ROOT / "build" / "bench" / "results.json",
            keep=os.environ.get("BENCH_KEEP", "") not in ("", "0"),
            tls_key=tls_key,
            tls_concurrency=env_int("BENCH_TLS_CONCURRENCY", 16),
            pace_ms=env_int("BENCH_PACE_MS", 0, minimum=0),
        )


# ---------------------------------------------------------------- processes

def _die_with_parent():
    """Runs in the child before exec: if bench.py is SIGKILLed, the kernel
    still takes its servers down with it (PR_SET_PDEATHSIG = 1)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)


@dataclass
class Proc:
    role: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def log_tail(self, lines=15):
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:]) or "    (empty log)"


class CpuQuota:
    """A cgroup whose processes together get `cores` of one CPU: a CFS quota
    per 10 ms period (short, so a throttled proxy stalls for milliseconds,
    not for a tenth of a second). cgroup v2 when the cpu controller is there,
    else v1's cpu hierarchy. Needs root."""

    PERIOD_US = 10000

    def __init__(self, cores):
        quota = max(1000, int(cores * self.PERIOD_US))
        name = f"umbra-bench-{os.getpid()}"
        v2 = Path("/sys/fs/cgroup")
        v1 = Path("/sys/fs/cgroup/cpu")
        try:
            controllers = v2 / "cgroup.controllers"
            if controllers.exists() and "cpu" in controllers.read_text().split():
                (v2 / "cgroup.subtree_control").write_text("+cpu")
                self.dir = v2 / name
                self.dir.mkdir()
                (self.dir / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
            else:
                self.dir = v1 / name
                self.dir.mkdir()
                (self.dir / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
                (self.dir / "cpu.cfs_quota_us").write_text(str(quota))
        except OSError as e:
            sys.exit(f"bench: BENCH_PROXY_CPUS needs a writable cgroup cpu controller (root): {e}")

    def add(self, pid):
        (self.dir / "cgroup.procs").write_text(str(pid))

    def remove(self):
        try:
            self.dir.rmdir()
        except OSError:
            pass


class Procs:
    """Every process this run started, so that exit kills each one by PID.
    With a quota, whatever runs on PROXY_CPU (the proxy) is held to it."""

    def __init__(self, quota=None):
        self.procs = []
        self.quota = quota

    def start(self, role, argv, cpu, cwd):
        log = Path(cwd) / f"{role}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                ["taskset", "-c", str(cpu)] + [str(a) for a in argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=cwd, preexec_fn=_die_with_parent)
        proc = Proc(role, popen, log)
        self.procs.append(proc)
        if self.quota and cpu == PROXY_CPU:
            self.quota.add(popen.pid)
        return proc

    def stop(self, procs):
        for p in procs:
            if p.alive():
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_GRACE
        for p in procs:
            try:
                p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.popen.wait()
            if p in self.procs:
                self.procs.remove(p)

    def stop_all(self):
        self.stop(list(reversed(self.procs)))


# ------------------------------------------------------------------ helpers

def free_addr():
    """A 127.0.0.1 port free right now. Another process may take it before
    ours binds; the scenario then fails to start and is retried."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def render(template, dest, **values):
    """Copies conf/TEMPLATE to DEST with each {{KEY}} replaced."""
    text = (CONF / template).read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    if "{{" in text:
        raise BenchError(f"{template}: unreplaced placeholder in {text[text.index('{{'):][:40]}")
    dest.write_text(text)
    return dest


def http_status(addr):
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=1.0)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def insecure_tls_context():
    """The benchmark's own certificate is self-signed: the start-up check
    proves the proxy answers, not who it is."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def https_status(addr):
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), timeout=1.0, context=insecure_tls_context())
    try:
        conn.request("GET", "/", headers={"Host": TLS_NAME})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def tls_session_info(addr):
    """The protocol and cipher a default OpenSSL client (as wrk is) gets."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2.0) as raw:
        with insecure_tls_context().wrap_socket(raw, server_hostname=TLS_NAME) as s:
            return {"protocol": s.version(), "cipher": s.cipher()[0]}


def tcp_open(addr):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=1.0):
        return True


def wait_until(check, addr, procs, what):
    """Polls check(addr) until it is true, a process dies or time runs out."""
    deadline = time.monotonic() + START_DEADLINE
    last = "no answer"
    while time.monotonic() < deadline:
        for p in procs:
            if not p.alive():
                raise BenchError(f"{p.role} exited with {p.popen.returncode} "
                                 f"while starting:\n{p.log_tail()}")
        try:
            result = check(addr)
            if result is True or result == 200:
                return
            last = f"HTTP {result}"
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    raise BenchError(f"{what} at {addr} not ready after {START_DEADLINE:.0f}s: {last}")


# ----------------------------------------------------------------- contexts

class Ctx:
    """What a scenario's start function gets: a private dir, free ports, a
    way to start pinned processes, and the primary's address."""

    def __init__(self, bench, name):
        self.bench = bench
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=bench.tmp))
        self.procs = []
        self.primary = bench.primary_addr
        self.umbra = bench.settings.umbra

    def free_addr(self):
        return free_addr()

    def render(self, template, **values):
        return render(template, self.dir / template, DIR=self.dir, **values)

    def start(self, role, argv, cpu):
        proc = self.bench.procs.start(role, argv, cpu, self.dir)
        self.procs.append(proc)
        return proc

    def wait_http(self, addr, what):
        wait_until(http_status, addr, self.procs, what)

    def wait_ready(self, target, what):
        """Until the target answers 200, over TLS when its load is TLS."""
        plain = target.load in ("http", "post-json")
        wait_until(http_status if plain else https_status, target.addr, self.procs, what)

    def tls_cert(self):
        """(certificate, key) paths of the bench's TLS certificate."""
        return self.bench.tls_cert()

    def wait_tcp(self, addr, what):
        wait_until(tcp_open, addr, self.procs, what)

    def need_umbra(self):
        if not os.access(self.umbra, os.X_OK):
            raise BenchError(f"{self.umbra} not found; run `make build/umbra`")


# What a target is measured with: wrk over plain HTTP or HTTPS (keep-alive
# requests), or the TLS handshake client making new or resumed handshakes.
LOADS = ("http", "https", "tls-new", "tls-resume")


@dataclass
class Target:
    """A started scenario: where the load goes, the process whose CPU time is
    charged to each request or handshake (None when there is no proxy), and
    which load (LOADS)."""
    addr: str
    proxy: Optional[Proc]
    load: str = "http"


# ---------------------------------------------------- backends and shadows

def start_nginx_return(ctx, role, cpu=LOAD_CPU, h2=False):
    """h2: the port speaks HTTP/2 with prior knowledge only (nginx 1.22's
    plain `listen ... http2`), so readiness is an open port."""
    addr = ctx.free_addr()
    cfg = ctx.render("nginx-return.conf", LISTEN=addr + (" http2" if h2 else ""))
    ctx.start(role, ["nginx", "-p", ctx.dir, "-e", ctx.dir / "error.log",
                     "-c", cfg], cpu)
    if h2:
        ctx.wait_tcp(addr, role)
    else:
        ctx.wait_http(addr, role)
    return addr


def start_umbra_echo(ctx, role, cpu=LOAD_CPU):
    ctx.need_umbra()
    addr = ctx.free_addr()
    ctx.start(role, [ctx.umbra, "echo", "--listen", addr], cpu)
    ctx.wait_http(addr, role)
    return addr


def start_python_shadow(ctx, mode):
    addr = ctx.free_addr()
    ctx.start(f"shadow-{mode}", [sys.executable, BENCH / "shadow.py", "--mode", mode,
                                 "--listen", addr], LOAD_CPU)
    ctx.wait_tcp(addr, f"{mode} shadow")
    return addr


# name -> start(ctx, role) -> address; chosen with BENCH_PRIMARY.
PRIMARIES = {
    "nginx": start_nginx_return,
    "umbra-echo": start_umbra_echo,
}


def start_umbra_collect(ctx, role, delay):
    """umbra's own shadow collector, its records thrown away, answering each
    request after `delay` seconds: a slow shadow that costs the load core
    little while it holds thousands of copies (a Python one would compete with
    wrk and the primary for that core and skew every figure of the run)."""
    ctx.need_umbra()
    addr = ctx.free_addr()
    ctx.start(role, [ctx.umbra, "collect", "--listen", addr, "--out", "/dev/null",
                     "--delay", f"{delay * 1000:.0f}ms"], LOAD_CPU)
    ctx.wait_http(addr, role)
    return addr


# name -> start(ctx) -> address of a running shadow.
SHADOWS = {
    "fast": lambda ctx: start_nginx_return(ctx, "shadow-fast"),
    "slow": lambda ctx: start_umbra_collect(ctx, "shadow-slow", SLOW_SHADOW_DELAY),
    "blackhole": lambda ctx: start_python_shadow(ctx, "blackhole"),
    # The same shadows for `protocol: h2` clusters: nginx's h2c port, and
    # umbra collect (h2c with prior knowledge on its one port). A black hole
    # is the same whatever it does not speak.
    "fast-h2": lambda ctx: start_nginx_return(ctx, "shadow-fast", h2=True),
}


# ----------------------------------------------------------------- proxies

def start_umbra(ctx, template, **values):
    ctx.need_umbra()
    listen = ctx.free_addr()
    cfg = ctx.render(template, LISTEN=listen, PRIMARY=ctx.primary, **values)
    proxy = ctx.start("umbra", [ctx.umbra, "-c", cfg], PROXY_CPU)
    return Target(listen, proxy)


def start_nginx(ctx, template, **values):
    listen = ctx.free_addr()
    cfg = ctx.render(template, LISTEN=listen, PRIMARY=ctx.primary, **values)
    proxy = ctx.start("nginx", ["nginx", "-p", ctx.dir, "-e", ctx.dir / "error.log",
                                "-c", cfg], PROXY_CPU)
    return Target(listen, proxy)


def start_haproxy(ctx, template, **values):
    listen = ctx.free_addr()
    cfg = ctx.render(template, LISTEN=listen, PRIMARY=ctx.primary, **values)
    proxy = ctx.start("haproxy", ["haproxy", "-db", "-f", cfg], PROXY_CPU)
    return Target(listen, proxy)


def tls_terminating(start_proxy, template, load):
    """A proxy terminating TLS with the bench's certificate, measured with
    `load` (https: wrk; tls-new / tls-resume: handshakes)."""
    def start(ctx):
        cert, key = ctx.tls_cert()
        target = start_proxy(ctx, template, CERT=cert, KEY=key)
        target.load = load
        return target
    return start


def mirrored(start_proxy, template, shadow, load="http", protocol="http1"):
    """protocol: the shadow cluster's, in umbra's templates (NGINX's have no
    placeholder for it)."""
    def start(ctx):
        shadow_addr = SHADOWS[shadow](ctx)
        target = start_proxy(ctx, template, SHADOW=shadow_addr,
                             SHADOW_CONNECT_TIMEOUT=SHADOW_CONNECT_TIMEOUT,
                             SHADOW_TIMEOUT=SHADOW_TIMEOUT, SHADOW_PROTOCOL=protocol)
        target.load = load
        return target
    return start


# ---------------------------------------------------------------- scenarios

@dataclass
class Scenario:
    name: str
    what: str
    start: Callable[[Ctx], Target]
    default: bool = True
    unit: str = "request"  # what one "request" of its figures is: "request" or "handshake"


# The one list of what is measured. A scenario starts its own processes
# (proxy on PROXY_CPU, shadows on LOAD_CPU) and returns where to send load;
# the primary is shared and already running. `default` ones run unless
# BENCH_SCENARIOS names others ("all" runs every one).
SCENARIOS = [
    Scenario("direct", "wrk -> primary, no proxy",
             lambda ctx: Target(ctx.primary, None)),
    Scenario("umbra", "umbra, 1 worker, no mirror",
             lambda ctx: start_umbra(ctx, "umbra.yaml")),
    Scenario("nginx", "NGINX proxy_pass, 1 worker, upstream keepalive",
             lambda ctx: start_nginx(ctx, "nginx-proxy.conf")),
    Scenario("haproxy", "HAProxy, nbthread 1, http-reuse always",
             lambda ctx: start_haproxy(ctx, "haproxy.cfg")),
]
for _shadow, _what in (("fast", "a fast shadow"),
                       ("slow", f"a shadow that answers after {SLOW_SHADOW_DELAY * 1000:.0f} ms"),
                       ("blackhole", "a black-hole shadow")):
    SCENARIOS.append(Scenario(f"umbra-mirror-{_shadow}", f"umbra mirroring 100% to {_what}",
                              mirrored(start_umbra, "umbra-mirror.yaml", _shadow)))
    SCENARIOS.append(Scenario(f"nginx-mirror-{_shadow}", f"NGINX mirror 100% to {_what}",
                              mirrored(start_nginx, "nginx-mirror.conf", _shadow)))
    SCENARIOS.append(Scenario(f"umbra-mirror-h2-{_shadow}", f"the same over HTTP/2 (protocol: h2) to {_what}",
                              mirrored(start_umbra, "umbra-mirror.yaml",
                                       "fast-h2" if _shadow == "fast" else _shadow, protocol="h2")))
SCENARIOS += [
    # Issue 4: the same 1 KiB JSON POST load, mirrored to a fast shadow with
    # and without a scrub policy; the primary's p99 must not move.
    Scenario("umbra-mirror-json", "umbra mirroring 100% of 1 KiB JSON POSTs to a fast shadow",
             mirrored(start_umbra, "umbra-mirror.yaml", "fast", "post-json")),
    Scenario("umbra-mirror-scrub", "the same, the copies scrubbed (JSON paths + detectors)",
             mirrored(start_umbra, "umbra-mirror-scrub.yaml", "fast", "post-json")),
]
SCENARIOS += [
    Scenario("umbra-tls", "umbra terminating TLS, keep-alive HTTPS load, plain to the primary",
             tls_terminating(start_umbra, "umbra-tls.yaml", "https")),
    Scenario("nginx-tls", "NGINX terminating TLS, keep-alive HTTPS load, plain to the primary",
             tls_terminating(start_nginx, "nginx-tls.conf", "https")),
]
for _mode, _load, _what in (("new", "tls-new", "new full TLS handshakes"),
                            ("resumed", "tls-resume", "resumed TLS handshakes (session tickets)")):
    SCENARIOS.append(Scenario(f"umbra-tls-{_mode}", f"{_what} per second against umbra",
                              tls_terminating(start_umbra, "umbra-tls.yaml", _load),
                              unit="handshake"))
    SCENARIOS.append(Scenario(f"nginx-tls-{_mode}", f"{_what} per second against NGINX",
                              tls_terminating(start_nginx, "nginx-tls.conf", _load),
                              unit="handshake"))

# Ratio rows printed when both sides ran: (numerator, denominator).
COMPARISONS = [
    ("umbra", "nginx"),
    ("umbra", "haproxy"),
    ("umbra-mirror-fast", "nginx-mirror-fast"),
    ("umbra-mirror-slow", "nginx-mirror-slow"),
    ("umbra-mirror-blackhole", "nginx-mirror-blackhole"),
    ("umbra-mirror-fast", "umbra"),
    ("umbra-mirror-slow", "umbra-mirror-fast"),
    ("umbra-mirror-blackhole", "umbra-mirror-fast"),
    ("umbra-mirror-h2-fast", "umbra"),
    ("umbra-mirror-h2-fast", "umbra-mirror-fast"),
    ("umbra-mirror-h2-slow", "umbra-mirror-fast"),
    ("umbra-mirror-h2-slow", "umbra-mirror-h2-fast"),
    ("umbra-mirror-h2-blackhole", "umbra-mirror-h2-fast"),
    ("umbra-mirror-scrub", "umbra-mirror-json"),
    ("umbra-tls", "nginx-tls"),
    ("umbra-tls", "umbra"),
    ("nginx-tls", "nginx"),
    ("umbra-tls-new", "nginx-tls-new"),
    ("umbra-tls-resumed", "nginx-tls-resumed"),
    ("umbra-tls-resumed", "umbra-tls-new"),
]

SCENARIO_BY_NAME = {s.name: s for s in SCENARIOS}


# -------------------------------------------------------------- measurement

def cpu_ticks(pid):
    """utime+stime (clock ticks) of pid and its descendants, all threads."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        fields = _stat_fields(p)
        if fields:
            total += int(fields[11]) + int(fields[12])  # stat fields 14, 15
        todo.extend(children.get(p, []))
    return total


def _stat_fields(pid):
    """Fields 3.. of /proc/PID/stat (after the parenthesised comm)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()


TICK = os.sysconf("SC_CLK_TCK")


def run_benchjson(what, argv, seconds, env=None):
    """Runs a load generator pinned to LOAD_CPU; returns its BENCHJSON line."""
    argv = ["taskset", "-c", str(LOAD_CPU)] + [str(a) for a in argv]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30,
                              stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, env=env)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what} did not finish within {seconds + 30}s")
    for line in done.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            return json.loads(line[len("BENCHJSON "):])
    raise BenchError(f"{what} exited {done.returncode} without results: "
                     f"{(done.stderr or done.stdout).strip()[-300:]}")


def run_wrk(settings, target, seconds):
    scheme = "https" if target.load == "https" else "http"
    script = WRK_POST_JSON_LUA if target.load == "post-json" else WRK_LUA
    return run_benchjson("wrk", [
        "wrk", "-t", settings.threads, "-c", settings.connections,
        "-d", f"{seconds}s", "--latency", "--timeout", f"{settings.wrk_timeout}s",
        "-s", script, f"{scheme}://{target.addr}/"], seconds,
        env=dict(os.environ, BENCH_PACE_MS=str(settings.pace_ms)))


def run_handshakes(bench, target, seconds):
    """bench/tls_handshakes: `tls_concurrency` connections in flight, each a
    connect, a new or resumed handshake (SNI bench.test, ALPN http/1.1) and a
    clean close; "requests" in its JSON are handshakes."""
    mode = "resume" if target.load == "tls-resume" else "new"
    return run_benchjson("tls_handshakes", [
        bench.handshake_client(), "-m", mode, "-t", seconds,
        "-c", bench.settings.tls_concurrency, "-s", TLS_NAME, target.addr], seconds)


def run_load(bench, target, seconds):
    if target.load in ("tls-new", "tls-resume"):
        return run_handshakes(bench, target, seconds)
    return run_wrk(bench.settings, target, seconds)


def machine_busy_ticks():
    """Busy clock ticks of all CPUs together, from /proc/stat: user, nice,
    system, irq, softirq and steal (time the hypervisor gave to others)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return user + nice + system + irq + softirq + steal


def snapshot(procs):
    """CPU clock ticks so far: each watched process tree, our reaped children
    (that is wrk, once it has exited) and the whole machine."""
    kids = os.times()
    return {
        "procs": {k: cpu_ticks(p.pid) for k, p in procs.items()},
        "reaped": (kids.children_user + kids.children_system) * TICK,
        "machine": machine_busy_ticks(),
    }


def cpu_figures(row, key, ticks, n, secs):
    cpu_s = ticks / TICK if ticks is not None else None
    row[f"{key}_cpu_s"] = round(cpu_s, 3) if cpu_s is not None else None
    row[f"{key}_cpu_us_per_req"] = round(cpu_s * 1e6 / n, 3) if cpu_s is not None and n else None
    row[f"{key}_cpu_util"] = round(cpu_s / secs, 3) if cpu_s is not None and secs else None


def measure(bench, ctx, target):
    """One measured wrk run. Around it: the CPU time of the proxy, of the
    primary, of wrk, and of everything else on the machine ("other": work
    that is not ours, the measure of how noisy the run was)."""
    s = bench.settings
    if s.warmup:
        run_load(bench, target, s.warmup)
    ours = {f"{p.role}#{p.pid}": p for p in [bench.primary_proc] + ctx.procs}
    before = snapshot(ours)
    w = run_load(bench, target, s.seconds)
    after = snapshot(ours)
    for p in ours.values():
        if not p.alive():
            raise BenchError(f"{p.role} died during the run:\n{p.log_tail()}")
    used = {k: after["procs"][k] - before["procs"][k] for k in ours}
    wrk_ticks = after["reaped"] - before["reaped"]
    other = after["machine"] - before["machine"] - sum(used.values()) - wrk_ticks
    n, secs = w["requests"], w["duration_us"] / 1e6
    handshakes = target.load.startswith("tls-")
    row = {
        "unit": "handshake" if handshakes else "request",
        "requests": n,
        "duration_s": round(secs, 3),
        "rps": round(n / secs, 1) if secs else 0.0,
        "latency_us": w["latency_us"],
        "errors": w["errors"],
        "errors_total": sum(w["errors"].values()),
    }
    proxy = target.proxy
    cpu_figures(row, "proxy", used[f"{proxy.role}#{proxy.pid}"] if proxy else None, n, secs)
    cpu_figures(row, "primary", used[f"primary#{bench.primary_proc.pid}"], n, secs)
    shadows = [k for k in ours if k.startswith("shadow-")]
    cpu_figures(row, "shadow", sum(used[k] for k in shadows) if shadows else None, n, secs)
    # The load generator: wrk, or the handshake client (reaped like wrk).
    cpu_figures(row, "client" if handshakes else "wrk", wrk_ticks, n, secs)
    # Kernel work for loopback that no process is charged with lands here
    # too, so it is a few percent even on an idle machine.
    cpu_figures(row, "other", max(0, other), n, secs)
    if handshakes:
        row["resumed"] = w["resumed"]
        row["tls"] = {k: w[k] for k in ("protocol", "cipher", "group")}
    elif target.load == "https":
        row["tls"] = tls_session_info(target.addr)
    if proxy and proxy.role == "umbra" and target.load not in ("http", "post-json"):
        row["umbra_tls"] = umbra_tls_counters(proxy)
    elif proxy and proxy.role == "umbra":
        row["mirror_outcomes"] = umbra_mirror_outcomes(proxy)
    return row


def umbra_metrics(proc):
    """umbra's admin /metrics text (the admin address is in its log), or None."""
    m = re.search(r"admin listening on (\S+)", proc.log.read_text(errors="replace"))
    if not m:
        return None
    try:
        with urllib.request.urlopen(f"http://{m.group(1)}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return None


def umbra_tls_counters(proc):
    """umbra's own count of downstream TLS handshakes (by mode), resumptions
    and handshake errors over the process's life (warm-up and start-up check
    included), so a TLS scenario shows umbra saw what the client did."""
    text = umbra_metrics(proc)
    if text is None:
        return None
    out = {"handshakes": {}, "resumed": 0, "errors": {}}
    pat = re.compile(r'umbra_tls_(handshakes_total|sessions_resumed_total|handshake_errors_total)'
                     r'\{side="downstream",name="[^"]*"(?:,(?:mode|reason)="([a-z_]+)")?\} (\d+)')
    for line in text.splitlines():
        mm = pat.match(line)
        if not mm or not int(mm.group(3)):
            continue
        metric, label, value = mm.group(1), mm.group(2), int(mm.group(3))
        if metric == "sessions_resumed_total":
            out["resumed"] += value
        else:
            key = "handshakes" if metric == "handshakes_total" else "errors"
            out[key][label] = out[key].get(label, 0) + value
    return out


def umbra_mirror_outcomes(proc):
    """umbra's mirror outcome counters (summed over routes), read from its
    admin /metrics, so a mirror scenario shows the copies really went out."""
    text = umbra_metrics(proc)
    if text is None:
        return None
    out = {}
    for line in text.splitlines():
        mm = re.match(r'umbra_mirror_requests_total\{.*outcome="([a-z_]+)"\} (\d+)', line)
        if mm and int(mm.group(2)):
            out[mm.group(1)] = out.get(mm.group(1), 0) + int(mm.group(2))
    return out


# ------------------------------------------------------------------ driver

class Bench:
    def __init__(self, settings):
        self.settings = settings
        self.quota = CpuQuota(settings.proxy_cpus) if settings.proxy_cpus else None
        self.procs = Procs(self.quota)
        self.tmp = Path(tempfile.mkdtemp(prefix="umbra-bench-"))
        self.primary_addr = None
        self.primary_proc = None
        self.results = {name: {"runs": [], "errors": []} for name in settings.scenarios}
        self.failed = False
        self.cert = None             # (cert, key), made on first use
        self.hs_client = None        # the compiled bench/tls_handshakes.c
        self.hs_client_error = None  # why it could not be compiled

    def tls_cert(self):
        """The one certificate every TLS scenario serves: self-signed for
        bench.test and 127.0.0.1, made here by the openssl command."""
        if self.cert:
            return self.cert
        if not shutil.which("openssl"):
            raise BenchError("openssl not found (the TLS scenarios make their certificate with it)")
        d = self.tmp / "tls"
        d.mkdir(exist_ok=True)
        cert, key = d / "cert.pem", d / "key.pem"
        argv = ["openssl", "req", "-x509", *TLS_KEYS[self.settings.tls_key][1], "-nodes",
                "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={TLS_NAME}",
                "-addext", f"subjectAltName=DNS:{TLS_NAME},IP:127.0.0.1"]
        done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise BenchError(f"openssl req failed: {done.stderr.strip()[-300:]}")
        self.cert = (cert, key)
        return self.cert

    def handshake_client(self):
        """bench/tls_handshakes.c, compiled once per bench run into the temp
        dir (it is small; a build there is never stale)."""
        if self.hs_client:
            return self.hs_client
        if self.hs_client_error:
            raise BenchError(self.hs_client_error)
        out = self.tmp / "tls_handshakes"
        libs = subprocess.run(["pkg-config", "--cflags", "--libs", "libssl", "libcrypto"],
                              capture_output=True, text=True).stdout.split() or ["-lssl", "-lcrypto"]
        argv = [os.environ.get("CC") or "cc", "-std=c17", "-D_GNU_SOURCE", "-O2", "-Wall",
                "-o", str(out), str(HANDSHAKE_CLIENT_SRC)] + libs
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            failed = done.returncode != 0 and f"{' '.join(argv)}: {done.stderr.strip()[-400:]}"
        except (OSError, subprocess.TimeoutExpired) as e:
            failed = f"{argv[0]}: {e}"
        if failed:
            self.hs_client_error = f"cannot build the handshake client: {failed}"
            raise BenchError(self.hs_client_error)
        self.hs_client = out
        return out

    def start_primary(self):
        ctx = Ctx(self, "primary")
        self.primary_addr = PRIMARIES[self.settings.primary](ctx, "primary")
        self.primary_proc = ctx.procs[0]

    def run_once(self, scenario):
        """Starts the scenario (retrying if a picked port was taken), waits
        until it answers 200, measures, and stops its processes."""
        last = None
        for _attempt in range(3):
            ctx = Ctx(self, scenario.name)
            try:
                target = scenario.start(ctx)
                ctx.wait_ready(target, scenario.name)
                return measure(self, ctx, target)
            except (BenchError, OSError) as e:
                last = e
                if "Address already in use" not in "".join(p.log_tail() for p in ctx.procs):
                    break
            finally:
                self.procs.stop(ctx.procs)
        raise BenchError(str(last))

    def run(self):
        s = self.settings
        order = s.scenarios
        for r in range(s.runs):
            # Rotate the order each round so no scenario always runs first.
            for name in order[r % len(order):] + order[:r % len(order)]:
                if not self.primary_proc.alive():
                    raise BenchError(f"the primary died:\n{self.primary_proc.log_tail()}")
                print(f"  run {r + 1}/{s.runs}  {name:<24}", end="", flush=True)
                try:
                    row = self.run_once(SCENARIO_BY_NAME[name])
                except BenchError as e:
                    self.failed = True
                    self.results[name]["errors"].append(str(e))
                    print(f"FAILED: {e}")
                    continue
                row["round"] = r
                self.results[name]["runs"].append(row)
                print(progress_line(row))

    def cleanup(self):
        self.procs.stop_all()
        if self.quota:
            self.quota.remove()
        if self.settings.keep or self.failed:
            print(f"bench: kept logs and configs in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def progress_line(row):
    """One measured run, as printed while the bench goes on."""
    unit = "hs/s " if row["unit"] == "handshake" else "req/s"
    line = (f"{row['rps']:>10,.0f} {unit}  p99 {row['latency_us']['p99'] / 1000:6.2f} ms"
            f"  proxy CPU {fmt(row['proxy_cpu_util'], '4.0%')}"
            f"  other {fmt(row['other_cpu_util'], '4.0%')}")
    if row["errors_total"]:
        line += f"  errors {row['errors_total']}"
    if row["unit"] == "handshake":
        line += f"  resumed {fmt(row['resumed'] / row['requests'] if row['requests'] else None, '.1%')}"
    if row.get("tls"):
        line += "  " + " ".join(v for v in row["tls"].values() if v)
    if row.get("umbra_tls"):
        u = row["umbra_tls"]
        line += (f"  umbra: handshakes {u['handshakes']} resumed {u['resumed']}"
                 + (f" errors {u['errors']}" if u["errors"] else ""))
    if row.get("mirror_outcomes"):
        line += f"  copies {row['mirror_outcomes']}"
    return line


# ----------------------------------------------------------------- summary

def median_of(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(runs):
    if not runs:
        return None
    flat = [dict(r, **{f"p{k[1:]}_us": v for k, v in r["latency_us"].items()
                       if k.startswith("p")}) for r in runs]
    for r in flat:
        if "resumed" in r:
            r["resumed_share"] = r["resumed"] / r["requests"] if r["requests"] else None
    keys = ["rps", "p50_us", "p90_us", "p99_us", "p99_9_us",
            "proxy_cpu_us_per_req", "proxy_cpu_util",
            "primary_cpu_us_per_req", "primary_cpu_util",
            "wrk_cpu_us_per_req", "wrk_cpu_util",
            "client_cpu_us_per_req", "client_cpu_util", "resumed_share", "other_cpu_util"]
    out = {"unit": runs[0]["unit"]}
    out.update({k: median_of(flat, k) for k in keys})
    out["requests_total"] = sum(r["requests"] for r in runs)
    out["errors_total"] = sum(r["errors_total"] for r in runs)
    return out


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


PAIRED = {"rps": lambda r: r["rps"], "p99": lambda r: r["latency_us"]["p99"],
          "cpu_per_req": lambda r: r.get("proxy_cpu_us_per_req")}


def paired(runs_a, runs_b):
    """Each round runs every scenario a few seconds apart, so a ratio taken
    within a round cancels the machine's drift between rounds (on a shared
    VM, larger than the effects measured). Per key: the median of the
    per-round ratios, and their lowest and highest."""
    by_round = {r["round"]: r for r in runs_b}
    out = {}
    for key, get in PAIRED.items():
        values = [ratio(get(ra), get(by_round[ra["round"]])) for ra in runs_a
                  if ra["round"] in by_round]
        values = [v for v in values if v is not None]
        out[key] = ({"median": round(statistics.median(values), 3), "min": min(values),
                     "max": max(values), "rounds": len(values)} if values else None)
    return out


def comparisons(medians, results):
    rows = []
    for a, b in COMPARISONS:
        ma, mb = medians.get(a), medians.get(b)
        if not ma or not mb:
            continue
        rows.append({
            "name": f"{a} / {b}", "numerator": a, "denominator": b, "unit": ma["unit"],
            "rps": ratio(ma["rps"], mb["rps"]),
            "p99": ratio(ma["p99_us"], mb["p99_us"]),
            "cpu_per_req": ratio(ma["proxy_cpu_us_per_req"], mb["proxy_cpu_us_per_req"]),
            "paired": paired(results[a]["runs"], results[b]["runs"]),
        })
    return rows


def fmt(value, spec, scale=1.0):
    return "-" if value is None else format(value * scale, spec)


def failed_line(name, results):
    errors = results[name]["errors"]
    why = errors[-1].splitlines()[0] if errors else "not run"
    return f"{name:<24}  FAILED: {why}"


def print_requests(settings, names, medians, results):
    tls = any(n.endswith("-tls") for n in names)
    print(f"umbra bench: median of {settings.runs} run(s) x {settings.seconds}s, "
          f"{settings.connections} keep-alive connections, wrk 1 thread"
          + (f", each connection {settings.pace_ms} ms between requests (paced)"
             if settings.pace_ms else "") + "; "
          f"proxy on CPU {PROXY_CPU}, wrk + backends on CPU {LOAD_CPU}; "
          f"primary: {settings.primary}"
          + (f"; proxy held to {settings.proxy_cpus:g} of CPU {PROXY_CPU} (CFS quota)"
             if settings.proxy_cpus else "")
          + (f"; TLS: {TLS_KEYS[settings.tls_key][0]} certificate" if tls else ""))
    head = (f"{'scenario':<24}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'proxy us/req':>14}{'proxy CPU':>11}{'primary us/req':>16}{'other CPU':>11}"
            f"{'errors':>8}")
    print(head)
    print("-" * len(head))
    for name in names:
        m = medians.get(name)
        if not m:
            print(failed_line(name, results))
            continue
        print(f"{name:<24}{fmt(m['rps'], ',.0f'):>10}{fmt(m['p50_us'], '.2f', 1e-3):>9}"
              f"{fmt(m['p99_us'], '.2f', 1e-3):>9}{fmt(m['proxy_cpu_us_per_req'], '.2f'):>14}"
              f"{fmt(m['proxy_cpu_util'], '.0%'):>11}{fmt(m['primary_cpu_us_per_req'], '.2f'):>16}"
              f"{fmt(m['other_cpu_util'], '.0%'):>11}{m['errors_total']:>8}")


def print_handshakes(settings, names, medians, results):
    print(f"TLS handshakes: median of {settings.runs} run(s) x {settings.seconds}s, "
          f"{settings.tls_concurrency} connections in flight (bench/tls_handshakes.c), "
          f"{TLS_KEYS[settings.tls_key][0]} certificate; proxy on CPU {PROXY_CPU}, "
          f"client on CPU {LOAD_CPU}")
    head = (f"{'scenario':<24}{'hs/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'proxy us/hs':>14}{'proxy CPU':>11}{'client CPU':>12}{'resumed':>9}"
            f"{'other CPU':>11}{'errors':>8}")
    print(head)
    print("-" * len(head))
    for name in names:
        m = medians.get(name)
        if not m:
            print(failed_line(name, results))
            continue
        print(f"{name:<24}{fmt(m['rps'], ',.0f'):>10}{fmt(m['p50_us'], '.2f', 1e-3):>9}"
              f"{fmt(m['p99_us'], '.2f', 1e-3):>9}{fmt(m['proxy_cpu_us_per_req'], '.1f'):>14}"
              f"{fmt(m['proxy_cpu_util'], '.0%'):>11}{fmt(m['client_cpu_util'], '.0%'):>12}"
              f"{fmt(m['resumed_share'], '.1%'):>9}{fmt(m['other_cpu_util'], '.0%'):>11}"
              f"{m['errors_total']:>8}")


def fmt_paired(p):
    if not p:
        return "-"
    return f"{p['median']:.2f} ({p['min']:.2f}-{p['max']:.2f})"


def print_ratios(rows, unit, per):
    if not rows:
        return
    print()
    print(f"ratios of medians, then the median (and range) of ratios within each round "
          f"({unit}/s: higher is better; p99, CPU/{per}: lower is better)")
    head = (f"{'':<44}{unit + '/s':>8}{'p99':>8}{'CPU/' + per:>9}"
            f"{'paired ' + unit + '/s':>22}{'paired p99':>20}")
    print(head)
    print("-" * len(head))
    for r in rows:
        pr = r.get("paired") or {}
        print(f"{r['name']:<44}{fmt(r['rps'], '.2f'):>8}{fmt(r['p99'], '.2f'):>8}"
              f"{fmt(r['cpu_per_req'], '.2f'):>9}{fmt_paired(pr.get('rps')):>22}"
              f"{fmt_paired(pr.get('p99')):>20}")


def print_table(settings, medians, ratios, results):
    by_unit = {"request": [], "handshake": []}
    for name in settings.scenarios:
        by_unit[SCENARIO_BY_NAME[name].unit].append(name)
    for unit, printer in (("request", print_requests), ("handshake", print_handshakes)):
        if by_unit[unit]:
            print()
            printer(settings, by_unit[unit], medians, results)
    noisy = [n for n, m in medians.items() if m and (m["other_cpu_util"] or 0) > NOISY_OTHER]
    if noisy:
        print(f"warning: other work used more than {NOISY_OTHER:.0%} of a core during "
              f"{', '.join(noisy)}: those figures are noisy")
    print_ratios([r for r in ratios if r["unit"] == "request"], "req", "req")
    print_ratios([r for r in ratios if r["unit"] == "handshake"], "hs", "hs")


def tool_version(argv):
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else None


def meta(settings):
    rev = tool_version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = tool_version(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git": (rev or "unknown") + ("-dirty" if dirty else ""),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "runs": settings.runs, "seconds": settings.seconds,
        "connections": settings.connections, "warmup_seconds": settings.warmup,
        "wrk_threads": settings.threads, "wrk_timeout_seconds": settings.wrk_timeout,
        "proxy_cpu": PROXY_CPU, "load_cpu": LOAD_CPU, "proxy_cpus": settings.proxy_cpus,
        "primary": settings.primary,
        "tls_certificate": TLS_KEYS[settings.tls_key][0],
        "tls_handshake_concurrency": settings.tls_concurrency,
        "pace_ms": settings.pace_ms,
        "shadow_timeout": SHADOW_TIMEOUT, "slow_shadow_delay_s": SLOW_SHADOW_DELAY,
        "versions": {
            "nginx": tool_version(["nginx", "-v"]),
            "haproxy": tool_version(["haproxy", "-v"]),
            "wrk": tool_version(["wrk", "-v"]),
            "openssl": tool_version(["openssl", "version"]),
        },
    }


def write_json(settings, doc):
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = settings.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(settings.out)


def _exit_on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def scrub_throughput():
    """Issue 4's figure: the scrubber's MB/s per core for 1 KiB and 64 KiB
    JSON bodies (and forms, gzip, text), from bench/scrub_bench.c built -O2
    and pinned to the proxy's core. Returns its lines."""
    out = Path(tempfile.mkdtemp(prefix="umbra-scrub-")) / "scrub_bench"
    pkgs = subprocess.run(["pkg-config", "--cflags", "--libs", "libpcre2-8", "libcrypto", "zlib"],
                          capture_output=True, text=True, check=True).stdout.split()
    srcs = ["bench/scrub_bench.c", "src/mirror/scrub.c", "src/mirror/detect.c",
            "src/mirror/jsonpath.c", "src/core/strbuf.c"]
    subprocess.run(["gcc", "-std=c17", "-D_GNU_SOURCE", "-Isrc", "-O2", "-o", str(out), *srcs, *pkgs],
                   check=True)
    res = subprocess.run(["taskset", "-c", str(PROXY_CPU), str(out)], capture_output=True,
                         text=True, timeout=300, check=True)
    shutil.rmtree(out.parent, ignore_errors=True)
    print(res.stdout.rstrip() + "\n")
    return res.stdout.splitlines()


def main():
    if len(sys.argv) > 1:
        if sys.argv[1] == "--list":
            for sc in SCENARIOS:
                print(f"{sc.name:<27}{'default' if sc.default else '':<9}{sc.what}")
            return 0
        print(__doc__.strip())
        print("\nbash bench/run.sh [--list]   (--list: the scenarios BENCH_SCENARIOS can name)")
        return 0 if sys.argv[1] in ("-h", "--help") else 2
    settings = Settings.from_env()
    for tool in ("wrk", "taskset", "nginx", "haproxy"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found (make deps installs it)")
    if (os.cpu_count() or 1) < 2:
        sys.exit("bench: needs 2 CPUs (proxy on one, wrk + backends on the other)")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)

    per_run = settings.warmup + settings.seconds + 2
    estimate = settings.runs * len(settings.scenarios) * per_run
    print(f"bench: {len(settings.scenarios)} scenario(s) x {settings.runs} run(s) "
          f"x ({settings.warmup}s warm-up + {settings.seconds}s), about {estimate}s")
    doc = {"meta": meta(settings)}
    if os.environ.get("BENCH_SCRUB", "1") != "0":
        doc["scrub_throughput"] = scrub_throughput()
    bench = Bench(settings)
    try:
        bench.start_primary()
        bench.run()
    except BenchError as e:
        bench.failed = True
        print(f"bench: {e}", file=sys.stderr)
    finally:
        bench.cleanup()

    medians = {n: summarize(r["runs"]) for n, r in bench.results.items()}
    ratios = comparisons(medians, bench.results)
    doc["scenarios"] = {
        n: {"what": SCENARIO_BY_NAME[n].what, "median": medians[n], **bench.results[n]}
        for n in settings.scenarios
    }
    doc["ratios"] = ratios
    write_json(settings, doc)
    print_table(settings, medians, ratios, bench.results)
    print(f"\nbench: results in {settings.out}")
    return 1 if bench.failed else 0


if __name__ == "__main__":
    sys.exit(main())
