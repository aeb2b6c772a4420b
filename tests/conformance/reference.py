#!/usr/bin/env python3
"""Runs every conformance case through umbra, nginx and HAProxy and prints a
comparison table (Markdown). Not a test: the reference proxies only help
decide what a case should expect, and their answers are documented in
docs/hardening.md.

    UMBRA_BIN=build/asan/umbra python3 tests/conformance/reference.py [-k SUBSTR] [--out FILE]

Each proxy runs in front of its own recording backend on loopback. A cell
shows the statuses answered in order, "close" when the connection closed
without (more) answers, and marks what reached the backend: "+N" complete
requests, "+S" when the trailing GET /smuggled was forwarded as a request of its own
(a tolerant parser accepted the first request, so it read what followed as a
pipelined request: not a desync by itself, but a request umbra refuses).
nginx runs as `nginx -g 'daemon off; master_process off;'` and HAProxy as
`haproxy -db`, both with stock settings apart from the addresses.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, HERE)

from backends import Backend, PeerClosed, ProtocolError  # noqa: E402
from cases import SMUGGLED_MARK, load  # noqa: E402
from harness import Client, Umbra, make_config  # noqa: E402


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("exited with %s" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d never opened" % port)


NGINX_CONF = """
pid {dir}/nginx.pid;
error_log {dir}/nginx.error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 1m;
    upstream b {{ server 127.0.0.1:{backend}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://b;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

HAPROXY_CONF = """
global
    log stderr format raw local0 warning
defaults
    mode http
    timeout connect 2s
    timeout client 5s
    timeout server 5s
    timeout http-request 5s
frontend f
    bind 127.0.0.1:{port}
    default_backend b
backend b
    server s1 127.0.0.1:{backend}
"""


class Proc:
    def __init__(self, name, args, port, workdir):
        self.name = name
        self.port = port
        self.log = open(os.path.join(workdir, name + ".out"), "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        wait_port(port, self.proc)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def run_case(port, backend, case, read_timeout=2.0):
    """What one proxy did with one case: the cell text."""
    with backend.lock:
        before = len(backend.requests), len(backend.heads)
    got = []
    closed = False
    try:
        with Client(port, timeout=read_timeout) as c:
            c.send(case.raw)
            for _ in range(len(case.expect) + 1):
                try:
                    r = c.read("GET", keep_body=False)
                except (PeerClosed, ConnectionResetError, BrokenPipeError):
                    closed = True
                    break
                except socket.timeout:
                    break
                except ProtocolError:
                    got.append("junk")
                    break
                got.append(str(r.status))
            if not closed and got and got[-1] != "junk":
                try:
                    closed = c.is_closed(0.3)
                except AssertionError:
                    got.append("junk")
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    time.sleep(0.05)  # let a late forwarded request land before counting
    with backend.lock:
        reqs = backend.requests[before[0]:]
        heads = backend.heads[before[1]:]
    text = ",".join(got) if got else ""
    if closed:
        text = text + ",close" if text else "close"
    if reqs:
        text += " +%d" % len(reqs)
    if any(SMUGGLED_MARK in h["target"] for h in heads):
        text += " +S"
    return text or "timeout"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    ap.add_argument("--out", help="also write the table to this file")
    args = ap.parse_args()
    umbra_bin = os.path.abspath(os.environ.get("UMBRA_BIN", os.path.join(HERE, "..", "..", "build", "asan", "umbra")))
    cases = [c for c in load() if args.k in c.name]
    work = tempfile.mkdtemp(prefix="umbra-reference-")
    backends, procs, umbra = [], [], None
    try:
        targets = []
        b = Backend("umbra-b")
        backends.append(b)
        umbra = Umbra(umbra_bin, work, make_config({"primary": [b]}, limits={"max_body_bytes": "1MiB"}))
        umbra.start()
        targets.append(("umbra", umbra.port, b))

        if shutil.which("nginx"):
            b = Backend("nginx-b")
            backends.append(b)
            port = free_port()
            for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                os.makedirs(os.path.join(work, d), exist_ok=True)
            conf = os.path.join(work, "nginx.conf")
            with open(conf, "w") as f:
                f.write(NGINX_CONF.format(dir=work, port=port, backend=b.port))
            procs.append(Proc("nginx", ["nginx", "-p", work, "-c", conf, "-g", "daemon off; master_process off;"],
                              port, work))
            targets.append(("nginx", port, b))
        if shutil.which("haproxy"):
            b = Backend("haproxy-b")
            backends.append(b)
            port = free_port()
            conf = os.path.join(work, "haproxy.cfg")
            with open(conf, "w") as f:
                f.write(HAPROXY_CONF.format(port=port, backend=b.port))
            procs.append(Proc("haproxy", ["haproxy", "-db", "-f", conf], port, work))
            targets.append(("haproxy", port, b))

        versions = []
        for name, cmd in (("nginx", ["nginx", "-v"]), ("haproxy", ["haproxy", "-v"])):
            if shutil.which(name):
                out = subprocess.run(cmd, capture_output=True, text=True)
                versions.append((out.stdout + out.stderr).strip().splitlines()[0])

        lines = ["| case | expected (umbra's table) | umbra | %s |" % " | ".join(t[0] for t in targets[1:]),
                 "| --- | --- | --- | %s |" % " | ".join("---" for _ in targets[1:])]
        for case in cases:
            cells = [run_case(port, b, case) for _, port, b in targets]
            lines.append("| %s | %s | %s |" % (case.name, case.expect_text(), " | ".join(cells)))
        table = "\n".join(["Reference parsers: " + "; ".join(versions), ""] + lines)
        print(table)
        if args.out:
            with open(args.out, "w") as f:
                f.write(table + "\n")
    finally:
        for p in procs:
            p.stop()
        if umbra:
            umbra.stop()
        for b in backends:
            b.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
