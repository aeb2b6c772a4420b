"""TLS everywhere: termination on listeners (SNI, client certificates, the
subject passed upstream, session resumption, X-Forwarded-Proto), TLS and mTLS
to the primary and to shadows, every TLS failure counted where it belongs
(502 with reason "tls" on the primary, mirror outcome failed_tls on a shadow,
umbra_tls_handshake_errors_total on both), certificate reload under load,
kernel TLS with its fallback, `umbra check` on TLS files, and the resolved
endpoint addresses in /stats. Certificates are made per module by openssl."""

import json
import os
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from backends import Backend, PeerClosed, ProtocolError
from harness import Client, make_config, wait_until
from shadows import MB, mirror_config, outcomes, peers, run_load, wait_outcomes  # noqa: F401
from tls_util import (HttpsLoad, PlainAnswerServer, Pki, StallServer, client_context, echoed_headers, https_request,
                      serial_of, server_context, subject_of, tls_backend, tls_connect)


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = Pki(tmp_path_factory.mktemp("pki"))
    p.api = p.issue("api", "api.test", ["DNS:api.test", "DNS:localhost", "IP:127.0.0.1"])
    p.www = p.issue("www", "www.test", ["DNS:www.test", "DNS:*.www.test"])
    p.upstream = p.issue("upstream", "upstream.test", ["DNS:upstream.test", "IP:127.0.0.1"])
    p.expired = p.issue("expired", "upstream.test", ["DNS:upstream.test", "IP:127.0.0.1"], expired=True)
    p.untrusted = p.self_signed("untrusted", "upstream.test", ["DNS:upstream.test", "IP:127.0.0.1"])
    p.client = p.issue("client", "client1", ca=p.client_ca, client=True)
    p.mirror_client = p.issue("mirror-client", "umbra-mirror", ca=p.client_ca, client=True)
    p.rogue_client = p.issue("rogue-client", "intruder", ca=p.rogue_ca, client=True)
    return p


def listener_tls(certs, **extra):
    t = {"certificates": [{"cert": c, "key": k} for c, k in certs]}
    t.update(extra)
    return t


def tls_proxy(procs, pki, certs=None, backend=None, workers=1, limits=None, **tls_extra):
    """An umbra with a TLS listener in front of an echo backend."""
    b = backend or procs.backend("b1")
    cfg = make_config({"primary": [b]}, workers=workers, limits=limits,
                      listener_extra={"tls": listener_tls(certs or [pki.api], **tls_extra)})
    return procs.umbra(cfg), b


def msum(m, metric, **labels):
    """Metrics.sum() for metrics with a label called "name"."""
    return sum(v for n, l, v in m.samples if n == metric and all(l.get(k) == str(x) for k, x in labels.items()))


def tls_errors(u, side, name, metrics=None):
    m = metrics or u.metrics()
    out = {}
    for n, l, v in m.samples:
        if n == "umbra_tls_handshake_errors_total" and l["side"] == side and l["name"] == name and v:
            out[l["reason"]] = int(v)
    return out


def wait_tls_error(u, side, name, reason, at_least=1, timeout=10.0):
    return wait_until(lambda: tls_errors(u, side, name).get(reason, 0) >= at_least, timeout,
                      what="umbra_tls_handshake_errors_total{side=%s,name=%s,reason=%s} >= %d"
                      % (side, name, reason, at_least))


def stats_json(u):
    status, body = u.admin("GET", "/stats")
    assert status == 200
    return json.loads(body)


def request_fails(port, context, server_name="api.test"):
    """True when a request over TLS gets no answer: the handshake or the first
    read fails (with TLS 1.3 a refused client certificate shows at the read)."""
    try:
        s = tls_connect(port, context, server_name)
    except (ssl.SSLError, OSError):
        return True
    try:
        https_request(s)
    except (ssl.SSLError, OSError, PeerClosed, ProtocolError):
        return True
    finally:
        s.close()
    return False


def curl(*args, timeout=20):
    return subprocess.run(["curl", "-sS", "--max-time", "10"] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout)


# ---------------------------------------------------------------- downstream termination

