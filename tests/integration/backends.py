"""Scripted HTTP/1.1 backends for umbra's integration tests.

A Backend is a raw-socket HTTP/1.1 server on an ephemeral loopback port, one
thread per connection, that records what it receives (every head as soon as it
is parsed, every request once its body is complete, and every request whose
body never completed) and answers according to a *mode*. It parses requests
itself rather than through http.server so that tests see exactly what umbra
sent: header order and case, framing, trailers.

Not a general web server: it trusts nothing, bounds every read and every wait,
and is meant to be stopped by its fixture.

The mode comes from the backend's default (`Backend(mode=...)`, or
`backend.mode = ...`) or, per request, from an `X-Backend-Mode` header such as
`big; size=1048576; chunked=1`. Modes:

  echo          JSON description of the request, Content-Length framed
  chunked       the same JSON, chunked (param piece=N bytes per chunk)
  until-close   the same JSON with neither Content-Length nor chunked; closes
  big           size=N bytes of PATTERN; chunked=1 or until_close=1 to change framing
  slow          waits delay=S seconds before the response head, then echoes
  slow-body     sends the head of a size=N body at once, the body after delay=S
  reset         reads the request, then resets the connection (RST, no response)
  close-after   echoes (no "Connection: close"), then closes right away
  once          echoes the first request of a connection (no "Connection:
                close"); a later request on it is read, recorded in
                backend.dropped, and answered by closing: a stale keep-alive
                connection that the proxy could not have seen close
  status        code=N: 204/304 without a body; other codes echo
  trailers      chunked JSON followed by trailer fields
  hop           echo with hop-by-hop fields in the response
  pause-body    waits for backend.gate before reading the request body
  raw           sends backend.raw_response verbatim, then closes
"""

import hashlib
import json
import socket
import struct
import threading

# A 64 KiB block repeated: big bodies are this pattern, so either side can
# produce or check any amount without keeping it.
PATTERN_BLOCK = bytes(range(256)) * 256


def pattern_chunks(size, block=1 << 20):
    """Yields `size` bytes of the repeating pattern in pieces of at most `block`."""
    big = PATTERN_BLOCK * (block // len(PATTERN_BLOCK))
    left = size
    while left > 0:
        n = min(left, len(big))
        yield big[:n]
        left -= n


_PATTERN_SHA = {}


def pattern_sha256(size):
    """SHA-256 (hex) of `size` bytes of the pattern; cached."""
    if size not in _PATTERN_SHA:
        h = hashlib.sha256()
        for piece in pattern_chunks(size):
            h.update(piece)
        _PATTERN_SHA[size] = h.hexdigest()
    return _PATTERN_SHA[size]


class ProtocolError(Exception):
    """The peer sent something that is not valid HTTP/1.1 framing."""


class PeerClosed(Exception):
    """The peer closed (or reset) the connection before the expected bytes."""


class Reader:
    """Buffered reads from a socket with hard bounds on every line and head."""

    def __init__(self, sock, recv_size=256 * 1024):
        self.sock = sock
        self.buf = bytearray()
        self.recv_size = recv_size
        self.eof = False
        self.received = 0

    def _fill(self):
        if self.eof:
            return False
        try:
            data = self.sock.recv(self.recv_size)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.received += len(data)
        self.buf += data
        return True

    def read_until(self, delim, limit):
        """Returns bytes up to and including `delim`; PeerClosed on EOF,
        ProtocolError past `limit` bytes without it."""
        start = 0
        while True:
            i = self.buf.find(delim, start)
            if i >= 0:
                out = bytes(self.buf[: i + len(delim)])
                del self.buf[: i + len(delim)]
                return out
            if len(self.buf) > limit:
                raise ProtocolError("no %r within %d bytes" % (delim, limit))
            start = max(0, len(self.buf) - len(delim) + 1)
            if not self._fill():
                raise PeerClosed("closed after %d buffered bytes" % len(self.buf))

    def read_head(self, limit=1 << 20):
        """Reads a message head up to the blank line. Returns None on a clean
        close before any byte (the keep-alive end)."""
        while not self.buf:
            if not self._fill():
                return None
        return self.read_until(b"\r\n\r\n", limit)

    def read_exact(self, n, sink):
        """Passes exactly n bytes to sink(bytes), in pieces."""
        while n > 0:
            if not self.buf and not self._fill():
                raise PeerClosed("closed with %d body bytes missing" % n)
            take = min(n, len(self.buf))
            sink(bytes(self.buf[:take]))
            del self.buf[:take]
            n -= take

    def read_to_eof(self, sink):
        while True:
            if self.buf:
                sink(bytes(self.buf))
                self.buf.clear()
            if not self._fill():
                return

    def read_chunked(self, sink, max_line=8192):
        """Decodes a chunked body; returns the trailer fields [(name, value)]."""
        while True:
            line = self.read_until(b"\r\n", max_line)[:-2]
            size_txt = line.split(b";", 1)[0].strip(b" \t")
            if not size_txt or any(c not in b"0123456789abcdefABCDEF" for c in size_txt):
                raise ProtocolError("bad chunk size line %r" % line[:80])
            size = int(size_txt, 16)
            if size == 0:
                break
            self.read_exact(size, sink)
            crlf = bytearray()
            self.read_exact(2, crlf.extend)
            if bytes(crlf) != b"\r\n":
                raise ProtocolError("chunk data not followed by CRLF: %r" % bytes(crlf))
        trailers = []
        while True:
            line = self.read_until(b"\r\n", max_line)[:-2]
            if not line:
                return trailers
            name, sep, value = line.partition(b":")
            if not sep:
                raise ProtocolError("bad trailer line %r" % line[:80])
            trailers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))


