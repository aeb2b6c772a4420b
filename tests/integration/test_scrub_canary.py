"""Promise 4, fail closed on secrets: 250 requests carrying known canary
secrets (canary_corpus.py) go through umbra with the issue's `default` scrub
policy to a recording primary, mirrored at 100 % to `umbra collect --body`.

- the collector's output holds none of the canaries, searched as raw bytes,
  percent-encoded and base64 (at every alignment) in every view of every
  record: its JSON line, the body, the body inflated, JSON strings decoded,
  percent-decoded text;
- the primary received every request intact (method, target, headers, body);
- scrubbable copies arrive, scrubbed as the policy says (masked, replaced,
  hashed, removed; gzip stays gzip; lengths add up); unparseable ones are
  counted as dropped_scrub_failed and never reach the shadow.

The corpus is sent once per module; each test checks one property of it."""

import gzip
import hashlib
import json
import types
import urllib.parse
import zlib

import pytest

from canary_corpus import POLICY, SCRUB_KEY, all_canaries, api_key, card_spaced, corpus, email, find_leaks, \
    hmac_hex, views
from harness import Client, build_request, chunked
from shadows import Peers, header_values, mirror_config, outcomes, record_body, wait_outcomes

HOP = {"transfer-encoding", "content-length", "x-forwarded-for", "x-request-id", "connection"}


def send(port, reqs):
    """Sends every request (keep-alive, a fresh connection every 40); returns
    {rid: status}."""
    statuses = {}
    c = None
    try:
        for k, r in enumerate(reqs):
            if k % 40 == 0:
                if c:
                    c.close()
                c = Client(port)
            if r.chunked:
                c.send(build_request(r.method, r.target, r.headers, None, "api.test")
                       + chunked(r.body, sizes=(7, 300, 4096)))
                resp = c.read(r.method)
            else:
                resp = c.request(r.method, r.target, r.headers, r.body if r.body else None, "api.test")
            statuses[r.rid] = resp.status
    finally:
        if c:
            c.close()
    return statuses


