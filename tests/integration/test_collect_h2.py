"""`umbra collect` over HTTP/2 with prior knowledge (h2c, no Upgrade), on the
same port as HTTP/1.1: records from curl and nghttp (method, target, version
"HTTP/2.0", headers in order with :authority as host, body length and
SHA-256), --status, --delay held per stream so that one connection carries
many delayed requests at once, 413 on a stream, and a connection that sends
garbage after the preface not hurting the next one. Real clients where they
exist (curl --http2-prior-knowledge, nghttp, h2load); a few raw frames where
a test needs bytes no client sends."""

import base64
import hashlib
import os
import re
import shutil
import socket
import struct
import subprocess
import time

import pytest

from harness import Client, wait_until
from shadows import peers  # noqa: F401

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("curl", "nghttp", "h2load")),
                                reason="needs curl, nghttp and h2load (nghttp2-client)")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def curl_h2(port, target, *args, timeout=30):
    """Runs curl with prior-knowledge HTTP/2; returns (status, http_version, body)."""
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_code} %{http_version}",
                          *args, "http://127.0.0.1:%d%s" % (port, target)],
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    body, _, tail = out.stdout.rpartition(b"\n")
    status, version = tail.decode().split()
    return int(status), version, body


def by_target(col, n):
    return {r["target"]: r for r in col.wait_count(n)}


# ---------------------------------------------------------------- raw frames