def test_curl_over_tls_sets_forwarded_proto(procs, pki):
    u, b = tls_proxy(procs, pki)
    r = curl("--cacert", pki.ca[0], "--resolve", "api.test:%d:127.0.0.1" % u.port,
             "https://api.test:%d/hello?x=1" % u.port, "-H", "X-Forwarded-Proto: http")
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["target"] == "/hello?x=1"
    headers = {n.lower(): [] for n, _ in seen["headers"]}
    for n, v in seen["headers"]:
        headers[n.lower()].append(v)
    # the client's own X-Forwarded-Proto never passes: umbra states the truth
    assert headers["x-forwarded-proto"] == ["https"]
    m = u.metrics()
    assert msum(m, "umbra_tls_handshakes_total", side="downstream", name="ingress") >= 1
    assert tls_errors(u, "downstream", "ingress", m) == {}


def test_plain_listener_still_says_http(proxy):
    resp = proxy.umbra.get("/plain")
    assert resp.status == 200
    assert echoed_headers(resp)["x-forwarded-proto"] == ["http"]


def test_sni_chooses_the_certificate(procs, pki):
    u, _ = tls_proxy(procs, pki, certs=[pki.api, pki.www])
    ctx = client_context(pki.ca[0])
    for name, want in (("api.test", "api.test"), ("www.test", "www.test"), ("a.www.test", "www.test"),
                       ("localhost", "api.test")):
        with tls_connect(u.port, ctx, name) as s:
            subject = dict(x[0] for x in s.getpeercert()["subject"])
            assert subject["commonName"] == want, name
            assert https_request(s, host=name).status == 200
    # a name no certificate covers gets the first (default) one
    loose = client_context(pki.ca[0], check_hostname=False)
    with tls_connect(u.port, loose, "unknown.test") as s:
        assert dict(x[0] for x in s.getpeercert()["subject"])["commonName"] == "api.test"
    # ALPN: http/1.1 is chosen when offered
    alpn = client_context(pki.ca[0])
    alpn.set_alpn_protocols(["h2", "http/1.1"])
    with tls_connect(u.port, alpn, "api.test") as s:
        assert s.selected_alpn_protocol() == "http/1.1"


def test_client_certificates_required_and_subject_passed(procs, pki):
    u, b = tls_proxy(procs, pki, client_ca=pki.client_ca[0], client_subject_header="X-Client-Subject")
    # no certificate: refused, counted
    assert request_fails(u.port, client_context(pki.ca[0]))
    wait_tls_error(u, "downstream", "ingress", "no_certificate")
    # a certificate from a CA the listener does not trust: refused, counted
    assert request_fails(u.port, client_context(pki.ca[0], cert=pki.rogue_client))
    wait_tls_error(u, "downstream", "ingress", "verify")
    assert b.requests == []
    # the right one: the subject goes upstream, a forged header does not
    with tls_connect(u.port, client_context(pki.ca[0], cert=pki.client), "api.test") as s:
        resp = https_request(s, headers=[("X-Client-Subject", "CN=admin"), ("x-client-subject", "O=evil")])
        assert resp.status == 200
        resp2 = https_request(s)
    assert echoed_headers(resp)["x-client-subject"] == ["CN=client1,O=Umbra Tests"]
    assert echoed_headers(resp2)["x-client-subject"] == ["CN=client1,O=Umbra Tests"]
    assert echoed_headers(resp)["x-forwarded-proto"] == ["https"]


