/* router_test — route selection over configs loaded from YAML: prefix, exact
 * and regex paths (the query never takes part), host (case-insensitive, port
 * ignored, IPv6 literals), methods, all conditions together, first match wins,
 * and no match. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/config.h"
#include "http/router.h"

#define HEAD                                                                                    \
    "listeners: [{name: l, listen: 127.0.0.1:0}]\n"                                             \
    "clusters: [{name: c, endpoints: [127.0.0.1:9000]}]\n"

/* Loads HEAD + `routes`; the test fails on any configuration error. */
static struct config *load(const char *routes)
{
    char yaml[4096];
    snprintf(yaml, sizeof yaml, "%s%s", HEAD, routes);
    char *errs = NULL;
    size_t elen = 0;
    FILE *f = open_memstream(&errs, &elen);
    assert_non_null(f);
    config_set_resolve_names(false);
    struct config *cfg = config_load_string("router.yaml", yaml, strlen(yaml), f);
    fclose(f);
    if (!cfg) print_error("config errors:\n%s", errs);
    free(errs);
    assert_non_null(cfg);
    return cfg;
}

/* The name of the route chosen for (method, host, target), or NULL. */
static const char *pick(const struct config *cfg, const char *method, const char *host,
                        const char *target)
{
    struct http_request r;
    memset(&r, 0, sizeof r);
    r.method = (struct h1_str){method, strlen(method)};
    r.authority = (struct h1_str){host, strlen(host)};
    r.path = (struct h1_str){target, strlen(target)};
    const struct cfg_route *route = router_match(cfg, &r);
    return route ? route->name : NULL;
}

/* Route name, or "(none)", so a mismatch prints readably. */
static const char *pick_s(const struct config *cfg, const char *method, const char *host,
                          const char *target)
{
    const char *n = pick(cfg, method, host, target);
    return n ? n : "(none)";
}

#define GET(cfg, target) pick_s(cfg, "GET", "example.com", target)

static int teardown(void **state)
{
    config_free(*state);
    *state = NULL;
    router_thread_cleanup();
    return 0;
}

static void test_prefix(void **state)
{
    struct config *cfg = *state = load("routes: [{name: api, match: {prefix: /api}, cluster: c}]\n");
    assert_string_equal(GET(cfg, "/api"), "api");
    assert_string_equal(GET(cfg, "/api/v1/users"), "api");
    assert_string_equal(GET(cfg, "/apiary"), "api"); /* a byte prefix, as Envoy's prefix */
    assert_string_equal(GET(cfg, "/api?x=1"), "api");
    assert_string_equal(GET(cfg, "/ap"), "(none)");
    assert_string_equal(GET(cfg, "/API"), "(none)"); /* paths are case-sensitive */
    assert_string_equal(GET(cfg, "/v1/api"), "(none)");
    /* The prefix must be in the path itself, not borrowed from the query. */
    assert_string_equal(GET(cfg, "/?/api"), "(none)");
    assert_string_equal(GET(cfg, "/a?pi"), "(none)");
}

static void test_exact(void **state)
{
    struct config *cfg = *state = load("routes: [{name: x, match: {exact: /health}, cluster: c}]\n");
    assert_string_equal(GET(cfg, "/health"), "x");
    assert_string_equal(GET(cfg, "/health?verbose=1"), "x");
    assert_string_equal(GET(cfg, "/health?"), "x");
    assert_string_equal(GET(cfg, "/health/"), "(none)");
    assert_string_equal(GET(cfg, "/healthz"), "(none)");
    assert_string_equal(GET(cfg, "/healt"), "(none)");
    assert_string_equal(GET(cfg, "/"), "(none)");
}

static void test_regex(void **state)
{
    struct config *cfg = *state = load("routes:\n"
                                       "  - {name: items, match: {regex: '^/v[0-9]+/items$'}, cluster: c}\n"
                                       "  - {name: tok, match: {regex: 'token'}, cluster: c}\n");
    assert_string_equal(GET(cfg, "/v1/items"), "items");
    assert_string_equal(GET(cfg, "/v42/items"), "items");
    /* "$" is the end of the path: the query is not part of the subject. */
    assert_string_equal(GET(cfg, "/v2/items?page=3"), "items");
    assert_string_equal(GET(cfg, "/v2/items/7"), "(none)");
    assert_string_equal(GET(cfg, "/vx/items"), "(none)");
    assert_string_equal(GET(cfg, "/x/v2/items"), "(none)");
    /* Unanchored patterns match anywhere in the path ... */
    assert_string_equal(GET(cfg, "/auth/token/refresh"), "tok");
    /* ... but never in the query. */
    assert_string_equal(GET(cfg, "/auth?token=1"), "(none)");
    /* Many matches in a row reuse the thread's match data. */
    for (int i = 0; i < 100; i++) assert_string_equal(GET(cfg, "/v7/items"), "items");
}

