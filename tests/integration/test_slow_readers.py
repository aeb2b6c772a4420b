"""A client that stops reading its response (slowhttptest -X, slow read) may
pin only a bounded amount of response with umbra, and costs it no write
attempts while its socket is full; nor does an upstream that stops reading
a request body. Bounded: connection_buffer in umbra's queue and about as
much unsent in the kernel; without a bound on the kernel's side Linux
autotunes the client socket's send buffer up to tcp_wmem's maximum (4 MiB)
and umbra copies MiBs of every slow reader's response into kernel memory.
No work: once a write met EAGAIN, umbra waits for writability instead of
trying again for every chunk the upstream delivers."""

import json
import os
import select
import shutil
import socket
import time

import pytest

from harness import build_request, make_config, strace, wait_until
from shadows import peers  # noqa: F401  (fixture)

KIB = 1 << 10
MB = 1 << 20


def bytes_sent(u):
    status, body = u.admin("GET", "/stats")
    assert status == 200
    return json.loads(body)["downstream"]["bytes_sent"]


def settled(u, quiet_s=0.5):
    """bytes_sent once it has not moved for quiet_s (umbra stopped writing)."""
    last = {"n": -1, "since": time.monotonic()}

    def still():
        n = bytes_sent(u)
        now = time.monotonic()
        if n != last["n"]:
            last["n"], last["since"] = n, now
            return None
        return n if now - last["since"] >= quiet_s else None

    return wait_until(still, timeout=10, interval=0.05, what="umbra to stop writing to the slow reader")


def slow_reader(port, target, headers):
    """A client with a tiny receive buffer that sends one request and never reads."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(build_request("GET", target, headers))
    return s


@pytest.mark.parametrize("buffer_kib", [16, 64])
def test_the_kernel_holds_a_quarter_buffer_of_a_slow_readers_response(procs, buffer_kib):
    b = procs.backend("b1")
    u = procs.umbra(make_config({"primary": [b]}, workers=1,
                                limits={"connection_buffer": "%dKiB" % buffer_kib, "send_timeout": "30s"}))
    before = bytes_sent(u)
    s = slow_reader(u.port, "/big", [("X-Backend-Mode", "big; size=%d" % (16 * MB))])
    try:
        wait_until(lambda: bytes_sent(u) > before, what="the response to start")
        sent = settled(u) - before
        # What the client's 4 KiB receive buffer took, plus what the kernel
        # queues unsent for it: a quarter of connection_buffer
        # (TCP_NOTSENT_LOWAT) and a little overshoot (measured: quarter + 6 KiB;
        # a whole buffer gave 70 KiB for 64). Unbounded, Linux takes MiBs here.
        bound = buffer_kib * KIB // 4 + 16 * KIB
        assert sent <= bound, "umbra handed %d bytes to the kernel for a client that reads nothing (bound %d)" % (
            sent, bound)
        assert u.alive()
    finally:
        s.close()


def test_fast_reader_after_slow_reader_still_gets_everything(procs):
    """The bound is on unsent bytes only: a reader that keeps up gets a large
    response whole, on the same umbra that holds a slow reader."""
    b = procs.backend("b1")
    u = procs.umbra(make_config({"primary": [b]}, workers=1, limits={"connection_buffer": "16KiB"}))
    s = slow_reader(u.port, "/big", [("X-Backend-Mode", "big; size=%d" % (16 * MB))])
    try:
        wait_until(lambda: bytes_sent(u) > 0, what="the slow reader's response to start")
        size = 8 * MB
        with socket.create_connection(("127.0.0.1", u.port), timeout=10) as c:
            c.sendall(build_request("GET", "/big", [("X-Backend-Mode", "big; size=%d" % size),
                                                    ("Connection", "close")]))
            data = bytearray()
            while True:
                piece = c.recv(256 * KIB)
                if not piece:
                    break
                data += piece
        head, sep, body = bytes(data).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and sep
        assert len(body) == size, "a fast reader got %d bytes of an %d-byte body" % (len(body), size)
    finally:
        s.close()


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")
def test_a_full_client_socket_is_not_written_again_until_writable(procs, tmp_path):
    b = procs.backend("b1")
    # A large buffer: after the client's socket is full umbra goes on reading
    # the upstream until a quarter of it, 64 KiB, is queued: 4 reads of a
    # 16 KiB chunk, none of which may be written at once.
    u = procs.umbra(make_config({"primary": [b]}, workers=1,
                                limits={"connection_buffer": "256KiB", "send_timeout": "30s"}))
    log = tmp_path / "writev.strace"
    s = None
    try:
        with strace(u.pid, log, "writev", failed_only=True):
            s = slow_reader(u.port, "/big", [("X-Backend-Mode", "big; size=%d" % (16 * MB))])
            wait_until(lambda: bytes_sent(u) > 0, what="the response to start")
            settled(u)
    finally:
        if s:
            s.close()
    assert_no_blind_writes(log)


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")
def test_a_slow_reader_gets_a_quarter_buffer_read_ahead(procs, tmp_path):
    """connection_buffer is what umbra reads ahead for a client that keeps
    up. For one whose socket is full it reads ahead a quarter of that: each
    slow reader would otherwise cost a whole buffer read from the upstream,
    copied and held, for bytes it may never take."""
    b = procs.backend("b1")
    buffer = 256 * KIB
    u = procs.umbra(make_config({"primary": [b]}, workers=1,
                                limits={"connection_buffer": "256KiB", "send_timeout": "30s"}))
    log = tmp_path / "read.strace"
    s = None
    before = bytes_sent(u)
    try:
        with strace(u.pid, log, "read"):
            s = slow_reader(u.port, "/big", [("X-Backend-Mode", "big; size=%d" % (16 * MB))])
            wait_until(lambda: bytes_sent(u) > before, what="the response to start")
            sent = settled(u) - before
    finally:
        if s:
            s.close()
    # the upstream's response arrives in reads of a chunk or more; requests
    # (the client's, the admin API's) are far smaller
    read = sum(n for n in returned_bytes(log) if n >= 2048)
    held = read - sent
    # a quarter of the buffer, plus the read that crossed it (at most 80 KiB)
    bound = buffer // 4 + 80 * KIB
    assert held <= bound, "umbra read %d bytes ahead of a client that reads nothing (bound %d)" % (held, bound)
    assert read > sent > 0, (read, sent)


def assert_no_blind_writes(log):
    failed = [line for line in log.read_text().splitlines() if "EAGAIN" in line]
    # One EAGAIN when the socket fills; any more is a write umbra knew would fail.
    assert len(failed) <= 2, "%d writev calls met EAGAIN on a socket not yet writable again:\n%s" % (
        len(failed), "\n".join(failed[:5]))


def returned_bytes(log):
    """The byte counts of the successful calls in an strace log."""
    out = []
    for line in log.read_text().splitlines():
        rc = line.rsplit("=", 1)[1].strip() if " = " in line else ""
        if rc.isdigit():
            out.append(int(rc))
    return out


def stalled_upload(u, log, size, failed_only=False):
    """POSTs `size` bytes through umbra to a stalled upstream, with umbra's
    writev calls in strace's `log`; returns what the client got to send."""
    s = None
    try:
        with strace(u.pid, log, "writev", failed_only=failed_only):
            s = socket.create_connection(("127.0.0.1", u.port), timeout=10)
            body = os.urandom(size)
            s.sendall(build_request("POST", "/upload", [("Content-Length", str(len(body)))]))
            return send_until_stalled(s, body)
    finally:
        if s:
            s.close()