def test_plaintext_on_a_tls_listener_is_refused_and_counted(procs, pki):
    u, b = tls_proxy(procs, pki)
    with Client(u.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
        got = c.read_raw(timeout=5.0)
    assert not got.startswith(b"HTTP/"), got[:100]
    wait_tls_error(u, "downstream", "ingress", "plaintext")
    assert b.heads == []
    # TLS clients are unaffected
    with tls_connect(u.port, client_context(pki.ca[0]), "api.test") as s:
        assert https_request(s).status == 200


def test_stalled_client_handshake_times_out(procs, pki):
    u, _ = tls_proxy(procs, pki, limits={"header_timeout": "500ms"})
    with Client(u.port) as c:
        t0 = time.monotonic()
        assert c.is_closed(timeout=5.0)  # no ClientHello: closed, no 408 in plaintext
        assert time.monotonic() - t0 < 3.0
    wait_tls_error(u, "downstream", "ingress", "timeout")


def test_session_resumption_downstream(procs, pki):
    u, _ = tls_proxy(procs, pki)
    ctx = client_context(pki.ca[0])
    with tls_connect(u.port, ctx, "api.test") as s:
        assert https_request(s).status == 200  # reading an answer also reads the session tickets
        session = s.session
        assert not s.session_reused
    with tls_connect(u.port, ctx, "api.test", session=session) as s:
        assert s.session_reused
        assert https_request(s).status == 200
    assert msum(u.metrics(), "umbra_tls_sessions_resumed_total", side="downstream", name="ingress") >= 1


def test_open_connections_by_mode(procs, pki):
    u, _ = tls_proxy(procs, pki)
    s = tls_connect(u.port, client_context(pki.ca[0]), "api.test")
    try:
        assert https_request(s).status == 200
        open_now = stats_json(u)["tls"]["downstream"]["ingress"]["open"]
        assert sum(open_now.values()) == 1, open_now
    finally:
        s.close()
    wait_until(lambda: sum(stats_json(u)["tls"]["downstream"]["ingress"]["open"].values()) == 0,
               what="the TLS connection to be counted closed")


# ---------------------------------------------------------------- TLS to the primary

def upstream_tls(pki, **extra):
    t = {"ca": pki.ca[0]}
    t.update(extra)
    return t


def primary_proxy(procs, backend, tls, connect_timeout="1s", **top):
    cfg = make_config({"primary": {"endpoints": [backend], "tls": tls, "connect_timeout": connect_timeout}},
                      workers=1, **top)
    return procs.umbra(cfg)


@pytest.mark.parametrize("sni", [None, "upstream.test"])
def test_primary_over_tls(procs, pki, sni):
    b = tls_backend(procs, "tls-primary", server_context(pki.upstream))
    tls = upstream_tls(pki, **({"sni": sni} if sni else {}))
    u = primary_proxy(procs, b, tls)
    with Client(u.port) as c:
        for i in range(5):  # keep-alive: one TLS connection carries them all
            resp = c.request("POST", "/p/%d" % i, body=b"x" * (100 * 1024 + i))
            assert resp.status == 200
            assert json.loads(resp.body)["body_len"] == 100 * 1024 + i
    big = u.get("/big", headers=[("X-Backend-Mode", "big; size=%d" % (3 * MB))])
    assert big.status == 200 and big.body_len == 3 * MB
    assert b.tls_failures == [] and b.tls_ok >= 1
    m = u.metrics()
    assert msum(m, "umbra_tls_handshakes_total", side="upstream", name="primary") == b.tls_ok
    assert m.sum("umbra_upstream_errors_total", cluster="primary", reason="tls") == 0


def test_upstream_session_resumption(procs, pki):
    # close-after: every request needs a new connection, hence a handshake
    b = tls_backend(procs, "tls-primary", server_context(pki.upstream), mode="close-after")
    u = primary_proxy(procs, b, upstream_tls(pki))
    for i in range(4):
        assert u.get("/r/%d" % i).status == 200
    wait_until(lambda: len(b.reused) >= 4, what="four handshakes")
    assert b.reused[0] is False
    assert all(b.reused[1:]), b.reused
    assert msum(u.metrics(), "umbra_tls_sessions_resumed_total", side="upstream", name="primary") >= 3


PRIMARY_FAULTS = {
    # (server certificate, client CA the server requires, umbra's client cert) -> (error reason, TLS reason)
    "untrusted": ("untrusted", None, None, "tls", "verify"),
    "expired": ("expired", None, None, "tls", "verify"),
    "wrong_name": ("www", None, None, "tls", "verify"),
    "needs_client_cert": ("upstream", "client_ca", None, "tls", "alert"),
    "plaintext": (None, None, None, "tls", "protocol"),
    "stall": ("stall", None, None, "connect_timeout", "timeout"),
}


@pytest.mark.parametrize("case", sorted(PRIMARY_FAULTS))
def test_primary_tls_failures_are_502(procs, pki, case):
    cert, client_ca, _, reason, tls_reason = PRIMARY_FAULTS[case]
    if cert in ("stall", None):
        peer = StallServer() if cert else PlainAnswerServer()
        procs.backends.append(peer)
    else:
        ca = getattr(pki, client_ca)[0] if client_ca else None
        peer = tls_backend(procs, "tls-primary", server_context(getattr(pki, cert), client_ca=ca))
    u = primary_proxy(procs, peer, upstream_tls(pki), connect_timeout="500ms")
    t0 = time.monotonic()
    resp = u.get("/x")
    assert resp.status == 502
    if case == "stall":
        assert time.monotonic() - t0 < 3.0  # bounded by connect_timeout
    m = u.metrics()
    assert m.sum("umbra_upstream_errors_total", cluster="primary", reason=reason) == 1
    wait_tls_error(u, "upstream", "primary", tls_reason)
    if isinstance(peer, Backend):
        assert peer.requests == []


# ---------------------------------------------------------------- TLS to shadows

N = 60

SHADOW_CASES = {
    # shadow's certificate, client CA it requires, umbra's client cert -> outcome, TLS reason
    "mtls_ok": ("upstream", "client_ca", "mirror_client", "completed", None),
    "no_client_cert": ("upstream", "client_ca", None, "failed_tls", "alert"),
    "wrong_client_cert": ("upstream", "client_ca", "rogue_client", "failed_tls", "alert"),
    "untrusted": ("untrusted", None, None, "failed_tls", "verify"),
    "expired": ("expired", None, None, "failed_tls", "verify"),
    "plaintext": (None, None, None, "failed_tls", "protocol"),
    # accepts TCP, never answers the ClientHello: the connect timeout covers
    # the handshake, so this is failed_connect (and a TLS "timeout")
    "stall": ("stall", None, None, "failed_connect", "timeout"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(SHADOW_CASES))
def test_shadow_tls(procs, peers, pki, case):  # noqa: F811
    cert, client_ca, client_cert, outcome, tls_reason = SHADOW_CASES[case]
    if cert in ("stall", None):
        shadow = StallServer() if cert else PlainAnswerServer()
        procs.backends.append(shadow)
    else:
        ca = getattr(pki, client_ca)[0] if client_ca else None
        shadow = tls_backend(procs, "tls-shadow", server_context(getattr(pki, cert), client_ca=ca))
    tls = {"ca": pki.ca[0], "sni": "upstream.test"}
    if client_cert:
        c, k = getattr(pki, client_cert)
        tls.update(cert=c, key=k)
    primary = peers.primary()
    # Python's TLS server needs time for 60 handshakes at once; the stall
    # case keeps a short connect timeout to show it bounds the handshake
    connect_timeout = "250ms" if case == "stall" else "5s"
    cfg = mirror_config(primary, {"shadow": {"endpoints": [shadow.addr], "tls": tls, "timeout": "10s",
                                             "connect_timeout": connect_timeout,
                                             "circuit_breaker": {"consecutive_failures": 0}}},
                        [{"cluster": "shadow"}])
    u = procs.umbra(cfg)
    res = run_load(u.port, N, threads=3, seconds=60)
    assert res.failed == 0 and res.ok == N, res  # the primary never notices
    t_load = time.monotonic()
    got = wait_outcomes(u, N)
    settle = time.monotonic() - t_load
    assert got == {outcome: N}, got
    m = u.metrics()
    if outcome == "completed":
        wait_until(lambda: len(shadow.requests) == N, what="every copy at the shadow")
        assert {s["commonName"] for s in shadow.peer_subjects} == {"umbra-mirror"}
        assert tls_errors(u, "upstream", "shadow", m) == {}
        assert m.sum("umbra_upstream_errors_total", cluster="shadow", reason="tls") == 0
        return
    # nothing reached the shadow's HTTP layer
    if isinstance(shadow, Backend):
        assert shadow.requests == []
    errs = tls_errors(u, "upstream", "shadow", m)
    assert set(errs) == {tls_reason} and errs[tls_reason] >= 1, errs
    assert m.sum("umbra_upstream_errors_total", cluster="primary") == 0
    if case == "stall":
        assert errs["timeout"] == N  # each copy's handshake was cut by connect_timeout
        assert settle < 5.0  # after connect_timeout (250ms), not the 10s request timeout
    else:
        assert m.sum("umbra_upstream_errors_total", cluster="shadow", reason="tls") == N


# ---------------------------------------------------------------- reload

@pytest.mark.timeout(120)
def test_certificate_reload_under_load(procs, pki, tmp_path):
    cert, key = str(tmp_path / "live.pem"), str(tmp_path / "live.key")
    shutil.copy(pki.api[0], cert)
    shutil.copy(pki.api[1], key)
    old_serial = serial_of(cert)
    renewed = pki.issue("api-renewed", "api.test", ["DNS:api.test", "IP:127.0.0.1"])
    new_serial = serial_of(renewed[0])
    assert new_serial != old_serial
    u, _ = tls_proxy(procs, pki, certs=[(cert, key)], workers=2)
    ctx = client_context(pki.ca[0])
    load = HttpsLoad(u.port, ctx, "api.test", threads=3, per_thread=120, new_conn_every=6).start()
    wait_until(lambda: load.ok >= 60 or load.done(), 60, what="load under way")
    for src, dst in ((renewed[0], cert), (renewed[1], key)):
        shutil.copy(src, dst + ".tmp")
        os.replace(dst + ".tmp", dst)
    t_reload = time.monotonic()
    u.reload_signal()
    wait_until(lambda: "generation 2" in u.log(), 10, what="the reload")
    with tls_connect(u.port, ctx, "api.test") as s:  # a new connection sees the new certificate
        assert int(s.getpeercert()["serialNumber"], 16) == new_serial
        assert https_request(s).status == 200
    load.join()
    assert load.failures == [], load.failures[:5]
    assert load.ok == 3 * 120
    serials = {s for t, s in load.serials}
    assert old_serial in serials
    if any(t > t_reload + 0.5 for t, _ in load.serials):
        assert new_serial in serials


def test_reload_with_a_broken_certificate_keeps_the_old_one(procs, pki, tmp_path):
    cert, key = str(tmp_path / "live.pem"), str(tmp_path / "live.key")
    shutil.copy(pki.api[0], cert)
    shutil.copy(pki.api[1], key)
    u, _ = tls_proxy(procs, pki, certs=[(cert, key)])
    with open(cert, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    status, body = u.admin("POST", "/reload")
    assert status != 200
    text = body.decode()
    assert "live.pem" in text and "certificate 1 does not parse" in text, text
    assert ":" in text.split("live.pem")[0]  # FILE:LINE:COLUMN
    with tls_connect(u.port, client_context(pki.ca[0]), "api.test") as s:
        assert int(s.getpeercert()["serialNumber"], 16) == serial_of(pki.api[0])
        assert https_request(s).status == 200
    # the key matches no more: refused as well
    shutil.copy(pki.www[0], cert)
    status, body = u.admin("POST", "/reload")
    assert status != 200 and b"does not belong to the certificate" in body, body


# ---------------------------------------------------------------- kernel TLS, stats

def kernel_has_tls():
    try:
        with open("/proc/sys/net/ipv4/tcp_available_ulp") as f:
            return "tls" in f.read().split()
    except OSError:
        return False


def test_ktls_works_or_falls_back_and_stats_show_the_mode(procs, pki):
    b = tls_backend(procs, "tls-primary", server_context(pki.upstream))
    cfg = make_config({"primary": {"endpoints": [b], "tls": upstream_tls(pki, ktls=True)}}, workers=1,
                      listener_extra={"tls": listener_tls([pki.api], ktls=True)})
    u = procs.umbra(cfg)
    ctx = client_context(pki.ca[0])
    with tls_connect(u.port, ctx, "api.test") as s:
        for i in range(3):
            resp = https_request(s, "POST", "/k/%d" % i, body=b"k" * 50000)
            assert resp.status == 200 and json.loads(resp.body)["body_len"] == 50000
        big = https_request(s, headers=[("X-Backend-Mode", "big; size=%d" % MB)])
        assert big.status == 200 and big.body_len == MB
    tls = stats_json(u)["tls"]
    down = tls["downstream"]["ingress"]["handshakes"]
    up = tls["upstream"]["primary"]["handshakes"]
    assert set(down) == {"userspace", "ktls_tx", "ktls_rx", "ktls"}
    assert sum(down.values()) == 1 and sum(up.values()) >= 1
    if not kernel_has_tls():  # no "tls" ULP: the silent fallback to user space
        assert down["userspace"] == 1 and up["userspace"] == sum(up.values())
    print("kTLS modes: downstream %s, upstream %s" % (down, up))
    m = u.metrics()
    assert msum(m, "umbra_tls_handshakes_total", side="downstream", name="ingress") == 1


def test_resolved_endpoints_in_stats(procs):
    b = procs.backend("b1")
    u = procs.umbra(make_config({"primary": ["localhost:%d" % b.port]}, workers=1))
    assert u.get("/").status == 200

    def resolved():
        eps = stats_json(u)["resolved"]["primary"]["endpoints"]
        return eps

    eps = resolved()
    assert eps[0]["endpoint"] == "localhost:%d" % b.port
    assert eps[0]["address"] in ("127.0.0.1:%d" % b.port, "[::1]:%d" % b.port)
    u.reload_signal()
    wait_until(lambda: "generation 2" in u.log(), 10, what="the reload")
    assert resolved()[0]["endpoint"] == "localhost:%d" % b.port


# ---------------------------------------------------------------- umbra check

def test_check_reports_tls_file_errors(pki, umbra_bin, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    encrypted = str(tmp_path / "enc.key")
    subprocess.run(["openssl", "pkey", "-in", pki.api[1], "-aes256", "-passout", "pass:secret", "-out",
                    encrypted], check=True, timeout=30, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = tmp_path / "umbra.yaml"
    cfg.write_text("""listeners:
  - name: a
    listen: 127.0.0.1:0
    tls:
      certificates:
        - {cert: /nonexistent/x.pem, key: %(key)s}
        - {cert: %(garbage)s, key: %(key)s}
        - {cert: %(www)s, key: %(key)s}
        - {cert: %(cert)s, key: %(enc)s}
      alpn: [h2]
      min_version: TLSv1.0
      client_subject_header: x-client-subject
clusters:
  - name: c
    endpoints: [127.0.0.1:1]
    tls: {cert: %(cert)s, sni: 10.0.0.1}
routes:
  - {name: r, match: {prefix: /}, cluster: c}
""" % {"key": pki.api[1], "garbage": garbage, "www": pki.www[0], "cert": pki.api[0], "enc": encrypted})
    p = subprocess.run([umbra_bin, "check", "-c", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=30)
    assert p.returncode == 1
    lines = p.stdout.decode().splitlines()
    path = str(cfg)

    def at(line, col, *words):
        want = "%s:%d:%d:" % (path, line, col)
        hits = [x for x in lines if x.startswith(want) and all(w in x for w in words)]
        assert hits, "no error at %d:%d with %s in:\n%s" % (line, col, words, "\n".join(lines))

    def after(prefix, path_before, sep):
        return len(prefix) + len(str(path_before)) + len(sep) + 1

    item = "        - {cert: "
    at(6, len(item) + 1, "tls.certificates[0].cert", "cannot open", "No such file")
    at(7, len(item) + 1, "tls.certificates[1].cert", "no PEM certificate")
    at(8, after(item, pki.www[0], ", key: "), "tls.certificates[2].key", "does not belong to the certificate")
    at(9, after(item, pki.api[0], ", key: "), "tls.certificates[3].key", "encrypted")
    at(10, 14, "alpn[0]", "h2 is not supported yet")
    at(11, 20, "min_version", "TLSv1.2 or TLSv1.3")
    at(12, 30, "client_subject_header", "needs client_ca")
    at(16, 17, "tls.cert", "cert needs key")
    at(16, after("    tls: {cert: ", pki.api[0], ", sni: "), "tls.sni", "DNS names only")