static void test_host(void **state)
{
    struct config *cfg = *state = load("routes:\n"
                                       "  - {name: h, match: {prefix: /, host: Example.COM}, cluster: c}\n");
    assert_string_equal(pick_s(cfg, "GET", "example.com", "/"), "h");
    assert_string_equal(pick_s(cfg, "GET", "EXAMPLE.com", "/"), "h");
    assert_string_equal(pick_s(cfg, "GET", "example.com:8080", "/"), "h");
    assert_string_equal(pick_s(cfg, "GET", "example.com:", "/"), "h");
    assert_string_equal(pick_s(cfg, "GET", "www.example.com", "/"), "(none)");
    assert_string_equal(pick_s(cfg, "GET", "example.com.evil", "/"), "(none)");
    assert_string_equal(pick_s(cfg, "GET", "example.co", "/"), "(none)");
    assert_string_equal(pick_s(cfg, "GET", "example.co:m", "/"), "(none)");
    assert_string_equal(pick_s(cfg, "GET", "", "/"), "(none)");
}

static void test_host_ipv6(void **state)
{
    struct config *cfg = *state = load("routes:\n"
                                       "  - {name: v6, match: {prefix: /, host: '[::1]'}, cluster: c}\n"
                                       "  - {name: v6b, match: {prefix: /, host: '[2001:DB8::1]'}, cluster: c}\n");
    /* The colons inside the brackets are not a port separator. */
    assert_string_equal(pick_s(cfg, "GET", "[::1]", "/"), "v6");
    assert_string_equal(pick_s(cfg, "GET", "[::1]:8080", "/"), "v6");
    assert_string_equal(pick_s(cfg, "GET", "[2001:db8::1]:443", "/"), "v6b");
    assert_string_equal(pick_s(cfg, "GET", "[2001:db8::1]", "/"), "v6b");
    assert_string_equal(pick_s(cfg, "GET", "[::2]:8080", "/"), "(none)");
    assert_string_equal(pick_s(cfg, "GET", "[::1", "/"), "(none)");
    assert_string_equal(pick_s(cfg, "GET", "::1", "/"), "(none)");
}

static void test_methods(void **state)
{
    struct config *cfg = *state = load("routes:\n"
                                       "  - {name: read, match: {prefix: /, methods: [get, HEAD]}, cluster: c}\n");
    assert_string_equal(pick_s(cfg, "GET", "a", "/"), "read");
    assert_string_equal(pick_s(cfg, "HEAD", "a", "/"), "read");
    assert_string_equal(pick_s(cfg, "POST", "a", "/"), "(none)");
    /* Methods are case-sensitive tokens (RFC 9110 §9.1). */
    assert_string_equal(pick_s(cfg, "get", "a", "/"), "(none)");
    assert_string_equal(pick_s(cfg, "GE", "a", "/"), "(none)");
    assert_string_equal(pick_s(cfg, "GETX", "a", "/"), "(none)");
    assert_string_equal(pick_s(cfg, "HEADER", "a", "/"), "(none)");
}

static void test_all_conditions_must_hold(void **state)
{
    struct config *cfg = *state =
        load("routes:\n"
             "  - {name: strict, match: {prefix: /admin, host: admin.local, methods: [POST]}, cluster: c}\n"
             "  - {name: rest, match: {prefix: /}, cluster: c}\n");
    assert_string_equal(pick_s(cfg, "POST", "admin.local", "/admin/x"), "strict");
    assert_string_equal(pick_s(cfg, "GET", "admin.local", "/admin/x"), "rest");
    assert_string_equal(pick_s(cfg, "POST", "other.local", "/admin/x"), "rest");
    assert_string_equal(pick_s(cfg, "POST", "admin.local", "/public"), "rest");
}

static void test_first_match_wins(void **state)
{
    struct config *cfg = *state = load("routes:\n"
                                       "  - {name: broad, match: {prefix: /}, cluster: c}\n"
                                       "  - {name: narrow, match: {exact: /x}, cluster: c}\n");
    assert_string_equal(GET(cfg, "/x"), "broad");
    config_free(cfg);
    *state = NULL;
    cfg = *state = load("routes:\n"
                        "  - {name: narrow, match: {exact: /x}, cluster: c}\n"
                        "  - {name: api, match: {prefix: /api}, cluster: c}\n"
                        "  - {name: api2, match: {prefix: /api/v2}, cluster: c}\n"
                        "  - {name: broad, match: {prefix: /}, cluster: c}\n");
    assert_string_equal(GET(cfg, "/x"), "narrow");
    assert_string_equal(GET(cfg, "/api/v2/a"), "api"); /* file order, not longest prefix */
    assert_string_equal(GET(cfg, "/y"), "broad");
    /* The returned route is the config's own, not a copy. */
    struct http_request r;
    memset(&r, 0, sizeof r);
    r.method = (struct h1_str){"GET", 3};
    r.authority = (struct h1_str){"a", 1};
    r.path = (struct h1_str){"/x", 2};
    assert_ptr_equal(router_match(cfg, &r), &cfg->routes[0]);
}

static void test_no_match(void **state)
{
    struct config *cfg = *state = load("routes:\n"
                                       "  - {name: a, match: {prefix: /a}, cluster: c}\n"
                                       "  - {name: b, match: {exact: /b}, cluster: c}\n");
    assert_null(pick(cfg, "GET", "example.com", "/c"));
    assert_null(pick(cfg, "GET", "example.com", "*"));
    assert_null(pick(cfg, "GET", "example.com", ""));
    assert_non_null(pick(cfg, "GET", "example.com", "/b"));
}

#define T(f) cmocka_unit_test_teardown(f, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_prefix),
        T(test_exact),
        T(test_regex),
        T(test_host),
        T(test_host_ipv6),
        T(test_methods),
        T(test_all_conditions_must_hold),
        T(test_first_match_wins),
        T(test_no_match),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
