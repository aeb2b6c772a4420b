"""Live mirror fractions: GET /runtime lists every mirror's key;
POST /runtime?KEY=VALUE changes the share at once on every worker (0 stops,
100 sends all), rejects bad values and unknown keys with 400 leaving the value
as it was, survives a SIGHUP reload, and an empty value returns to the
configured fraction."""

import json
import math
import re

import pytest

from harness import Client, make_config, wait_until
from shadows import outcomes, peers, run_load, sampled_out  # noqa: F401


def runtime_config(primary, main, side, main_fraction="100%", extra_route=False):
    routes = [{"name": "api", "match": {"prefix": "/"}, "cluster": "primary", "mirrors": [
        {"cluster": "shadow", "fraction": main_fraction},
        {"cluster": "side", "fraction": "0.5%", "runtime_key": "custom.side"}]}]
    if extra_route:
        routes.insert(0, {"name": "v2", "match": {"prefix": "/v2/"}, "cluster": "primary"})
    clusters = {"primary": [primary], "shadow": {"endpoints": [main], "connect_timeout": "250ms"},
                "side": {"endpoints": [side], "connect_timeout": "250ms"}}
    return make_config(clusters, routes=routes)


def runtime(u):
    status, body = u.admin("GET", "/runtime")
    assert status == 200, (status, body)
    return json.loads(body)


def post(u, query):
    return u.admin("POST", "/runtime?" + query)


def send(u, n, prefix):
    res = run_load(u.port, n, threads=4, prefix=prefix, seconds=60)
    assert res.failed == 0 and res.ok == n, res


def accounted_total(u):
    return sum(outcomes(u, "api", "shadow").values()) + sampled_out(u, "api", "shadow")


def copies_after(u, col, n, prefix):
    """Sends n requests under prefix; returns how many the main mirror copied,
    once the metrics account for all n (completed + sampled_out), after
    checking that the collector holds exactly those copies."""
    acc0 = accounted_total(u)
    done0 = outcomes(u, "api", "shadow").get("completed", 0)
    send(u, n, prefix)
    wait_until(lambda: accounted_total(u) >= acc0 + n, 10, 0.05,
               "the main mirror to account for %d more requests" % n)
    d = outcomes(u, "api", "shadow")
    assert set(d) <= {"completed"}, d
    assert accounted_total(u) == acc0 + n
    new = d.get("completed", 0) - done0
    recs = col.wait_count(d.get("completed", 0), 10)
    got = [r for r in recs if r["target"].startswith(prefix + "/")]
    assert len(got) == new, "collector has %d copies under %s, metrics say %d" % (len(got), prefix, new)
    return new


@pytest.mark.timeout(90)
def test_runtime_fraction_live(procs, peers):
    primary = peers.primary()
    main, side = peers.collector("main"), peers.collector("side")
    u = procs.umbra(runtime_config(primary, main, side))
    assert runtime(u) == {"mirror.api.shadow": 100, "custom.side": 0.5}

    # 0 stops copies at once, on every worker
    status, body = post(u, "mirror.api.shadow=0")
    assert status == 200, body
    assert runtime(u)["mirror.api.shadow"] == 0
    assert copies_after(u, main, 300, "/off") == 0
    assert main.count() == 0
    assert sampled_out(u, "api", "shadow") == 300

    # 100: every request is copied
    assert post(u, "mirror.api.shadow=100")[0] == 200
    assert copies_after(u, main, 300, "/all") == 300

    # 5: a binomial share
    assert post(u, "mirror.api.shadow=5")[0] == 200
    assert runtime(u)["mirror.api.shadow"] == 5
    n, p = 2000, 0.05
    got = copies_after(u, main, n, "/five")
    assert abs(got - n * p) <= 5 * math.sqrt(n * p * (1 - p)), got

    # the other key is independent; 2.5 and "2.5%" both mean 2.5 %
    assert post(u, "custom.side=2.5")[0] == 200
    assert runtime(u) == {"mirror.api.shadow": 5, "custom.side": 2.5}
    assert post(u, "custom.side=3%25")[0] == 200
    assert runtime(u)["custom.side"] == 3


BAD = ["mirror.api.shadow=abc", "mirror.api.shadow=101", "mirror.api.shadow=-1", "mirror.api.shadow=1e2",
       "mirror.api.shadow=5%25%25", "mirror.api.shadow=%20", "mirror.api.shadow=50x", "mirror.api.shadow=0x10",
       "mirror.api.nope=5", "no.such.key=5", "mirror.api.shadow", "=5", ""]


@pytest.mark.timeout(60)
def test_runtime_rejects_bad_requests(procs, peers):
    primary = peers.primary()
    main, side = peers.collector("main"), peers.collector("side")
    u = procs.umbra(runtime_config(primary, main, side))
    assert post(u, "mirror.api.shadow=7")[0] == 200
    before = runtime(u)
    assert before == {"mirror.api.shadow": 7, "custom.side": 0.5}
    for query in BAD:
        status, body = post(u, query)
        assert status == 400, (query, status, body)
        assert runtime(u) == before, query
    # an unknown key next to a good one: the good one before it applies, the
    # request still fails (documented: pairs apply in order, no rollback)
    status, _ = post(u, "custom.side=1&no.such.key=5")
    assert status == 400
    assert runtime(u) == {"mirror.api.shadow": 7, "custom.side": 1}


@pytest.mark.timeout(90)
def test_runtime_override_survives_reload_and_resets(procs, peers):
    primary = peers.primary()
    main, side = peers.collector("main"), peers.collector("side")
    u = procs.umbra(runtime_config(primary, main, side, main_fraction="100%"))
    assert post(u, "mirror.api.shadow=0")[0] == 200

    # reload (SIGHUP) a file that changes the configured fraction and adds a route
    u.write_config(runtime_config(primary, main, side, main_fraction="50%", extra_route=True))
    u.reload_signal()

    def reloaded():
        with Client(u.port) as c:
            return c.request("GET", "/v2/probe").status == 200 and re.search(r"reloaded .*generation", u.log())

    wait_until(reloaded, 10, 0.1, "the SIGHUP reload to take effect (/v2/ routed)")
    assert runtime(u)["mirror.api.shadow"] == 0, "the override did not survive the reload"
    assert copies_after(u, main, 200, "/after-reload") == 0
    assert main.count() == 0

    # an empty value returns to the configured fraction: the reloaded 50 %
    status, body = post(u, "mirror.api.shadow=")
    assert status == 200, body
    assert runtime(u)["mirror.api.shadow"] == 50
    n = 600
    got = copies_after(u, main, n, "/reset")
    assert abs(got - n * 0.5) <= 5 * math.sqrt(n * 0.25), got
