#!/usr/bin/env python3
"""Soak: mixed load through umbra with a mirror whose shadow keeps failing.

    UMBRA_BIN=build/asan/umbra python3 tests/soak/soak.py --minutes 3     # CI
    UMBRA_BIN=build/umbra      python3 tests/soak/soak.py                 # 30 minutes

For --minutes N, client threads send a mix of requests (keep-alive and
Connection: close, pipelined batches, 1 MiB Content-Length bodies, chunked
bodies) to umbra, which forwards them to a healthy primary and mirrors all of
them to a shadow. The shadow (tests/faults/fault_upstream.py, switched through
its control file) cycles through healthy, slow, black-holed and down; each
phase lasts min(60 s, N/12 minutes), so every third of the run sees each
phase. The shadow's circuit breaker is off (--breaker turns it on), so copies
keep meeting the fault instead of being dropped up front. Every 5 s umbra's RSS and open descriptors (/proc/PID/fd) are sampled.

It fails (exit 1) when any primary request failed or got a wrong answer, when
RSS or the descriptor count grows without bound (the last third's maximum
above the first third's maximum x 1.5 plus a slack), or when umbra leaves a
sanitizer report or does not exit cleanly on SIGTERM. It prints start, max
and end for RSS and descriptors, request counts and the mirror outcomes.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "faults"))

from backends import PeerClosed, ProtocolError  # noqa: E402
from harness import Client, Umbra, build_request, chunked, make_config  # noqa: E402

MB = 1 << 20
PHASES = ["echo", "slow; rate=1", "black-hole", "refuse"]
PHASE_NAMES = {"echo": "healthy", "slow; rate=1": "slow", "black-hole": "black-holed", "refuse": "down"}
RSS_SLACK = 32 * MB
FD_SLACK = 64
SAMPLE_S = 5.0
LARGE = 1 * MB
CHUNKED = 256 * 1024


class Peer:
    """fault_upstream.py as a separate process (its own GIL)."""

    def __init__(self, workdir, name, mode):
        self.control = os.path.join(workdir, name + ".control")
        with open(self.control, "w") as f:
            f.write(mode + "\n")
        self.err = open(os.path.join(workdir, name + ".stderr"), "wb")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "..", "faults", "fault_upstream.py"), "--mode", mode,
             "--control", self.control, "--status", os.path.join(workdir, name + ".status.json")],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.err, start_new_session=True)
        line = self.proc.stdout.readline()
        m = re.match(rb"listening (\d+)", line)
        if not m:
            raise RuntimeError("%s did not start: %r" % (name, line))
        self.port = int(m.group(1))
        self.addr = "127.0.0.1:%d" % self.port

    def set_mode(self, mode):
        tmp = self.control + ".tmp"
        with open(tmp, "w") as f:
            f.write(mode + "\n")
        os.replace(tmp, self.control)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc.stdout.close()
        self.err.close()


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = {}
        self.failures = []
        self.nfail = 0

    def good(self, kind, n=1):
        with self.lock:
            self.ok[kind] = self.ok.get(kind, 0) + n

    def bad(self, kind, what):
        with self.lock:
            self.nfail += 1
            if len(self.failures) < 20:
                self.failures.append("%s %s: %s" % (time.strftime("%H:%M:%S"), kind, what))


def check(r, method, target, body_len):
    if r.status != 200:
        raise ValueError("status %d" % r.status)
    v = json.loads(r.body)
    if (v["method"], v["target"], v["body_len"]) != (method, target, body_len):
        raise ValueError("answer %r for %s %s (%d bytes)" % (v, method, target, body_len))


class Load:
    """Client threads; each keeps one keep-alive connection and mixes in the rest."""

    def __init__(self, port, stats, threads, deadline):
        self.port = port
        self.stats = stats
        self.deadline = deadline
        self.threads = [threading.Thread(target=self.run, args=(k,), daemon=True) for k in range(threads)]
        self.big = os.urandom(LARGE)
        self.chunked_body = chunked(os.urandom(CHUNKED), sizes=(1000, 7, 16384, 333))

    def start(self):
        for t in self.threads:
            t.start()

    def join(self):
        for t in self.threads:
            t.join(max(1.0, self.deadline - time.monotonic() + 60))

    def run(self, k):
        rnd = random.Random(k)
        conn = None
        seq = 0
        while time.monotonic() < self.deadline:
            seq += 1
            kind = rnd.choices(["keepalive", "close", "pipelined", "large", "chunked"],
                               weights=[50, 15, 15, 5, 15])[0]
            target = "/soak/%d/%d/%s" % (k, seq, kind)
            try:
                if kind == "close":
                    with Client(self.port, timeout=15) as c:
                        r = c.request("GET", target, [("Connection", "close")])
                        check(r, "GET", target, 0)
                    self.stats.good(kind)
                    continue
                if conn is None:
                    conn = Client(self.port, timeout=15)
                if kind == "keepalive":
                    check(conn.request("GET", target), "GET", target, 0)
                elif kind == "pipelined":
                    conn.send(b"".join(build_request("GET", "%s/%d" % (target, i)) for i in range(5)))
                    for i in range(5):
                        check(conn.read(), "GET", "%s/%d" % (target, i), 0)
                elif kind == "large":
                    check(conn.request("POST", target, body=self.big), "POST", target, LARGE)
                else:
                    conn.send(build_request("POST", target, [("Transfer-Encoding", "chunked")]) + self.chunked_body)
                    check(conn.read("POST"), "POST", target, CHUNKED)
                self.stats.good(kind)
            except (OSError, ValueError, KeyError, PeerClosed, ProtocolError) as e:
                self.stats.bad(kind, "%s: %s: %s" % (target, type(e).__name__, e))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


def proc_sample(pid):
    with open("/proc/%d/status" % pid) as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    fds = len(os.listdir("/proc/%d/fd" % pid))
    return rss, fds


def grew_without_bound(series, factor, slack):
    """The last third's max above the first third's max x factor + slack."""
    third = max(1, len(series) // 3)
    first, last = max(series[:third]), max(series[-third:])
    return last > first * factor + slack, first, last


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--breaker", action="store_true",
                    help="keep the shadow's circuit breaker on (default off: copies keep meeting the fault)")
    args = ap.parse_args()
    binary = os.path.abspath(os.environ.get("UMBRA_BIN", os.path.join(HERE, "..", "..", "build", "umbra")))
    if not os.access(binary, os.X_OK):
        sys.exit("soak: %s is not executable (set UMBRA_BIN)" % binary)
    total = args.minutes * 60.0
    phase_s = min(60.0, total / 12.0)
    work = tempfile.mkdtemp(prefix="umbra-soak-")
    opts = os.environ.get("ASAN_OPTIONS", "")
    # ASan keeps freed memory in quarantine (256 MB by default), which would
    # look like growth; a small one keeps RSS about what umbra holds.
    os.environ["ASAN_OPTIONS"] = (opts + ":" if opts else "") + "quarantine_size_mb=16"
    primary = shadow = umbra = None
    stats = Stats()
    samples = []
    ok = True
    try:
        primary = Peer(work, "primary", "echo")
        shadow = Peer(work, "shadow", PHASES[0])
        cfg = make_config(
            {"primary": {"endpoints": [primary.addr], "timeout": "30s"},
             "shadow": {"endpoints": [shadow.addr], "timeout": "2s", "connect_timeout": "250ms",
                        # off by default: every copy really meets the failing
                        # shadow (connects, timeouts, resets), the harder case
                        "circuit_breaker": {"consecutive_failures": 5 if args.breaker else 0}}},
            routes=[{"name": "soak", "match": {"prefix": "/"}, "cluster": "primary",
                     "mirrors": [{"cluster": "shadow", "fraction": "100%"}]}],
            workers=args.workers, limits={"max_body_bytes": "8MiB"})
        umbra = Umbra(binary, work, cfg, "umbra")
        umbra.start()
        print("soak: %s for %.1f min, shadow phases of %.0f s (%s), work dir %s"
              % (binary, args.minutes, phase_s, " -> ".join(PHASE_NAMES[p] for p in PHASES), work), flush=True)

        t0 = time.monotonic()
        deadline = t0 + total
        load = Load(umbra.port, stats, args.threads, deadline)
        load.start()
        phase = 0
        next_phase = t0 + phase_s
        next_sample = t0
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_sample:
                rss, fds = proc_sample(umbra.pid)
                samples.append((now - t0, rss, fds))
                with stats.lock:
                    done = sum(stats.ok.values())
                print("soak: t=%4.0fs shadow=%-11s rss=%6.1f MB fds=%4d requests ok=%d failed=%d"
                      % (now - t0, PHASE_NAMES[PHASES[phase % len(PHASES)]], rss / MB, fds, done, stats.nfail),
                      flush=True)
                next_sample += SAMPLE_S
            if now >= next_phase:
                phase += 1
                shadow.set_mode(PHASES[phase % len(PHASES)])
                next_phase += phase_s
            if not umbra.alive():
                stats.bad("umbra", "exited with %s" % umbra.proc.returncode)
                break
            time.sleep(max(0.0, min(next_sample, next_phase, deadline) - time.monotonic()))
        load.join()
        if umbra.alive():
            rss, fds = proc_sample(umbra.pid)
            samples.append((time.monotonic() - t0, rss, fds))
            outcomes = umbra.metrics().by_label("umbra_mirror_requests_total", "outcome")
            print("soak: mirror outcomes %s" % {k: int(v) for k, v in sorted(outcomes.items()) if v})
    finally:
        code = umbra.stop() if umbra else None
        for p in (primary, shadow):
            if p:
                p.stop()

    rss = [s[1] for s in samples]
    fds = [s[2] for s in samples]
    print("soak: requests ok %s, failed %d" % (dict(sorted(stats.ok.items())), stats.nfail))
    for line in stats.failures:
        print("soak:   failed: " + line)
    if stats.nfail:
        ok = False
    if len(samples) >= 3:
        print("soak: RSS start %.1f MB, max %.1f MB, end %.1f MB" % (rss[0] / MB, max(rss) / MB, rss[-1] / MB))
        print("soak: fds start %d, max %d, end %d" % (fds[0], max(fds), fds[-1]))
        bad, first, last = grew_without_bound(rss, 1.5, RSS_SLACK)
        if bad:
            ok = False
            print("soak: RSS grows: last third max %.1f MB > first third max %.1f MB x 1.5 + %d MB"
                  % (last / MB, first / MB, RSS_SLACK // MB))
        bad, first, last = grew_without_bound(fds, 1.5, FD_SLACK)
        if bad:
            ok = False
            print("soak: descriptors grow: last third max %d > first third max %d x 1.5 + %d"
                  % (last, first, FD_SLACK))
    else:
        ok = False
        print("soak: too few samples (%d)" % len(samples))
    if umbra:
        report = umbra.sanitizer_report()
        if report:
            ok = False
            print("soak: sanitizer report in %s:\n%s" % (umbra.log_path, report))
        if code != 0:
            ok = False
            print("soak: umbra exited with %s on SIGTERM; log tail:\n%s" % (code, umbra.tail(20)))
    if ok and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("soak: work directory kept: %s" % work)
    print("soak: %s" % ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