def parse_head(head):
    """Splits a head into (start line, [(name, value)]), strictly enough to
    notice junk: every field line needs a colon and no space before it."""
    lines = head[:-4].split(b"\r\n")
    start = lines[0].decode("latin-1")
    fields = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip(b" \t"):
            raise ProtocolError("bad field line %r" % line[:80])
        fields.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return start, fields


def header_values(fields, name):
    name = name.lower()
    return [v for n, v in fields if n.lower() == name]


def parse_mode(text):
    """'big; size=10; chunked=1' -> ('big', {'size': '10', 'chunked': '1'})."""
    parts = [p.strip() for p in text.split(";")]
    params = {}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        if k:
            params[k.strip()] = v.strip()
    return parts[0], params


class Backend:
    """A recording HTTP/1.1 backend; see the module comment for modes."""

    def __init__(self, name="backend", mode="echo", io_timeout=30.0):
        self.name = name
        self.mode = mode
        self.io_timeout = io_timeout
        self.raw_response = b""
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.heads = []       # every request head parsed (dict), in arrival order
        self.requests = []    # requests whose body arrived complete
        self.aborted = []     # heads whose body never completed, with the reason
        self.errors = []      # framing errors seen on the wire from umbra
        self.dropped = []     # complete requests closed without an answer (mode once)
        self.connections = 0  # accepted connections
        self.open_connections = 0
        self.body_bytes_received = 0  # live progress of request bodies
        self.body_bytes_sent = 0      # live progress of response bodies
        self._stop = threading.Event()
        self._conns = set()
        self._threads = []
        self._seq = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        self._acceptor = threading.Thread(target=self._accept_loop, name="accept-" + name, daemon=True)
        self._acceptor.start()

    # ---- lifecycle ----

    def stop(self):
        self._stop.set()
        self.gate.set()
        self._acceptor.join(5)
        self.sock.close()
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in list(self._threads):
            t.join(5)

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.open_connections += 1
                cid = self.connections
                self._conns.add(conn)
            t = threading.Thread(target=self._serve, args=(conn, cid), name="%s-conn%d" % (self.name, cid), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn, cid):
        conn.settimeout(self.io_timeout)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = Reader(conn)
        nth = 0
        try:
            while not self._stop.is_set():
                nth += 1
                if not self._one_request(conn, cid, reader, nth):
                    break
        except (OSError, PeerClosed):
            pass
        finally:
            with self.lock:
                self._conns.discard(conn)
                self.open_connections -= 1
            try:
                conn.close()
            except OSError:
                pass

    # ---- one exchange ----

    def _one_request(self, conn, cid, reader, nth=1):
        """Reads and answers one request; False when the connection must end."""
        try:
            head = reader.read_head()
        except (ProtocolError, PeerClosed) as e:
            self._note_error(cid, "head: %s" % e)
            return False
        if head is None:
            return False
        try:
            start, fields = parse_head(head)
            method, target, version = start.split(" ")
        except (ProtocolError, ValueError) as e:
            self._note_error(cid, "head: %s" % e)
            return False
        with self.lock:
            self._seq += 1
            seq = self._seq
        rec = {
            "backend": self.name, "conn": cid, "seq": seq, "method": method,
            "target": target, "version": version, "headers": fields, "raw_head": head,
            "framing": "none", "body_len": 0, "body_sha256": None, "body_prefix": b"",
            "trailers": [],
        }
        with self.lock:
            self.heads.append(rec)
        mode_text = (header_values(fields, "x-backend-mode") or [self.mode])[0]
        mode, params = parse_mode(mode_text)

        if [v for v in header_values(fields, "expect") if v.lower() == "100-continue"]:
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if mode == "pause-body":
            self.gate.wait(self.io_timeout)
        if not self._read_body(conn, cid, reader, rec):
            return False
        if mode == "once" and nth > 1:
            with self.lock:
                self.dropped.append(rec)
            return False
        with self.lock:
            self.requests.append(rec)

        keep = not any("close" in v.lower() for v in header_values(fields, "connection"))
        if version == "HTTP/1.0":
            keep = any("keep-alive" in v.lower() for v in header_values(fields, "connection"))
        return self._respond(conn, rec, mode, params) and keep

    def _read_body(self, conn, cid, reader, rec):
        fields = rec["headers"]
        te = header_values(fields, "transfer-encoding")
        cl = header_values(fields, "content-length")
        h = hashlib.sha256()
        prefix = bytearray()

        def sink(data):
            h.update(data)
            if len(prefix) < 65536:
                prefix.extend(data[: 65536 - len(prefix)])
            rec["body_len"] += len(data)
            with self.lock:
                self.body_bytes_received += len(data)

        try:
            if te and cl:
                raise ProtocolError("both Transfer-Encoding and Content-Length")
            if te:
                if te[-1].lower().split(",")[-1].strip() != "chunked" or len(te) > 1:
                    raise ProtocolError("Transfer-Encoding %r" % te)
                rec["framing"] = "chunked"
                rec["trailers"] = reader.read_chunked(sink)
            elif cl:
                if len(cl) > 1 or not cl[0].isdigit():
                    raise ProtocolError("Content-Length %r" % cl)
                rec["framing"] = "length"
                reader.read_exact(int(cl[0]), sink)
        except ProtocolError as e:
            self._note_error(cid, "body of %s %s: %s" % (rec["method"], rec["target"], e))
            with self.lock:
                self.aborted.append(dict(rec, reason="protocol: %s" % e))
            return False
        except (PeerClosed, OSError) as e:
            with self.lock:
                self.aborted.append(dict(rec, reason="closed: %s" % e))
            return False
        rec["body_sha256"] = h.hexdigest()
        rec["body_prefix"] = bytes(prefix)
        return True

    def _note_error(self, cid, text):
        with self.lock:
            self.errors.append("conn %d: %s" % (cid, text))

    # ---- answers ----

    def describe(self, rec):
        """The JSON body that echo modes send."""
        return json.dumps({
            "backend": self.name, "conn": rec["conn"], "seq": rec["seq"],
            "method": rec["method"], "target": rec["target"], "version": rec["version"],
            "headers": rec["headers"], "framing": rec["framing"], "body_len": rec["body_len"],
            "body_sha256": rec["body_sha256"], "trailers": rec["trailers"],
        }).encode()

    def _head(self, status, fields):
        reason = {200: "OK", 204: "No Content", 304: "Not Modified", 404: "Not Found"}.get(status, "Status")
        lines = ["HTTP/1.1 %d %s" % (status, reason), "X-Backend: " + self.name]
        lines += ["%s: %s" % kv for kv in fields]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send_body(self, conn, data):
        conn.sendall(data)
        with self.lock:
            self.body_bytes_sent += len(data)

    def _respond(self, conn, rec, mode, params):
        """Sends the answer; returns False when the connection must close."""
        is_head = rec["method"] == "HEAD"
        handler = getattr(self, "_mode_" + mode.replace("-", "_"), None)
        if handler is None:
            body = ("unknown backend mode %r\n" % mode).encode()
            conn.sendall(self._head(500, [("Content-Length", str(len(body)))]) + body)
            return False
        return handler(conn, rec, params, is_head)

    def _mode_echo(self, conn, rec, params, is_head, extra=()):
        body = self.describe(rec)
        fields = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        conn.sendall(self._head(int(params.get("code", 200)), fields + list(extra)))
        if not is_head:
            self._send_body(conn, body)
        return True

    _mode_pause_body = _mode_echo

    def _mode_chunked(self, conn, rec, params, is_head):
        body = self.describe(rec)
        piece = int(params.get("piece", 7))
        conn.sendall(self._head(200, [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]))
        if is_head:
            return True
        out = bytearray()
        for i in range(0, len(body), piece):
            part = body[i:i + piece]
            out += b"%x\r\n%s\r\n" % (len(part), part)
        out += b"0\r\n\r\n"
        self._send_body(conn, bytes(out))
        return True

    def _mode_until_close(self, conn, rec, params, is_head):
        body = self.describe(rec)
        conn.sendall(self._head(200, [("Content-Type", "application/json")]))
        if not is_head:
            self._send_body(conn, body)
        return False

    def _mode_big(self, conn, rec, params, is_head):
        size = int(params.get("size", 1 << 20))
        chunked = params.get("chunked") == "1"
        until_close = params.get("until_close") == "1"
        if chunked:
            fields = [("Transfer-Encoding", "chunked")]
        elif until_close:
            fields = []
        else:
            fields = [("Content-Length", str(size))]
        conn.sendall(self._head(200, [("Content-Type", "application/octet-stream")] + fields))
        if is_head:
            return True
        for piece in pattern_chunks(size, block=256 * 1024):
            if chunked:
                self._send_body(conn, b"%x\r\n" % len(piece) + piece + b"\r\n")
            else:
                self._send_body(conn, piece)
        if chunked:
            conn.sendall(b"0\r\n\r\n")
        return not until_close

    def _mode_slow(self, conn, rec, params, is_head):
        self._stop.wait(float(params.get("delay", 2)))
        return self._mode_echo(conn, rec, params, is_head)

    def _mode_slow_body(self, conn, rec, params, is_head):
        body = self.describe(rec)
        conn.sendall(self._head(200, [("Content-Length", str(len(body)))]))
        self._stop.wait(float(params.get("delay", 2)))
        self._send_body(conn, body)
        return True

    def _mode_reset(self, conn, rec, params, is_head):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return False

    _mode_once = _mode_echo

    def _mode_close_after(self, conn, rec, params, is_head):
        self._mode_echo(conn, rec, params, is_head)
        return False

    def _mode_status(self, conn, rec, params, is_head):
        code = int(params.get("code", 204))
        if code == 204:
            conn.sendall(self._head(204, [("X-Status-Test", "1")]))
            return True
        if code == 304:
            # Content-Length on a 304 describes the selected representation;
            # no body follows it.
            conn.sendall(self._head(304, [("ETag", '"v1"'), ("Content-Length", params.get("cl", "1234"))]))
            return True
        return self._mode_echo(conn, rec, params, is_head)

    def _mode_trailers(self, conn, rec, params, is_head):
        body = self.describe(rec)
        conn.sendall(self._head(200, [("Transfer-Encoding", "chunked"), ("Trailer", "X-Checksum, X-Trailer-Two")]))
        if is_head:
            return True
        digest = hashlib.sha256(body).hexdigest()
        self._send_body(conn, b"%x\r\n%s\r\n0\r\nX-Checksum: %s\r\nX-Trailer-Two: two\r\n\r\n"
                        % (len(body), body, digest.encode()))
        return True

    def _mode_hop(self, conn, rec, params, is_head):
        extra = [("Connection", "X-Resp-Hop, keep-alive"), ("X-Resp-Hop", "secret"),
                 ("Keep-Alive", "timeout=5"), ("Proxy-Connection", "keep-alive"),
                 ("Upgrade", "h2c"), ("X-End-To-End", "kept")]
        return self._mode_echo(conn, rec, params, is_head, extra=extra)

    def _mode_raw(self, conn, rec, params, is_head):
        conn.sendall(self.raw_response)
        return False

    # ---- views for tests ----

    def names_seen(self):
        """Lowercase header names of every complete request, per request."""
        with self.lock:
            return [[n.lower() for n, _ in r["headers"]] for r in self.requests]

    def snapshot(self):
        with self.lock:
            return len(self.heads), len(self.requests), len(self.aborted), len(self.errors)


def closed_port():
    """A loopback port that refuses connections: bound, never listening, so
    nobody else takes it while the returned socket lives."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]
