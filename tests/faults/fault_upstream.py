#!/usr/bin/env python3
"""A misbehaving HTTP/1.1 upstream for umbra's hardening tests (stdlib only).

One asyncio loop serves every connection in one of these modes:

  echo                  healthy: a JSON description of each request, keep-alive
  refuse                the port is held (bound, not listening): connects are refused
  reset-before-response reads the request, then resets the connection (RST)
  reset-after-headers   sends a response head (Content-Length: 1000), then RST
  reset-mid-body        sends the head and half the body, then RST
  black-hole            accepts, never reads, never answers
  slow                  answers rate= bytes per second (default 1), head included
  tiny-window           SO_RCVBUF minimal on the listener, never reads
  malformed-cl-te       response with Content-Length and Transfer-Encoding
  malformed-chunk       chunked response with a bad chunk size
  malformed-dup-cl      response with two different Content-Length fields
  malformed-status      response with an invalid status line
  1xx-storm             count= (default 300) 100/103 responses, then an echo

The mode can change at run time: FaultUpstream.set_mode() in-process, or
--control FILE from the command line (the file holds a mode name or a JSON
object {"mode": ..., params...}; it is polled every 50 ms). A request may pick
its own mode with an `X-Fault-Mode: NAME; k=v` header (black-hole and
tiny-window then stop reading after that request). Entering `refuse` resets every open connection, as a crash would.

Used as a module (FaultUpstream runs its loop in a thread) and as a CLI:

  python3 tests/faults/fault_upstream.py --listen 127.0.0.1:0 --mode slow \
          [--param rate=2] [--control FILE] [--status FILE]

prints "listening PORT" once ready, then serves until SIGTERM/SIGINT. --status
FILE is rewritten (JSON counters) at most every 100 ms, and at least every
second while the loop runs, so a stale file means a stalled server. Besides
the counters it holds loop_lag_max_s (the longest the loop was late for a
100 ms tick) and gc_pause_max_s / gc_full (the longest garbage collection
pause, how many full collections). SIGUSR1 dumps every thread's Python stack to
stderr. The CLI keeps counters only, not the request records (nobody outside
the process could read them, and millions of them made full garbage
collections stall the loop for seconds in long soaks).

Not a general server: it parses just enough HTTP/1.1 to find where a request
ends, bounds every head, and trusts nothing it reads.
"""

import argparse
import asyncio
import faulthandler
import gc
import json
import os
import signal
import socket
import struct
import sys
import threading
import time

MODES = ("echo", "refuse", "reset-before-response", "reset-after-headers", "reset-mid-body",
         "black-hole", "slow", "tiny-window", "malformed-cl-te", "malformed-chunk",
         "malformed-dup-cl", "malformed-status", "1xx-storm")
NEVER_READ = ("black-hole", "tiny-window")
TCP_CLOSE, TCP_CLOSE_WAIT = 7, 8  # tcpi_state values (linux/tcp_states.h)
MAX_HEAD = 64 * 1024
TICK_S = 0.1          # loop-lag heartbeat
STATUS_EVERY_S = 1.0  # the status file is rewritten at least this often

MALFORMED = {
    "malformed-cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "malformed-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "malformed-dup-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "malformed-status": b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok",
}


def parse_mode(text):
    """'slow; rate=2' -> ('slow', {'rate': '2'})."""
    parts = [p.strip() for p in text.split(";")]
    params = {}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        if k.strip():
            params[k.strip()] = v.strip()
    return parts[0], params


def _reuseport_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return s


