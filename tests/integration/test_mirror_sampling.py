"""Sampling: a mirror's fraction picks that share of requests, within binomial
bounds, counted the same at the shadow and in the metrics (completed +
sampled_out == requests); both the percentage and the {numerator,
denominator} forms; 0 % sends nothing."""

import math

import pytest

from harness import make_config, wait_until
from shadows import only, outcomes, peers, run_load, sampled_out  # noqa: F401


def sampling_config(primary, col, fractions):
    """One route per fraction, /<name>/ -> primary, mirrored to col with it."""
    routes = [{"name": name, "match": {"prefix": "/%s/" % name}, "cluster": "primary",
               "mirrors": [{"cluster": "shadow", "fraction": frac}]} for name, frac in fractions.items()]
    return make_config({"primary": [primary], "shadow": {"endpoints": [col], "connect_timeout": "250ms"}},
                       routes=routes)


def check_sampled(u, route, n, p, sigmas=5.0):
    """The route's copies (ended, all completed) are n*p within `sigmas`
    binomial standard deviations, and the metrics account for every request."""
    wait_until(lambda: sum(outcomes(u, route).values()) + sampled_out(u, route) >= n, 15, 0.1,
               "route %s: completed + sampled_out to reach %d" % (route, n))
    d, out = outcomes(u, route), sampled_out(u, route)
    copies = d.get("completed", 0)
    assert not only(d, "completed"), "route %s: copies did not all complete: %s" % (route, d)
    assert copies + out == n, "route %s: completed %d + sampled_out %d != %d requests" % (route, copies, out, n)
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    assert abs(copies - mean) <= sigmas * sd, "route %s: %d copies of %d at p=%g (expected %.0f +- %.0f)" % (
        route, copies, n, p, mean, sigmas * sd)
    return copies


@pytest.mark.timeout(150)
def test_fractions_within_binomial_bounds(procs, peers):
    primary = peers.primary()
    col = peers.collector()
    u = procs.umbra(sampling_config(primary, col, {"pct": "5%", "frac": {"numerator": 1, "denominator": 4},
                                                   "none": "0%"}))
    cases = [("pct", 20000, 0.05), ("frac", 4000, 0.25), ("none", 500, 0.0)]
    total = 0
    for route, n, p in cases:
        res = run_load(u.port, n, threads=4, seconds=100, prefix="/%s/load" % route)
        assert res.failed == 0 and res.ok == n, res
        copies = check_sampled(u, route, n, p)
        total += copies
        # the collector saw exactly the copies the metrics count, of this route only
        recs = col.wait_count(total, 10)
        assert len(recs) == total, (len(recs), total)
        assert sum(1 for r in recs if r["target"].startswith("/%s/" % route)) == copies
    assert outcomes(u, "none") == {} and sampled_out(u, "none") == 500
