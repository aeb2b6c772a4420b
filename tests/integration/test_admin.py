"""The admin listener: /healthz, /metrics (Prometheus text with the counters
and histograms the contract names, moving by what was sent), /stats JSON."""

import json

from harness import Client, Metrics, make_config, wait_until


def test_healthz(proxy):
    status, body = proxy.umbra.admin("GET", "/healthz")
    assert status == 200, body


def test_unknown_admin_path_404(proxy):
    status, _ = proxy.umbra.admin("GET", "/no-such-admin-page")
    assert status == 404


def test_metrics_count_requests(procs):
    b = procs.backend()
    routes = [{"name": "api", "match": {"prefix": "/api/"}, "cluster": "primary"}]
    u = procs.umbra(make_config({"primary": [b]}, routes=routes))
    m0 = u.metrics()
    n = 7
    with Client(u.port) as c:
        for i in range(n):
            assert c.request("GET", "/api/%d" % i).status == 200
        assert c.request("GET", "/unrouted").status == 404
    want = {
        ("umbra_downstream_requests_total", ()): n + 1,
        ("umbra_downstream_responses_total", (("code", "200"),)): n,
        ("umbra_downstream_responses_total", (("code", "404"),)): 1,
        ("umbra_upstream_requests_total", (("cluster", "primary"),)): n,
    }

    def deltas():
        m = u.metrics()
        return {k: m.sum(k[0], **dict(k[1])) - m0.sum(k[0], **dict(k[1])) for k in want}

    # counters move when a response ends inside umbra, which may be just
    # after the client has read it: poll until they settle
    try:
        wait_until(lambda: deltas() == want, 3, 0.05, "the counters to count the requests")
    except AssertionError:
        assert deltas() == want
    m1 = u.metrics()
    assert m1.select("umbra_downstream_responses_total", code="200"), m1.text
    assert m1.select("umbra_upstream_requests_total", cluster="primary"), m1.text


def test_metrics_format_and_histograms(proxy):
    for i in range(3):
        assert proxy.umbra.get("/h/%d" % i).status == 200
    def observed():
        m = proxy.umbra.metrics()
        return m if m.sum("umbra_downstream_request_duration_seconds_bucket", le="+Inf") >= 3 else None

    m = wait_until(observed, 3, 0.05, "3 observations in umbra_downstream_request_duration_seconds")
    text = m.text
    # every family has a TYPE line, every sample belongs to a declared family
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            types[name] = kind
    assert all(name.startswith("umbra_") for name, _, _ in m.samples), "unprefixed metric"
    for name, _, _ in m.samples:
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in types:
                family = name[: -len(suffix)]
        assert family in types, "sample %s has no # TYPE line" % name

    hists = [n for n, k in types.items() if k == "histogram"]
    assert hists, "no histogram in /metrics"
    assert "_bucket" in text
    for h in hists:
        series = {}
        for name, labels, value in m.samples:
            if name == h + "_bucket":
                key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
                series.setdefault(key, []).append((labels["le"], value))
        for key, buckets in series.items():
            values = [v for _, v in buckets]
            assert buckets[-1][0] == "+Inf", "%s%s: last bucket %s" % (h, key, buckets[-1])
            assert values == sorted(values), "%s%s: buckets not cumulative: %s" % (h, key, buckets)
            bounds = [float(le) for le, _ in buckets[:-1]]
            assert bounds == sorted(bounds)
            count = [v for n, l, v in m.samples if n == h + "_count" and
                     tuple(sorted((k, x) for k, x in l.items())) == key]
            assert count == [values[-1]], "%s%s: _count %s != +Inf bucket %s" % (h, key, count, values[-1])
    dur = [h for h in hists if h.startswith("umbra_downstream_request_duration")]
    assert dur, "no downstream duration histogram: %s" % hists
    inf = m.sum(dur[0] + "_bucket", le="+Inf")
    assert inf >= 3


def test_stats_is_json(proxy):
    assert proxy.umbra.get("/s").status == 200
    status, body = proxy.umbra.admin("GET", "/stats")
    assert status == 200
    data = json.loads(body)
    assert isinstance(data, dict) and data


def test_metrics_parser_rejects_garbage():
    # the helper the other tests rely on must not accept anything
    try:
        Metrics("umbra_x{a=\"1\"} 1\nnot a metric line at all\n")
    except ValueError:
        return
    raise AssertionError("parser accepted a bad line")


def test_worker_loop_figures(procs):
    """Each worker reports its own loop: iterations move with traffic, nothing
    is stalled while idle, and what is in flight drops back to zero."""
    b = procs.backend()
    u = procs.umbra(make_config({"primary": [b]}, workers=2))
    for k in range(4):  # several connections, so both workers are likely to take part
        with Client(u.port) as c:
            for i in range(5):
                assert c.request("GET", "/loop/%d/%d" % (k, i)).status == 200

    def loops():
        status, body = u.admin("GET", "/stats")
        assert status == 200, body
        return json.loads(body)["worker_loops"]

    wait_until(lambda: sum(w["iterations"] for w in loops()) >= 20, 5, what="loop iterations to count requests")
    got = loops()
    assert sorted(w["worker"] for w in got) == [0, 1], got
    for w in got:
        assert w["stalled_seconds"] < 1.0, got  # idle workers wait in poll
        assert w["busy_max_seconds"] >= 0, got
    wait_until(lambda: all(w["primary_streams"] == 0 and w["downstream_connections"] == 0 for w in loops()),
               5, what="nothing in flight once the clients are gone")
    m = u.metrics()
    for name in ("umbra_worker_loop_stalled_seconds", "umbra_worker_loop_busy_max_seconds",
                 "umbra_worker_loop_iterations_total", "umbra_worker_primary_streams_in_flight"):
        assert sorted(m.by_label(name, "worker")) == ["0", "1"], name
    assert 20 <= m.sum("umbra_worker_loop_iterations_total") <= sum(w["iterations"] for w in loops())
