"""`umbra collect`, the shadow sink the mirroring tests rely on: one valid
JSON object per line per request (time, method, target, version, headers in
order, body length and SHA-256, the body in base64 with --body), written
before the answer; --status, --delay, "--out -", argument errors, and a clean
exit 0 on SIGTERM."""

import base64
import datetime
import hashlib
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from harness import Client, build_request, chunked, wait_until
from shadows import Collector, peers  # noqa: F401

FIELDS = {"time", "method", "target", "version", "headers", "body_length", "body_sha256"}
EMPTY_SHA = hashlib.sha256(b"").hexdigest()


def test_record_fields_and_header_order(peers):
    col = peers.collector()
    headers = [("User-Agent", "t/1"), ("X-Dup", "1"), ("accept", "*/*"), ("x-dup", "2"), ("X-Mixed-CASE", "v a l"),
               ("X-Empty", ""), ("X-Json", "quote \" backslash \\ tab\tend"), ("X-DUP", "3")]
    before = datetime.datetime.now(datetime.timezone.utc)
    with Client(col.port) as c:
        r = c.request("GET", "/path/x?q=1&r=%20", headers, host="h.example:81")
        assert r.status == 200 and r.body == b"" and r.header("content-length") == "0", r
    rec = col.wait_count(1)[0]
    assert set(rec) == FIELDS, rec
    assert (rec["method"], rec["target"], rec["version"]) == ("GET", "/path/x?q=1&r=%20", "HTTP/1.1")
    assert rec["headers"] == [["Host", "h.example:81"]] + [list(h) for h in headers]
    assert rec["body_length"] == 0 and rec["body_sha256"] == EMPTY_SHA
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", rec["time"]), rec["time"]
    when = datetime.datetime.strptime(rec["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    assert abs((when - before).total_seconds()) < 5, (rec["time"], before)


def test_non_utf8_header_bytes_stay_valid_json(peers):
    col = peers.collector()
    with Client(col.port) as c:
        c.send(b"GET /latin HTTP/1.1\r\nHost: x\r\nX-Latin: caf\xe9\r\nX-Utf8: caf\xc3\xa9\r\n\r\n")
        assert c.read().status == 200
    rec = col.wait_count(1)[0]  # json.loads in records() would raise on invalid JSON
    assert rec["headers"][1:] == [["X-Latin", "caf\u00e9"], ["X-Utf8", "caf\u00e9"]]


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_body_option(peers, framing):
    plain = peers.collector("plain")
    withb = peers.collector("withb", body=True)
    body = bytes(range(256)) * 100 + b"\x00end"
    for col in (plain, withb):
        with Client(col.port) as c:
            if framing == "chunked":
                c.send(build_request("POST", "/b", [("Transfer-Encoding", "chunked")]) + chunked(body, (1000, 7)))
                r = c.read("POST")
            else:
                r = c.request("POST", "/b", body=body)
            assert r.status == 200, r
    p, w = plain.wait_count(1)[0], withb.wait_count(1)[0]
    for rec in (p, w):
        assert rec["body_length"] == len(body) and rec["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert "body" not in p
    assert base64.b64decode(w["body"]) == body


def test_status_option_and_keepalive(peers):
    col = peers.collector(status=503)
    with Client(col.port) as c:
        for i in range(3):  # one connection, several answers
            r = c.request("GET", "/s/%d" % i)
            assert r.status == 503 and r.body == b"", r
        r = c.request("HEAD", "/head")
        assert r.status == 503 and r.body == b"", r
    recs = col.wait_count(4)
    assert [x["target"] for x in recs] == ["/s/0", "/s/1", "/s/2", "/head"]
    assert recs[-1]["method"] == "HEAD"


def test_delay_option_holds_answers_not_records(peers):
    col = peers.collector(delay="500ms")
    results = {}

    def one(k):
        with Client(col.port) as c:
            t0 = time.monotonic()
            c.send(build_request("GET", "/d/%d" % k))
            # the line is written before the answer is held
            wait_until(lambda: any(x["target"] == "/d/%d" % k for x in col.records()), 2, 0.01,
                       "the record of /d/%d before its answer" % k)
            r = c.read()
            results[k] = (r.status, time.monotonic() - t0)

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    elapsed = time.monotonic() - t0
    assert sorted(results) == [0, 1, 2, 3], results
    assert all(status == 200 and took >= 0.45 for status, took in results.values()), results
    # each answer is held on its own, not one after the other
    assert elapsed < 1.5, (elapsed, results)


def test_one_json_line_per_request_under_concurrency(peers):
    col = peers.collector(body=True)
    errors = []

    def client(k):
        try:
            with Client(col.port) as c:
                for i in range(25):
                    body = os.urandom((k * 25 + i) * 37 % 5000)
                    r = c.request("POST", "/c/%d/%d" % (k, i), [("X-Sha", hashlib.sha256(body).hexdigest())], body)
                    assert r.status == 200
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    with open(col.out_path, "rb") as f:
        lines = f.read().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 201
    recs = [json.loads(x) for x in lines[:-1]]
    assert sorted(r["target"] for r in recs) == sorted("/c/%d/%d" % (k, i) for k in range(8) for i in range(25))
    for r in recs:
        sha = [v for n, v in r["headers"] if n == "X-Sha"][0]
        assert r["body_sha256"] == sha == hashlib.sha256(base64.b64decode(r["body"])).hexdigest()


def test_out_dash_writes_stdout(peers):
    col = peers.collector(out="-")
    with Client(col.port) as c:
        assert c.request("GET", "/stdout").status == 200
    wait_until(lambda: col.records(col.stdout_path), 5, what="a line on stdout")
    assert col.records(col.stdout_path)[0]["target"] == "/stdout"


def test_oversized_body_refused_without_a_record(peers):
    col = peers.collector()
    with Client(col.port) as c:
        c.send(build_request("POST", "/huge", [("Content-Length", str(64 * 1024 * 1024 + 1))]))
        r = c.read("POST")
    assert r.status == 413, r
    with Client(col.port) as c:
        assert c.request("GET", "/fine").status == 200
    assert [x["target"] for x in col.wait_count(1)] == ["/fine"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_zero_with_records_flushed(umbra_bin, tmp_path, sig):
    col = Collector(umbra_bin, tmp_path, "sig").start()
    try:
        with Client(col.port) as c:
            assert c.request("GET", "/before-exit").status == 200
            idle = Client(col.port)  # an open connection must not hold up the exit
        os.kill(col.proc.pid, sig)
        assert col.proc.wait(10) == 0
        idle.close()
        assert [x["target"] for x in col.records()] == ["/before-exit"]
        assert not col.sanitizer_report(), col.sanitizer_report()
    finally:
        col.stop()


@pytest.mark.parametrize("args", [
    ["--listen", "127.0.0.1:0"],
    ["--out", "/dev/null"],
    ["--listen", "127.0.0.1:0", "--out", "/dev/null", "--status", "99"],
    ["--listen", "127.0.0.1:0", "--out", "/dev/null", "--status", "abc"],
    ["--listen", "127.0.0.1:0", "--out", "/dev/null", "--delay", "soon"],
    ["--listen", "127.0.0.1:0", "--out", "/dev/null", "--frobnicate"],
    ["--listen", "not-an-address", "--out", "/dev/null"],
    ["--listen", "127.0.0.1:0", "--out"],
], ids=["no-out", "no-listen", "status-99", "status-abc", "bad-delay", "unknown", "bad-listen", "out-no-value"])
def test_bad_arguments_exit_2(umbra_bin, args):
    p = subprocess.run([umbra_bin, "collect"] + args, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert b"usage" in p.stderr or b"collect:" in p.stderr, p.stderr


def test_help_exits_zero(umbra_bin):
    p = subprocess.run([umbra_bin, "collect", "--help"], stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    assert p.returncode == 0 and b"--listen" in p.stdout, p
