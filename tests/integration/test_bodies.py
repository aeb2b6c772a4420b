"""Big and streamed bodies in both directions: content intact, backpressure
applied (a stalled reader stalls the writer instead of filling umbra's
memory), and umbra's RSS stays within a bound of its idle RSS."""

import hashlib
import os
import socket
import threading
import time

import pytest

from backends import pattern_chunks, pattern_sha256
from harness import Client, build_request, make_config, wait_until

MB = 1 << 20
BIG = 100 * MB
RSS_BOUND = 64 * MB


class RssSampler(threading.Thread):
    """Samples umbra's VmRSS every 20 ms until stopped."""

    def __init__(self, umbra):
        super().__init__(daemon=True)
        self.umbra = umbra
        self.samples = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                self.samples.append(self.umbra.rss_bytes())
            except (OSError, AssertionError):
                return
            self.done.wait(0.02)

    def stop(self):
        self.done.set()
        self.join(5)
        return max(self.samples) if self.samples else 0


class Progress:
    """Counts bytes and remembers when the count last moved."""

    def __init__(self):
        self.n = 0
        self.moved = time.monotonic()

    def add(self, n):
        self.n += n
        self.moved = time.monotonic()

    def stalled(self, seconds=0.5):
        return time.monotonic() - self.moved > seconds


def idle_rss(u, port):
    for i in range(3):  # warm the pools so the idle figure includes them
        with Client(port) as c:
            assert c.request("GET", "/warm", [("Connection", "close")]).status == 200
    return u.rss_bytes()


def stream_request(port, head, size, progress, result, chunked=False):
    """Sends head then `size` pattern bytes (chunk-encoded if asked) from a
    generator; stores the parsed response in result['resp']."""
    try:
        with Client(port, timeout=30) as c:
            c.send(head)
            for piece in pattern_chunks(size):
                if chunked:
                    c.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
                else:
                    c.send(piece)
                progress.add(len(piece))
            if chunked:
                c.send(b"0\r\n\r\n")
            result["resp"] = c.read("POST")
    except Exception as e:  # reported by the test thread
        result["error"] = e


@pytest.mark.timeout(120)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_100mb_request_body_streams_with_bounded_memory(procs, framing):
    b = procs.backend()
    u = procs.umbra(make_config({"primary": [b]}))
    base = idle_rss(u, u.port)
    b.gate.clear()  # the backend will not read the body until we say so
    if framing == "chunked":
        head = build_request("POST", "/upload", [("Transfer-Encoding", "chunked"), ("X-Backend-Mode", "pause-body")])
    else:
        head = build_request("POST", "/upload", [("Content-Length", str(BIG)), ("X-Backend-Mode", "pause-body")])
    progress, result = Progress(), {}
    sampler = RssSampler(u)
    sampler.start()
    sender = threading.Thread(target=stream_request, args=(u.port, head, BIG, progress, result, framing == "chunked"))
    sender.start()
    try:
        wait_until(lambda: b.heads and progress.stalled(0.7) or progress.n >= BIG, 30,
                   what="the client's upload to stall while the backend does not read")
        sent_while_paused = progress.n
        assert sent_while_paused < BIG, "umbra accepted all 100 MB while the backend read nothing"
    finally:
        b.gate.set()
        sender.join(90)
    peak = sampler.stop()
    print("idle RSS %.1f MB, peak %.1f MB, %.1f MB sent while the backend paused"
          % (base / MB, peak / MB, sent_while_paused / MB))
    assert "error" not in result, result.get("error")
    r = result["resp"]
    assert r.status == 200, r
    v = r.json()
    assert v["body_len"] == BIG and v["body_sha256"] == pattern_sha256(BIG)
    assert peak - base < RSS_BOUND, "RSS grew by %.1f MB (idle %.1f MB, peak %.1f MB)" % (
        (peak - base) / MB, base / MB, peak / MB)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_100mb_response_body_streams_with_bounded_memory(procs, framing):
    b = procs.backend()
    u = procs.umbra(make_config({"primary": [b]}))
    base = idle_rss(u, u.port)
    sampler = RssSampler(u)
    sampler.start()
    mode = "big; size=%d%s" % (BIG, "; chunked=1" if framing == "chunked" else "")
    with Client(u.port, timeout=30) as c:
        c.send(build_request("GET", "/download", [("X-Backend-Mode", mode)]))
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        # read the head and 10 MB, then stop reading for a while
        head = c.reader.read_head()
        assert head.startswith(b"HTTP/1.1 200"), head
        got = bytearray()
        while len(got) < 10 * MB:
            assert c.reader._fill(), "connection closed after %d body bytes" % len(got)
            got += c.reader.buf
            c.reader.buf.clear()
        sent = Progress()
        last = [b.body_bytes_sent]

        def backend_stalled():
            if b.body_bytes_sent != last[0]:
                last[0] = b.body_bytes_sent
                sent.add(0)
            return sent.stalled(0.7) or b.body_bytes_sent >= BIG

        wait_until(backend_stalled, 30, 0.05, "the backend's writes to stall while the client does not read")
        backend_sent_while_paused = b.body_bytes_sent
        assert backend_sent_while_paused < BIG, "umbra took all 100 MB from the backend while the client read 10 MB"
        # resume: parse the rest of the response from what we already hold
        c.reader.buf[:0] = head + bytes(got)
        r = c.read(keep_body=False)
    peak = sampler.stop()
    print("idle RSS %.1f MB, peak %.1f MB, backend wrote %.1f MB while the client paused at 10 MB"
          % (base / MB, peak / MB, backend_sent_while_paused / MB))
    assert r.status == 200
    assert r.body_len == BIG and r.body_sha256 == pattern_sha256(BIG)
    assert peak - base < RSS_BOUND, "RSS grew by %.1f MB (idle %.1f MB, peak %.1f MB)" % (
        (peak - base) / MB, base / MB, peak / MB)