def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def field(name, value):
    """An HPACK literal without indexing, new name, no Huffman (short strings)."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


HEADERS, DATA, RST_STREAM, GOAWAY = 1, 0, 3, 7
END_STREAM, END_HEADERS = 0x1, 0x4


def read_frames(sock, until, timeout=10.0):
    """Reads frames (type, flags, stream, payload) until until(frames) or EOF."""
    sock.settimeout(timeout)
    buf, frames = b"", []
    while not until(frames):
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            frames.append((buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9:9 + length]))
            buf = buf[9 + length:]
    return frames


def stream_ended(stream):
    """Until the answer on `stream` is complete (or the stream was reset)."""
    return lambda frames: any(s == stream and (t == RST_STREAM or f & END_STREAM and t in (HEADERS, DATA))
                              for t, f, s, _ in frames)


def answered(frames, stream):
    assert not any(t == RST_STREAM and s == stream for t, _, s, _ in frames), frames
    return frames


# ---------------------------------------------------------------- tests

def test_get_and_post_recorded(peers, tmp_path):
    col = peers.collector(body=True)
    status, version, body = curl_h2(col.port, "/g/x?q=1&r=%20", "-H", "X-Dup: 1", "-H", "X-Other: a b",
                                    "-H", "X-Dup: 2")
    assert (status, version, body) == (200, "2", b"")
    payload = os.urandom(300 * 1024) + b"\x00end"
    path = tmp_path / "body.bin"
    path.write_bytes(payload)
    status, version, _ = curl_h2(col.port, "/p", "--data-binary", "@%s" % path, "-H", "Content-Type: application/x-t")
    assert (status, version) == (200, "2")
    recs = by_target(col, 2)
    g, p = recs["/g/x?q=1&r=%20"], recs["/p"]
    assert (g["method"], g["version"], p["method"], p["version"]) == ("GET", "HTTP/2.0", "POST", "HTTP/2.0")
    # :authority is reported as host, where it came; pseudo-fields are not headers
    assert g["headers"][0] == ["host", "127.0.0.1:%d" % col.port], g["headers"]
    assert not any(n.startswith(":") for n, _ in g["headers"] + p["headers"])
    assert [h for h in g["headers"] if h[0].startswith("x-")] == [["x-dup", "1"], ["x-other", "a b"], ["x-dup", "2"]]
    assert g["body_length"] == 0 and g["body_sha256"] == hashlib.sha256(b"").hexdigest()
    assert ["content-type", "application/x-t"] in p["headers"]
    assert p["body_length"] == len(payload) and p["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert base64.b64decode(p["body"]) == payload


def test_nghttp_streams_on_one_connection(peers):
    col = peers.collector()
    urls = ["http://127.0.0.1:%d/n/%d" % (col.port, i) for i in range(5)]
    out = subprocess.run(["nghttp", "-n", "-s", "-H", "x-via: nghttp"] + urls, stdin=subprocess.DEVNULL,
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr + out.stdout
    recs = by_target(col, 5)
    assert sorted(recs) == ["/n/%d" % i for i in range(5)]
    for r in recs.values():
        assert r["version"] == "HTTP/2.0" and ["x-via", "nghttp"] in r["headers"], r


def test_status_option_and_head(peers):
    col = peers.collector(status=503)
    assert curl_h2(col.port, "/s") == (503, "2", b"")
    status, _, body = curl_h2(col.port, "/head", "-I")
    assert status == 503 and b"content-length: 0" in body.lower(), body
    recs = by_target(col, 2)
    assert recs["/head"]["method"] == "HEAD"


def test_delay_holds_streams_concurrently_on_one_connection(peers):
    col = peers.collector(delay="300ms")
    t0 = time.monotonic()
    out = subprocess.run(["h2load", "-c1", "-m50", "-n50", "http://127.0.0.1:%d/d" % col.port],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - t0
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"requests: 50 total, 50 started, 50 done, 50 succeeded", out.stdout), out.stdout
    assert "status codes: 50 2xx" in out.stdout, out.stdout
    m = re.search(r"finished in ([\d.]+)(ms|s),", out.stdout)
    took = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    # held, but side by side: one after the other would take 15 s
    assert 0.29 <= took < 3.0, out.stdout
    assert elapsed < 5.0, elapsed
    assert len(col.wait_count(50)) == 50


def test_http1_on_the_same_port(peers):
    col = peers.collector()
    assert curl_h2(col.port, "/h2-first")[0] == 200
    with Client(col.port) as c:
        r = c.request("GET", "/h1", [("X-A", "1")], host="h.example")
        assert r.status == 200, r
    # the preface's first bytes are a method too: PRI over HTTP/1.1 is not HTTP/2
    with Client(col.port) as c:
        c.send(b"PRI /x HTTP/1.1\r\nHost: p\r\n\r\n")
        assert c.read().status == 200
    assert curl_h2(col.port, "/h2-after")[0] == 200
    recs = by_target(col, 4)
    assert recs["/h1"]["version"] == "HTTP/1.1" and recs["/h1"]["headers"] == [["Host", "h.example"], ["X-A", "1"]]
    assert recs["/x"]["method"] == "PRI" and recs["/x"]["version"] == "HTTP/1.1"
    assert recs["/h2-after"]["version"] == "HTTP/2.0"


def test_raw_split_preface_host_in_place_and_trailers(peers):
    col = peers.collector(body=True)
    with socket.create_connection(("127.0.0.1", col.port)) as s:
        for piece in (PREFACE[:3], PREFACE[3:17], PREFACE[17:]):  # a prefix keeps the server waiting
            s.sendall(piece)
            time.sleep(0.1)
        head = b"\x83\x86" + field(b":path", b"/raw") + field(b":authority", b"a.example") + \
            field(b"x-first", b"1") + field(b"host", b"a.example") + field(b"x-last", b"2")  # POST, http
        s.sendall(frame(4, 0, 0) + frame(HEADERS, END_HEADERS, 1, head) + frame(DATA, 0, 1, b"hello ") +
                  frame(DATA, 0, 1, b"world") + frame(HEADERS, END_HEADERS | END_STREAM, 1, field(b"x-trailer", b"t")))
        answered(read_frames(s, stream_ended(1)), 1)
        head = b"\x82\x86" + field(b":path", b"/raw2") + field(b":authority", b"b.example") + field(b"x-a", b"1")
        s.sendall(frame(HEADERS, END_HEADERS | END_STREAM, 3, head))
        answered(read_frames(s, stream_ended(3)), 3)
    recs = by_target(col, 2)
    r = recs["/raw"]
    assert r["method"] == "POST" and r["version"] == "HTTP/2.0"
    assert r["headers"] == [["x-first", "1"], ["host", "a.example"], ["x-last", "2"]]  # no trailer, one host
    assert base64.b64decode(r["body"]) == b"hello world"
    assert recs["/raw2"]["method"] == "GET" and recs["/raw2"]["headers"] == [["host", "b.example"], ["x-a", "1"]]


def test_413_on_the_stream_only(peers, tmp_path):
    col = peers.collector()  # a 64 MiB body limit
    with socket.create_connection(("127.0.0.1", col.port)) as s:
        head = b"\x83\x86" + field(b":path", b"/big") + field(b":authority", b"x") + \
            field(b"content-length", b"99999999999")
        s.sendall(PREFACE + frame(4, 0, 0) + frame(HEADERS, END_HEADERS, 1, head))
        frames = answered(read_frames(s, stream_ended(1)), 1)
        assert b"".join(p for t, _, st, p in frames if t == DATA and st == 1) == \
            b"content-length above the body limit\n", frames
        # the connection goes on
        ok = b"\x82\x86" + field(b":path", b"/ok") + field(b":authority", b"x")
        s.sendall(frame(HEADERS, END_HEADERS | END_STREAM, 3, ok))
        answered(read_frames(s, stream_ended(3)), 3)
    # no Content-Length: the limit is found in the DATA
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(65 * 1024 * 1024)
    out = subprocess.run("curl -sS --http2-prior-knowledge -X POST -T - -o /dev/null -w '%%{http_code}' "
                         "http://127.0.0.1:%d/stdin < %s" % (col.port, big), shell=True, capture_output=True,
                         timeout=60)
    assert out.stdout == b"413", out
    assert curl_h2(col.port, "/after")[0] == 200
    targets = [r["target"] for r in col.wait_count(2)]
    assert targets == ["/ok", "/after"], targets


@pytest.mark.parametrize("garbage", [b"garbage, not frames\r\n\r\n" * 4, b"\x00" * 9 + b"\xff" * 64],
                         ids=["text", "bad-frames"])
def test_garbage_after_preface_gets_goaway(peers, garbage):
    col = peers.collector()
    with socket.create_connection(("127.0.0.1", col.port)) as s:
        s.sendall(PREFACE + garbage)
        frames = read_frames(s, lambda fr: any(t == GOAWAY for t, *_ in fr))
        assert any(t == GOAWAY for t, *_ in frames), frames
        wait_until(lambda: s.recv(4096) == b"", 5, what="the server to close")
    assert curl_h2(col.port, "/next")[0] == 200
    assert col.wait_count(1)[0]["target"] == "/next"
    assert col.proc.poll() is None


def test_stop_with_held_streams_frees_everything(peers):
    col = peers.collector(delay="20s")
    load = subprocess.Popen(["h2load", "-c2", "-m100", "-n200", "http://127.0.0.1:%d/held" % col.port],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        col.wait_count(200)  # every stream answered by the handler, its answer held
        assert col.stop() == 0, col.stderr()[-2000:]
        assert col.sanitizer_report() == ""  # LeakSanitizer runs at exit
    finally:
        load.kill()
        load.wait(10)
