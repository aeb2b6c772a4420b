"""TLS helpers for umbra's black-box tests: certificates made at test time by
the `openssl` command, TLS backends and shadows, and HTTPS clients.

Holds: Pki (a test CA, a second CA for client certificates, a rogue CA, and
certificates issued by them: server certificates with SANs, client
certificates, expired and self-signed ones), TlsBackend (backends.Backend
behind a Python ssl server socket that records each handshake: failures,
peer subject, session reuse), contexts for clients and servers, and
https_request()/HttpsLoad (a bounded HTTPS load that checks every answer).

Not a general PKI: keys are EC P-256 (fast to make), certificates last two
days, and nothing here is meant to be secret.
"""

import json
import os
import socket
import ssl
import subprocess
import threading
import time

from backends import Backend, Reader
from harness import read_response, build_request

OPENSSL_TIMEOUT = 30


def _run(args, cwd):
    p = subprocess.run(["openssl"] + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=OPENSSL_TIMEOUT)
    if p.returncode != 0:
        raise AssertionError("openssl %s failed: %s" % (" ".join(args), p.stderr.decode(errors="replace")))
    return p.stdout.decode(errors="replace")


class Pki:
    """CAs and certificates in `directory`, made by the openssl command."""

    def __init__(self, directory):
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        self._serial = int(time.time() * 1000) & 0xFFFFFFFF
        self.ca = self._make_ca("ca", "umbra test CA")
        self.client_ca = self._make_ca("client-ca", "umbra test client CA")
        self.rogue_ca = self._make_ca("rogue-ca", "a CA nobody trusts")

    def path(self, name):
        return os.path.join(self.dir, name)

    def _make_ca(self, name, cn):
        key, cert = self.path(name + ".key"), self.path(name + ".pem")
        _run(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
              "-keyout", key, "-out", cert, "-days", "2", "-subj", "/O=Umbra Tests/CN=" + cn,
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"], self.dir)
        return (cert, key)

    def issue(self, name, cn, sans=(), ca=None, client=False, expired=False, org="Umbra Tests"):
        """A key and a certificate for `cn` (SANs like "DNS:api.test" or
        "IP:127.0.0.1") signed by `ca` (a (cert, key) pair; the test CA by
        default). Returns (cert path, key path)."""
        ca = ca or self.ca
        key, csr, cert = self.path(name + ".key"), self.path(name + ".csr"), self.path(name + ".pem")
        ext = self.path(name + ".ext")
        _run(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
              "-keyout", key, "-out", csr, "-subj", "/O=%s/CN=%s" % (org, cn)], self.dir)
        with open(ext, "w") as f:
            if sans:
                f.write("subjectAltName=%s\n" % ",".join(sans))
            f.write("extendedKeyUsage=%s\n" % ("clientAuth" if client else "serverAuth"))
        self._serial += 1
        if expired:
            self._sign_expired(csr, cert, ext, ca)
        else:
            _run(["x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial", str(self._serial),
                  "-days", "2", "-extfile", ext, "-out", cert], self.dir)
        return (cert, key)

    def _sign_expired(self, csr, cert, ext, ca):
        """`openssl ca` can set dates in the past, which `x509 -req` cannot."""
        db = self.path("ca-db")
        os.makedirs(os.path.join(db, "new"), exist_ok=True)
        open(os.path.join(db, "index.txt"), "a").close()
        with open(os.path.join(db, "serial"), "w") as f:
            f.write("%08X\n" % self._serial)
        cnf = os.path.join(db, "ca.cnf")
        with open(cnf, "w") as f:
            f.write("[ca]\ndefault_ca = d\n[d]\ndir = %s\ndatabase = $dir/index.txt\n"
                    "new_certs_dir = $dir/new\nserial = $dir/serial\ndefault_md = sha256\n"
                    "policy = p\nunique_subject = no\n[p]\ncommonName = supplied\n"
                    "organizationName = optional\n" % db)
        _run(["ca", "-batch", "-config", cnf, "-cert", ca[0], "-keyfile", ca[1], "-in", csr, "-out", cert,
              "-startdate", "20200101000000Z", "-enddate", "20200201000000Z", "-extfile", ext, "-notext"],
             self.dir)

    def self_signed(self, name, cn, sans=()):
        key, cert = self.path(name + ".key"), self.path(name + ".pem")
        args = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", key, "-out", cert, "-days", "2", "-subj", "/O=Nobody/CN=" + cn]
        if sans:
            args += ["-addext", "subjectAltName=" + ",".join(sans)]
        _run(args, self.dir)
        return (cert, key)


def subject_of(pem_path):
    """The certificate's subject as `openssl x509 -subject` prints it."""
    return _run(["x509", "-in", pem_path, "-noout", "-subject", "-nameopt", "RFC2253"], ".").strip()


def serial_of(pem_path):
    return int(_run(["x509", "-in", pem_path, "-noout", "-serial"], ".").strip().split("=")[1], 16)


# ---------------------------------------------------------------- contexts

