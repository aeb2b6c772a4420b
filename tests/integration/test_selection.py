"""Which requests a mirror copies (issue 4): a mirror's match rules —
methods, excluded paths (prefixes and regexes), header and cookie patterns,
source CIDRs — and consistent sampling by a header or cookie: the same user
id always gets the same answer, about 10 % of 10,000 distinct ids are
mirrored at 10 % (binomial bounds), raising the fraction only adds ids, and
a request without the value is sampled at random or skipped.

The bucket of a value is SipHash-2-4 under umbra's fixed sampling key, mapped
to parts per million; it is computed here too, so the test predicts exactly
which ids umbra mirrors — which also shows the decision does not depend on
the process."""

import struct
import threading

import pytest

from harness import Client
from shadows import header_values, mirror_config, outcomes, peers, sampled_out, wait_outcomes  # noqa: F401

SAMPLE_KEY = b"umbra.sample.v1\x5a"
PPM = 1000000


# ---------------------------------------------------------------- SipHash-2-4

def _rotl(x, b):
    return ((x << b) | (x >> (64 - b))) & 0xFFFFFFFFFFFFFFFF


def _round(v):
    v0, v1, v2, v3 = v
    v0 = (v0 + v1) & 0xFFFFFFFFFFFFFFFF; v1 = _rotl(v1, 13); v1 ^= v0; v0 = _rotl(v0, 32)  # noqa: E702
    v2 = (v2 + v3) & 0xFFFFFFFFFFFFFFFF; v3 = _rotl(v3, 16); v3 ^= v2                      # noqa: E702
    v0 = (v0 + v3) & 0xFFFFFFFFFFFFFFFF; v3 = _rotl(v3, 21); v3 ^= v0                      # noqa: E702
    v2 = (v2 + v1) & 0xFFFFFFFFFFFFFFFF; v1 = _rotl(v1, 17); v1 ^= v2; v2 = _rotl(v2, 32)  # noqa: E702
    return [v0, v1, v2, v3]


def siphash24(key, data):
    k0, k1 = struct.unpack("<QQ", key)
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D, k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]
    tail = len(data) % 8
    blocks = [struct.unpack("<Q", data[i:i + 8])[0] for i in range(0, len(data) - tail, 8)]
    blocks.append(((len(data) & 0xFF) << 56) | int.from_bytes(data[len(data) - tail:], "little"))
    for m in blocks:
        v[3] ^= m
        v = _round(_round(v))
        v[0] ^= m
    v[2] ^= 0xFF
    for _ in range(4):
        v = _round(v)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def bucket(value):
    return ((siphash24(SAMPLE_KEY, value.encode()) >> 32) * PPM) >> 32


def test_siphash_reference_vector():
    """The paper's vectors (key 00..0f), so the predictions below are sound."""
    key = bytes(range(16))
    assert siphash24(key, b"") == 0x726FDB47DD0E0E31
    assert siphash24(key, bytes(range(15))) == 0xA129CA6149BE45E5


# ---------------------------------------------------------------- helpers

def send_all(port, reqs, threads=4):
    """reqs: [(method, target, [(name, value)])] over `threads` keep-alive
    connections; every answer must be 200."""
    errors = []

    def worker(part):
        try:
            with Client(port) as c:
                for method, target, headers in part:
                    r = c.request(method, target, headers)
                    if r.status != 200:
                        errors.append((target, r.status))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    parts = [reqs[k::threads] for k in range(threads)]
    ts = [threading.Thread(target=worker, args=(p,), daemon=True) for p in parts]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors and not any(t.is_alive() for t in ts), errors[:10]


def mirrored_ids(col, name="x-rid"):
    """The x-rid values the collector recorded."""
    out = []
    for rec in col.records():
        out += header_values(rec["headers"], name)
    return out


def settle(u, expected, before=None, timeout=30):
    """Waits until exactly `expected` copies completed (and no other outcome)."""
    got = wait_outcomes(u, expected, before=before, timeout=timeout)
    assert got == ({"completed": expected} if expected else {}), got


def start(procs, peers, mirror, workers=2):
    col = peers.collector()
    primary = peers.primary()
    u = procs.umbra(mirror_config(primary.addr, {"shadow": col}, [dict(mirror, cluster="shadow")], workers=workers))
    return col, u


# ---------------------------------------------------------------- match rules