def _rst(transport):
    """Closes with a reset (SO_LINGER 0) instead of a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


class _Request:
    __slots__ = ("conn", "seq", "method", "target", "version", "headers", "body_len", "mode", "t")

    def as_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}


class _Conn(asyncio.Protocol):
    """One accepted connection: parses requests and answers per mode."""

    def __init__(self, srv, cid, mode, params):
        self.srv = srv
        self.cid = cid
        self.mode, self.params = mode, params
        self.transport = None
        self.buf = bytearray()
        self.state = "head"   # head | body | chunked | dead
        self.need = 0
        self.chunk_state = None
        self.req = None
        self.busy = False     # an answer is being written slowly
        self.keep = True

    # ---- asyncio.Protocol ----

    def connection_made(self, transport):
        self.transport = transport
        self.srv.conns.add(self)

    def connection_lost(self, exc):
        self.state = "dead"
        self.srv.conns.discard(self)
        self.srv.count("closed")

    def data_received(self, data):
        self.srv.count("bytes_in", len(data))
        self.buf += data
        if not self.busy:
            self.parse()

    # ---- parsing ----

    def parse(self):
        while self.state != "dead" and not self.busy:
            if self.state == "head":
                i = self.buf.find(b"\r\n\r\n")
                if i < 0:
                    if len(self.buf) > MAX_HEAD:
                        self.kill()
                    return
                head = bytes(self.buf[:i])
                del self.buf[:i + 4]
                if not self.start_request(head):
                    return
            elif self.state == "body":
                n = min(self.need, len(self.buf))
                del self.buf[:n]
                self.need -= n
                self.req.body_len += n
                if self.need:
                    return
                self.request_done()
            elif self.state == "chunked":
                if not self.chunked_step():
                    return
            else:
                return

    def start_request(self, head):
        lines = head.split(b"\r\n")
        parts = lines[0].decode("latin-1").split(" ")
        if len(parts) != 3:
            self.kill()
            return False
        r = _Request()
        r.conn, r.method, r.target, r.version = self.cid, parts[0], parts[1], parts[2]
        r.headers, r.body_len, r.t = [], 0, time.monotonic()
        te = cl = None
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                self.kill()
                return False
            n, v = name.decode("latin-1"), value.strip(b" \t").decode("latin-1")
            r.headers.append((n, v))
            ln = n.lower()
            if ln == "content-length":
                cl = int(v) if v.isdigit() else 0
            elif ln == "transfer-encoding":
                te = v.lower()
            elif ln == "connection" and "close" in v.lower():
                self.keep = False
            elif ln == "x-fault-mode":
                self.mode, self.params = parse_mode(v)
        if r.version == "HTTP/1.0":
            self.keep = any(n.lower() == "connection" and "keep-alive" in v.lower() for n, v in r.headers)
        r.seq = self.srv.next_seq()
        r.mode = self.mode
        self.req = r
        self.srv.record_head(r)
        if te is not None:
            self.state, self.chunk_state, self.need = "chunked", "size", 0
        elif cl:
            self.state, self.need = "body", cl
        else:
            self.request_done()
        return True

    def chunked_step(self):
        if self.chunk_state == "data":
            n = min(self.need, len(self.buf))
            del self.buf[:n]
            self.need -= n
            self.req.body_len += n
            if self.need:
                return False
            self.chunk_state = "crlf"
            return True
        i = self.buf.find(b"\r\n")
        if i < 0:
            return False
        line = bytes(self.buf[:i])
        del self.buf[:i + 2]
        if self.chunk_state == "crlf":
            self.chunk_state = "size"
        elif self.chunk_state == "size":
            try:
                size = int(line.split(b";")[0].strip() or b"0", 16)
            except ValueError:
                self.kill()
                return False
            self.chunk_state, self.need = ("trailers", 0) if size == 0 else ("data", size)
        elif not line:
            self.request_done()
        return True

    # ---- answers ----

    def request_done(self):
        self.state = "head"
        self.srv.record_request(self.req)
        mode, params = self.mode, self.params
        handler = getattr(self, "_answer_" + mode.replace("-", "_"), None)
        if handler is None:
            handler = self._answer_echo
        handler(params)

    def describe(self):
        r = self.req
        return json.dumps({"conn": r.conn, "seq": r.seq, "method": r.method, "target": r.target,
                           "body_len": r.body_len, "mode": r.mode}).encode()

    def echo_bytes(self):
        body = self.describe()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        if not self.keep:
            head += b"Connection: close\r\n"
        return head + b"\r\n" + body

    def write(self, data):
        if self.state != "dead":
            self.transport.write(data)
            self.srv.count("bytes_out", len(data))

    def finish(self):
        """After a complete answer: close if the request asked for it."""
        if not self.keep and self.state != "dead":
            self.transport.close()
            self.state = "dead"

    def kill(self):
        if self.state != "dead":
            self.state = "dead"
            _rst(self.transport)

    def _answer_echo(self, params):
        self.write(self.echo_bytes())
        self.finish()

    def _answer_black_hole(self, params):
        """Chosen by X-Fault-Mode on a connection already read from: stop
        reading and never answer."""
        self.busy = True
        self.transport.pause_reading()

    _answer_tiny_window = _answer_black_hole

    def _answer_reset_before_response(self, params):
        self.kill()

    def _answer_reset_after_headers(self, params):
        self.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        self.srv.loop.call_later(float(params.get("after", 0.05)), self.kill)
        self.busy = True

    def _answer_reset_mid_body(self, params):
        self.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"m" * 500)
        self.srv.loop.call_later(float(params.get("after", 0.05)), self.kill)
        self.busy = True

    def _answer_malformed(self, params, which):
        self.write(MALFORMED[which])
        self.finish()  # and keep reading: a proxy that reuses this connection is caught

    def _answer_malformed_cl_te(self, params):
        self._answer_malformed(params, "malformed-cl-te")

    def _answer_malformed_chunk(self, params):
        self._answer_malformed(params, "malformed-chunk")

    def _answer_malformed_dup_cl(self, params):
        self._answer_malformed(params, "malformed-dup-cl")

    def _answer_malformed_status(self, params):
        self._answer_malformed(params, "malformed-status")

    def _answer_1xx_storm(self, params):
        n = int(params.get("count", 300))
        storm = bytearray()
        for i in range(n):
            storm += (b"HTTP/1.1 100 Continue\r\n\r\n" if i % 2 == 0 else
                      b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        self.write(bytes(storm) + self.echo_bytes())
        self.finish()

    def _answer_slow(self, params):
        data = self.echo_bytes()
        interval = 1.0 / float(params.get("rate", 1))
        self.busy = True

        def drip(i):
            if self.state == "dead":
                return
            self.write(data[i:i + 1])
            if i + 1 < len(data):
                self.srv.loop.call_later(interval, drip, i + 1)
                return
            self.busy = False
            self.finish()
            self.parse()

        drip(0)

    _answer_refuse = _answer_echo  # a connection accepted just before the switch


class FaultUpstream:
    """The server; start() runs its loop in a daemon thread, run() in this one.

    record=False keeps the counters but not `heads` and `requests` (for long
    runs: the lists grow by two dicts per request)."""

    def __init__(self, mode="echo", listen="127.0.0.1:0", control=None, status=None, record=True,
                 **params):
        mode, extra = parse_mode(mode)
        if mode not in MODES:
            raise ValueError("unknown mode %r (one of %s)" % (mode, ", ".join(MODES)))
        self.mode = mode
        self.params = dict(extra, **{k: str(v) for k, v in params.items()})
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]") or "127.0.0.1"
        self.control_path = control
        self.status_path = status
        self.record = record
        self._control_mtime = None
        self.loop = None
        self.lock = threading.Lock()
        self.heads = []        # every request head parsed, as dicts, in arrival order
        self.requests = []     # requests whose body completed
        self.counters = {"accepted": 0, "closed": 0, "bytes_in": 0, "bytes_out": 0, "heads": 0,
                         "requests": 0, "mode_changes": 0}
        self.lag = {"loop_lag_max_s": 0.0, "gc_pause_max_s": 0.0, "gc_full": 0}
        self._gc_t0 = None
        self._status_written = 0.0
        self.conns = set()
        self.held = set()      # sockets of never-reading modes
        self._seq = 0
        self._cid = 0
        self._server = None
        self._thread = None
        self._ready = threading.Event()
        self._stopped = None
        self._dirty = True
        # The port is held by a bound, never-listening socket for the whole
        # life of the server, so `refuse` refuses and nobody else takes it.
        self.hold = _reuseport_socket()
        self.hold.bind((self.host, int(port or 0)))
        self.port = self.hold.getsockname()[1]
        self.addr = "%s:%d" % (self.host, self.port)

    # ---- counters and records (any thread) ----

    def count(self, key, n=1):
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + n
        self._dirty = True

    def next_seq(self):
        with self.lock:
            self._seq += 1
            return self._seq

    def record_head(self, r):
        with self.lock:
            if self.record:
                self.heads.append(r.as_dict())
            self.counters["heads"] += 1
        self._dirty = True

    def record_request(self, r):
        with self.lock:
            if self.record:
                self.requests.append(r.as_dict())
            self.counters["requests"] += 1
        self._dirty = True

    def stats(self):
        with self.lock:
            out = dict(self.counters)
            out.update(self.lag)
        out["open"] = len(self.conns) + len(self.held)
        out["mode"] = self.mode
        return out

    def targets(self):
        with self.lock:
            return [h["target"] for h in self.heads]

    # ---- modes ----

    def set_mode(self, mode, **params):
        """Switches the mode for new connections and requests (any thread)."""
        mode, extra = parse_mode(mode)
        if mode not in MODES:
            raise ValueError("unknown mode %r" % mode)
        params = dict(extra, **{k: str(v) for k, v in params.items()})
        if self.loop is None:
            self.mode, self.params = mode, params
            return
        done = threading.Event()

        def apply():
            self._apply_mode(mode, params)
            done.set()

        if threading.current_thread() is self._thread:
            apply()
        else:
            self.loop.call_soon_threadsafe(apply)
            done.wait(5)

    def _apply_mode(self, mode, params):
        old = self.mode
        self.mode, self.params = mode, params
        self.count("mode_changes")
        if (old == "tiny-window") != (mode == "tiny-window") or mode == "refuse" or old == "refuse":
            self._close_listener()
            if mode == "refuse":
                for c in list(self.conns):
                    c.kill()
                self._drop_held()
            else:
                self._open_listener()
        for c in list(self.conns):
            if c.mode not in NEVER_READ and not c.busy:
                c.mode, c.params = mode, params

    def _open_listener(self):
        s = _reuseport_socket()
        if self.mode == "tiny-window":
            # before listen, so accepted sockets inherit it and advertise a small window
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        s.bind((self.host, self.port))
        s.listen(1024)
        s.setblocking(False)
        self._lsock = s
        self.loop.add_reader(s.fileno(), self._accept)

    def _close_listener(self):
        s = getattr(self, "_lsock", None)
        if s is not None:
            self.loop.remove_reader(s.fileno())
            s.close()
            self._lsock = None

    def _accept(self):
        for _ in range(64):
            try:
                sock, _ = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._cid += 1
            self.count("accepted")
            if self.mode in NEVER_READ:
                # held raw, outside asyncio: its transports start reading on
                # their own, and these modes must never read a byte
                self.held.add(sock)
                continue
            proto = _Conn(self, self._cid, self.mode, dict(self.params))
            self.loop.create_task(self.loop.connect_accepted_socket(lambda p=proto: p, sock))

    def _sweep_held(self):
        """Closes held sockets whose peer has gone (CLOSE_WAIT), so a long
        black-hole phase does not pile up descriptors here."""
        for s in list(self.held):
            try:
                state = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
            except OSError:
                state = TCP_CLOSE
            if state in (TCP_CLOSE, TCP_CLOSE_WAIT):
                self.held.discard(s)
                s.close()
                self.count("closed")
        self.loop.call_later(0.2, self._sweep_held)

    def _drop_held(self):
        for s in list(self.held):
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            s.close()
        self.held.clear()

    # ---- control file and status file ----

    def _poll_files(self):
        if self.control_path:
            try:
                st = os.stat(self.control_path)
                key = (st.st_mtime_ns, st.st_size)
                if key != self._control_mtime:
                    self._control_mtime = key
                    with open(self.control_path) as f:
                        text = f.read().strip()
                    if text:
                        if text.startswith("{"):
                            spec = json.loads(text)
                            mode = spec.pop("mode")
                            self._apply_mode(mode, {k: str(v) for k, v in spec.items()})
                        else:
                            self._apply_mode(*parse_mode(text))
            except FileNotFoundError:
                pass
            except (ValueError, KeyError) as e:
                sys.stderr.write("fault_upstream: bad control file: %s\n" % e)
        now = time.monotonic()
        if self.status_path and (self._dirty or now - self._status_written >= STATUS_EVERY_S):
            self._dirty = False
            self._status_written = now
            tmp = self.status_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.stats(), f)
            os.replace(tmp, self.status_path)
        self.loop.call_later(0.05 if self.control_path else 0.1, self._poll_files)

    # ---- how late the loop runs ----

    def _tick(self, due):
        late = time.monotonic() - due
        if late > self.lag["loop_lag_max_s"]:
            self.lag["loop_lag_max_s"] = round(late, 3)
            self._dirty = True
        self.loop.call_later(TICK_S, self._tick, time.monotonic() + TICK_S)

    def _gc_cb(self, phase, info):
        """gc.callbacks hook: times full collections (the ones that stall).
        Takes no lock: a collection may start while this thread holds one."""
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_t0 = time.monotonic()
        elif self._gc_t0 is not None:
            pause = time.monotonic() - self._gc_t0
            self._gc_t0 = None
            self.lag["gc_full"] += 1
            if pause > self.lag["gc_pause_max_s"]:
                self.lag["gc_pause_max_s"] = round(pause, 3)
            self._dirty = True

    # ---- lifecycle ----

    async def _main(self):
        self.loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._lsock = None
        if self.mode != "refuse":
            self._open_listener()
        self._poll_files()
        self._sweep_held()
        self.loop.call_later(TICK_S, self._tick, time.monotonic() + TICK_S)
        self._ready.set()
        await self._stopped.wait()
        self._close_listener()
        self._drop_held()
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.abort()
        await asyncio.sleep(0)

    def run(self):
        """Serves in the calling thread until stop()."""
        self._thread = threading.current_thread()
        gc.callbacks.append(self._gc_cb)
        try:
            asyncio.run(self._main())
        finally:
            gc.callbacks.remove(self._gc_cb)
        self.hold.close()

    def start(self):
        self._thread = threading.Thread(target=self.run, name="fault-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault upstream did not start")
        return self

    def stop(self):
        if self.loop is not None and self._stopped is not None:
            self.loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv=None):
    ap = argparse.ArgumentParser(description="A misbehaving HTTP/1.1 upstream (see the module comment).")
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--mode", default="echo", help="one of: " + ", ".join(MODES))
    ap.add_argument("--param", action="append", default=[], help="k=v for the mode (rate, count, after)")
    ap.add_argument("--control", help="file holding the mode to switch to (polled)")
    ap.add_argument("--status", help="file to write JSON counters to")
    args = ap.parse_args(argv)
    params = dict(p.split("=", 1) for p in args.param)
    srv = FaultUpstream(args.mode, args.listen, control=args.control, status=args.status, record=False,
                        **params)
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    def stop(signum, frame):
        srv.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=lambda: (srv._ready.wait(), print("listening %d" % srv.port, flush=True)),
                     daemon=True).start()
    srv.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