def server_context(cert, client_ca=None):
    """A Python server context; with client_ca it requires client certificates."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert)
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    return ctx


def client_context(cafile, cert=None, check_hostname=True):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = check_hostname
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


# ---------------------------------------------------------------- backends

class TlsBackend(Backend):
    """A recording backend (backends.Backend, any mode) that speaks TLS with
    `context`. Every handshake is recorded: `tls_failures` (the error text of
    each failed one), `tls_ok`, `peer_subjects` and `reused` (one bool per
    completed handshake)."""

    def __init__(self, name, context, mode="echo", **kw):
        self.context = context
        self.tls_failures = []
        self.tls_ok = 0
        self.peer_subjects = []
        self.reused = []
        super().__init__(name, mode, **kw)

    def _serve(self, conn, cid):
        conn.settimeout(10)
        try:
            tconn = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as e:
            with self.lock:
                self.tls_failures.append(str(e))
                self._conns.discard(conn)
                self.open_connections -= 1
            conn.close()
            return
        peer = tconn.getpeercert()
        with self.lock:
            self.tls_ok += 1
            self.reused.append(tconn.session_reused)
            self.peer_subjects.append(dict(x[0] for x in peer.get("subject", ())) if peer else None)
            self._conns.discard(conn)
            self._conns.add(tconn)
        super()._serve(tconn, cid)


def tls_backend(procs, name, context, mode="echo"):
    """A TlsBackend stopped with the test's other backends."""
    b = TlsBackend(name, context, mode)
    procs.backends.append(b)
    return b


class StallServer:
    """Accepts TCP connections and never sends a byte (a TLS peer that never
    answers the ClientHello); closes them when stopped."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        self.accepted = 0
        self.conns = []
        self._stop = threading.Event()
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            self.conns.append(c)

    def stop(self):
        self._stop.set()
        self.thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()


class PlainAnswerServer(StallServer):
    """A plain HTTP server as a TLS client meets it: whatever arrives (a
    ClientHello), it answers "400 Bad Request" in plaintext and closes."""

    def _run(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            try:
                c.settimeout(5)
                c.recv(4096)
                c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            c.close()


# ---------------------------------------------------------------- clients

def tls_connect(port, context, server_name, session=None, timeout=10.0):
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        return context.wrap_socket(raw, server_hostname=server_name, session=session)
    except BaseException:
        raw.close()
        raise


def https_request(sock, method="GET", target="/", headers=(), body=None, host="api.test"):
    """One request on a connected TLS socket; returns harness.Response."""
    sock.sendall(build_request(method, target, list(headers), body, host))
    reader = getattr(sock, "_umbra_reader", None)
    if reader is None:
        reader = sock._umbra_reader = Reader(sock)
    return read_response(reader, method)


def echoed_headers(resp):
    """{lowercase name: [values]} of the request as an echo backend saw it."""
    out = {}
    for name, value in json.loads(resp.body)["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


class HttpsLoad:
    """`threads` threads sending `per_thread` GETs each over TLS, keep-alive,
    opening a new connection every `new_conn_every` requests (so handshakes
    go on throughout). Every answer must be 200; failures are listed. The
    serial number of each new connection's certificate is recorded with the
    time it was seen."""

    def __init__(self, port, context, server_name, threads=4, per_thread=200, new_conn_every=10,
                 deadline_s=90.0):
        self.port, self.context, self.server_name = port, context, server_name
        self.threads, self.per_thread, self.new_conn_every = threads, per_thread, new_conn_every
        self.deadline = time.monotonic() + deadline_s
        self.lock = threading.Lock()
        self.ok = 0
        self.failures = []
        self.serials = []  # (monotonic time, serial) per new connection
        self._ts = []

    def _worker(self, tid):
        sock = None
        for i in range(self.per_thread):
            if time.monotonic() > self.deadline:
                with self.lock:
                    self.failures.append("thread %d: out of time at %d" % (tid, i))
                break
            try:
                if sock is None or i % self.new_conn_every == 0:
                    if sock is not None:
                        sock.close()
                    sock = tls_connect(self.port, self.context, self.server_name)
                    serial = int(sock.getpeercert()["serialNumber"], 16)
                    with self.lock:
                        self.serials.append((time.monotonic(), serial))
                resp = https_request(sock, target="/load/%d/%d" % (tid, i))
                if resp.status != 200:
                    raise AssertionError("status %d" % resp.status)
                with self.lock:
                    self.ok += 1
            except (OSError, AssertionError, ValueError) as e:
                with self.lock:
                    self.failures.append("thread %d request %d: %s: %s" % (tid, i, type(e).__name__, e))
                if sock is not None:
                    sock.close()
                sock = None
        if sock is not None:
            sock.close()

    def start(self):
        self._ts = [threading.Thread(target=self._worker, args=(k,), daemon=True) for k in range(self.threads)]
        for t in self._ts:
            t.start()
        return self

    def join(self):
        for t in self._ts:
            t.join(max(1.0, self.deadline - time.monotonic() + 10))
        return self

    def done(self):
        return all(not t.is_alive() for t in self._ts)