@pytest.mark.timeout(60)
def test_excluded_paths_and_methods_never_mirrored(procs, peers):
    col, u = start(procs, peers, {"match": {"methods": ["GET", "HEAD", "POST"],
                                            "exclude_paths": ["/login", "/signup", "regex:^/admin/",
                                                              "regex:\\.(png|css)$"]}})
    cases = [
        ("GET", "/login", False), ("POST", "/login?next=/", False), ("GET", "/login/sso", False),
        ("POST", "/signup", False), ("GET", "/admin/users", False), ("GET", "/admin/", False),
        ("GET", "/static/logo.png", False), ("GET", "/a.css?v=2", False),
        ("DELETE", "/api/items/1", False), ("PUT", "/api/items/1", False), ("OPTIONS", "/api", False),
        ("GET", "/api/login", True), ("GET", "/administrator", True), ("GET", "/admin", True),
        ("HEAD", "/api/x", True), ("POST", "/api/x?next=/login", True), ("GET", "/logo.png.txt", True),
        ("GET", "/", True), ("GET", "/q?file=a.css", True),
    ]
    # the excluded ones first: a wrongly started copy would finish before the last expected one
    cases.sort(key=lambda c: c[2])
    reqs = [(m, t, [("X-Rid", "%s %s" % (m, t))]) for m, t, _ in cases]
    send_all(u.port, reqs, threads=1)
    want = sorted("%s %s" % (m, t) for m, t, yes in cases if yes)
    settle(u, len(want))
    assert sorted(mirrored_ids(col)) == want
    assert sampled_out(u) == 0  # exclusions are not sampling


@pytest.mark.timeout(60)
def test_header_and_cookie_rules(procs, peers):
    col, u = start(procs, peers, {"match": {"headers": {"x-user-id": "^tester-", "x-env": "^(qa|stage)$"},
                                            "cookies": {"beta": "^1$"}}})
    cases = [
        ("in-1", [("X-User-Id", "tester-1"), ("X-Env", "qa"), ("Cookie", "beta=1")], True),
        ("in-2", [("x-user-id", "tester-2"), ("x-env", "stage"), ("Cookie", "a=b; beta=1; c=d")], True),
        ("in-3", [("X-User-Id", "tester-3"), ("X-Env", "qa"), ("Cookie", "a=1"), ("Cookie", "beta=1")], True),
        ("in-4", [("X-User-Id", "nobody"), ("X-User-Id", "tester-4"), ("X-Env", "qa"), ("Cookie", "beta=1")], True),
        ("out-user", [("X-User-Id", "user-1"), ("X-Env", "qa"), ("Cookie", "beta=1")], False),
        ("out-env", [("X-User-Id", "tester-5"), ("X-Env", "prod"), ("Cookie", "beta=1")], False),
        ("out-no-env", [("X-User-Id", "tester-6"), ("Cookie", "beta=1")], False),
        ("out-beta0", [("X-User-Id", "tester-7"), ("X-Env", "qa"), ("Cookie", "beta=0")], False),
        ("out-beta10", [("X-User-Id", "tester-8"), ("X-Env", "qa"), ("Cookie", "beta=10")], False),
        ("out-no-cookie", [("X-User-Id", "tester-9"), ("X-Env", "qa")], False),
        ("out-Beta", [("X-User-Id", "tester-10"), ("X-Env", "qa"), ("Cookie", "Beta=1")], False),
        ("out-no-user", [("X-Env", "qa"), ("Cookie", "beta=1")], False),
        ("out-prefix", [("X-User-Id", "xtester-1"), ("X-Env", "qa"), ("Cookie", "beta=1")], False),
    ]
    cases.sort(key=lambda c: c[2])
    send_all(u.port, [("GET", "/r/" + rid, h + [("X-Rid", rid)]) for rid, h, _ in cases], threads=1)
    want = sorted(rid for rid, _, yes in cases if yes)
    settle(u, len(want))
    assert sorted(mirrored_ids(col)) == want


@pytest.mark.timeout(60)
def test_source_cidrs(procs, peers):
    """The test's client is 127.0.0.1: a mirror for 127.0.0.0/8 takes it, one
    for 10.0.0.0/8 and fd00::/8 does not."""
    inside, outside, primary = peers.collector("inside"), peers.collector("outside"), peers.primary()
    mirrors = [{"cluster": "inside", "match": {"source_cidrs": ["10.0.0.0/8", "127.0.0.0/8"]}},
               {"cluster": "outside", "match": {"source_cidrs": ["10.0.0.0/8", "fd00::/8", "127.0.0.2/32"]}}]
    u = procs.umbra(mirror_config(primary.addr, {"inside": inside, "outside": outside}, mirrors))
    send_all(u.port, [("GET", "/c/%d" % k, [("X-Rid", str(k))]) for k in range(20)], threads=2)
    got = wait_outcomes(u, 20, cluster="inside")
    assert got == {"completed": 20}, got
    assert sorted(mirrored_ids(inside), key=int) == [str(k) for k in range(20)]
    assert outcomes(u, cluster="outside") == {} and inside.count() == 20 and outside.count() == 0