def send_until_stalled(sock, data, quiet_s=0.5, limit_s=10):
    """Sends what the peer takes; returns the byte count once nothing more
    went out for quiet_s (the peer stopped reading)."""
    sock.setblocking(False)
    sent, last = 0, time.monotonic()
    deadline = last + limit_s
    while sent < len(data) and time.monotonic() < deadline:
        _, writable, _ = select.select([], [sock], [], 0.05)
        if writable:
            try:
                n = sock.send(data[sent:sent + 65536])
            except BlockingIOError:
                n = 0
            if n:
                sent += n
                last = time.monotonic()
                continue
        if time.monotonic() - last >= quiet_s:
            break
    return sent


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")
def test_a_full_upstream_socket_is_not_written_again_until_writable(procs, peers, tmp_path):
    # An upstream that takes the request head and then (almost) no more: its
    # receive window closes and umbra's socket to it fills. umbra goes on
    # reading the client's body until 256 KiB are queued, 16 chunks.
    stuck = peers.fault("tinywindow", rcvbuf=1024, interval=60)
    u = procs.umbra(make_config({"primary": [stuck.addr]}, workers=1,
                                limits={"connection_buffer": "256KiB", "body_timeout": "30s"}))
    log = tmp_path / "writev.strace"
    size = 8 * MB
    sent = stalled_upload(u, log, size, failed_only=True)
    assert 256 * KIB <= sent < size, "the client sent %d bytes before umbra stopped reading" % sent
    assert_no_blind_writes(log)


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")
def test_a_stalled_upstream_gets_a_bounded_share_of_the_body_in_the_kernel(procs, peers, tmp_path):
    """An upstream that stops reading a request body must not make umbra
    drain the client into kernel memory: Linux autotunes the upstream socket's
    send buffer to MiBs on loopback. Unsent bytes in the kernel are bounded
    (TCP_NOTSENT_LOWAT), the rest waits in umbra's connection_buffer, which
    stops reading the client."""
    stuck = peers.fault("tinywindow", rcvbuf=1024, interval=60)
    u = procs.umbra(make_config({"primary": [stuck.addr]}, workers=1,
                                limits={"connection_buffer": "64KiB", "body_timeout": "30s"}))
    log = tmp_path / "writev.strace"
    stalled_upload(u, log, 16 * MB)
    handed = sum(returned_bytes(log))
    # the request head, what the 1 KiB window took, and at most 128 KiB unsent
    # plus one write's overshoot
    bound = 256 * KIB
    assert 0 < handed <= bound, "umbra handed %d bytes of the body to a stalled upstream's socket (bound %d)" % (
        handed, bound)