@pytest.mark.timeout(60)
def test_until_close_big_response_rechunked(procs):
    b = procs.backend()
    u = procs.umbra(make_config({"primary": [b]}))
    size = 20 * MB
    with Client(u.port, timeout=30) as c:
        r = c.request("GET", "/uc", [("X-Backend-Mode", "big; size=%d; until_close=1" % size)])
        assert r.status == 200 and r.framing == "chunked"
        assert r.body_len == size and r.body_sha256 == pattern_sha256(size)
        assert c.request("GET", "/after").status == 200


@pytest.mark.timeout(60)
def test_many_small_chunks_both_ways(procs):
    b = procs.backend()
    u = procs.umbra(make_config({"primary": [b]}))
    body = os.urandom(1 * MB)
    sizes = (1, 2, 3, 1000, 7, 65536, 13)
    out = bytearray()
    i = k = 0
    while i < len(body):
        n = sizes[k % len(sizes)]
        out += b"%x\r\n" % len(body[i:i + n]) + body[i:i + n] + b"\r\n"
        i, k = i + n, k + 1
    out += b"0\r\n\r\n"
    with Client(u.port, timeout=30) as c:
        c.send(build_request("POST", "/small-chunks", [("Transfer-Encoding", "chunked"),
                                                       ("X-Backend-Mode", "chunked; piece=1")]))
        for j in range(0, len(out), 4096):  # many small writes, so umbra sees partial chunk lines
            c.send(bytes(out[j:j + 4096]))
        r = c.read()
    assert r.status == 200 and r.framing == "chunked"
    v = r.json()
    assert v["body_len"] == len(body) and v["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.timeout(60)
def test_client_abort_mid_response_frees_upstream(procs):
    b = procs.backend()
    u = procs.umbra(make_config({"primary": [b]}, workers=1))
    c = Client(u.port, timeout=10)
    c.send(build_request("GET", "/abandon", [("X-Backend-Mode", "big; size=%d" % BIG)]))
    assert c.reader.read_head().startswith(b"HTTP/1.1 200")
    while c.reader.received < MB:
        assert c.reader._fill()
    c.close()
    # the half-sent response cannot be reused: umbra must drop the upstream
    # connection instead of leaving the backend blocked on a full socket
    wait_until(lambda: b.open_connections == 0, 10, 0.05, "umbra to close the upstream connection")
    assert b.body_bytes_sent < BIG
    with Client(u.port) as c2:
        assert c2.request("GET", "/next").status == 200


@pytest.mark.timeout(60)
def test_client_abort_mid_upload_aborts_upstream(procs):
    b = procs.backend()
    u = procs.umbra(make_config({"primary": [b]}, workers=1))
    c = Client(u.port, timeout=10)
    c.send(build_request("POST", "/half-upload", [("Content-Length", str(10 * MB))]))
    c.send(b"u" * MB)
    wait_until(lambda: b.heads, 5, what="the upload to reach the backend")
    c.close()
    wait_until(lambda: b.aborted, 10, 0.05, "the backend to see the upload end early")
    assert b.requests == [], "the backend got a complete request from a truncated upload"
    with Client(u.port) as c2:
        assert c2.request("GET", "/next").status == 200