# ---------------------------------------------------------------- sampling

@pytest.mark.timeout(240)
def test_consistent_sampling_by_header(procs, peers):
    """10,000 distinct user ids at 10 %: about 1,000 mirrored, exactly the ids
    whose bucket is under 100,000 ppm; the same ids again get the same answers."""
    col, u = start(procs, peers, {"fraction": "10%", "sample_by": {"header": "X-User-Id"}})
    ids = ["user-%05d" % k for k in range(10000)]
    predicted = sorted(i for i in ids if bucket(i) < 100000)
    # binomial(10000, 0.1): sd 30; the prediction itself must be a plausible draw
    assert 850 <= len(predicted) <= 1150, len(predicted)
    send_all(u.port, [("GET", "/s/%d" % k, [("X-User-Id", i), ("X-Rid", i)]) for k, i in enumerate(ids)])
    settle(u, len(predicted), timeout=60)
    assert sampled_out(u) == len(ids) - len(predicted)
    first = sorted(mirrored_ids(col))
    assert first == predicted
    # a second pass over a third of them, in another order, on other connections
    again = ids[::3][::-1]
    before = outcomes(u)
    send_all(u.port, [("POST", "/again", [("X-User-Id", i), ("X-Rid", "again " + i)]) for i in again], threads=3)
    want = sorted("again " + i for i in again if bucket(i) < 100000)
    settle(u, len(want), before=before, timeout=60)
    assert sorted(r for r in mirrored_ids(col) if r.startswith("again ")) == want


@pytest.mark.timeout(120)
def test_raising_the_fraction_only_adds_ids(procs, peers):
    col, u = start(procs, peers, {"fraction": "10%", "sample_by": {"cookie": "session"}})
    ids = ["s%04d" % k for k in range(2000)]
    tens, twenties = [], []
    for pct, out in ((10, tens), (25, twenties)):
        status, body = u.admin("POST", "/runtime?mirror.api.shadow=%d" % pct)
        assert status == 200, body
        before = outcomes(u)
        send_all(u.port, [("GET", "/f", [("Cookie", "theme=x; session=%s" % i), ("X-Rid", "%d %s" % (pct, i))])
                          for i in ids])
        want = [i for i in ids if bucket(i) < pct * 10000]
        settle(u, len(want), before=before, timeout=60)
        out += sorted(r.split(" ")[1] for r in mirrored_ids(col) if r.startswith("%d " % pct))
        assert out == sorted(want)
    assert set(tens) < set(twenties), "raising the fraction dropped ids"
    assert 150 <= len(tens) <= 250 and 420 <= len(twenties) <= 580, (len(tens), len(twenties))


@pytest.mark.timeout(60)
def test_missing_value_random_or_skip(procs, peers):
    skip_col, rand_col, primary = peers.collector("skip"), peers.collector("rand"), peers.primary()
    mirrors = [{"cluster": "skip", "sample_by": {"header": "x-user-id", "missing": "skip"}},
               {"cluster": "rand", "sample_by": {"header": "x-user-id"}}]   # missing: random (default), 100 %
    u = procs.umbra(mirror_config(primary.addr, {"skip": skip_col, "rand": rand_col}, mirrors))
    reqs = [("GET", "/m", [("X-Rid", "anon-%d" % k)]) for k in range(10)]
    reqs += [("GET", "/m", [("X-Rid", "empty-%d" % k), ("X-User-Id", "")]) for k in range(5)]
    reqs += [("GET", "/m", [("X-Rid", "user-%d" % k), ("X-User-Id", "u%d" % k)]) for k in range(10)]
    send_all(u.port, reqs, threads=1)
    assert wait_outcomes(u, 10, cluster="skip") == {"completed": 10}
    assert wait_outcomes(u, 25, cluster="rand") == {"completed": 25}
    assert sorted(mirrored_ids(skip_col)) == sorted("user-%d" % k for k in range(10))
    assert sampled_out(u, cluster="skip") == 15
    assert len(mirrored_ids(rand_col)) == 25
