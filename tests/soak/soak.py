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
phase (--phase-seconds overrides it). The shadow's circuit breaker is off
(--breaker turns it on), so copies keep meeting the fault instead of being
dropped up front. Every 5 s umbra's RSS and open descriptors (/proc/PID/fd)
and the peers' RSS are sampled.

A watchdog notices any request outstanding longer than --stall-seconds
(default 5, well before the clients' 15 s timeout) and, once per incident,
captures evidence into WORKDIR/incident-N/: the stuck requests (kind, target,
client port, time sent, shadow phase), umbra's /stats and /metrics (with its
per-worker loop lag and in-flight counts), `ss -tanpie` twice a second apart
(queues that do not drain), system TCP counters (nstat: retransmits, drops),
the peers' status files and Python stacks (SIGUSR1), CPU use of every process
over one second, and `gdb thread apply all bt` of umbra. It prints a verdict line saying which
process looks stuck and which file to read. Incidents alone do not fail the
soak (only failed requests do); they keep the work directory.

It fails (exit 1) when any primary request failed or got a wrong answer, when
RSS or the descriptor count grows without bound (the last third's maximum
above the first third's maximum x 1.5 plus a slack), or when umbra leaves a
sanitizer report or does not exit cleanly on SIGTERM. It prints start, max
and end for RSS and descriptors, request counts and the mirror outcomes.
"""

import argparse
import collections
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
CLIENT_TIMEOUT_S = 15
MAX_CAPTURES = 5       # incidents with full evidence; later ones are only logged
TCP_STATES = ("ESTAB", "SYN-SENT", "SYN-RECV", "FIN-WAIT-1", "FIN-WAIT-2", "TIME-WAIT", "CLOSE",
              "CLOSE-WAIT", "LAST-ACK", "LISTEN", "CLOSING")

# System-wide TCP counters (nstat) whose growth during an incident points at
# the kernel rather than a process: loss and retransmission on loopback.
TCP_COUNTERS = ("TcpRetransSegs", "TcpExtTCPRcvQDrop", "TcpExtTCPBacklogDrop", "TcpExtTCPMemoryPressures",
                "TcpExtPruneCalled", "TcpExtTCPOFODrop", "TcpExtListenOverflows", "TcpExtTCPAbortOnMemory")

# A request a client thread has sent and not yet had answered.
Outstanding = collections.namedtuple("Outstanding", "kind target t_mono t_wall port phase")


class Peer:
    """fault_upstream.py as a separate process (its own GIL)."""

    def __init__(self, workdir, name, mode):
        self.name = name
        self.status = os.path.join(workdir, name + ".status.json")
        self.control = os.path.join(workdir, name + ".control")
        with open(self.control, "w") as f:
            f.write(mode + "\n")
        self.err = open(os.path.join(workdir, name + ".stderr"), "wb")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "..", "faults", "fault_upstream.py"), "--mode", mode,
             "--control", self.control, "--status", self.status],
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
        self.phase = "?"     # the shadow's phase, set by main()
        self.inflight = {}   # thread -> Outstanding, read by the watchdog
        self.threads = [threading.Thread(target=self.run, args=(k,), daemon=True) for k in range(threads)]
        self.big = os.urandom(LARGE)
        self.chunked_body = chunked(os.urandom(CHUNKED), sizes=(1000, 7, 16384, 333))

    def start(self):
        for t in self.threads:
            t.start()

    def join(self):
        for t in self.threads:
            t.join(max(1.0, self.deadline - time.monotonic() + 60))

    def sent(self, k, kind, target, client):
        try:
            port = client.sock.getsockname()[1] if client else None
        except OSError:
            port = None
        self.inflight[k] = Outstanding(kind, target, time.monotonic(), time.time(), port, self.phase)

    def run(self, k):
        rnd = random.Random(k)
        conn = None
        seq = 0
        while time.monotonic() < self.deadline:
            seq += 1
            kind = rnd.choices(["keepalive", "close", "pipelined", "large", "chunked"],
                               weights=[50, 15, 15, 5, 15])[0]
            target = "/soak/%d/%d/%s" % (k, seq, kind)
            self.sent(k, kind, target, None if kind == "close" else conn)
            try:
                if kind == "close":
                    with Client(self.port, timeout=CLIENT_TIMEOUT_S) as c:
                        self.sent(k, kind, target, c)
                        r = c.request("GET", target, [("Connection", "close")])
                        check(r, "GET", target, 0)
                    self.stats.good(kind)
                    continue
                if conn is None:
                    conn = Client(self.port, timeout=CLIENT_TIMEOUT_S)
                    self.sent(k, kind, target, conn)
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
                o = self.inflight.get(k)
                where = (" (client port %s, sent %s, shadow %s)" % (o.port, clock(o.t_wall), o.phase)
                         if o else "")
                self.stats.bad(kind, "%s: %s: %s%s" % (target, type(e).__name__, e, where))
                if conn is not None:
                    conn.close()
                conn = None
            finally:
                self.inflight.pop(k, None)
        if conn is not None:
            conn.close()


def clock(t_wall):
    return time.strftime("%H:%M:%S", time.localtime(t_wall)) + ".%03d" % (t_wall % 1 * 1000)


def rss_of(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def cpu_ticks(pid):
    """(state letter, utime + stime in clock ticks) of pid, or ("gone", 0)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return "gone", 0
    return fields[0], int(fields[11]) + int(fields[12])


def parse_ss(text):
    """`ss -tanpie` lines -> [(state, recv_q, send_q, local_port, peer_port, line)]."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 5 and f[0] in TCP_STATES:
            try:
                out.append((f[0], int(f[1]), int(f[2]), int(f[3].rsplit(":", 1)[1]),
                            int(f[4].rsplit(":", 1)[1]) if f[4].rsplit(":", 1)[1] != "*" else 0, line))
            except (ValueError, IndexError):
                pass
    return out


def tcp_counters():
    """(raw `nstat -asz` text + /proc/net/sockstat, {counter: value})."""
    text = run_tool(["nstat", "-asz"], 10)
    values = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 2 and f[0] in TCP_COUNTERS and f[1].isdigit():
            values[f[0]] = int(f[1])
    try:
        with open("/proc/net/sockstat") as f:
            text += "\n# /proc/net/sockstat\n" + f.read()
    except OSError:
        pass
    return text, values


def run_tool(argv, timeout):
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout)
        return p.stdout.decode("utf-8", "replace")
    except (OSError, subprocess.TimeoutExpired) as e:
        return "%s: %s\n" % (" ".join(argv), e)


class Watchdog:
    """Notices requests outstanding longer than stall_s; captures evidence
    once per incident (an incident lasts while any request is that late)."""

    def __init__(self, load, stats, umbra, peers, work, stall_s, t0):
        self.load, self.stats, self.umbra, self.peers = load, stats, umbra, peers
        self.work, self.stall_s, self.t0 = work, stall_s, t0
        self.incidents = []   # one summary line each
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, name="watchdog", daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        self.done.set()
        self.thread.join(120)

    def peer_status(self):
        out = {}
        for name, p in self.peers.items():
            try:
                with open(p.status) as f:
                    out[name] = json.load(f)
            except (OSError, ValueError):
                out[name] = {}
        return out

    def run(self):
        first = nfail0 = peers0 = None
        while not self.done.wait(0.25):
            now = time.monotonic()
            stuck = sorted((k, o) for k, o in list(self.load.inflight.items()) if now - o.t_mono >= self.stall_s)
            if stuck and first is None:
                first = min(o.t_mono for _, o in stuck)
                peers0 = self.peer_status()
                with self.stats.lock:
                    nfail0 = self.stats.nfail
                try:
                    self.incident(stuck)
                except Exception as e:  # evidence is best effort; the soak goes on
                    print("soak: watchdog: capture failed: %s: %s" % (type(e).__name__, e), flush=True)
            elif not stuck and first is not None:
                with self.stats.lock:
                    failed = self.stats.nfail - nfail0
                print("soak: watchdog: incident %d over at t=%.0fs, %.1f s after its first late request "
                      "was sent; %d request(s) failed meanwhile" % (len(self.incidents), now - self.t0,
                                                                   now - first, failed), flush=True)
                self.peers_after(peers0)
                first = None

    def peers_after(self, before):
        """Says which peer's own loop stalled during the incident, from the
        figures its status file keeps (written again once its loop runs)."""
        time.sleep(1.5)  # at least one status write after the stall
        for name, st in sorted(self.peer_status().items()):
            b = before.get(name, {})
            lag0, lag = b.get("loop_lag_max_s", 0), st.get("loop_lag_max_s", 0)
            if lag > lag0 and lag >= 1.0:
                gc_note = ""
                if st.get("gc_pause_max_s", 0) > b.get("gc_pause_max_s", 0):
                    gc_note = ", longest full garbage collection now %.1f s (%d so far, %d requests served)" % (
                        st["gc_pause_max_s"], st.get("gc_full", 0), st.get("requests", 0))
                line = "the %s's own loop stalled: its longest lag went from %.1f s to %.1f s%s" % (
                    name, lag0, lag, gc_note)
                print("soak: watchdog:   " + line, flush=True)
                if self.incidents:
                    self.incidents[-1] += "; " + line

    def incident(self, stuck):
        n = len(self.incidents) + 1
        now = time.monotonic()
        desc = ["thread %d: %s %s, client port %s, sent %s (t=%.1fs, shadow %s), outstanding %.1f s"
                % (k, o.kind, o.target, o.port, clock(o.t_wall), o.t_mono - self.t0, o.phase, now - o.t_mono)
                for k, o in stuck]
        head = ("incident %d at t=%.0fs: %d request(s) outstanding > %.0f s"
                % (n, now - self.t0, len(stuck), self.stall_s))
        self.incidents.append(head)
        if n > MAX_CAPTURES:
            print("soak: watchdog: " + head + " (no capture: %d already)" % MAX_CAPTURES, flush=True)
            return
        d = os.path.join(self.work, "incident-%d" % n)
        os.makedirs(d, exist_ok=True)
        print("soak: watchdog: " + head + "; capturing evidence into " + d, flush=True)
        for line in desc:
            print("soak: watchdog:   " + line, flush=True)
        verdict = self.capture(d, stuck, desc)
        for line in verdict:
            print("soak: watchdog:   " + line, flush=True)
        self.incidents[-1] = head + ": " + verdict[0] + " (" + d + ")"

    def write(self, d, name, text):
        with open(os.path.join(d, name), "w") as f:
            f.write(text)

    def capture(self, d, stuck, desc):
        """Writes the evidence files; returns the verdict lines (first = the gist).
        The quick, perishable readings come first: a short stall may end any moment."""
        procs = {"umbra": self.umbra.pid}
        procs.update((name, p.proc.pid) for name, p in self.peers.items())
        notes = list(desc) + [""]
        ages, statuses = {}, {}
        for name, p in self.peers.items():
            try:
                ages[name] = time.time() - os.stat(p.status).st_mtime
                with open(p.status) as f:
                    statuses[name] = f.read().strip()
            except OSError as e:
                ages[name], statuses[name] = 0.0, str(e)
        ss1, (nstat1, tcp1) = self.sockets(), tcp_counters()
        cpu0, t_cpu = {name: cpu_ticks(pid) for name, pid in procs.items()}, time.monotonic()
        loops = self.admin_figures(d, notes)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t_cpu)))
        hz, cpu = os.sysconf("SC_CLK_TCK"), {}
        for name, pid in procs.items():
            state, ticks = cpu_ticks(pid)
            cpu[name] = 100.0 * (ticks - cpu0[name][1]) / hz / (time.monotonic() - t_cpu)
            notes.append("%s pid %d: state %s, cpu %.0f%% over the last second, rss %.1f MB"
                         % (name, pid, state, cpu[name], rss_of(pid) / MB))
        for name in self.peers:
            notes.append("%s status (file %.1f s old): %s" % (name, ages[name], statuses[name]))
        ss2, (nstat2, tcp2) = self.sockets(), tcp_counters()
        self.write(d, "ss.txt", "# first\n" + ss1 + "\n# about a second later\n" + ss2)
        self.write(d, "nstat.txt", "# first\n" + nstat1 + "\n# about a second later\n" + nstat2)
        tcp = {k: tcp2[k] - tcp1[k] for k in tcp2 if k in tcp1 and tcp2[k] != tcp1[k]}
        notes.append("system TCP counters that moved in that second: %s" % (tcp or "none"))
        queues = self.socket_notes(notes, stuck, parse_ss(ss1), parse_ss(ss2))
        self.peer_stacks(d)
        # last, as it stops umbra for a moment: every thread's stack
        self.write(d, "gdb.txt", run_tool(["gdb", "-p", str(self.umbra.pid), "-batch", "-ex",
                                           "thread apply all bt"], 90))
        self.write(d, "summary.txt", "\n".join(notes) + "\n")
        return self.verdict(loops, ages, cpu, queues, tcp)

    def sockets(self):
        """`ss -tanpie` for umbra's and the peers' ports (not TIME-WAIT)."""
        ports = [self.load.port, self.umbra.admin_port] + [p.port for p in self.peers.values()]
        expr = " or ".join("sport = :%d or dport = :%d" % (q, q) for q in ports)
        return run_tool(["ss", "-tanpie", "exclude", "time-wait", "( %s )" % expr], 30)

    def admin_figures(self, d, notes):
        """Saves umbra's /stats and /metrics; returns its worker_loops."""
        loops = []
        for path, name in (("/stats", "stats.json"), ("/metrics", "metrics.txt")):
            try:
                code, body = self.umbra.admin("GET", path, timeout=5)
                self.write(d, name, body.decode("utf-8", "replace"))
                if path == "/stats" and code == 200:
                    loops = json.loads(body).get("worker_loops", [])
            except (OSError, ValueError) as e:
                self.write(d, name, "GET %s: %s\n" % (path, e))
                notes.append("umbra admin %s did not answer: %s" % (path, e))
        for lp in loops:
            notes.append("umbra worker %s: loop stalled %.3f s now, longest iteration %.3f s, %s client "
                         "connections, %s primary streams, %s mirror copies"
                         % (lp.get("worker"), lp.get("stalled_seconds", 0), lp.get("busy_max_seconds", 0),
                            lp.get("downstream_connections"), lp.get("primary_streams"), lp.get("mirror_copies")))
        return loops

    def socket_notes(self, notes, stuck, first, second):
        """Lists the stuck clients' and the primary's sockets; returns the
        unread bytes per place, counting only queues seen in both snapshots
        (a queue that drains within a second is traffic, not a stall)."""
        ports = {o.port for _, o in stuck if o.port}
        pport = self.peers["primary"].port
        places = {
            "client": lambda x: x[3] in ports and x[4] == self.load.port,
            "umbra_client": lambda x: x[3] == self.load.port and x[4] in ports,
            "umbra_primary": lambda x: x[4] == pport and x[0] == "ESTAB",
            "primary": lambda x: x[3] == pport and x[0] == "ESTAB",
        }
        titles = {"client": "client side of the stuck connections",
                  "umbra_client": "umbra side of the stuck connections",
                  "umbra_primary": "umbra's connections to the primary",
                  "primary": "the primary's side of them"}
        queues = {}
        notes.append("")
        for place, pick in places.items():
            rows1 = [x for x in first if pick(x)]
            rows2 = {(x[3], x[4]): x for x in second if pick(x)}
            notes.append("%s (state recv-q send-q; first snapshot):" % titles[place])
            notes.extend("  " + x[5] for x in rows1[:20])
            both = [(x, rows2[(x[3], x[4])]) for x in rows1 if (x[3], x[4]) in rows2]
            queues[place] = (sum(min(a[1], b[1]) for a, b in both), sum(min(a[2], b[2]) for a, b in both))
        return queues

    def peer_stacks(self, d):
        """The peers' Python stacks: faulthandler dumps them to stderr on SIGUSR1."""
        for name, p in self.peers.items():
            errpath = p.err.name
            size = os.path.getsize(errpath)
            try:
                os.kill(p.proc.pid, signal.SIGUSR1)
            except OSError:
                continue
            time.sleep(0.3)
            with open(errpath, "rb") as f:
                f.seek(size)
                self.write(d, name + ".stack.txt", f.read().decode("utf-8", "replace"))

    def verdict(self, loops, ages, cpu, queues, tcp):
        out = []
        for lp in loops:
            if lp.get("stalled_seconds", 0) >= 1.0:
                out.append("umbra worker %s has been inside one loop iteration for %.1f s: see gdb.txt"
                           % (lp["worker"], lp["stalled_seconds"]))
        for name, age in sorted(ages.items()):
            if age >= 2.0:
                out.append("the %s (fault_upstream.py) had not run its loop for %.1f s (status file stale, "
                           "cpu %.0f%%): see %s.stack.txt" % (name, age, cpu.get(name, 0), name))
        what = {"primary": "request bytes wait unread in the primary's sockets",
                "umbra_primary": "response bytes from the primary wait unread in umbra's sockets",
                "umbra_client": "request bytes from the stuck clients wait unread in umbra's sockets",
                "client": "response bytes wait unread in the stuck clients' sockets (the load generator)"}
        for place, text in what.items():
            if queues.get(place, (0, 0))[0]:
                out.append("%d %s for a second or more" % (queues[place][0], text))
        sending = {"client": "request bytes are still in the stuck clients' send queues",
                   "umbra_client": "response bytes are still in umbra's send queues to the stuck clients",
                   "umbra_primary": "request bytes are still in umbra's send queues to the primary"}
        for place, text in sending.items():
            if queues.get(place, (0, 0))[1]:
                out.append("%d %s for a second or more, unacknowledged: the kernel is (re)transmitting them "
                           "(system TCP counters in that second: %s; see ss.txt for retrans/rtt, nstat.txt)"
                           % (queues[place][1], text, tcp or "none moved"))
        if not out:
            out.append("no process stalled and no bytes queued: a request was dropped or never forwarded; "
                       "see stats.json (primary_streams) and gdb.txt")
        out.append("details: summary.txt, stats.json, metrics.txt, ss.txt, nstat.txt, gdb.txt, "
                   "primary.stack.txt, shadow.stack.txt")
        return out


def proc_sample(pid):
    with open("/proc/%d/status" % pid) as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    fds = len(os.listdir("/proc/%d/fd" % pid))
    return rss, fds


def report_loops(umbra):
    """umbra's per-worker event-loop figures at the end of the run."""
    try:
        code, body = umbra.admin("GET", "/stats", timeout=5)
        loops = json.loads(body).get("worker_loops", []) if code == 200 else []
    except (OSError, ValueError):
        loops = []
    for lp in loops:
        print("soak: umbra worker %s: longest loop iteration %.3f s over %d iterations"
              % (lp.get("worker"), lp.get("busy_max_seconds", 0), lp.get("iterations", 0)))


def report_peers(*peers):
    """The peers' own loop lag and garbage-collection pauses (their status files)."""
    for p in peers:
        if not p:
            continue
        try:
            with open(p.status) as f:
                st = json.load(f)
        except (OSError, ValueError):
            continue
        print("soak: %s: %d requests, loop lag max %.2f s, %d full garbage collections, longest %.2f s"
              % (p.name, st.get("requests", 0), st.get("loop_lag_max_s", 0), st.get("gc_full", 0),
                 st.get("gc_pause_max_s", 0)))


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
    ap.add_argument("--phase-seconds", type=float,
                    help="length of each shadow phase (default min(60, minutes*60/12))")
    ap.add_argument("--stall-seconds", type=float, default=5.0,
                    help="the watchdog captures evidence when a request is outstanding this long")
    args = ap.parse_args()
    binary = os.path.abspath(os.environ.get("UMBRA_BIN", os.path.join(HERE, "..", "..", "build", "umbra")))
    if not os.access(binary, os.X_OK):
        sys.exit("soak: %s is not executable (set UMBRA_BIN)" % binary)
    total = args.minutes * 60.0
    phase_s = args.phase_seconds or min(60.0, total / 12.0)
    work = tempfile.mkdtemp(prefix="umbra-soak-")
    opts = os.environ.get("ASAN_OPTIONS", "")
    # ASan keeps freed memory in quarantine (256 MB by default), which would
    # look like growth; a small one keeps RSS about what umbra holds.
    os.environ["ASAN_OPTIONS"] = (opts + ":" if opts else "") + "quarantine_size_mb=16"
    primary = shadow = umbra = watchdog = None
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
        load.phase = PHASE_NAMES[PHASES[0]]
        watchdog = Watchdog(load, stats, umbra, {"primary": primary, "shadow": shadow}, work,
                            args.stall_seconds, t0)
        watchdog.start()
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
                print("soak: t=%4.0fs shadow=%-11s rss=%6.1f MB fds=%4d requests ok=%d failed=%d "
                      "(peers rss %.0f/%.0f MB)"
                      % (now - t0, PHASE_NAMES[PHASES[phase % len(PHASES)]], rss / MB, fds, done, stats.nfail,
                         rss_of(primary.proc.pid) / MB, rss_of(shadow.proc.pid) / MB), flush=True)
                next_sample += SAMPLE_S
            if now >= next_phase:
                phase += 1
                shadow.set_mode(PHASES[phase % len(PHASES)])
                load.phase = PHASE_NAMES[PHASES[phase % len(PHASES)]]
                next_phase += phase_s
            if not umbra.alive():
                stats.bad("umbra", "exited with %s" % umbra.proc.returncode)
                break
            time.sleep(max(0.0, min(next_sample, next_phase, deadline) - time.monotonic()))
        load.join()
        watchdog.stop()
        if umbra.alive():
            rss, fds = proc_sample(umbra.pid)
            samples.append((time.monotonic() - t0, rss, fds))
            outcomes = umbra.metrics().by_label("umbra_mirror_requests_total", "outcome")
            print("soak: mirror outcomes %s" % {k: int(v) for k, v in sorted(outcomes.items()) if v})
            report_loops(umbra)
        report_peers(primary, shadow)
    finally:
        if watchdog:
            watchdog.stop()
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
    if watchdog and watchdog.incidents:
        print("soak: watchdog: %d incident(s) of requests outstanding > %.0f s:"
              % (len(watchdog.incidents), args.stall_seconds))
        for line in watchdog.incidents:
            print("  " + line)
    if ok and not args.keep and not (watchdog and watchdog.incidents):
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("soak: work directory kept: %s" % work)
    print("soak: %s" % ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
