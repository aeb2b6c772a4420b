"""Request smuggling: every case of cases.txt against umbra, with a mirror.

umbra runs one route to a recording primary, mirrored at 100 % to a recording
shadow. Each case is sent raw on a new connection; the responses must match
the table, and both upstreams must see exactly the accepted requests, with the
same targets and body lengths, never a "smuggled" target, never framing junk.
A request umbra rejects reaches neither upstream (a body error may let its
head out first, but that upstream connection is then closed before the body
completes).
"""

import pytest

from backends import PeerClosed, ProtocolError
from cases import SMUGGLED_MARK, load
from harness import Client, make_config, wait_until

CASES = load()


@pytest.fixture(scope="module")
def rig(module_procs):
    primary = module_procs.backend("primary")
    shadow = module_procs.backend("shadow")
    cfg = make_config(
        {"primary": [primary], "shadow": {"endpoints": [shadow], "timeout": "5s"}},
        routes=[{"name": "all", "match": {"prefix": "/"}, "cluster": "primary",
                 "mirrors": [{"cluster": "shadow", "fraction": "100%"}]}],
        limits={"max_body_bytes": "1MiB", "header_timeout": "5s"})
    u = module_procs.umbra(cfg, name="conformance")
    return u, primary, shadow


def _counts(b):
    with b.lock:
        return len(b.heads), len(b.requests), len(b.aborted), len(b.errors)


def _new(b, before):
    with b.lock:
        return (b.heads[before[0]:], b.requests[before[1]:], b.aborted[before[2]:], b.errors[before[3]:])


def _read_all(case, c):
    """The statuses umbra answered, in order, and whether it then closed."""
    got = []
    for e in case.expect:
        try:
            r = c.read("GET", keep_body=False)
        except (PeerClosed, ConnectionResetError):
            return got, True
        got.append(r.status)
        if r.status >= 400:
            break
    if got and got[-1] >= 400:
        return got, c.is_closed(3)
    return got, c.is_closed(0.2)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(rig, case):
    u, primary, shadow = rig
    p0, s0 = _counts(primary), _counts(shadow)
    rejected0 = u.metrics().sum("umbra_downstream_rejected_total")
    with Client(u.port, timeout=10) as c:
        c.send(case.raw)
        try:
            got, closed = _read_all(case, c)
        except ProtocolError as e:
            pytest.fail("%s: malformed answer from umbra: %s" % (case.name, e))

    want = [e.status for e in case.expect if e.status != "close"]
    assert got == want, "%s: umbra answered %s, want %s" % (case.name, got, case.expect_text())
    if case.rejected:
        assert closed, "%s: connection left open after %s" % (case.name, got[-1] if got else "nothing")

    # The primary answered every accepted request before umbra did, so its
    # records are complete now; the shadow's copy may still be on its way.
    n = case.n_ok
    wait_until(lambda: len(_new(shadow, s0)[1]) >= n, 5, what="%d copies at the shadow" % n)
    body_heads = any(e.in_body for e in case.expect)
    for name, b, before in (("primary", primary, p0), ("shadow", shadow, s0)):
        def settled():
            heads, reqs, aborted, _ = _new(b, before)
            return len(heads) == len(reqs) + len(aborted)
        # a head forwarded before a broken body must end aborted, never complete
        wait_until(settled, 5, what="every head at the %s to end" % name)
        heads, reqs, aborted, errors = _new(b, before)
        assert len(reqs) == n, "%s: the %s got %d complete requests, want %d: %s" % (
            case.name, name, len(reqs), n, [r["target"] for r in reqs])
        assert not errors, "%s: framing junk reached the %s: %s" % (case.name, name, errors)
        assert not [h for h in heads if SMUGGLED_MARK in h["target"]], \
            "%s: a smuggled request reached the %s: %s" % (case.name, name, [h["target"] for h in heads])
        if not body_heads:
            assert len(heads) == n, "%s: the %s saw heads of rejected requests: %s" % (
                case.name, name, [h["target"] for h in heads[n:]])
    prim = [(r["method"], r["target"], r["body_len"]) for r in _new(primary, p0)[1]]
    shad = [(r["method"], r["target"], r["body_len"]) for r in _new(shadow, s0)[1]]
    # Copies of pipelined requests may travel on different shadow connections,
    # so the shadow can finish them in either order; only the set must agree.
    assert sorted(prim) == sorted(shad), "%s: primary and shadow disagree: %s vs %s" % (case.name, prim, shad)

    errors = sum(1 for s in got if s >= 400)
    rejected = u.metrics().sum("umbra_downstream_rejected_total") - rejected0
    assert rejected == errors, "%s: umbra_downstream_rejected_total moved by %d, want %d" % (
        case.name, rejected, errors)


def test_no_smuggled_request_ever_arrived(rig):
    """Runs last in this module: nothing arrived late either."""
    u, primary, shadow = rig
    for name, b in (("primary", primary), ("shadow", shadow)):
        with b.lock:
            bad = [h["target"] for h in b.heads if SMUGGLED_MARK in h["target"]]
            errors = list(b.errors)
        assert not bad, "smuggled requests reached the %s: %s" % (name, bad)
        assert not errors, "framing junk reached the %s: %s" % (name, errors)