@pytest.fixture(scope="module", params=["http1", "h2"])
def run(request, module_procs, umbra_bin, tmp_path_factory):
    """The corpus through umbra once per shadow protocol (a scrubbed copy
    goes out whole over HTTP/2 as over HTTP/1.1): the requests, what the
    primary and the collector got, and the mirror outcomes."""
    peers = Peers(umbra_bin, tmp_path_factory.mktemp("canary"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UMBRA_SCRUB_KEY", SCRUB_KEY)
        try:
            col = peers.collector(body=True)
            b = module_procs.backend("primary")
            mirror = {"cluster": "shadow", "scrub": "default", "buffer": "1MiB"}
            shadow = {"endpoints": [col], "timeout": "10s", "protocol": request.param}
            cfg = mirror_config(b, {"shadow": shadow}, [mirror],
                                scrub_policies={"default": POLICY})
            u = module_procs.umbra(cfg, name="canary-" + request.param)
            reqs = corpus()
            statuses = send(u.port, reqs)
            outs = wait_outcomes(u, len(reqs), timeout=60)
            with open(col.out_path, "rb") as f:
                raw = f.read()
            yield types.SimpleNamespace(reqs=reqs, statuses=statuses, outcomes=outs, umbra=u, backend=b,
                                        records=col.records(), raw=raw, by_rid=col.by_request_id())
        finally:
            peers.close()


def record_views(rec):
    body = record_body(rec) if "body" in rec else b""
    coding = (header_values(rec["headers"], "content-encoding") or [None])[0]
    return views(json.dumps(rec), body, coding)


def request_views(r):
    text = "%s %s\n%s" % (r.method, r.target, "\n".join("%s: %s" % h for h in r.headers))
    coding = (header_values(r.headers, "content-encoding") or [None])[0]
    return views(text, r.body, coding)


@pytest.mark.timeout(180)
def test_corpus_answered_by_the_primary(run):
    assert len(run.reqs) >= 200
    assert len({r.rid for r in run.reqs}) == len(run.reqs)
    bad = {rid: s for rid, s in run.statuses.items() if s != 200}
    assert not bad and len(run.statuses) == len(run.reqs), bad


def test_no_canary_reaches_the_shadow(run):
    canaries = all_canaries(run.reqs)
    assert len(canaries) > 1000
    leaks = []
    for rec in run.records:
        found = find_leaks(canaries, record_views(rec))
        if found:
            leaks.append((header_values(rec["headers"], "x-request-id"), found[:3], rec["target"]))
    # and the file as a whole, in case a record does not even parse as expected
    file_leaks = find_leaks(canaries, [run.raw])
    assert not leaks and not file_leaks, "canaries reached the shadow:\n%s\n%s" % (
        "\n".join(map(str, leaks[:10])), file_leaks[:10])


def test_the_search_would_find_them(run):
    """Every canary is visible to the same search in what the client sent,
    so the test above cannot pass by looking in the wrong place."""
    missing = [(r.rid, c) for r in run.reqs for c in r.canaries if not find_leaks([c], request_views(r))]
    assert not missing, missing[:10]


def test_scrubbable_copies_arrive_unparseable_ones_are_dropped(run):
    want = {r.rid for r in run.reqs if r.expect == "scrubbed"}
    dropped = {r.rid for r in run.reqs if r.expect == "dropped"}
    got = set(run.by_rid)
    assert got == want, ("missing copies %s; unexpected %s" % (sorted(want - got)[:10], sorted(got - want)[:10]))
    assert all(len(v) == 1 for v in run.by_rid.values())
    assert run.outcomes == {"completed": len(want), "dropped_scrub_failed": len(dropped)}, run.outcomes
    assert outcomes(run.umbra) == run.outcomes


def test_primary_received_everything_intact(run):
    prim = {}
    for rec in run.backend.requests:
        for rid in header_values(rec["headers"], "x-request-id"):
            prim[rid] = rec
    for r in run.reqs:
        p = prim.get(r.rid)
        assert p is not None, "the primary never got %s" % r
        assert (p["method"], p["target"]) == (r.method, r.target), (r, p["method"], p["target"])
        for name in {n.lower() for n, _ in r.headers} - HOP:
            assert header_values(p["headers"], name) == header_values(r.headers, name), (r, name, p["headers"])
        sent_xff = header_values(r.headers, "x-forwarded-for")
        if sent_xff:
            assert header_values(p["headers"], "x-forwarded-for")[0].startswith(sent_xff[0] + ", "), r
        assert p["body_len"] == len(r.body), (r, p["body_len"])
        assert p["body_sha256"] == hashlib.sha256(r.body).hexdigest(), r


def _by_name(run, name):
    out = [(r, run.by_rid[r.rid][0]) for r in run.reqs if r.name == name and r.rid in run.by_rid]
    assert out, "no copies of %s" % name
    return out


def _json_body(rec):
    body = record_body(rec)
    coding = (header_values(rec["headers"], "content-encoding") or [""])[0].lower()
    if coding == "gzip":
        body = gzip.decompress(body)
    elif coding == "deflate":
        body = zlib.decompress(body)
    return json.loads(body)


def test_head_actions(run):
    for r, rec in _by_name(run, "get-query"):
        h = rec["headers"]
        assert header_values(h, "authorization") == ["MASKED"], h
        assert header_values(h, "cookie") == [], h
        assert header_values(h, "x-user-email") == ["hidden@example.com"], h
        assert header_values(h, "x-api-key") == [hmac_hex(api_key(r.i))], h
        assert header_values(h, "x-client-note") == ["call about MASKED"], h
        assert header_values(h, "x-real-ip") == ["MASKED"], h
        assert header_values(h, "accept") == ["application/json"], h
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(rec["target"]).query, keep_blank_values=True)
        assert q["token"] == ["MASKED"] and q["ref"] == ["MASKED"] and q["q"] == ["shoes"], q
        assert q["email"] == [hmac_hex(email(r.i, "q"))], q


def test_path_and_forwarded_for(run):
    for r, rec in _by_name(run, "path"):
        assert rec["target"] == "/users/MASKED/profile/MASKED?x=1&contact=MASKED", rec["target"]
        assert all("10.77." not in v for v in header_values(rec["headers"], "x-forwarded-for")), rec["headers"]


def test_json_bodies(run):
    for r, rec in _by_name(run, "json-flat"):
        doc = _json_body(rec)
        assert doc == {"password": "MASKED", "user": {"email": "MASKED", "name": "Ann Example"},
                       "ssn": "MASKED", "note": "card MASKED exp 12/29"}, doc
    for r, rec in _by_name(run, "json-nested"):
        doc = _json_body(rec)
        assert doc["password"] == "MASKED"
        assert doc["orders"][0] == {"id": 1, "payment": {"card": "MASKED"}}, doc
        assert doc["orders"][1]["contacts"] == ["MASKED", {"ssn": "MASKED"}, [[{"deep": {"ssn": "MASKED"}}]]], doc
        assert doc["meta"] == {"tags": ["a", "b"], "n": 3.5, "ok": True, "none": None}, doc
    for r, rec in _by_name(run, "json-unicode"):
        doc = _json_body(rec)
        assert doc["naïve"] == "Zoë — ünïcödé ✓ 😀", doc      # untouched text survives either spelling
        assert doc["user"] == {"email": "MASKED", "名前": "テスト"}, doc
        assert doc["message"] == "Grüße an MASKED — 😀 MASKED", doc
        assert doc["card_number"] == "MASKED" and doc["deep"] == {"a": [{"b": {"ssn": "MASKED"}}]}, doc
    for r, rec in _by_name(run, "json-escaped"):
        doc = _json_body(rec)
        assert doc["password"] == "MASKED" and doc["ssn"] == "MASKED", doc
        assert doc["contact"] == "mail: MASKED (pref)" and doc["quote"] == 'he said "MASKED"', doc
    for r, rec in _by_name(run, "json-as-form"):
        assert _json_body(rec) == {"password": "MASKED", "user": {"email": "MASKED"}}


def test_form_bodies(run):
    for name in ("form", "chunked-gzip-form"):
        for r, rec in _by_name(run, name):
            body = record_body(rec)
            if name == "chunked-gzip-form":
                assert header_values(rec["headers"], "content-encoding") == ["gzip"]
                body = gzip.decompress(body)
            f = urllib.parse.parse_qs(body.decode(), keep_blank_values=True)
            assert f == {"name": ["Ann Example"], "password": ["MASKED"], "card_number": ["MASKED"],
                         "email": ["MASKED"], "comment": ["ssn is MASKED, ip MASKED"], "empty": [""]}, (r, f)


def test_coded_and_chunked_bodies_add_up(run):
    for name in ("gzip-json", "deflate-json", "chunked-json", "chunked-gzip-form", "text"):
        for r, rec in _by_name(run, name):
            body = record_body(rec)
            assert rec["body_length"] == len(body)
            cl = header_values(rec["headers"], "content-length")
            assert not cl or cl == [str(len(body))], (r, cl, len(body))
            assert cl or header_values(rec["headers"], "transfer-encoding") == ["chunked"], rec["headers"]
    for r, rec in _by_name(run, "gzip-json"):
        doc = _json_body(rec)
        assert doc["password"] == "MASKED" and doc["user"] == {"email": "MASKED"} and doc["note"] == "jwt MASKED"
    for r, rec in _by_name(run, "text"):
        assert b"Authorization: Bearer MASKED\n" in record_body(rec)
        assert ("card %s" % card_spaced(r.i, "-")).encode() not in record_body(rec)
